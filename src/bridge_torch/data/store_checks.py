"""What a packed store's ``meta.json`` and arrays must satisfy before anything trains on them.

A store may come from elsewhere (a download, another machine, a hand edit), so nothing in it is
trusted: the metadata must have the documented types, camera names must be plain file-name parts
(they become ``frames_<camera>.npy``), the float arrays must be finite and the statistics in
``meta.json`` must be those of the arrays. All checks run once, when a store is opened, and are
vectorised: the statistics are recomputed chunk by chunk (bounded memory), and a non-finite value
shows up as a non-finite column sum, so the arrays are read once and only a bad array is searched
for the offending row.
"""

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from bridge_torch.data.actions import compute_statistics, merge_statistics

SCHEMA_VERSION = 1
META_FILE = "meta.json"
STATS_KEYS = ("actions", "actions_relabeled", "proprio")
STATS_FIELDS = ("count", "mean", "std", "min", "max")
REQUIRED_META = ("cameras", "image_size", "proprio_dim", "action_dim", "num_trajectories",
                 "num_frames", "num_transitions", "has_saliency", "language", "stats")
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # no separators, no leading dot
STATS_CHUNK_ROWS = 1 << 20  # rows per float64 chunk when recomputing statistics
STATS_RTOL = 1e-5  # stored vs recomputed: both are float64 sums of the same float32 values


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_layout(meta: dict[str, Any], file: Path) -> None:
    """Types of the layout keys; camera names must be plain names inside the store."""
    cameras = meta["cameras"]
    if not isinstance(cameras, list) or not cameras or len(set(map(str, cameras))) != len(cameras):
        raise ValueError(f"{file}: cameras must be a non-empty list of distinct names, found "
                         f"{cameras!r}")
    for camera in cameras:
        if not isinstance(camera, str) or not PLAIN_NAME.match(camera):
            raise ValueError(f"{file}: camera name {camera!r} is not a plain name (letters, "
                             "digits, '_', '-', '.'; no '/' or leading '.'): it names the file "
                             "frames_<camera>.npy inside the store")
    size = meta["image_size"]
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(s, 1) for s in size):
        raise ValueError(f"{file}: image_size must be [height, width] of positive integers, "
                         f"found {size!r}")
    for key, low in (("proprio_dim", 1), ("action_dim", 1), ("num_trajectories", 1),
                     ("num_frames", 1), ("num_transitions", 1)):
        if not _is_int(meta[key], low):
            raise ValueError(f"{file}: {key} must be an integer >= {low}, found {meta[key]!r}")
    if not isinstance(meta["has_saliency"], bool):
        raise ValueError(f"{file}: has_saliency must be true or false, found "
                         f"{meta['has_saliency']!r}")
    count = meta["num_trajectories"]
    for key, default in (("language", None), ("trajectory_sources", [""] * count)):
        value = meta.get(key, default)
        inner = str if key == "trajectory_sources" else list
        if not isinstance(value, list) or len(value) != count or \
                not all(isinstance(v, inner) for v in value):
            raise ValueError(f"{file}: {key} must be a list of {count} {inner.__name__} "
                             f"entries (one per trajectory), found {str(value)[:200]}")


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of the store at ``path``, checked for version, keys and layout types."""
    file = path / META_FILE
    if not file.is_file():
        raise ValueError(f"{path} is not a packed store: {META_FILE} is missing")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{file}: expected a JSON object, found {type(meta).__name__}")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{file}: schema_version {version!r} is not supported (this bridge-torch "
                         f"reads version {SCHEMA_VERSION}); re-pack the data")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"{file}: missing keys {missing}")
    _check_layout(meta, file)
    if not isinstance(meta["stats"], dict) or sorted(meta["stats"]) != sorted(STATS_KEYS):
        found = sorted(meta["stats"]) if isinstance(meta["stats"], dict) else meta["stats"]
        raise ValueError(f"{file}: stats must hold {list(STATS_KEYS)}, found {found!r}")
    return meta


def _column_list(entry: dict, key: str, dim: int, where: str) -> np.ndarray:
    """``entry[key]`` as float64 (dim,), or an error naming ``where`` and the key."""
    value = entry.get(key)
    if not isinstance(value, list) or len(value) != dim or \
            not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{where}.{key} must be a list of {dim} numbers (one per column), found "
                         f"{str(value)[:200]}")
    array = np.asarray(value, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{where}.{key}: column {bad[0]} is {array[bad[0]]} (must be finite)")
    return array


def check_statistics(entry: Any, dim: int, where: str,
                     fields: tuple[str, ...] = STATS_FIELDS) -> dict[str, np.ndarray]:
    """One statistics entry (``{"count", "mean", "std", "min", "max"}``) must be well formed.

    Checks the given ``fields``: lists of ``dim`` finite numbers, std >= 0, min <= mean <= max
    (where present) and a count >= 1. ``where`` (file and key) starts every error message.
    Returns:
        The checked fields as float64 arrays (count as an int array of one value).
    """
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a dict of {list(fields)}, found {str(entry)[:200]}")
    out = {}
    for key in fields:
        if key == "count":
            if not _is_int(entry.get("count"), 1):
                raise ValueError(f"{where}.count must be an integer >= 1, found "
                                 f"{entry.get('count')!r}")
            out[key] = np.asarray([entry["count"]])
        else:
            out[key] = _column_list(entry, key, dim, where)
    if "std" in out and np.any(out["std"] < 0):
        column = int(np.argmax(out["std"] < 0))
        raise ValueError(f"{where}.std: column {column} is {out['std'][column]} (must be >= 0)")
    if "min" in out and "max" in out:
        low, high = out["min"], out["max"]
        slack = 1e-6 * (1 + np.maximum(abs(low), abs(high)))
        inside = (low <= high) if "mean" not in out else \
            (low - slack <= out["mean"]) & (out["mean"] <= high + slack)
        if not np.all(inside):
            column = int(np.argmin(inside))
            mean = f"mean {out['mean'][column]} " if "mean" in out else ""
            raise ValueError(f"{where}: column {column} has {mean}outside [min, max] = "
                             f"[{low[column]}, {high[column]}]")
    return out


def recompute_statistics(array: np.ndarray) -> dict[str, Any]:
    """Statistics of a (rows, D) array, in float64 chunks so a memory map is never copied whole."""
    parts = [compute_statistics(array[lo:lo + STATS_CHUNK_ROWS])
             for lo in range(0, array.shape[0], STATS_CHUNK_ROWS)]
    return merge_statistics(parts)


def _first_non_finite(array: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first NaN/inf, searched chunk by chunk."""
    for lo in range(0, array.shape[0], STATS_CHUNK_ROWS):
        bad = np.argwhere(~np.isfinite(array[lo:lo + STATS_CHUNK_ROWS]))
        if bad.size:
            return lo + int(bad[0, 0]), int(bad[0, 1])
    raise AssertionError("no non-finite value found")  # callers only search non-finite sums


