"""Figures of runs and datasets: loss curves, predicted vs true actions, the preview grid.


Figures are ``matplotlib.figure.Figure`` objects bound to an Agg canvas, never made through
pyplot: drawing changes no global state (pyplot's backend and figure registry), works headless,
and a figure is freed like any other object. Builders return the figure so tests can inspect it
and callers can hand it on (``save_png`` writes it).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from bridge_torch.atomic import write_atomic

DPI = 100
STEP_LABEL = "update step"
# Loss metric key -> (panel title, y label). Each kind gets its own axis: a Gaussian NLL and a
# DDPM ε-MSE are different quantities, and their sizes say nothing about which policy is better.
LOSS_KINDS = {
    "actor_loss": ("Gaussian NLL (BC, GC-BC)", "−log π(a | o, g)"),
    "ddpm_loss": ("DDPM ε-loss (GC-DDPM-BC)", "‖ε̂ − ε‖², summed over action dims"),
}
FALLBACK_LOSS = ("loss", "training loss")
PREVIEW_COLUMNS = ("first", "middle", "last", "goal")
PREVIEW_TILE_IN = 1.6  # inches per preview tile


def new_figure(width: float, height: float) -> Figure:
    """An empty figure (inches) on its own Agg canvas, with constrained layout."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG of exactly its size in pixels; readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI))
    return path


def to_image(figure: Figure) -> Image.Image:
    """The figure rendered as an RGB PIL image (what W&B logs), without touching the disk."""
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())


