"""Shared fixtures: one small synthetic raw BridgeData tree and its conversion, built once.

``raw_tree``: 2 tasks x 2 dated folders (after the latency cutoff) x 5 trajectories of 8-12
frames, 240x320 JPEGs (one camera), lang.txt and saliency_map.pkl; convert it with ``--depth 5``.

``converted_tree``: ``raw_tree`` converted in-process with ``--format both --saliency --im_size 32
--train_proportion 0.8 --seed 0``, i.e. ``<root>/synthetic_lab/tabletop/<task>/00/{train,val}/
{out.npy, packed/}`` with 8 train and 2 val trajectories per task.
Both fixtures are session-scoped: treat them as read-only (copy before modifying).

CPU threads: the suite and every training process it starts use ``BRIDGE_TORCH_THREADS``
threads, 1 unless set: a fixed count keeps runs that are compared with each other on the same
count, and one thread per process does not collapse when the machine is busy (cpu_threads.py).
"""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge_torch.cpu_threads import ENV_VAR, configure_cpu_threads
from bridge_torch.data.sources.convert import ConvertOptions, convert
from bridge_torch.data.sources.synthetic import generate_raw_dataset

os.environ.setdefault(ENV_VAR, "1")  # inherited by the CLI subprocesses the tests start
configure_cpu_threads("cpu")

FIXTURE_IM_SIZE = 32  # side of the converted frames of ``converted_tree``


@pytest.fixture(scope="session")
def raw_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a small synthetic raw tree (see the module docstring)."""
    return generate_raw_dataset(tmp_path_factory.mktemp("raw"), seed=0, num_tasks=2,
                                dates_per_task=2, trajs_per_date=5, min_len=8, max_len=12,
                                image_hw=(240, 320), with_saliency=True)


@pytest.fixture(scope="session")
def converted_tree(raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of ``raw_tree`` converted to out.npy and packed stores (see the module docstring)."""
    out = tmp_path_factory.mktemp("converted")
    options = ConvertOptions(raw_tree, out, depth=5, train_proportion=0.8,
                             im_size=FIXTURE_IM_SIZE, saliency=True, seed=0, format="both")
    reports = convert(options, num_workers=1, progress=False)
    assert all(r.status == "converted" for r in reports), reports
    return out


@pytest.fixture(scope="session")
def tiny_run(converted_tree: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Callable[[str], Path]:
    """``tiny_run(algo)``: a real run of 4 updates (checkpoints at 2 and 4) on
    ``converted_tree`` through the ``bridge-torch-train`` CLI, trained once per algo."""
    runs: dict[str, Path] = {}

    def make(algo: str) -> Path:
        if algo not in runs:
            save = tmp_path_factory.mktemp(f"runs_{algo}")
            out = subprocess.run(
                [sys.executable, "-m", "bridge_torch.train", f"algo={algo}",
                 f"data_path={converted_tree}", f"save_dir={save}", "num_steps=4",
                 "batch_size=8", "val_batch_size=16", "device=cpu", "log_interval=2",
                 "eval_interval=4", "save_interval=2", "scheduler.warmup_steps=1",
                 "scheduler.decay_steps=4", "encoder.name=resnetv1-mini-bridge",
                 "encoder.num_filters=8", "model.hidden_dims=[16]", "model.score_width=16"],
                capture_output=True, text=True, check=True)
            runs[algo] = Path(out.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
        return runs[algo]

    return make
