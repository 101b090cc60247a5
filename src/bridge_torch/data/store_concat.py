"""Concatenate finished packed stores into one, copying array payloads instead of trajectories.

Why this equals :func:`write_store` over all the parts' trajectories in order: everything the
writer derives from a trajectory depends on that trajectory alone. Relabelled actions are
differences of its own proprio plus its own binarised gripper, frames and saliency are per frame,
and its index entries are its lengths plus running offsets. So the parts' array payloads laid end
to end are the arrays of the whole, the index arrays are the parts' shifted by the frames and
actions before them, and a part without saliency contributes zero maps when another part has
them (as the writer back-fills zeros). Only the statistics are not copied: they are merged from
the parts' recorded ones with :func:`merge_statistics`, the exact count-weighted merge, so they
differ from a fresh computation by float rounding alone.

Each part is opened with :func:`open_store` first (index tiling, finite values, statistics that
describe the data) and the result is opened again before it replaces ``out_dir``, so a store
that does not open is never published. Payloads are copied in the kernel with
``os.copy_file_range`` where the system has it, else streamed through ``shutil.copyfileobj``;
no array is ever loaded whole.
"""

import errno
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from bridge_torch.atomic import atomic_directory
from bridge_torch.data.actions import merge_statistics
from bridge_torch.data.store import INDEX_ARRAYS, npy_header, open_store, write_json_atomic
from bridge_torch.data.store_checks import META_FILE, SCHEMA_VERSION, STATS_KEYS

LAYOUT_KEYS = ("cameras", "image_size", "proprio_dim", "action_dim")
COPY_CHUNK_BYTES = 1 << 30  # per copy_file_range call
ZERO_CHUNK_BYTES = 1 << 24  # zero saliency maps are written this many bytes at a time
# copy_file_range refused for this pair of files (other file systems, old kernels): stream instead
NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL,
                  errno.EPERM}


@dataclass(frozen=True)
class _Part:
    """What concatenation needs of one checked input store (its arrays are closed again)."""

    path: Path
    meta: dict[str, Any]
    payloads: dict[str, int]  # array name -> byte offset of its data in <name>.npy
    index: dict[str, np.ndarray]


def _read_part(path: Path) -> _Part:
    """Open and check one input store, keeping only its metadata, payload offsets and index."""
    store = open_store(path)
    arrays = {f"frames_{c}": store.frames(c) for c in store.cameras}
    arrays.update(proprio=store.proprio, actions=store.actions,
                  actions_relabeled=store.actions_relabeled)
    if store.saliency is not None:
        arrays["saliency"] = store.saliency
    payloads = {}
    for name, array in arrays.items():
        file = store.path / f"{name}.npy"
        if file.stat().st_size != array.offset + array.nbytes:
            raise ValueError(f"packed store {store.path}: {file.name} has "
                             f"{file.stat().st_size - array.offset - array.nbytes} bytes after "
                             f"its {array.shape} array (expected none)")
        payloads[name] = int(array.offset)
    index = {name: np.array(getattr(store, name)) for name in INDEX_ARRAYS}
    return _Part(store.path, store.meta, payloads, index)


def _check_layouts(parts: list[_Part]) -> None:
    """Every part must have the first one's cameras, image size and dimensions."""
    first = parts[0]
    for part in parts[1:]:
        for key in LAYOUT_KEYS:
            if part.meta[key] != first.meta[key]:
                raise ValueError(f"cannot concatenate packed stores {first.path} and {part.path}:"
                                 f" {key} is {first.meta[key]!r} in the first and "
                                 f"{part.meta[key]!r} in the second (all parts need the same "
                                 f"{', '.join(LAYOUT_KEYS)})")


def _copy_rest(source: BinaryIO, target: BinaryIO) -> None:
    """Append ``source`` from its position to its end at ``target``'s position."""
    if hasattr(os, "copy_file_range"):
        try:
            while os.copy_file_range(source.fileno(), target.fileno(), COPY_CHUNK_BYTES):
                pass
            return
        except OSError as err:
            if err.errno not in NO_KERNEL_COPY:
                raise
    shutil.copyfileobj(source, target)  # continues where a refused kernel copy stopped


def _write_all(target: BinaryIO, data: bytes | memoryview) -> None:
    """An unbuffered write may be short: write until all of ``data`` is out."""
    view = memoryview(data)
    while view:
        view = view[target.write(view):]


def _write_zeros(target: BinaryIO, nbytes: int) -> None:
    """Zero saliency maps of a part that has none, written in bounded chunks."""
    zeros = memoryview(bytes(min(nbytes, ZERO_CHUNK_BYTES)))
    while nbytes > 0:
        chunk = zeros[:nbytes]
        _write_all(target, chunk)
        nbytes -= len(chunk)


