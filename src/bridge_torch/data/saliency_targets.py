"""Saliency (gaze) regularisation targets: window aggregation and min-max normalisation.

The target of a sample is the causal, exponentially weighted sum of the per-frame maps of its
observation window, ``sum_d alpha**d * s[t-d]`` (the earlier port's aggregation;
docs/semantics.md, 'Saliency regularisation'), min-max normalised to [0, 1] per sample. A
target that is constant (all zero, a frame without detections, or cropped away) carries no
spatial information, so it is reported as unusable (mask False) instead of asking the model for
an unreachable map.
"""

import torch


def aggregate_window(maps: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    """Causal alpha-weighted sum of the window's maps.

    Window slots that repeat the first frame (padding, ``t - d < 0``) get weight 0, so the first
    frame is not counted several times.

    Args:
        maps: float32 (B, K, H, W) maps of frames t-K+1..t (oldest first, clamped at 0).
        t: int64 (B,) transition index within the trajectory.
        alpha: decay per frame of age; 1 sums the window, 0 keeps only the current frame.
    Returns:
        float32 (B, H, W).
    """
    window = maps.shape[1]
    age = torch.arange(window - 1, -1, -1, device=maps.device)  # (K,) age d of each slot
    weights = alpha ** age.to(torch.float32)  # 0 ** 0 == 1: alpha = 0 keeps the current frame
    weights = torch.where(age[None] <= t[:, None], weights[None], 0.0)  # (B, K)
    return torch.einsum("bk,bkhw->bhw", weights, maps)


def minmax_normalize(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each map to [0, 1]; constant maps become all zero.

    Args:
        maps: float32 (B, H, W).
    Returns:
        (normalised float32 (B, H, W), bool (B,) True where the map was not constant).
    """
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    informative = span > 0
    normalised = (maps - low) / torch.where(informative, span, 1.0)
    return normalised, informative.view(-1)
