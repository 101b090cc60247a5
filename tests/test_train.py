"""End-to-end training runs on tiny packed stores: run files, resume, AMP, compile, DDP, multirun.

Every run is real (real stores on disk, real agents with the mini encoder at 32 px, real
checkpoints); most run in-process through ``compose_config`` + ``train``, the CLI ones as
subprocesses of ``bridge-torch-train`` / ``python -m bridge_torch.train`` / torchrun.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge_torch.agents import AgentShapes, build_agent, count_parameters
from bridge_torch.data.actions import training_statistics
from bridge_torch.data.datasets import open_split, resolve_task_dirs
from bridge_torch.data.store import Trajectory, write_store
from bridge_torch.deploy import restore
from bridge_torch.train import checkpoint, runs
from bridge_torch.train.build import split_batch, wrap_model
from bridge_torch.train.config import TrainConfig, compose_config, load_config, to_container
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.loop import train, train_step
from bridge_torch.train.metrics_log import read_metrics
from bridge_torch.train.state import TrainState

TINY = [
    "batch_size=8", "val_batch_size=8", "encoder.name=resnetv1-mini-bridge",
    "encoder.num_filters=8", "model.hidden_dims=[32,32]", "model.score_width=32",
    "model.num_blocks=1", "model.diffusion_steps=4", "scheduler.warmup_steps=2",
    "scheduler.decay_steps=20", "device=cpu",
]


def make_task(root: Path, task: str, seed: int, splits: dict[str, int], size: int = 32) -> None:
    """A task directory with packed train/val stores of random trajectories with saliency."""
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        trajectories = []
        for _ in range(count):
            steps = int(rng.integers(5, 9))
            trajectories.append(Trajectory(
                frames={"images0": rng.integers(0, 256, (steps + 1, size, size, 3), np.uint8)},
                proprio=np.cumsum(rng.normal(0, 0.05, (steps + 1, 7)), 0).astype(np.float32),
                actions=rng.uniform(0, 1, (steps, 7)).astype(np.float32),
                language=[],
                saliency=rng.uniform(0, 1, (steps + 1, size, size)).astype(np.float32),
            ))
        write_store(root / task / split / "packed", trajectories, progress=False)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bridge")
    make_task(root, "kitchen/pick", 0, {"train": 4, "val": 2})
    make_task(root, "kitchen/place", 1, {"train": 3, "val": 1})
    make_task(root, "toysink", 2, {"train": 3})  # no val split: skipped for validation
    return root


def run(data_path: Path, save_dir: Path, *overrides: str) -> Path:
    return train(compose_config([f"data_path={data_path}", f"save_dir={save_dir}", *TINY,
                                 *overrides]))


def training_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["training/loss"]) for e in read_metrics(run_dir) if "training/loss" in e]


def test_run_directory_records_itself(data_path, tmp_path):
    run_dir = run(data_path, tmp_path, "algo=gc_bc", "name=probe", "num_steps=4",
                  "log_interval=2", "eval_interval=3", "save_interval=2")
    assert run_dir.parent == tmp_path.resolve() / "bridgedata_torch"
    assert run_dir.name.startswith("probe_")
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "ckpt_2.pt", "ckpt_4.pt", "config.json", "config.yaml", "lock", "metrics.jsonl",
        "model_summary.json", "stats.json", "status.json",
    ]
    config = load_config(run_dir / "config.yaml")
    assert config.algo == "gc_bc" and config.num_steps == 4
    assert json.loads((run_dir / "config.json").read_text()) == to_container(config)

    tasks = resolve_task_dirs(data_path, [["**"]], [])
    stores = [[open_split(task, "train") for task in group] for group in tasks]
    expected_stats = training_statistics(stores, relabel_actions=True)
    assert json.loads((run_dir / "stats.json").read_text()) == expected_stats

    saved = checkpoint.load(run_dir / "ckpt_4.pt")
    agent = build_agent("gc_bc", config.model, config.encoder, config.saliency,
                        AgentShapes(**saved["agent_shapes"]))
    assert json.loads((run_dir / "model_summary.json").read_text()) == count_parameters(agent)
    assert saved["agent_shapes"] == {"action_dim": 7, "proprio_dim": 7, "obs_horizon": 1,
                                     "act_pred_horizon": 1, "image_size": 32}
    assert saved["step"] == 4 and saved["ema"] is None and saved["stats"] == expected_stats
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in saved["model"])
    assert len(saved["sampler"]) == len(saved["augmenter"]) == len(saved["rng"]) == 1

    events = read_metrics(run_dir)
    assert [(e["step"], sorted({k.split("/")[0] for k in e if k != "step"})) for e in events] == [
        (2, ["timer", "training"]), (3, ["validation"]), (4, ["timer", "training"]),
        (4, ["validation"]),
    ]
    train_event = events[0]
    for key in ("training/loss", "training/actor_loss", "training/mse", "training/lr",
                "timer/samples_per_s", "timer/data_s", "timer/update_s"):
        assert np.isfinite(train_event[key]), key
    assert train_event["training/lr"] == pytest.approx(3e-4 * 1 / 2)  # update 1 of 2 warmup
    assert {"validation/mse", "validation/actor_loss"} <= set(events[1])


@pytest.mark.slow
def test_cli_prints_run_dir_last(data_path, tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "bridge-torch-train"), f"data_path={data_path}",
         f"save_dir={tmp_path}", "algo=bc", "num_steps=2", "log_interval=1", *TINY],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("run_dir: ")
    run_dir = Path(last.removeprefix("run_dir: "))
    assert (run_dir / "ckpt_2.pt").is_file()
    # Hydra leaves nothing in the working directory (no outputs/, no .log files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridgedata_torch"]


def test_exact_resume_equals_uninterrupted_run(data_path, tmp_path):
    """gc_ddpm_bc exercises everything random: dropout, diffusion noise, crops, goals, EMA."""
    common = ["algo=gc_ddpm_bc", "log_interval=1", "eval_interval=3", "save_interval=3"]
    full = run(data_path, tmp_path / "full", *common, "num_steps=6")
    part = run(data_path, tmp_path / "part", *common, "num_steps=3")
    resumed = train(compose_config([f"resume={part}", "num_steps=6"]))
    assert resumed == part
    full_losses = training_losses(full)
    assert [step for step, _ in full_losses] == [1, 2, 3, 4, 5, 6]
    assert training_losses(part) == full_losses  # bit-identical, every step
    a = checkpoint.load(full / "ckpt_6.pt")
    b = checkpoint.load(part / "ckpt_6.pt")
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(b[key][name], tensor, rtol=0, atol=0, msg=name)
    assert load_config(part / "config.yaml").num_steps == 6


def test_seed_changes_losses_and_same_seed_repeats(data_path, tmp_path):
    first = training_losses(run(data_path, tmp_path, "algo=bc", "num_steps=2", "log_interval=1"))
    again = training_losses(run(data_path, tmp_path, "algo=bc", "num_steps=2", "log_interval=1"))
    other = training_losses(run(data_path, tmp_path, "algo=bc", "num_steps=2", "log_interval=1",
                                "seed=7"))
    assert first == again
    assert first != other


def test_keep_last_prunes_old_checkpoints(data_path, tmp_path):
    run_dir = run(data_path, tmp_path, "algo=bc", "num_steps=4", "save_interval=1",
                  "keep_last=2", "eval_interval=100")
    assert [p.name for p in runs.list_checkpoints(run_dir)] == ["ckpt_3.pt", "ckpt_4.pt"]


def test_float16_autocast_uses_a_real_grad_scaler(data_path, tmp_path):
    """CPU float16 autocast works in torch 2.13, so the scaler is exercised for real here."""
    run_dir = run(data_path, tmp_path, "algo=bc", "num_steps=3", "amp.enabled=true",
                  "amp.dtype=float16", "amp.init_scale=1024", "amp.growth_interval=1",
                  "eval_interval=100")
    scaler = checkpoint.load(run_dir / "ckpt_3.pt")["scaler"]
    # 3 finite steps with growth_interval 1 double the scale each time (an overflow would halve)
    assert scaler["scale"] != 1024.0
    assert scaler["scale"] in (1024.0 * 2**k for k in range(-3, 4))
    assert all(np.isfinite(loss) for _, loss in training_losses(run_dir))


def test_bfloat16_on_cpu_only_when_asked(data_path, tmp_path):
    run_dir = run(data_path, tmp_path, "algo=bc", "num_steps=1", "amp.enabled=true",
                  "eval_interval=100")
    assert checkpoint.load(run_dir / "ckpt_1.pt")["scaler"] == {}  # bf16: scaler disabled


def test_no_val_split_anywhere_skips_validation(tmp_path):
    make_task(tmp_path / "data", "only_train", 5, {"train": 2})
    run_dir = run(tmp_path / "data", tmp_path, "algo=bc", "num_steps=2", "eval_interval=1")
    assert not any("validation/mse" in e for e in read_metrics(run_dir))


def test_saliency_regulariser_trains(tmp_path):
    make_task(tmp_path / "data", "gaze", 3, {"train": 2}, size=64)  # 2x2 mini feature map
    run_dir = run(tmp_path / "data", tmp_path, "algo=gc_bc", "num_steps=2", "log_interval=1",
                  "saliency.enabled=true", "saliency.weight=2.0", "eval_interval=100")
    events = [e for e in read_metrics(run_dir) if "training/loss" in e]
    assert all(e["training/saliency_reg"] > 0 for e in events)
    for event in events:  # total = policy loss + weight * regulariser
        assert event["training/total_loss"] == pytest.approx(
            event["training/actor_loss"] + 2.0 * event["training/saliency_reg"], rel=1e-5)


def test_frame_storage_changes_speed_only(data_path, tmp_path):
    """Frames in the memory maps (sampled on the host) or on the device: the same batches, so
    the same losses, and a run resumes exactly with the other storage."""
    common = ["algo=gc_bc", "log_interval=1", "eval_interval=100", "save_interval=2"]
    device = run(data_path, tmp_path / "device", *common, "num_steps=4",
                 "data.frame_storage=device")
    host = run(data_path, tmp_path / "host", *common, "num_steps=2", "data.frame_storage=host")
    train(compose_config([f"resume={host}", "num_steps=4", "data.frame_storage=device"]))
    assert training_losses(host) == training_losses(device)
    assert len(training_losses(device)) == 4


def test_split_batch():
    assert split_batch(256, DistInfo(0, 0, 4)) == 64
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        split_batch(8, DistInfo(0, 0, 3))


@pytest.mark.slow
def test_compiled_agent_is_optimized_module_and_trains(data_path, tmp_path):
    config = compose_config([f"data_path={data_path}", *TINY, "algo=bc", "compile.enabled=true"])
    shapes = {"action_dim": 7, "proprio_dim": 7, "obs_horizon": 1, "act_pred_horizon": 1,
              "image_size": 32}
    agent = build_agent("bc", config.model, config.encoder, config.saliency, AgentShapes(**shapes))
    model = wrap_model(agent, config, DistInfo(), torch.device("cpu"))
    assert isinstance(model, torch._dynamo.eval_frame.OptimizedModule)
    assert model._orig_mod is agent
    # A full run through dynamo + AOTAutograd; aot_eager skips inductor's C++ code generation,
    # which takes minutes on 2 CPU cores. Checkpoints must carry the raw agent's keys.
    run_dir = run(data_path, tmp_path, "algo=bc", "num_steps=2", "compile.enabled=true",
                  "compile.backend=aot_eager", "eval_interval=100")
    saved = checkpoint.load(run_dir / "ckpt_2.pt")
    assert set(saved["model"]) == set(agent.state_dict())
    assert restore.restore_agent(run_dir, device="cpu").step == 2


@pytest.mark.slow
def test_torchrun_two_ranks_stay_in_sync(data_path, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "bridge_torch.train", f"data_path={data_path}",
         f"save_dir={tmp_path}", "algo=gc_bc", "num_steps=3", "log_interval=1",
         "eval_interval=3", *TINY],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    saved = checkpoint.load(run_dir / "ckpt_3.pt")
    sums = saved["param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # replicas identical after the all-reduce
    # ... while the ranks drew different batches: their data streams differ
    assert [state["seed"] for state in saved["sampler"]] == [42, 43]
    assert not torch.equal(saved["sampler"][0]["generator"], saved["sampler"][1]["generator"])
    assert not torch.equal(saved["rng"][0]["torch"], saved["rng"][1]["torch"])
    assert [e["step"] for e in read_metrics(run_dir) if "training/loss" in e] == [1, 2, 3]
    assert any("validation/mse" in e for e in read_metrics(run_dir))


@pytest.mark.slow
def test_multirun_creates_distinct_run_dirs(data_path, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge_torch.train", "-m", "algo=bc,gc_bc", "seed=1,2",
         f"data_path={data_path}", f"save_dir={tmp_path}", "num_steps=1", *TINY],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(r for r in (tmp_path / "bridgedata_torch").iterdir() if r.name != "sweeps")
    assert len(runs) == 4
    seen = sorted((load_config(r / "config.yaml").algo, load_config(r / "config.yaml").seed)
                  for r in runs)
    assert seen == [("bc", 1), ("bc", 2), ("gc_bc", 1), ("gc_bc", 2)]
    assert all((r / "ckpt_1.pt").is_file() for r in runs)
    bc_runs = [r for r in runs if load_config(r / "config.yaml").algo == "bc"]
    assert training_losses(bc_runs[0]) != training_losses(bc_runs[1])  # seeds matter
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bridgedata_torch"]


def test_train_step_clips_and_reports_grad_norm():
    agent = torch.nn.Linear(2, 1)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = agent

        def forward(self, batch):
            loss = (self.inner(batch["x"]) - batch["actions"]).pow(2).mean() * 1e4
            return loss, {}

    model = Wrapper()
    optimizer = torch.optim.SGD(agent.parameters(), lr=0.0)
    state = TrainState(agent, model, None, optimizer,
                       torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                       torch.amp.GradScaler("cpu", enabled=False), None, None)
    batch = {"x": torch.ones(4, 2), "actions": torch.full((4, 1), 10.0)}
    metrics = train_step(state, batch, amp_dtype=None, max_grad_norm=0.5)
    assert float(metrics["grad_norm"]) > 0.5  # the norm before clipping is reported
    clipped = torch.cat([p.grad.flatten() for p in agent.parameters()]).norm()
    assert float(clipped) == pytest.approx(0.5, rel=1e-5)
    assert state.scheduler.last_epoch == 1


def test_config_dataclass_runs_without_hydra(data_path, tmp_path):
    """train() takes a plain TrainConfig (the demo and notebooks do not need Hydra)."""
    base = compose_config([f"data_path={data_path}", *TINY, "algo=bc"])
    config = TrainConfig(**{**vars(base), "save_dir": str(tmp_path), "num_steps": 1})
    assert (train(config) / "ckpt_1.pt").is_file()
