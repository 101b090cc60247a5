"""Tests of data/augment.py and data/color.py: per-sample parameters, sharing, TF op semantics."""

import colorsys

import numpy as np
import pytest
import torch

from bridge_torch.batch import GOALS, IMAGE, OBSERVATIONS, SALIENCY, SALIENCY_MASK
from bridge_torch.data.augment import augmenter as augment
from bridge_torch.data.augment import ops
from bridge_torch.data.augment.augmenter import AugmentConfig, Augmenter
from bridge_torch.data.augment.color import adjust_saturation, adjust_saturation_hue

SIZE = 16
IDENTITY = {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "brightness": 0.0,
            "contrast": [1.0, 1.0], "saturation": [1.0, 1.0], "hue": 0.0}


def random_images(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (*shape, SIZE, SIZE, 3), generator=generator, dtype=torch.uint8)


def make_batch(obs, goal=None, saliency=None):
    observations = {IMAGE: obs}
    if saliency is not None:
        observations[SALIENCY] = saliency
        observations[SALIENCY_MASK] = torch.ones(obs.shape[0], dtype=torch.bool)
    batch = {OBSERVATIONS: observations}
    if goal is not None:
        batch[GOALS] = {IMAGE: goal}
    return batch


def test_samples_get_independent_parameters():
    image = random_images(1, 1).expand(8, 1, SIZE, SIZE, 3).contiguous()
    out = Augmenter(AugmentConfig(), seed=0)(make_batch(image))[OBSERVATIONS][IMAGE]
    for i in range(1, 8):
        assert not torch.equal(out[0], out[i])


@pytest.mark.parametrize("op", ops.CONFIGURABLE_OPS)
def test_each_op_varies_per_sample(op):
    image = random_images(1, 1).expand(6, 1, SIZE, SIZE, 3).contiguous()
    out = Augmenter(AugmentConfig(order=[op]), seed=1)(make_batch(image))[OBSERVATIONS][IMAGE]
    assert len({bytes(o.numpy()) for o in out}) == 6


def test_history_frames_share_parameters():
    frame = random_images(4, 1)
    obs = frame.expand(4, 3, SIZE, SIZE, 3).contiguous()
    out = Augmenter(AugmentConfig(), seed=0)(make_batch(obs))[OBSERVATIONS][IMAGE]
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert not torch.equal(out[:, 0], obs[:, 0])


@pytest.mark.parametrize("differently", [False, True])
def test_goal_shares_parameters_unless_configured(differently):
    obs = random_images(6, 1)
    cfg = AugmentConfig(augment_next_obs_goal_differently=differently)
    out = Augmenter(cfg, seed=0)(make_batch(obs, goal=obs[:, 0].clone()))
    same = [torch.equal(a, b) for a, b in zip(out[OBSERVATIONS][IMAGE][:, 0], out[GOALS][IMAGE],
                                                  strict=True)]
    assert all(same) if not differently else not any(same)


def test_saliency_is_cropped_with_the_image():
    obs = torch.zeros(8, 1, SIZE, SIZE, 3, dtype=torch.uint8)
    saliency = torch.zeros(8, SIZE, SIZE)
    rows, cols = [4, 5, 7, 8, 9, 10, 11, 6], [5, 9, 6, 7, 10, 8, 4, 11]
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        obs[i, 0, r, c] = 255
        saliency[i, r, c] = 1.0
    cfg = AugmentConfig(order=["crop"], crop_scale=[0.5, 0.7], crop_ratio=[0.8, 1.25])
    out = Augmenter(cfg, seed=0)(make_batch(obs, saliency=saliency))
    image = out[OBSERVATIONS][IMAGE][:, 0, :, :, 0].float()
    target = out[OBSERVATIONS][SALIENCY]
    assert not torch.equal(target, saliency)  # the box moved the dot
    for i in range(8):
        if out[OBSERVATIONS][SALIENCY_MASK][i]:
            assert torch.argmax(image[i]) == torch.argmax(target[i])
            torch.testing.assert_close(target[i], image[i] / image[i].max(), atol=0.02, rtol=0)
            assert target[i].max() == 1.0
        else:
            assert torch.all(target[i] == 0) and torch.all(image[i] == 0)


def test_crop_matches_tf_crop_and_resize():
    """Box corners map to pixel centres, bilinear (reference: TF crop_and_resize formula)."""
    image = torch.rand(1, 1, 5, 7) * 255
    params = torch.zeros(1, ops.NUM_PARAMS)
    params[0, [ops.TOP, ops.LEFT, ops.HEIGHT, ops.WIDTH]] = torch.tensor(
        [0.1, 0.25, 0.7, 0.6])
    out = augment._crop(image, params)[0, 0]
    src = image[0, 0].double().numpy()
    for i in range(5):
        for j in range(7):
            y = 0.1 * 4 + i * 0.7 * 4 / 4
            x = 0.25 * 6 + j * 0.6 * 6 / 6
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, 4), min(x0 + 1, 6)
            top = src[y0, x0] + (src[y0, x1] - src[y0, x0]) * (x - x0)
            bottom = src[y1, x0] + (src[y1, x1] - src[y1, x0]) * (x - x0)
            assert abs(out[i, j].item() - (top + (bottom - top) * (y - y0))) < 1e-3


