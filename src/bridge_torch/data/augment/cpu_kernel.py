"""CPU batches through one compiled C kernel (``augment_cpu.c``), built on first use.

On 2 CPU cores, PyTorch's augmentation is a chain of whole-batch passes (crop, each colour op,
rounding, the interleaved uint8 store), each near 1 ns per value per core: about 80 ms for the
512 images of a batch. ``augment_cpu.c`` applies the same ops in the same order to one image at
a time, whose float planes stay in the CPU cache, and is called through ``ctypes`` (which
releases the GIL) on ``torch.get_num_threads()`` threads over slices of the batch. Results equal
the PyTorch ops' up to float rounding (at most one uint8 level); on x86-64 CPUs with AVX-512 a
few loops use explicit vector code with bit-identical results. The kernel is compiled with the
system C compiler (``$CC``, default ``cc``) into the project's cache (``datasets.cache_root``:
``$BRIDGE_TORCH_CACHE`` or ``~/.cache/bridge_torch``) under a name keyed by its source; without a
compiler the augmenter uses the PyTorch ops (one warning).
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bridge_torch.data.augment.ops import NUM_PARAMS, OPS
from bridge_torch.data.datasets import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("augment_cpu.c")
# -fno-math-errno / -fno-trapping-math: no errno or FP-exception flags to keep, so floor and
# rounding vectorise; results are unchanged (no -ffast-math)
COMPILE_FLAGS = ["-O3", "-std=c11", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math"]


@functools.cache
def load_kernel() -> ctypes.CDLL | None:
    """The compiled kernel, built once per source version; None if it cannot be built."""
    compiler = os.environ.get("CC", "cc")
    fingerprint = b"\0".join([SOURCE.read_bytes(), compiler.encode(),
                              " ".join(COMPILE_FLAGS).encode(), platform.machine().encode()])
    library = cache_root() / f"augment_cpu-{hashlib.sha256(fingerprint).hexdigest()[:16]}.so"
    try:
        if not library.exists():
            library.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
                built = Path(tmp) / library.name
                subprocess.run([compiler, *COMPILE_FLAGS, "-o", str(built), str(SOURCE), "-lm"],
                               check=True, capture_output=True, text=True, timeout=120)
                built.replace(library)  # atomic: a concurrent process sees all of it or none
        kernel = ctypes.CDLL(str(library))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        log.warning("cannot build the CPU augmentation kernel from %s (%s); augmenting with "
                    "PyTorch ops instead", SOURCE.name, detail)
        return None
    kernel.augment.restype = ctypes.c_int
    kernel.augment.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4 + [ctypes.c_int32]
    kernel.op_name.restype = ctypes.c_char_p
    kernel.op_name.argtypes = [ctypes.c_int32]
    return kernel


def supported_ops(kernel: ctypes.CDLL) -> frozenset[str]:
    """The table's ops the kernel implements, checked code by code.

    Raises:
        RuntimeError: the kernel implements a code under another name than the table's.
    """
    supported = set()
    for op in OPS.values():
        name = kernel.op_name(op.code)
        if name is not None and name.decode() != op.name:
            raise RuntimeError(f"{SOURCE.name} implements op code {op.code} as {name.decode()!r}"
                               f", the op table as {op.name!r}")
        if name is not None:
            supported.add(op.name)
    return frozenset(supported)


def op_codes(ops: list[str]) -> torch.Tensor:
    """The int32 codes (op table) of ``ops``, in order."""
    return torch.tensor([OPS[op].code for op in ops], dtype=torch.int32)


def check_batch(images: torch.Tensor, params: torch.Tensor) -> None:
    """Refuse what a whole-augmentation kernel (C or Triton) cannot take, before it runs."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (n, H, W, 3) images, got {images.dtype} "
                         f"{tuple(images.shape)}")
    if params.shape != (images.shape[0], NUM_PARAMS):
        raise ValueError(f"expected ({images.shape[0]}, {NUM_PARAMS}) parameters, got "
                         f"{tuple(params.shape)}")


def augment(images: torch.Tensor, params: torch.Tensor, codes: torch.Tensor,
            kernel: ctypes.CDLL, *, allow_avx512: bool = True) -> torch.Tensor:
    """Apply the ops ``codes`` (from ``op_codes``) to uint8 images (n, H, W, 3) on the CPU with
    per-image ``params`` (n, NUM_PARAMS); returns new uint8 images (n, H, W, 3).
    ``allow_avx512=False`` runs the portable loops even on a CPU with AVX-512 (same results)."""
    check_batch(images, params)
    images = images.contiguous()
    params = params.to(torch.float32).contiguous()
    n, height, width, _ = images.shape
    out = torch.empty_like(images)
    if n == 0:
        return out
    threads = max(1, min(torch.get_num_threads(), n))
    bounds = [n * t // threads for t in range(threads + 1)]

    def run(start: int, stop: int) -> int:
        return kernel.augment(images[start].data_ptr(), out[start].data_ptr(),
                              params[start].data_ptr(), codes.data_ptr(), codes.numel(),
                              stop - start, height, width, allow_avx512)

    pool = _pool(threads) if threads > 1 else None
    codes_returned = list(pool.map(run, bounds[:-1], bounds[1:])) if pool else [run(0, n)]
    if any(codes_returned):
        raise MemoryError("the CPU augmentation kernel could not allocate its scratch images")
    return out


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """One long-lived pool per thread count, so a batch does not start threads."""
    return ThreadPoolExecutor(threads, thread_name_prefix="bridge_torch_augment")
