"""Tests of data/store_concat.py: concatenated stores equal one write_store over all their
trajectories, layouts must agree, and an interrupted concatenation publishes nothing."""

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bridge_torch.data import store_concat
from bridge_torch.data.store import open_store, write_store
from bridge_torch.data.store_concat import concat_stores
from test_store import SIZE, make_trajectory

CAMERAS = ("images0", "images1")


def _groups(saliency: tuple[bool, ...]) -> list[list]:
    """Three parts of 2, 1 and 2 trajectories; ``saliency[i]``: part i's first one has maps."""
    lengths = [[3, 1], [4], [2, 5]]
    groups, seed = [], 0
    for part, steps in enumerate(lengths):
        group = []
        for k, length in enumerate(steps):
            group.append(make_trajectory(length, seed, cameras=CAMERAS,
                                         saliency=saliency[part] and k == 0,
                                         language=["", "wipe"] if seed == 2 else ["pick"]))
            seed += 1
        groups.append(group)
    return groups


def _parts(tmp_path: Path, groups: list[list]) -> list[Path]:
    return [write_store(tmp_path / f"part{i}", group, cameras=CAMERAS, progress=False)
            for i, group in enumerate(groups)]


def assert_same_store(ours: Path, reference: Path) -> None:
    """Every array file byte for byte, the metadata equal but for statistics within 1e-12."""
    files = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in ours.iterdir()) == files
    for name in files:
        if name.endswith(".npy"):
            assert (ours / name).read_bytes() == (reference / name).read_bytes(), name
    mine, theirs = (json.loads((p / "meta.json").read_text()) for p in (ours, reference))
    stats, expected = mine.pop("stats"), theirs.pop("stats")
    assert mine == theirs
    for key, entry in expected.items():
        assert stats[key]["count"] == entry["count"]
        for field in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(stats[key][field], entry[field], rtol=1e-12, atol=0)


@pytest.mark.parametrize("saliency", [(False, False, False), (False, True, False),
                                      (True, False, True)])
def test_concatenation_equals_one_write_store(tmp_path: Path, saliency) -> None:
    groups = _groups(saliency)
    parts = _parts(tmp_path, groups)
    source = {"kind": "test", "parts": 3}
    ours = concat_stores(tmp_path / "ours", parts, source=source, progress=False)
    reference = write_store(tmp_path / "reference", [t for g in groups for t in g],
                            cameras=CAMERAS, source=source, progress=False)
    assert_same_store(ours, reference)
    store = open_store(ours)
    assert store.num_trajectories == 5 and store.cameras == list(CAMERAS)
    assert (store.saliency is not None) == any(saliency)
    np.testing.assert_array_equal(store.traj_frame_start, [0, 4, 6, 11, 14])
    np.testing.assert_array_equal(store.traj_action_start, [0, 3, 4, 8, 10])
    assert store.language[2] == ["wipe"] and store.trajectory_sources[4] == "synthetic#4"
    np.testing.assert_array_equal(store.trajectory(3).frames["images1"],
                                  groups[2][0].frames["images1"])


def test_small_chunks_a_single_part_and_the_streaming_fallback(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Copies and zero maps span many chunks; without a kernel copy (refused, or absent from
    ``os``) the payloads are streamed."""
    groups = _groups((False, True, False))
    parts = _parts(tmp_path, groups)
    whole = write_store(tmp_path / "whole", [t for g in groups for t in g], cameras=CAMERAS,
                        progress=False)
    monkeypatch.setattr(store_concat, "COPY_CHUNK_BYTES", 100)
    monkeypatch.setattr(store_concat, "ZERO_CHUNK_BYTES", 100)
    assert_same_store(concat_stores(tmp_path / "chunked", parts, progress=False), whole)

    def refused(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refused, raising=False)
    assert_same_store(concat_stores(tmp_path / "refused", parts, progress=False), whole)
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    assert_same_store(concat_stores(tmp_path / "absent", parts[1:2], progress=False), parts[1])


def test_mismatched_parts_are_refused_naming_both(tmp_path: Path) -> None:
    base = write_store(tmp_path / "base", [make_trajectory(2, 0)], progress=False)
    other_camera = write_store(tmp_path / "cam", [make_trajectory(2, 1, cameras=("images1",))],
                               cameras=("images1",), progress=False)
    bigger = make_trajectory(2, 2)
    bigger.frames["images0"] = np.zeros((3, SIZE, SIZE * 2, 3), np.uint8)
    other_size = write_store(tmp_path / "size", [bigger], progress=False)
    longer = make_trajectory(2, 3)
    longer.proprio = np.concatenate([longer.proprio, longer.proprio[:, :1]], axis=1)
    other_dim = write_store(tmp_path / "dim", [longer], progress=False)
    for other, key in ((other_camera, "cameras"), (other_size, "image_size"),
                       (other_dim, "proprio_dim")):
        with pytest.raises(ValueError, match=f"{base}.*{other}.*{key}"):
            concat_stores(tmp_path / "out", [base, other], progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="no stores"):
        concat_stores(tmp_path / "out", [], progress=False)


def test_a_damaged_part_is_refused_before_writing(tmp_path: Path) -> None:
    parts = _parts(tmp_path, _groups((False, False, False)))
    with open(parts[1] / "actions.npy", "ab") as file:
        file.write(b"\0" * 28)  # one stray row behind the array
    with pytest.raises(ValueError, match=rf"{parts[1]}: actions\.npy has 28 bytes after"):
        concat_stores(tmp_path / "out", parts, progress=False)
    (parts[2] / "traj_length.npy").unlink()
    with pytest.raises(ValueError, match=rf"{parts[2]}: missing file traj_length\.npy"):
        concat_stores(tmp_path / "out", [parts[0], parts[2]], progress=False)
    assert not (tmp_path / "out").exists()


def test_an_interrupted_concatenation_leaves_no_final_store(tmp_path: Path, monkeypatch) -> None:
    parts = _parts(tmp_path, _groups((False, True, False)))
    copy, calls = store_concat._copy_rest, []

    def interrupted(source, target):
        calls.append(source.name)
        if len(calls) == 4:  # after the first camera's frames, before the second's
            raise KeyboardInterrupt
        copy(source, target)

    monkeypatch.setattr(store_concat, "_copy_rest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        concat_stores(tmp_path / "out", parts, progress=False)
    assert not (tmp_path / "out").exists()
    previous = concat_stores(tmp_path / "kept", parts[:1], progress=False)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        concat_stores(previous, parts, progress=False)
    assert open_store(previous).num_trajectories == 2  # the earlier store is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "part0", "part1", "part2"]
