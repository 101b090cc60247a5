"""The agent contract and the one model config shared by BC, GC-BC and GC-DDPM-BC.

An agent is a plain ``nn.Module``: ``loss(batch) -> (loss, metrics)`` for training (``forward``
is ``loss``, so DDP's gradient all-reduce runs when the trainer calls the wrapper — bug 36) and
``sample_actions`` for deployment. Agents never call backward, read the rank or touch the
optimizer; the trainer owns those and keeps the EMA copy that sampling uses. Metrics are detached
0-dim tensors, never ``.item()``: the trainer syncs only on log steps.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from bridge_torch.batch import ACTIONS, OBSERVATIONS, SALIENCY, SALIENCY_MASK
from bridge_torch.models.saliency import SaliencyConfig, predicted_mask, saliency_loss

Batch = dict[str, Any]
Metrics = dict[str, torch.Tensor]


@dataclass
class AgentConfig:
    """Policy and score-network settings; defaults are JAX gc_bc / gc_ddpm_bc (§11.5)."""

    hidden_dims: list[int] = field(default_factory=lambda: [256, 256, 256])  # policy MLP widths
    dropout_rate: float = 0.1  # policy MLP and score-network dropout (JAX 0.1)
    use_layer_norm: bool = False  # LayerNorm in the policy MLP (JAX False)
    # Gaussian std: fixed per action dim (JAX [1]*7); None -> learned (state-dependent or global)
    fixed_std: Optional[list[float]] = field(default_factory=lambda: [1.0] * 7)
    state_dependent_std: bool = False  # std from a Dense head when fixed_std is None (JAX False)
    tanh_squash_distribution: bool = False  # tanh-squashed Gaussian (JAX False)
    temperature: float = 1.0  # sampling: std (BC) or noise (DDPM) multiplier
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


class Agent(nn.Module):
    """Base of every agent: the saliency term, the eval-mode guard and validation metrics."""

    def __init__(self, saliency: SaliencyConfig) -> None:
        super().__init__()
        self.saliency = saliency

    def forward(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        return self.loss(batch)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def sample_actions(self, observations: dict[str, torch.Tensor],
                       goals: Optional[dict[str, torch.Tensor]] = None, *, argmax: bool = False,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Normalised actions (B, T_act, A); call in eval mode (dropout off)."""
        raise NotImplementedError

    def validation_metrics(self, batch: Batch,
                           generator: Optional[torch.Generator] = None) -> Metrics:
        """Loss metrics plus ``mse``: mean over the batch of the summed squared error of the
        deterministic action prediction (a full reverse diffusion for DDPM)."""
        self._require_eval()
        with torch.no_grad():
            _, metrics = self.loss(batch)
            predicted = self.sample_actions(batch[OBSERVATIONS], batch.get("goals"),
                                            argmax=True, generator=generator)
            error = (predicted.float() - batch[ACTIONS].float()).pow(2).flatten(1).sum(1)
        return {**metrics, "mse": error.mean()}

    def _require_eval(self) -> None:
        if self.training:
            raise RuntimeError(f"{type(self).__name__}: sample in eval mode (call .eval(), or use "
                               "the trainer's EMA copy) so dropout is off")

    def _add_saliency(self, loss: torch.Tensor, metrics: Metrics, batch: Batch,
                      feature_map: torch.Tensor) -> torch.Tensor:
        """Add ``weight * saliency_reg`` when enabled; record ``saliency_reg``, ``total_loss``."""
        if self.saliency.enabled:
            observations = batch[OBSERVATIONS]
            if SALIENCY not in observations:
                raise KeyError("saliency.enabled is set but the batch has no observations."
                               "saliency targets (load them with data.load_saliency)")
            if feature_map.shape[-2] * feature_map.shape[-1] == 1:
                raise ValueError("saliency needs a feature map larger than 1x1 (a softmax over "
                                 "one position is constant): use larger images or a shallower "
                                 "encoder")
            target = observations[SALIENCY]
            prediction = predicted_mask(feature_map, tuple(target.shape[-2:]),
                                        beta=self.saliency.beta,
                                        channel_reduction=self.saliency.channel_reduction)
            reg = saliency_loss(prediction, target, observations[SALIENCY_MASK],
                                kind=self.saliency.loss)
            metrics["saliency_reg"] = reg.detach()
            loss = loss + self.saliency.weight * reg
        metrics["total_loss"] = loss.detach()
        return loss

