"""plots.py: what each figure shows (panels, labels, titles, data), not merely that it renders."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge_torch.plots import (
    DPI,
    LOSS_KINDS,
    STEP_LABEL,
    action_figure,
    loss_figure,
    preview_figure,
    save_png,
)
from bridge_torch.train.config import WandbConfig
from bridge_torch.train.metrics_log import MetricsLogger, read_metrics

NLL_TITLE, NLL_LABEL = LOSS_KINDS["actor_loss"]
DDPM_TITLE, DDPM_LABEL = LOSS_KINDS["ddpm_loss"]


def events(kind: str, losses: list[float], val: float, lr0: float = 1e-3) -> list[dict]:
    """metrics.jsonl events of a run: a training row every 10 steps, one validation at the end."""
    rows = [{"step": 10 * (i + 1), "training/loss": loss, f"training/{kind}": loss,
             "training/lr": lr0 / (i + 1)} for i, loss in enumerate(losses)]
    return [*rows, {"step": 10 * len(losses), f"validation/{kind}": val,
                    "validation/mse": val / 2}]


def suptitle(figure) -> str:
    """The figure's (or subfigure's) suptitle; ``get_suptitle`` needs matplotlib 3.8."""
    (text,) = figure.texts
    return text.get_text()


def data_of(ax, label: str) -> tuple[list, list]:
    (line,) = [line for line in ax.lines if line.get_label() == label]
    return list(line.get_xdata()), list(line.get_ydata())


def test_loss_kinds_never_share_an_axis() -> None:
    runs = {"bc": events("actor_loss", [7.5, 7.1, 6.9], 7.0),
            "gc_bc": events("actor_loss", [7.4, 7.0, 6.8], 6.9),
            "ddpm": events("ddpm_loss", [1.2, 0.9, 0.8, 0.7], 0.75, lr0=3e-4)}
    figure = loss_figure(runs, title="three runs")
    nll, ddpm, mse, lr = figure.axes
    assert [ax.get_title() for ax in figure.axes] == [
        NLL_TITLE, DDPM_TITLE, "validation action MSE", "learning rate"]
    assert [ax.get_xlabel() for ax in figure.axes] == [STEP_LABEL] * 4
    assert (nll.get_ylabel(), ddpm.get_ylabel()) == (NLL_LABEL, DDPM_LABEL)
    assert suptitle(figure) == "three runs"
    assert {line.get_label() for line in nll.lines} == {"bc train", "bc val", "gc_bc train",
                                                       "gc_bc val"}
    assert {line.get_label() for line in ddpm.lines} == {"ddpm train", "ddpm val"}
    assert data_of(nll, "bc train") == ([10, 20, 30], [7.5, 7.1, 6.9])
    assert data_of(ddpm, "ddpm train") == ([10, 20, 30, 40], [1.2, 0.9, 0.8, 0.7])
    assert data_of(ddpm, "ddpm val") == ([40], [0.75])
    (val_line,) = [line for line in ddpm.lines if line.get_label() == "ddpm val"]
    assert val_line.get_marker() == "o" and val_line.get_linestyle() == "None"  # points only
    assert data_of(mse, "ddpm") == ([40], [0.375]) and data_of(mse, "bc") == ([30], [3.5])
    assert data_of(lr, "ddpm")[1] == pytest.approx([3e-4, 1.5e-4, 1e-4, 7.5e-5])
    assert all(ax.get_xlim() == nll.get_xlim() for ax in figure.axes)  # one step range
    assert all(ax.get_legend() is not None and ax.xaxis.get_gridlines()[0].get_visible()
               for ax in figure.axes)
    colors = [{line.get_label(): line.get_color() for line in ax.lines} for ax in (ddpm, lr)]
    assert colors[0]["ddpm train"] == colors[0]["ddpm val"] == colors[1]["ddpm"]  # one per run


def test_one_run_from_its_metrics_file(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, WandbConfig(mode="disabled"), enabled=True, config={})
    for row in events("actor_loss", [7.5, 7.1], 7.0):
        logger.log(row.pop("step"), row)
    logger.close()
    figure = loss_figure({"run": read_metrics(tmp_path)})
    assert [ax.get_title() for ax in figure.axes] == [NLL_TITLE, "validation action MSE",
                                                      "learning rate"]
    path = save_png(figure, tmp_path / "plots" / "loss.png")
    with Image.open(path) as image:
        expected = tuple(round(v) for v in figure.get_size_inches() * DPI)
        assert image.format == "PNG" and image.size == expected == (1380, 410)
    assert list((tmp_path / "plots").iterdir()) == [path]  # no temporary file left behind


def test_a_run_without_validation_or_lr_gets_only_its_loss_panel() -> None:
    figure = loss_figure({"old": [{"step": 1, "training/loss": 2.0},
                                  {"step": 2, "training/loss": 1.5}]})
    (ax,) = figure.axes
    assert ax.get_title() == "loss" and data_of(ax, "old train") == ([1, 2], [2.0, 1.5])


def test_action_panels_carry_each_dimension_mse() -> None:
    rng = np.random.default_rng(0)
    true = rng.normal(size=(30, 7))
    predicted = true + rng.normal(scale=np.linspace(0.01, 1, 7), size=(30, 7))
    names = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
    figure = action_figure(true, predicted, names=names, title="run_x · ckpt_40.pt (step 40)",
                           boundaries=[9.5, 19.5])
    assert len(figure.axes) == 7 and "ckpt_40.pt (step 40)" in suptitle(figure)
    for d, ax in enumerate(figure.axes):
        name, mse = re.fullmatch(r"(\S+)\s+MSE (\S+)", ax.get_title()).groups()
        assert name == names[d] and ax.get_ylabel() == names[d]
        assert float(mse) == pytest.approx(np.mean((predicted[:, d] - true[:, d]) ** 2), rel=1e-3)
        np.testing.assert_array_equal(data_of(ax, "true")[1], true[:, d])
        np.testing.assert_array_equal(data_of(ax, "predicted")[1], predicted[:, d])
        assert sorted(line.get_xdata()[0] for line in ax.lines[2:]) == [9.5, 19.5]
        assert ax.get_xlabel() == "val transition"


def test_preview_labels_columns_rows_and_instructions() -> None:
    rng = np.random.default_rng(1)
    originals = rng.integers(0, 256, (2, 4, 6, 6, 3), dtype=np.uint8)
    augmented = 255 - originals
    figure = preview_figure(originals, augmented, ["stack the cups", "wipe"], suptitle="data")
    assert len(figure.axes) == 16
    blocks = figure.subfigs
    assert [suptitle(b) for b in blocks] == ["stack the cups", "wipe"]
    for b, block in enumerate(blocks):
        axes = np.array(block.axes).reshape(2, 4)
        assert [ax.get_title() for ax in axes[0]] == ["first", "middle", "last", "goal"]
        assert [ax.get_ylabel() for ax in axes[:, 0]] == ["original", "augmented"]
        for c in range(4):
            np.testing.assert_array_equal(axes[0, c].images[0].get_array(), originals[b, c])
            np.testing.assert_array_equal(axes[1, c].images[0].get_array(), augmented[b, c])


def test_plotting_leaves_pyplot_and_its_backend_alone(tmp_path: Path) -> None:
    code = ("import sys, numpy as np\n"
            "import bridge_torch.data.inspect, bridge_torch.demo, bridge_torch.offline_eval\n"
            "from bridge_torch.plots import action_figure, save_png\n"
            "f = action_figure(np.zeros((3, 2)), np.ones((3, 2)), names=['a', 'b'], title='t')\n"
            f"save_png(f, {str(tmp_path / 'a.png')!r})\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "a.png").stat().st_size > 1000
