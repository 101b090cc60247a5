"""The data section composed as ``data.load`` / ``data.sample`` / ``data.augment``, and its flat
spellings (``data.obs_horizon``) still accepted from every place a config comes from: command-line
overrides, YAML presets, a run's config.yaml on resume and the config inside a checkpoint.

The old-style files are written by hand from the current format (the data section flattened), so
each test compares the two spellings of the same settings.
"""

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.errors import ConfigCompositionException

from bridge_torch.cli_errors import dataclass_keys, hydra_error_message
from bridge_torch.data.config import LoadConfig, SampleConfig
from bridge_torch.data.config_migration import FLAT_KEYS, migrate_data
from bridge_torch.data.training_data import TrainingData
from bridge_torch.deploy.policy import Policy
from bridge_torch.deploy.restore import restore_agent
from bridge_torch.port_compat import translate_train_argv
from bridge_torch.train import checkpoint, runs
from bridge_torch.train.config import (
    TrainConfig,
    compose_config,
    config_from_container,
    load_config,
    to_container,
    to_yaml,
)
from bridge_torch.train.init_from import load_initial
from bridge_torch.train.run_data import DataLayout
from helpers import make_run

BIN = Path(sys.executable).parent
# every load and sample key with a value other than its default: (flat key, value as typed)
NON_DEFAULT = {"camera": "images1", "frame_storage": "host", "allow_pickle": "false",
               "allow_image_mismatch": "true", "obs_horizon": "2", "act_pred_horizon": "3",
               "goal_relabeling_strategy": "geometric", "reached_proportion": "0.1",
               "discount": "0.9", "goal_delta": "[1,4]", "relabel_actions": "false",
               "normalization_type": "bounds", "saliency_alpha": "0.5"}
NOTICE = "data.{old} is accepted for compatibility; the current name is data.{new}"


def flatten(data: dict) -> dict:
    """A current data section in the flat spelling of earlier versions."""
    return {**data.pop("load"), **data.pop("sample"), **data}


def sections_of(flat: dict) -> dict:
    """Flat data keys placed in their sections: the current spelling of the same settings."""
    nested: dict = {}
    for key, value in flat.items():
        section, name = FLAT_KEYS[key].split(".")
        nested.setdefault(section, {})[name] = value
    return nested


def test_every_load_and_sample_key_has_a_flat_spelling() -> None:
    assert set(NON_DEFAULT) | {"load_goals", "load_saliency"} == set(FLAT_KEYS)
    assert FLAT_KEYS["camera"] == "load.camera" and FLAT_KEYS["discount"] == "sample.discount"


def test_flat_overrides_compose_the_config_of_the_current_keys(caplog) -> None:
    flat = [f"data.{key}={value}" for key, value in NON_DEFAULT.items()]
    current = [f"data.{FLAT_KEYS[key]}={value}" for key, value in NON_DEFAULT.items()]
    with caplog.at_level(logging.WARNING, logger="bridge_torch.train.config"):
        old = compose_config(["data_path=/d", *flat, "data.load_goals=true"])
    new = compose_config(["data_path=/d", *current, "data.load.load_goals=true"])
    assert old == new
    assert (new.data.sample.obs_horizon, new.data.load.camera, new.data.sample.goal_delta) == (
        2, "images1", [1, 4])
    assert new != compose_config(["data_path=/d"])  # every value above is not the default
    assert caplog.messages == [NOTICE.format(old=key, new=FLAT_KEYS[key])
                               for key in [*NON_DEFAULT, "load_goals"]]


def test_flat_spellings_keep_their_validation_and_derivation() -> None:
    with pytest.raises(ValueError, match=r"data\.sample\.obs_horizon must be >= 1, got 0"):
        compose_config(["data_path=/d", "data.obs_horizon=0"])
    with pytest.raises(ValueError, match=r"data\.load\.frame_storage must be one of"):
        compose_config(["data_path=/d", "data.frame_storage=gpu"])
    with pytest.raises(ValueError, match=r"data\.load\.load_goals=True contradicts algo 'bc'"):
        compose_config(["data_path=/d", "algo=bc", "data.load_goals=true"])
    with pytest.raises(ConfigCompositionException):  # a wrong type fails at composition
        compose_config(["data_path=/d", "data.obs_horizon=two"])


