"""Optional Triton, for the fused GPU kernels (GroupNorm + swish, batch augmentation).

Linux CUDA builds of PyTorch ship Triton; CPU-only installs do not, and callers then use PyTorch
ops. With ``TRITON_INTERPRET=1`` the kernels also run on CPU tensors in Triton's interpreter,
which is how the test suite checks them without a GPU.
"""

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch paths are used
    triton = None
    tl = None

TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # kernels on CPU tensors, for tests


def kernels_run_on(tensor: torch.Tensor) -> bool:
    """Whether Triton kernels can take ``tensor``: CUDA with Triton installed, or interpreted."""
    return triton is not None and (tensor.is_cuda or TRITON_INTERPRET)
