"""Batched image augmentation with independent parameters per sample.

Semantics of the JAX/TF ops (docs/semantics.md, 'Augmentation') - random resized crop (bilinear,
sub-pixel box, no rejection sampling), additive brightness, per-channel-mean contrast, HSV
saturation and hue - but every sample draws its own, independent parameters: not all of them
derived from one uniform number (TF gives every op of a sample the same stateless seed) and not
one parameter set for the whole batch (the earlier port's replayed Albumentations). Within a
sample, the parameters are shared by all frames of the observation history and by the goal
(unless ``augment_next_obs_goal_differently``); the crop box also moves the saliency target.

Parameters come from a CPU ``torch.Generator`` (deterministic by seed on any device; a few floats
per sample are copied to the device asynchronously). Pixels are processed as float32 in [0, 255]
and rounded to the nearest uint8 at the end; TF truncates (``uint8(x * 255)``), which darkens every
image by half a level on average and turns float noise of an identity transform into -1 steps.
On CPU, batches go through the C kernel of ``augment_cpu.c`` (the same ops, one image at a time
in cache; ``native_cpu``); without a C compiler, or with ``native_cpu=false``, through the
PyTorch ops below in small chunks that stay in cache. On CUDA, through the PyTorch ops, or with
``fused_cuda`` through the single Triton kernel of ``augment_cuda.py``.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bridge_torch.batch import GOALS, IMAGE, OBSERVATIONS, SALIENCY, SALIENCY_MASK
from bridge_torch.data.augment import cpu_kernel as augment_cpu
from bridge_torch.data.augment import triton_kernel as augment_cuda
from bridge_torch.data.augment.ops import (
    HEIGHT,
    LEFT,
    OPS,
    TOP,
    WIDTH,
    AugmentConfig,
    draw_parameters,
    kernel_ops,
    plan,
)
from bridge_torch.data.saliency_targets import minmax_normalize
from bridge_torch.data.transfer import to_device
from bridge_torch.triton_support import kernels_run_on

log = logging.getLogger(__name__)

CPU_CHUNK_BYTES = 3 << 20  # float32 working set per chunk on CPU (fits in L2/L3 cache)


class Augmenter:
    """Augments the images of a batch (``bridge_torch.batch`` layout) on the batch's device."""

    def __init__(self, cfg: AugmentConfig, *, seed: int) -> None:
        """Args:
            seed: generator seed; under DDP pass ``seed + rank`` so ranks draw different crops.
        """
        self.cfg, self.seed = cfg, seed
        self._plan = plan(cfg.order)
        self._ops = kernel_ops(cfg.order)
        self._op_codes = augment_cpu.op_codes(self._ops)
        self._compiled: tuple[Callable, Callable] | None = None  # built when first needed
        self._generator = torch.Generator()
        self._generator.manual_seed(seed)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Return a new batch with augmented ``observations.image``, ``goals.image`` and (crop
        only) ``observations.saliency``; the input batch is not modified."""
        if not self.cfg.enabled:
            return batch
        observations = dict(batch[OBSERVATIONS])
        obs_images = observations[IMAGE]  # (B, K, H, W, 3) uint8
        batch_size, window = obs_images.shape[:2]
        params = self.draw(batch_size, obs_images.device)  # (B, NUM_PARAMS)
        images = [obs_images.reshape(batch_size * window, *obs_images.shape[2:])]
        per_image = [params.repeat_interleave(window, dim=0)]  # every frame: its sample's
        if GOALS in batch:
            images.append(batch[GOALS][IMAGE])
            different = self.cfg.augment_next_obs_goal_differently
            per_image.append(self.draw(batch_size, obs_images.device) if different else params)
        kernel = self._whole_augmentation_kernel(obs_images)
        if kernel is not None:  # one kernel per image group: no concatenated copy of the batch
            augmented = [kernel(x, p) for x, p in zip(images, per_image, strict=True)]
        else:  # one pass over all images of the batch (on CUDA: one set of kernel launches)
            colour, finish = self._pytorch_ops(obs_images.device)
            augmented = _augment(torch.cat(images), torch.cat(per_image), self._plan, colour,
                                 finish).split([len(x) for x in images])
        observations[IMAGE] = augmented[0].view(obs_images.shape)
        out = {**batch, OBSERVATIONS: observations}
        if GOALS in batch:
            out[GOALS] = {**batch[GOALS], IMAGE: augmented[1]}
        if SALIENCY in observations and "crop" in self.cfg.order:
            maps = _crop(observations[SALIENCY][:, None], params)[:, 0]
            observations[SALIENCY], informative = minmax_normalize(maps)
            observations[SALIENCY_MASK] = observations[SALIENCY_MASK] & informative
        return out

    def _whole_augmentation_kernel(self, images: torch.Tensor) -> Callable | None:
        """``(images, params) -> augmented`` through one kernel for all ops - C on CPU
        (``native_cpu``), Triton on CUDA (``fused_cuda``) - or None for the PyTorch ops."""
        if images.device.type == "cpu" and self.cfg.native_cpu:
            kernel = augment_cpu.load_kernel()
            if kernel is not None and _runs_all(augment_cpu.supported_ops(kernel), self._ops,
                                                "the C kernel"):
                return functools.partial(augment_cpu.augment, codes=self._op_codes,
                                         kernel=kernel)
        elif self.cfg.fused_cuda and kernels_run_on(images):
            if _runs_all(augment_cuda.SUPPORTED_OPS, self._ops, "the Triton kernel"):
                return functools.partial(augment_cuda.augment, ops=self._ops)
        elif self.cfg.fused_cuda and images.is_cuda:
            _warn_no_triton()
        return None

    def compiles_on(self, device: torch.device) -> bool:
        """Whether batches on ``device`` that take the PyTorch path (CUDA, or CPU without the
        native kernel) go through the compiled colour ops."""
        if self.cfg.compile is None:
            return device.type == "cuda"
        return self.cfg.compile

    def _pytorch_ops(self, device: torch.device) -> tuple[Callable, Callable]:
        """The colour-run and finishing functions of the PyTorch path, compiled if
        ``compiles_on(device)``. torch.compile fuses each run of colour ops - the last one
        together with the rounding and the float -> interleaved uint8 store - into a few kernels
        (CPU: C++ loops, CUDA: Triton); the crop stays the eager grid_sample, which compiles to
        slower gathers. The wrappers are made on first use (importing the compiler takes ~2 s)
        and compile on their first batch."""
        if not self.compiles_on(device):
            return _apply_colour, _finish_eager
        if self._compiled is None:
            self._compiled = (torch.compile(_apply_colour, dynamic=False),
                              _compiled_finish(torch.compile(_finish_to_uint8, dynamic=False)))
        return self._compiled

    def state_dict(self) -> dict[str, Any]:
        """Generator state (uint8 tensor) and seed: plain data, ``weights_only``-loadable."""
        return {"generator": self._generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(torch.as_tensor(state["generator"], dtype=torch.uint8).cpu())

    def draw(self, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Independent parameters per sample, as float32 (B, NUM_PARAMS) on ``device`` (columns
        TOP ... HUE, ``ops.draw_parameters``); advances the augmenter's generator."""
        params = draw_parameters(self.cfg, self._generator, batch_size)
        return to_device(params, torch.device(device))


