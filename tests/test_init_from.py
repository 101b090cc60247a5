"""``init_from=<run>``: a new run starts from another run's weights and statistics, with a fresh
optimizer, schedule and step counter (fine-tuning), through the real CLI."""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bridge_torch.train import checkpoint
from bridge_torch.train.config import compose_config

# the tiny_run fixture's architecture; warmup from lr 0 makes the first update a no-op
SAME_ARCHITECTURE = ["encoder.name=resnetv1-mini-bridge", "encoder.num_filters=8",
                     "model.hidden_dims=[16]", "model.score_width=16"]


def fine_tune(source: Path, data: Path, save: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge_torch.train", "algo=gc_ddpm_bc", f"data_path={data}",
         f"save_dir={save}", f"init_from={source}", "num_steps=1", "batch_size=8",
         "val_batch_size=8", "device=cpu", "scheduler.warmup_steps=5", "scheduler.decay_steps=10",
         *SAME_ARCHITECTURE, *extra], capture_output=True, text=True, timeout=300)


def test_init_from_starts_from_the_weights_with_a_fresh_optimizer(
        tiny_run: Callable[[str], Path], converted_tree: Path, tmp_path: Path) -> None:
    source = tiny_run("gc_ddpm_bc")
    before = checkpoint.load(source / "ckpt_4.pt")
    result = fine_tune(source, converted_tree, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    after = checkpoint.load(run_dir / "ckpt_1.pt")
    assert after["step"] == 1  # a new run: its own step counter ...
    steps = {int(s["step"]) for s in after["optimizer"]["state"].values()}
    assert steps == {1}  # ... and a fresh optimizer (the source's has seen 4 updates)
    for name, tensor in before["model"].items():  # lr 0 at the first warmup step: unchanged
        torch.testing.assert_close(after["model"][name], tensor, rtol=0, atol=0, msg=name)
    for name, tensor in before["ema"].items():  # the EMA starts from the source's EMA
        expected = 0.998 * tensor + 0.002 * before["model"][name] if tensor.is_floating_point() \
            else tensor
        torch.testing.assert_close(after["ema"][name], expected, msg=name)
    assert after["stats"] == before["stats"]  # the units the weights were trained in
    assert json.loads((run_dir / "stats.json").read_text()) == before["stats"]


def test_init_from_refuses_another_algo_or_architecture(
        tiny_run: Callable[[str], Path], converted_tree: Path, tmp_path: Path) -> None:
    source = tiny_run("gc_ddpm_bc")
    other_algo = fine_tune(source, converted_tree, tmp_path / "a", "algo=gc_bc")
    assert other_algo.returncode != 0
    assert "holds a 'gc_ddpm_bc' agent, this run trains 'gc_bc'" in other_algo.stderr
    other_width = fine_tune(source, converted_tree, tmp_path / "b", "model.score_width=32")
    assert other_width.returncode != 0 and "shape mismatches" in other_width.stderr
    assert "Traceback" not in other_width.stderr
    with pytest.raises(ValueError, match="init_from and resume exclude each other"):
        compose_config([f"data_path={converted_tree}", f"init_from={source}",
                        f"resume={source}"])
