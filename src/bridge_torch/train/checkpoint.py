"""Checkpoints as plain data: dicts of tensors and primitives, saved atomically, loaded
weights-only and checked. Where they live and which is the latest is ``train/runs.py``'s job.

A checkpoint ``<run_dir>/ckpt_<step>.pt`` holds everything needed to continue a run exactly and
to deploy it: ``step``, ``config`` (resolved, plain containers), ``stats`` (normalisation),
``agent_shapes`` (the data dimensions the agent was built for), ``model`` and ``ema`` (state
dicts of the raw agent — never a compiled or DDP-wrapped module), ``optimizer``, ``scheduler``,
``scaler``, ``model_summary``, and one entry per rank in ``rng``, ``sampler`` and ``augmenter``.
Loading uses ``torch.load(weights_only=True)``: no pickled objects, no code execution.

``save`` adds ``tensor_sha256``, a digest of every tensor (dtype, shape, bytes) by its path in the
dict, which ``load`` verifies: torch's reader does not notice a flipped bit in tensor data.
Checkpoints written before digests existed load unverified.
"""

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bridge_torch.atomic import os_error, write_atomic
from bridge_torch.tree import leaves

ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of every file torch.save writes
REQUIRED_KEYS = ("step", "config", "stats", "agent_shapes", "model", "ema")
DIGESTS_KEY = "tensor_sha256"


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (``atomic.write_atomic``: temp, fsync, rename).

    A crash mid-write leaves at most a stray temporary (removed by ``runs.remove_partial`` on
    resume once its writer is dead); the final name only ever holds a complete checkpoint, and
    an earlier checkpoint is never touched.

    Raises:
        ValueError: the model or EMA weights hold NaN or inf (nothing is written).
        OSError: the write failed; says why (disk full with the free bytes, permission, a
            temporary removed by another process) and that earlier checkpoints are unchanged.
        KeyboardInterrupt: Ctrl-C during the write (nothing is written).
    """
    path = Path(path)
    refuse_nonfinite_weights(path, state)
    state = {**state, DIGESTS_KEY: tensor_digests(state)}
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
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != ZIP_MAGIC:  # torch.save writes a zip archive; anything else is not ours
        raise ValueError(f"{path} is not a bridge-torch checkpoint: not a PyTorch zip archive "
                         f"(starts with {magic!r}; a text file, random bytes or another format)")
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
    verify_digests(path, state)
    return state


def _digest(tensor: torch.Tensor) -> str:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.sha256(f"{flat.dtype}{tuple(tensor.shape)}".encode())
    digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def tensor_digests(state: dict[str, Any]) -> dict[str, str]:
    """sha256 of each tensor's dtype, shape and bytes, by its path in ``state``."""
    return {"/".join(map(str, path)): _digest(leaf) for path, leaf in leaves(state)
            if isinstance(leaf, torch.Tensor)}


def verify_digests(path: Path, state: dict[str, Any]) -> None:
    """Recompute the digests ``save`` recorded; any difference is a corrupt file, named."""
    recorded = state.get(DIGESTS_KEY)
    if recorded is None:
        return  # written before digests existed
    actual = tensor_digests(state)  # the recorded digests are strings: no tensors among them
    bad = sorted(name for name in set(recorded) | set(actual)
                 if recorded.get(name) != actual.get(name))
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(f"checkpoint {path} is corrupt: {', '.join(bad[:3])}{more} differ from "
                         "the sha256 digests recorded when it was written (a flipped bit on disk "
                         "or in a copy?)")


def refuse_nonfinite_weights(path: Path, state: dict[str, Any]) -> None:
    """Raise before writing model/EMA weights that hold NaN or inf: a diverged run must not
    leave a checkpoint that evaluation or a resume would pick up as the latest."""
    for section in ("model", "ema"):
        weights = [(k, t) for k, t in (state.get(section) or {}).items() if t.is_floating_point()]
        if not weights:
            continue
        finite = torch.stack([torch.isfinite(t).all() for _, t in weights]).tolist()
        bad = [name for (name, _), ok in zip(weights, finite, strict=True) if not ok]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise ValueError(f"refusing to write checkpoint {path}: the {section} weights "
                             f"{', '.join(bad[:3])}{more} hold NaN or inf (training diverged); "
                             "earlier checkpoints are unchanged")


def load_module_state(module: nn.Module, state: dict[str, torch.Tensor], *, source: str,
                      assign: bool = False) -> None:
    """``load_state_dict`` strictly, naming every missing, unexpected or mis-shaped key.

    ``assign``: the module was built on the meta device (shapes only, no initialisation); it takes
    ``state``'s tensors themselves, each in the dtype and memory layout its own had (copied only
    where they differ), so it computes exactly what a module loaded by copying would.
    """
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
    if assign:
        state = {key: _laid_out_like(tensor, own[key]) for key, tensor in state.items()}
    module.load_state_dict(state, strict=True, assign=assign)


def _laid_out_like(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` with ``like``'s dtype and strides (e.g. channels-last convolution weights)."""
    if tensor.dtype == like.dtype and tensor.stride() == like.stride():
        return tensor
    return torch.empty_strided(like.shape, like.stride(), dtype=like.dtype,
                               device=tensor.device).copy_(tensor)
