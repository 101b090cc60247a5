"""Tests of data/store.py: the packed store round trip, its safety and its error messages."""

import json

import numpy as np
import pytest

from bridge_torch.data.actions import compute_statistics, relabel_actions
from bridge_torch.data.store import SCHEMA_VERSION, Trajectory, open_store, write_store

SIZE = 8


def make_trajectory(length, seed, *, saliency=False, language=("pick up the cup",),
                    cameras=("images0",)):
    rng = np.random.default_rng(seed)
    frames = {c: rng.integers(0, 256, size=(length + 1, SIZE, SIZE, 3), dtype=np.uint8)
              for c in cameras}
    proprio = rng.normal(size=(length + 1, 7)).astype(np.float32)
    actions = rng.uniform(size=(length, 7)).astype(np.float32)
    maps = rng.uniform(size=(length + 1, SIZE, SIZE)).astype(np.float32) if saliency else None
    return Trajectory(frames=frames, proprio=proprio, actions=actions, language=list(language),
                      saliency=maps, source=f"synthetic#{seed}")


@pytest.fixture
def trajectories():
    return [make_trajectory(n, i, saliency=i == 1) for i, n in enumerate([3, 5, 1])]


def test_round_trip(tmp_path, trajectories):
    store = open_store(write_store(tmp_path / "s", trajectories, source={"kind": "test"},
                                   progress=False))
    assert store.num_trajectories == 3 and store.num_transitions == 9
    assert store.num_frames == store.frames().shape[0] == 4 + 6 + 2  # frames stored once
    assert store.image_size == (SIZE, SIZE) and store.cameras == ["images0"]
    np.testing.assert_array_equal(store.traj_frame_start, [0, 4, 10])
    np.testing.assert_array_equal(store.traj_action_start, [0, 3, 8])
    np.testing.assert_array_equal(store.traj_length, [3, 5, 1])
    np.testing.assert_array_equal(store.traj_has_saliency, [False, True, False])
    for i, traj in enumerate(trajectories):
        back = store.trajectory(i)
        np.testing.assert_array_equal(back.frames["images0"], traj.frames["images0"])
        np.testing.assert_array_equal(back.proprio, traj.proprio)
        np.testing.assert_array_equal(back.actions, traj.actions)
        start, length = store.traj_action_start[i], store.traj_length[i]
        np.testing.assert_array_equal(store.actions_relabeled[start:start + length],
                                      relabel_actions(traj.proprio, traj.actions))
        assert back.language == ["pick up the cup"] and back.source == f"synthetic#{i}"
    assert store.source == {"kind": "test"}


def test_saliency_mixed_trajectories(tmp_path, trajectories):
    store = open_store(write_store(tmp_path / "s", trajectories, progress=False))
    assert store.saliency.dtype == np.float16 and store.saliency.shape == (12, SIZE, SIZE)
    np.testing.assert_allclose(store.saliency[4:10], trajectories[1].saliency, atol=1e-3)
    assert not store.saliency[:4].any() and not store.saliency[10:].any()
    assert store.trajectory(0).saliency is None
    without = open_store(write_store(tmp_path / "t", [trajectories[0]], progress=False))
    assert without.saliency is None and not (tmp_path / "t" / "saliency.npy").exists()


def test_statistics_in_meta(tmp_path, trajectories):
    store = open_store(write_store(tmp_path / "s", trajectories, progress=False))
    expected = compute_statistics(np.concatenate([t.actions for t in trajectories]))
    assert store.stats["actions"]["count"] == 9
    for key in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(store.stats["actions"][key], expected[key], rtol=1e-9)
    assert store.stats["proprio"]["count"] == 12
    assert set(store.stats) == {"actions", "actions_relabeled", "proprio"}


