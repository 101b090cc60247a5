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
from hydra.errors import ConfigCompositionException, OverrideParseException

from bridge_torch.data.actions import training_statistics
from bridge_torch.data.datasets import open_split
from bridge_torch.data.sources.legacy_numpy import save_out_npy
from bridge_torch.port_compat import (
    KEY_ALIASES,
    VALUE_ALIASES,
    Launch,
    rewrite_overrides,
    translate_eval_argv,
    translate_train_argv,
)
from bridge_torch.train import checkpoint
from bridge_torch.train.build import AUGMENT_STREAM, autocast_dtype
from bridge_torch.train.config import TrainConfig, compose_config, load_config
from bridge_torch.train.metrics_log import read_metrics
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
        assert config.saliency.alpha == config.data.sample.saliency_alpha == 0.5
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


def test_multirun_sweeps_a_port_spelling(port_data, tmp_path):
    runs, stderr = train_cli([str(BIN / "bridge-torch-train")], "-m", "algo=bc",
                             "bridgedata=pull_pot_100", "data.augment=true,false",
                             "amp.enabled=true", "amp.dtype=fp16", f"data_path={port_data}",
                             f"save_dir={tmp_path}", MINI, *TINY, cwd=tmp_path)
    assert stderr.count(f"data.augment {NOTICE}") == 1  # once per command, not per job
    configs = [load_config(run / "config.yaml") for run in runs]
    assert [c.data.augment.enabled for c in configs] == [True, False]
    assert [augment_draws(run) for run in runs] == [True, False]
    for run in runs:  # float16 autocast runs with a real loss scaler
        assert load_config(run / "config.yaml").amp.dtype == "float16"
        assert checkpoint.load(run / "ckpt_3.pt")["scaler"]["scale"] > 0
        assert_trained_on(run, "toykitchen/pull_pot_100", port_data, tmp_path)


def test_resume_accepts_port_spellings(preset_run, tmp_path):
    run_dir = shutil.copytree(preset_run[0], tmp_path / preset_run[0].name)
    runs, stderr = train_cli([str(BIN / "bridge-torch-train")], f"resume={run_dir}",
                             "num_steps=4", "wandb.enabled=false", cwd=tmp_path)
    assert runs == [run_dir] and stderr.count(f"wandb.enabled {NOTICE}") == 1
    assert checkpoint.load(run_dir / "ckpt_4.pt")["step"] == 4
    config = load_config(run_dir / "config.yaml")
    assert config.wandb.mode == "disabled" and config.bridgedata.tasks == ["lift_carrot_100"]


