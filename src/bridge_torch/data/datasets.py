"""From a data path to packed stores: task selection and the out.npy cache.

A *task directory* holds one directory per split (``train/``, ``val/``), each with a legacy
``out.npy`` and/or a packed store in ``packed/``. ``include`` is a list of sub-datasets, each a
list of glob patterns relative to ``data_path`` (``**`` = any depth), as in the JAX
``glob_to_path_list`` (docs/semantics.md, 'Task selection'); unlike the earlier port, which
joined them to the data path literally, patterns really are globbed and ``exclude`` really
excludes. A ``data_path`` that is a TFDS directory is read by ``rlds_stream`` instead, whose
per-shard cache follows the rules below.

Legacy ``out.npy`` files are packed once into ``<split>/packed/`` (or, when the data directory is
not writable, into ``$BRIDGE_TORCH_CACHE/<key>/``, default ``~/.cache/bridge_torch/<key>/``, key =
sha256 of the absolute out.npy path), so pickle is parsed once per file, not at every run. The cache
records the source's size, mtime and sha256. Freshness check: when size and mtime both match the
record, the cache is reused without hashing (hashing a multi-GB file at every start would cost more
than the training setup); when either differs the file is re-hashed, and a matching hash (a copied
or touched file) keeps the cache and refreshes the record, anything else rebuilds it.

Unpickling runs code, so it happens only as far as the caller allows (``allow_pickle``): True
packs and re-packs as above; None (a fresh training run's default) packs only an out.npy that has
no packed store yet and otherwise uses the packed store as it is, warning when out.npy is newer;
False (the default for data paths read from a run directory) never unpickles.
``$BRIDGE_TORCH_NO_PICKLE=1`` turns every setting into False.
"""

import contextlib
import fnmatch
import glob
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from bridge_torch.data.sources import legacy_numpy as legacy
from bridge_torch.data.sources.pickle_guard import NO_PICKLE_ENV, PickleRefused, pickle_forbidden
from bridge_torch.data.store import (
    META_FILE,
    PackedStore,
    open_store,
    write_json_atomic,
    write_store,
)

ALL_LOCAL_INCLUDE: list[list[str]] = [["**"]]  # the all_local preset: every task, any depth
SPLIT_DIRS = ("train", "val")  # directory names that are splits, never tasks
LEGACY_FILE = "out.npy"
PACKED_DIR = "packed"
LEGACY_CAMERAS = ("images0",)  # the camera training reads; the cache holds only what is used
LEGACY_SOURCE_KEY = "legacy_out_npy"  # meta["source"] entry of a store packed from out.npy
CACHE_ENV = "BRIDGE_TORCH_CACHE"
HASH_CHUNK_BYTES = 8 << 20
OPT_IN = "data.load.allow_pickle=true or --allow-pickle reads it if you trust it"
log = logging.getLogger(__name__)


def has_split(task_dir: Path, split: str) -> bool:
    """Whether ``task_dir/split`` holds an out.npy or a packed store."""
    split_dir = Path(task_dir) / split
    return (split_dir / LEGACY_FILE).is_file() or (split_dir / PACKED_DIR / META_FILE).is_file()


def _is_task(path: Path, split: str) -> bool:
    """A task directory holds a train split, or the ``split`` that is opened on its own."""
    return has_split(path, "train") or has_split(path, split)


def _splits_named(split: str) -> str:
    return "train" if split == "train" else f"train or {split}"


def _inside_split(path: Path, root: Path, split: str) -> bool:
    """True when ``path`` lies inside the split directory of a task (never a task itself)."""
    for ancestor in list(path.relative_to(root).parents)[:-1]:  # below root, not root itself
        candidate = root / ancestor
        if candidate.name in SPLIT_DIRS and _is_task(candidate.parent, split):
            return True
    return path.name in SPLIT_DIRS and has_split(path.parent, path.name)


