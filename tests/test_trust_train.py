"""Trust at every boundary of a training run: non-finite training, one owner per run directory,
interrupts, and a run directory that says its state.

Each test is a probe that the code before these guards failed: a NaN loss trained on and was
checkpointed; a second resume deleted the first's live temporary checkpoint; Ctrl-C during a
checkpoint write was reported as a full disk; nothing said whether a run was still going.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from bridge_torch.batch import ACTIONS
from bridge_torch.data.sampler import TransitionSampler
from bridge_torch.train import checkpoint, distributed, runs
from bridge_torch.train.build import wrap_model
from bridge_torch.train.config import TrainConfig, compose_config
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.loop import train, train_step
from bridge_torch.train.metrics_log import read_metrics
from bridge_torch.train.nonfinite import NonFiniteGuard, NonFiniteTraining
from bridge_torch.train.state import TrainState
from helpers import dead_writer_temporary, free_port
from trust_helpers import TINY, copy_run, finished_run, only_run, run, status


@pytest.fixture(scope="module")
def finished(converted_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-update run (copy it before changing it)."""
    return finished_run(converted_tree, tmp_path_factory.mktemp("finished"))


@pytest.fixture
def nan_actions_at(monkeypatch: pytest.MonkeyPatch):
    """``nan_actions_at({2, 3})``: the sampler's 2nd and 3rd batches carry NaN actions."""

    def install(calls: set[int]) -> None:
        real, count = TransitionSampler.sample, [0]

        def sample(self, batch_size):
            batch = real(self, batch_size)
            count[0] += 1
            if count[0] in calls:
                batch[ACTIONS] = batch[ACTIONS] * float("nan")
            return batch

        monkeypatch.setattr(TransitionSampler, "sample", sample)

    return install


# ---- 1. non-finite training -----------------------------------------------------------------

def test_nan_loss_stops_the_run_naming_step_and_terms_before_any_checkpoint(
        converted_tree, tmp_path, nan_actions_at):
    nan_actions_at({3})
    with pytest.raises(NonFiniteTraining) as info:
        run(converted_tree, tmp_path, "num_steps=5", "save_interval=1")
    message = str(info.value)
    assert message.startswith("step 3: the loss or a gradient is NaN or infinite (")
    assert "actor_loss=nan" in message and "loss=nan" in message and "grad_norm=nan" in message
    assert "skip_nonfinite_updates=N" in message
    run_dir = only_run(tmp_path)
    assert [p.name for p in runs.list_checkpoints(run_dir)] == ["ckpt_1.pt", "ckpt_2.pt"]
    assert status(run_dir)["state"] == "failed"
    assert status(run_dir)["error"].startswith("NonFiniteTraining: step 3: the loss")
    assert status(run_dir)["step"] == 3 and status(run_dir)["checkpoint"] == 2


def test_skip_nonfinite_updates_skips_without_applying_then_stops_beyond_the_budget(
        converted_tree, tmp_path, nan_actions_at, caplog):
    nan_actions_at({2, 4})
    with caplog.at_level(logging.WARNING, logger="bridge_torch"):
        run_dir = run(converted_tree, tmp_path / "ok", "num_steps=3", "save_interval=1",
                      "skip_nonfinite_updates=1")
    assert "step 2: 1 non-finite update(s) skipped so far (skip_nonfinite_updates=1)" \
        in caplog.text
    first, second, third = (checkpoint.load(runs.checkpoint_path(run_dir, s)) for s in (1, 2, 3))
    for name, tensor in first["model"].items():  # the NaN update was not applied
        assert torch.equal(second["model"][name], tensor), name
    assert any(not torch.equal(third["model"][n], t) for n, t in second["model"].items())
    assert [s["step"].item() for s in second["optimizer"]["state"].values()][:1] == [1.0]
    assert (second["nonfinite_skipped"], third["nonfinite_skipped"]) == (1, 1)
    assert status(run_dir)["state"] == "finished"
    with pytest.raises(NonFiniteTraining, match=r"^step 4: .*the 1 non-finite updates "
                                                r"skip_nonfinite_updates allows were already"):
        train(compose_config([f"resume={run_dir}", "num_steps=6"]))  # the budget is the run's
    assert runs.latest_checkpoint(run_dir).name == "ckpt_3.pt"


class Quadratic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = (self.net(batch["x"]) - batch[ACTIONS]).pow(2).mean()
        return loss, {"mse": loss.detach()}


def quadratic_state(fused: bool, budget: int = 0) -> TrainState:
    torch.manual_seed(0)
    agent = Quadratic()
    optimizer = torch.optim.Adam(agent.parameters(), lr=0.1, fused=fused)
    return TrainState(agent, agent, None, optimizer,
                      torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                      torch.amp.GradScaler("cpu", enabled=False), None, None,
                      NonFiniteGuard(budget, torch.device("cpu")))


def batch_of(value: float) -> dict[str, torch.Tensor]:
    return {"x": torch.ones(4, 3), ACTIONS: torch.full((4, 2), value)}