def test_brightness_is_additive():
    obs = torch.empty(6, 2, SIZE, SIZE, 3, dtype=torch.uint8)
    obs[:, 0], obs[:, 1] = 60, 140  # two greys in one sample share the delta
    out = Augmenter(AugmentConfig(order=["brightness"]), seed=0)(make_batch(obs))
    shift = out[OBSERVATIONS][IMAGE].int() - obs.int()
    assert torch.all(shift == shift[:, :1, :1, :1, :1])  # same delta for every pixel and frame
    assert torch.all(shift.abs() <= 51) and len(set(shift[:, 0, 0, 0, 0].tolist())) > 1


def test_contrast_keeps_channel_means():
    generator = torch.Generator().manual_seed(0)
    obs = torch.randint(90, 160, (6, 1, SIZE, SIZE, 3), generator=generator, dtype=torch.uint8)
    out = Augmenter(AugmentConfig(order=["contrast"]), seed=0)(make_batch(obs))
    before = obs.float().mean(dim=(2, 3))
    after = out[OBSERVATIONS][IMAGE].float().mean(dim=(2, 3))
    torch.testing.assert_close(after, before, atol=0.6, rtol=0)  # rounding only
    spread = out[OBSERVATIONS][IMAGE].float().std(dim=(2, 3)) / obs.float().std(dim=(2, 3))
    assert spread.min() > 0.75 and spread.max() < 1.25 and spread.std() > 0.01


def test_hue_rotation_of_pure_red():
    red = torch.zeros(3, 3, 2, 2)
    red[:, 0] = 255.0
    out = adjust_saturation_hue(red, torch.ones(3), torch.tensor([1 / 3, -1 / 3, 0.5]))
    assert out[0, :, 0, 0].round().tolist() == [0.0, 255.0, 0.0]  # green
    assert out[1, :, 0, 0].round().tolist() == [0.0, 0.0, 255.0]  # blue
    assert out[2, :, 0, 0].round().tolist() == [0.0, 255.0, 255.0]  # cyan


def test_saturation_and_hue_match_colorsys():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(300, 3, 1, 1, generator=generator) * 255
    pixels[:3, :, 0, 0] = torch.tensor([[0.0, 0, 0], [80, 80, 80], [200, 200, 50]])
    factor = torch.rand(300, generator=generator) * 2
    delta = torch.rand(300, generator=generator) - 0.5
    both = adjust_saturation_hue(pixels.clone(), factor, delta)
    saturation_only = adjust_saturation(pixels.clone(), factor)
    for i in range(300):
        h, s, v = colorsys.rgb_to_hsv(*(pixels[i, :, 0, 0] / 255).tolist())
        s = min(s * factor[i].item(), 1.0)
        expected = torch.tensor(colorsys.hsv_to_rgb((h + delta[i].item()) % 1.0, s, v)) * 255
        torch.testing.assert_close(both[i, :, 0, 0], expected.float(), atol=1e-3, rtol=0)
        expected = torch.tensor(colorsys.hsv_to_rgb(h, s, v)) * 255
        torch.testing.assert_close(saturation_only[i, :, 0, 0], expected.float(), atol=1e-3,
                                   rtol=0)


def test_saturation_then_hue_is_fused_and_order_respected():
    assert ops.plan(["crop", "saturation", "hue"]) == ["crop", ("saturation_hue",)]
    assert ops.plan(["hue", "contrast", "saturation"]) == [("hue", "contrast", "saturation")]
    assert ops.plan(["brightness", "crop", "hue"]) == [("brightness",), "crop", ("hue",)]
    assert augment.kernel_ops(["hue", "saturation", "crop", "contrast"]) == [
        "saturation_hue", "crop", "contrast"]


def test_drawn_parameters_follow_the_config_and_the_seed():
    cfg = AugmentConfig(crop_scale=[0.5, 0.6], brightness=0.1, hue=0.05)
    params = Augmenter(cfg, seed=1).draw(4000)
    assert params.shape == (4000, ops.NUM_PARAMS) and params.dtype == torch.float32
    area = params[:, ops.HEIGHT] * params[:, ops.WIDTH]
    assert area.min() >= 0.5 - 1e-5 and area.max() <= 0.6 + 1e-5
    assert (params[:, ops.TOP] + params[:, ops.HEIGHT] <= 1 + 1e-6).all()
    assert params[:, ops.BRIGHTNESS].abs().max() <= 0.1
    assert params[:, ops.HUE].abs().max() <= 0.05
    assert torch.equal(params, Augmenter(cfg, seed=1).draw(4000))
    assert not torch.equal(params, Augmenter(cfg, seed=2).draw(4000))