def _excluded(path: Path, root: Path, exclude: list[str]) -> str | None:
    """The first exclude pattern matching ``path`` (relative or absolute, fnmatch), or None."""
    names = (path.relative_to(root).as_posix(), path.as_posix())
    return next((p for p in exclude if any(fnmatch.fnmatch(n, p) for n in names)), None)


def _match_pattern(root: Path, pattern: str, exclude: list[str], split: str
                   ) -> tuple[list[Path], dict]:
    """Task directories matching one glob pattern, and counts of what was dropped and why."""
    hits = sorted({Path(p) for p in glob.glob(os.path.join(glob.escape(str(root)), pattern),
                                              recursive=True) if os.path.isdir(p)})
    no_split = f"without a {_splits_named(split)} split"
    kept, dropped = [], {no_split: 0, "excluded": 0}
    for path in hits:
        if not _is_task(path, split) or _inside_split(path, root, split):
            dropped[no_split] += path != root  # "**" matches the root itself
            continue
        rule = _excluded(path, root, exclude)
        if rule is not None:
            log.info("excluding %s (exclude pattern %r)", path, rule)
            dropped["excluded"] += 1
            continue
        kept.append(path)
    return kept, dropped


def _tfds_hint(root: Path) -> str:
    """Names a TFDS directory one or two levels below ``root``: ``data_path`` should be it."""
    below = sorted(info.parent for pattern in ("*/dataset_info.json", "*/*/dataset_info.json")
                   for info in root.glob(pattern))
    return f"; {below[0]} is a TFDS directory: pass it as data_path to train on it" if below \
        else ""


def resolve_task_dirs(data_path: Path, include: list[list[str]], exclude: list[str],
                      split: str = "train") -> list[list[Path]]:
    """Expand ``include`` into task directories, one list per sub-dataset.

    Args:
        data_path: root directory the patterns are relative to.
        include: sub-datasets, each a list of glob patterns (``**`` recursive).
        exclude: fnmatch patterns, tried on each match's path relative to ``data_path`` and on
            its absolute path; excluded matches are logged.
        split: the split that will be read. A task directory holds a train split, or this one:
            evaluating the val split works on a copy that left the train split out.
    Returns:
        Sorted, de-duplicated task directories per sub-dataset; each holds a train split (or
        ``split``).
    Raises:
        ValueError: ``data_path`` is not a directory, or a sub-dataset matches no task directory.
    """
    root = Path(data_path).expanduser().absolute()
    if not root.is_dir():
        raise ValueError(f"data_path {root} does not exist or is not a directory")
    if not include:
        raise ValueError("include must list at least one sub-dataset of glob patterns")
    groups = []
    for i, patterns in enumerate(include):
        found: set[Path] = set()
        dropped_total = {f"without a {_splits_named(split)} split": 0, "excluded": 0}
        unmatched = []
        for pattern in patterns:
            kept, dropped = _match_pattern(root, pattern, list(exclude), split)
            if not kept:
                unmatched.append(pattern)
            found.update(kept)
            for key, count in dropped.items():
                dropped_total[key] += count
        if not found:
            why = ", ".join(f"{n} {k}" for k, n in dropped_total.items())
            if not any(child.is_dir() for child in root.iterdir()):
                raise ValueError(f"include[{i}] = {list(patterns)} matches no task directory: "
                                 f"data_path {root} holds no directories; convert data into it "
                                 "first (bridge-torch-convert --output_path ...)")
            holds = " or ".join(f"{s}/{LEGACY_FILE} or {s}/{PACKED_DIR}/{META_FILE}"
                                for s in dict.fromkeys(("train", split)))
            raise ValueError(f"include[{i}] = {list(patterns)} matches no task directory under "
                             f"{root} (a task directory holds {holds}; matched directories: "
                             f"{why})" + _tfds_hint(root))
        for pattern in unmatched:  # the group matched something: a pattern that did not is odd
            log.warning("include pattern %r matched no task directory under %s", pattern, root)
        groups.append(sorted(found))
    return groups