def test_ddp_enabled_without_torchrun_is_a_clear_error(port_data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    result = subprocess.run([str(BIN / "bridge-torch-train"), "bridgedata=lift_carrot_100",
                             f"data_path={port_data}", f"save_dir={tmp_path}", "ddp.enabled=true"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: ddp.enabled=true asks for DistributedDataParallel, but this process was not "
        "started by torchrun")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node=2", f"--master_port={free_port()}",
            "-m", "bridge_torch.experiments.train_hydra", *args]


@pytest.mark.slow
def test_torchrun_ddp_enabled_trains_in_sync(port_data, tmp_path):
    runs, stderr = train_cli(torchrun("algo=bc", "bridgedata=lift_carrot_100",
                                      f"data_path={port_data}", f"save_dir={tmp_path}",
                                      "ddp.enabled=true", MINI, *TINY), cwd=tmp_path)
    assert stderr.count(f"ddp.enabled {NOTICE}") == 1  # rank 0 only
    sums = checkpoint.load(runs[0] / "ckpt_3.pt")["param_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # two ranks, gradients all-reduced
    assert_trained_on(runs[0], "lift_carrot_100", port_data, tmp_path)


@pytest.mark.slow
def test_torchrun_ddp_disabled_is_refused(port_data, tmp_path):
    result = subprocess.run(torchrun("bridgedata=lift_carrot_100", f"data_path={port_data}",
                                     f"save_dir={tmp_path}", "ddp.enabled=false"),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert "error: ddp.enabled=false, but torchrun started 2 processes" in result.stderr
    assert list(tmp_path.iterdir()) == []


def composed(*overrides: str) -> TrainConfig:
    """The config a plain (not torchrun) ``bridge-torch-train`` would compose."""
    rewritten, _ = rewrite_overrides(list(overrides), Launch())
    return compose_config(["data_path=/unused", *rewritten])


# (the port's override, our attribute path, the value it must get)
ALIAS_CASES = [
    ("wandb.enabled=false", "wandb.mode", "disabled"),
    ("wandb.enabled=true", "wandb.mode", "online"),
    ("data.augment=false", "data.augment.enabled", False),
    ("data.augment=true", "data.augment.enabled", True),
    ("data.saliency_alpha=0.3", "saliency.alpha", 0.3),
    ("data.saliency_alpha=0.3", "data.sample.saliency_alpha", 0.3),
    ("data.augment_next_obs_goal_differently=true",
     "data.augment.augment_next_obs_goal_differently", True),
    ("data.goal_relabeling_kwargs.reached_proportion=0.2", "data.sample.reached_proportion",
     0.2),
    ("data.augment_kwargs.random_resized_crop.scale=[0.5,1.0]", "data.augment.crop_scale",
     [0.5, 1.0]),
    ("data.augment_kwargs.random_resized_crop.ratio=[0.8,1.2]", "data.augment.crop_ratio",
     [0.8, 1.2]),
    ("data.augment_kwargs.random_brightness=[0.3]", "data.augment.brightness", 0.3),
    ("data.augment_kwargs.random_brightness=0.3", "data.augment.brightness", 0.3),
    ("data.augment_kwargs.random_contrast=[0.7,1.3]", "data.augment.contrast", [0.7, 1.3]),
    ("data.augment_kwargs.random_saturation=[0.6,1.4]", "data.augment.saturation", [0.6, 1.4]),
    ("data.augment_kwargs.random_hue=[0.05]", "data.augment.hue", 0.05),
    ("data.augment_kwargs.augment_order=[random_hue,random_contrast,random_saturation]",
     "data.augment.order", ["hue", "contrast", "saturation"]),
    ("encoder=resnetv1-18-bridge", "encoder.name", "resnetv1-18-bridge"),
    ("encoder_kwargs.arch=resnet50", "encoder.name", "resnetv1-50-bridge"),
    ("encoder_kwargs.pooling_method=spatial_softmax", "encoder.pooling_method",
     "spatial_softmax"),
    ("encoder_kwargs.add_spatial_coordinates=false", "encoder.add_spatial_coordinates", False),
    ("encoder_kwargs.act=gelu", "encoder.act", "gelu"),
    ("compile.kwargs.mode=max-autotune", "compile.mode", "max-autotune"),
    ("compile.kwargs.dynamic=true", "compile.dynamic", True),
    ("compile.kwargs.fullgraph=true", "compile.fullgraph", True),
    ("scheduler.type=warmup_cosine", "scheduler.type", "cosine"),
    ("amp.dtype=bf16", "amp.dtype", "bfloat16"),
    ("amp.dtype=fp16", "amp.dtype", "float16"),
]


@pytest.mark.parametrize(("override", "path", "expected"), ALIAS_CASES)
def test_alias_has_the_ports_meaning(override, path, expected):
    value = composed(override)
    for name in path.split("."):
        value = getattr(value, name)
    assert value == pytest.approx(expected) if isinstance(expected, float) else value == expected


def test_every_alias_is_covered():
    tested = {case[0].split("=")[0] for case in ALIAS_CASES}
    tested_values = {case[0] for case in ALIAS_CASES}
    assert set(KEY_ALIASES) <= tested
    assert {f"{k}={v}" for k, table in VALUE_ALIASES.items() for v in table} <= tested_values


@pytest.mark.parametrize("token", [
    "data.augment={enabled:false}", "encoder={name:resnetv1-18-bridge}", "scheduler.type=constant",
    "amp.dtype=float16", "wandb.mode=offline", "-m", "--cfg", "job", "data.augment.enabled=false",
])
def test_our_own_spellings_pass_unchanged(token):
    assert rewrite_overrides([token], Launch()) == ([token], [])


@pytest.mark.parametrize(("override", "error", "match"), [
    # misspelt aliases are unknown keys or values, as any other typo
    ("wandb.enable=false", ConfigCompositionException, "wandb.enable"),
    ("data.augment_kwargs.random_brigthness=[0.1]", ConfigCompositionException, "brigthness"),
    ("encoder_kwarg.arch=resnet18", ConfigCompositionException, "encoder_kwarg"),
    ("ddp.enable=true", ConfigCompositionException, "ddp.enable"),
    ("data.augment=yes", ConfigCompositionException, "data.augment"),
    ("wandb.enabled=[0", OverrideParseException, "no viable alternative"),  # Hydra's own
    ("scheduler.type=warmup_cosin", ValueError, "'cosine' or 'constant'"),
    ("amp.dtype=bf61", ValueError, "amp.dtype must be one of"),
    # the port's keys with values it never had, or without an equivalent
    ("wandb.enabled=offline", ValueError, "expected true or false"),
    ("encoder_kwargs.arch=resnet101", ValueError, "unknown encoder arch 'resnet101'"),
    ("data.augment_kwargs.augment_order=[random_flip_left_right]", ValueError,
     "unknown augmentation op"),
    ("data.augment_kwargs.random_hue=[0.1,0.2]", ValueError, "one-element list"),
    ("data.augment_kwargs.p=0.5", ValueError, "has no equivalent here"),
    ("+wandb.enabled=false", ValueError, "can only be set"),
    ("data.augment=range(0,2)", ValueError, "comma-separated list"),
    ("ddp.enabled=true,false", ValueError, "no sweep"),
])
def test_misspelt_or_unsupported_port_spelling_is_an_error(override, error, match):
    with pytest.raises(error, match=match):
        composed(override)


@pytest.mark.parametrize(("value", "world_size", "error"), [
    ("true", None, "was not started by torchrun"),
    ("true", 1, None),
    ("true", 2, None),
    ("false", None, None),
    ("false", 1, None),
    ("false", 2, "torchrun started 2 processes"),
])
def test_ddp_enabled_must_agree_with_the_launch(value, world_size, error):
    launch = Launch(world_size)
    if error is not None:
        with pytest.raises(ValueError, match=error):
            rewrite_overrides([f"ddp.enabled={value}"], launch)
    else:  # dropped: DDP follows the launch by itself
        rewritten, notices = rewrite_overrides(["algo=bc", f"ddp.enabled={value}"], launch)
        assert rewritten == ["algo=bc"] and len(notices) == 1


def test_notices_are_logged_once_and_by_rank_zero_only(monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    argv = ["wandb.enabled=false", "wandb.enabled=true", "amp.dtype=bf16", "algo=bc"]
    with caplog.at_level(logging.WARNING, logger="bridge_torch.port_compat"):
        assert translate_train_argv(argv) == [
            "wandb.mode=disabled", "wandb.mode=online", "amp.dtype=bfloat16", "algo=bc"]
    assert caplog.messages == [
        "wandb.enabled is accepted for compatibility; the current name is wandb.mode",
        "amp.dtype=bf16 is accepted for compatibility; the current name is amp.dtype=bfloat16"]
    caplog.clear()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with caplog.at_level(logging.WARNING, logger="bridge_torch.port_compat"):
        translate_train_argv(argv)
    assert caplog.messages == []


def test_train_argv_errors_exit_with_the_reason():
    with pytest.raises(SystemExit, match=r"^error: data\.augment_kwargs\.p=0\.5: the earlier port"):
        translate_train_argv(["data.augment_kwargs.p=0.5"])


def test_eval_save_dir_becomes_the_run_argument():
    assert translate_eval_argv(["--save_dir", "runs/a", "--device", "cpu"]) == [
        "runs/a", "--device", "cpu"]
    assert translate_eval_argv(["--save_dir=runs/a"]) == ["runs/a"]
    assert translate_eval_argv(["runs/a", "--json", "m.json"]) == ["runs/a", "--json", "m.json"]
    with pytest.raises(SystemExit, match="--save_dir needs a run directory"):
        translate_eval_argv(["--save_dir"])