def _series(events: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the events that carry ``key``."""
    rows = [e for e in events if key in e]
    return [e["step"] for e in rows], [float(e[key]) for e in rows]


def loss_kind(events: Sequence[dict[str, Any]]) -> str:
    """Metric key of the run's own loss (``actor_loss``, ``ddpm_loss``), else ``loss``."""
    keys = {key for event in events for key in event}
    return next((kind for kind in LOSS_KINDS if f"training/{kind}" in keys), "loss")


def loss_figure(runs: dict[str, Sequence[dict[str, Any]]], title: str = "training curves"
                ) -> Figure:
    """One panel per loss kind (training line, validation points), validation action MSE (the
    one number comparable across kinds) and the learning rate; one colour per run throughout.

    ``runs``: label -> the run's ``metrics.jsonl`` events (``run_logging.read_metrics``).
    """
    colors = {label: f"C{i}" for i, label in enumerate(runs)}
    kinds: dict[str, list[str]] = {}
    for label, events in runs.items():
        kinds.setdefault(loss_kind(events), []).append(label)
    extra = [key for key in ("validation/mse", "training/lr")
             if any(_series(events, key)[0] for events in runs.values())]
    figure, axes = _panel_figure(len(kinds) + len(extra))
    for ax, (kind, labels) in zip(axes, kinds.items(), strict=False):
        _loss_panel(ax, kind, {label: runs[label] for label in labels}, colors)
    for ax, key in zip(axes[len(kinds):], extra, strict=True):
        _metric_panel(ax, key, runs, colors)
    last = max((e["step"] for events in runs.values() for e in events), default=1)
    for ax in axes:  # one step range on every panel, also where there is a single eval
        ax.set_xlim(-0.02 * last, 1.02 * last)
    figure.suptitle(title)
    return figure


def _panel_figure(panels: int, columns: int | None = None,
                  size: tuple[float, float] = (4.6, 3.6)) -> tuple[Figure, list[Any]]:
    """A figure of ``panels`` axes of ``size`` inches in rows of ``columns`` (default: one row
    up to 3, else rows of 2); unused grid cells are removed so ``figure.axes`` holds only panels."""
    columns = columns or (panels if panels <= 3 else 2)
    rows = -(-panels // columns)
    figure = new_figure(size[0] * columns, size[1] * rows + 0.5)
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for unused in axes[panels:]:
        figure.delaxes(unused)
    return figure, axes[:panels]


def _loss_panel(ax: Any, kind: str, runs: dict[str, Sequence[dict[str, Any]]],
                colors: dict[str, str]) -> None:
    """Training loss as lines, validation loss of the same kind as points."""
    panel_title, ylabel = LOSS_KINDS.get(kind, FALLBACK_LOSS)
    for label, events in runs.items():
        ax.plot(*_series(events, f"training/{kind}"), color=colors[label], label=f"{label} train")
        steps, values = _series(events, f"validation/{kind}")
        if steps:
            ax.plot(steps, values, "o", color=colors[label], markerfacecolor="white",
                    label=f"{label} val")
    _finish(ax, panel_title, ylabel)


def _metric_panel(ax: Any, key: str, runs: dict[str, Sequence[dict[str, Any]]],
                  colors: dict[str, str]) -> None:
    """Validation action MSE (points joined) or the learning rate (line), every run."""
    is_mse = key == "validation/mse"
    for label, events in runs.items():
        steps, values = _series(events, key)
        if steps:
            ax.plot(steps, values, "o-" if is_mse else "-", color=colors[label], label=label)
    if is_mse:
        _finish(ax, "validation action MSE", "squared error, summed (normalised units)")
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        _finish(ax, "learning rate", "learning rate")


def _finish(ax: Any, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.35)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def action_figure(true: np.ndarray, predicted: np.ndarray, *, names: Sequence[str], title: str,
                  boundaries: Sequence[float] = (), columns: int = 2) -> Figure:
    """One panel per action dimension: true and predicted over consecutive transitions, the
    dimension's MSE over them in the panel title, trajectory ends as vertical lines."""
    true, predicted = np.asarray(true, np.float64), np.asarray(predicted, np.float64)
    figure, axes = _panel_figure(true.shape[1], columns, size=(5.0, 2.5))
    mse = ((predicted - true) ** 2).mean(axis=0)
    steps = np.arange(len(true))
    for d, ax in enumerate(axes):
        ax.plot(steps, true[:, d], color="C0", label="true")
        ax.plot(steps, predicted[:, d], color="C3", linestyle="--", label="predicted")
        for boundary in boundaries:
            ax.axvline(boundary, color="0.6", linewidth=0.8)
        ax.set_title(f"{names[d]}   MSE {mse[d]:.4g}")
        ax.set_xlabel("val transition")
        ax.set_ylabel(names[d])
        ax.grid(True, alpha=0.35)
    axes[0].legend(fontsize="small")
    figure.suptitle(title)
    return figure


def preview_figure(originals: Sequence[np.ndarray], augmented: Sequence[np.ndarray] | None,
                   titles: Sequence[str], suptitle: str = "") -> Figure:
    """Per trajectory a block titled with its instruction: the row of [first, middle, last,
    goal] frames and, if given, the same row augmented; columns and rows are labelled.

    ``originals`` / ``augmented``: per trajectory a (4, H, W, 3) uint8 array.
    """
    per_block = 1 if augmented is None else 2
    height = len(originals) * (per_block * PREVIEW_TILE_IN + 0.35) + (0.4 if suptitle else 0)
    figure = new_figure(len(PREVIEW_COLUMNS) * PREVIEW_TILE_IN + 0.4, height)
    blocks = figure.subfigures(len(originals), 1, squeeze=False)[:, 0]
    for i, block in enumerate(blocks):
        shown = [("original", originals[i])]
        if augmented is not None:
            shown.append(("augmented", augmented[i]))
        axes = block.subplots(per_block, len(PREVIEW_COLUMNS), squeeze=False)
        for r, (label, tiles) in enumerate(shown):
            for c, ax in enumerate(axes[r]):
                ax.imshow(tiles[c], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(PREVIEW_COLUMNS[c], fontsize="small")
            axes[r, 0].set_ylabel(label)
        block.suptitle(titles[i], fontsize="medium")
    if suptitle:
        figure.suptitle(suptitle)
    return figure