@pytest.mark.parametrize("fused", [False, True])
def test_a_nonfinite_update_is_masked_by_the_optimizer_step(fused, monkeypatch):
    """fused=True is the CUDA path (the verdict goes to the optimizer's found_inf input); the
    step must not read a device value on the host (patched to fail here)."""
    state = quadratic_state(fused)
    train_step(state, batch_of(1.0), None, None)
    before = {k: v.clone() for k, v in state.agent.state_dict().items()}
    if fused:
        def host_read(*args):
            raise AssertionError("host read of a device value inside train_step")

        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, host_read)
    train_step(state, batch_of(float("inf")), None, None)
    monkeypatch.undo()
    assert all(torch.equal(v, before[k]) for k, v in state.agent.state_dict().items())
    assert [float(s["step"]) for s in state.optimizer.state.values()] == [1.0, 1.0]
    with pytest.raises(NonFiniteTraining, match=r"^step 2: .*loss=(nan|inf).*mse="):
        state.guard.check(DistInfo())


def _skip_on_every_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = DistInfo(rank, rank, 2)
    distributed.init_process_group(info, torch.device("cpu"), timeout_s=60)
    state = quadratic_state(fused=False, budget=1)
    state.model = wrap_model(state.agent, TrainConfig(data_path="unused"), info,
                             torch.device("cpu"))
    train_step(state, batch_of(float("nan") if rank == 1 else 1.0), None, None)  # rank 1 only
    weights = [p.detach().clone() for p in state.agent.parameters()]
    skipped = state.guard.check(info)
    gathered = distributed.gather_objects((weights, skipped), info)
    if rank == 0:
        torch.save(gathered, out)
    state.model = state.agent
    distributed.destroy_process_group()


@pytest.mark.slow
def test_a_nonfinite_loss_on_one_rank_skips_the_update_on_every_rank(tmp_path):
    out = str(tmp_path / "result.pt")
    torch.manual_seed(0)
    initial = [p.detach().clone() for p in Quadratic().parameters()]
    mp.spawn(_skip_on_every_rank, args=(free_port(), out), nprocs=2, join=True)
    (weights0, skipped0), (weights1, skipped1) = torch.load(out, weights_only=True)
    for w0, w1, w in zip(weights0, weights1, initial, strict=True):
        assert torch.equal(w0, w) and torch.equal(w1, w)  # nobody applied it: replicas agree
    assert (skipped0, skipped1) == (1, 1)


def test_checkpoint_save_refuses_nonfinite_weights(tmp_path):
    state = {"step": 1, "config": {}, "stats": {}, "agent_shapes": {},
             "model": {"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")])}, "ema": None}
    path = runs.checkpoint_path(tmp_path, 1)
    with pytest.raises(ValueError, match=rf"refusing to write checkpoint {path}: the model "
                                         r"weights b hold NaN or inf"):
        checkpoint.save(path, state)
    state.update(model={"a": torch.ones(2)}, ema={"a": torch.tensor([float("inf"), 0.0])})
    with pytest.raises(ValueError, match=r"the ema weights a hold NaN or inf"):
        checkpoint.save(path, state)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=inf", "optimizer.lr=inf"),
    ("ddp.timeout_s=nan", "ddp.timeout_s=nan"),
    ("amp.init_scale=inf", "amp.init_scale=inf"),
    ("optimizer.max_grad_norm=inf", "optimizer.max_grad_norm=inf"),
    ("model.temperature=inf", "model.temperature=inf"),
    ("data.augment.brightness=inf", "data.augment.brightness=inf"),
])
def test_config_rejects_nonfinite_numbers_naming_the_key(override, key):
    with pytest.raises(ValueError, match=rf"^{key}: settings must be finite numbers"):
        compose_config(["data_path=/d", override])


# ---- 2. one process per run directory -------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from bridge_torch.train import runs
    runs.RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(300)