def _array_layout(meta: dict[str, Any], has_saliency: bool) -> dict[str, tuple]:
    """Array name -> (dtype, row shape, meta key counting its rows), as the store writer lays it."""
    size = tuple(meta["image_size"])
    layout = {f"frames_{c}": (np.uint8, (*size, 3), "num_frames") for c in meta["cameras"]}
    layout.update(proprio=(np.float32, (meta["proprio_dim"],), "num_frames"),
                  actions=(np.float32, (meta["action_dim"],), "num_transitions"),
                  actions_relabeled=(np.float32, (meta["action_dim"],), "num_transitions"))
    if has_saliency:
        layout["saliency"] = (np.float16, size, "num_frames")
    return layout


def _concat_array(file: Path, parts: list[_Part], dtype: type, row_shape: tuple,
                  rows_key: str, bar: tqdm) -> None:
    """Write ``file`` as one header and every part's payload in order (zeros where absent)."""
    row_bytes = np.dtype(dtype).itemsize * int(np.prod(row_shape))
    total = sum(part.meta[rows_key] for part in parts)
    with open(file, "wb", buffering=0) as target:
        header = npy_header(file.name, np.dtype(dtype), (total, *row_shape))
        _write_all(target, header)
        for part in parts:
            nbytes = part.meta[rows_key] * row_bytes
            if file.stem in part.payloads:
                with open(part.path / file.name, "rb", buffering=0) as source:
                    source.seek(part.payloads[file.stem])
                    _copy_rest(source, target)
            else:
                _write_zeros(target, nbytes)
            bar.update(nbytes)
        if target.tell() != len(header) + total * row_bytes:
            raise ValueError(f"{file}: wrote {target.tell() - len(header)} bytes, expected "
                             f"{total * row_bytes}: did an input store change while it was read?")


def _merged_meta(parts: list[_Part], has_saliency: bool, source: dict | None) -> dict[str, Any]:
    """The metadata :func:`write_store` writes for all the parts' trajectories (same key order)."""
    first = parts[0].meta
    count = sum(part.meta["num_trajectories"] for part in parts)
    return {
        "schema_version": SCHEMA_VERSION,
        "cameras": first["cameras"],
        **{key: first[key] for key in ("image_size", "proprio_dim", "action_dim")},
        "num_trajectories": count,
        "num_frames": sum(part.meta["num_frames"] for part in parts),
        "num_transitions": sum(part.meta["num_transitions"] for part in parts),
        "has_saliency": has_saliency,
        "language": [lines for part in parts for lines in part.meta["language"]],
        "trajectory_sources": [s for part in parts for s in part.meta.get(
            "trajectory_sources", [""] * part.meta["num_trajectories"])],
        "stats": {key: merge_statistics([part.meta["stats"][key] for part in parts])
                  for key in STATS_KEYS},
        "source": source or {},
    }


def _concat_index(parts: list[_Part]) -> dict[str, np.ndarray]:
    """The parts' index arrays, each part's starts shifted by the frames and actions before it."""
    frames = np.cumsum([0] + [part.meta["num_frames"] for part in parts])
    actions = np.cumsum([0] + [part.meta["num_transitions"] for part in parts])
    return {
        "traj_frame_start": np.concatenate([p.index["traj_frame_start"] + frames[i]
                                            for i, p in enumerate(parts)]),
        "traj_action_start": np.concatenate([p.index["traj_action_start"] + actions[i]
                                             for i, p in enumerate(parts)]),
        "traj_length": np.concatenate([p.index["traj_length"] for p in parts]),
        "traj_has_saliency": np.concatenate([p.index["traj_has_saliency"] for p in parts]),
    }


def concat_stores(out_dir: Path, stores: Sequence[Path], *, source: dict | None = None,
                  progress: bool = True) -> Path:
    """Write the trajectories of ``stores``, in order, as one packed store at ``out_dir``.

    The result holds the arrays :func:`write_store` would write for the same trajectories
    (module docstring); it is built in a temporary directory and replaces ``out_dir`` only when
    complete and opening cleanly, so an interrupted concatenation leaves no final store.

    Args:
        stores: finished packed stores with the same cameras, image size and dimensions.
        source: JSON-able description of where the data came from (``meta["source"]``).
    Raises:
        ValueError: no stores, an input that does not open, or a layout mismatch (naming both).
    """
    if not stores:
        raise ValueError("concat_stores: no stores to concatenate")
    parts = [_read_part(Path(path)) for path in stores]
    _check_layouts(parts)
    has_saliency = any(part.meta["has_saliency"] for part in parts)
    layout = _array_layout(parts[0].meta, has_saliency)
    total = sum(np.dtype(dtype).itemsize * int(np.prod(shape)) * part.meta[rows]
                for dtype, shape, rows in layout.values() for part in parts)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp, \
            tqdm(total=total, desc=f"concatenating {out_dir.name}", unit="B", unit_scale=True,
                 disable=not progress) as bar:
        for name, (dtype, shape, rows) in layout.items():
            _concat_array(tmp / f"{name}.npy", parts, dtype, shape, rows, bar)
        for name, array in _concat_index(parts).items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        write_json_atomic(tmp / META_FILE, _merged_meta(parts, has_saliency, source))
        open_store(tmp)
    return out_dir
