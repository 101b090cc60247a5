"""The agent contract and the one model config shared by BC, GC-BC and GC-DDPM-BC.

An agent is a plain ``nn.Module``: ``loss(batch) -> (loss, metrics)`` for training (``forward``
is ``loss``, so DDP's gradient all-reduce runs when the trainer calls the wrapper — bug 36) and
``sample_actions`` for deployment. Agents never call backward, read the rank or touch the
optimizer; the trainer owns those and keeps the EMA copy that sampling uses. Metrics are detached
0-dim tensors, never ``.item()``: the trainer syncs only on log steps.

Randomness: training noise (dropout, DDPM timesteps and ε) comes from the global torch RNG, which
the trainer seeds per rank; sampling and validation draw from the ``generator`` they are given,
so they are deterministic and independent of the training streams.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from bridge_torch.batch import (
    ACTIONS,
    GOALS,
    OBSERVATIONS,
    SALIENCY,
    SALIENCY_MASK,
    action_name,
)
from bridge_torch.models.diffusion import BETA_SCHEDULES
from bridge_torch.models.saliency import SaliencyConfig, predicted_mask, saliency_loss

Batch = dict[str, Any]
Metrics = dict[str, torch.Tensor]


@dataclass
class AgentConfig:
    """Policy and score-network settings; defaults are JAX gc_bc / gc_ddpm_bc (§11.5)."""

    hidden_dims: list[int] = field(default_factory=lambda: [256, 256, 256])  # policy MLP widths
    dropout_rate: float = 0.1  # policy MLP and score-network dropout (JAX 0.1)
    use_layer_norm: bool = False  # LayerNorm in the policy MLP (JAX False)
    # BC Gaussian std: fixed, one value per action dim or one for all (JAX [1]*7; no parameter);
    # None -> learned: a Dense head if state_dependent_std, else a per-dim log-std (zero init)
    fixed_std: Optional[list[float]] = field(default_factory=lambda: [1.0] * 7)
    state_dependent_std: bool = False  # std from a Dense head when fixed_std is None (JAX False)
    tanh_squash_distribution: bool = False  # tanh-squashed Gaussian, mode tanh(mean) (JAX False)
    # sampling only: BC divides the clipped log-std by it (JAX Policy, quirk 59: no effect with
    # std 1), must be > 0 there; DDPM multiplies the injected noise by it (0 = no noise)
    temperature: float = 1.0
    use_proprio: bool = False  # concatenate the proprio history to the image features (JAX False)
    early_goal_concat: bool = True  # GC: stack obs and goal on channels, one pass (JAX True)
    shared_goal_encoder: bool = True  # GC late fusion: goal through the obs encoder (JAX True)
    time_dim: int = 32  # DDPM Fourier time features (JAX 32)
    num_blocks: int = 3  # DDPM MLPResNet blocks (JAX 3)
    score_width: int = 256  # DDPM MLPResNet width (JAX's effective 256)
    score_layer_norm: bool = True  # DDPM MLPResNet LayerNorm (JAX True)
    diffusion_steps: int = 20  # DDPM T (JAX 20)
    beta_schedule: str = "cosine"  # cosine | linear | vp (JAX cosine)
    repeat_last_step: int = 0  # extra t=0 denoising updates when sampling (JAX 0)
    clip_sampler: bool = True  # clip the sample to ±action_clip every step (JAX True)
    action_clip: float = 2.0  # clip range in normalised units (JAX 2)

    def __post_init__(self) -> None:
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ValueError(f"model.hidden_dims must be positive widths, got {self.hidden_dims}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.fixed_std is not None and min(self.fixed_std) <= 0:
            raise ValueError(f"model.fixed_std must be > 0, got {self.fixed_std}")
        if self.temperature < 0 or self.diffusion_steps < 1 or self.repeat_last_step < 0:
            raise ValueError("model.temperature >= 0, diffusion_steps >= 1, "
                             "repeat_last_step >= 0 required")
        if self.time_dim < 2 or self.time_dim % 2:
            raise ValueError(f"model.time_dim must be a positive even number, got {self.time_dim}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"model.beta_schedule must be one of {BETA_SCHEDULES}, "
                             f"got {self.beta_schedule!r}")
        if self.score_width < 1 or self.num_blocks < 0 or self.action_clip <= 0:
            raise ValueError("model.score_width >= 1, num_blocks >= 0 and action_clip > 0 "
                             "required")


def standard_normal(shape: tuple[int, ...], *, device: torch.device,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """N(0, I) float32 noise on ``device``, drawn from ``generator`` wherever that lives.

    Drawing on the generator's own device keeps a CPU generator usable with a CUDA agent (and
    the numbers identical across devices); without a generator the global RNG of ``device``.
    """
    source = device if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=source).to(device)


class Agent(nn.Module):
    """Base of every agent: the saliency term, the eval-mode guard and validation metrics."""

    def __init__(self, saliency: SaliencyConfig) -> None:
        super().__init__()
        self.saliency = saliency

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        """``loss(batch)``: the trainer calls the (DDP-wrapped) module so gradients all-reduce."""
        return self.loss(batch)

    def loss(self, batch: Batch, generator: Optional[torch.Generator] = None
             ) -> tuple[torch.Tensor, Metrics]:
        """Training loss (float32 scalar, differentiable) and detached 0-dim metrics.

        ``generator`` (optional) drives the loss's own noise (DDPM timesteps and ε) instead of
        the global RNG; validation passes one so its numbers are reproducible.
        """
        raise NotImplementedError

    def sample_actions(self, observations: dict[str, torch.Tensor],
                       goals: Optional[dict[str, torch.Tensor]] = None, *, argmax: bool = False,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Normalised float32 actions (B, T_act, A); eval mode only (dropout off, bug 27).

        Args:
            observations: ``image`` uint8 (B, K, H, W, 3), ``proprio`` float (B, K, P) if used.
            goals: ``image`` uint8 (B, H, W, 3); required by goal-conditioned agents.
            argmax: the distribution's mode instead of a sample (ignored by DDPM, as JAX).
            generator: source of all sampling noise; same generator state -> same actions.
        """
        raise NotImplementedError

    def validation_metrics(self, batch: Batch,
                           generator: Optional[torch.Generator] = None) -> Metrics:
        """Loss metrics plus ``mse``: mean over the batch of the sum over (T_act, A) of the
        squared error of ``sample_actions(argmax=True)`` (a full reverse diffusion for DDPM),
        and its share per action dimension, ``mse_<name>`` (``mse_dx`` ... ``mse_gripper``),
        to see where a policy errs. Eval mode only; deterministic given ``generator``."""
        self._require_eval()
        with torch.no_grad():
            _, metrics = self.loss(batch, generator=generator)
            predicted = self.sample_actions(batch[OBSERVATIONS], batch.get(GOALS),
                                            argmax=True, generator=generator)
            per_dim = (predicted.float() - batch[ACTIONS].float()).pow(2).sum(1).mean(0)  # (A,)
        action_dim = per_dim.shape[0]
        shares = {f"mse_{action_name(d, action_dim)}": per_dim[d] for d in range(action_dim)}
        return {**metrics, "mse": per_dim.sum(), **shares}

    def _require_eval(self) -> None:
        if self.training:
            raise RuntimeError(f"{type(self).__name__}: sample in eval mode (call .eval(), or use "
                               "the trainer's EMA copy) so dropout is off")

    def _add_saliency(self, loss: torch.Tensor, metrics: Metrics, batch: Batch,
                      feature_map: torch.Tensor) -> torch.Tensor:
        """Add ``weight * saliency_reg`` when enabled; record ``saliency_reg``, ``total_loss``.

        ``feature_map`` (B, C, h, w) is the encoder's last map of the current observation frame
        (see ``agents/encoding.py`` for which pass that is under each goal fusion).
        """
        if self.saliency.enabled:
            observations = batch[OBSERVATIONS]
            if SALIENCY not in observations or SALIENCY_MASK not in observations:
                raise KeyError("saliency.enabled is set but the batch has no observations."
                               "saliency / saliency_mask targets (load them with "
                               "data.load_saliency)")
            if feature_map.shape[-2] * feature_map.shape[-1] == 1:
                raise ValueError("saliency needs a feature map larger than 1x1 (a softmax over "
                                 "one position is constant): use larger images or a shallower "
                                 "encoder")
            target = observations[SALIENCY]  # (B, H, W)
            prediction = predicted_mask(feature_map, tuple(target.shape[-2:]),
                                        beta=self.saliency.beta,
                                        channel_reduction=self.saliency.channel_reduction)
            reg = saliency_loss(prediction, target, observations[SALIENCY_MASK],
                                kind=self.saliency.loss)
            metrics["saliency_reg"] = reg.detach()
            loss = loss + self.saliency.weight * reg
        metrics["total_loss"] = loss.detach()
        return loss
