"""The legacy ``out.npy`` format of the original tools (docs/semantics.md, 'Data format and
latency shift').

An out.npy is ``np.save`` of a Python list of trajectory dicts, i.e. a pickled 1-D object array
whose observations are lists of per-step dicts. Reading it executes pickle, so
:func:`load_out_npy` says so (once per file and process) and is the only place in bridge-torch
that passes ``allow_pickle=True``; training packs each file once into a pickle-free store
(``data/datasets.py``) through :func:`legacy_to_trajectories`.
"""

import functools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bridge_torch.atomic import write_atomic
from bridge_torch.data.sources.pickle_guard import refuse_if_forbidden
from bridge_torch.data.store import Trajectory

log = logging.getLogger(__name__)
STEP_KEYS = ("observations", "next_observations", "actions")  # required, one entry per step
MAIN_CAMERA = "images0"
CAMERA_PREFIX = "images"
SALIENCY_KEY = "saliency"


def save_out_npy(path: Path, trajectories: list[dict[str, Any]]) -> None:
    """Write ``trajectories`` as the original converter does (``np.save`` of the list); atomic.

    The bytes equal ``np.save(path, trajectories)``; they go to a temporary file in the same
    directory that is renamed into place, so a crash never leaves a partial out.npy.
    """
    path = Path(path)
    if not trajectories:
        raise ValueError(f"{path}: refusing to write an out.npy without trajectories")
    array = np.empty(len(trajectories), dtype=object)  # what np.asanyarray(list of dicts) gives
    array[:] = trajectories
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda file: np.save(file, array, allow_pickle=True))


@functools.cache
def _warn_pickle(path: str) -> None:
    """Log the pickle warning; cached so it appears once per file and process."""
    log.warning("loading %s executes pickle (legacy out.npy format): only load files you trust; "
                "training packs it once into a pickle-free store", path)


def load_out_npy(path: Path, *, data_root: Path | None = None) -> list[dict[str, Any]]:
    """Load and validate a legacy out.npy. WARNING: this unpickles the file.

    Args:
        data_root: the user's data directory; the file (symlinks resolved) must lie inside it,
            so a link planted in the data cannot make training unpickle a file from elsewhere.
            None: the caller names the file explicitly (e.g. ``bridge-torch-inspect <file>``).
    Returns:
        The list of trajectory dicts.
    Raises:
        PickleRefused: ``$BRIDGE_TORCH_NO_PICKLE`` forbids unpickling.
        ValueError: a file outside ``data_root``, an unreadable file, not a 1-D object array, or
            a malformed trajectory (the message names the file, the trajectory index and what
            was expected vs found).
    """
    path = Path(path)
    refuse_if_forbidden(path)
    root = Path(data_root).expanduser().resolve() if data_root is not None else None
    if root is not None and not path.resolve().is_relative_to(root):
        raise ValueError(f"refusing to unpickle {path}: it resolves to {path.resolve()}, outside "
                         f"the data path {data_root}; out.npy is pickle and runs code when "
                         "loaded, so it is only read from the data path you configured")
    _warn_pickle(str(path.absolute()))
    try:
        array = np.load(path, allow_pickle=True)
    except Exception as err:  # np.load of a pickle can raise nearly any exception type
        raise ValueError(f"{path}: not a readable out.npy ({type(err).__name__}: {err})") from err
    if not isinstance(array, np.ndarray) or array.dtype != object or array.ndim != 1:
        found = (array.dtype, array.shape) if isinstance(array, np.ndarray) else type(array)
        raise ValueError(f"{path}: expected a 1-D object array (np.save of a list of trajectory "
                         f"dicts), found {found}")
    trajectories = list(array)
    for i, traj in enumerate(trajectories):
        validate_out_trajectory(traj, f"{path} trajectory {i}")
    return trajectories


