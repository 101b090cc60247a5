"""bridge-torch-eval: strict loading, statistics check, metrics with the baseline, plot."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from bridge_torch.offline_eval import evaluate_run, format_table, main, statistics_mismatch


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