def _runs_all(supported: frozenset[str], ops: list[str], kernel: str) -> bool:
    """Whether ``kernel`` implements every op of ``ops``; if not, say once which it lacks."""
    missing = tuple(op for op in ops if op not in supported)
    if missing:
        _warn_missing_ops(kernel, missing)
    return not missing


@functools.cache
def _warn_missing_ops(kernel: str, missing: tuple[str, ...]) -> None:
    log.warning("%s does not implement %s: augmenting with PyTorch ops instead", kernel,
                ", ".join(missing))


@functools.cache
def _warn_no_triton() -> None:
    log.warning("augment.fused_cuda needs triton, which is not installed; augmenting CUDA "
                "batches with PyTorch ops instead")


def _augment(images: torch.Tensor, params: torch.Tensor, plan: list[str | tuple[str, ...]],
             colour: Callable, finish: Callable) -> torch.Tensor:
    """Apply ``plan`` to uint8 images (n, H, W, 3) with per-image ``params`` (n, NUM_PARAMS).

    ``finish(x, params, ops, out)`` applies the plan's trailing colour run (``ops``, possibly
    empty) and stores the rounded result in ``out``; ``colour`` applies the other colour runs.
    """
    out = torch.empty_like(images)
    n, height, width = images.shape[:3]
    body, last = (plan[:-1], plan[-1]) if plan and plan[-1] != "crop" else (plan, ())
    chunk, planar = n, False
    if images.device.type == "cpu":
        chunk = max(1, CPU_CHUNK_BYTES // (height * width * 3 * 4))
        # CPU colour ops run 2x faster on planar memory; a leading crop (grid_sample) reads the
        # channels-last frames as well and writes planar output itself.
        planar = not (body and body[0] == "crop")
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        x = images[part].permute(0, 3, 1, 2)  # (n, 3, H, W) view of the channels-last frames
        x = (x.contiguous() if planar else x).float()
        for segment in body:
            x = _crop(x, params[part]) if segment == "crop" else colour(x, params[part], segment)
        finish(x, params[part], last, out[part])
    return out


def _apply_colour(images: torch.Tensor, params: torch.Tensor,
                  ops: tuple[str, ...]) -> torch.Tensor:
    """A run of colour ops on float images (n, 3, H, W) in [0, 255]."""
    for op in ops:
        images = OPS[op].apply(images, params)
    return images


def _finish_eager(images: torch.Tensor, params: torch.Tensor, ops: tuple[str, ...],
                  out: torch.Tensor) -> None:
    _store_uint8(_apply_colour(images, params, ops).round_(), out)


def _finish_to_uint8(images: torch.Tensor, params: torch.Tensor,
                     ops: tuple[str, ...]) -> torch.Tensor:
    """Colour ops, rounding and conversion to interleaved uint8 (n, H, W, 3): one compiled
    kernel writes the output layout directly (eagerly, the interleaving copy costs as much as
    all the colour ops together)."""
    rounded = _apply_colour(images, params, ops).round()
    return rounded.permute(0, 2, 3, 1).to(torch.uint8).contiguous()


def _compiled_finish(compiled: Callable) -> Callable:
    def finish(images: torch.Tensor, params: torch.Tensor, ops: tuple[str, ...],
               out: torch.Tensor) -> None:
        out.copy_(compiled(images, params, ops))
    return finish


def _store_uint8(images: torch.Tensor, out: torch.Tensor) -> None:
    """Write rounded float images (n, 3, H, W) into uint8 ``out`` (n, H, W, 3)."""
    if images.is_cuda or images.is_contiguous(memory_format=torch.channels_last):
        out.copy_(images.permute(0, 2, 3, 1))
    else:  # CPU, planar float -> interleaved uint8: per-channel strided copies are the fastest
        for channel in range(3):
            out[..., channel].copy_(images[:, channel])


def _crop(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Bilinear crop-and-resize of each image's box back to its full size (TF crop_and_resize).

    Box corners map to pixel centres (TF's ``(H - 1)`` scaling = ``align_corners=True``).

    Args:
        images: float32 (n, C, H, W).
        params: (n, NUM_PARAMS) with the box in TOP, LEFT, HEIGHT, WIDTH (image fractions).
    """
    n, _, height, width = images.shape
    ys = torch.linspace(0.0, 1.0, height, device=images.device)
    xs = torch.linspace(0.0, 1.0, width, device=images.device)
    grid = torch.empty((n, height, width, 2), device=images.device)
    grid[..., 0] = ((params[:, LEFT, None] + xs * params[:, WIDTH, None]) * 2.0 - 1.0)[:, None, :]
    grid[..., 1] = ((params[:, TOP, None] + ys * params[:, HEIGHT, None]) * 2.0 - 1.0)[:, :, None]
    # A convex combination of pixels stays within [0, 255]: no clip needed after the crop.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=True)