def test_the_command_line_rewrites_flat_keys_with_one_notice(monkeypatch, caplog) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["-m", "data.obs_horizon=1,2", "data.camera=images1", "data.camera=images2",
            "~data.allow_pickle", "data.sample.discount=0.9", "data.augment.hue=0.0",
            "data.goal_relabeling_kwargs.reached_proportion=0.2", "data.saliency_alpha=0.3"]
    with caplog.at_level(logging.WARNING, logger="bridge_torch.port_compat"):
        rewritten = translate_train_argv(argv)
    # the port's data.saliency_alpha is its regulariser's alpha, which ours follows
    assert rewritten == ["-m", "data.sample.obs_horizon=1,2", "data.load.camera=images1",
                         "data.load.camera=images2", "~data.load.allow_pickle",
                         "data.sample.discount=0.9", "data.augment.hue=0.0",
                         "data.sample.reached_proportion=0.2", "saliency.alpha=0.3"]
    port = "{} is accepted for compatibility; the current name is {}"
    assert caplog.messages == [
        port.format("data.goal_relabeling_kwargs.reached_proportion",
                    "data.sample.reached_proportion"),
        port.format("data.saliency_alpha", "saliency.alpha"),
        *[NOTICE.format(old=key, new=FLAT_KEYS[key])  # once per key
          for key in ("obs_horizon", "camera", "allow_pickle")]]


def test_the_cli_composes_a_flat_override_and_names_the_current_key(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "bridge-torch-train"), "--cfg", "job", "data_path=/d",
                             "data.obs_horizon=2"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count(NOTICE.format(old="obs_horizon", new="sample.obs_horizon")) == 1
    data = yaml.safe_load(result.stdout)["data"]
    assert data["sample"]["obs_horizon"] == 2
    assert set(data) == {"load", "sample", "augment"}  # each setting printed once


def test_unknown_data_keys_still_get_a_did_you_mean() -> None:
    keys = dataclass_keys(TrainConfig)
    for typo, hint in (("data.sample.obs_horizn", "data.sample.obs_horizon"),
                       ("data.obs_horizn", "data.sample.obs_horizon"),
                       ("data.load.camra", "data.load.camera")):
        with pytest.raises(ConfigCompositionException) as info:
            compose_config(["data_path=/d", f"{typo}=2"])
        assert hydra_error_message(info.value, keys) == (
            f"unknown key {typo} (did you mean {hint}?)")
    with pytest.raises(ValueError, match=r"unknown config keys: data\.obs_horizn \(did you mean "
                                         r"data\.sample\.obs_horizon\?\)"):
        compose_config(["data_path=/d", "+data.obs_horizn=2"])


def write_preset(root: Path, name: str, data: dict) -> str:
    """A bc preset in ``root/algo/<name>.yaml`` that sets ``data``; its search path override."""
    (root / "algo").mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"defaults": ["bc"], "data": data})
    (root / "algo" / f"{name}.yaml").write_text("# @package _global_\n" + text)
    return f"hydra.searchpath=[file://{root}]"


def test_a_yaml_preset_with_flat_keys_is_refused_naming_the_current_key(tmp_path: Path) -> None:
    values = {"obs_horizon": 2, "camera": "images1", "goal_delta": [1, 4], "discount": 0.9}
    path = write_preset(tmp_path, "new_bc", sections_of(values))
    new = compose_config(["data_path=/d", path, "algo=new_bc"])
    assert (new.algo, new.data.sample.obs_horizon, new.data.load.camera) == ("bc", 2, "images1")
    write_preset(tmp_path, "old_bc", {"obs_horizon": 2})
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["data_path=/d", path, "algo=old_bc"])
    assert hydra_error_message(info.value, dataclass_keys(TrainConfig)) == (
        "algo/old_bc.yaml sets unknown key data.obs_horizon (did you mean "
        "data.sample.obs_horizon?)")


