"""Saliency (gaze) regularisation: a mask predicted from a feature map, compared with a target.

Recipe of the earlier port (spec §12.1): abs over channels -> softmax over positions / β ->
bicubic upsampling -> per-sample min-max. Two deliberate changes, both documented here:
channels are *averaged* (``channel_reduction="mean"``) by default rather than summed, so β means
the same for 512 or 2048 channels and the softmax is not near one-hot (bug 32); and samples
without a usable target are masked out one by one rather than dropping the term for the whole
batch (bugs 13-14). The mask is computed in float32 even under autocast.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SALIENCY_LOSSES = ("mse", "kl")
CHANNEL_REDUCTIONS = ("mean", "sum")


@dataclass
class SaliencyConfig:
    """Optional gaze regulariser added to every agent's loss."""

    enabled: bool = False  # load saliency targets and add the regulariser
    weight: float = 1.0  # multiplier of the regulariser in the total loss (port: 0.2-30)
    beta: float = 1.0  # softmax temperature over positions (port 1.0)
    alpha: float = 1.0  # per-frame decay of the causal sum over the obs window (port 1.0)
    loss: str = "mse"  # "mse" (port) | "kl" (KL(target || prediction), MODJAX default)
    channel_reduction: str = "mean"  # "mean" (scale-aware, ours) | "sum" (the port's)

    def __post_init__(self) -> None:
        if self.loss not in SALIENCY_LOSSES:
            raise ValueError(f"saliency.loss must be one of {SALIENCY_LOSSES}, got {self.loss!r}")
        if self.channel_reduction not in CHANNEL_REDUCTIONS:
            raise ValueError(f"saliency.channel_reduction must be one of {CHANNEL_REDUCTIONS}, "
                             f"got {self.channel_reduction!r}")
        if self.beta <= 0 or self.weight < 0 or self.alpha < 0:
            raise ValueError("saliency.beta must be > 0, weight and alpha >= 0")


def predicted_mask(feature_map: torch.Tensor, size: tuple[int, int], *, beta: float,
                   channel_reduction: str = "mean") -> torch.Tensor:
    """Args:
        feature_map: (B, C, h, w) encoder features of the current observation frame.
        size: (H, W) of the target.
    Returns:
        float32 (B, H, W) in [0, 1].
    """
    z = feature_map.float().abs()
    z = z.mean(1) if channel_reduction == "mean" else z.sum(1)  # (B, h, w)
    b, h, w = z.shape
    attention = torch.softmax(z.reshape(b, h * w) / max(beta, 1e-8), dim=-1).reshape(b, 1, h, w)
    if (h, w) != tuple(size):
        attention = F.interpolate(attention, size=size, mode="bicubic", align_corners=False)
    flat = attention.reshape(b, -1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - low) / (high - low + 1e-8)).clamp(0, 1).reshape(b, *size)


def saliency_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *,
                  kind: str = "mse") -> torch.Tensor:
    """Mean over valid samples of the per-sample loss; exactly 0 when no sample is valid.

    Args:
        prediction, target: float (B, H, W) in [0, 1]; mask: bool (B,).
    """
    target = target.float()
    if kind == "mse":
        per_sample = (prediction - target).pow(2).flatten(1).mean(1)
    else:
        eps = 1e-6
        p = target.flatten(1) / (target.flatten(1).sum(1, keepdim=True) + eps)
        q = prediction.flatten(1) / (prediction.flatten(1).sum(1, keepdim=True) + eps)
        per_sample = (p * (torch.log(p + eps) - torch.log(q + eps))).sum(1)
    weights = mask.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp(min=1.0)
