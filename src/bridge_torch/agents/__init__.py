"""Agents: BC, GC-BC and GC-DDPM-BC behind one interface (see ``agents/base.py``).

Choosing an agent is this explicit dict lookup, nothing more.
"""

import logging

from torch import nn

from bridge_torch.agents.base import Agent, AgentConfig
from bridge_torch.agents.bc import BCAgent, GCBCAgent
from bridge_torch.agents.gc_ddpm_bc import GCDDPMBCAgent
from bridge_torch.models.resnet import EncoderConfig, memory_format
from bridge_torch.models.saliency import SaliencyConfig

AGENTS: dict[str, type[Agent]] = {"bc": BCAgent, "gc_bc": GCBCAgent, "gc_ddpm_bc": GCDDPMBCAgent}
log = logging.getLogger(__name__)


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts, plus the total of each top-level child."""
    counts = {
        "total": sum(p.numel() for p in module.parameters()),
        "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }
    for name, child in module.named_children():
        counts[name] = sum(p.numel() for p in child.parameters())
    return counts


def build_agent(algo: str, model: AgentConfig, encoder: EncoderConfig, saliency: SaliencyConfig,
                *, action_dim: int, proprio_dim: int, obs_horizon: int, act_pred_horizon: int,
                image_size: int) -> Agent:
    """Construct an agent eagerly (no lazy modules: the optimizer sees every parameter)."""
    if algo not in AGENTS:
        raise ValueError(f"algo must be one of {sorted(AGENTS)}, got {algo!r}")
    agent = AGENTS[algo](model, encoder, saliency, action_dim=action_dim, proprio_dim=proprio_dim,
                         obs_horizon=obs_horizon, act_pred_horizon=act_pred_horizon,
                         image_size=image_size)
    log.info("built %s with %s parameters", algo, f"{count_parameters(agent)['total']:,}")
    return agent.to(memory_format=memory_format(encoder))  # conv weights as the activations


__all__ = ["AGENTS", "Agent", "AgentConfig", "build_agent", "count_parameters"]
