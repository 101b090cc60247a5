"""ResNetV1 "bridge" encoders, as the JAX original builds them (docs/semantics.md, 'Encoder').

GroupNorm(4) instead of BatchNorm, swish, no conv bias, He-normal init, uint8 input scaled to
[-1, 1] and two coordinate channels appended to the *input*. The 7x7 stem conv pads 3 on every
side (as ``conv_init`` in ``jaxrl_m/vision/resnet_v1.py``); every other conv and the max-pool use
Flax's SAME padding, which is asymmetric for stride 2 (extra row/column at the bottom/right), so
feature maps line up with the original's pixel for pixel (128 px input -> 4x4 final map). The
encoder returns its pooled features and its last feature map explicitly; the saliency loss needs
the map, and forward hooks, the earlier port's way to get it, silently stopped firing under
torch.compile or captured the pooled 1x1 output instead.
"""

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bridge_torch.models.group_norm import GroupNormAct

log = logging.getLogger(__name__)

# name -> (stage sizes, bottleneck blocks); "-bridge" only adds options the JAX trainer never uses
ARCHITECTURES = {
    "resnetv1-mini-bridge": ([1, 1, 1, 1], False),  # ours: tests and the CPU demo
    "resnetv1-18-bridge": ([2, 2, 2, 2], False),
    "resnetv1-34-bridge": ([3, 4, 6, 3], False),
    "resnetv1-50-bridge": ([3, 4, 6, 3], True),
}
POOLING_METHODS = ("avg", "max", "spatial_softmax", "none")
ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class EncoderConfig:
    """Image encoder; defaults are the JAX "resnetv1-34-bridge" as trained."""

    name: str = "resnetv1-34-bridge"  # one of ARCHITECTURES
    pooling_method: str = "avg"  # avg | max | spatial_softmax | none (JAX avg)
    add_spatial_coordinates: bool = True  # 2 coordinate channels on the input (JAX True)
    act: str = "swish"  # swish | relu | gelu (JAX bridge configs: swish)
    num_filters: int = 64  # width of the first stage; doubles per stage (JAX 64)
    norm_groups: int = 4  # GroupNorm groups (JAX 4)
    # Speed only, the same function either way: activations in channels-last memory (what
    # cuDNN's bf16/TF32 convolutions want), and on CUDA the Triton GroupNorm + residual + swish
    # kernels of models/group_norm.py (which need channels-last).
    channels_last: bool = True
    fused_norm: bool = True
    # spatial_softmax only: -1 = learnable temperature (init 1, stored as its log so it stays
    # positive); ANY other value means a fixed temperature of 1.0, exactly as JAX
    softmax_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in ARCHITECTURES:
            raise ValueError(f"encoder.name must be one of {sorted(ARCHITECTURES)}, "
                             f"got {self.name!r}")
        if self.pooling_method not in POOLING_METHODS:
            raise ValueError(f"encoder.pooling_method must be one of {POOLING_METHODS}, "
                             f"got {self.pooling_method!r}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"encoder.act must be one of {sorted(ACTIVATIONS)}, got {self.act!r}")
        if self.num_filters < self.norm_groups or self.num_filters % self.norm_groups:
            raise ValueError(f"encoder.num_filters ({self.num_filters}) must be a multiple of "
                             f"norm_groups ({self.norm_groups})")


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Flax/TF SAME padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Flax ``kaiming_normal``: variance 2/fan_in, normal truncated at ±2σ (σ rescaled to match)."""
    fan_in = weight[0].numel()
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978  # std of the untruncated normal
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class SameConv2d(nn.Conv2d):
    """Bias-free conv with He-normal init and Flax SAME padding (or a fixed symmetric one)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 padding: int | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, padding=padding or 0,
                         bias=False)
        self.same = padding is None
        he_normal_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same:
            return super().forward(x)
        kernel, stride = self.kernel_size[0], self.stride[0]
        top, bottom = _same_padding(x.shape[-2], kernel, stride)
        left, right = _same_padding(x.shape[-1], kernel, stride)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def memory_format(cfg: EncoderConfig) -> torch.memory_format:
    """How the encoder lays out its activations (and so how its conv weights should be kept)."""
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def _max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    top, bottom = _same_padding(x.shape[-2], kernel, stride)
    left, right = _same_padding(x.shape[-1], kernel, stride)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


