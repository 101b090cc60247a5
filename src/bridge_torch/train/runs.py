"""The run directory: its file names, its id, and its checkpoints (listing, latest, pruning).

A run lives in ``<save_dir>/bridgedata_torch/<name>_<timestamp>_<suffix>/`` and holds::

    config.yaml, config.json   the resolved config (written at start, rewritten on resume)
    stats.json                 normalisation statistics of the train split
    model_summary.json         parameter counts
    metrics.jsonl              one JSON line per log event
    ckpt_<step>.pt             checkpoints (``train/checkpoint.py``)
    status.json                running / finished / failed / interrupted, last step, time
    lock                       held (``flock``) by the one process that trains the run

Every module that reads or writes one of these takes the name from here.
"""

import datetime
import fcntl
import json
import logging
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

from bridge_torch.atomic import TEMP_RE, stale_temporaries, write_json_atomic
from bridge_torch.train import checkpoint

log = logging.getLogger(__name__)

PROJECT_DIR = "bridgedata_torch"  # <save_dir>/bridgedata_torch/<run id>/ (earlier port's layout)
CONFIG_YAML = "config.yaml"
CONFIG_JSON = "config.json"
STATS_FILE = "stats.json"
SUMMARY_FILE = "model_summary.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
LOCK_FILE = "lock"
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


def load_latest(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint that loads (``checkpoint.load``: complete, digests intact).

    Why: power loss or a full disk can leave the newest file truncated or corrupt; one bad file
    must not make the run's earlier checkpoints useless. Each skipped file is named in a warning.

    Raises:
        FileNotFoundError: the run has no checkpoint.
        ValueError: none of its checkpoints loads (each one's reason is listed).
    """
    candidates = list_checkpoints(run_dir)[::-1]
    if not candidates:
        raise FileNotFoundError(f"no ckpt_<step>.pt in run directory {run_dir}")
    reasons = []
    for path in candidates:
        try:
            state = checkpoint.load(path)
        except ValueError as err:
            reasons.append(str(err))
            log.warning("%s; falling back to the previous checkpoint", err)
            continue
        return path, state
    raise ValueError(f"no checkpoint of {run_dir} can be loaded: " + "; ".join(reasons))


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}


class RunLockedError(RuntimeError):
    """Another live process owns the run directory."""


class RunLock:
    """Exclusive ownership of a run directory: an ``flock`` on its ``lock`` file.

    Why: two processes training one run (two ``resume=`` at once) overwrite each other's
    checkpoints and metrics. The kernel drops an ``flock`` when its holder dies, so a lock left by
    a killed process never blocks a resume; the file also records the holder (pid, host, since)
    for the error message, and is emptied on a clean release, so a non-empty file found on
    acquiring was left by a process that died.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` naming its holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by {_describe(holder)}: two "
                "processes training one run would overwrite each other's checkpoints. Wait for "
                "it to end (or stop it), or start a new run"
            ) from None
        left = _read_holder(fd)
        if left:
            log.warning("%s was left by %s, which is gone; taking the run over", self.path,
                        _describe(left))
        _rewrite(fd, json.dumps(_holder()).encode())
        self._fd = fd

    def release(self) -> None:
        """Empty the file (a clean end) and drop the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            _rewrite(fd, b"")
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    raw = os.pread(fd, 4096, 0)
    try:
        holder = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {"unreadable": raw[:80].decode(errors="replace")}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "another process (its pid is not recorded in the lock file)"
    return (f"process {holder['pid']} on host {holder.get('host', '?')} "
            f"(holding it since {holder.get('since', '?')})")


def _rewrite(fd: int, data: bytes) -> None:
    """Replace the file's content in place: the lock belongs to this inode, so no rename."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def write_status(run_dir: Path, state: str, step: int, checkpoint_step: int | None,
                 error: BaseException | None = None) -> None:
    """``status.json``: what the run is doing, its last completed update and checkpoint, when.

    ``state`` is running, finished, failed (with the error's first line) or interrupted.
    """
    status: dict[str, Any] = {"state": state, "step": step, "checkpoint": checkpoint_step,
                              "time": _now(), "pid": os.getpid(), "host": socket.gethostname()}
    if error is not None:
        first = (str(error).strip().splitlines() or [""])[0]
        status["error"] = f"{type(error).__name__}: {first}" if first else type(error).__name__
    write_json_atomic(Path(run_dir) / STATUS_FILE, status)



class StatusRecorder:
    """Keeps ``status.json`` current on rank 0: ``running`` on entry and at every :meth:`update`
    (each checkpoint), then ``finished``, ``interrupted`` (Ctrl-C) or ``failed`` on exit.

    Why: a run directory alone does not say whether its process is still training, ended, or
    died and why; the file answers that without reading logs.
    """

    def __init__(self, run_dir: Path, *, enabled: bool) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.step = 0  # updates completed
        self.checkpoint: int | None = None  # step of the newest checkpoint

    def update(self, state: str = "running", error: BaseException | None = None) -> None:
        if self.enabled:
            write_status(self.run_dir, state, self.step, self.checkpoint, error)

    def __enter__(self) -> "StatusRecorder":
        self.update()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        if kind is None:
            self.update("finished")
            return
        outcome = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
        try:
            self.update(outcome, error)
        except OSError as err:  # e.g. the disk filled up: the original error matters more
            log.warning("could not record %s in %s: %s", outcome, STATUS_FILE, err)
