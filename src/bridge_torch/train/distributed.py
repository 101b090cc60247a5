"""Distributed facts in one place: who am I (rank), how many are we, which device is mine.

`torchrun` (one or many nodes) sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a plain
``python -m bridge_torch.train`` sets none of them and runs as a world of one. Nothing here
wraps a model: the trainer wraps it in ``DistributedDataParallel`` itself, in a visible order.
Every collective below is a no-op in a world of one, so the loop has no single-process branch.
"""

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job, read once from the torchrun environment."""

    rank: int = 0  # global rank, 0..world_size-1
    local_rank: int = 0  # rank on this node: picks the CUDA device
    world_size: int = 1  # number of processes in the job

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes run files and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def read_env() -> DistInfo:
    """Read RANK / LOCAL_RANK / WORLD_SIZE (as set by torchrun); absent -> a world of one."""

    def read(key: str, default: int) -> int:
        value = os.environ.get(key, "")
        try:
            return int(value) if value else default
        except ValueError:
            raise ValueError(f"environment variable {key}={value!r} is not an integer") from None

    info = DistInfo(read("RANK", 0), read("LOCAL_RANK", 0), read("WORLD_SIZE", 1))
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}")
    return info


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    """Turn the config's device ("auto", "cpu", "cuda", "cuda:1") into this rank's device.

    "auto" means CUDA when available, else CPU. Under torchrun each rank takes the CUDA device
    of its LOCAL_RANK, so one node's processes never share a GPU by accident.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={spec!r} was asked for but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", info.local_rank if info.is_distributed else 0)
        torch.cuda.set_device(device)
    return device


def init_process_group(info: DistInfo, device: torch.device, timeout_s: float) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU); nothing to do in a world of one."""
    if not info.is_distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        rank=info.rank,
        world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )


# What gloo/NCCL/the store say when another rank died or hangs (gloo: "Connection closed by peer")
PEER_LOST_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe",
                     "timed out", "timeout")


class PeerFailure(RuntimeError):
    """This rank stopped because another rank of the job died or stopped answering."""


def peer_failure(err: BaseException, info: DistInfo, step: int) -> PeerFailure | None:
    """``err`` explained as a lost peer, or None when it is not one (or there are no peers).

    Why: a dead rank surfaces on the others as a backend error from deep inside a collective
    (a gloo socket error, an NCCL watchdog timeout); this names the rank, the step and the
    likely cause, so the job's last error line says what happened.
    """
    if not info.is_distributed:
        return None
    text = str(err).lower()
    if not isinstance(err, dist.DistError) and not any(m in text for m in PEER_LOST_MARKERS):
        return None
    return PeerFailure(
        f"rank {info.rank} of {info.world_size} lost contact with another rank after step {step}:"
        f" a rank probably died (check its log for the first error) or hangs beyond ddp.timeout_s"
        f" ({type(err).__name__}: {(str(err).splitlines() or [''])[0]})"
    )


def destroy_process_group() -> None:
    """Tear the process group down while the interpreter is fully alive.

    Garbage is collected first: a DDP wrapper caught in a reference cycle would otherwise be
    freed during interpreter shutdown, where destroying gloo's pending work objects can abort the
    process ("terminate called without an active exception") after a successful run.
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. until rank 0 has finished writing a checkpoint)."""
    if info.is_distributed:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Return rank 0's ``obj`` on every rank (e.g. the run directory rank 0 chose)."""
    if not info.is_distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Return every rank's ``obj``, in rank order, on every rank (per-rank RNG/sampler states)."""
    if not info.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (log and eval steps only)."""
    if info.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Maximum of ``tensor`` over ranks, in place (where the loop synchronises anyway)."""
    if info.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor
