"""SIGTERM ends a training run the way Ctrl-C does.

Schedulers (SLURM preemption, Kubernetes, ``torchrun`` stopping the other ranks after one failed)
and ``kill`` send SIGTERM, whose default action ends the process at once: ``status.json`` would
keep saying ``running``, the run's lock file would stay taken until a later run proves its
process dead, and a checkpoint being written would leave its temporary behind. Raising
:class:`Terminated` instead unwinds the same ``finally``/``__exit__`` paths as Ctrl-C: the status
becomes ``interrupted``, the lock is released and partial files are removed. Training resumes from
the newest checkpoint (``resume=<run dir>``).
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process killed by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt so that ``except Exception`` blocks let it through."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (main thread only: Python delivers
    signals there, and a handler cannot be installed from another thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