class NormFactory:
    """Builds the encoder's norms: ``norm(channels, with_act)`` is GroupNorm(groups, channels,
    eps 1e-5; ``MyGroupNorm`` in the JAX encoder), followed by the activation if ``with_act``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        self.cfg = cfg

    def __call__(self, channels: int, with_act: bool) -> GroupNormAct:
        act = ACTIVATIONS[self.cfg.act]() if with_act else None
        return GroupNormAct(self.cfg.norm_groups, channels, act, eps=1e-5,
                            fused=self.cfg.fused_norm)


class BasicBlock(nn.Module):
    """conv3x3(stride) -> norm -> act -> conv3x3 -> norm, + (projected) residual, act.
    Each norm applies what follows it (act; residual add and act) in the same call."""

    expansion = 1

    def __init__(self, in_ch: int, filters: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        self.conv1, self.norm1 = SameConv2d(in_ch, filters, 3, stride), norm(filters, True)
        self.conv2, self.norm2 = SameConv2d(filters, filters, 3), norm(filters, True)
        self.proj = None
        if stride != 1 or in_ch != filters:
            self.proj = nn.Sequential(SameConv2d(in_ch, filters, 1, stride), norm(filters, False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(self.conv1(x))
        residual = x if self.proj is None else self.proj(x)
        return self.norm2(self.conv2(y), residual)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3(stride) -> 1x1 (x4 filters, last norm zero-init), + residual, act."""

    expansion = 4

    def __init__(self, in_ch: int, filters: int, stride: int, norm: NormFactory) -> None:
        super().__init__()
        out = filters * 4
        self.conv1, self.norm1 = SameConv2d(in_ch, filters, 1), norm(filters, True)
        self.conv2, self.norm2 = SameConv2d(filters, filters, 3, stride), norm(filters, True)
        self.conv3, self.norm3 = SameConv2d(filters, out, 1), norm(out, True)
        nn.init.zeros_(self.norm3.weight)
        self.proj = None
        if stride != 1 or in_ch != out:
            self.proj = nn.Sequential(SameConv2d(in_ch, out, 1, stride), norm(out, False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        residual = x if self.proj is None else self.proj(x)
        return self.norm3(self.conv3(y), residual)


def spatial_coordinates(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(2, H, W): row coordinate then column coordinate, each spanning [-1, 1] (JAX order)."""
    rows = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    cols = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"))


class ResNetEncoder(nn.Module):
    """ResNetV1 on channels-last images; returns ``(features (N, F), feature_map (N, C, h, w))``."""

    def __init__(self, cfg: EncoderConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.cfg, self.in_channels = cfg, in_channels
        stage_sizes, bottleneck = ARCHITECTURES[cfg.name]
        block = BottleneckBlock if bottleneck else BasicBlock
        norm = NormFactory(cfg)
        stem_in = in_channels + (2 if cfg.add_spatial_coordinates else 0)
        self.conv_init = SameConv2d(stem_in, cfg.num_filters, 7, 2, padding=3)  # JAX: pad 3
        self.norm_init = norm(cfg.num_filters, True)
        blocks, channels = [], cfg.num_filters
        for i, size in enumerate(stage_sizes):
            filters = cfg.num_filters * 2**i
            for j in range(size):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(channels, filters, stride, norm))
                channels = filters * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.map_channels = channels
        self.log_temperature = None
        if cfg.pooling_method == "spatial_softmax" and cfg.softmax_temperature == -1:
            self.log_temperature = nn.Parameter(torch.zeros(()))

    def output_dim(self, image_size: int) -> int:
        """Width of the pooled features for square ``image_size`` inputs."""
        if self.cfg.pooling_method in ("avg", "max"):
            return self.map_channels
        if self.cfg.pooling_method == "spatial_softmax":
            return 2 * self.map_channels
        side = image_size
        for _ in range(2 + len(ARCHITECTURES[self.cfg.name][0]) - 1):  # stem conv, pool, strides
            side = math.ceil(side / 2)
        return self.map_channels * side * side

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            images: (N, H, W, C) uint8 in [0, 255] (or float in the same range).
        Returns:
            features (N, F) and the last feature map (N, C', h, w).
        """
        if images.ndim != 4 or images.shape[-1] != self.in_channels:
            raise ValueError(f"ResNetEncoder expects (N, H, W, {self.in_channels}) channels-last "
                             f"images, got shape {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # NCHW view, channels-last memory
        if self.cfg.add_spatial_coordinates:
            coords = spatial_coordinates(x.shape[-2], x.shape[-1], x)
            x = torch.cat([x, coords.expand(x.shape[0], -1, -1, -1)], dim=1)
        x = x.contiguous(memory_format=memory_format(self.cfg))
        x = self.norm_init(self.conv_init(x))
        feature_map = self.blocks(_max_pool_same(x))
        return self._pool(feature_map), feature_map

    def _pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        method = self.cfg.pooling_method
        if method == "avg":
            return feature_map.mean(dim=(-2, -1))
        if method == "max":
            return feature_map.amax(dim=(-2, -1))
        if method == "none":
            return feature_map.flatten(1)
        # Spatial softmax (JAX ``SpatialSoftmax``): per channel, the expected column ("x") and row
        # ("y") coordinate on a [-1, 1] grid; layout [x_0..x_C-1, y_0..y_C-1] as in JAX.
        n, c, h, w = feature_map.shape
        temperature = 1.0 if self.log_temperature is None else self.log_temperature.exp()
        attention = torch.softmax(feature_map.reshape(n, c, h * w).float() / temperature, dim=-1)
        grid = spatial_coordinates(h, w, attention)  # (2, h, w)
        expected_row = attention @ grid[0].reshape(h * w, 1)
        expected_col = attention @ grid[1].reshape(h * w, 1)
        features = torch.cat([expected_col, expected_row], dim=1).reshape(n, 2 * c)
        return features.to(feature_map.dtype)
