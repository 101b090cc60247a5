"""Helpers of the trust tests (test_trust_train.py, test_trust_inputs.py): tiny real runs."""

import json
import subprocess
from pathlib import Path

from bridge_torch.train import runs
from bridge_torch.train.config import compose_config
from bridge_torch.train.loop import train
from bridge_torch.train.metrics_log import read_metrics

TINY = ["algo=bc", "batch_size=8", "val_batch_size=16", "device=cpu", "log_interval=1",
        "eval_interval=1000", "scheduler.warmup_steps=1", "scheduler.decay_steps=8",
        "encoder.name=resnetv1-mini-bridge", "encoder.num_filters=8", "model.hidden_dims=[16]"]


def run(data: Path, save_dir: Path, *overrides: str) -> Path:
    return train(compose_config([f"data_path={data}", f"save_dir={save_dir}", *TINY,
                                 *overrides]))


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["training/loss"]) for e in read_metrics(run_dir) if "training/loss" in e]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / runs.STATUS_FILE).read_text())


def only_run(save_dir: Path) -> Path:
    (run_dir,) = (save_dir / runs.PROJECT_DIR).iterdir()
    return run_dir


def finished_run(data: Path, save_dir: Path) -> Path:
    """A 2-update bc run with checkpoints at 1 and 2 (copy it before changing it)."""
    return run(data, save_dir, "num_steps=2", "save_interval=1")


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / run_dir.name
    subprocess.run(["cp", "-a", str(run_dir), str(target)], check=True)
    return target
