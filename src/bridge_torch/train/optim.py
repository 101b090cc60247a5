"""Optimizer and learning-rate schedule (docs/semantics.md, 'Training defaults').

The JAX original uses optax Adam (b1 0.9, b2 0.999, eps 1e-8, no weight decay, no clipping) with
``warmup_cosine_decay_schedule``: linear warmup from 0 to the peak over ``warmup_steps``, then a
cosine to 0 that ends at ``decay_steps`` — the decay horizon INCLUDES the warmup (the earlier
port's cosine started after the warmup and never reached 0). The LR is a pure function of the
update index, so resuming only needs the step.
"""

import functools
import math
from collections.abc import Iterable

import torch

from bridge_torch.train.config import OptimizerConfig, SchedulerConfig

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def lr_factor(step: int, *, kind: str, warmup_steps: int, decay_steps: int) -> float:
    """Multiplier of the peak LR for the update with 0-based index ``step``.

    As optax: update 0 uses factor 0 when there is a warmup; ``step == warmup_steps`` is the peak;
    "cosine" reaches 0 at ``step == decay_steps`` and stays there; "constant" holds the peak.
    """
    if step < warmup_steps:
        return step / warmup_steps
    if kind == "constant":
        return 1.0
    cosine_steps = decay_steps - warmup_steps
    if cosine_steps <= 0:
        return 0.0
    progress = min(step - warmup_steps, cosine_steps) / cosine_steps
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig, device: torch.device
) -> torch.optim.Optimizer:
    """Adam or AdamW from the config; the fused CUDA kernel when training on CUDA."""
    return OPTIMIZERS[cfg.name](
        params,
        lr=cfg.lr,
        betas=(cfg.betas[0], cfg.betas[1]),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over :func:`lr_factor`, stepped once per update (not per epoch).

    A ``functools.partial`` (not a lambda) keeps the scheduler's state_dict free of closures.
    """
    factor = functools.partial(
        lr_factor, kind=cfg.type, warmup_steps=cfg.warmup_steps, decay_steps=cfg.decay_steps
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
