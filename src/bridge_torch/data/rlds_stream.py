"""``data_path`` = a TFDS/RLDS directory: every shard is packed on first use into its own cached
store, so a release trains without a converted copy beside it (docs/rlds.md, 'Training straight
from the TFDS directory').

A split is ONE sub-dataset whose stores are the split's shards in shard order. The sampler
concatenates a sub-dataset's stores and the statistics are merged exactly over them, so training
sees the same episodes in the same order as on ``bridge-torch-convert --input_format rlds``
output, which packs exactly these per-shard stores into one. Each shard is decoded by the
converter's own :func:`rlds_convert.convert_shard` (CRC checks, skipped episodes counted per
reason), into the cache entry

    <cache_root()>/rlds/<name>-<version>-<key of the directory>/<im_size>px-<camera>/<shard file>/
        packed/     the shard's store (absent when every episode of the shard was skipped)
        done.json   episodes written and skipped, the shard's fingerprint, the settings

under the same rules as the out.npy cache (``datasets``): ``$BRIDGE_TORCH_CACHE`` or
``~/.cache/bridge_torch``; an entry is reused while its shard has the recorded size and mtime (or,
with only the mtime changed, the recorded sha256), and re-packed when the shard changed or the
entry is unreadable; an entry is built in a temporary directory and renamed into place when
complete, so an interrupted or failed packing leaves no partial entry. The shards are packed by
``num_workers`` spawned worker processes (the converter's pool, ``worker_pool``), or in this
process for one; whoever packs a shard holds its ``flock`` (``.<shard file>.lock``) meanwhile, so
two runs or DDP ranks packing at once share the work: each packs the shards nobody else is
packing, then waits for the others and reuses them. Only the splits a run opens are packed, and
memory and temporary disk stay bounded by one shard per worker.
"""

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bridge_torch.atomic import TEMP_RE, atomic_directory, remove_stale_temporaries
from bridge_torch.data.datasets import (
    ALL_LOCAL_INCLUDE,
    cache_root,
    file_fingerprint,
    unchanged_fingerprint,
)
from bridge_torch.data.sources import rlds
from bridge_torch.data.sources.convert_output import PACKED_DIR, reason_lines
from bridge_torch.data.sources.rlds_convert import SHARD_DONE, SPLIT_MAP, ShardJob, convert_shard
from bridge_torch.data.sources.tfds import Shard, TfdsDataset, is_tfds_dir, open_tfds
from bridge_torch.data.sources.worker_pool import results_as_completed
from bridge_torch.data.split_metadata import NotPacked, StoreMeta, read_store_meta
from bridge_torch.data.store import PackedStore, open_store, write_json_atomic

STREAM_DIR = "rlds"  # below cache_root()
# rlds.num_workers=auto starts no more (the converter's default too; a number may ask for more):
# each worker holds a shard's temporary entry on disk (about 110 MB at 128² for the full release)
# and one episode in memory, and starting one costs the imports of the training entry point.
MAX_AUTO_WORKERS = 8
log = logging.getLogger(__name__)


def auto_workers() -> int:
    """``rlds.num_workers=auto``: the CPUs this process may use shared among the DDP ranks of its
    node (``LOCAL_WORLD_SIZE``, set by torchrun: every rank packs with workers of its own), at
    least 1, at most ``MAX_AUTO_WORKERS``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        ranks = int(value)
    except ValueError:
        ranks = 0
    if ranks < 1:
        raise ValueError(f"LOCAL_WORLD_SIZE={value!r}: expected the number of DDP ranks on this "
                         "node (>= 1)")
    return max(1, min(MAX_AUTO_WORKERS, cores // ranks))


@dataclass
class RldsStreamConfig:
    """How a TFDS directory given as ``data_path`` is packed. The camera is
    ``data.load.camera``: the cache holds only the camera training reads."""

    im_size: int = 128  # side of the square frames packed into the cache (the converter's default)
    # worker processes packing the shards the cache lacks: "auto" (auto_workers) or a number;
    # 1 packs them in the training process itself
    num_workers: Any = "auto"

    def __post_init__(self) -> None:
        if self.im_size < 1:
            raise ValueError(f"rlds.im_size must be >= 1, got {self.im_size}")
        if self.num_workers != "auto" and (type(self.num_workers) is not int
                                           or self.num_workers < 1):
            raise ValueError(f"rlds.num_workers must be 'auto' or a number >= 1, got "
                             f"{self.num_workers!r}")

    def workers(self) -> int:
        """The number of packing worker processes ``num_workers`` stands for."""
        return auto_workers() if self.num_workers == "auto" else self.num_workers


@dataclass(frozen=True)
class CachedShard:
    """One shard's cache entry."""

    shard: Shard
    store: PackedStore | None  # None: every episode of the shard was skipped
    record: dict[str, Any]  # done.json


