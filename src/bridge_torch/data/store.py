"""The packed store: one directory of memory-mappable ``.npy`` files per split.

Frames are stored once (T+1 frames for T transitions; next_observations[t] is frame t+1), next to
flat proprio/action arrays and per-trajectory index arrays. Nothing is pickled: every array loads
with ``allow_pickle=False`` and the metadata is JSON, so opening a store from an untrusted source
cannot run code. A dataset larger than RAM trains from the page cache (``mmap_mode="r"``).

Layout of a store directory::

    meta.json                 schema_version, cameras, image_size, dims, counts, language,
                              trajectory_sources, source, stats
    frames_<camera>.npy       uint8   (N, H, W, 3)   N = sum over trajectories of T+1
    proprio.npy               float32 (N, P)
    actions.npy               float32 (M, A)         M = sum of T, raw commanded actions
    actions_relabeled.npy     float32 (M, A)         proprio deltas + binarised gripper
    saliency.npy              float16 (N, H, W)      only if some trajectory has saliency
    traj_frame_start.npy      int64 (n,)   traj_action_start.npy int64 (n,)
    traj_length.npy           int64 (n,)   traj_has_saliency.npy bool (n,)
"""

import json
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bridge_torch.atomic import atomic_directory, write_text_atomic
from bridge_torch.data.actions import compute_statistics, merge_statistics, relabel_actions
from bridge_torch.data.store_checks import (
    META_FILE,
    SCHEMA_VERSION,
    STATS_KEYS,
    read_meta,
    verify_array,
)

INDEX_ARRAYS = ("traj_frame_start", "traj_action_start", "traj_length", "traj_has_saliency")
NPY_HEADER_BYTES = 256  # reserved .npy header size (a multiple of 64, as numpy aligns)
SALIENCY_TOLERANCE = 1e-3  # resampling may overshoot [0, 1] by rounding; clipped when written
log = logging.getLogger(__name__)


@dataclass
class Trajectory:
    """One trajectory with every frame stored once."""

    frames: dict[str, np.ndarray]  # camera name -> uint8 (T+1, H, W, 3)
    proprio: np.ndarray  # float32 (T+1, P) robot state of every frame
    actions: np.ndarray  # float32 (T, A) raw commanded actions; a_t moves frame t -> t+1
    language: list[str]  # instruction lines, [] when none
    saliency: np.ndarray | None = None  # float32 (T+1, H, W) in [0, 1], or None
    source: str = ""  # human-readable origin, used in error messages

    @property
    def num_transitions(self) -> int:
        return int(self.actions.shape[0])


def _check_float_array(where: str, name: str, value: Any, shape: tuple) -> np.ndarray:
    """``value`` must be a finite floating array of ``shape`` (None entries match any size)."""
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
        found = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"{where}: {name} must be a float array, found {found}")
    if value.ndim != len(shape) or any(s is not None and s != f for s, f in
                                       zip(shape, value.shape, strict=False)):
        wanted = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{where}: {name} must have shape {wanted}, found {value.shape}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{where}: {name} contains NaN or inf")
    return value


def validate_trajectory(traj: Trajectory, cameras: Sequence[str],
                        layout: dict[str, Any] | None = None) -> None:
    """Raise ValueError naming ``traj.source`` when shapes, dtypes or values are not as expected.

    Args:
        layout: ``{"image_size", "proprio_dim", "action_dim"}`` every trajectory of a store must
            share (taken from the first one); None skips that check.
    """
    where = f"trajectory {traj.source or '<unnamed>'}"
    actions = _check_float_array(where, "actions", traj.actions, (None, None))
    if actions.shape[0] < 1:
        raise ValueError(f"{where}: needs at least one action (T >= 1), found {actions.shape}")
    steps = actions.shape[0] + 1
    proprio = _check_float_array(where, f"proprio (T+1={steps} rows for T={steps - 1} actions)",
                                 traj.proprio, (steps, None))
    size = None
    for camera in cameras:
        frames = traj.frames.get(camera)
        if frames is None:
            raise ValueError(f"{where}: camera {camera!r} missing (has {sorted(traj.frames)})")
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
                or frames.shape[0] != steps or frames.shape[-1] != 3:
            found = (frames.dtype, frames.shape) if isinstance(frames, np.ndarray) else frames
            raise ValueError(f"{where}: frames[{camera!r}] must be uint8 ({steps}, H, W, 3), "
                             f"found {found}")
        if size is not None and frames.shape[1:3] != size:
            raise ValueError(f"{where}: frames[{camera!r}] are {frames.shape[1:3]}, but "
                             f"frames[{cameras[0]!r}] are {size}; all cameras need one size")
        size = frames.shape[1:3]
    if traj.saliency is not None:
        saliency = _check_float_array(where, "saliency", traj.saliency, (steps, *size))
        if saliency.min() < -SALIENCY_TOLERANCE or saliency.max() > 1 + SALIENCY_TOLERANCE:
            raise ValueError(f"{where}: saliency must lie in [0, 1], found "
                             f"[{saliency.min()}, {saliency.max()}]")
    if not isinstance(traj.language, list) or not all(isinstance(s, str) for s in traj.language):
        raise ValueError(f"{where}: language must be a list of str, found {traj.language!r}")
    found = {"image_size": list(size), "proprio_dim": proprio.shape[1],
             "action_dim": actions.shape[1]}
    for key, value in (layout or {}).items():
        if found[key] != value:
            raise ValueError(f"{where}: {key} is {found[key]}, but earlier trajectories of this "
                             f"store have {value}")


