"""The C kernel for CPU augmentation (data/augment_cpu.c) against the PyTorch ops it replaces."""

import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch

from bridge_torch.batch import GOALS, IMAGE, OBSERVATIONS
from bridge_torch.data.augment import Augmenter
from bridge_torch.data.augment import cpu_kernel as augment_cpu
from bridge_torch.data.augment.ops import (
    BRIGHTNESS,
    CONTRAST,
    HEIGHT,
    HUE,
    NUM_PARAMS,
    OPS,
    SATURATION,
    TOP,
    WIDTH,
    AugmentConfig,
)

# wider than the defaults, so clipping, saturation > 1 and large hue shifts all occur
STRONG = {"crop_scale": [0.3, 1.0], "crop_ratio": [0.7, 1.4], "brightness": 0.4,
          "contrast": [0.4, 1.6], "saturation": [0.0, 2.5], "hue": 0.5}
ORDERS = [
    ["crop", "brightness", "contrast", "saturation", "hue"],  # the default (JAX) order
    ["crop"], ["brightness"], ["contrast"], ["saturation"], ["hue"],
    ["hue", "saturation"],  # fused HSV round trip, other order
    ["contrast", "crop", "saturation", "brightness"],  # crop from float, saturation alone
    [],
]


def batch(samples: int = 6, window: int = 2, height: int = 20, width: int = 36,
          seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (samples, window + 1, height, width, 3), generator=generator,
                           dtype=torch.uint8)
    images[0] = 0  # flat images: chroma 0 and contrast of a constant
    images[1, ..., 0] = images[1, ..., 1]  # ties between the max channels
    return {OBSERVATIONS: {IMAGE: images[:, :window].contiguous()},
            GOALS: {IMAGE: images[:, window].contiguous()}}


def augmented(cfg: AugmentConfig, data: dict) -> list[torch.Tensor]:
    out = Augmenter(cfg, seed=3)(data)
    return [out[OBSERVATIONS][IMAGE], out[GOALS][IMAGE]]


