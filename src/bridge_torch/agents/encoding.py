"""Observation (and goal) encoding shared by every agent (the original's ``GCEncodingWrapper``).

Observation histories are encoded frame by frame and the features concatenated, oldest first.
Goal fusion: *early* = each observation frame and the goal image stacked on channels before one
encoder pass (JAX default; the goal is repeated for every frame of the history); *late* = the goal
encoded by the same module (shared) or its own encoder, features concatenated. The saliency map
returned is the last stage's feature map of the current frame (index K-1): under early fusion that
is the joint observation+goal pass, the only map there is.
"""

from dataclasses import dataclass

import torch
from torch import nn

from bridge_torch.batch import IMAGE, PROPRIO, AgentShapes
from bridge_torch.models.resnet import EncoderConfig, ResNetEncoder


@dataclass
class EncodingConfig:
    """How observations and goals reach the network; the first fields of every agent's config."""

    use_proprio: bool = False  # concatenate the proprio history to the image features (JAX False)
    early_goal_concat: bool = True  # GC: stack obs and goal on channels, one pass (JAX True)
    shared_goal_encoder: bool = True  # GC late fusion: goal through the obs encoder (JAX True)


class ObservationEncoder(nn.Module):
    """(observations, goals) -> (features (B, D), current-frame feature map (B, C, h, w))."""

    def __init__(self, cfg: EncodingConfig, encoder: EncoderConfig, shapes: AgentShapes, *,
                 goal_conditioned: bool) -> None:
        obs_horizon, image_size = shapes.obs_horizon, shapes.image_size
        super().__init__()
        self.goal_conditioned, self.use_proprio = goal_conditioned, cfg.use_proprio
        self.early = goal_conditioned and cfg.early_goal_concat
        self.encoder = ResNetEncoder(encoder, in_channels=6 if self.early else 3)
        self.goal_encoder: ResNetEncoder | None = None
        if goal_conditioned and not cfg.early_goal_concat and not cfg.shared_goal_encoder:
            self.goal_encoder = ResNetEncoder(encoder, in_channels=3)
        width = self.encoder.output_dim(image_size)
        self.out_dim = obs_horizon * width
        if goal_conditioned and not self.early:
            self.out_dim += width
        if cfg.use_proprio:
            self.out_dim += obs_horizon * shapes.proprio_dim

    def forward(self, observations: dict[str, torch.Tensor],
                goals: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        images = observations[IMAGE]  # (B, K, H, W, 3) uint8
        b, k = images.shape[:2]
        if self.goal_conditioned and goals is None:
            raise ValueError("this agent is goal-conditioned: pass goals with an 'image'")
        frames = images.reshape(b * k, *images.shape[2:])
        if self.early:
            goal = goals[IMAGE][:, None].expand(b, k, *goals[IMAGE].shape[1:])
            frames = torch.cat([frames, goal.reshape(b * k, *goal.shape[2:])], dim=-1)
        features, maps = self.encoder(frames)
        parts = [features.reshape(b, -1)]
        if self.goal_conditioned and not self.early:
            goal_encoder = self.goal_encoder if self.goal_encoder is not None else self.encoder
            parts.append(goal_encoder(goals[IMAGE])[0])
        if self.use_proprio:
            parts.append(observations[PROPRIO].reshape(b, -1).to(features.dtype))
        current_map = maps.reshape(b, k, *maps.shape[1:])[:, -1]
        return torch.cat(parts, dim=-1), current_map
