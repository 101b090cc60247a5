"""The Triton augmentation kernel (data/augment_cuda.py) against the PyTorch ops it replaces.

The kernel tests run on CUDA, and on the CPU in Triton's interpreter (``TRITON_INTERPRET=1`` with
triton installed); the description of an op order the kernel compiles from is checked
everywhere."""

import pytest
import torch

from bridge_torch.batch import GOALS, IMAGE, OBSERVATIONS, SALIENCY, SALIENCY_MASK
from bridge_torch.data.augment import augmenter as augment
from bridge_torch.data.augment import triton_kernel as augment_cuda
from bridge_torch.data.augment.augmenter import AugmentConfig, Augmenter
from bridge_torch.data.augment.ops import NUM_PARAMS
from bridge_torch.data.augment.triton_kernel import OP_CODES
from helpers import NEEDS_TRITON_COMPILER, TRITON_DEVICES, compile_for_hopper
from test_augment_cpu import ORDERS, STRONG, batch


def on(device: str, data: dict) -> dict:
    return {key: {name: value.to(device) for name, value in group.items()}
            for key, group in data.items()}


def augmented(cfg: AugmentConfig, data: dict) -> dict:
    return Augmenter(cfg, seed=3)(data)


def encoded(*ops: str) -> int:
    return sum(OP_CODES[op] << (3 * k) for k, op in enumerate(ops))


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("order", [*ORDERS, ["brightness", "contrast", "crop"]],
                         ids=lambda order: "-".join(order) or "none")
def test_kernel_matches_the_pytorch_ops(device: str, order: list[str]) -> None:
    data = on(device, batch(height=21, width=34))  # odd sizes: partial blocks, uneven grid
    fused = augmented(AugmentConfig(order=order, fused_cuda=True, native_cpu=False, **STRONG),
                      data)
    reference = augmented(AugmentConfig(order=order, native_cpu=False, compile=False, **STRONG),
                          data)
    for key in (OBSERVATIONS, GOALS):
        got, expected = fused[key][IMAGE], reference[key][IMAGE]
        assert got.shape == expected.shape and got.dtype == torch.uint8
        assert got.device.type == device
        diff = (got.int() - expected.int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.01  # float rounding only


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_augmenter_uses_the_kernel_and_crops_saliency_as_before(device: str,
                                                               monkeypatch) -> None:
    data = batch(samples=4)
    data[OBSERVATIONS][SALIENCY] = torch.rand(4, 20, 36)
    data[OBSERVATIONS][SALIENCY_MASK] = torch.ones(4, dtype=torch.bool)
    data = on(device, data)
    calls = []
    kernel = augment_cuda.augment
    monkeypatch.setattr(augment_cuda, "augment", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    fused = augmented(AugmentConfig(fused_cuda=True, native_cpu=False), data)
    assert len(calls) == 2  # observation frames, goals
    reference = augmented(AugmentConfig(native_cpu=False, compile=False), data)
    for name in (SALIENCY, SALIENCY_MASK):
        assert torch.equal(fused[OBSERVATIONS][name], reference[OBSERVATIONS][name])


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_flat_and_single_pixel_images(device: str) -> None:
    # brightness +26.5 levels (exact in float32): 100 -> 126.5, a tie that rounds to even 126
    params = torch.tensor([[0.1, 0.2, 0.7, 0.6, 26.5 / 255, 1.5, 2.0, 0.25]] * 2, device=device)
    flat = torch.full((2, 5, 7, 3), 100, dtype=torch.uint8, device=device)
    out = augment_cuda.augment(flat, params, ["crop", "brightness", "contrast", "saturation_hue"])
    assert (out == 126).all()  # grey stays grey; contrast leaves a constant image alone
    dot = torch.tensor([[[[10, 200, 30]]]] * 2, dtype=torch.uint8, device=device)
    assert torch.equal(augment_cuda.augment(dot, params, ["crop"]), dot)


@NEEDS_TRITON_COMPILER
@pytest.mark.parametrize("order", ORDERS, ids=lambda order: "-".join(order) or "none")
def test_kernel_compiles_for_a_hopper_gpu_without_one(order: list[str]) -> None:
    ops = Augmenter(AugmentConfig(order=order), seed=0)._ops
    signature = {"images": "*u8", "out": "*u8", "params": "*fp32", "height": "i32",
                 "width": "i32"}
    constants = {**augment_cuda.kernel_constants(ops), "BLOCK": augment_cuda.BLOCK_PIXELS}
    ptx = compile_for_hopper(augment_cuda._augment_kernel, signature, constants,
                             augment_cuda.NUM_WARPS)
    assert ".entry _augment_kernel" in ptx


def test_kernel_constants_describe_the_order() -> None:
    assert augment_cuda.kernel_constants(["crop", "brightness", "contrast", "saturation_hue"]) \
        == {"PRE": 0, "CROP": True, "POST": encoded("brightness", "contrast", "saturation_hue"),
            "CONTRAST": augment_cuda.MEAN_OF_CROP, "BEFORE_CONTRAST": encoded("brightness")}
    assert augment_cuda.kernel_constants(["saturation", "contrast", "crop", "hue"]) \
        == {"PRE": encoded("saturation", "contrast"), "CROP": True, "POST": encoded("hue"),
            "CONTRAST": augment_cuda.MEAN_OF_FRAME, "BEFORE_CONTRAST": encoded("saturation")}
    assert augment_cuda.kernel_constants(["hue", "contrast"]) \
        == {"PRE": 0, "CROP": False, "POST": encoded("hue", "contrast"),
            "CONTRAST": augment_cuda.MEAN_OF_FRAME, "BEFORE_CONTRAST": encoded("hue")}
    assert augment_cuda.kernel_constants([]) == {
        "PRE": 0, "CROP": False, "POST": 0, "CONTRAST": augment_cuda.NO_CONTRAST,
        "BEFORE_CONTRAST": 0}


@pytest.mark.parametrize("ops", [["crop", "crop"], ["blur"], [
    "brightness", "contrast", "saturation", "hue", "saturation_hue"]])
def test_orders_the_kernel_cannot_take_are_refused(ops: list[str]) -> None:
    with pytest.raises(ValueError, match="distinct ops"):
        augment_cuda.kernel_constants(ops)


def test_bad_inputs_are_refused_before_the_kernel_runs() -> None:
    images = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        augment_cuda.augment(images.float(), torch.zeros(2, NUM_PARAMS), ["crop"])
    with pytest.raises(ValueError, match="parameters"):
        augment_cuda.augment(images, torch.zeros(3, NUM_PARAMS), ["crop"])


def test_cpu_batches_without_the_interpreter_take_the_pytorch_ops(monkeypatch) -> None:
    monkeypatch.setattr(augment, "kernels_run_on", lambda images: False)
    data = batch()
    fused = augmented(AugmentConfig(fused_cuda=True, native_cpu=False, compile=False), data)
    reference = augmented(AugmentConfig(native_cpu=False, compile=False), data)
    assert torch.equal(fused[GOALS][IMAGE], reference[GOALS][IMAGE])
