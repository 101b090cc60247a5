"""The preview grid of ``bridge-torch-inspect``: a few trajectories' key frames, as stored and
as the training augmentation sees them."""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from bridge_torch.batch import GOALS, IMAGE, OBSERVATIONS
from bridge_torch.data.augment import AugmentConfig, Augmenter
from bridge_torch.plots import preview_figure, save_png


class PreviewRow(list):
    """[first, middle, last] uint8 (H, W, 3) frames of a trajectory (a plain list to readers)
    and ``instruction``, the row's title in the preview: its first instruction, else its task."""

    def __init__(self, frames: list[np.ndarray], language: list[str], task: str) -> None:
        super().__init__(frames)
        self.instruction = language[0] if language else f"{task} (no instruction)"


class PreviewPicker:
    """Chooses preview trajectories spread over the sources, keeping only their 3 key frames."""

    def __init__(self, count: int, num_sources: int) -> None:
        # rows per source: evenly spaced over the sources (several per source if there are few)
        spots = ((np.arange(count) + 0.5) * num_sources / max(count, 1)).astype(np.int64)
        self.allot = np.bincount(spots, minlength=num_sources).tolist()
        self.rows: list[PreviewRow] = []

    def indices(self, source_index: int, num_trajectories: int) -> list[int]:
        """Trajectories of source ``source_index`` to show, evenly spaced within it."""
        take = min(self.allot[source_index], num_trajectories)
        return sorted({int((k + 0.5) * num_trajectories / take) for k in range(take)})

    def add(self, frames: Any, language: list[str], task: str) -> None:
        """``frames``: (T+1, H, W, 3) array-like (a memmap slice is read for 3 frames only)."""
        last = len(frames) - 1
        self.rows.append(PreviewRow([np.asarray(frames[i]) for i in (0, last // 2, last)],
                                    language, task))


def preview(rows: list[PreviewRow], *, augment: bool = True, seed: int = 0,
            title: str = "") -> Figure:
    """Per trajectory, titled with its instruction, a row [first, middle, last, goal (= last)]
    and, with ``augment``, the same row through the training :class:`Augmenter`."""
    if not rows:
        raise ValueError("preview: no trajectories to show")
    height, width = rows[0][0].shape[:2]
    tiles = np.stack([[_resize(f, height, width) for f in (*row, row[-1])] for row in rows])
    augmented = None
    if augment:
        batch = {OBSERVATIONS: {IMAGE: torch.from_numpy(tiles[:, :3].copy())},
                 GOALS: {IMAGE: torch.from_numpy(tiles[:, 3].copy())}}
        out = Augmenter(AugmentConfig(), seed=seed)(batch)
        augmented = torch.cat([out[OBSERVATIONS][IMAGE], out[GOALS][IMAGE][:, None]], 1).numpy()
    return preview_figure(tiles, augmented, [row.instruction for row in rows], suptitle=title)


def write_preview(rows: list[PreviewRow], out_path: Path, *, augment: bool = True,
                  seed: int = 0, title: str = "") -> Path:
    """PNG of :func:`preview`, written atomically."""
    return save_png(preview(rows, augment=augment, seed=seed, title=title), out_path)


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS))
