"""Shared fixtures: one small synthetic raw tree and its conversion, built once per session."""

from pathlib import Path

import pytest

from bridge_torch.data.convert import ConvertOptions, convert
from bridge_torch.data.synthetic import SyntheticSpec, generate_raw_dataset

FIXTURE_IM_SIZE = 32  # converted image side used by the shared fixtures


@pytest.fixture(scope="session")
def raw_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 tasks x 2 dated folders x 5 trajectories, 240x320 JPEGs, language and saliency."""
    spec = SyntheticSpec(seed=0, num_tasks=2, dates_per_task=2, trajs_per_date=5,
                         min_frames=8, max_frames=12, image_hw=(240, 320), with_saliency=True)
    return generate_raw_dataset(tmp_path_factory.mktemp("raw"), spec)


@pytest.fixture(scope="session")
def converted_tree(raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``raw_tree`` converted with --format both --saliency at 32 px (train 0.8)."""
    out = tmp_path_factory.mktemp("converted")
    options = ConvertOptions(raw_tree, out, depth=5, train_proportion=0.8,
                             im_size=FIXTURE_IM_SIZE, saliency=True, format="both")
    convert(options, num_workers=1, progress=False)
    return out
