"""MLP and MLPResNet with the JAX original's layer order and initialisers.

See docs/semantics.md, 'BC and GC-BC' (MLP) and 'GC-DDPM-BC' (MLPResNet). LayerNorms use
Flax's default epsilon 1e-6 (PyTorch's default is 1e-5).
"""

import math

import torch
from torch import nn


def xavier_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """Dense layer with Flax's ``xavier_uniform`` kernel and zero bias (JAX ``default_init``)."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def layer_norm(width: int) -> nn.LayerNorm:
    """Flax ``nn.LayerNorm()``: scale and bias, eps 1e-6."""
    return nn.LayerNorm(width, eps=1e-6)


def lecun_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """Dense layer with Flax's default ``lecun_normal`` (truncated) kernel and zero bias."""
    layer = nn.Linear(in_dim, out_dim)
    std = math.sqrt(1.0 / in_dim) / 0.87962566103423978
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """Per layer: Dense -> [Dropout -> LayerNorm -> swish] (skipped after the last layer unless
    ``activate_final``), the JAX ``jaxrl_m.networks.MLP`` order."""

    def __init__(self, in_dim: int, hidden_dims: list[int], *, activate_final: bool = False,
                 use_layer_norm: bool = False, dropout_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(hidden_dims):
            layers.append(xavier_linear(in_dim, width))
            if i + 1 < len(hidden_dims) or activate_final:
                if dropout_rate > 0:
                    layers.append(nn.Dropout(dropout_rate))
                if use_layer_norm:
                    layers.append(layer_norm(width))
                layers.append(nn.SiLU())
            in_dim = width
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPResNetBlock(nn.Module):
    """Dropout -> LayerNorm -> Dense(4w) -> swish -> Dense(w), plus the residual (JAX order)."""

    def __init__(self, width: int, *, dropout_rate: float, use_layer_norm: bool) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        self.norm = layer_norm(width) if use_layer_norm else nn.Identity()
        self.dense1 = lecun_linear(width, 4 * width)
        self.dense2 = lecun_linear(4 * width, width)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense2(self.act(self.dense1(self.norm(self.dropout(x)))))
        return x + y


class MLPResNet(nn.Module):
    """Dense(width) -> blocks -> swish -> Dense(out): the diffusion score network's trunk."""

    def __init__(self, in_dim: int, out_dim: int, *, num_blocks: int, width: int,
                 dropout_rate: float, use_layer_norm: bool) -> None:
        super().__init__()
        self.dense_in = xavier_linear(in_dim, width)
        self.blocks = nn.Sequential(*[
            MLPResNetBlock(width, dropout_rate=dropout_rate, use_layer_norm=use_layer_norm)
            for _ in range(num_blocks)
        ])
        self.act = nn.SiLU()
        self.dense_out = xavier_linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_out(self.act(self.blocks(self.dense_in(x))))