""")


def test_a_second_process_is_refused_naming_the_holder_and_its_temporary_survives(
        finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        live = run_dir / f".ckpt_3.pt.tmp-{socket.gethostname()}-{holder.pid}-beef"
        live.write_bytes(b"PK\x03\x04 being written")
        before = status(run_dir)
        with pytest.raises(runs.RunLockedError) as info:
            train(compose_config([f"resume={run_dir}", "num_steps=3"]))
        assert str(info.value).startswith(
            f"run directory {run_dir} is in use by process {holder.pid} on host "
            f"{socket.gethostname()} (holding it since ")
        assert live.exists() and status(run_dir) == before
    finally:
        holder.kill()
        holder.wait()
    assert runs.remove_partial(run_dir) == [live]  # its writer is dead now


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_log_line(finished, tmp_path,
                                                                     caplog):
    run_dir = copy_run(finished, tmp_path)
    left = {"pid": 999999999, "host": socket.gethostname(), "since": "2024-01-01T00:00:00"}
    (run_dir / runs.LOCK_FILE).write_text(json.dumps(left))
    with caplog.at_level(logging.WARNING, logger="bridge_torch"):
        train(compose_config([f"resume={run_dir}", "num_steps=3"]))
    assert (f"{run_dir / runs.LOCK_FILE} was left by process 999999999 on host "
            f"{socket.gethostname()} (holding it since 2024-01-01T00:00:00), which is gone; "
            "taking the run over") in caplog.text
    assert (run_dir / runs.LOCK_FILE).read_text() == ""  # released cleanly at the end
    assert status(run_dir)["state"] == "finished" and status(run_dir)["step"] == 3


def test_cleanup_removes_only_temporaries_whose_writer_is_dead(tmp_path):
    live = tmp_path / f".ckpt_4.pt.tmp-{socket.gethostname()}-{os.getpid()}-abcd"
    dead = tmp_path / dead_writer_temporary("ckpt_4.pt")
    for path in (live, dead):
        path.write_bytes(b"partial")
    assert runs.remove_partial(tmp_path) == [dead]
    assert live.exists() and not dead.exists()


def test_ctrl_c_during_a_checkpoint_write_is_an_interrupt_not_a_disk_error(tmp_path,
                                                                          monkeypatch):
    real_save = torch.save

    class CtrlCOnThirdWrite:  # as SIGINT does: KeyboardInterrupt inside torch's write callback
        def __init__(self, handle) -> None:
            self.handle, self.calls = handle, 0

        def write(self, data) -> int:
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return self.handle.write(data)

    monkeypatch.setattr(torch, "save",
                        lambda obj, handle: real_save(obj, CtrlCOnThirdWrite(handle)))
    path = runs.checkpoint_path(tmp_path, 1)
    with pytest.raises(KeyboardInterrupt, match=f"interrupted while writing {path}") as info:
        checkpoint.save(path, {"step": 1, "config": {}, "stats": {}, "agent_shapes": {},
                               "model": {"w": torch.ones(100_000)}, "ema": None})
    assert "disk" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_training_marks_the_run_interrupted_and_releases_it(
        converted_tree, tmp_path, monkeypatch):
    real_step, calls = train_step, []

    def interrupted_at_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr("bridge_torch.train.loop.train_step", interrupted_at_3)
    with pytest.raises(KeyboardInterrupt):
        run(converted_tree, tmp_path, "num_steps=5", "save_interval=1")
    run_dir = only_run(tmp_path)
    assert {k: status(run_dir)[k] for k in ("state", "step", "checkpoint")} == {
        "state": "interrupted", "step": 2, "checkpoint": 2}
    assert (run_dir / runs.LOCK_FILE).read_text() == ""


def test_sigterm_during_training_unwinds_like_ctrl_c_and_exits_143(converted_tree, tmp_path):
    """A scheduler's SIGTERM: the status says interrupted at the last update, the lock is free,
    no temporary is left, one error line names the way back (resume), exit status 128 + 15."""
    trainer = subprocess.Popen(
        [sys.executable, "-m", "bridge_torch.train", f"data_path={converted_tree}",
         f"save_dir={tmp_path}", *TINY, "num_steps=100000", "save_interval=2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(tmp_path.glob("*/*/ckpt_2.pt")):
            assert trainer.poll() is None, trainer.communicate()[1]
            time.sleep(0.2)
        trainer.send_signal(signal.SIGTERM)
        _, stderr = trainer.communicate(timeout=120)
    finally:
        trainer.kill()
    assert trainer.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == (
        "bridge-torch-train: error: stopped by SIGTERM; the run can continue with "
        "resume=<run dir>")
    run_dir = only_run(tmp_path)
    recorded = status(run_dir)
    assert recorded["state"] == "interrupted" and recorded["error"] == "Terminated: stopped by " \
        "SIGTERM" and recorded["checkpoint"] >= 2 and recorded["step"] >= recorded["checkpoint"]
    assert (run_dir / runs.LOCK_FILE).read_text() == ""
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")]


# ---- 5. a run directory that says its state ---------------------------------------------------

def test_status_console_validation_line_and_artefact_listing(converted_tree, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bridge_torch"):
        run_dir = run(converted_tree, tmp_path, "num_steps=2", "eval_interval=2",
                      "eval_batches=1")
    assert {k: status(run_dir)[k] for k in ("state", "step", "checkpoint", "pid")} == {
        "state": "finished", "step": 2, "checkpoint": 2, "pid": os.getpid()}
    mse = next(e["validation/mse"] for e in read_metrics(run_dir) if "validation/mse" in e)
    assert "step 2 validation: actor_loss " in caplog.text and f"mse {mse:.4f}" in caplog.text
    assert f"run directory {run_dir}:\n  checkpoints  ckpt_2.pt\n  metrics      metrics.jsonl" \
        in caplog.text
    assert "  status       status.json" in caplog.text


def test_the_lock_of_a_sigkilled_holder_is_taken_over_by_resume(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((run_dir / runs.LOCK_FILE).read_text())["pid"] == holder.pid
    train(compose_config([f"resume={run_dir}", "num_steps=3"]))
    assert status(run_dir)["state"] == "finished"
