"""The augmentation op table: every op's name, kernel code, parameter columns, how its
parameters are drawn and its PyTorch implementation, and the settings (``AugmentConfig``).

The PyTorch path (``augmenter.py``), the C kernel (``cpu_kernel.py`` + ``augment_cpu.c``) and the
Triton kernel (``triton_kernel.py``) all take op names and codes from here. The kernels are
accelerated subsets: each checks the table when it loads and reports the ops it implements; an
order with an op a kernel lacks runs through the PyTorch ops instead. Adding an op is a row here
(with its PyTorch function in ``color.py``), and optionally a case in each kernel.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch

from bridge_torch.data.augment.color import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_saturation_hue,
)

# Columns of the per-sample parameter table (float32 (B, NUM_PARAMS)).
TOP, LEFT, HEIGHT, WIDTH, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(8)
NUM_PARAMS = 8


@dataclass
class AugmentConfig:
    """Image augmentation of training batches (JAX ``augment_kwargs``)."""

    enabled: bool = True  # augment training batches (JAX augment=True); never validation
    # ops applied in this order; an op not listed is not applied (JAX augment_order)
    order: list[str] = field(default_factory=lambda: ["crop", "brightness", "contrast",
                                                      "saturation", "hue"])
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])  # crop area fraction
    crop_ratio: list[float] = field(default_factory=lambda: [0.9, 1.1])  # crop w/h, log-uniform
    brightness: float = 0.2  # additive delta ~ U[-d, d) in [0, 1] pixel units (JAX 0.2)
    contrast: list[float] = field(default_factory=lambda: [0.8, 1.2])  # factor ~ U[lo, hi)
    saturation: list[float] = field(default_factory=lambda: [0.8, 1.2])  # factor ~ U[lo, hi)
    hue: float = 0.1  # hue shift ~ U[-d, d] in turns of the hue circle, d <= 0.5 (JAX 0.1)
    augment_next_obs_goal_differently: bool = False  # goal draws its own parameters (JAX False)
    # CPU batches through the C kernel of augment_cpu.c (compiled on first use; PyTorch ops if
    # no C compiler is found): the same ops, one image at a time in cache, 3-5x faster
    native_cpu: bool = True
    # torch.compile the PyTorch path's colour ops and uint8 store (CUDA, or CPU without the
    # native kernel); the first batch compiles (~10-30 s). None = on for CUDA batches (1.7x
    # faster there), off on CPU
    compile: Optional[bool] = None
    # CUDA batches through one Triton kernel (triton_kernel.py) instead of the PyTorch ops: a
    # launch for the observation frames and one for the goals. Off until measured on a GPU;
    # PyTorch ops (one warning) without Triton
    fused_cuda: bool = False

    def __post_init__(self) -> None:
        unknown = [op for op in self.order if op not in CONFIGURABLE_OPS]
        if unknown:
            raise ValueError(f"augment order: unknown op(s) {unknown}; known: "
                             f"{CONFIGURABLE_OPS}")
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"augment order lists an op twice: {list(self.order)}")
        _check_range("crop_scale", self.crop_scale, low=0.0, high=1.0, open_low=True)
        _check_range("crop_ratio", self.crop_ratio, low=0.0, open_low=True)
        _check_range("contrast", self.contrast, low=0.0)
        _check_range("saturation", self.saturation, low=0.0)
        if self.brightness < 0:
            raise ValueError(f"brightness must be >= 0, got {self.brightness}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")


def _check_range(key: str, values: list[float], *, low: float, high: float = math.inf,
                 open_low: bool = False) -> None:
    ok = len(values) == 2 and values[0] <= values[1] <= high and \
        (values[0] > low if open_low else values[0] >= low)
    if not ok:
        bound = f"{'(' if open_low else '['}{low}, {high}]"
        raise ValueError(f"{key} must be [lo, hi] with lo <= hi within {bound}, got {values}")


def _lerp(bounds: list[float], u: torch.Tensor) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * u


def _draw_crop(cfg: AugmentConfig, u: torch.Tensor) -> torch.Tensor:
    """Box (top, left, height, width) in image fractions: area ~ U(scale), aspect log-uniform."""
    scale = _lerp(cfg.crop_scale, u[:, 0])
    ratio = torch.exp(_lerp([math.log(r) for r in cfg.crop_ratio], u[:, 1]))
    height = torch.sqrt(scale / ratio).clamp(0.0, 1.0)
    width = torch.sqrt(scale * ratio).clamp(0.0, 1.0)
    return torch.stack([u[:, 2] * (1.0 - height), u[:, 3] * (1.0 - width), height, width], 1)


@dataclass(frozen=True)
class AugmentOp:
    """One row of the table."""

    name: str
    code: int  # the C and Triton kernels' op code
    columns: tuple[int, ...]  # parameter columns the op reads (and, if drawn, writes)
    # uniforms (B, len(columns)) in [0, 1) -> its parameters; None for a fused op (drawn by
    # the ops it fuses)
    draw: Callable[[AugmentConfig, torch.Tensor], torch.Tensor] | None
    # float images (n, 3, H, W) in [0, 255] and params (n, NUM_PARAMS) -> images; None for the
    # crop, which is geometric (``augmenter._crop``, it also moves the saliency target)
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


OPS: dict[str, AugmentOp] = {op.name: op for op in (
    AugmentOp("crop", 0, (TOP, LEFT, HEIGHT, WIDTH), _draw_crop, None),
    AugmentOp("brightness", 1, (BRIGHTNESS,),
              lambda cfg, u: _lerp([-cfg.brightness, cfg.brightness], u),
              lambda x, p: adjust_brightness(x, p[:, BRIGHTNESS])),
    AugmentOp("contrast", 2, (CONTRAST,), lambda cfg, u: _lerp(cfg.contrast, u),
              lambda x, p: adjust_contrast(x, p[:, CONTRAST])),
    AugmentOp("saturation", 3, (SATURATION,), lambda cfg, u: _lerp(cfg.saturation, u),
              lambda x, p: adjust_saturation(x, p[:, SATURATION])),
    AugmentOp("hue", 4, (HUE,), lambda cfg, u: _lerp([-cfg.hue, cfg.hue], u),
              lambda x, p: adjust_saturation_hue(x, torch.ones_like(p[:, HUE]), p[:, HUE])),
    # adjacent saturation and hue, in one HSV round trip (what ``kernel_ops`` runs)
    AugmentOp("saturation_hue", 5, (SATURATION, HUE), None,
              lambda x, p: adjust_saturation_hue(x, p[:, SATURATION], p[:, HUE])),
)}
CONFIGURABLE_OPS = tuple(name for name, op in OPS.items() if op.draw is not None)


def draw_parameters(cfg: AugmentConfig, generator: torch.Generator,
                    batch_size: int) -> torch.Tensor:
    """float32 (B, NUM_PARAMS): every drawn op's parameters from one (B, NUM_PARAMS) block of
    uniforms, column for column, whatever the order, so the stream does not depend on it."""
    u = torch.rand((batch_size, NUM_PARAMS), generator=generator, dtype=torch.float64)
    params = torch.empty_like(u)
    for op in OPS.values():
        if op.draw is not None:
            columns = list(op.columns)
            params[:, columns] = op.draw(cfg, u[:, columns]).reshape(batch_size, -1)
    return params.to(torch.float32)


def kernel_ops(order: list[str]) -> list[str]:
    """The op sequence the whole-augmentation kernels (C, Triton) run for ``order``: adjacent
    saturation and hue fused into ``"saturation_hue"``."""
    return [op for segment in plan(order) for op in ([segment] if segment == "crop" else segment)]


def plan(order: list[str]) -> list[str | tuple[str, ...]]:
    """Segments of the op sequence: ``"crop"``, or a run of colour ops to apply together.

    Adjacent saturation and hue are fused into one HSV round trip (``"saturation_hue"``).
    """
    segments: list[str | tuple[str, ...]] = []
    run: list[str] = []
    for op in order:
        if op == "crop":
            segments += [tuple(run), "crop"] if run else ["crop"]
            run = []
        elif run and {run[-1], op} == {"saturation", "hue"}:
            run[-1] = "saturation_hue"
        else:
            run.append(op)
    return [*segments, tuple(run)] if run else segments
