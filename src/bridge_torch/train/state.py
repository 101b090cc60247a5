"""The training state a run saves and restores, and the run directory it lives in.

Exact resume needs more than weights: optimizer, scheduler and grad-scaler state, the EMA, the
global RNG streams (dropout, diffusion noise) and every rank's sampler and augmenter generators.
Per-rank states are gathered to rank 0 with ``all_gather_object`` so a DDP run resumes exactly
too. Only rank 0 writes; the other ranks wait at a barrier so nobody races ahead of a write.
"""

import logging
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bridge_torch.atomic import write_json_atomic, write_text_atomic
from bridge_torch.train import checkpoint, runs
from bridge_torch.train.config import TrainConfig, to_container, to_yaml
from bridge_torch.train.distributed import DistInfo, barrier, broadcast_object, gather_objects
from bridge_torch.train.ema import EMA
from bridge_torch.train.nonfinite import NonFiniteGuard
from bridge_torch.train.run_data import RunData

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What one update touches; ``agent`` is the raw module, ``model`` what the step calls."""

    agent: nn.Module  # raw agent: EMA, checkpoints and validation use it
    model: nn.Module  # the agent, compiled and/or DDP-wrapped (or the agent itself)
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: Any  # data.sampler.TransitionSampler
    augmenter: Any  # data.augment.Augmenter
    guard: NonFiniteGuard | None = None  # counts non-finite updates (None: not counted)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's global RNGs: one seed, one run."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states as weights_only-loadable tensors and primitives."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy_key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(numpy_state["state"]["pos"]),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {
                "key": state["numpy_key"].numpy().astype(np.uint32),
                "pos": state["numpy_pos"],
            },
            "has_gauss": 0,
            "gauss": 0.0,
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def prepare_run_dir(config: TrainConfig, info: DistInfo) -> tuple[Path, runs.RunLock | None]:
    """The resumed run's directory, or a fresh unique one chosen by rank 0 and shared, with the
    run's lock (held by rank 0, None on the other ranks) taken before anything in it changes."""
    if config.resume is not None:
        run_dir = Path(config.resume)
        if runs.latest_checkpoint(run_dir) is None:
            raise FileNotFoundError(f"resume={config.resume}: no ckpt_<step>.pt to resume from")
        lock = lock_run_dir(run_dir, info)
        for partial in runs.remove_partial(run_dir) if info.is_main else []:
            log.warning("removed %s, left by a checkpoint write that was interrupted", partial)
        return run_dir, lock
    run_dir = None
    if info.is_main:
        root = Path(config.save_dir).expanduser().resolve() / runs.PROJECT_DIR
        run_dir = root / runs.make_run_id(config.run_name)
        run_dir.mkdir(parents=True)  # never exist_ok: two runs must not share a directory
    run_dir = broadcast_object(run_dir, info)
    return run_dir, lock_run_dir(run_dir, info)


def lock_run_dir(run_dir: Path, info: DistInfo) -> runs.RunLock | None:
    """Rank 0 takes the run's lock; its refusal reaches every rank, so the job stops as one."""
    lock, refusal = None, None
    if info.is_main:
        lock = runs.RunLock(run_dir)
        try:
            lock.acquire()
        except runs.RunLockedError as err:
            lock, refusal = None, str(err)
    refusal = broadcast_object(refusal, info)
    if refusal is not None:
        raise runs.RunLockedError(refusal)
    return lock


def write_run_files(run_dir: Path, config: TrainConfig, stats: dict, summary: dict) -> None:
    """The run's self-description: resolved config (YAML + JSON), statistics, parameter counts."""
    write_text_atomic(run_dir / runs.CONFIG_YAML, to_yaml(config))
    write_json_atomic(run_dir / runs.CONFIG_JSON, to_container(config))
    write_json_atomic(run_dir / runs.STATS_FILE, stats)
    write_json_atomic(run_dir / runs.SUMMARY_FILE, summary)


