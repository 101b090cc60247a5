"""Every file and directory bridge-torch writes goes through here: temp name, fsync, rename.

One temporary-name scheme, ``.<name>.tmp-<host>-<pid>-<random>``, in the target's directory, so
a reader never sees a half-written file, a crash leaves at most a stray temporary, and
:func:`stale_temporaries` can tell a temporary whose writer died (same host, process gone) from
one that another live process is still writing. Write errors are re-raised as ``OSError`` with
what happened in words: disk full (with the free bytes), permission denied, or another error.
"""

import errno
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")


def temp_path(path: Path) -> Path:
    """A fresh temporary sibling of ``path`` in the one naming scheme."""
    host = socket.gethostname().replace("/", "_") or "host"
    return path.with_name(f".{path.name}.tmp-{host}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def explain_write_error(err: BaseException, path: Path) -> OSError:
    """An ``OSError`` saying why writing ``path`` failed, in words a user can act on."""
    code = getattr(err, "errno", None)
    free = shutil.disk_usage(path.parent).free
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = f"the disk is full or a file-size limit was reached ({free:,} bytes free)"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied (or a read-only file system)"
    elif isinstance(err, FileNotFoundError):
        why = "its temporary file was removed while writing: is another process using it?"
    elif code is None:  # torch's zip writer says only "write failed", without an errno
        why = (f"{type(err).__name__}: {err}; {free:,} bytes free: is the disk full or a "
               "file-size limit reached?")
    else:
        why = f"{type(err).__name__}: {err}"
    return os_error(code, f"cannot write {path}: {why}")


def os_error(code: int | None, message: str) -> OSError:
    """An ``OSError`` carrying ``code`` as its errno, printed as just ``message``."""
    error = OSError(message)
    error.errno = code
    return error


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary sibling, fsync it, rename it to ``path``.

    An interrupt (Ctrl-C) or error removes the temporary and propagates; ``KeyboardInterrupt``
    stays itself (it is not a disk problem), even when a writer wrapped it in its own error;
    other failures become :func:`explain_write_error`.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch's zip writer reports ENOSPC as RuntimeError
        if _interrupted(err):
            raise KeyboardInterrupt(f"interrupted while writing {path}; it was left as it "
                                    "was") from err
        raise explain_write_error(err, path) from err
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _interrupted(err: BaseException) -> bool:
    """Whether ``err`` was caused by Ctrl-C: torch's zip writer turns a ``KeyboardInterrupt``
    raised inside its write callback into a ``RuntimeError`` (which would read as a disk error)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))


def write_json_atomic(path: Path, payload: Any, *, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(payload, indent=indent) + "\n")


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces ``target``.

    Every file in it is fsynced before the swap, and an old ``target`` is removed only once the
    new one is in place; on any error the temporary directory is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    tmp.mkdir()
    try:
        yield tmp
        for path in [*tmp.iterdir(), tmp]:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, target: Path) -> None:
    if target.exists():
        old = temp_path(target)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
    fsync_dir(target.parent)


def _writer_alive(host: str, pid: int) -> bool:
    """Whether the process that owns a temporary may still be writing it."""
    if host != socket.gethostname().replace("/", "_"):
        return True  # another machine's process: we cannot tell, so leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(directory: Path, name: str | None = None) -> list[Path]:
    """Temporaries in ``directory`` (of ``name`` only, if given) whose writer is dead."""
    stale = []
    for path in Path(directory).iterdir():
        match = TEMP_RE.match(path.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if not _writer_alive(match["host"], int(match["pid"])):
            stale.append(path)
    return sorted(stale)


def remove_stale_temporaries(directory: Path, name: str | None = None) -> list[Path]:
    """Delete the temporaries :func:`stale_temporaries` finds; return them."""
    removed = stale_temporaries(directory, name)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return removed


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of this module's temporaries (live or stale)."""
    return TEMP_RE.match(name) is not None


__all__ = [
    "atomic_directory",
    "explain_write_error",
    "fsync_dir",
    "is_temporary",
    "os_error",
    "remove_stale_temporaries",
    "stale_temporaries",
    "temp_path",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
