"""GC-DDPM-BC: goal-conditioned diffusion policy over action chunks, and its config.

Training: t ~ U{0..T-1}, x_t = sqrt(ᾱ_t)·a + sqrt(1-ᾱ_t)·ε, loss = mean over batch and horizon of
Σ_A (ε̂ - ε)². Sampling (the trainer's EMA copy, eval mode: dropout off): x_T ~ N(0, I),
x ← (x − (1−α_t)/sqrt(1−ᾱ_t)·ε̂)/sqrt(α_t), noise sqrt(β_t)·temperature·z for t > 0, clip to ±2
every step, then ``repeat_last_step`` extra t = 0 updates. The observation is encoded once per
sample call: the encoder does not depend on t.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from bridge_torch.agents.base import AgentShapes, Batch, EncodedAgent, Metrics, standard_normal
from bridge_torch.agents.encoding import EncodingConfig
from bridge_torch.batch import ACTIONS, GOALS, OBSERVATIONS
from bridge_torch.models.diffusion import BETA_SCHEDULES, ScoreNetwork, beta_schedule
from bridge_torch.models.resnet import EncoderConfig
from bridge_torch.models.saliency import SaliencyConfig


@dataclass
class GCDDPMBCConfig(EncodingConfig):
    """The ``model`` section of ``gc_ddpm_bc``; defaults are the original gc_ddpm_bc config's."""

    dropout_rate: float = 0.1  # score-network dropout (JAX 0.1)
    time_dim: int = 32  # learnable Fourier time features (JAX 32)
    num_blocks: int = 3  # MLPResNet blocks (JAX 3)
    score_width: int = 256  # MLPResNet width (the original's effective width is 256)
    score_layer_norm: bool = True  # MLPResNet LayerNorm (JAX True)
    diffusion_steps: int = 20  # T (JAX 20)
    beta_schedule: str = "cosine"  # cosine | linear | vp (JAX cosine)
    repeat_last_step: int = 0  # extra t=0 denoising updates when sampling (JAX 0)
    clip_sampler: bool = True  # clip the sample to ±action_clip every step (JAX True)
    action_clip: float = 2.0  # clip range in normalised units (JAX 2)
    temperature: float = 1.0  # multiplies the noise injected while sampling (0 = no noise)

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.temperature < 0 or self.diffusion_steps < 1 or self.repeat_last_step < 0:
            raise ValueError("model.temperature >= 0, diffusion_steps >= 1, "
                             "repeat_last_step >= 0 required")
        if self.time_dim < 2 or self.time_dim % 2:
            raise ValueError(f"model.time_dim must be a positive even number, got {self.time_dim}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"model.beta_schedule must be one of {BETA_SCHEDULES}, "
                             f"got {self.beta_schedule!r}")
        if self.score_width < 1 or self.num_blocks < 0 or self.action_clip <= 0:
            raise ValueError("model.score_width >= 1, num_blocks >= 0 and action_clip > 0 "
                             "required")


class GCDDPMBCAgent(EncodedAgent):
    """Goal-conditioned DDPM behaviour cloning."""

    goal_conditioned = True

    def __init__(self, model: GCDDPMBCConfig, encoder: EncoderConfig, saliency: SaliencyConfig,
                 shapes: AgentShapes) -> None:
        super().__init__(model, encoder, saliency, shapes)
        self.action_shape = (shapes.act_pred_horizon, shapes.action_dim)
        self.score = ScoreNetwork(self.encoder.out_dim, shapes.act_pred_horizon * shapes.action_dim,
                                  time_dim=model.time_dim, num_blocks=model.num_blocks,
                                  width=model.score_width, dropout_rate=model.dropout_rate,
                                  use_layer_norm=model.score_layer_norm)
        betas = beta_schedule(model.beta_schedule, model.diffusion_steps)
        alphas = 1 - betas
        # Non-persistent: derived from the config, so checkpoints hold only learned weights.
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas", alphas.float(), persistent=False)
        self.register_buffer("alpha_bars", torch.cumprod(alphas, 0).float(), persistent=False)

    def loss(self, batch: Batch, generator: Optional[torch.Generator] = None
             ) -> tuple[torch.Tensor, Metrics]:
        features, feature_map = self.encoder(batch[OBSERVATIONS], batch.get(GOALS))
        actions = batch[ACTIONS].float()
        b, device = actions.shape[0], actions.device
        source = device if generator is None else generator.device
        t = torch.randint(0, self.cfg.diffusion_steps, (b,), generator=generator,
                          device=source).to(device)
        noise = standard_normal(tuple(actions.shape), device=device, generator=generator)
        alpha_bar = self.alpha_bars[t][:, None, None]
        noisy = alpha_bar.sqrt() * actions + (1 - alpha_bar).sqrt() * noise
        predicted = self.score(features, noisy.flatten(1), t.float()[:, None])
        per_step = (predicted.float().reshape(b, *self.action_shape) - noise).pow(2).sum(-1)
        ddpm_loss = per_step.mean()
        metrics = {"ddpm_loss": ddpm_loss.detach()}
        return self._add_saliency(ddpm_loss, metrics, batch, feature_map), metrics

    def sample_actions(self, observations: dict[str, torch.Tensor],
                       goals: Optional[dict[str, torch.Tensor]] = None, *, argmax: bool = False,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Reverse diffusion -> (B, T_act, A). ``argmax`` is ignored, as in JAX: the sample is
        deterministic given ``generator``."""
        self._require_eval()
        with torch.no_grad():
            features, _ = self.encoder(observations, goals)
            b, device = features.shape[0], features.device
            x = standard_normal((b, *self.action_shape), device=device, generator=generator)
            steps = list(range(self.cfg.diffusion_steps - 1, -1, -1))
            for t in steps + [0] * self.cfg.repeat_last_step:
                x = self._denoise_step(features, x, t, generator)
            return x

    def _denoise_step(self, features: torch.Tensor, x: torch.Tensor, t: int,
                      generator: Optional[torch.Generator]) -> torch.Tensor:
        b = x.shape[0]
        time = torch.full((b, 1), float(t), device=x.device)
        eps = self.score(features, x.flatten(1), time).float().reshape(x.shape)
        alpha, alpha_bar = self.alphas[t], self.alpha_bars[t]
        x = (x - (1 - alpha) / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()
        if t > 0:
            z = standard_normal(tuple(x.shape), device=x.device, generator=generator)
            x = x + self.betas[t].sqrt() * self.cfg.temperature * z
        if self.cfg.clip_sampler:
            x = x.clamp(-self.cfg.action_clip, self.cfg.action_clip)
        return x
