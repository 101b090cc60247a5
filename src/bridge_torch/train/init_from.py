"""Start a run from another run's weights (``init_from=<run dir or ckpt_<step>.pt>``): fine-tuning.

Unlike ``resume``, only the weights carry over - the online weights into the agent and, when the
new run keeps an EMA, the source's EMA weights (or its online ones if it kept none) into the
EMA - with a fresh optimizer, schedule and step 0. The source's normalisation statistics are
used as they are: the weights were trained to predict actions in those units. Any bridge-torch
run works, including one made by ``bridge-torch-import-jax``.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bridge_torch.train import checkpoint, runs
from bridge_torch.train.ema import EMA

log = logging.getLogger(__name__)


@dataclass
class InitialWeights:
    """What a run takes from the checkpoint it starts from."""

    path: Path  # the checkpoint file
    algo: str
    shapes: dict  # the source agent's shapes (``AgentShapes`` as a dict)
    stats: dict
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None


def load_initial(reference: str | Path, algo: str) -> InitialWeights:
    """The checkpoint ``reference`` names (a run directory: its latest), checked against ``algo``.

    Raises:
        FileNotFoundError: no such run directory or checkpoint.
        ValueError: the checkpoint was trained with another algo.
    """
    reference = Path(reference).expanduser()
    path = reference if reference.is_file() else runs.resolve_checkpoint(reference, None)
    state = checkpoint.load(path)
    source_algo = state["config"].get("algo")
    if source_algo != algo:
        raise ValueError(f"init_from={reference}: {path} holds a {source_algo!r} agent, this run "
                         f"trains {algo!r}; start from a run of the same algo")
    return InitialWeights(path, algo, dict(state["agent_shapes"]), state["stats"],
                          state["model"], state["ema"])


def apply_initial(initial: InitialWeights, agent: nn.Module, ema: EMA | None) -> None:
    """Load the weights into a freshly built agent (strictly) and its EMA."""
    checkpoint.load_module_state(agent, initial.model, source=f"{initial.path} [model]")
    if ema is not None:
        weights = initial.ema if initial.ema is not None else initial.model
        checkpoint.load_module_state(ema.module, weights, source=f"{initial.path} [ema]")
    log.info("initialised from %s (fresh optimizer and schedule)", initial.path)