def npy_header(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 ``.npy`` header of ``NPY_HEADER_BYTES``, padded with spaces as numpy pads."""
    header = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                   "fortran_order": False, "shape": tuple(shape)})
    prefix = np.lib.format.MAGIC_PREFIX + bytes([1, 0])
    header_len = NPY_HEADER_BYTES - len(prefix) - 2
    if len(header) + 1 > header_len:
        raise ValueError(f"{name}: .npy header {header!r} too long")
    return prefix + struct.pack("<H", header_len) + \
        (header.ljust(header_len - 1) + "\n").encode("latin1")


class _NpyAppender:
    """Streams rows into a ``.npy`` file whose header is written last, into reserved space.

    Why: the total row count is only known after the last trajectory, keeping the rows in memory
    would bound the dataset size by RAM, and copying a raw file behind a header afterwards would
    double the disk traffic. The header is a standard version-1.0 header padded with spaces (as
    numpy pads its own) to ``NPY_HEADER_BYTES``, a multiple of 64, so the data stays aligned.
    """

    def __init__(self, directory: Path, name: str, dtype: type) -> None:
        self.path = directory / f"{name}.npy"
        self.dtype = np.dtype(dtype)
        self.row_shape: tuple[int, ...] = ()
        self.rows = 0
        self.file = open(self.path, "wb")  # noqa: SIM115 - closed in finish() / close()
        self.file.write(b"\0" * NPY_HEADER_BYTES)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if self.rows == 0:
            self.row_shape = rows.shape[1:]
        self.file.write(rows.data)
        self.rows += rows.shape[0]

    def finish(self) -> None:
        self.file.seek(0)
        self.file.write(npy_header(self.path.name, self.dtype, (self.rows, *self.row_shape)))
        self.file.close()

    def close(self) -> None:
        self.file.close()


class _StoreWriter:
    """Streams validated trajectories into the array files of a (temporary) store directory."""

    def __init__(self, directory: Path, cameras: list[str]) -> None:
        self.directory, self.cameras = directory, cameras
        self.arrays = {f"frames_{c}": _NpyAppender(directory, f"frames_{c}", np.uint8)
                       for c in cameras}
        for name in ("proprio", "actions", "actions_relabeled"):
            self.arrays[name] = _NpyAppender(directory, name, np.float32)
        self.saliency: _NpyAppender | None = None  # created at the first trajectory that has one
        self.index: dict[str, list] = {name: [] for name in INDEX_ARRAYS}
        self.language: list[list[str]] = []
        self.sources: list[str] = []
        self.stats: dict[str, list[dict]] = {name: [] for name in STATS_KEYS}
        self.layout: dict[str, Any] | None = None
        self.num_frames = self.num_transitions = 0

    def add(self, traj: Trajectory) -> None:
        validate_trajectory(traj, self.cameras, self.layout)
        first = traj.frames[self.cameras[0]]
        if self.layout is None:
            self.layout = {"image_size": list(first.shape[1:3]),
                           "proprio_dim": traj.proprio.shape[1],
                           "action_dim": traj.actions.shape[1]}
        rows = {"proprio": traj.proprio, "actions": traj.actions,
                "actions_relabeled": relabel_actions(traj.proprio, traj.actions)}
        for camera in self.cameras:
            self.arrays[f"frames_{camera}"].append(traj.frames[camera])
        for name, values in rows.items():
            self.arrays[name].append(values)
            self.stats[name].append(compute_statistics(values))
        steps = traj.num_transitions + 1
        if traj.saliency is not None:
            self._saliency_writer(first.shape[1:3]).append(np.clip(traj.saliency, 0.0, 1.0))
        elif self.saliency is not None:
            self.saliency.append(np.zeros((steps, *first.shape[1:3]), np.float16))
        for name, value in zip(INDEX_ARRAYS, (self.num_frames, self.num_transitions,
                                              traj.num_transitions, traj.saliency is not None),
                               strict=True):
            self.index[name].append(value)
        self.num_frames += steps
        self.num_transitions += traj.num_transitions
        self.language.append([line for line in traj.language if line.strip()])
        self.sources.append(traj.source)

    def _saliency_writer(self, size: tuple[int, int]) -> _NpyAppender:
        """Open saliency.npy lazily, back-filling zeros for the trajectories before this one."""
        if self.saliency is None:
            self.saliency = _NpyAppender(self.directory, "saliency", np.float16)
            for steps in self.index["traj_length"]:
                self.saliency.append(np.zeros((steps + 1, *size), np.float16))
        return self.saliency

    def finish(self) -> dict[str, Any]:
        """Write the .npy headers and index arrays; return the metadata (without ``source``)."""
        if not self.sources:
            raise ValueError("write_store: no trajectories to write")
        for writer in self._writers():
            writer.finish()
        for name, dtype in zip(INDEX_ARRAYS, (np.int64, np.int64, np.int64, np.bool_),
                               strict=True):
            np.save(self.directory / f"{name}.npy", np.asarray(self.index[name], dtype=dtype),
                    allow_pickle=False)
        return {
            "schema_version": SCHEMA_VERSION,
            "cameras": self.cameras,
            **self.layout,
            "num_trajectories": len(self.sources),
            "num_frames": self.num_frames,
            "num_transitions": self.num_transitions,
            "has_saliency": self.saliency is not None,
            "language": self.language,
            "trajectory_sources": self.sources,
            "stats": {name: merge_statistics(parts) for name, parts in self.stats.items()},
        }

    def close(self) -> None:
        for writer in self._writers():
            writer.close()

    def _writers(self) -> list[_NpyAppender]:
        return [*self.arrays.values(), *([self.saliency] if self.saliency else [])]


def write_store(out_dir: Path, trajectories: Iterable[Trajectory], *,
                cameras: Sequence[str] = ("images0",), source: dict | None = None,
                progress: bool = True) -> Path:
    """Write trajectories as a packed store at ``out_dir`` atomically (temp dir, then rename).

    Memory use is bounded by one trajectory (plus a few numbers per trajectory). An existing
    store at ``out_dir`` is replaced only after the new one is complete, so an interrupted write
    never leaves a broken store behind.

    Args:
        cameras: cameras to store; every trajectory must have all of them, at one image size.
        source: JSON-able description of where the data came from (saved as ``meta["source"]``).
    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    if not cameras:
        raise ValueError("write_store: cameras must name at least one camera")
    writer = None
    try:
        with atomic_directory(out_dir) as tmp:
            writer = _StoreWriter(tmp, list(cameras))
            for traj in tqdm(trajectories, desc=f"packing {out_dir.name}", unit="traj",
                             disable=not progress):
                writer.add(traj)
            meta = writer.finish()
            meta["source"] = source or {}
            write_json_atomic(tmp / META_FILE, meta)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return out_dir


def write_json_atomic(path: Path, payload: dict) -> None:
    """A store's JSON files: compact (indent 1), written through ``atomic.write_text_atomic``."""
    write_text_atomic(path, json.dumps(payload, indent=1))


class PackedStore:
    """A read-only view of a packed store directory; arrays are memory-mapped, never unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.cameras: list[str] = list(self.meta["cameras"])
        self.image_size: tuple[int, int] = (int(self.meta["image_size"][0]),
                                            int(self.meta["image_size"][1]))
        frames, actions = int(self.meta["num_frames"]), int(self.meta["num_transitions"])
        count = int(self.meta["num_trajectories"])
        image, proprio_dim, action_dim = (*self.image_size, 3), self.meta["proprio_dim"], \
            self.meta["action_dim"]
        # sizes as the metadata states them; the arrays are checked against them when loaded
        self.num_frames, self.num_transitions, self.num_trajectories = frames, actions, count
        self.action_dim, self.proprio_dim = int(action_dim), int(proprio_dim)
        self._frames = {c: self._load(f"frames_{c}", np.uint8, (frames, *image))
                        for c in self.cameras}
        self.proprio = self._load("proprio", np.float32, (frames, proprio_dim))
        self.actions = self._load("actions", np.float32, (actions, action_dim))
        self.actions_relabeled = self._load("actions_relabeled", np.float32,
                                            (actions, action_dim))
        self.saliency = self._load("saliency", np.float16, (frames, *self.image_size)) \
            if self.meta["has_saliency"] else None
        self.traj_frame_start = self._load("traj_frame_start", np.int64, (count,))
        self.traj_action_start = self._load("traj_action_start", np.int64, (count,))
        self.traj_length = self._load("traj_length", np.int64, (count,))
        self.traj_has_saliency = self._load("traj_has_saliency", np.bool_, (count,))
        self.language: list[list[str]] = self.meta["language"]
        self.trajectory_sources: list[str] = self.meta.get("trajectory_sources", [""] * count)
        self.source: dict[str, Any] = self.meta.get("source", {})
        self.stats: dict[str, Any] = self.meta["stats"]
        self._check_index()
        self._check_values()

    def frames(self, camera: str = "images0") -> np.ndarray:
        """uint8 (N, H, W, 3) memory-mapped frames of one camera."""
        if camera not in self._frames:
            raise KeyError(f"{self.path}: no camera {camera!r}; stored cameras: {self.cameras}")
        return self._frames[camera]

    def trajectory(self, index: int) -> Trajectory:
        """Trajectory ``index`` as views of the memory maps (nothing is copied)."""
        first, length = int(self.traj_frame_start[index]), int(self.traj_length[index])
        frames, actions = slice(first, first + length + 1), \
            slice(int(self.traj_action_start[index]), int(self.traj_action_start[index]) + length)
        saliency = self.saliency[frames] if self.traj_has_saliency[index] else None
        return Trajectory(frames={c: self._frames[c][frames] for c in self.cameras},
                          proprio=self.proprio[frames], actions=self.actions[actions],
                          language=list(self.language[index]), saliency=saliency,
                          source=self.trajectory_sources[index])

    def _load(self, name: str, dtype: type, shape: tuple) -> np.ndarray:
        file = self.path / f"{name}.npy"
        if not file.is_file():
            raise ValueError(f"packed store {self.path}: missing file {file.name}")
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:  # truncated data or a pickled payload
            raise ValueError(f"packed store {self.path}: cannot read {file.name}: it is truncated "
                             f"or not a plain .npy array ({err})") from err
        if array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
            raise ValueError(f"packed store {self.path}: {file.name} is {array.dtype} "
                             f"{array.shape}, expected {np.dtype(dtype)} {tuple(shape)} "
                             f"(from {META_FILE})")
        return array

    def _check_index(self) -> None:
        """The index arrays must tile the frame and action arrays exactly, in order."""
        lengths = np.asarray(self.traj_length)
        frame_start = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
        action_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        problems = []
        if np.any(lengths < 1):
            problems.append("traj_length has values < 1")
        if not np.array_equal(self.traj_frame_start, frame_start) or \
                int((lengths + 1).sum()) != self.num_frames:
            problems.append(f"traj_frame_start/traj_length do not cover {self.num_frames} frames")
        if not np.array_equal(self.traj_action_start, action_start) or \
                int(lengths.sum()) != self.num_transitions:
            problems.append(f"traj_action_start/traj_length do not cover "
                            f"{self.num_transitions} actions")
        if problems:
            raise ValueError(f"packed store {self.path}: inconsistent index ({'; '.join(problems)};"
                             f" {self.num_trajectories} trajectories)")

    def _check_values(self) -> None:
        """Finite actions/proprio, and meta.json statistics that describe them (store_checks)."""
        def locate(index: int) -> str:
            return f"trajectory {index} ({self.trajectory_sources[index] or 'no source'})"

        for key, starts in (("actions", self.traj_action_start),
                            ("actions_relabeled", self.traj_action_start),
                            ("proprio", self.traj_frame_start)):
            verify_array(getattr(self, key), self.stats[key], file=self.path / f"{key}.npy",
                         key=key, traj_start=np.asarray(starts), locate=locate)


def open_store(path: Path) -> PackedStore:
    """Open a packed store read-only (memory-mapped, no pickle); raises ValueError if invalid."""
    return PackedStore(Path(path))
