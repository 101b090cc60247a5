"""bridge-torch-eval: strict loading, statistics check, metrics with the baseline, plot; only
the evaluated split is opened, the train split is known by its meta.json files alone."""

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from bridge_torch.data.datasets import CACHE_ENV
from bridge_torch.data.store import open_store
from bridge_torch.offline_eval import evaluate_run, format_table, main, statistics_mismatch
from helpers import plant_out_npy

METRICS = ("mse", "actor_loss", "baseline_mse", "transitions")  # equal on the same val split


@pytest.fixture
def bc_run(tiny_run: Callable[[str], Path]) -> Path:
    return tiny_run("bc")


@pytest.mark.slow
def test_json_metrics_baseline_and_plot(bc_run: Path, tmp_path: Path) -> None:
    main([str(bc_run), "--device", "cpu", "--json", str(tmp_path / "m.json"),
          "--plot", str(tmp_path / "a.png"), "--loss-plot", str(tmp_path / "loss.png")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["step"] == 4 and metrics["algo"] == "bc"
    assert {"mse", "actor_loss", "baseline_mse", "transitions"} <= set(metrics)
    assert metrics["baseline_mse"] > 0 and metrics["transitions"] > 0
    assert (tmp_path / "a.png").stat().st_size > 1000
    with Image.open(tmp_path / "a.png") as actions, Image.open(tmp_path / "loss.png") as losses:
        # 7 action panels in rows of 2; NLL, validation MSE and LR panels in one row
        assert actions.size == (1000, 1050) and losses.size == (1380, 410)
    earlier = evaluate_run(bc_run, checkpoint=2)
    assert earlier["step"] == 2 and earlier["mse"] != metrics["mse"]
    assert "bc" in format_table([metrics])
    again = evaluate_run(bc_run)
    assert again["mse"] == pytest.approx(metrics["mse"])  # deterministic pass


@pytest.mark.slow
def test_tampered_checkpoint_is_refused_strictly(bc_run: Path, tmp_path: Path) -> None:
    state = torch.load(bc_run / "ckpt_4.pt", weights_only=True)
    state["model"]["extra.weight"] = torch.zeros(1)
    state["ema"] = None
    torch.save(state, tmp_path / "ckpt_4.pt")
    with pytest.raises(ValueError, match=r"extra\.weight"):
        evaluate_run(bc_run, checkpoint=tmp_path / "ckpt_4.pt")


def test_statistics_mismatch_names_the_keys() -> None:
    stats = {"actions": {"mean": [0.0, 1.0], "std": [1.0, 1.0]},
             "proprio": {"mean": [0.0], "std": [1.0]}}
    other = json.loads(json.dumps(stats))
    assert statistics_mismatch(stats, other) == []
    other["actions"]["std"][1] = 2.0
    other["proprio"]["mean"] = [0.0, 0.0]
    assert statistics_mismatch(stats, other) == ["actions.std", "proprio.mean"]


@pytest.mark.slow
def test_other_data_is_refused_unless_allowed(bc_run: Path, raw_tree: Path,
                                              tmp_path: Path) -> None:
    from bridge_torch.data.sources.convert import ConvertOptions, convert

    other = tmp_path / "other"
    convert(ConvertOptions(raw_tree, other, im_size=32, train_proportion=0.5, seed=7,
                           format="packed"), num_workers=1, progress=False)
    with pytest.raises(ValueError, match="statistics differ"):
        evaluate_run(bc_run, data_path=str(other))
    result = evaluate_run(bc_run, data_path=str(other), allow_stats_mismatch=True)
    assert result["transitions"] > 0


def copy_data(converted_tree: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(converted_tree, tmp_path / "data"))


def train_splits(data: Path) -> list[Path]:
    return sorted(path for path in data.rglob("train") if path.is_dir())


@pytest.mark.slow
def test_a_copy_without_its_train_split_evaluates_its_val_split_the_same(
        bc_run: Path, converted_tree: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    data = copy_data(converted_tree, tmp_path)
    with caplog.at_level(logging.WARNING, logger="bridge_torch.offline_eval"):
        before = evaluate_run(bc_run, data_path=str(data))
    assert "statistics check skipped" not in caplog.text  # the train split was checked
    for split in train_splits(data):
        shutil.rmtree(split)
    out = subprocess.run([sys.executable, "-m", "bridge_torch.offline_eval", str(bc_run),
                          "--device", "cpu", "--data_path", str(data),
                          "--json", str(tmp_path / "m.json")],
                         capture_output=True, text=True, check=True)
    after = json.loads((tmp_path / "m.json").read_text())
    assert {k: after[k] for k in METRICS} == {k: before[k] for k in METRICS}
    assert after["split"] == "val" and before["transitions"] > 0
    skipped = [line for line in out.stderr.splitlines() if "statistics check skipped" in line]
    assert len(skipped) == 1 and "has no train split; evaluating with the statistics of " \
        f"{bc_run / 'ckpt_4.pt'}" in skipped[0]


@pytest.mark.slow
def test_train_statistics_edited_in_meta_json_are_a_mismatch(bc_run: Path, converted_tree: Path,
                                                             tmp_path: Path) -> None:
    data = copy_data(converted_tree, tmp_path)
    expected = evaluate_run(bc_run, data_path=str(data))
    store = train_splits(data)[0] / "packed"
    meta = json.loads((store / "meta.json").read_text())
    meta["stats"]["proprio"]["std"][0] *= 1.01
    (store / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as info:
        evaluate_run(bc_run, data_path=str(data))
    assert str(info.value).startswith(f"{bc_run / 'ckpt_4.pt'}: the dataset's statistics differ "
                                      "from the checkpoint's (proprio.std)")
    assert "Pass --allow-stats-mismatch" in str(info.value)
    allowed = evaluate_run(bc_run, data_path=str(data), allow_stats_mismatch=True)
    assert {k: allowed[k] for k in METRICS} == {k: expected[k] for k in METRICS}
    with pytest.raises(ValueError, match="do not describe the data"):
        open_store(store)  # so evaluation never opened the train split's arrays


@pytest.mark.slow
def test_a_legacy_train_split_is_neither_packed_nor_unpickled(
        bc_run: Path, converted_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data = copy_data(converted_tree, tmp_path)
    marker = tmp_path / "payload_ran"
    for split in train_splits(data):  # out.npy only, and unpickling it would run code
        shutil.rmtree(split / "packed")
        plant_out_npy(split / "out.npy", marker)
    with caplog.at_level(logging.WARNING, logger="bridge_torch.offline_eval"):
        result = evaluate_run(bc_run, data_path=str(data), allow_pickle=True)
    assert not marker.exists()
    assert not any(data.rglob("train/packed")) and not (tmp_path / "cache").exists()
    assert "out.npy has no packed store (reading it would unpickle it)" in caplog.text
    reference = evaluate_run(bc_run)
    assert {k: result[k] for k in METRICS} == {k: reference[k] for k in METRICS}


@pytest.mark.slow
def test_split_train_evaluates_the_train_split(bc_run: Path, converted_tree: Path,
                                               tmp_path: Path) -> None:
    main([str(bc_run), "--device", "cpu", "--split", "train", "--json", str(tmp_path / "m.json")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    train = sum(json.loads(meta.read_text())["num_transitions"]
                for meta in converted_tree.rglob("train/packed/meta.json"))
    assert metrics["split"] == "train" and metrics["transitions"] == train
    assert evaluate_run(bc_run)["transitions"] < train
    with pytest.raises(SystemExit):
        main([str(bc_run), "--split", "test"])