def test_identity_when_ranges_are_degenerate():
    obs, goal = random_images(5, 2), random_images(5, seed=1)
    saliency = torch.rand(5, SIZE, SIZE)
    out = Augmenter(AugmentConfig(**IDENTITY), seed=0)(make_batch(obs, goal, saliency))
    assert torch.equal(out[OBSERVATIONS][IMAGE], obs)
    assert torch.equal(out[GOALS][IMAGE], goal)
    expected = (saliency - saliency.amin((1, 2), True)) / (
        saliency.amax((1, 2), True) - saliency.amin((1, 2), True))
    torch.testing.assert_close(out[OBSERVATIONS][SALIENCY], expected, atol=1e-5, rtol=0)


def test_disabled_and_unmodified_input():
    obs = random_images(3, 1)
    batch = make_batch(obs, goal=random_images(3, seed=2))
    assert Augmenter(AugmentConfig(enabled=False), seed=0)(batch) is batch
    kept = obs.clone()
    out = Augmenter(AugmentConfig(), seed=0)(batch)
    assert torch.equal(batch[OBSERVATIONS][IMAGE], kept)
    assert out[OBSERVATIONS] is not batch[OBSERVATIONS]


def test_deterministic_by_seed():
    batch = make_batch(random_images(4, 2), goal=random_images(4, seed=3))
    a = Augmenter(AugmentConfig(), seed=7)(batch)
    b = Augmenter(AugmentConfig(), seed=7)(batch)
    c = Augmenter(AugmentConfig(), seed=8)(batch)
    assert torch.equal(a[OBSERVATIONS][IMAGE], b[OBSERVATIONS][IMAGE])
    assert torch.equal(a[GOALS][IMAGE], b[GOALS][IMAGE])
    assert not torch.equal(a[OBSERVATIONS][IMAGE], c[OBSERVATIONS][IMAGE])


def test_state_dict_resume(tmp_path):
    batch = make_batch(random_images(4, 1), goal=random_images(4, seed=3))
    augmenter = Augmenter(AugmentConfig(), seed=0)
    augmenter(batch)
    torch.save(augmenter.state_dict(), tmp_path / "augmenter.pt")
    expected = [augmenter(batch) for _ in range(2)]
    resumed = Augmenter(AugmentConfig(), seed=0)
    resumed.load_state_dict(torch.load(tmp_path / "augmenter.pt", weights_only=True))
    for out in expected:
        again = resumed(batch)
        assert torch.equal(out[OBSERVATIONS][IMAGE], again[OBSERVATIONS][IMAGE])
        assert torch.equal(out[GOALS][IMAGE], again[GOALS][IMAGE])


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"order": ["crop", "random_flip"]}, "unknown op"),
    ({"order": ["hue", "hue"]}, "twice"),
    ({"crop_scale": [0.0, 1.0]}, "crop_scale"),
    ({"crop_scale": [0.9, 0.8]}, "crop_scale"),
    ({"crop_ratio": [1.0]}, "crop_ratio"),
    ({"contrast": [-0.1, 1.0]}, "contrast"),
    ({"saturation": [1.2, 0.8]}, "saturation"),
    ({"brightness": -0.1}, "brightness"),
    ({"hue": 0.6}, "hue"),
])
def test_bad_config(kwargs, key):
    with pytest.raises(ValueError, match=key):
        AugmentConfig(**kwargs)


def test_colour_ops_compile_by_default_only_on_cuda():
    default = Augmenter(AugmentConfig(), seed=0)
    assert default.compiles_on(torch.device("cuda"))
    assert not default.compiles_on(torch.device("cpu"))
    for setting in (True, False):
        forced = Augmenter(AugmentConfig(compile=setting), seed=0)
        assert forced.compiles_on(torch.device("cpu")) is setting
        assert forced.compiles_on(torch.device("cuda")) is setting


@pytest.mark.slow
def test_compiled_colour_ops_match_eager():
    batch = make_batch(random_images(8, 2), goal=random_images(8, seed=1))
    eager = Augmenter(AugmentConfig(compile=False), seed=0)(batch)
    compiled = Augmenter(AugmentConfig(compile=True), seed=0)(batch)
    for key in (OBSERVATIONS, GOALS):
        diff = (compiled[key][IMAGE].int() - eager[key][IMAGE].int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.01  # float rounding only


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    batch = make_batch(random_images(8, 2), goal=random_images(8, seed=1),
                       saliency=torch.rand(8, SIZE, SIZE))
    # the same PyTorch ops on both devices (the CPU default is the C kernel, CUDA's compiled)
    eager = AugmentConfig(native_cpu=False, compile=False)
    cpu = Augmenter(eager, seed=0)(batch)
    on_device = {OBSERVATIONS: {k: v.cuda() for k, v in batch[OBSERVATIONS].items()},
                 GOALS: {IMAGE: batch[GOALS][IMAGE].cuda()}}
    cuda = Augmenter(eager, seed=0)(on_device)
    assert cuda[OBSERVATIONS][IMAGE].device.type == "cuda"
    diff = (cuda[OBSERVATIONS][IMAGE].cpu().int() - cpu[OBSERVATIONS][IMAGE].int()).abs()
    assert diff.max() <= 1  # same parameters; float rounding may differ by one level
