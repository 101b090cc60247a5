"""Import one released JAX checkpoint as a bridge-torch run directory.

The run directory is the one training writes (config.yaml/json, stats.json, model_summary.json,
ckpt_<step>.pt), so ``Policy.from_run`` and ``restore_agent`` load it as they load a trained
run. Online weights (``state/params``) become ``model``; for gc_ddpm_bc the
EMA copy (``state/target_params``), which the original samples with, becomes ``ema``. bc/gc_bc
keep no EMA: their ``target_params`` are never updated by the original and are not imported.
Everything is written into a temporary sibling of ``out`` and renamed at the end, so ``out``
either holds a complete run or does not exist.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bridge_torch.agents import AgentShapes, build_agent, count_parameters
from bridge_torch.atomic import atomic_directory
from bridge_torch.deploy.jax_import import config as jax_config
from bridge_torch.deploy.jax_import import flax_msgpack, params, train_state
from bridge_torch.deploy.jax_import.errors import JaxImportError
from bridge_torch.train import checkpoint, runs
from bridge_torch.train.config import TrainConfig, to_container
from bridge_torch.train.state import write_run_files

JAX_CONFIG_COPY = "jax_config.json"  # the original config, kept next to ours for provenance
FORMAT = "flax msgpack (rail-berkeley/bridge_data_v2)"


@dataclass
class ImportedRun:
    """What goes into the run directory."""

    config: TrainConfig
    stats: dict
    agent_shapes: dict[str, int]
    summary: dict[str, int]
    step: int
    model: dict[str, Any]
    ema: dict[str, Any] | None
    source: dict[str, str]
    original_config: dict[str, Any]  # the JAX config JSON, copied into the run


def build_config(sections: dict[str, Any]) -> TrainConfig:
    """Our validated ``TrainConfig`` from the mapped sections (schema defaults elsewhere)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), sections))
    except (OmegaConfBaseException, ValueError) as err:
        raise JaxImportError(f"the JAX config maps to an invalid bridge-torch config: {err}"
                             ) from None


def _check_network_kind(weights: train_state.JaxState, agent: str, source: str) -> None:
    """Catch another agent's checkpoint before comparing hundreds of leaves."""
    kind = train_state.network_kind(weights.params)
    if kind != agent:
        found = f"a {kind} network" if kind else "no network the importer knows"
        raise JaxImportError(f"{source} holds {found}, but the config's agent is {agent!r}")


def convert_tree(tree: flax_msgpack.Tree, original: dict[str, Any], size: int,
                 source: dict[str, str]) -> ImportedRun:
    """Check and convert a decoded checkpoint tree with its config JSON (nothing is written).

    Args:
        original: the parsed config JSON; size: the image size the policy was trained at;
        source: ``checkpoint`` (named in errors) and ``config``, recorded in the checkpoint.
    """
    name = source["checkpoint"]
    sections = jax_config.train_sections(original)
    weights = train_state.split(tree, name)
    _check_network_kind(weights, sections["algo"], name)
    if sections["algo"] == "gc_ddpm_bc":  # the original's score width is fixed, not configured
        sections["model"]["score_width"] = int(weights.params[params.SCORE_INPUT_KERNEL].shape[-1])
    config = build_config(sections)
    shapes = jax_config.agent_shapes(original, size)
    # Only names and shapes are needed: on the meta device the agent takes no memory and skips
    # the random initialisation of weights that would be overwritten.
    with torch.device("meta"):
        agent = build_agent(config.algo, config.model, config.encoder, config.saliency,
                            AgentShapes(**shapes))
    model = params.state_dict(weights.params, agent, name, "state/params")
    ema = None
    if config.ema.enabled:
        ema = params.state_dict(weights.target_params, agent, name, "state/target_params")
    summary = count_parameters(agent)
    if summary["total"] != weights.param_count:
        raise JaxImportError(f"{name}: the imported agent has {summary['total']:,} parameters, "
                             f"the checkpoint's state/params {weights.param_count:,}")
    return ImportedRun(config, jax_config.statistics(original), shapes, summary, weights.step,
                       model, ema, {**source, "format": FORMAT}, original)


def convert(checkpoint_path: Path, config_path: Path, im_size: int | None = None
            ) -> ImportedRun:
    """Read, check and convert a checkpoint and its config JSON (nothing is written)."""
    original = jax_config.load(config_path)
    size = jax_config.image_size(config_path, im_size)
    file = flax_msgpack.locate(checkpoint_path)
    source = {"checkpoint": str(file.resolve()), "config": str(Path(config_path).resolve())}
    return convert_tree(flax_msgpack.read(file), original, size, source)


def write_run(run: ImportedRun, out: Path) -> Path:
    """Write the run directory atomically: a temporary sibling renamed to ``out`` at the end."""
    out = Path(out)
    if out.exists():
        raise JaxImportError(f"{out} already exists; choose a new run directory")
    with atomic_directory(out) as tmp:
        write_run_files(tmp, run.config, run.stats, run.summary)
        (tmp / JAX_CONFIG_COPY).write_text(json.dumps(run.original_config, indent=1) + "\n")
        checkpoint.save(runs.checkpoint_path(tmp, run.step), {
            "step": run.step,
            "config": to_container(run.config),
            "stats": run.stats,
            "agent_shapes": run.agent_shapes,
            "model_summary": run.summary,
            "model": run.model,
            "ema": run.ema,
            "imported_from": run.source,
        })
    return out


def import_checkpoint(checkpoint_path: Path, config_path: Path, out: Path,
                      im_size: int | None = None) -> Path:
    """Convert ``checkpoint_path`` (``checkpoint_<step>/``, its ``checkpoint`` file or a bare
    ``checkpoint_<step>`` file) with its config JSON into the run directory ``out``.

    Raises:
        JaxImportError: the inputs cannot be imported (nothing is left at ``out``).
    """
    if Path(out).exists():
        raise JaxImportError(f"{out} already exists; choose a new run directory")
    return write_run(convert(checkpoint_path, config_path, im_size), out)
