"""Checkpoints as plain data: dicts of tensors and primitives, saved atomically, loaded
weights-only and checked. Where they live and which is the latest is ``train/runs.py``'s job.

A checkpoint ``<run_dir>/ckpt_<step>.pt`` holds everything needed to continue a run exactly and
to deploy it: ``step``, ``config`` (resolved, plain containers), ``stats`` (normalisation),
``agent_shapes`` (the data dimensions the agent was built for), ``model`` and ``ema`` (state
dicts of the raw agent — never a compiled or DDP-wrapped module), ``optimizer``, ``scheduler``,
``scaler``, ``model_summary``, and one entry per rank in ``rng``, ``sampler`` and ``augmenter``.
Loading uses ``torch.load(weights_only=True)``: no pickled objects, no code execution.
"""

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bridge_torch.atomic import os_error, write_atomic

REQUIRED_KEYS = ("step", "config", "stats", "agent_shapes", "model", "ema")


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (``atomic.write_atomic``: temp, fsync, rename).

    A crash mid-write leaves at most a stray temporary (removed by ``runs.remove_partial`` on
    resume once its writer is dead); the final name only ever holds a complete checkpoint, and
    an earlier checkpoint is never touched.

    Raises:
        OSError: the write failed; says why (disk full with the free bytes, permission, a
            temporary removed by another process) and that earlier checkpoints are unchanged.
    """
    path = Path(path)
    try:
        write_atomic(path, lambda handle: torch.save(state, handle))
    except OSError as err:
        reason = str(err).removeprefix(f"cannot write {path}: ")
        raise os_error(err.errno, f"cannot write checkpoint {path} ({reason}). Earlier "
                       "checkpoints are unchanged") from err


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check it has the keys we rely on."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's advice to retry with weights_only=False: no
        raise ValueError(f"refusing to load {path}: it holds pickled objects other than tensors "
                         f"and plain containers, which could run code ({err})") from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"cannot read checkpoint {path}: truncated or corrupt? ({err})") from err
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{path} is not a bridge-torch checkpoint: missing keys {missing}")
    return state


def load_module_state(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict`` strictly, naming every missing, unexpected or mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        what = f"{source} does not fit this {type(module).__name__}"
        raise ValueError(f"{what}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
