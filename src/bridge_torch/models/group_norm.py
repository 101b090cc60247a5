"""GroupNorm fused with the residual add and swish that follow it in every ResNet block.

``act(group_norm(x) + residual)`` is the encoder's hot spot on a GPU. PyTorch's own GroupNorm
kernel wants NCHW-contiguous input, so with channels-last activations (what the convolutions
want) every norm copies its input, output and both gradients between layouts, runs in float32
under autocast, and the add and the swish are separate passes. On CUDA this module instead runs
two Triton kernels over the channels-last tensor as it is: one forward (statistics, normalise,
scale and shift, residual, swish) and one backward that recomputes the activation from the saved
per-group mean and 1/std instead of storing it. Statistics are accumulated in float32 whatever
the input dtype; the output keeps the input's dtype (bf16 under autocast).

Everywhere else (CPU, NCHW-contiguous input, relu/gelu, ``fused=False``) it computes exactly
``act(F.group_norm(x) + residual)``. The parameters are ``weight`` and ``bias`` as in
``nn.GroupNorm``, so checkpoints are the same either way.
"""

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from bridge_torch.triton_support import kernels_run_on, tl, triton

TILE_ELEMENTS = 4096  # elements of one (pixels x channels) tile a kernel loads at a time


class GroupNormAct(nn.Module):
    """``act(GroupNorm(x) + residual)``; ``act`` is None (identity) or an activation module."""

    def __init__(self, groups: int, channels: int, act: nn.Module | None = None,
                 eps: float = 1e-5, fused: bool = True) -> None:
        super().__init__()
        self.groups, self.eps, self.act, self.fused = groups, eps, act, fused
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        swish = isinstance(self.act, nn.SiLU)
        if self.fused and (self.act is None or swish) and fused_kernels_apply(x):
            return fused_group_norm_act(x, self.weight, self.bias, residual, self.groups,
                                        self.eps, swish)
        y = F.group_norm(x, self.groups, self.weight, self.bias, self.eps)
        if residual is not None:
            y = residual + y
        return y if self.act is None else self.act(y)

    def extra_repr(self) -> str:
        return (f"{self.groups}, {self.weight.numel()}, eps={self.eps}, act={self.act}, "
                f"fused={self.fused}")


def fused_kernels_apply(x: torch.Tensor) -> bool:
    """The Triton kernels handle 4-d channels-last tensors on CUDA (or anywhere when
    interpreted)."""
    return (kernels_run_on(x) and x.ndim == 4
            and x.is_contiguous(memory_format=torch.channels_last))


def fused_group_norm_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                         residual: torch.Tensor | None, groups: int, eps: float,
                         swish: bool) -> torch.Tensor:
    """The fused forward, differentiable in ``x``, ``weight``, ``bias`` and ``residual``.

    Eager calls go through a plain ``autograd.Function`` (a step is launch-bound, and the
    custom-op dispatch costs more per call); under ``torch.compile`` the same kernels are the
    registered custom ops, which the compiler can trace around."""
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    if torch.compiler.is_compiling():
        return torch.ops.bridge_torch.group_norm_act(x, weight, bias, residual, groups, eps,
                                                     swish)[0]
    return _FusedGroupNormAct.apply(x, weight, bias, residual, groups, eps, swish)