def file_fingerprint(path: Path, *, with_hash: bool = True) -> dict[str, Any]:
    """Absolute path, size, mtime (ns) and optionally the streamed sha256 of a file."""
    stat = Path(path).stat()
    record: dict[str, Any] = {"path": str(Path(path).absolute()), "size": stat.st_size,
                              "mtime_ns": stat.st_mtime_ns}
    if with_hash:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while chunk := file.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
        record["sha256"] = digest.hexdigest()
    return record


def cache_root() -> Path:
    """The project's per-user cache: ``$BRIDGE_TORCH_CACHE``, default ``~/.cache/bridge_torch``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bridge_torch").expanduser()


def cache_dir_for(legacy_path: Path) -> Path:
    """Fallback cache directory of an out.npy whose data directory is not writable."""
    key = hashlib.sha256(str(Path(legacy_path).absolute()).encode()).hexdigest()[:32]
    return cache_root() / key


def _is_writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK)


def _existing_store(store_dir: Path, legacy_path: Path, allow_pickle: bool | None
                    ) -> PackedStore | None:
    """The store at ``store_dir``, or None when there is none (or it is unreadable and may be
    re-packed from ``legacy_path``); an unreadable store that may not be replaced raises."""
    if not (store_dir / META_FILE).is_file():
        return None
    try:
        return open_store(store_dir)
    except ValueError as err:
        if allow_pickle is not True:
            raise ValueError(f"{err} (not re-packed from {legacy_path}: that would unpickle "
                             f"it; {OPT_IN})") from err
        log.warning("ignoring unreadable packed store %s: %s", store_dir, err)
        return None


def unchanged_fingerprint(record: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """``path``'s fingerprint when it still holds what ``record`` (a :func:`file_fingerprint`)
    describes, else None (the module docstring's freshness check).

    Size and mtime as recorded: ``record`` itself, without hashing. Same size, another mtime:
    the file is re-hashed, and a matching hash returns the new fingerprint, which the caller
    records so that the next check skips the hash.
    """
    now = file_fingerprint(path, with_hash=False)
    if (now["size"], now["mtime_ns"]) == (record.get("size"), record.get("mtime_ns")):
        return record
    if now["size"] != record.get("size"):
        return None
    now = file_fingerprint(path)
    return now if now["sha256"] == record.get("sha256") else None


def _is_fresh(store: PackedStore, legacy_path: Path) -> bool:
    """Whether ``store`` is up to date with ``legacy_path`` (see the module docstring)."""
    record = store.source.get(LEGACY_SOURCE_KEY)
    if record is None:  # written by the converter, not packed from out.npy
        return (store.path / META_FILE).stat().st_mtime_ns >= legacy_path.stat().st_mtime_ns
    now = unchanged_fingerprint(record, legacy_path)
    if now is None:
        return False
    if now is record:
        return True
    meta = dict(store.meta, source={**store.source, LEGACY_SOURCE_KEY: now})
    # same content, new mtime: refresh the record so the next open skips the hash (best effort)
    with contextlib.suppress(OSError):
        write_json_atomic(store.path / META_FILE, meta)
    return True


def _pack_legacy(legacy_path: Path, store_dir: Path, data_root: Path) -> PackedStore:
    """Parse out.npy (pickle, once; only inside ``data_root``) and pack it at ``store_dir``."""
    record = file_fingerprint(legacy_path)
    log.info("packing %s into %s (once; later runs reuse the packed store)", legacy_path,
             store_dir)
    trajectories = legacy.legacy_to_trajectories(
        legacy.load_out_npy(legacy_path, data_root=data_root), legacy_path)
    source = {"format": LEGACY_FILE, LEGACY_SOURCE_KEY: record}
    return open_store(write_store(store_dir, trajectories, cameras=LEGACY_CAMERAS, source=source))


def open_split(task_dir: Path, split: str, data_root: Path | None = None, *,
               allow_pickle: bool | None = True) -> PackedStore:
    """Open one split of a task directory as a packed store, packing a legacy out.npy if allowed.

    Prefers ``<task>/<split>/packed/`` (or the fallback cache); an out.npy next to it is packed
    when no packed store of it exists, and re-packed when it is newer, as ``allow_pickle`` says.

    Args:
        data_root: the data path an out.npy must lie in (it is pickle); None = ``task_dir``.
        allow_pickle: True: pack and re-pack out.npy as needed; None: only pack an out.npy that
            has no packed store (an existing one is used, with a warning if out.npy is newer);
            False: never unpickle. ``$BRIDGE_TORCH_NO_PICKLE`` makes it False.
    Raises:
        ValueError: the split directory holds neither out.npy nor a packed store, its out.npy
            resolves to a file outside ``data_root``, or it would have to be unpickled and that
            is not allowed (PickleRefused).
    """
    split_dir = Path(task_dir) / split
    legacy_path, packed_dir = split_dir / LEGACY_FILE, split_dir / PACKED_DIR
    if not legacy_path.is_file():
        if (packed_dir / META_FILE).is_file():
            return open_store(packed_dir)
        raise ValueError(f"task {task_dir} has no {split!r} split: expected {legacy_path} or "
                         f"{packed_dir / META_FILE}")
    allow_pickle = False if pickle_forbidden() else allow_pickle
    fallback = cache_dir_for(legacy_path)
    stores = [s for c in (packed_dir, fallback) if (s := _existing_store(c, legacy_path,
                                                                          allow_pickle))]
    for store in stores:
        if _is_fresh(store, legacy_path):
            return store
    if stores and allow_pickle is not True:
        log.warning("%s is newer than its packed store %s: using the packed store as it is "
                    "(re-packing would unpickle out.npy; %s)", legacy_path, stores[0].path, OPT_IN)
        return stores[0]
    if allow_pickle is False:
        why = f"{NO_PICKLE_ENV} forbids it" if pickle_forbidden() else \
            f"unpickling is off here (the default when the data path comes from a run directory: " \
            f"resume, or evaluation without --data_path); {OPT_IN}"
        raise PickleRefused(f"refusing to unpickle {legacy_path}: out.npy is pickle, which can "
                            f"run code, and it has no packed store to read instead; {why}; or "
                            "convert the raw data with bridge-torch-convert --format packed")
    if _is_writable(split_dir):
        try:
            return _pack_legacy(legacy_path, packed_dir, data_root or task_dir)
        except PermissionError as err:
            log.warning("cannot write %s (%s): caching in %s", packed_dir, err, fallback)
    return _pack_legacy(legacy_path, fallback, data_root or task_dir)


def open_sub_datasets(data_path: Path, include: list[list[str]], exclude: list[str],
                      split: str = "train", *, allow_pickle: bool | None = True
                      ) -> list[list[PackedStore]]:
    """Open ``split`` of every selected task directory, grouped by sub-dataset.

    Task directories without ``split`` are skipped (logged); a sub-dataset left without stores
    stays as an empty list so positions still line up with ``sample_weights``. ``allow_pickle``:
    see :func:`open_split`.
    """
    return open_task_groups(resolve_task_dirs(data_path, include, exclude), split, data_path,
                            allow_pickle=allow_pickle)


def open_task_groups(groups: list[list[Path]], split: str, data_root: Path, *,
                     allow_pickle: bool | None = True) -> list[list[PackedStore]]:
    """Open ``split`` of resolved task directories (:func:`resolve_task_dirs`), group by group,
    as :func:`open_sub_datasets` does."""
    opened = []
    for tasks in groups:
        present = [task for task in tasks if has_split(task, split)]
        for task in sorted(set(tasks) - set(present)):
            log.info("task %s has no %s split: skipped", task, split)
        opened.append([open_split(task, split, data_root, allow_pickle=allow_pickle)
                       for task in present])
    return opened
