"""A split's packed stores known by their ``meta.json`` alone: layout and recorded statistics.

Evaluation opens only the split it evaluates, but checks the checkpoint against the train split's
statistics and layout; both are recorded in each store's ``meta.json``, so reading those small
files replaces memory-mapping, validating (or, for an out.npy, packing) the whole train split.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge_torch.data.datasets import LEGACY_FILE, PACKED_DIR, cache_dir_for, has_split
from bridge_torch.data.store_checks import META_FILE, STATS_KEYS, check_statistics, read_meta


@dataclass(frozen=True)
class StoreMeta:
    """A packed store's ``meta.json`` alone: its layout and recorded statistics, read without
    opening (or checking) its arrays, for code that needs only those of a split it never reads.
    Its attributes are named as ``PackedStore``'s."""

    path: Path  # the store directory, as ``PackedStore.path``
    meta: dict[str, Any]

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.meta["image_size"][0]), int(self.meta["image_size"][1])

    @property
    def action_dim(self) -> int:
        return int(self.meta["action_dim"])

    @property
    def proprio_dim(self) -> int:
        return int(self.meta["proprio_dim"])

    @property
    def stats(self) -> dict[str, Any]:
        return self.meta["stats"]


class NotPacked(LookupError):
    """A split has no packed store whose metadata could be read (says which and why)."""


def packed_store_dir(task_dir: Path, split: str) -> Path | None:
    """The packed store ``datasets.open_split`` reads for ``split`` (``packed/``, or an out.npy's
    fallback cache), found without opening or packing anything; None when there is none."""
    split_dir = Path(task_dir) / split
    legacy_path = split_dir / LEGACY_FILE
    places = [split_dir / PACKED_DIR, *([cache_dir_for(legacy_path)] if legacy_path.is_file()
                                        else [])]
    return next((place for place in places if (place / META_FILE).is_file()), None)


def read_store_meta(store_dir: Path) -> StoreMeta:
    """``meta.json`` of one store, its layout and every statistics entry checked for form."""
    meta = read_meta(store_dir)
    for key in STATS_KEYS:
        dim = meta["proprio_dim"] if key == "proprio" else meta["action_dim"]
        check_statistics(meta["stats"][key], dim, f"{store_dir / META_FILE}: stats.{key}")
    return StoreMeta(store_dir, meta)


def split_metadata(groups: list[list[Path]], split: str) -> list[list[StoreMeta]]:
    """The metadata of ``split``'s packed store in every task directory, grouped like ``groups``.

    Nothing is memory-mapped, packed or unpickled: the statistics are those recorded when the
    store was written (``PackedStore`` checks them against the arrays only when it opens them).

    Raises:
        NotPacked: a task directory lacks ``split``, or holds only an out.npy that was never
            packed (reading it would mean unpickling it).
        ValueError: a ``meta.json`` is malformed (names the file and key).
    """
    found = []
    for tasks in groups:
        group = []
        for task in tasks:
            store_dir = packed_store_dir(task, split)
            if store_dir is None:
                raise NotPacked(f"{task / split / LEGACY_FILE} has no packed store (reading it "
                                "would unpickle it)" if has_split(task, split) else
                                f"task {task} has no {split} split")
            group.append(read_store_meta(store_dir))
        found.append(group)
    return found
