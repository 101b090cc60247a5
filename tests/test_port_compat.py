"""The earlier port's documented commands, run verbatim on a dataset laid out as the port's.

The data: legacy ``out.npy`` task directories ``lift_carrot_100``, ``lift_carrot_100_confounded``
(a name that must NOT match the lift_carrot_100 preset) and ``toykitchen/pull_pot_100`` (one
level deeper). Each command trains a few updates on CPU through the real CLI, is evaluated with
``bridge-torch-eval --save_dir`` and is checked for the meaning of the port's spelling; the
rewrite itself is checked key by key in-process, including that anything else stays an error.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException

from bridge_torch import checkpoint
from bridge_torch.config import compose_config, load_config
from bridge_torch.data.datasets import open_split, training_statistics
from bridge_torch.data.legacy import save_out_npy
from bridge_torch.port_compat import (
    Launch,
    rewrite_overrides,
    translate_eval_argv,
    translate_train_argv,
)
from bridge_torch.run_logging import read_metrics
from bridge_torch.train import AUGMENT_STREAM, autocast_dtype
from helpers import free_port

BIN = Path(sys.executable).parent
# (train trajectories, length), (val trajectories, length) per task directory
TASKS = {"lift_carrot_100": ((3, 6), (2, 5)), "lift_carrot_100_confounded": ((2, 7), (1, 4)),
         "toykitchen/pull_pot_100": ((2, 8), (1, 3))}
# tiny, fast settings appended to every command (our keys; the port's spellings come first)
TINY = ["device=cpu", "batch_size=8", "val_batch_size=8", "num_steps=3", "log_interval=1",
        "eval_interval=3", "save_interval=3", "scheduler.warmup_steps=1",
        "scheduler.decay_steps=3", "encoder.num_filters=8", "model.hidden_dims=[16]"]
MINI = "encoder.name=resnetv1-mini-bridge"
NOTICE = "is accepted for compatibility; the current name is"


def _trajectory(rng: np.random.Generator, steps: int) -> dict:
    frames = [{"images0": rng.integers(0, 256, (32, 32, 3), np.uint8),
               "state": rng.normal(0, 0.1, 7).astype(np.float32)} for _ in range(steps + 1)]
    return {"observations": frames[:-1], "next_observations": frames[1:], "language": [""],
            "actions": [rng.uniform(-1, 1, 7).astype(np.float32) for _ in range(steps)]}


@pytest.fixture(scope="module")
def port_data(tmp_path_factory) -> Path:
    """``<root>/<task>/{train,val}/out.npy`` as the port's converter wrote them."""
    root = tmp_path_factory.mktemp("bdv2_numpy")
    rng = np.random.default_rng(0)
    for task, splits in TASKS.items():
        for split, (count, steps) in zip(("train", "val"), splits, strict=True):
            save_out_npy(root / task / split / "out.npy",
                         [_trajectory(rng, steps) for _ in range(count)])
    return root


