"""Independent jobs in worker processes, one pattern for the converters (collections, shards)
and the cache of a TFDS directory trained from (its shards).

Workers are spawned: they inherit nothing (no fork-only globals, no forked threads), so they
import only the modules their job needs. An executor, unlike ``multiprocessing.Pool``, reports a
killed worker (``BrokenProcessPool`` from the results of the jobs it did not finish) instead of
hanging. Each worker logs to stderr in the converters' format (``LOG_FORMAT``, which names the
worker) at the levels of its parent, the package's logger included (the ranks of a DDP run but
the first one log only warnings).
"""

import contextlib
import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import TypeVar

from bridge_torch.data.sources.convert_output import LOG_FORMAT

PACKAGE_LOGGER = "bridge_torch"
Job = TypeVar("Job")
Result = TypeVar("Result")


def _configure_logging(root_level: int, package_level: int) -> None:
    """The initializer of every worker (it starts with logging unconfigured)."""
    logging.basicConfig(format=LOG_FORMAT, level=root_level)
    logging.getLogger(PACKAGE_LOGGER).setLevel(package_level)


def _done_here(function: Callable[[Job], Result], job: Job) -> Future:
    future: Future = Future()
    future.set_result(function(job))
    return future


@contextlib.contextmanager
def results_as_completed(function: Callable[[Job], Result], jobs: Sequence[Job],
                         num_workers: int) -> Iterator[Iterator[tuple[Job, Future]]]:
    """``(job, future of function(job))`` for every job, as each finishes.

    The jobs run in ``min(num_workers, len(jobs))`` spawned processes (``function`` and the jobs
    must pickle), or one after the other in this process when either is <= 1; then what
    ``function`` raises propagates at once, and each future is done when it is yielded. Leaving
    the block early (an error) cancels the jobs not started and waits for the running ones, so
    every worker has exited when the block is left.
    """
    if num_workers <= 1 or len(jobs) <= 1:
        yield ((job, _done_here(function, job)) for job in jobs)
        return
    levels = (logging.getLogger().getEffectiveLevel(),
              logging.getLogger(PACKAGE_LOGGER).getEffectiveLevel())
    pool = ProcessPoolExecutor(min(num_workers, len(jobs)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_configure_logging, initargs=levels)
    try:
        futures = {pool.submit(function, job): job for job in jobs}
        yield ((futures[future], future) for future in as_completed(futures))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