def is_stream_path(data_path: str | Path) -> bool:
    """Whether ``data_path`` names a TFDS directory (trained from through the cache)."""
    return is_tfds_dir(Path(data_path).expanduser())


@contextlib.contextmanager
def _shard_lock(path: Path, wait: bool) -> Iterator[bool]:
    """Hold an ``flock`` on ``path`` (True), or yield False at once when another process holds
    it and ``wait`` is false. The kernel drops it when its holder dies, so it never goes stale."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing drops the flock


class ShardCache:
    """The cache entries of one TFDS directory packed at one image size and camera set."""

    def __init__(self, dataset: TfdsDataset, variant: rlds.Variant, cameras: tuple[str, ...],
                 im_size: int) -> None:
        self.dataset, self.variant, self.cameras, self.im_size = dataset, variant, cameras, im_size
        key = hashlib.sha256(str(dataset.path).encode()).hexdigest()[:12]
        self.directory = (cache_root() / STREAM_DIR / f"{dataset.name}-{dataset.version}-{key}"
                          / f"{im_size}px-{'+'.join(cameras)}")
        self.settings = {"input_path": str(dataset.path), "variant": variant.name,
                         "im_size": im_size, "cameras": list(cameras)}

    def fresh_record(self, shard: Shard) -> dict[str, Any] | None:
        """The ``done.json`` of ``shard``'s entry when it is up to date (module docstring), else
        None; its store is not opened."""
        entry = self.directory / shard.path.name
        try:
            record = json.loads((entry / SHARD_DONE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("settings") != self.settings \
                or not isinstance(record.get("shard"), dict) \
                or not isinstance(record.get("written"), dict):
            return None
        now = unchanged_fingerprint(record["shard"], shard.path)
        if now is None:
            return None
        if now is not record["shard"]:  # same bytes, new mtime: the next check skips the hash
            record = {**record, "shard": now}
            with contextlib.suppress(OSError):
                write_json_atomic(entry / SHARD_DONE, record)
        return record

    def fresh(self, shard: Shard) -> CachedShard | None:
        """The entry of ``shard`` when it is up to date (module docstring), else None."""
        entry = self.directory / shard.path.name
        record = self.fresh_record(shard)
        if record is None:
            return None
        if not sum(record["written"].values()):
            return CachedShard(shard, None, record)
        try:
            return CachedShard(shard, open_store(entry / PACKED_DIR), record)
        except ValueError as err:
            log.warning("ignoring unreadable cached store %s: %s", entry / PACKED_DIR, err)
            return None

    def pack(self, shard: Shard) -> dict[str, Any]:
        """Decode ``shard`` into a new entry, published only when complete; returns its record
        (``done.json``). The caller holds the shard's lock.

        Raises:
            ValueError: the shard is corrupt (naming shard and record) or could not be packed.
        """
        entry = self.directory / shard.path.name
        if entry.exists():
            log.info("%s changed since it was packed into %s (or that entry is unreadable or of "
                     "other settings): packing it again", shard.path, entry)
        remove_stale_temporaries(self.directory, entry.name)  # left by a killed run
        fingerprint = file_fingerprint(shard.path)
        with atomic_directory(entry) as tmp:
            report = convert_shard(ShardJob(self.dataset, self.variant, shard, self.cameras,
                                            self.im_size, group_by=None, depth=1, work_dir=tmp))
            if report.error:
                raise ValueError(f"{report.error} {self._context(shard)}")
            record = {**json.loads((tmp / SHARD_DONE).read_text()), "shard": fingerprint,
                      "settings": self.settings}
            write_json_atomic(tmp / SHARD_DONE, record)
        return record

    def claim(self, shard: Shard, wait: bool) -> tuple[dict[str, Any], bool] | None:
        """Under the shard's lock, its entry's record and whether it was packed now (else it was
        fresh); runs in a packing worker. None when another process holds the lock, unless
        ``wait``: then it waits for that process and reuses its entry."""
        with _shard_lock(self.directory / f".{shard.path.name}.lock", wait) as held:
            if not held:
                return None
            cached = self.fresh(shard)
            return (cached.record, False) if cached is not None else (self.pack(shard), True)

    def open_shards(self, shards: list[Shard], progress: bool = True,
                    num_workers: int = 1) -> list[CachedShard]:
        """The entries of ``shards`` in their order, packing those not cached yet in
        ``num_workers`` worker processes (in this process for 1)."""
        done = {shard.index: cached for shard in shards
                if (cached := self.fresh(shard)) is not None}
        pending = [shard for shard in shards if shard.index not in done]
        if not pending:
            return [done[shard.index] for shard in shards]
        self.directory.mkdir(parents=True, exist_ok=True)
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ValueError(f"cache {self.directory} is not writable: set $BRIDGE_TORCH_CACHE "
                             "to a writable directory with room for the packed split")
        log.info("packing %d of %d %s shards of %s into %s (once per shard; later runs reuse "
                 "them)", len(pending), len(shards), shards[0].split, self.dataset.path,
                 self.directory)
        with tqdm(total=sum(s.num_records for s in pending), unit="episode",
                  desc=f"packing {shards[0].split} shards", disable=not progress) as bar:
            # first every shard nobody else is packing, then wait for the others
            busy = self._claim_all(pending, False, num_workers, done, bar)
            for shard in busy:
                log.info("waiting for another process packing %s", shard.path.name)
            self._claim_all(busy, True, num_workers, done, bar)
        return [done[shard.index] for shard in shards]

    def _claim_all(self, shards: list[Shard], wait: bool, num_workers: int,
                   done: dict[int, CachedShard], bar: tqdm) -> list[Shard]:
        """:meth:`claim` each of ``shards`` in worker processes, opening their entries into
        ``done`` as they come; returns the shards other processes hold, in order.

        Raises:
            ValueError: a corrupt shard, as :meth:`pack`; a worker process that died (killed),
                naming the shards it and the workers stopped with it were packing (whose
                temporaries are removed).
        """
        busy, unfinished = [], []
        with results_as_completed(functools.partial(self.claim, wait=wait), shards,
                                  num_workers) as results:
            for shard, future in results:
                try:
                    claimed = future.result()
                except BrokenProcessPool:
                    unfinished.append(shard)
                    continue
                if claimed is None:
                    busy.append(shard)
                else:
                    done[shard.index] = self._opened(shard, *claimed)
                    bar.update(shard.num_records)
        if unfinished:  # every worker has exited by now: what they were writing is stale
            raise self._worker_died(shards, unfinished)
        return sorted(busy, key=lambda shard: shard.index)

    def _worker_died(self, shards: list[Shard], unfinished: list[Shard]) -> ValueError:
        """The error of a packing worker that died, naming the shards whose temporaries it and
        the workers stopped with it left (removed here), else the first one it did not pack."""
        stopped = {TEMP_RE.match(p.name)["name"] for p in remove_stale_temporaries(self.directory)}
        names = [s.path.name for s in shards if s.path.name in stopped] or \
            [min(unfinished, key=lambda s: s.index).path.name]
        them = "them" if len(names) > 1 else "it"
        return ValueError(f"{', '.join(str(self.dataset.path / name) for name in names)}: the "
                          f"worker process packing {them} died (killed, e.g. for lack of memory, "
                          f"or crashed); nothing of {them} is kept {self._context(unfinished[0])}")

    def _opened(self, shard: Shard, record: dict[str, Any], packed: bool) -> CachedShard:
        episodes = sum(record["written"].values())
        if packed:
            log.info("packed %s: %d episodes, %d skipped", shard.path.name, episodes,
                     sum(record["skipped"].values()))
        store = open_store(self.directory / shard.path.name / PACKED_DIR) if episodes else None
        return CachedShard(shard, store, record)

    def _context(self, shard: Shard) -> str:
        """What a packing error adds to its message."""
        return (f"(while packing the {shard.split} split of {self.dataset.path} into "
                f"{self.directory}; shards packed before stay cached)")


def tfds_split(dataset: TfdsDataset, split: str) -> str | None:
    """The TFDS split read as our ``split``: the one of that name, else the first the converter
    maps to it (the Open X-Embodiment copy's ``test`` is its val split); None when none is."""
    names = [name for name in dataset.splits if SPLIT_MAP.get(name) == split]
    return split if split in names else next(iter(names), None)


def _log_summary(split: str, root: Path, cached: list[CachedShard]) -> None:
    skipped, examples = Counter(), {}
    for entry in cached:
        skipped.update(entry.record.get("skipped", {}))
        examples = {**entry.record.get("examples", {}), **examples}
    episodes = sum(entry.store.num_trajectories for entry in cached if entry.store)
    log.info("%s split of %s: %d episodes from %d shards, %d episodes skipped%s", split, root,
             episodes, len(cached), sum(skipped.values()),
             "".join("\n" + line for line in reason_lines(skipped, examples)))


def _split_cache(data_path: Path, include: list[list[str]], exclude: list[str], split: str,
                 camera: str, im_size: int) -> tuple[Path, ShardCache, str | None]:
    """The directory, its cache at these settings and the name of its split read as ``split``
    (None when it has none), after checking the selection and the camera."""
    root = Path(data_path).expanduser().absolute()
    if include != ALL_LOCAL_INCLUDE or exclude:
        raise ValueError(f"data_path {root} is a TFDS directory, trained on as one sub-dataset; "
                         f"bridgedata.include/exclude/tasks select the task directories of "
                         f"converted data (got include={include}, exclude={exclude}): to select "
                         "tasks, convert it with bridge-torch-convert --input_format rlds "
                         "--group_by task")
    dataset = open_tfds(root)
    variant = rlds.detect_variant(dataset)
    cameras = rlds.resolve_cameras(variant, [camera])
    if cameras != (camera,):
        raise ValueError(f"data.load.camera={camera!r}: training names cameras as they are "
                         f"stored; use data.load.camera={cameras[0]}")
    return root, ShardCache(dataset, variant, cameras, im_size), tfds_split(dataset, split)


def open_tfds_split(data_path: Path, include: list[list[str]], exclude: list[str], split: str,
                    *, camera: str, im_size: int, progress: bool = True, num_workers: int = 1
                    ) -> list[list[PackedStore]]:
    """``split`` of the TFDS directory ``data_path`` as one sub-dataset of per-shard stores,
    packing the shards the cache lacks (module docstring); shaped as ``open_sub_datasets``.

    Args:
        include, exclude: must be the default selection (every task): a release is one
            sub-dataset (selecting tasks needs a conversion with ``--group_by task``).
        camera: the store camera training reads (``images0``); the only one packed.
        num_workers: worker processes packing the shards the cache lacks (1: this process).
    Returns:
        ``[stores]`` in shard order; ``[[]]`` when the release has no such split (not train).
    Raises:
        ValueError: another task selection, a camera the release lacks, unreadable metadata, a
            corrupt shard (naming shard and record), a packing worker that died (naming its
            shard), an unwritable cache, no train episodes.
    """
    root, cache, name = _split_cache(data_path, include, exclude, split, camera, im_size)
    splits = cache.dataset.splits
    if name is None:
        if split == "train":
            raise ValueError(f"{root} has no split read as train (it has {list(splits)})")
        log.info("%s has no split read as %s (it has %s)", root, split, list(splits))
        return [[]]
    cached = cache.open_shards(splits[name], progress, num_workers)
    _log_summary(split, root, cached)
    stores = [entry.store for entry in cached if entry.store is not None]
    if split == "train" and not stores:
        raise ValueError(f"{root}: every episode of the {name} split was skipped (see the log)")
    return [stores]


def cached_split_metadata(data_path: Path, include: list[list[str]], exclude: list[str],
                          split: str, *, camera: str, im_size: int) -> list[StoreMeta]:
    """The cached stores of ``split``'s shards by their ``meta.json`` alone (as
    ``split_metadata.split_metadata`` for task directories): nothing is decoded, packed or opened.

    Raises:
        NotPacked: the directory has no such split, or a shard has no up-to-date cache entry at
            these settings (packing it would decode the shard), or every episode was skipped.
        ValueError: as :func:`open_tfds_split` for the selection and camera; a malformed
            ``meta.json``.
    """
    root, cache, name = _split_cache(data_path, include, exclude, split, camera, im_size)
    if name is None:
        raise NotPacked(f"{root} has no split read as {split}")
    found = []
    for shard in cache.dataset.splits[name]:
        record = cache.fresh_record(shard)
        if record is None:
            raise NotPacked(f"{shard.path} is not packed into {cache.directory} (at "
                            f"{im_size}px, camera {camera}) yet")
        if sum(record["written"].values()):
            found.append(read_store_meta(cache.directory / shard.path.name / PACKED_DIR))
    if not found:
        raise NotPacked(f"every episode of the {name} split of {root} was skipped")
    return found