def param_checksum(module: nn.Module) -> float:
    """Sum of all parameters in float64: equal on every rank iff DDP kept the replicas in sync."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in module.parameters()))


def save_training_state(
    state: TrainState, run_dir: Path, step: int, config: TrainConfig, data: RunData,
    summary: dict, info: DistInfo,
) -> Path:
    """Gather every rank's streams, write ``ckpt_<step>.pt`` on rank 0, prune, then barrier.

    Raises:
        RuntimeError: the ranks' parameters differ — DDP is not synchronising gradients.
    """
    per_rank = gather_objects(
        {
            "rng": rng_state(next(state.agent.parameters()).device),
            "sampler": state.sampler.state_dict(),
            "augmenter": state.augmenter.state_dict(),
            "checksum": param_checksum(state.agent),
        },
        info,
    )
    checksums = [rank_state["checksum"] for rank_state in per_rank]
    if len(set(checksums)) > 1:
        raise RuntimeError(
            f"step {step}: DDP replicas diverged, parameter sums per rank {checksums}"
        )
    path = runs.checkpoint_path(run_dir, step)
    if info.is_main:
        checkpoint.save(path, {
            "step": step,
            "config": to_container(config),
            "stats": data.stats,
            "agent_shapes": asdict(data.agent_shapes),
            "model_summary": summary,
            "model": state.agent.state_dict(),
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(),
            "rng": [rank_state["rng"] for rank_state in per_rank],
            "sampler": [rank_state["sampler"] for rank_state in per_rank],
            "augmenter": [rank_state["augmenter"] for rank_state in per_rank],
            "param_checksums": checksums,
            "nonfinite_skipped": int(state.guard.skipped) if state.guard is not None else 0,
        })
        runs.prune(run_dir, config.keep_last)
    barrier(info)
    return path


def restore_training_state(
    state: TrainState, saved: dict[str, Any], info: DistInfo, device: torch.device, source: str
) -> int:
    """Load a checkpoint (named ``source`` in errors) into the freshly built state; return the
    step to continue from.

    With the same world size every rank gets back its own streams and the run continues exactly;
    with a different one the weights and optimizer carry over and the streams start afresh.
    """
    checkpoint.load_module_state(state.agent, saved["model"], source=f"{source} [model]")
    verify_param_checksum(state.agent, saved, source)
    if (state.ema is None) != (saved["ema"] is None):
        raise ValueError("resume: ema.enabled differs from the checkpoint's (it has "
                         f"{'no ' if saved['ema'] is None else ''}EMA weights)")
    if state.ema is not None:
        checkpoint.load_module_state(state.ema.module, saved["ema"], source=f"{source} [ema]")
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    if len(saved["sampler"]) == info.world_size:
        set_rng_state(saved["rng"][info.rank], device)
        state.sampler.load_state_dict(saved["sampler"][info.rank])
        state.augmenter.load_state_dict(saved["augmenter"][info.rank])
    else:
        log.warning(
            "resume: the checkpoint was written by %d ranks, this job has %d; weights and "
            "optimizer continue, the data and noise streams restart from seed + rank",
            len(saved["sampler"]), info.world_size,
        )
    return int(saved["step"])


def verify_param_checksum(agent: nn.Module, saved: dict[str, Any], source: str) -> None:
    """Recompute the parameter sum the checkpoint recorded when it was written.

    Why: checkpoints from before the per-tensor digests (``checkpoint.tensor_digests``) have no
    other check, and a flipped bit must not resume silently. The tolerance only absorbs summation
    order (another device or thread count); real corruption moves the sum far more.
    """
    recorded = saved.get("param_checksums")
    if not recorded:
        return
    actual = param_checksum(agent)
    if not math.isclose(actual, recorded[0], rel_tol=1e-9, abs_tol=1e-6):
        raise ValueError(f"{source} is corrupt: its model weights sum to {actual!r}, but "
                         f"{recorded[0]!r} was recorded when it was written (a flipped bit on "
                         "disk or in a copy?)")
