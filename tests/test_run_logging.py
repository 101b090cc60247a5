"""Run ids, atomic run files and the metrics.jsonl stream."""

import importlib.util
import json
import re
import sys

import pytest

from bridge_torch.atomic import write_json_atomic
from bridge_torch.train.config import WandbConfig
from bridge_torch.train.metrics_log import MetricsLogger, read_metrics
from bridge_torch.train.runs import make_run_id


def test_run_ids_are_unique_and_timestamped():
    ids = {make_run_id("gc_bc") for _ in range(200)}
    assert len(ids) == 200  # microseconds + random suffix: parallel launches never collide
    for run_id in ids:
        assert re.fullmatch(r"gc_bc_\d{8}_\d{6}_\d{6}_[0-9a-f]{4}", run_id)


def test_write_json_atomic_leaves_only_the_final_file(tmp_path):
    write_json_atomic(tmp_path / "stats.json", {"a": [1.5, 2]})
    assert json.loads((tmp_path / "stats.json").read_text()) == {"a": [1.5, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_metrics_logger_writes_one_json_object_per_event(tmp_path):
    logger = MetricsLogger(tmp_path, WandbConfig(), enabled=True, config={})
    logger.log(10, {"training/loss": 1.5, "training/lr": 3e-4})
    logger.log(10, {"validation/mse": 0.25})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()  # flushed at every event
    logger.close()
    assert [json.loads(line) for line in lines] == [
        {"step": 10, "training/loss": 1.5, "training/lr": 3e-4},
        {"step": 10, "validation/mse": 0.25},
    ]


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path, WandbConfig(mode="online"), enabled=False, config={})
    logger.log(1, {"training/loss": 1.0})
    logger.close()
    assert list(tmp_path.iterdir()) == []


def test_resume_drops_events_after_the_checkpoint(tmp_path):
    logger = MetricsLogger(tmp_path, WandbConfig(), enabled=True, config={})
    for step in (1, 2, 3, 4):
        logger.log(step, {"training/loss": float(step)})
    logger.close()
    resumed = MetricsLogger(tmp_path, WandbConfig(), enabled=True, config={}, resume_step=2)
    resumed.log(3, {"training/loss": 30.0})
    resumed.close()
    assert [(e["step"], e["training/loss"]) for e in read_metrics(tmp_path)] == [
        (1, 1.0), (2, 2.0), (3, 30.0)
    ]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_the_extra_says_how_to_install(tmp_path):
    with pytest.raises(ImportError, match=r"pip install bridge-torch\[wandb\]"):
        MetricsLogger(tmp_path, WandbConfig(mode="offline"), enabled=True, config={})


class FakeWandbRun:
    """What W&B's ``wandb.init`` returns, recording what the logger sends."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict, int | None]] = []
        self.finished = False

    def log(self, payload: dict, step: int | None = None) -> None:
        self.logged.append((payload, step))

    def finish(self) -> None:
        self.finished = True


def test_wandb_receives_the_metrics_and_the_loss_curve_figure(tmp_path, monkeypatch):
    """A stand-in ``wandb`` module: W&B gets every event and, at the end, the loss-curve figure
    (the same one ``bridge-torch-eval --loss-plot`` draws), as an image."""
    from PIL import Image

    run = FakeWandbRun()
    fake = type(sys)("wandb")
    fake.init = lambda **kwargs: run
    fake.Image = lambda image: ("wandb.Image", image)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = MetricsLogger(tmp_path, WandbConfig(mode="offline"), enabled=True, config={})
    for step, loss in ((1, 7.5), (2, 7.1)):
        logger.log(step, {"training/loss": loss, "training/actor_loss": loss,
                          "training/lr": 1e-4 * step})
    logger.close()
    assert run.logged[:2] == [({"training/loss": 7.5, "training/actor_loss": 7.5,
                                "training/lr": 1e-4}, 1),
                              ({"training/loss": 7.1, "training/actor_loss": 7.1,
                                "training/lr": 2e-4}, 2)]
    (figure, _), = run.logged[2:]
    kind, image = figure["figures/loss_curves"]
    assert kind == "wandb.Image" and isinstance(image, Image.Image) and image.mode == "RGB"
    assert image.width > 400 and image.height > 200 and run.finished