def _check_step(step: Any, where: str, image_shape: tuple | None) -> tuple:
    """One observation dict: a uint8 (S, S, 3) ``images0`` and a ``state``; returns the shape."""
    if not isinstance(step, dict) or MAIN_CAMERA not in step or "state" not in step:
        found = sorted(step) if isinstance(step, dict) else type(step).__name__
        raise ValueError(f"{where}: expected a dict with '{MAIN_CAMERA}' and 'state', "
                         f"found {found}")
    image = step[MAIN_CAMERA]
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or (image_shape is not None and image.shape != image_shape):
        found = (image.dtype, image.shape) if isinstance(image, np.ndarray) else type(image)
        wanted = image_shape or "(S, S, 3)"
        raise ValueError(f"{where}: expected {MAIN_CAMERA} uint8 {wanted}, found {found}")
    return image.shape


def validate_out_trajectory(traj: Any, where: str) -> None:
    """Raise ValueError (prefixed with ``where``) unless ``traj`` follows the out.npy schema."""
    if not isinstance(traj, dict):
        raise ValueError(f"{where}: expected a trajectory dict, found {type(traj).__name__}")
    missing = [key for key in STEP_KEYS if key not in traj]
    if missing:
        raise ValueError(f"{where}: missing keys {missing} (found {sorted(traj)})")
    for key in STEP_KEYS:
        if not isinstance(traj[key], list | tuple | np.ndarray):
            raise ValueError(f"{where}: expected {key} to be a list, found "
                             f"{type(traj[key]).__name__}")
    lengths = {key: len(traj[key]) for key in STEP_KEYS}
    if len(set(lengths.values())) != 1 or lengths["actions"] == 0:
        raise ValueError(f"{where}: expected observations, next_observations and actions of one "
                         f"non-zero length, found {lengths}")
    image_shape = None
    for key in ("observations", "next_observations"):
        for t, step in enumerate(traj[key]):
            image_shape = _check_step(step, f"{where} {key}[{t}]", image_shape)
    language = traj.get("language", [])
    if not isinstance(language, list | tuple) or not all(isinstance(s, str) for s in language):
        raise ValueError(f"{where}: expected language to be a list of str, found {language!r}")


def _stack(steps: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.stack([np.asarray(step[key]) for step in steps])


def out_dict_to_trajectory(traj: dict[str, Any], source: str) -> Trajectory:
    """One out.npy trajectory as a :class:`Trajectory` with every frame stored once.

    Frames and proprio are the observations plus the last next_observation (T+1 rows for T
    actions); cameras are the ``images<N>`` keys present in every step; saliency is kept when
    every step has it; the ``[""]`` language placeholder becomes ``[]``.
    """
    steps = [*traj["observations"], traj["next_observations"][-1]]
    cameras = [key for key in steps[0] if key.startswith(CAMERA_PREFIX)
               and key[len(CAMERA_PREFIX):].isdigit() and all(key in s for s in steps)]
    saliency = None
    has_saliency = [SALIENCY_KEY in step for step in steps]
    if all(has_saliency):
        maps = _stack(steps, SALIENCY_KEY).astype(np.float32)
        saliency = maps.reshape(maps.shape[:3])  # (T+1, S, S, 1) -> (T+1, S, S)
    elif any(has_saliency):
        log.warning("%s: only %d of %d steps have saliency; using none for this trajectory",
                    source, sum(has_saliency), len(steps))
    return Trajectory(
        frames={camera: _stack(steps, camera) for camera in cameras},
        proprio=_stack(steps, "state").astype(np.float32),
        actions=np.stack([np.asarray(a, dtype=np.float32) for a in traj["actions"]]),
        language=[line for line in traj.get("language", []) if line.strip()],
        saliency=saliency,
        source=source,
    )


def legacy_to_trajectories(trajectories: Iterable[dict[str, Any]], path: Path
                           ) -> Iterator[Trajectory]:
    """Trajectories of one out.npy, lazily, each with source ``"<path>#<index>"``."""
    for i, traj in enumerate(trajectories):
        yield out_dict_to_trajectory(traj, f"{path}#{i}")