@pytest.mark.parametrize("order", ORDERS, ids=lambda order: "-".join(order) or "none")
def test_kernel_matches_the_pytorch_ops(order: list[str]) -> None:
    assert augment_cpu.load_kernel() is not None, "the test machine has a C compiler"
    data = batch(height=37, width=61)  # 2,257 pixels: three of the kernel's colour tiles
    native = augmented(AugmentConfig(order=order, **STRONG), data)
    reference = augmented(AugmentConfig(order=order, native_cpu=False, compile=False, **STRONG),
                          data)
    for got, expected in zip(native, reference, strict=True):
        assert got.shape == expected.shape and got.dtype == torch.uint8
        diff = (got.int() - expected.int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.01  # float rounding only


def _cpu_has_avx512() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and " avx512f" in cpuinfo.read_text()


@pytest.mark.skipif(not _cpu_has_avx512(), reason="the CPU has no AVX-512")
@pytest.mark.parametrize("order", ORDERS, ids=lambda order: "-".join(order) or "none")
def test_avx512_paths_equal_the_portable_loops_bit_for_bit(order: list[str]) -> None:
    kernel = augment_cpu.load_kernel()
    generator = torch.Generator().manual_seed(5)
    # widths off the 16-pixel blocks, so the vector loops hand their tails to the scalar ones
    images = torch.randint(0, 256, (7, 37, 53, 3), generator=generator, dtype=torch.uint8)
    u = torch.rand(7, NUM_PARAMS, generator=generator)
    params = torch.empty(7, NUM_PARAMS)
    params[:, HEIGHT:WIDTH + 1] = 0.3 + 0.7 * u[:, HEIGHT:WIDTH + 1]
    params[0, HEIGHT:WIDTH + 1] = 1.0  # the whole image: the widest span of source pixels
    params[:, TOP:TOP + 2] = u[:, TOP:TOP + 2] * (1.0 - params[:, HEIGHT:WIDTH + 1])
    params[:, BRIGHTNESS] = 0.8 * u[:, BRIGHTNESS] - 0.4
    params[:, CONTRAST] = 0.4 + 1.2 * u[:, CONTRAST]
    params[:, SATURATION] = 2.5 * u[:, SATURATION]
    params[:, HUE] = u[:, HUE] - 0.5
    codes = augment_cpu.op_codes(order)
    vector = augment_cpu.augment(images, params, codes, kernel)
    portable = augment_cpu.augment(images, params, codes, kernel, allow_avx512=False)
    assert torch.equal(vector, portable)


def test_kernel_is_clean_under_the_address_and_undefined_behaviour_sanitizers(tmp_path) -> None:
    """Many image sizes, crop boxes and op orders through the kernel built with ASan and UBSan
    (tests/augment_cpu_sanitized.c); with AVX-512, also its vector loops against the portable
    ones."""
    driver = tmp_path / "augment_cpu_sanitized"
    build = subprocess.run(
        [os.environ.get("CC", "cc"), "-O1", "-g", "-std=c11", "-fno-math-errno",
         "-fno-trapping-math", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         f"-I{augment_cpu.SOURCE.parent}", "-o", str(driver),
         str(Path(__file__).with_name("augment_cpu_sanitized.c")), "-lm"],
        capture_output=True, text=True, timeout=120)
    if build.returncode != 0 and "sanitize" in build.stderr:
        pytest.skip(f"the C compiler cannot build with sanitizers: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(driver)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "1872 cases, 0 differences"


def test_kernel_results_do_not_depend_on_the_thread_count() -> None:
    data = batch(samples=9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = augmented(AugmentConfig(**STRONG), data)
        torch.set_num_threads(3)
        several = augmented(AugmentConfig(**STRONG), data)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(single, several, strict=True):
        assert torch.equal(a, b)


def test_without_a_compiler_the_pytorch_ops_are_used(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setenv("BRIDGE_TORCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    augment_cpu.load_kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert augment_cpu.load_kernel() is None
        assert "cannot build the CPU augmentation kernel" in caplog.text
        data = batch()
        fallback = augmented(AugmentConfig(**STRONG), data)
        reference = augmented(AugmentConfig(native_cpu=False, compile=False, **STRONG), data)
        for a, b in zip(fallback, reference, strict=True):
            assert torch.equal(a, b)
        assert list(tmp_path.iterdir()) == []  # nothing half-built left behind
    finally:
        augment_cpu.load_kernel.cache_clear()


def test_the_kernel_is_built_once_into_its_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("BRIDGE_TORCH_CACHE", str(tmp_path))
    augment_cpu.load_kernel.cache_clear()
    try:
        assert augment_cpu.load_kernel() is not None
        (library,) = tmp_path.glob("augment_cpu-*.so")
        built = library.stat().st_mtime_ns
        augment_cpu.load_kernel.cache_clear()
        assert augment_cpu.load_kernel() is not None
        assert library.stat().st_mtime_ns == built and len(list(tmp_path.iterdir())) == 1
    finally:
        augment_cpu.load_kernel.cache_clear()


def test_an_empty_batch_gives_an_empty_batch() -> None:
    empty = torch.zeros((0, 8, 8, 3), dtype=torch.uint8)
    out = augment_cpu.augment(empty, torch.zeros(0, NUM_PARAMS), augment_cpu.op_codes(["crop"]),
                              augment_cpu.load_kernel())
    assert out.shape == (0, 8, 8, 3) and out.dtype == torch.uint8


def test_bad_inputs_are_refused_before_the_kernel_runs() -> None:
    kernel = augment_cpu.load_kernel()
    assert augment_cpu.supported_ops(kernel) == set(OPS)  # the kernel runs the whole table
    images = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        augment_cpu.augment(images.float(), torch.zeros(2, NUM_PARAMS),
                            augment_cpu.op_codes(["crop"]), kernel)
    with pytest.raises(ValueError, match="parameters"):
        augment_cpu.augment(images, torch.zeros(3, NUM_PARAMS),
                            augment_cpu.op_codes(["crop"]), kernel)


def test_an_order_with_an_op_the_kernel_lacks_runs_through_the_pytorch_ops(
        monkeypatch, caplog) -> None:
    """The C kernel is an accelerated subset of the op table: without "hue" it is not used."""
    lacking = frozenset(set(OPS) - {"hue", "saturation_hue"})
    monkeypatch.setattr(augment_cpu, "supported_ops", lambda kernel: lacking)
    calls = []
    monkeypatch.setattr(augment_cpu, "augment", lambda images, *a, **k: calls.append(1) or images)
    data = batch()
    with caplog.at_level(logging.WARNING):
        fallback = augmented(AugmentConfig(order=["crop", "hue"], **STRONG), data)
    reference = augmented(AugmentConfig(order=["crop", "hue"], native_cpu=False, compile=False,
                                        **STRONG), data)
    assert calls == []  # the kernel never ran
    assert "the C kernel does not implement hue" in caplog.text
    for got, want in zip(fallback, reference, strict=True):
        assert torch.equal(got, want)
    augmented(AugmentConfig(order=["crop", "brightness"], **STRONG), data)
    assert calls  # an order within its subset still goes through the kernel


def test_the_kernel_reports_the_table_names_of_its_codes() -> None:
    kernel = augment_cpu.load_kernel()
    for op in OPS.values():
        assert kernel.op_name(op.code).decode() == op.name
    assert kernel.op_name(len(OPS)) is None and kernel.op_name(-1) is None
