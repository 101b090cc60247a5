"""Batched colour jitter with the semantics of TF's image ops (docs/semantics.md, 'Augmentation').

Every function takes float32 images ``(n, 3, H, W)`` with pixel values in ``[0, 255]`` and one
parameter per image ``(n,)``, and returns images clipped to ``[0, 255]`` (TF clips to [0, 1]
after every op; we keep the 0-255 scale so the uint8 conversions need no extra multiply). Images
may be modified in place. Semantics:

* brightness: additive ``x + delta`` with ``delta`` in [0, 1] units (TF ``adjust_brightness``);
* contrast: ``(x - mean_c) * f + mean_c`` with the mean over each image and channel
  (TF ``adjust_contrast``, not the grayscale blend of torchvision / Albumentations);
* saturation: HSV saturation scaled by ``f`` and clipped to [0, 1] (TF ``adjust_saturation``);
* hue: HSV hue shifted by ``delta`` turns (TF ``adjust_hue``).

Saturation and hue act on separate HSV coordinates and leave V unchanged, so when they are
adjacent in the augmentation order one shared RGB -> HSV -> RGB conversion applies both
(``adjust_saturation_hue``); saturation alone has a cheaper closed form in RGB.
"""

import torch

PIXEL_MAX = 255.0
_TINY = 1e-12  # guards divisions by the chroma of grey pixels (their hue is irrelevant)


def adjust_brightness(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Add ``delta`` (n,) in [0, 1] pixel units to every pixel, then clip."""
    return images.add_(delta.view(-1, 1, 1, 1) * PIXEL_MAX).clamp_(0.0, PIXEL_MAX)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale the distance of every pixel to its image's per-channel mean by ``factor`` (n,)."""
    factor = factor.view(-1, 1, 1, 1)
    mean = images.mean(dim=(2, 3), keepdim=True)  # (n, 3, 1, 1)
    # (x - m) * f + m == x * f + m * (1 - f)
    return images.mul_(factor).add_(mean * (1.0 - factor)).clamp_(0.0, PIXEL_MAX)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale the HSV saturation by ``factor`` (n,), clipped to 1, keeping hue and value.

    With V = max and C = V - min, each channel is ``V - C * w(hue)``; scaling S = C / V to
    ``min(S f, 1)`` scales C by ``min(f, V / C)``, i.e. ``x' = V + min(f, V/C) * (x - V)``.
    """
    value = images.amax(dim=1, keepdim=True)  # (n, 1, H, W)
    chroma = value - images.amin(dim=1, keepdim=True)
    ratio = torch.minimum(factor.view(-1, 1, 1, 1), value / chroma.clamp_min(_TINY))
    return torch.lerp(value, images, ratio)  # already within [0, V]


def adjust_saturation_hue(images: torch.Tensor, factor: torch.Tensor,
                          delta: torch.Tensor) -> torch.Tensor:
    """Scale the HSV saturation by ``factor`` (n,) and rotate the hue by ``delta`` (n,) turns.

    HSV -> RGB uses ``channel = V - C' * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n_c + 6 * hue) mod 6`` and ``n_c = 5, 3, 1`` for R, G, B.
    """
    red, green, blue = images.unbind(1)  # (n, H, W) each
    value = torch.maximum(red, green)
    torch.maximum(value, blue, out=value)
    chroma = torch.minimum(red, green)
    torch.minimum(chroma, blue, out=chroma)
    chroma.neg_().add_(value)
    hue6 = _hue_sextants(red, green, blue, value, chroma).add_(delta.view(-1, 1, 1) * 6.0)
    new_chroma = torch.minimum(chroma.mul_(factor.view(-1, 1, 1)), value)
    # All three channels at once: k = hue6 + n_c, reduced mod 6, then the trapezoid weight.
    offsets = torch.arange(5.0, 0.0, -2.0, device=images.device)  # 5, 3, 1 (no host copy)
    k = hue6[:, None] + offsets.view(1, 3, 1, 1)
    k.sub_(torch.floor(k * (1.0 / 6.0)).mul_(6.0))
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(value[:, None], new_chroma[:, None], weight, value=-1.0)


def _hue_sextants(red: torch.Tensor, green: torch.Tensor, blue: torch.Tensor,
                  value: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Hue times 6 (one unit per sextant), in [-1, 5); arbitrary where chroma is 0.

    The max channel is selected with float masks (``1 + sign(x - V)`` is 1 where x is the max):
    boolean comparisons and ``torch.where`` are several times slower on CPU.
    """
    is_red = torch.sub(red, value).sign_().add_(1.0)
    is_green = torch.sub(green, value).sign_().add_(1.0)
    # hue * chroma for each possible max channel; TF's tie priority is red, green, blue.
    scaled = torch.sub(red, green).add_(chroma, alpha=4.0)  # blue is the max
    scaled.lerp_(torch.sub(blue, red).add_(chroma, alpha=2.0), is_green)
    scaled.lerp_(torch.sub(green, blue), is_red)
    return scaled.mul_(chroma.clamp_min(_TINY).reciprocal())
