"""Where every source ends: trajectories per split -> ``<task dir>/<split>/packed`` stores.

A source (a reader of some input format, or a generator of trajectories) yields
``store.Trajectory`` objects; this writes them as the packed stores the trainer's loader opens
(``data/datasets.py``: task directories under ``data_path``, each with a ``train`` and an
optional ``val`` split). Trajectories are consumed lazily, one at a time, so memory stays
bounded by one trajectory whatever the source's size. Each store is written atomically.
"""

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from bridge_torch.data.store import Trajectory, write_store

SPLITS = ("train", "val")
PACKED_DIR = "packed"


def write_splits(task_dir: Path, splits: Mapping[str, Iterable[Trajectory]], *,
                 cameras: Sequence[str] = ("images0",), source: dict | None = None,
                 progress: bool = False) -> dict[str, Path]:
    """Write ``splits`` (``"train"`` required, ``"val"`` optional) under ``task_dir``.

    Args:
        splits: split name -> its trajectories (any iterable: a list or a generator).
        cameras: cameras to store; every trajectory must have them, at one image size.
        source: JSON-able description of the origin, saved in each store's ``meta.json`` (with
            the split added).
    Returns:
        split -> the store directory written.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or "train" not in splits:
        raise ValueError(f"{task_dir}: splits must be 'train' and optionally 'val', got "
                         f"{sorted(splits)}")
    written = {}
    for split in SPLITS:
        if split in splits:
            written[split] = write_store(Path(task_dir) / split / PACKED_DIR, splits[split],
                                         cameras=cameras, progress=progress,
                                         source={**(source or {}), "split": split})
    return written