def test_memmaps_are_read_only_and_no_pickle(tmp_path, trajectories):
    path = write_store(tmp_path / "s", trajectories, progress=False)
    store = open_store(path)
    for array in (store.frames(), store.proprio, store.actions, store.saliency):
        assert isinstance(array, np.memmap) and not array.flags.writeable
    with pytest.raises(ValueError):
        store.actions[0, 0] = 1.0
    for file in path.iterdir():
        if file.suffix == ".npy":
            assert np.load(file, allow_pickle=False).dtype != object
    meta = json.loads((path / "meta.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["trajectory_sources"] == ["synthetic#0", "synthetic#1", "synthetic#2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp dirs left behind


def test_several_cameras_and_language(tmp_path):
    cams = ("images0", "images1")
    trajs = [make_trajectory(2, 0, cameras=cams, language=[""]),
             make_trajectory(2, 1, cameras=cams, language=["a", "b"])]
    store = open_store(write_store(tmp_path / "s", trajs, cameras=cams, progress=False))
    np.testing.assert_array_equal(store.frames("images1")[3:], trajs[1].frames["images1"])
    assert store.language == [[], ["a", "b"]]  # out.npy's [""] placeholder maps to []
    with pytest.raises(KeyError, match="images2"):
        store.frames("images2")


def failing_iterator(trajectories):
    yield trajectories[0]
    raise RuntimeError("disk on fire")


def test_atomic_write_keeps_previous_store(tmp_path, trajectories):
    path = write_store(tmp_path / "s", trajectories[:1], progress=False)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_store(path, failing_iterator(trajectories), progress=False)
    assert open_store(path).num_trajectories == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    with pytest.raises(RuntimeError):
        write_store(tmp_path / "new", failing_iterator(trajectories), progress=False)
    assert not (tmp_path / "new").exists()
    write_store(path, trajectories, progress=False)  # replacing a store works
    assert open_store(path).num_trajectories == 3


@pytest.mark.parametrize("corrupt, message", [
    (lambda t: setattr(t, "actions", t.actions.astype(np.int32)), "actions must be a float"),
    (lambda t: t.frames.update(images0=t.frames["images0"].astype(np.float32)), "uint8"),
    (lambda t: setattr(t, "proprio", t.proprio[:-1]), r"proprio \(T\+1=4"),
    (lambda t: t.proprio.__setitem__((1, 2), np.nan), "NaN"),
    (lambda t: setattr(t, "frames", {}), "camera 'images0' missing"),
    (lambda t: setattr(t, "saliency", np.full((4, SIZE, SIZE), 2.0, np.float32)), r"\[0, 1\]"),
    (lambda t: setattr(t, "saliency", np.zeros((4, 4, 4), np.float32)), "saliency must have"),
])
def test_bad_trajectory_errors_name_the_source(tmp_path, corrupt, message):
    bad = make_trajectory(3, 7)
    corrupt(bad)
    with pytest.raises(ValueError, match=message) as info:
        write_store(tmp_path / "s", [make_trajectory(2, 0), bad], progress=False)
    assert "synthetic#7" in str(info.value)
    assert not (tmp_path / "s").exists()


def test_mixed_layout_between_trajectories(tmp_path):
    other = make_trajectory(2, 1)
    other.frames["images0"] = np.zeros((3, SIZE, SIZE * 2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"synthetic#1: image_size is \[8, 16\].*\[8, 8\]"):
        write_store(tmp_path / "s", [make_trajectory(2, 0), other], progress=False)
    with pytest.raises(ValueError, match="no trajectories"):
        write_store(tmp_path / "s", [], progress=False)


@pytest.fixture
def store_path(tmp_path, trajectories):
    return write_store(tmp_path / "s", trajectories, progress=False)


def test_unknown_schema_version(store_path):
    meta = json.loads((store_path / "meta.json").read_text())
    meta["schema_version"] = 99
    (store_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"schema_version 99 .*version {SCHEMA_VERSION}"):
        open_store(store_path)


def test_missing_meta_or_file(store_path):
    (store_path / "proprio.npy").unlink()
    with pytest.raises(ValueError, match=r"missing file proprio\.npy"):
        open_store(store_path)
    (store_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        open_store(store_path)
    (store_path / "meta.json").unlink()
    with pytest.raises(ValueError, match=r"meta\.json is missing"):
        open_store(store_path)


def test_truncated_file(store_path):
    file = store_path / "frames_images0.npy"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"frames_images0\.npy.*truncated"):
        open_store(store_path)


def test_inconsistent_index(store_path):
    np.save(store_path / "traj_length.npy", np.array([3, 4, 2]))
    with pytest.raises(ValueError, match="do not cover"):
        open_store(store_path)
    np.save(store_path / "traj_length.npy", np.array([3, 5]))
    with pytest.raises(ValueError, match=r"traj_length.npy is int64 \(2,\), expected int64 \(3,\)"):
        open_store(store_path)


def test_pickled_array_rejected(store_path):
    np.save(store_path / "actions.npy", np.array([{"a": 1}] * 9, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"actions\.npy"):
        open_store(store_path)