def verify_array(array: np.ndarray, stored: Any, *, file: Path, key: str,
                 traj_start: np.ndarray, locate: Any) -> None:
    """``array`` must be finite and ``stored`` (its ``meta.json`` statistics) must describe it.

    Args:
        file: the array's ``.npy`` file; the messages name it and ``meta.json`` next to it.
        key: the statistics key (``actions``, ``actions_relabeled``, ``proprio``).
        traj_start: first row of every trajectory, to name the trajectory of a bad row.
        locate: ``locate(trajectory) -> str``, how to name a trajectory (index and source).
    """
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN/inf is reported below
        fresh = recompute_statistics(array)
    if not np.all(np.isfinite(fresh["mean"])):
        row, column = _first_non_finite(array)
        traj = int(np.searchsorted(traj_start, row, side="right")) - 1
        raise ValueError(f"{file}: row {row} column {column} is {array[row, column]} (NaN or "
                         f"inf) - {locate(traj)}, step {row - int(traj_start[traj])}; fix or "
                         "re-convert the data")
    where = f"{file.parent / META_FILE}: stats.{key}"
    checked = check_statistics(stored, array.shape[1], where)
    if int(checked["count"][0]) != array.shape[0]:
        raise ValueError(f"{where}.count is {int(checked['count'][0])} but {file.name} has "
                         f"{array.shape[0]} rows")
    for name in STATS_FIELDS[1:]:
        expected = np.asarray(fresh[name])
        scale = 1 + np.maximum(abs(np.asarray(fresh["min"])), abs(np.asarray(fresh["max"])))
        close = np.abs(checked[name] - expected) <= STATS_RTOL * scale
        if not np.all(close):
            column = int(np.argmin(close))
            raise ValueError(f"{where}.{name}: column {column} is {checked[name][column]} but "
                             f"{file.name} gives {expected[column]}; the statistics do not "
                             "describe the data (edited or damaged meta.json?)")
