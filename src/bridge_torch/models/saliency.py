"""Saliency (gaze) regularisation: a mask predicted from a feature map, compared with a target.

Recipe of the earlier port (docs/semantics.md, 'Saliency regularisation'): |features| reduced
over channels -> softmax over the h·w positions of z/β -> bicubic upsampling (align_corners=False)
to the target size -> per-sample min-max (eps 1e-8), clamped to [0, 1]. Deliberate changes, all
documented here:

* channels are *averaged* (``channel_reduction="mean"``, default) rather than summed: z no longer
  grows with the width (512 for ResNet-34, 2048 for ResNet-50), so β means the same for every
  encoder and β = 1 does not give the near one-hot, gradient-starved softmax of the port.
  ``"sum"`` reproduces the port (then β must be scaled with the channel count by hand).
* samples without a usable target (``saliency_mask`` False, or an all-zero target map, which the
  min-max-normalised prediction can never reach) are masked out one by one instead of dropping
  the term for the whole batch, as the port did when one sample lacked a map; a batch with no
  valid sample contributes exactly 0.
* the mask is computed in float32 even under autocast (softmax and min-max are precision-hungry).
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
    # multiplier of the regulariser in the total loss: 1.0 as the port's agent code and MODJAX's
    # lambda_weight (the port's HEAD YAML used 5, its sweeps 0.2-30)
    weight: float = 1.0
    beta: float = 1.0  # softmax temperature over positions, > 0 (port 1.0; see channel_reduction)
    alpha: float = 1.0  # sampler: decay of the causal target sum over the obs window (port 1.0)
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
    with torch.autocast(feature_map.device.type, enabled=False):  # float32 under autocast
        z = feature_map.float().abs()
        z = z.mean(1) if channel_reduction == "mean" else z.sum(1)  # (B, h, w)
        b, h, w = z.shape
        attention = torch.softmax(z.reshape(b, h * w) / max(beta, 1e-8), dim=-1)
        attention = attention.reshape(b, 1, h, w)
        if (h, w) != tuple(size):
            attention = F.interpolate(attention, size=tuple(size), mode="bicubic",
                                      align_corners=False)
        flat = attention.reshape(b, -1)
        low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        return ((flat - low) / (high - low + 1e-8)).clamp(0, 1).reshape(b, *size)


def saliency_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *,
                  kind: str = "mse") -> torch.Tensor:
    """Mean over valid samples of the per-sample loss; exactly 0 when no sample is valid.

    Args:
        prediction, target: float (B, H, W) in [0, 1]; mask: bool (B,) usable targets. Samples
            whose target is all zero are dropped too (no reachable optimum).
        kind: "mse" (mean over pixels) or "kl" (KL(target || prediction), both maps normalised
            to sum 1, eps 1e-6, as MODJAX).
    Returns:
        float32 scalar; no host sync (the valid count stays on the device).
    """
    target = target.float()
    valid = mask.to(torch.bool) & (target.flatten(1).amax(1) > 0)
    if kind == "mse":
        per_sample = (prediction - target).pow(2).flatten(1).mean(1)
    else:
        eps = 1e-6
        p = target.flatten(1) / (target.flatten(1).sum(1, keepdim=True) + eps)
        q = prediction.flatten(1) / (prediction.flatten(1).sum(1, keepdim=True) + eps)
        per_sample = (p * (torch.log(p + eps) - torch.log(q + eps))).sum(1)
    per_sample = torch.where(valid, per_sample, torch.zeros_like(per_sample))  # no NaN leaks
    return per_sample.sum() / valid.sum().clamp(min=1).to(per_sample.dtype)
