"""The fused Triton GroupNorm + residual + swish against a float64 reference, values and
gradients. Runs on CUDA; on the CPU only when the suite runs with ``TRITON_INTERPRET=1`` and
triton installed (the kernels then run in Triton's interpreter, which in Triton 3.6 needs
numpy < 2.4)."""

import pytest
import torch
import torch.nn.functional as F

from bridge_torch.models import group_norm
from bridge_torch.models.group_norm import GroupNormAct, fused_kernels_apply
from helpers import NEEDS_CUDA_AND_TRITON, NEEDS_TRITON_COMPILER, TRITON_DEVICES, compile_for_hopper

# (N, C, H, W): channels per group 12 (not a power of two) and pixels not a multiple of a tile
SHAPES = [(3, 48, 7, 7), (2, 64, 33, 33)]


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference).norm() / reference.norm()).item()


def run(norm: torch.nn.Module, x: torch.Tensor, residual: torch.Tensor | None,
        grad: torch.Tensor) -> list[torch.Tensor]:
    """Output and gradients of x, weight, bias (and residual)."""
    inputs = [x] + ([residual] if residual is not None else [])
    for tensor in inputs:
        tensor.requires_grad_(True)
    out = norm(x, residual)
    grads = torch.autograd.grad(out, [*inputs[:1], norm.weight, norm.bias, *inputs[1:]], grad)
    return [out, *grads]


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              residual: torch.Tensor | None, swish: bool, grad: torch.Tensor) -> list:
    """The same computation in float64 with PyTorch's own ops."""
    class Reference(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(weight.detach().double().clone())
            self.bias = torch.nn.Parameter(bias.detach().double().clone())

        def forward(self, x, residual):
            y = F.group_norm(x, 4, self.weight, self.bias, 1e-5)
            y = y if residual is None else y + residual
            return F.silu(y) if swish else y

    detached = residual.detach().double() if residual is not None else None
    return run(Reference(), x.detach().double(), detached, grad.double())


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("swish", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_matches_float64_reference(device, shape, swish, with_residual, dtype) -> None:
    if device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the interpreter computes bf16 through numpy float32")
    generator = torch.Generator().manual_seed(hash((shape, swish, with_residual)) % 2**31)

    def draw(*size: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(size, generator=generator) * scale + offset

    x = draw(*shape, scale=3.0, offset=2.0)  # a mean far from 0 tests the centred variance
    x = x.to(device, dtype).contiguous(memory_format=torch.channels_last)
    residual = draw(*shape).to(device, dtype) if with_residual else None
    grad = draw(*shape).to(device, dtype).contiguous(memory_format=torch.channels_last)
    norm = GroupNormAct(4, shape[1], torch.nn.SiLU() if swish else None).to(device)
    with torch.no_grad():
        norm.weight.copy_(draw(shape[1], offset=1.0))
        norm.bias.copy_(draw(shape[1]))
    assert fused_kernels_apply(x)
    fused = run(norm, x, residual, grad)
    expected = reference(x, norm.weight, norm.bias, residual, swish, grad)
    assert fused[0].dtype == dtype and fused[0].is_contiguous(memory_format=torch.channels_last)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    names = ["output", "grad x", "grad weight", "grad bias", "grad residual"]
    for name, value, target in zip(names, fused, expected, strict=False):
        assert torch.isfinite(value).all(), name
        assert relative_error(value, target) < tolerance, name


@pytest.mark.cuda
@NEEDS_CUDA_AND_TRITON
def test_fused_norm_compiles_into_a_graph() -> None:
    norm = GroupNormAct(4, 32, torch.nn.SiLU()).cuda()
    x = torch.randn(4, 32, 8, 8, device="cuda").contiguous(memory_format=torch.channels_last)
    residual = torch.randn_like(x)
    compiled = torch.compile(norm, fullgraph=True)
    torch.testing.assert_close(compiled(x, residual), norm(x, residual))


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_custom_op_path_matches_the_eager_path(device) -> None:
    """What torch.compile traces (the registered custom ops and their autograd) computes what
    eager calls (the autograd.Function) do."""
    generator = torch.Generator().manual_seed(0)
    x, residual, grad = (torch.randn((2, 16, 5, 5), generator=generator).to(device)
                         .contiguous(memory_format=torch.channels_last) for _ in range(3))
    weight = (torch.randn(16, generator=generator) + 1).to(device)
    bias = torch.randn(16, generator=generator).to(device)

    def output_and_grads(call) -> list[torch.Tensor]:
        inputs = [t.clone().requires_grad_(True) for t in (x, weight, bias, residual)]
        out = call(*inputs)
        return [out, *torch.autograd.grad(out, inputs, grad)]

    eager = output_and_grads(lambda *a: group_norm.fused_group_norm_act(*a, 4, 1e-5, True))
    traced = output_and_grads(
        lambda *a: torch.ops.bridge_torch.group_norm_act(*a, 4, 1e-5, True)[0])
    for a, b in zip(eager, traced, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@NEEDS_TRITON_COMPILER
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize(("residual", "swish"), [(True, True), (False, False)])
def test_kernels_compile_for_a_hopper_gpu_without_one(dtype: str, residual: bool,
                                                      swish: bool) -> None:
    tensor, stats = f"*{dtype}", "*fp32"
    sizes = {"hw": "i32", "c": "i32", "channels": "i32"}
    constants = {"GROUPS": 4, "HAS_RESIDUAL": residual, "SWISH": swish, "BLOCK_HW": 256,
                 "BLOCK_C": 16}
    forward = {"X": tensor, "R": tensor, "W": stats, "B": stats, "Y": tensor, "MEAN": stats,
               "RSTD": stats, **sizes, "eps": "fp32"}
    backward = {"G": tensor, "X": tensor, "R": tensor, "W": stats, "B": stats, "MEAN": stats,
                "RSTD": stats, "GX": tensor, "GR": tensor, "PW": stats, "PB": stats, **sizes}
    for kernel, signature in ((group_norm._forward_kernel, forward),
                              (group_norm._backward_kernel, backward)):
        assert f".entry {kernel.__name__}" in compile_for_hopper(kernel, signature, constants)
