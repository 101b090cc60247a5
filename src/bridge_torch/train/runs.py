"""The run directory: its file names, its id, and its checkpoints (listing, latest, pruning).

A run lives in ``<save_dir>/bridgedata_torch/<name>_<timestamp>_<suffix>/`` and holds::

    config.yaml, config.json   the resolved config (written at start, rewritten on resume)
    stats.json                 normalisation statistics of the train split
    model_summary.json         parameter counts
    metrics.jsonl              one JSON line per log event
    ckpt_<step>.pt             checkpoints (``train/checkpoint.py``)

Every module that reads or writes one of these takes the name from here.
"""

import datetime
import re
import secrets
from pathlib import Path

from bridge_torch.atomic import TEMP_RE, stale_temporaries

PROJECT_DIR = "bridgedata_torch"  # <save_dir>/bridgedata_torch/<run id>/ (earlier port's layout)
CONFIG_YAML = "config.yaml"
CONFIG_JSON = "config.json"
STATS_FILE = "stats.json"
SUMMARY_FILE = "model_summary.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


def make_run_id(name: str) -> str:
    """``<name>_<YYYYmmdd_HHMMSS_micro>_<4 hex>``: parallel launches never collide (the earlier
    port's ids had one-second resolution and could)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S_%f")
    return f"{name}_{stamp}_{secrets.token_hex(2)}"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt_{step}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest (smallest step) first."""
    found = []
    for path in Path(run_dir).iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the largest step, or None when the run has none yet."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def remove_partial(run_dir: Path) -> list[Path]:
    """Delete temporaries of checkpoint writes whose writer is dead; return them.

    Why: a killed :func:`save` leaves a temporary as large as a checkpoint; no loader ever picks
    it, but nobody else would ever delete it either. A live writer's temporary is left alone.
    """
    stale = stale_temporaries(run_dir)
    removed = [p for p in stale if CHECKPOINT_RE.match(TEMP_RE.match(p.name)["name"])]
    for path in removed:
        path.unlink(missing_ok=True)  # another rank may have removed it already
    return removed


def prune(run_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints (None keeps all); return the removed."""
    if keep_last is None:
        return []
    checkpoints = list_checkpoints(run_dir)
    removed = checkpoints[: max(len(checkpoints) - keep_last, 0)]
    for path in removed:
        path.unlink()
    return removed


def resolve_checkpoint(run_dir: Path, checkpoint: str | Path | int | None) -> Path:
    """None -> the latest checkpoint; an int -> ``ckpt_<int>.pt``; a path -> that file."""
    if checkpoint is None:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"no ckpt_<step>.pt in run directory {run_dir}")
        return path
    if isinstance(checkpoint, int):
        return checkpoint_path(run_dir, checkpoint)
    path = Path(checkpoint)
    return path if path.is_absolute() else Path(run_dir) / path
