"""Rebuild a trained agent from a checkpoint: the checkpoint alone says what to build.

A checkpoint carries its run's resolved config, normalisation statistics and the shapes the agent
was built for, so nothing here reads ``config.yaml`` or ``stats.json`` to construct the model.
Those files are only compared with the checkpoint, to catch a checkpoint from another run being
passed together with a run directory. The agent is built on the meta device and takes the
checkpoint's tensors: randomly initialising a full ResNet only to overwrite every weight would
cost most of a restore on a CPU.
"""

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
import yaml
from torch import nn

from bridge_torch.agents import AgentShapes, build_agent
from bridge_torch.data.actions import NORMALIZATION_FIELDS
from bridge_torch.data.store_checks import check_statistics
from bridge_torch.train import checkpoint, runs
from bridge_torch.train.config import TrainConfig, config_from_container


@dataclass
class RestoredAgent:
    """A trained agent ready for inference, with what a deployment needs to use it."""

    agent: nn.Module  # in eval mode, on the requested device
    config: TrainConfig  # the run's config, as saved in the checkpoint
    stats: dict  # normalisation statistics {"actions": {...}, "proprio": {...}}
    step: int  # updates the weights had seen
    path: Path  # the checkpoint file


def _check_belongs_to_run(run_dir: Path, path: Path, state: dict) -> None:
    """Refuse a checkpoint whose algo or action dimension differs from the run directory's."""
    saved_algo = state["config"].get("algo")
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        run_algo = (yaml.safe_load(config_file.read_text()) or {}).get("algo")
        if run_algo is not None and saved_algo != run_algo:
            raise ValueError(f"{path} was trained with algo {saved_algo!r} but {run_dir} is a "
                             f"{run_algo!r} run")
    stats_file = run_dir / "stats.json"
    if stats_file.is_file():
        run_action_dim = len(json.loads(stats_file.read_text())["actions"]["mean"])
        action_dim = state["agent_shapes"]["action_dim"]
        if action_dim != run_action_dim:
            raise ValueError(f"{path} has action_dim {action_dim} but the run {run_dir} was "
                             f"trained on {run_action_dim}-dimensional actions (stats.json)")


def _check_finite(path: Path, state: dict, weights_key: str, kind: str) -> None:
    """Statistics and weights are numbers a robot acts on: well formed and finite, or refused;
    ``kind`` is the normalisation the policy undoes with them."""
    shapes = state["agent_shapes"]
    used = NORMALIZATION_FIELDS.get(kind, ("mean", "std", "min", "max"))  # what the policy reads
    for key, dim in (("actions", shapes["action_dim"]), ("proprio", shapes["proprio_dim"])):
        entry = state["stats"].get(key) if isinstance(state["stats"], dict) else None
        if used:
            check_statistics(entry, dim, f"{path} stats.{key}", used)
    for name, tensor in state[weights_key].items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path} [{weights_key}]: {name} contains NaN or inf; these weights "
                             "cannot drive a robot (a diverged run? try an earlier checkpoint)")


def _build_with_weights(config: TrainConfig, shapes: AgentShapes,
                        weights: dict[str, torch.Tensor], *, source: str) -> nn.Module:
    """The agent with ``weights`` loaded strictly, built without random initialisation: on the
    meta device (shapes only), then given the checkpoint's tensors (``load_module_state``)."""
    with torch.device("meta"):
        agent = build_agent(config.algo, config.model, config.encoder, config.saliency, shapes)
    checkpoint.load_module_state(agent, weights, source=source, assign=True)
    unset = [name for name, tensor in chain(agent.named_parameters(), agent.named_buffers())
             if tensor.is_meta]
    if unset:  # a tensor no checkpoint holds must be made on the CPU explicitly by the model
        raise RuntimeError(f"{source}: {unset} hold no values after loading: the model creates "
                           "them on the default device instead of the CPU")
    return agent


def restore_agent(
    run_dir: str | Path,
    checkpoint_ref: str | Path | int | None = None,
    *,
    device: str | torch.device,
    use_ema: bool = True,
) -> RestoredAgent:
    """Rebuild the checkpoint's agent and load its weights into it, strictly.

    Args:
        run_dir: a run directory (holds ckpt_<step>.pt files).
        checkpoint_ref: None (latest), a step, or a checkpoint path (relative to run_dir or
            absolute).
        device: where the agent goes.
        use_ema: load the EMA weights when the run kept an EMA (else the trained weights).
    Raises:
        ValueError: the checkpoint belongs to a run of another algo or action dimension, its
            statistics are malformed or its weights or statistics hold NaN/inf, or its weights
            do not fit the agent (names the keys).
    """
    run_dir = Path(run_dir)
    path = runs.resolve_checkpoint(run_dir, checkpoint_ref)
    state = checkpoint.load(path)
    _check_belongs_to_run(run_dir, path, state)
    config = config_from_container(state["config"], source=f"{path} [config]")
    weights_key = "ema" if use_ema and state["ema"] is not None else "model"
    agent = _build_with_weights(config, AgentShapes(**state["agent_shapes"]), state[weights_key],
                                source=f"{path} [{weights_key}]")
    _check_finite(path, state, weights_key, config.data.sample.normalization_type)
    agent.to(device).eval()
    return RestoredAgent(agent, config, state["stats"], int(state["step"]), path)
