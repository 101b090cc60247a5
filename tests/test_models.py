"""Encoders, MLPs, diffusion schedule and the saliency mask."""

import pytest
import torch

from bridge_torch.models.diffusion import FourierFeatures, beta_schedule
from bridge_torch.models.group_norm import GroupNormAct
from bridge_torch.models.mlp import MLP, MLPResNet
from bridge_torch.models.resnet import EncoderConfig, ResNetEncoder, _same_padding
from bridge_torch.models.saliency import SaliencyConfig, predicted_mask, saliency_loss

MINI = dict(name="resnetv1-mini-bridge", num_filters=8)


def _images(n: int, size: int, channels: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, channels), dtype=torch.uint8)


@pytest.mark.parametrize("pooling,width", [("avg", 64), ("max", 64), ("spatial_softmax", 128),
                                           ("none", 64 * 2 * 2)])
def test_pooling_output_shapes(pooling: str, width: int) -> None:
    enc = ResNetEncoder(EncoderConfig(pooling_method=pooling, **MINI))
    features, fmap = enc(_images(2, 64))
    assert features.shape == (2, width) == (2, enc.output_dim(64))
    assert fmap.shape == (2, 64, 2, 2)


def test_resnet34_final_map_is_4x4_at_128() -> None:
    enc = ResNetEncoder(EncoderConfig(num_filters=8))
    _, fmap = enc(_images(1, 128))
    assert fmap.shape == (1, 64, 4, 4)


def test_flax_same_padding_is_asymmetric_for_stride_two() -> None:
    assert _same_padding(128, 7, 2) == (2, 3)
    assert _same_padding(64, 3, 2) == (0, 1)
    assert _same_padding(64, 3, 1) == (1, 1)
    assert _same_padding(64, 1, 2) == (0, 0)


def test_input_scaling_and_coordinates_change_the_output() -> None:
    torch.manual_seed(0)
    with_coords = ResNetEncoder(EncoderConfig(**MINI))
    assert with_coords.conv_init.in_channels == 5
    no_coords = ResNetEncoder(EncoderConfig(add_spatial_coordinates=False, **MINI))
    assert no_coords.conv_init.in_channels == 3
    uniform = torch.full((1, 32, 32, 3), 127, dtype=torch.uint8)
    features, _ = with_coords(uniform)
    assert torch.isfinite(features).all()
    six = ResNetEncoder(EncoderConfig(**MINI), in_channels=6)
    assert six.conv_init.in_channels == 8
    assert six(_images(2, 32, channels=6))[0].shape == (2, 64)


def test_group_norm_swish_and_no_conv_bias() -> None:
    enc = ResNetEncoder(EncoderConfig(**MINI))
    norms = [m for m in enc.modules() if isinstance(m, GroupNormAct)]
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(norms) == len(convs) and all(n.groups == 4 and n.eps == 1e-5 for n in norms)
    assert all(c.bias is None for c in convs)
    projections = [block.proj[1] for block in enc.blocks if block.proj is not None]
    assert projections and all(n.act is None for n in projections)  # act after the residual add
    assert all(isinstance(n.act, torch.nn.SiLU) for n in norms if n not in projections)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())


@pytest.mark.parametrize("with_residual", [False, True])
def test_group_norm_act_is_groupnorm_then_residual_then_act(with_residual: bool) -> None:
    torch.manual_seed(0)
    norm = GroupNormAct(4, 8, torch.nn.SiLU())
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    reference = torch.nn.GroupNorm(4, 8)
    reference.load_state_dict(norm.state_dict())  # the same parameter names as nn.GroupNorm
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 8, 5, 5) if with_residual else None
    expected = reference(x) + (residual if with_residual else 0)
    torch.testing.assert_close(norm(x, residual), torch.nn.functional.silu(expected),
                               rtol=0, atol=0)


