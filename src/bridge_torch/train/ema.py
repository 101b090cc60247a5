"""Exponential moving average of a model's weights: the DDPM target network.

After every optimizer step ``ema ← rate·params + (1 − rate)·ema`` (JAX's Polyak update with
``target_update_rate`` 0.002), and buffers are copied outright so normalisation statistics never
stay at their initial values (the earlier port averaged parameters only). The copy lives in eval
mode — sampling from it never runs dropout — and is never trained directly. See
docs/semantics.md, 'EMA (target network)'.
"""

import copy

import torch
from torch import nn


class EMA:
    """Holds ``module``, an eval-mode, grad-free copy of the model tracking its weights."""

    def __init__(self, model: nn.Module, rate: float) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"EMA rate must be in (0, 1], got {rate}")
        self.rate = rate
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every EMA parameter ``rate`` of the way toward ``model``'s; copy its buffers."""
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError(
                f"EMA holds {len(ema_params)} parameters but the model has {len(params)}"
            )
        # One fused kernel per dtype/device group instead of a Python loop over tensors.
        torch._foreach_lerp_(ema_params, params, self.rate)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)
