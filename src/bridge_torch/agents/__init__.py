"""Agents behind one interface (``agents/base.py``), and the registry that names them.

Adding an agent is one module (its config dataclass next to its ``Agent`` subclass), one line in
``AGENTS`` and one preset in ``conf/algo/``; the trainer, the sampler's loading, ``Policy``, the
simulator, the demo and the benches all work from the registry and ``Agent.declared_inputs``.
"""

import logging
from typing import Any, NamedTuple

from torch import nn

from bridge_torch.agents.base import Agent, AgentShapes
from bridge_torch.agents.bc import BCAgent, BCConfig, GCBCAgent
from bridge_torch.agents.gc_ddpm_bc import GCDDPMBCAgent, GCDDPMBCConfig
from bridge_torch.batch import BatchInputs
from bridge_torch.models.resnet import EncoderConfig, memory_format
from bridge_torch.models.saliency import SaliencyConfig

log = logging.getLogger(__name__)


class AgentSpec(NamedTuple):
    """An agent class and the dataclass of its ``model`` config section."""

    agent: type[Agent]
    config: type


AGENTS: dict[str, AgentSpec] = {
    "bc": AgentSpec(BCAgent, BCConfig),
    "gc_bc": AgentSpec(GCBCAgent, BCConfig),
    "gc_ddpm_bc": AgentSpec(GCDDPMBCAgent, GCDDPMBCConfig),
}


def agent_spec(algo: str) -> AgentSpec:
    """The registry entry of ``algo``, or a ValueError listing the known ones."""
    if algo not in AGENTS:
        raise ValueError(f"algo must be one of {sorted(AGENTS)}, got {algo!r}")
    return AGENTS[algo]


def model_config(algo: str, **values: Any) -> Any:
    """``algo``'s model config with ``values`` over its defaults (a TypeError names a stray key)."""
    return agent_spec(algo).config(**values)


def agent_inputs(algo: str, model: Any, saliency: SaliencyConfig) -> BatchInputs:
    """What ``algo`` consumes with these settings, without building it."""
    return agent_spec(algo).agent.declared_inputs(model, saliency)


def count_parameters(module: nn.Module) -> dict[str, int]:
    """Total and trainable parameter counts, plus the total of each top-level child."""
    counts = {
        "total": sum(p.numel() for p in module.parameters()),
        "trainable": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }
    for name, child in module.named_children():
        counts[name] = sum(p.numel() for p in child.parameters())
    return counts


def build_agent(algo: str, model: Any, encoder: EncoderConfig, saliency: SaliencyConfig,
                shapes: AgentShapes) -> Agent:
    """Construct an agent eagerly (no lazy modules: the optimizer sees every parameter)."""
    spec = agent_spec(algo)
    if not isinstance(model, spec.config):
        raise TypeError(f"algo {algo!r} takes a {spec.config.__name__} model config, "
                        f"got {type(model).__name__}")
    agent = spec.agent(model, encoder, saliency, shapes)
    log.info("built %s with %s parameters", algo, f"{count_parameters(agent)['total']:,}")
    return agent.to(memory_format=memory_format(encoder))  # conv weights as the activations


__all__ = ["AGENTS", "Agent", "AgentShapes", "AgentSpec", "agent_inputs", "agent_spec",
           "build_agent", "count_parameters", "model_config"]
