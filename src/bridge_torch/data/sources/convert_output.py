"""The converters' output directories: finished or not, stale outputs, a usable output path.

Shared by the raw converter (``convert.py``) and the RLDS one (``rlds_convert.py``): a
conversion is finished when its ``conversion.json`` exists (written last), so an interrupted
run is simply run again.
"""

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from bridge_torch.atomic import stale_temporaries
from bridge_torch.data.sources.split_writer import PACKED_DIR, SPLITS

log = logging.getLogger(__name__)
OUT_FILE, DONE_MARKER = "out.npy", "conversion.json"
LOG_FORMAT = "%(levelname)s %(processName)s %(name)s: %(message)s"  # converters' workers


def check_output_path(path: Path) -> None:
    """``--output_path`` must be a writable directory or a path one can create: one clear error
    up front, instead of a traceback per collection."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        what = "exists and is not a directory" if existing == path else \
            f"cannot be created: {existing} is not a directory"
        raise ValueError(f"--output_path {path} {what}; expected a directory (or a path to "
                         "create one at)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output_path {path}: {existing} is not writable")


def remove_stale(out_dir: Path, written: dict[str, set[str]]) -> None:
    """Remove our outputs this run did not write (old splits/formats, temporaries left by dead
    writers), empty dirs."""
    for split in SPLITS:
        split_dir = out_dir / split
        if not split_dir.is_dir():
            continue
        stale = set(stale_temporaries(split_dir))
        for entry in split_dir.iterdir():
            ours = entry.name in (OUT_FILE, PACKED_DIR) or entry in stale
            if ours and entry.name not in written.get(split, set()):
                log.info("removing stale %s", entry)
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def prune_empty(out_dir: Path) -> None:
    """Remove empty split directories and an empty collection output directory."""
    for directory in [out_dir / split for split in SPLITS] + [out_dir]:
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def is_finished(out_dir: Path, options: Any) -> bool:
    """Whether to keep an earlier conversion (its marker exists and no --overwrite)."""
    marker = out_dir / DONE_MARKER
    if options.overwrite or not marker.is_file():
        if marker.is_file():
            marker.unlink()  # an interrupted --overwrite must not look finished
        elif out_dir.exists():
            log.warning("%s has no %s: an earlier run did not finish; converting again",
                        out_dir, DONE_MARKER)
        return False
    try:
        settings = json.loads(marker.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("unreadable %s (%s): converting again", marker, err)
        return False
    differs = {k: (settings.get(k), v) for k, v in options.settings().items()
               if settings.get(k) != v}
    if differs:
        log.warning("%s was converted with other settings (old, new): %s; keeping it (pass "
                    "--overwrite to convert again)", out_dir, differs)
    else:
        log.info("%s is already converted; skipping (pass --overwrite to redo)", out_dir)
    return True


def reason_lines(counts: Counter, examples: dict[str, str]) -> list[str]:
    """Summary lines of skips, most frequent reason first, each with one example."""
    return [f"  {n:6d}  {reason}  (e.g. {examples[reason]})" for reason, n in
            sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
