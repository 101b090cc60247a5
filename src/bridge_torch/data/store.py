"""The packed store: one directory of memory-mappable ``.npy`` files per split (design §2).

Frames are stored once (T+1 frames for T transitions; next_observations[t] is frame t+1), next to
flat proprio/action arrays and per-trajectory index arrays. Nothing is pickled: every array loads
with ``allow_pickle=False`` and the metadata is JSON, so opening a store from an untrusted source
cannot run code. A dataset larger than RAM trains from the page cache (``mmap_mode="r"``).
"""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bridge_torch.data.actions import compute_statistics, relabel_actions

SCHEMA_VERSION = 1
META_FILE = "meta.json"
INDEX_ARRAYS = ("traj_frame_start", "traj_action_start", "traj_length", "traj_has_saliency")
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


def validate_trajectory(traj: Trajectory, cameras: Sequence[str]) -> None:
    """Raise ValueError naming the trajectory when shapes, dtypes or values are not as expected."""
    where = f"trajectory {traj.source or '<unnamed>'}"
    actions, proprio = np.asarray(traj.actions), np.asarray(traj.proprio)
    if actions.ndim != 2 or actions.shape[0] < 1:
        raise ValueError(f"{where}: actions must be (T>=1, A), found shape {actions.shape}")
    steps = actions.shape[0] + 1
    if proprio.ndim != 2 or proprio.shape[0] != steps:
        raise ValueError(f"{where}: proprio must be ({steps}, P) for T={steps - 1} actions, "
                         f"found shape {proprio.shape}")
    for name, values in (("actions", actions), ("proprio", proprio)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{where}: {name} contain NaN or inf")
    for camera in cameras:
        frames = traj.frames.get(camera)
        if frames is None:
            raise ValueError(f"{where}: camera {camera!r} missing (has {sorted(traj.frames)})")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != steps \
                or frames.shape[-1] != 3:
            raise ValueError(f"{where}: frames[{camera!r}] must be uint8 ({steps}, H, W, 3), "
                             f"found {frames.dtype} {frames.shape}")
    if traj.saliency is not None:
        expected = (steps, *traj.frames[cameras[0]].shape[1:3])
        if traj.saliency.shape != expected:
            raise ValueError(f"{where}: saliency must be {expected}, found {traj.saliency.shape}")


class _NpyAppender:
    """Appends rows to a raw file, then writes a proper ``.npy`` (header + data) at the end.

    Why: the total row count is only known after the last trajectory, and keeping the rows in
    memory would bound the dataset size by RAM.
    """

    def __init__(self, directory: Path, name: str, dtype: np.dtype) -> None:
        self.raw_path = directory / f"{name}.raw"
        self.final_path = directory / f"{name}.npy"
        self.dtype = np.dtype(dtype)
        self.row_shape: tuple[int, ...] | None = None
        self.rows = 0
        self.file = open(self.raw_path, "wb")  # noqa: SIM115 - closed in finish()

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if self.row_shape is None:
            self.row_shape = rows.shape[1:]
        elif rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.final_path.name}: row shape {rows.shape[1:]} differs from "
                             f"earlier rows {self.row_shape} (mixed image sizes or dims?)")
        self.file.write(rows.tobytes())
        self.rows += rows.shape[0]

    def finish(self) -> None:
        self.file.close()
        shape = (self.rows, *(self.row_shape or ()))
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": shape}
        with open(self.final_path, "wb") as out, open(self.raw_path, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, length=16 << 20)
        self.raw_path.unlink()