def test_cosine_betas_match_the_reference_for_20_steps() -> None:
    betas = beta_schedule("cosine", 20)
    expected = [0.00799, 0.02007, 0.03225]
    assert torch.allclose(betas[:3], torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(betas[-3:], torch.tensor([0.55102, 0.74848, 0.999],
                                                   dtype=torch.float64), atol=1e-5)
    alpha_bar = torch.cumprod(1 - betas, 0)
    assert 1e-6 < alpha_bar[-1] < 2e-5  # ᾱ_{T-1} ≈ 1e-5 for the JAX cosine schedule, T = 20
    assert beta_schedule("linear", 20)[0] == pytest.approx(1e-4)
    vp = beta_schedule("vp", 20)
    assert (vp > 0).all() and (vp[1:] > vp[:-1]).all()
    with pytest.raises(ValueError, match="beta_schedule"):
        beta_schedule("quadratic", 20)


def test_fourier_features_and_mlp_layer_order() -> None:
    ff = FourierFeatures(32)
    assert ff.kernel.shape == (16, 1)
    out = ff(torch.zeros(3, 1))
    assert torch.equal(out[:, :16], torch.ones(3, 16))
    assert torch.equal(out[:, 16:], torch.zeros(3, 16))
    mlp = MLP(4, [8, 8], activate_final=False, use_layer_norm=True, dropout_rate=0.1)
    kinds = [type(m).__name__ for m in mlp.net]
    assert kinds == ["Linear", "Dropout", "LayerNorm", "SiLU", "Linear"]
    res = MLPResNet(5, 7, num_blocks=3, width=16, dropout_rate=0.1, use_layer_norm=True)
    block = [type(m).__name__ for m in res.blocks[0].children()]
    assert block[:3] == ["Dropout", "LayerNorm", "Linear"]
    assert res(torch.randn(2, 5)).shape == (2, 7)


def test_predicted_mask_range_and_peak() -> None:
    fmap = torch.zeros(2, 8, 4, 4)
    fmap[0, :, 1, 2] = 5.0
    fmap[0, :, 0, 0] = 2.0
    fmap[1, :, 3, 0] = -5.0  # abs: negative activations count too
    mask = predicted_mask(fmap, (16, 16), beta=1.0)
    assert mask.shape == (2, 16, 16) and mask.min() >= 0 and mask.max() <= 1
    assert mask[0].argmax() // 16 in (4, 5, 6) and mask[0].argmax() % 16 in (8, 9, 10, 11)
    summed = predicted_mask(fmap, (16, 16), beta=1.0, channel_reduction="sum")
    assert not torch.allclose(mask, summed)


def test_saliency_loss_masks_samples_and_is_zero_without_any() -> None:
    pred = torch.rand(3, 8, 8)
    target = torch.rand(3, 8, 8)
    mask = torch.tensor([True, False, True])
    loss = saliency_loss(pred, target, mask)
    other = target.clone()
    other[1] = 1 - other[1]  # a masked sample's target must not matter
    assert torch.equal(loss, saliency_loss(pred, other, mask))
    expected = ((pred - target) ** 2).flatten(1).mean(1)[[0, 2]].mean()
    assert torch.allclose(loss, expected)
    assert saliency_loss(pred, target, torch.zeros(3, dtype=torch.bool)) == 0
    kl = saliency_loss(target, target, mask, kind="kl")
    assert kl.abs() < 1e-5
    with pytest.raises(ValueError, match=r"saliency\.loss"):
        SaliencyConfig(loss="l1")


def test_bad_encoder_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"encoder\.name"):
        EncoderConfig(name="resnet101")
    with pytest.raises(ValueError, match="pooling_method"):
        EncoderConfig(pooling_method="mean")


def test_memory_layout_changes_speed_not_results() -> None:
    torch.manual_seed(0)
    channels_last = ResNetEncoder(EncoderConfig(**MINI))
    planar = ResNetEncoder(EncoderConfig(channels_last=False, **MINI))
    planar.load_state_dict(channels_last.state_dict())
    images = _images(2, 64)
    (features, feature_map), (expected, expected_map) = channels_last(images), planar(images)
    assert feature_map.shape[-2:] == (2, 2)
    assert feature_map.is_contiguous(memory_format=torch.channels_last)
    assert not feature_map.is_contiguous() and expected_map.is_contiguous()
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feature_map, expected_map, rtol=1e-4, atol=1e-5)
