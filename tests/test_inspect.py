"""Tests of data/inspect.py (``bridge-torch-inspect``): summaries, detection, JSON and preview."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bridge_torch.data.actions import compute_statistics
from bridge_torch.data.inspect import find_sources, format_summary, main, summarize
from bridge_torch.data.preview import preview
from bridge_torch.data.sources.synthetic import generate_raw_dataset
from bridge_torch.data.store import Trajectory, write_store
from bridge_torch.plots import DPI

SIZE = 8


def trajectory(length, seed, *, saliency_frames=None, language=("stack the cups",)):
    """Saliency: None, or the indices of the frames whose map is non-zero."""
    rng = np.random.default_rng(seed)
    maps = None
    if saliency_frames is not None:
        maps = np.zeros((length + 1, SIZE, SIZE), np.float32)
        maps[saliency_frames, 2, 3] = 0.5
    return Trajectory(frames={"images0": rng.integers(0, 256, (length + 1, SIZE, SIZE, 3),
                                                      dtype=np.uint8)},
                      proprio=rng.normal(size=(length + 1, 7)).astype(np.float32),
                      actions=rng.uniform(size=(length, 7)).astype(np.float32),
                      language=list(language), saliency=maps, source=f"t{seed}")


@pytest.fixture
def packed_tree(tmp_path):
    """task_a/{train,val}/packed and task_b/train/packed; 4 train + 1 val trajectories."""
    root = tmp_path / "data"
    train_a = [trajectory(3, 0, saliency_frames=[0, 2]), trajectory(5, 1, language=[])]
    train_b = [trajectory(5, 2), trajectory(9, 3, language=["wipe", "clean the table"])]
    write_store(root / "task_a" / "train" / "packed", train_a, progress=False)
    write_store(root / "task_a" / "val" / "packed", [trajectory(2, 4)], progress=False)
    write_store(root / "task_b" / "train" / "packed", train_b, progress=False)
    return root, train_a + train_b


def test_summary_of_packed_stores(packed_tree):
    root, train = packed_tree
    summary, rows = summarize(root)
    assert rows == []
    assert summary["format"] == ["packed"] and summary["num_tasks"] == 2
    assert summary["splits"] == {"train": {"trajectories": 4, "transitions": 22},
                                 "val": {"trajectories": 1, "transitions": 2}}
    assert (summary["num_trajectories"], summary["num_transitions"]) == (5, 24)
    assert summary["num_frames"] == 29
    assert summary["length"]["min"] == 2 and summary["length"]["max"] == 9
    hist = summary["length"]["histogram"]
    assert sum(hist["counts"]) == 5 and hist["bin_edges"][0] == 2
    assert summary["image_sizes"] == [[SIZE, SIZE, 5]] and summary["cameras"] == {"images0": 5}
    assert summary["saliency"]["trajectories"] == 1 and summary["saliency"]["nonzero_frames"] == 2
    assert summary["saliency"]["frame_fraction"] == pytest.approx(2 / 29)
    assert summary["language"]["distinct"] == 3
    assert summary["language"]["labelled_trajectories"] == 4
    assert summary["language"]["instructions"][0] == ["stack the cups", 3]
    everything = [*train, trajectory(2, 4)]
    actions = compute_statistics(np.concatenate([t.actions for t in everything]))
    np.testing.assert_allclose(summary["stats"]["actions"]["mean"], actions["mean"], rtol=1e-9)
    assert summary["stats"]["proprio"]["count"] == 29
    text = format_summary(summary)
    assert "transitions: 24" in text and "8x8 (5 traj)" in text and "actions_relabeled" in text


def test_json_output(packed_tree, capsys):
    root, _ = packed_tree
    main([str(root), "--json"])
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["num_transitions"] == 24 and parsed["stats"]["actions"]["count"] == 24


@pytest.mark.parametrize("augment, rows", [(True, 4), (False, 2)])
def test_preview_png(packed_tree, tmp_path, augment, rows):
    root, _ = packed_tree
    out = tmp_path / "grid.png"
    main([str(root), "--preview", str(out), "--preview-trajectories", "2",
          *([] if augment else ["--no-augment"])])
    _, picked = summarize(root, preview_trajectories=2)
    figure = preview(picked, augment=augment, title=f"{root}: 2 trajectories")
    with Image.open(out) as image:
        assert image.size == tuple(round(v) for v in figure.get_size_inches() * DPI)
    assert len(figure.axes) == 4 * rows
    # block 0 is the middle trajectory of task_a's first store, [first, middle, last, goal];
    # block 1 is task_b's second one, which has two instructions (the first is its title)
    assert [block.texts[0].get_text() for block in figure.subfigs] == [
        "task_a (no instruction)", "wipe"]
    assert [ax.get_title() for ax in figure.axes[:4]] == ["first", "middle", "last", "goal"]
    assert [ax.get_ylabel() for ax in figure.axes[::4]] == \
        ["original", "augmented"][:rows // 2] * 2
    frames = trajectory(5, 1).frames["images0"]
    for ax, i in zip(figure.axes[:4], (0, 2, 5, 5), strict=True):
        np.testing.assert_array_equal(ax.images[0].get_array(), frames[i])


def test_single_store_and_errors(packed_tree, tmp_path):
    root, _ = packed_tree
    summary, _ = summarize(root / "task_b" / "train" / "packed")
    assert summary["num_trajectories"] == 2 and summary["splits"] == {
        "train": {"trajectories": 2, "transitions": 14}}  # split named by <split>/packed
    store_dir = tmp_path / "bare"
    shutil.copytree(root / "task_b" / "train" / "packed", store_dir)
    assert summarize(store_dir)[0]["splits"] == {"-": {"trajectories": 2, "transitions": 14}}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="found no packed store"):
        summarize(tmp_path / "empty")
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "missing")])
    assert info.value.code == 2


def test_converted_raw_and_out_npy_trees_agree(raw_tree, converted_tree, tmp_path):
    packed, _ = summarize(converted_tree)
    raw, raw_rows = summarize(raw_tree, preview_trajectories=2)
    npy_tree = tmp_path / "npy"
    for out in converted_tree.rglob("out.npy"):
        target = npy_tree / out.relative_to(converted_tree)
        target.parent.mkdir(parents=True)
        shutil.copy(out, target)
    legacy, legacy_rows = summarize(npy_tree, preview_trajectories=3)
    assert packed["format"] == ["packed"] and raw["format"] == ["raw"]
    assert legacy["format"] == ["out.npy"]
    assert {s.kind for s in find_sources(npy_tree)} == {"out.npy"}
    assert raw["num_trajectories"] == packed["num_trajectories"] == legacy["num_trajectories"]
    assert raw["num_transitions"] == packed["num_transitions"] == legacy["num_transitions"]
    assert raw["num_tasks"] == packed["num_tasks"] == 2
    assert raw["stats"] is None and raw["image_sizes"][0][:2] == [240, 320]
    assert sorted(raw["language"]["instructions"]) == sorted(packed["language"]["instructions"])
    for key in ("actions", "actions_relabeled", "proprio"):
        np.testing.assert_allclose(legacy["stats"][key]["mean"], packed["stats"][key]["mean"],
                                   rtol=1e-6, atol=1e-9)
    assert legacy["saliency"] == packed["saliency"]
    assert len(raw_rows) == 2 and raw_rows[0][0].shape == (128, 128, 3)
    assert len(legacy_rows) == 3 and legacy_rows[0][0].shape == (32, 32, 3)


def test_cli_subprocess(packed_tree):
    root, _ = packed_tree
    result = subprocess.run([sys.executable, "-m", "bridge_torch.data.inspect", str(root),
                             "--json"], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(result.stdout)["num_trajectories"] == 5


def test_raw_latency_shift_and_skipped(tmp_path):
    root = generate_raw_dataset(tmp_path / "raw", seed=1, num_tasks=1, dates_per_task=1,
                                trajs_per_date=3, min_len=5, max_len=7, image_hw=(24, 32),
                                dates_before_cutoff=1)
    trajs = sorted(root.rglob("traj_group0/traj*"))
    shutil.rmtree(trajs[0] / "images0")  # the converter skips a trajectory without images
    summary, _ = summarize(root)
    frames = [len(list((t / "images0").glob("im_*.jpg"))) for t in trajs[1:]]
    assert summary["skipped_trajectories"] == 1 and summary["num_trajectories"] == 2
    assert summary["num_transitions"] == sum(f - 2 for f in frames)  # latency shift: one less
    assert summary["image_sizes"] == [[24, 32, 2]]
