"""How many threads torch uses on the CPU: a default that does not collapse when cores are busy.

torch starts one intra-op thread per core. When another process keeps a core busy, every
parallel region waits for its descheduled thread, and a step takes many times longer than with
fewer threads (``bench/threads.py`` measures it). The default therefore counts only idle cores:

    threads = max(1, min(cores, round(cores - busy)))

``cores`` are those this process may run on (CPU affinity); ``busy`` is the larger of the
1-minute load average and the cores busy right now (``/proc/stat`` over ``SAMPLE_S``), so a
competing job that has just started counts as much as a long-running one.

``BRIDGE_TORCH_THREADS`` overrides it: ``auto`` (the rule above) or a number. Without it, an
``OMP_NUM_THREADS`` in the environment (``torchrun`` sets 1) is left in charge.
"""

import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
ENV_VAR = "BRIDGE_TORCH_THREADS"
SAMPLE_S = 0.25  # how long the current CPU use is sampled
PROC_STAT = Path("/proc/stat")


def available_cores() -> int:
    """CPUs this process may run on (affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies over all CPUs from /proc/stat, or None where it does not exist."""
    if not PROC_STAT.is_file():
        return None
    values = [int(v) for v in PROC_STAT.read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values[:8])  # idle + iowait; steal and guests excluded


def busy_cores(sample_s: float = SAMPLE_S) -> float:
    """Cores busy with other work: max(1-minute load average, current use over ``sample_s``)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    before = _cpu_times()
    if before is None:
        return load
    time.sleep(sample_s)
    after = _cpu_times()
    idle, total = after[0] - before[0], after[1] - before[1]
    now = (1 - idle / total) * (os.cpu_count() or 1) if total > 0 else 0.0
    return max(load, now)


def auto_threads(cores: int | None = None, busy: float | None = None) -> int:
    """The rule of the module docstring; ``cores``/``busy`` default to this machine's now."""
    cores = available_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores, round(cores - busy)))


def requested_threads() -> int | None:
    """Threads to use per the environment: None leaves torch's own setting alone."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower()
    if value == "auto":
        return None if "OMP_NUM_THREADS" in os.environ else auto_threads()
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"{ENV_VAR}={value!r}: expected 'auto' or a number of threads") from None
    if threads < 1:
        raise ValueError(f"{ENV_VAR}={threads}: expected at least 1 thread")
    return threads


def configure_cpu_threads(device: str | torch.device = "cpu") -> int:
    """Apply the thread default when ``device`` is the CPU (``auto`` = CPU without CUDA).

    Returns:
        The number of intra-op threads torch uses afterwards.
    """
    kind = torch.device(device).type if str(device) != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    threads = requested_threads() if kind == "cpu" else None
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        log.info("CPU threads: %d of %d cores (%s=%s)", threads, available_cores(), ENV_VAR,
                 os.environ.get(ENV_VAR, "auto"))
    return torch.get_num_threads()
