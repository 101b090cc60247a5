"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded weights-only.

A checkpoint ``<run_dir>/ckpt_<step>.pt`` holds everything needed to continue a run exactly and
to deploy it: ``step``, ``config`` (resolved, plain containers), ``stats`` (normalisation),
``agent_shapes`` (the data dimensions the agent was built for), ``model`` and ``ema`` (state
dicts of the raw agent — never a compiled or DDP-wrapped module), ``optimizer``, ``scheduler``,
``scaler``, ``model_summary``, and one entry per rank in ``rng``, ``sampler`` and ``augmenter``.
Loading uses ``torch.load(weights_only=True)``: no pickled objects, no code execution.
"""

import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
PARTIAL_RE = re.compile(r"^\.ckpt_\d+\.pt\.\d+\.tmp$")  # save()'s temp file while it writes
REQUIRED_KEYS = ("step", "config", "stats", "agent_shapes", "model", "ema")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt_{step}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest (smallest step) first."""
    found = []
    for path in Path(run_dir).iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the largest step, or None when the run has none yet."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: temp file in the same dir, fsync, rename.

    A crash mid-write leaves at most a stray ``.tmp`` file (removed by :func:`remove_partial`
    on resume); the final name only ever holds a complete checkpoint, and an earlier checkpoint
    is never touched.

    Raises:
        OSError: the write failed (e.g. a full disk); says so instead of torch's zip-writer error.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch's writer reports ENOSPC/EFBIG as RuntimeError
        free = shutil.disk_usage(path.parent).free
        raise OSError(f"cannot write checkpoint {path} ({type(err).__name__}: {err}); is the "
                      f"disk full ({free} bytes free) or a file-size limit reached? Earlier "
                      "checkpoints are unchanged") from err
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


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


def remove_partial(run_dir: Path) -> list[Path]:
    """Delete temp files of checkpoint writes that were killed; return them.

    Why: a killed :func:`save` leaves ``.ckpt_<step>.pt.<pid>.tmp`` as large as a checkpoint;
    no loader ever picks it, but nobody else would ever delete it either.
    """
    removed = [p for p in Path(run_dir).iterdir() if PARTIAL_RE.match(p.name) and p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)  # another rank may have removed it already
    return removed


def prune(run_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (None keeps all); return the removed."""
    if keep_last is None:
        return []
    checkpoints = list_checkpoints(run_dir)
    removed = checkpoints[: max(len(checkpoints) - keep_last, 0)]
    for path in removed:
        path.unlink()
    return removed


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


def resolve_checkpoint(run_dir: Path, checkpoint: str | Path | int | None) -> Path:
    """None -> the latest checkpoint; an int -> ``ckpt_<int>.pt``; a path -> that file."""
    if checkpoint is None:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"no ckpt_<step>.pt in run directory {run_dir}")
        return path
    if isinstance(checkpoint, int):
        return checkpoint_path(run_dir, checkpoint)
    path = Path(checkpoint)
    return path if path.is_absolute() else Path(run_dir) / path
