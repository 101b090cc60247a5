"""The legacy ``out.npy`` format of the original tools (spec §5): a pickled list of trajectories.

Reading it executes pickle, so :func:`load_out_npy` says so (once per file) and is only used on
the user's own data paths; training packs it once into a pickle-free store (``data/datasets.py``).
"""

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bridge_torch.data.store import Trajectory

log = logging.getLogger(__name__)
TRAJECTORY_KEYS = ("observations", "next_observations", "actions", "terminals", "language")
_warned: set[str] = set()


def save_out_npy(path: Path, trajectories: list[dict[str, Any]]) -> None:
    """``np.save`` of the list (an object array), as the original converter does; atomic."""
    path = Path(path)
    array = np.empty(len(trajectories), dtype=object)
    array[:] = trajectories
    fd, tmp = tempfile.mkstemp(prefix=".out.npy.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_out_npy(path: Path) -> list[dict[str, Any]]:
    """Load and validate a legacy out.npy. WARNING: this unpickles the file."""
    path = Path(path)
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("loading %s executes pickle (legacy out.npy format): only load files from "
                    "your own data; it is packed once into a pickle-free store", path)
    try:
        array = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable out.npy ({err})") from err
    if array.dtype != object or array.ndim != 1:
        raise ValueError(f"{path}: expected a 1-D object array of trajectory dicts, "
                         f"found dtype {array.dtype} shape {array.shape}")
    trajectories = list(array)
    for i, traj in enumerate(trajectories):
        _validate(traj, f"{path}#{i}")
    return trajectories


def _validate(traj: Any, where: str) -> None:
    if not isinstance(traj, dict):
        raise ValueError(f"{where}: expected a trajectory dict, found {type(traj).__name__}")
    missing = [k for k in TRAJECTORY_KEYS[:3] if k not in traj]
    if missing:
        raise ValueError(f"{where}: missing keys {missing} (has {sorted(traj)})")
    lengths = {k: len(traj[k]) for k in TRAJECTORY_KEYS[:3]}
    if len(set(lengths.values())) != 1 or lengths["actions"] == 0:
        raise ValueError(f"{where}: observations, next_observations and actions must have the "
                         f"same non-zero length, found {lengths}")
    first = traj["observations"][0]
    if not isinstance(first, dict) or "images0" not in first or "state" not in first:
        raise ValueError(f"{where}: observations must be dicts with 'images0' and 'state'")
    image = np.asarray(first["images0"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{where}: images0 must be uint8 (S, S, 3), found {image.dtype} "
                         f"{image.shape}")


def _stack(observations: list[dict], last: dict, key: str) -> np.ndarray:
    return np.stack([np.asarray(o[key]) for o in observations] + [np.asarray(last[key])])


def legacy_to_trajectories(trajectories: list[dict[str, Any]], path: Path
                           ) -> Iterator[Trajectory]:
    """Frames stored once: the observations plus the last next_observation (T+1 frames)."""
    for i, traj in enumerate(trajectories):
        obs, last = traj["observations"], traj["next_observations"][-1]
        cameras = [k for k in obs[0] if k.startswith("images")
                   and all(k in o for o in obs) and k in last]
        saliency = None
        if all("saliency" in o for o in obs) and "saliency" in last:
            saliency = _stack(obs, last, "saliency").astype(np.float32).reshape(
                len(obs) + 1, *np.asarray(obs[0]["saliency"]).shape[:2])
        yield Trajectory(
            frames={c: _stack(obs, last, c).astype(np.uint8) for c in cameras},
            proprio=_stack(obs, last, "state").astype(np.float32),
            actions=np.asarray(traj["actions"], dtype=np.float32),
            language=[s for s in traj.get("language", []) if s],
            saliency=saliency,
            source=f"{path}#{i}",
        )
