"""Distributed facts from the environment, collectives, and DDP gradient sync through train_step.

The 2-process tests use real gloo process groups (torch.multiprocessing spawn) on CPU.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bridge_torch.train import distributed
from bridge_torch.train.build import wrap_model
from bridge_torch.train.config import TrainConfig
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.loop import train_step
from bridge_torch.train.state import TrainState, param_checksum
from helpers import free_port


def test_read_env_defaults_to_a_world_of_one(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    info = distributed.read_env()
    assert info == DistInfo(0, 0, 1)
    assert info.is_main and not info.is_distributed


def test_read_env_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    info = distributed.read_env()
    assert (info.rank, info.local_rank, info.world_size) == (5, 1, 8)
    assert not info.is_main and info.is_distributed
    with pytest.raises(AttributeError):
        info.rank = 0  # frozen


@pytest.mark.parametrize("env, message", [({"RANK": "x"}, "RANK"), ({"RANK": "3"}, "outside")])
def test_read_env_rejects_bad_values(monkeypatch, env, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        distributed.read_env()


def test_resolve_device():
    info = DistInfo()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.resolve_device("auto", info).type == expected
    assert distributed.resolve_device("cpu", info) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            distributed.resolve_device("cuda", info)


def test_collectives_are_identities_in_a_world_of_one():
    info = DistInfo()
    assert distributed.broadcast_object({"a": 1}, info) == {"a": 1}
    assert distributed.gather_objects(3, info) == [3]
    tensor = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(tensor, info) is tensor
    distributed.barrier(info)  # no process group: returns at once


def test_peer_failure_names_a_lost_rank_and_ignores_other_errors():
    two = DistInfo(1, 1, 2)
    gloo = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1234. Check logs")
    failure = distributed.peer_failure(gloo, two, step=7)
    assert isinstance(failure, distributed.PeerFailure) and str(failure) == (
        "rank 1 of 2 lost contact with another rank after step 7: a rank probably died (check "
        "its log for the first error) or hangs beyond ddp.timeout_s (RuntimeError: [pair.cc:553] "
        "Connection closed by peer [127.0.0.1]:1234. Check logs)")
    assert distributed.peer_failure(dist.DistBackendError("NCCL watchdog"), two, 1) is not None
    assert distributed.peer_failure(RuntimeError("CUDA out of memory"), two, 1) is None
    assert distributed.peer_failure(gloo, DistInfo(), 1) is None  # no peers to lose


class TinyAgent(nn.Module):
    """The agent contract in miniature: forward == loss -> (loss, metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = (self.net(batch["x"]) - batch["actions"]).pow(2).mean()
        return loss, {"mse": loss.detach()}


def _train_three_steps(info: DistInfo, bypass_ddp: bool) -> float:
    """Three updates on rank-specific data; returns this rank's parameter checksum."""
    torch.manual_seed(0)  # same initial weights everywhere
    agent = TinyAgent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = TrainState(agent, agent, None, optimizer, scheduler, scaler, None, None)
    # bypass_ddp reproduces the earlier port's mistake: calling the raw module skips the all-reduce
    if not bypass_ddp:
        state.model = wrap_model(agent, TrainConfig(data_path="unused"), info, torch.device("cpu"))
    generator = torch.Generator().manual_seed(100 + info.rank)  # every rank sees different data
    for _ in range(3):
        batch = {"x": torch.randn(8, 4, generator=generator),
                 "actions": torch.randn(8, 2, generator=generator)}
        train_step(state, batch, amp_dtype=None, max_grad_norm=1.0)
    return param_checksum(agent)


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = DistInfo(rank, rank, world_size)
    distributed.init_process_group(info, torch.device("cpu"), timeout_s=60)
    synced = distributed.gather_objects(_train_three_steps(info, bypass_ddp=False), info)
    unsynced = distributed.gather_objects(_train_three_steps(info, bypass_ddp=True), info)
    shared = distributed.broadcast_object(f"from rank {rank}", info)
    total = distributed.all_reduce_sum(torch.tensor([rank + 1.0]), info)
    if rank == 0:
        torch.save({"synced": synced, "unsynced": unsynced, "shared": shared,
                    "total": float(total)}, out)
    distributed.barrier(info)
    distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_ddp_keeps_replicas_identical_and_bypass_does_not(tmp_path):
    out = str(tmp_path / "result.pt")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    assert result["synced"][0] == result["synced"][1]  # gradients were all-reduced
    assert result["unsynced"][0] != result["unsynced"][1]  # different data -> different replicas
    assert result["shared"] == "from rank 0"
    assert result["total"] == 3.0
    assert not dist.is_initialized()