def write_store(out_dir: Path, trajectories: Iterable[Trajectory], *,
                cameras: Sequence[str] = ("images0",), source: dict | None = None,
                progress: bool = True) -> Path:
    """Write trajectories as a packed store at ``out_dir`` atomically (temp dir, then rename).

    Memory use is bounded by one trajectory. An existing store at ``out_dir`` is replaced only
    after the new one is complete, so an interrupted write never leaves a broken store behind.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        meta = _write_arrays(tmp, trajectories, list(cameras), progress)
        meta["source"] = source or {}
        _write_json(tmp / META_FILE, meta)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_arrays(tmp: Path, trajectories: Iterable[Trajectory], cameras: list[str],
                  progress: bool) -> dict[str, Any]:
    writers = {f"frames_{c}": _NpyAppender(tmp, f"frames_{c}", np.uint8) for c in cameras}
    for name in ("proprio", "actions", "actions_relabeled"):
        writers[name] = _NpyAppender(tmp, name, np.float32)
    saliency = _NpyAppender(tmp, "saliency", np.float16)
    index: dict[str, list] = {name: [] for name in INDEX_ARRAYS}
    language, sources = [], []
    frames_so_far = actions_so_far = 0
    stats_rows: dict[str, list[np.ndarray]] = {"actions": [], "actions_relabeled": [],
                                                "proprio": []}
    for traj in tqdm(trajectories, desc="packing", unit="traj", disable=not progress):
        validate_trajectory(traj, cameras)
        relabeled = relabel_actions(traj.proprio, traj.actions)
        for camera in cameras:
            writers[f"frames_{camera}"].append(traj.frames[camera])
        for name, rows in (("proprio", traj.proprio), ("actions", traj.actions),
                           ("actions_relabeled", relabeled)):
            writers[name].append(rows)
            stats_rows[name].append(np.asarray(rows, dtype=np.float64))
        steps = traj.num_transitions + 1
        height, width = traj.frames[cameras[0]].shape[1:3]
        has_saliency = traj.saliency is not None
        saliency.append(traj.saliency if has_saliency else np.zeros((steps, height, width)))
        for name, value in zip(INDEX_ARRAYS, (frames_so_far, actions_so_far,
                                              traj.num_transitions, has_saliency), strict=True):
            index[name].append(value)
        frames_so_far += steps
        actions_so_far += traj.num_transitions
        language.append([line for line in traj.language if line])
        sources.append(traj.source)
    if not sources:
        for writer in [*writers.values(), saliency]:
            writer.file.close()
        raise ValueError("write_store: no trajectories to write")
    for writer in writers.values():
        writer.finish()
    if any(index["traj_has_saliency"]):
        saliency.finish()
    else:
        saliency.file.close()
        saliency.raw_path.unlink()
    for name, dtype in zip(INDEX_ARRAYS, (np.int64, np.int64, np.int64, np.bool_), strict=True):
        np.save(tmp / f"{name}.npy", np.asarray(index[name], dtype=dtype), allow_pickle=False)
    first = writers[f"frames_{cameras[0]}"].row_shape
    return {
        "schema_version": SCHEMA_VERSION,
        "cameras": cameras,
        "image_size": [int(first[0]), int(first[1])],
        "proprio_dim": int(writers["proprio"].row_shape[0]),
        "action_dim": int(writers["actions"].row_shape[0]),
        "num_trajectories": len(sources),
        "num_frames": frames_so_far,
        "num_transitions": actions_so_far,
        "has_saliency": bool(any(index["traj_has_saliency"])),
        "language": language,
        "trajectory_sources": sources,
        "stats": {name: compute_statistics(np.concatenate(rows))
                  for name, rows in stats_rows.items()},
    }


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``; the old store is removed only once the new one is in place."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


class PackedStore:
    """A read-only view of a packed store directory; arrays are memory-mapped, never unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta = _read_meta(self.path)
        self.cameras: list[str] = list(self.meta["cameras"])
        self.image_size: tuple[int, int] = tuple(self.meta["image_size"])
        self._frames = {c: self._load(f"frames_{c}", np.uint8) for c in self.cameras}
        self.proprio = self._load("proprio", np.float32)
        self.actions = self._load("actions", np.float32)
        self.actions_relabeled = self._load("actions_relabeled", np.float32)
        self.traj_frame_start = self._load("traj_frame_start", np.int64)
        self.traj_action_start = self._load("traj_action_start", np.int64)
        self.traj_length = self._load("traj_length", np.int64)
        self.traj_has_saliency = self._load("traj_has_saliency", np.bool_)
        self.saliency = self._load("saliency", np.float16) if self.meta["has_saliency"] else None
        self.language: list[list[str]] = self.meta["language"]
        self.stats: dict[str, Any] = self.meta["stats"]
        self._check_consistency()

    @property
    def num_trajectories(self) -> int:
        return int(self.traj_length.shape[0])

    @property
    def num_transitions(self) -> int:
        return int(self.actions.shape[0])

    def frames(self, camera: str = "images0") -> np.ndarray:
        """uint8 (N, H, W, 3) memory-mapped frames of one camera."""
        if camera not in self._frames:
            raise KeyError(f"{self.path}: no camera {camera!r}; stored cameras: {self.cameras}")
        return self._frames[camera]

    def _load(self, name: str, dtype: type) -> np.ndarray:
        file = self.path / f"{name}.npy"
        if not file.is_file():
            raise ValueError(f"packed store {self.path}: missing file {file.name}")
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except ValueError as err:  # truncated data or a pickled payload
            raise ValueError(f"packed store {self.path}: cannot read {file.name} without pickle "
                             f"or it is truncated ({err})") from err
        if array.dtype != np.dtype(dtype):
            raise ValueError(f"packed store {self.path}: {file.name} has dtype {array.dtype}, "
                             f"expected {np.dtype(dtype)}")
        return array

    def _check_consistency(self) -> None:
        n_frames, n_actions = self.proprio.shape[0], self.actions.shape[0]
        expected = {"frames": (self.meta["num_frames"], n_frames),
                    "actions": (self.meta["num_transitions"], n_actions),
                    "trajectories": (self.meta["num_trajectories"], self.traj_length.shape[0])}
        for camera, frames in self._frames.items():
            expected[f"frames_{camera}"] = (n_frames, frames.shape[0])
        expected["actions_relabeled"] = (n_actions, self.actions_relabeled.shape[0])
        if self.saliency is not None:
            expected["saliency"] = (n_frames, self.saliency.shape[0])
        for what, (want, found) in expected.items():
            if want != found:
                raise ValueError(f"packed store {self.path}: {what} has {found} rows, "
                                 f"expected {want} (truncated or mixed-up files?)")
        lengths = self.traj_length
        if int(lengths.sum()) != n_actions or int((lengths + 1).sum()) != n_frames or \
                np.any(lengths < 1):
            raise ValueError(f"packed store {self.path}: trajectory lengths do not cover "
                             f"{n_actions} actions / {n_frames} frames")


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / META_FILE
    if not file.is_file():
        raise ValueError(f"{path} is not a packed store: {META_FILE} is missing")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{file}: schema_version {version!r} is not supported "
                         f"(this bridge-torch reads version {SCHEMA_VERSION}); re-pack the data")
    return meta


def open_store(path: Path) -> PackedStore:
    """Open a packed store read-only (memory-mapped, no pickle); raises ValueError if invalid."""
    return PackedStore(Path(path))
