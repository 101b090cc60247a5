"""DDPM pieces of GC-DDPM-BC: beta schedules, Fourier time features, the score network.

See docs/semantics.md, 'GC-DDPM-BC'.
"""

import math

import torch
from torch import nn

from bridge_torch.models.mlp import MLP, MLPResNet

BETA_SCHEDULES = ("cosine", "linear", "vp")


def beta_schedule(name: str, steps: int) -> torch.Tensor:
    """float64 (steps,) noise schedule, computed as the JAX original does.

    Always on the CPU, whatever the default device: an agent built on the meta device (restoring
    a checkpoint, ``deploy/restore.py``) still gets the values, which no checkpoint holds.
    """
    cpu = torch.device("cpu")
    if name == "cosine":
        s = 0.008
        t = torch.linspace(0, steps, steps + 1, dtype=torch.float64, device=cpu) / steps
        alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = alpha_bar / alpha_bar[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(0, 0.999)
    if name == "linear":
        return torch.linspace(1e-4, 2e-2, steps, dtype=torch.float64, device=cpu)
    if name == "vp":
        t = torch.arange(1, steps + 1, dtype=torch.float64, device=cpu)
        b_min, b_max = 0.1, 10.0
        alpha = torch.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
        return 1 - alpha
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {name!r}")


class FourierFeatures(nn.Module):
    """Learnable Fourier features of the raw integer step: [cos(2π t Wᵀ), sin(2π t Wᵀ)]."""

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(output_size // 2, 1) * 0.2)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: float (B, 1) -> (B, output_size)."""
        f = 2 * math.pi * t @ self.kernel.T
        return torch.cat([torch.cos(f), torch.sin(f)], dim=-1)


class ScoreNetwork(nn.Module):
    """ε-prediction network: [time MLP(Fourier(t)), observation features, noisy actions]."""

    def __init__(self, obs_dim: int, action_size: int, *, time_dim: int, num_blocks: int,
                 width: int, dropout_rate: float, use_layer_norm: bool) -> None:
        super().__init__()
        self.time_features = FourierFeatures(time_dim)
        self.time_mlp = MLP(time_dim, [2 * time_dim, time_dim])  # Dense 64 -> swish -> Dense 32
        self.trunk = MLPResNet(time_dim + obs_dim + action_size, action_size,
                               num_blocks=num_blocks, width=width, dropout_rate=dropout_rate,
                               use_layer_norm=use_layer_norm)

    def forward(self, obs_features: torch.Tensor, noisy_actions: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        """obs_features (B, D), noisy_actions (B, H*A), t float (B, 1) -> ε̂ (B, H*A)."""
        cond = self.time_mlp(self.time_features(t))
        return self.trunk(torch.cat([cond, obs_features, noisy_actions], dim=-1))