class _FusedGroupNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, groups, eps, swish):
        y, mean, rstd = _launch_forward(x, weight, bias, residual, groups, eps, swish)
        _save_for_backward(ctx, (x, weight, bias, residual, groups, eps, swish), mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        return _input_grads(ctx, grad, _launch_backward)


def _save_for_backward(ctx, inputs: tuple, mean: torch.Tensor, rstd: torch.Tensor) -> None:
    """What both autograd paths keep: the inputs and the per-group statistics."""
    x, weight, bias, residual, groups, _, swish = inputs
    ctx.save_for_backward(x, weight, bias, residual, mean, rstd)
    ctx.groups, ctx.swish = groups, swish


def _input_grads(ctx, grad: torch.Tensor, backward: Callable) -> tuple:
    """Gradients for (x, weight, bias, residual, groups, eps, swish), computed by ``backward``
    (the launcher, or its custom op under torch.compile)."""
    x, weight, bias, residual, mean, rstd = ctx.saved_tensors
    grad_x, grad_w, grad_b, grad_r = backward(grad, x, weight, bias, residual, mean, rstd,
                                              ctx.groups, ctx.swish)
    return grad_x, grad_w, grad_b, grad_r if residual is not None else None, None, None, None


def _launch_shape(x: torch.Tensor, groups: int) -> tuple[int, int, int, int, int]:
    """(N, C, H*W, channels per group padded to a power of two, pixels per tile)."""
    n, c, h, w = x.shape
    block_c = triton.next_power_of_2(c // groups)
    block_hw = max(1, min(triton.next_power_of_2(h * w), TILE_ELEMENTS // block_c))
    return n, c, h * w, block_c, block_hw


def _launch_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    residual: Optional[torch.Tensor], groups: int, eps: float,
                    swish: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(y, mean, rstd)``; ``mean`` and ``rstd`` are (N, groups) float32."""
    n, c, hw, block_c, block_hw = _launch_shape(x, groups)
    y = torch.empty_like(x)
    mean = torch.empty((n, groups), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    _forward_kernel[(n * groups,)](
        x, residual if residual is not None else x, weight, bias, y, mean, rstd, hw, c,
        c // groups, eps, GROUPS=groups, HAS_RESIDUAL=residual is not None, SWISH=swish,
        BLOCK_HW=block_hw, BLOCK_C=block_c)
    return y, mean, rstd


def _launch_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    residual: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor, groups: int,
    swish: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(grad_x, grad_weight, grad_bias, grad_residual)``; ``grad_residual`` is the
    gradient of the pre-activation (empty when there is no residual)."""
    n, c, hw, block_c, block_hw = _launch_shape(x, groups)
    grad = grad.contiguous(memory_format=torch.channels_last)
    grad_x = torch.empty_like(x)
    grad_residual = torch.empty_like(residual) if residual is not None else x.new_empty(0)
    partial_w = torch.empty((n, c), device=x.device, dtype=torch.float32)
    partial_b = torch.empty_like(partial_w)
    _backward_kernel[(n * groups,)](
        grad, x, residual if residual is not None else x, weight, bias, mean, rstd, grad_x,
        grad_residual, partial_w, partial_b, hw, c, c // groups, GROUPS=groups,
        HAS_RESIDUAL=residual is not None, SWISH=swish, BLOCK_HW=block_hw, BLOCK_C=block_c)
    return (grad_x, partial_w.sum(0).to(weight.dtype), partial_b.sum(0).to(bias.dtype),
            grad_residual)


# The same launchers as custom ops, for torch.compile (which cannot trace into Triton launches
# made from an autograd.Function's Python).
_group_norm_act = torch.library.custom_op("bridge_torch::group_norm_act", _launch_forward,
                                          mutates_args=())
_group_norm_act_backward = torch.library.custom_op("bridge_torch::group_norm_act_backward",
                                                   _launch_backward, mutates_args=())


@_group_norm_act.register_fake
def _(x, weight, bias, residual, groups, eps, swish):
    stats = x.new_empty((x.shape[0], groups), dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats)


@_group_norm_act_backward.register_fake
def _(grad, x, weight, bias, residual, mean, rstd, groups, swish):
    grad_residual = torch.empty_like(residual) if residual is not None else x.new_empty(0)
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias), grad_residual


_group_norm_act.register_autograd(
    lambda ctx, grad_y, _grad_mean, _grad_rstd: _input_grads(
        ctx, grad_y, torch.ops.bridge_torch.group_norm_act_backward),
    setup_context=lambda ctx, inputs, output: _save_for_backward(ctx, inputs, *output[1:]))

if triton is not None:

    @triton.jit
    def _tile(base, start, hw, c, channels, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
        """Offsets and mask of one (pixels x channels-of-the-group) tile of an NHWC tensor."""
        rows = start + tl.arange(0, BLOCK_HW)
        cols = tl.arange(0, BLOCK_C)
        mask = (rows < hw)[:, None] & (cols < channels)[None, :]
        return base + rows[:, None] * c + cols[None, :], mask

    @triton.jit
    def _forward_kernel(X, R, W, B, Y, MEAN, RSTD, hw, c, channels, eps, GROUPS: tl.constexpr,
                        HAS_RESIDUAL: tl.constexpr, SWISH: tl.constexpr,
                        BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
        """One program per (sample, group): mean, then the centred variance, then the output."""
        pid = tl.program_id(0)
        group = pid % GROUPS
        base = (pid // GROUPS) * hw * c + group * channels
        count = hw * channels
        total = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        for start in range(0, hw, BLOCK_HW):
            offs, mask = _tile(base, start, hw, c, channels, BLOCK_HW, BLOCK_C)
            total += tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(tl.sum(total, axis=1), axis=0) / count
        total = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        for start in range(0, hw, BLOCK_HW):
            offs, mask = _tile(base, start, hw, c, channels, BLOCK_HW, BLOCK_C)
            centred = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - mean
            total += tl.where(mask, centred * centred, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(total, axis=1), axis=0) / count + eps)
        tl.store(MEAN + pid, mean)
        tl.store(RSTD + pid, rstd)
        cols = tl.arange(0, BLOCK_C)
        weight = tl.load(W + group * channels + cols, mask=cols < channels, other=0.0)
        shift = tl.load(B + group * channels + cols, mask=cols < channels, other=0.0)
        scale = (weight.to(tl.float32) * rstd)[None, :]
        shift = (shift.to(tl.float32) - mean * weight.to(tl.float32) * rstd)[None, :]
        for start in range(0, hw, BLOCK_HW):
            offs, mask = _tile(base, start, hw, c, channels, BLOCK_HW, BLOCK_C)
            z = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) * scale + shift
            if HAS_RESIDUAL:
                z += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
            if SWISH:
                z = z * tl.sigmoid(z)
            tl.store(Y + offs, z.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _normalised_and_grad(G, X, R, offs, mask, mean, rstd, weight, bias,
                             HAS_RESIDUAL: tl.constexpr, SWISH: tl.constexpr):
        """A tile's normalised input and the gradient at the pre-activation (the swish is
        recomputed from the input, not stored)."""
        xhat = (tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - mean) * rstd
        dz = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        if SWISH:
            z = xhat * weight + bias
            if HAS_RESIDUAL:
                z += tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            dz = dz * sig * (1.0 + z * (1.0 - sig))
        return xhat, dz

    @triton.jit
    def _backward_kernel(G, X, R, W, B, MEAN, RSTD, GX, GR, PW, PB, hw, c, channels,
                         GROUPS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SWISH: tl.constexpr,
                         BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
        """One program per (sample, group). Pass 1: the group sums of the normalised-input
        gradient and per-channel partial weight/bias gradients; pass 2: the input gradient."""
        pid = tl.program_id(0)
        sample = pid // GROUPS
        group = pid % GROUPS
        base = sample * hw * c + group * channels
        count = hw * channels
        mean = tl.load(MEAN + pid)
        rstd = tl.load(RSTD + pid)
        cols = tl.arange(0, BLOCK_C)
        weight = tl.load(W + group * channels + cols, mask=cols < channels, other=0.0)
        weight = weight.to(tl.float32)[None, :]
        bias = tl.load(B + group * channels + cols, mask=cols < channels, other=0.0)
        bias = bias.to(tl.float32)[None, :]
        sum_dxhat = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        sum_dxhat_xhat = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        grad_w = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        grad_b = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        for start in range(0, hw, BLOCK_HW):
            offs, mask = _tile(base, start, hw, c, channels, BLOCK_HW, BLOCK_C)
            xhat, dz = _normalised_and_grad(G, X, R, offs, mask, mean, rstd, weight, bias,
                                            HAS_RESIDUAL, SWISH)
            dz = tl.where(mask, dz, 0.0)
            xhat = tl.where(mask, xhat, 0.0)
            sum_dxhat += dz * weight
            sum_dxhat_xhat += dz * weight * xhat
            grad_w += dz * xhat
            grad_b += dz
        mean_dxhat = tl.sum(tl.sum(sum_dxhat, axis=1), axis=0) / count
        mean_dxhat_xhat = tl.sum(tl.sum(sum_dxhat_xhat, axis=1), axis=0) / count
        channel = sample * c + group * channels + cols
        tl.store(PW + channel, tl.sum(grad_w, axis=0), mask=cols < channels)
        tl.store(PB + channel, tl.sum(grad_b, axis=0), mask=cols < channels)
        for start in range(0, hw, BLOCK_HW):
            offs, mask = _tile(base, start, hw, c, channels, BLOCK_HW, BLOCK_C)
            xhat, dz = _normalised_and_grad(G, X, R, offs, mask, mean, rstd, weight, bias,
                                            HAS_RESIDUAL, SWISH)
            if HAS_RESIDUAL:
                tl.store(GR + offs, dz.to(GR.dtype.element_ty), mask=mask)
            dx = (dz * weight - mean_dxhat - xhat * mean_dxhat_xhat) * rstd
            tl.store(GX + offs, dx.to(GX.dtype.element_ty), mask=mask)