def train_cli(entry: list[str], *args: str, cwd: Path, env: dict | None = None
              ) -> tuple[list[Path], str]:
    """Run a training command; return its run directories and its stderr."""
    result = subprocess.run([*entry, *args], capture_output=True, text=True, timeout=300,
                            cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [Path(line.removeprefix("run_dir: ")) for line in result.stdout.splitlines()
            if line.startswith("run_dir: ")]
    return runs or sorted((cwd / "bridgedata_torch").glob("*_*_*")), result.stderr


def evaluate_cli(run_dir: Path, tmp_path: Path) -> dict:
    """``bridge-torch-eval --save_dir <run>``, the port's spelling of the run argument."""
    out = tmp_path / f"{run_dir.name}.json"
    result = subprocess.run([str(BIN / "bridge-torch-eval"), "--save_dir", str(run_dir),
                             "--device", "cpu", "--json", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(f"--save_dir <run> {NOTICE}") == 1
    return json.loads(out.read_text())


def assert_trained_on(run_dir: Path, task: str, port_data: Path, tmp_path: Path) -> None:
    """Saved, evaluable, and trained and validated on ``task``'s trajectories only."""
    (_, _), (val_count, val_steps) = TASKS[task]
    stores = [[open_split(port_data / task, "train")]]
    expected = training_statistics(stores, relabel_actions=True)
    assert json.loads((run_dir / "stats.json").read_text()) == expected
    assert checkpoint.load(run_dir / "ckpt_3.pt")["step"] == 3
    result = evaluate_cli(run_dir, tmp_path)
    assert result["step"] == 3 and result["transitions"] == val_count * val_steps
    assert np.isfinite(result["mse"])


def augment_draws(run_dir: Path) -> bool:
    """Whether the run's augmenter drew any random numbers (it draws per sample when on)."""
    saved = checkpoint.load(run_dir / "ckpt_3.pt")["augmenter"][0]
    fresh = torch.Generator().manual_seed(load_config(run_dir / "config.yaml").seed
                                          + AUGMENT_STREAM).get_state()
    return not torch.equal(saved["generator"], fresh)


@pytest.fixture(scope="module")
def preset_run(port_data, tmp_path_factory) -> tuple[Path, str]:
    """The port README's first command, through the module entry it documents."""
    save = tmp_path_factory.mktemp("runs")
    runs, stderr = train_cli([sys.executable, "-m", "bridge_torch.experiments.train_hydra"],
                             "algo=bc", "bridgedata=lift_carrot_100", f"data_path={port_data}",
                             f"save_dir={save}", MINI, *TINY, cwd=save)
    return runs[0], stderr


def test_module_entry_and_task_preset(preset_run, port_data, tmp_path):
    run_dir, stderr = preset_run
    config = load_config(run_dir / "config.yaml")
    assert config.algo == "bc" and config.bridgedata.tasks == ["lift_carrot_100"]
    assert NOTICE not in stderr  # nothing of the port's spellings in this command
    assert_trained_on(run_dir, "lift_carrot_100", port_data, tmp_path)


# name -> (the port's spellings as its README writes them, the spellings that must be noticed)
PORT_COMMANDS = {
    "wandb": (["wandb.enabled=false"], ["wandb.enabled"]),
    "augment_off": (["data.augment=false"], ["data.augment"]),
    "scheduler": (["scheduler.type=warmup_cosine", "scheduler.warmup_steps=1"],
                  ["scheduler.type=warmup_cosine"]),
    "amp": (["amp.enabled=true", "amp.dtype=bf16"], ["amp.dtype=bf16"]),
    "key_spellings": (
        ["data.augment_kwargs.random_brightness=[0.1]",
         "data.augment_kwargs.random_resized_crop.scale=[0.9,1.0]",
         "data.augment_kwargs.augment_order=[random_resized_crop,random_brightness]",
         "data.saliency_alpha=0.5", "encoder=resnetv1-mini-bridge",
         "encoder_kwargs.pooling_method=max", "encoder_kwargs.act=relu"],
        ["data.augment_kwargs.random_brightness", "data.augment_kwargs.random_resized_crop.scale",
         "data.augment_kwargs.augment_order", "data.saliency_alpha", "encoder",
         "encoder_kwargs.pooling_method", "encoder_kwargs.act"]),
}


def check_meaning(name: str, run_dir: Path) -> None:
    """The saved config and the run's behaviour carry the meaning of the port's spelling."""
    config = load_config(run_dir / "config.yaml")
    if name == "wandb":
        assert config.wandb.mode == "disabled" and not (run_dir / "wandb").exists()
    elif name == "augment_off":
        assert not config.data.augment.enabled and not augment_draws(run_dir)
    elif name == "scheduler":  # linear warmup over 1 update, then cosine to 0 at update 3
        assert config.scheduler.type == "cosine"
        lrs = [e["training/lr"] for e in read_metrics(run_dir) if "training/lr" in e]
        assert lrs == pytest.approx([0.0, 3e-4, 1.5e-4])
    elif name == "amp":
        assert config.amp.enabled and config.amp.dtype == "bfloat16"
        assert autocast_dtype(config, torch.device("cpu")) is torch.bfloat16
    else:
        augment = config.data.augment
        assert augment.brightness == 0.1 and augment.crop_scale == [0.9, 1.0]
        assert augment.order == ["crop", "brightness"] and augment_draws(run_dir)
        assert config.saliency.alpha == config.data.saliency_alpha == 0.5
        assert (config.encoder.name, config.encoder.pooling_method, config.encoder.act) == (
            "resnetv1-mini-bridge", "max", "relu")


@pytest.mark.parametrize("name", sorted(PORT_COMMANDS))
def test_port_command_trains_saves_evaluates(name, port_data, tmp_path):
    spellings, noticed = PORT_COMMANDS[name]
    encoder = [] if name == "key_spellings" else [MINI]
    runs, stderr = train_cli([str(BIN / "bridge-torch-train")], "algo=bc",
                             "bridgedata=lift_carrot_100", *spellings, f"data_path={port_data}",
                             f"save_dir={tmp_path}", *encoder, *TINY, cwd=tmp_path)
    assert [stderr.count(f"{old} {NOTICE}") for old in noticed] == [1] * len(noticed)
    check_meaning(name, runs[0])
    assert_trained_on(runs[0], "lift_carrot_100", port_data, tmp_path)
