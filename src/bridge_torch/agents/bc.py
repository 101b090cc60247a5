"""BC and GC-BC: image encoder -> MLP -> Gaussian policy, trained by −log π, and their config.

With the JAX defaults (fixed std 1) the loss is ½·Σ(a−μ)² + ½·A·log 2π per sample, a scaled MSE.
Action chunks are predicted jointly: the head outputs T_act·A means (T_act = 1 is the original).
"""

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from bridge_torch.agents.base import AgentShapes, Batch, EncodedAgent, Metrics, standard_normal
from bridge_torch.agents.encoding import EncodingConfig
from bridge_torch.batch import ACTIONS, GOALS, OBSERVATIONS
from bridge_torch.models.mlp import MLP, xavier_linear
from bridge_torch.models.resnet import EncoderConfig
from bridge_torch.models.saliency import SaliencyConfig

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # JAX Policy clip
TANH_EPS = 1e-6


@dataclass
class BCConfig(EncodingConfig):
    """The ``model`` section of ``bc`` and ``gc_bc``; defaults are the original gc_bc config's."""

    hidden_dims: list[int] = field(default_factory=lambda: [256, 256, 256])  # policy MLP widths
    dropout_rate: float = 0.1  # policy MLP dropout (JAX 0.1)
    use_layer_norm: bool = False  # LayerNorm in the policy MLP (JAX False)
    # Gaussian std: fixed, one value per action dim (JAX [1]*7; no parameter); None -> learned:
    # a Dense head if state_dependent_std, else a per-dim log-std (zero init)
    fixed_std: Optional[list[float]] = field(default_factory=lambda: [1.0] * 7)
    state_dependent_std: bool = False  # std from a Dense head when fixed_std is None (JAX False)
    tanh_squash_distribution: bool = False  # tanh-squashed Gaussian, mode tanh(mean) (JAX False)
    temperature: float = 1.0  # sampling only: scales the std of sampled actions (not the mode)

    def __post_init__(self) -> None:
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ValueError(f"model.hidden_dims must be positive widths, got {self.hidden_dims}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.fixed_std is not None and min(self.fixed_std) <= 0:
            raise ValueError(f"model.fixed_std must be > 0, got {self.fixed_std}")
        if self.temperature < 0:
            raise ValueError(f"model.temperature must be >= 0, got {self.temperature}")


class GaussianHead(nn.Module):
    """Features -> (mean, std) of a diagonal Gaussian over (T_act, A) actions."""

    def __init__(self, in_dim: int, cfg: BCConfig, *, action_dim: int, horizon: int) -> None:
        super().__init__()
        self.shape = (horizon, action_dim)
        self.means = xavier_linear(in_dim, horizon * action_dim)
        self.log_std_head: nn.Linear | None = None
        self.log_std: nn.Parameter | None = None
        if cfg.fixed_std is not None:
            if len(cfg.fixed_std) != action_dim:
                raise ValueError(f"model.fixed_std has {len(cfg.fixed_std)} entries for "
                                 f"{action_dim} action dims")
            # on the CPU explicitly: no checkpoint holds it, so an agent built on the meta
            # device (deploy/restore.py) must still compute it
            self.register_buffer("fixed_log_std", torch.tensor(cfg.fixed_std, device="cpu").log(),
                                 persistent=False)
        elif cfg.state_dependent_std:
            self.log_std_head = xavier_linear(in_dim, horizon * action_dim)
        else:
            self.log_std = nn.Parameter(torch.zeros(horizon * action_dim))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = features.shape[0]
        mean = self.means(features).reshape(b, *self.shape)
        if self.log_std_head is not None:
            log_std = self.log_std_head(features).reshape(b, *self.shape)
        elif self.log_std is not None:
            log_std = self.log_std.reshape(self.shape).expand(b, *self.shape)
        else:
            log_std = self.fixed_log_std.expand(b, *self.shape).to(mean.dtype)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()


def gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                      tanh_squash: bool) -> torch.Tensor:
    """log π summed over (T_act, A) -> (B,); the tanh variant adds the change of variables."""
    if tanh_squash:
        actions = actions.clamp(-1 + TANH_EPS, 1 - TANH_EPS)
        pre_tanh = torch.atanh(actions)
        correction = torch.log1p(-actions.pow(2) + TANH_EPS).flatten(1).sum(1)
        return gaussian_log_prob(pre_tanh, mean, std, False) - correction
    z = (actions - mean) / std
    log_prob = -0.5 * z.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)
    return log_prob.flatten(1).sum(1)


class BCAgent(EncodedAgent):
    """Behaviour cloning from the observation alone (goals in the batch are ignored)."""

    goal_conditioned = False

    def __init__(self, model: BCConfig, encoder: EncoderConfig, saliency: SaliencyConfig,
                 shapes: AgentShapes) -> None:
        super().__init__(model, encoder, saliency, shapes)
        self.mlp = MLP(self.encoder.out_dim, model.hidden_dims, activate_final=True,
                       use_layer_norm=model.use_layer_norm, dropout_rate=model.dropout_rate)
        self.head = GaussianHead(self.mlp.out_dim, model, action_dim=shapes.action_dim,
                                 horizon=shapes.act_pred_horizon)

    def _distribution(self, observations: dict, goals: Optional[dict]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, feature_map = self.encoder(observations,
                                             goals if self.goal_conditioned else None)
        mean, std = self.head(self.mlp(features))
        return mean, std, feature_map

    def loss(self, batch: Batch, generator: Optional[torch.Generator] = None
             ) -> tuple[torch.Tensor, Metrics]:
        """Mean −log π(a | o, g); the Gaussian loss draws no noise, so ``generator`` is unused."""
        del generator
        mean, std, feature_map = self._distribution(batch[OBSERVATIONS], batch.get(GOALS))
        mean, std = mean.float(), std.float()
        actions = batch[ACTIONS].float()
        log_probs = gaussian_log_prob(actions, mean, std, self.cfg.tanh_squash_distribution)
        mode = torch.tanh(mean) if self.cfg.tanh_squash_distribution else mean
        actor_loss = -log_probs.mean()
        metrics = {
            "actor_loss": actor_loss.detach(),
            "mse": (mode - actions).pow(2).flatten(1).sum(1).mean().detach(),
            "log_probs": log_probs.mean().detach(),
            "mean_std": std.mean().detach(),
            "max_std": std.max().detach(),
        }
        return self._add_saliency(actor_loss, metrics, batch, feature_map), metrics

    def sample_actions(self, observations: dict[str, torch.Tensor],
                       goals: Optional[dict[str, torch.Tensor]] = None, *, argmax: bool = False,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The mode (``argmax``) or a sample with std scaled by ``temperature``: (B, T_act, A)."""
        self._require_eval()
        with torch.no_grad():
            mean, std, _ = self._distribution(observations, goals)
            mean, std = mean.float(), std.float()
            if not argmax:
                noise = standard_normal(tuple(mean.shape), device=mean.device,
                                        generator=generator)
                mean = mean + noise * std * self.cfg.temperature
            return torch.tanh(mean) if self.cfg.tanh_squash_distribution else mean


class GCBCAgent(BCAgent):
    """Goal-conditioned BC: the goal image is fused early (channels) or late (features)."""

    goal_conditioned = True
