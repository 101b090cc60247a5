"""The agent contract: what every agent consumes, computes and is built from.

An agent is a plain ``nn.Module``: ``loss(batch) -> (loss, metrics)`` for training (``forward``
is ``loss``, so DDP's gradient all-reduce runs when the trainer calls the wrapper: DDP only
synchronises gradients of a forward that went through it) and
``sample_actions`` for deployment. Agents never call backward, read the rank or touch the
optimizer; the trainer owns those and keeps the EMA copy that sampling uses. Metrics are detached
0-dim tensors, never ``.item()``: the trainer syncs only on log steps.

Randomness: training noise (dropout, DDPM timesteps and ε) comes from the global torch RNG, which
the trainer seeds per rank; sampling and validation draw from the ``generator`` they are given,
so they are deterministic and independent of the training streams.
"""

from typing import Any, Optional

import torch
from torch import nn

from bridge_torch.agents.encoding import EncodingConfig, ObservationEncoder
from bridge_torch.batch import (
    ACTIONS,
    GOALS,
    OBSERVATIONS,
    SALIENCY,
    SALIENCY_MASK,
    AgentShapes,
    BatchInputs,
    action_name,
)
from bridge_torch.models.resnet import EncoderConfig
from bridge_torch.models.saliency import SaliencyConfig, predicted_mask, saliency_loss

Batch = dict[str, Any]
Metrics = dict[str, torch.Tensor]


def standard_normal(shape: tuple[int, ...], *, device: torch.device,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """N(0, I) float32 noise on ``device``, drawn from ``generator`` wherever that lives.

    Drawing on the generator's own device keeps a CPU generator usable with a CUDA agent (and
    the numbers identical across devices); without a generator the global RNG of ``device``.
    """
    source = device if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=source).to(device)


class Agent(nn.Module):
    """Base of every agent: its declared inputs and shapes, the saliency term, the eval-mode
    guard and validation metrics.

    A subclass sets ``goal_conditioned`` and takes ``(model, encoder, saliency, shapes)``, where
    ``model`` is its own config dataclass (registered next to it in ``agents/__init__.py``).
    """

    goal_conditioned = False  # consumes ``goals.image``

    @classmethod
    def declared_inputs(cls, model: EncodingConfig, saliency: SaliencyConfig) -> BatchInputs:
        """The optional batch parts this agent consumes with these settings (no build needed)."""
        return BatchInputs(goal_image=cls.goal_conditioned, proprio=model.use_proprio,
                           saliency=saliency.enabled)

    def __init__(self, model: EncodingConfig, saliency: SaliencyConfig,
                 shapes: AgentShapes) -> None:
        super().__init__()
        self.saliency, self.shapes = saliency, shapes
        self.inputs = self.declared_inputs(model, saliency)

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
        """Normalised float32 actions (B, T_act, A); eval mode only, so dropout is off
        (sampling with dropout on gives noisy, worse actions).

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
                               "data.load.load_saliency)")
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


class EncodedAgent(Agent):
    """An agent whose network starts with the bridge observation (and goal) encoder: ``cfg`` is
    its model config, ``encoder`` the :class:`ObservationEncoder` built from it (first, so the
    parameter order and the random initialisation are the same for every such agent)."""

    def __init__(self, model: EncodingConfig, encoder: EncoderConfig, saliency: SaliencyConfig,
                 shapes: AgentShapes) -> None:
        super().__init__(model, saliency, shapes)
        self.cfg = model
        self.encoder = ObservationEncoder(model, encoder, shapes,
                                          goal_conditioned=self.goal_conditioned)
