"""Tests of data/datasets.py: task selection (include globs, exclude) and the out.npy pack cache."""

import json
import os
import re

import numpy as np
import pytest

from bridge_torch.data import datasets
from bridge_torch.data.actions import compute_statistics, relabel_actions, training_statistics
from bridge_torch.data.datasets import (
    ALL_LOCAL_INCLUDE,
    cache_dir_for,
    open_split,
    open_sub_datasets,
    resolve_task_dirs,
)
from bridge_torch.data.sources import legacy_numpy as legacy
from bridge_torch.data.split_metadata import NotPacked, split_metadata
from bridge_torch.data.store import Trajectory, write_store

SIZE = 6


def legacy_trajectory(length, seed, language=("open the drawer",)):
    """One legacy out.npy trajectory dict: list-of-dicts observations."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(length + 1, SIZE, SIZE, 3), dtype=np.uint8)
    states = rng.normal(size=(length + 1, 7))  # float64, as the robot stack stores it
    observations = [{"images0": images[i], "state": states[i], "time_stamp": float(i)}
                    for i in range(length + 1)]
    return {"observations": observations[:-1], "next_observations": observations[1:],
            "actions": list(rng.uniform(size=(length, 7))), "terminals": [0] * length,
            "language": list(language)}


def write_legacy(split_dir, lengths, seed=0):
    split_dir.mkdir(parents=True, exist_ok=True)
    trajs = [legacy_trajectory(n, seed + i) for i, n in enumerate(lengths)]
    legacy.save_out_npy(split_dir / "out.npy", trajs)
    return trajs


def write_packed(split_dir, lengths, seed=0):
    trajs = [next(legacy.legacy_to_trajectories([legacy_trajectory(n, seed + i)], split_dir))
             for i, n in enumerate(lengths)]
    return write_store(split_dir / "packed", trajs, progress=False)


@pytest.fixture
def tree(tmp_path):
    """data/a/t1 (out.npy, train+val), data/a/t2 (packed), data/b/deep/x/t3 (packed), and
    directories that are not tasks: c/no_train (val only), a/t1/val/sub (inside a split)."""
    root = tmp_path / "data"
    write_legacy(root / "a" / "t1" / "train", [3, 4])
    write_legacy(root / "a" / "t1" / "val", [2], seed=10)
    write_packed(root / "a" / "t2" / "train", [5])
    write_packed(root / "b" / "deep" / "x" / "t3" / "train", [2, 2], seed=20)
    write_legacy(root / "c" / "no_train" / "val", [2])
    write_legacy(root / "a" / "t1" / "val" / "sub" / "train", [2])
    return root


def names(groups, root):
    return [[p.relative_to(root).as_posix() for p in group] for group in groups]


def test_all_local_finds_every_task_at_any_depth(tree):
    assert names(resolve_task_dirs(tree, ALL_LOCAL_INCLUDE, []), tree) == [
        ["a/t1", "a/t2", "b/deep/x/t3"]]


def test_list_of_lists_globs_and_exclude(tree):
    groups = resolve_task_dirs(tree, [["a/*", "a/t1"], ["b/**"]], [])
    assert names(groups, tree) == [["a/t1", "a/t2"], ["b/deep/x/t3"]]
    assert all(p.is_absolute() for p in groups[0])
    assert names(resolve_task_dirs(tree, [["**"]], ["*t2", "b/*"]), tree) == [["a/t1"]]
    assert names(resolve_task_dirs(tree, [["?/t?"]], [str(tree / "a" / "t1")]), tree) == [
        ["a/t2"]]


def test_resolve_errors(tree, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        resolve_task_dirs(tmp_path / "missing", ALL_LOCAL_INCLUDE, [])
    with pytest.raises(ValueError, match=r"include\[1\] = \['nothing/\*'\].*data"):
        resolve_task_dirs(tree, [["a/*"], ["nothing/*"]], [])
    with pytest.raises(ValueError, match="1 without a train split"):
        resolve_task_dirs(tree, [["c/*"]], [])
    with pytest.raises(ValueError, match="1 excluded"):
        resolve_task_dirs(tree, [["a/t2"]], ["a/t2"])


def test_legacy_is_packed_once_and_matches_out_npy(tree, monkeypatch):
    task = tree / "a" / "t1"
    expected = legacy.load_out_npy(task / "train" / "out.npy")
    store = open_split(task, "train")
    assert store.path == task / "train" / "packed" and store.num_trajectories == 2
    for i, traj in enumerate(expected):
        back = store.trajectory(i)
        images = [o["images0"] for o in traj["observations"]]
        images.append(traj["next_observations"][-1]["images0"])
        np.testing.assert_array_equal(back.frames["images0"], np.stack(images))
        states = [o["state"] for o in traj["observations"]] + [
            traj["next_observations"][-1]["state"]]
        np.testing.assert_array_equal(back.proprio, np.stack(states).astype(np.float32))
        np.testing.assert_array_equal(back.actions, np.asarray(traj["actions"], np.float32))
        assert back.language == ["open the drawer"]
    monkeypatch.setattr(legacy, "load_out_npy", fail_load)
    again = open_split(task, "train")  # cache hit: out.npy is not parsed again
    np.testing.assert_array_equal(again.actions, store.actions)


def fail_load(path):
    raise AssertionError(f"out.npy {path} parsed again although the cache is fresh")


def test_stale_cache_is_rebuilt_and_touch_is_not(tree, monkeypatch):
    task = tree / "a" / "t1"
    assert open_split(task, "train").num_trajectories == 2
    out = task / "train" / "out.npy"
    stat = out.stat()
    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same bytes
    with monkeypatch.context() as patch:
        patch.setattr(legacy, "load_out_npy", fail_load)
        assert open_split(task, "train").num_trajectories == 2
        record = open_split(task, "train").source["legacy_out_npy"]
        assert record["mtime_ns"] == out.stat().st_mtime_ns  # record refreshed after re-hash
    write_legacy(task / "train", [3, 4, 5], seed=3)  # new content
    store = open_split(task, "train")
    assert store.num_trajectories == 3 and store.traj_length.tolist() == [3, 4, 5]


def test_converter_store_preferred_unless_out_npy_is_newer(tree, monkeypatch):
    split = tree / "a" / "t1" / "train"
    write_packed(split, [7])  # a converter-written store (no out.npy record), newer than out.npy
    with monkeypatch.context() as patch:
        patch.setattr(legacy, "load_out_npy", fail_load)
        assert open_split(tree / "a" / "t1", "train").traj_length.tolist() == [7]
    out = split / "out.npy"
    later = (split / "packed" / "meta.json").stat().st_mtime_ns + 1_000_000_000
    os.utime(out, ns=(later, later))
    assert open_split(tree / "a" / "t1", "train").traj_length.tolist() == [3, 4]


def test_read_only_data_dir_uses_cache_env(tree, tmp_path, monkeypatch):
    split = tree / "a" / "t1" / "train"
    monkeypatch.setenv("BRIDGE_TORCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "_is_writable", lambda directory: False)  # root ignores chmod
    split.chmod(0o555)
    try:
        store = open_split(tree / "a" / "t1", "train")
    finally:
        split.chmod(0o755)
    assert store.path == cache_dir_for(split / "out.npy")
    assert store.path.parent == tmp_path / "cache" and not (split / "packed").exists()
    monkeypatch.setattr(legacy, "load_out_npy", fail_load)
    assert open_split(tree / "a" / "t1", "train").path == store.path


def test_missing_split(tree):
    with pytest.raises(ValueError, match="no 'val' split"):
        open_split(tree / "a" / "t2", "val")


def test_open_sub_datasets_and_statistics(tree):
    train = open_sub_datasets(tree, [["a/*"], ["b/**"]], [])
    assert [[s.num_trajectories for s in group] for group in train] == [[2, 1], [2]]
    val = open_sub_datasets(tree, [["a/*"], ["b/**"]], [], split="val")
    assert [[s.num_trajectories for s in group] for group in val] == [[1], []]
    stats = training_statistics(train, relabel_actions=True)
    stores = [s for group in train for s in group]
    relabeled = np.concatenate([relabel_actions(t.proprio, t.actions) for s in stores
                                for t in map(s.trajectory, range(s.num_trajectories))])
    np.testing.assert_allclose(stats["actions"]["mean"],
                               compute_statistics(relabeled)["mean"], rtol=1e-6)
    np.testing.assert_allclose(stats["proprio"]["std"], compute_statistics(
        np.concatenate([s.proprio for s in stores]))["std"], rtol=1e-6)
    raw = training_statistics(train, relabel_actions=False)["actions"]
    assert raw["count"] == stats["actions"]["count"] == 7 + 5 + 4
    np.testing.assert_allclose(raw["max"], np.concatenate([s.actions for s in stores]).max(0))
    with pytest.raises(ValueError):
        training_statistics([[]], relabel_actions=True)


def test_trajectory_helper_type(tree):
    assert isinstance(open_split(tree / "a" / "t2", "train").trajectory(0), Trajectory)


def test_an_empty_data_path_says_so_and_the_root_is_not_counted(tmp_path) -> None:
    with pytest.raises(ValueError, match="holds no directories; convert data into it first"):
        resolve_task_dirs(tmp_path, [["**"]], [])
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"matched directories: 2 without a train split"):
        resolve_task_dirs(tmp_path, [["**"]], [])  # a and a/b; the root itself is no task dir


def test_a_split_read_alone_makes_a_directory_without_train_split_a_task(tree):
    assert names(resolve_task_dirs(tree, [["c/*"]], [], split="val"), tree) == [["c/no_train"]]
    # inside a split directory stays no task, also when the task has only that split
    assert names(resolve_task_dirs(tree, [["**"]], [], split="val"), tree) == [
        ["a/t1", "a/t2", "b/deep/x/t3", "c/no_train"]]
    with pytest.raises(ValueError, match=r"holds train/out\.npy or train/packed/meta\.json or "
                                         r"val/out\.npy or val/packed/meta\.json; matched "
                                         r"directories: 1 without a train or val split"):
        resolve_task_dirs(tree, [["c"]], [], split="val")


def test_split_metadata_reads_meta_json_only_and_merges_as_training(tree):
    groups = resolve_task_dirs(tree, [["a/*"], ["b/**"]], [])
    with pytest.raises(NotPacked, match=r"a/t1/train/out\.npy has no packed store \(reading it "
                                        r"would unpickle it\)"):
        split_metadata(groups, "train")
    with pytest.raises(NotPacked, match=r"task .*a/t2 has no val split"):
        split_metadata([[tree / "a" / "t2"]], "val")
    opened = open_sub_datasets(tree, [["a/*"], ["b/**"]], [])  # packs a/t1's out.npy
    recorded = split_metadata(groups, "train")
    assert [[m.path for m in group] for group in recorded] == \
        [[s.path for s in group] for group in opened]
    assert training_statistics(recorded, relabel_actions=True) == \
        training_statistics(opened, relabel_actions=True)


def test_split_metadata_refuses_malformed_statistics(tree):
    meta_file = tree / "a" / "t2" / "train" / "packed" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["stats"]["proprio"]["std"] = meta["stats"]["proprio"]["std"][:3]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=re.escape(f"{meta_file}: stats.proprio.std must be a "
                                                   "list of 7 numbers")):
        split_metadata([[tree / "a" / "t2"]], "train")