def flatten_run(run_dir: Path, **flat: object) -> None:
    """Rewrite a run's config.yaml and checkpoint with a flat data section, as earlier versions
    wrote them (``flat`` values replace those of the current config)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"] = {**flatten(config["data"]), **flat}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    path = runs.checkpoint_path(run_dir, 5)
    state = checkpoint.load(path)
    state["config"]["data"] = {**flatten(state["config"]["data"]), **flat}
    checkpoint.save(path, state)


def test_a_run_saved_with_flat_keys_resumes_restores_and_acts(tmp_path: Path, caplog) -> None:
    new_dir = make_run(tmp_path, "gc_bc")
    old_dir = Path(shutil.copytree(new_dir, tmp_path / "old"))  # the same weights
    flatten_run(old_dir)
    saved = yaml.safe_load((old_dir / "config.yaml").read_text())["data"]
    assert "obs_horizon" in saved and "sample" not in saved  # really the old spelling
    with caplog.at_level(logging.INFO, logger="bridge_torch.data.config_migration"):
        assert load_config(old_dir / "config.yaml") == load_config(new_dir / "config.yaml")
    assert f"{old_dir / 'config.yaml'}: flat data keys read as " in caplog.text
    assert "data.load.camera, " in caplog.text and "data.sample.obs_horizon, " in caplog.text
    old = compose_config([f"resume={old_dir}", "num_steps=9", "data.obs_horizon=2"])
    new = compose_config([f"resume={new_dir}", "num_steps=9", "data.sample.obs_horizon=2"])
    assert old == dataclasses.replace(new, resume=str(old_dir.resolve()))
    restored_old, restored_new = restore_agent(old_dir, device="cpu"), restore_agent(
        new_dir, device="cpu")
    assert restored_old.config == restored_new.config
    frame = np.full((40, 50, 3), 90, np.uint8)
    acted = [Policy.from_run(run, device="cpu").act(frame, goal_image=frame)
             for run in (old_dir, new_dir)]
    np.testing.assert_array_equal(*acted)
    state = checkpoint.load(runs.checkpoint_path(old_dir, 5))
    assert config_from_container(state["config"], source="old") == restored_new.config
    assert load_initial(old_dir, "gc_bc").path == runs.checkpoint_path(old_dir, 5)


def test_a_checkpoints_flat_camera_is_the_layout_it_was_trained_on(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bc")
    flatten_run(run_dir, camera="images1")
    state = checkpoint.load(runs.checkpoint_path(run_dir, 5))
    assert state["config"]["data"]["camera"] == "images1"
    assert DataLayout.of_checkpoint(state, "ckpt").camera == "images1"
    assert restore_agent(run_dir, device="cpu").config.data.load.camera == "images1"


def test_migrate_data_moves_flat_keys_and_leaves_the_rest() -> None:
    current = to_container(compose_config(["data_path=/d"]))["data"]
    assert migrate_data(current, source="x") is current  # nothing flat: untouched
    mixed = {**current, "obs_horizon": 4}  # a current file with a flat key added by hand
    migrated = migrate_data(mixed, source="x")
    assert migrated["sample"]["obs_horizon"] == 4 and "obs_horizon" not in migrated
    assert mixed["sample"]["obs_horizon"] == 1  # the input is not modified
    assert migrate_data({"obs_horizon": 2, "augment": {"hue": 0.0}}, source="x") == {
        "sample": {"obs_horizon": 2}, "augment": {"hue": 0.0}}
    with pytest.raises(ValueError, match=r"^run/config\.yaml: data\.sample must be a section"):
        migrate_data({"sample": 3, "obs_horizon": 2}, source="run/config.yaml")
    yaml_text = to_yaml(compose_config(["data_path=/d"]))
    assert "obs_horizon" not in yaml.safe_load(yaml_text)["data"]  # new runs save the sections


def test_training_data_needs_the_derived_load_settings() -> None:
    """The training config fills load_goals / load_saliency in; left null, opening refuses."""
    assert compose_config(["data_path=/d"]).data.load.load_goals is True  # derived: gc_bc
    with pytest.raises(ValueError, match=r"data\.load\.load_goals / load_saliency are null"):
        TrainingData.from_stores([], {}, LoadConfig(load_goals=None), SampleConfig(), "cpu")
