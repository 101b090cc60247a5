"""Legacy out.npy: np.save-compatible atomic writes, validated loads, Trajectory view."""

import logging
from pathlib import Path

import numpy as np
import pytest

from bridge_torch.data.sources import legacy_numpy as legacy


def _trajectory(length: int, seed: int, saliency: bool = False) -> dict:
    """An out.npy trajectory as the original converter builds it (shared frame objects)."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(length + 1)]
    state = rng.normal(size=(length + 1, 7))
    columns = {"images0": frames, "state": state, "time_stamp": np.arange(length + 1) * 0.2}
    if saliency:
        columns["saliency"] = [rng.uniform(size=(8, 8, 1)).astype(np.float32)
                               for _ in range(length + 1)]

    def steps(window: slice) -> list[dict]:
        return [dict(zip(columns, v, strict=True)) for v in
                zip(*(c[window] for c in columns.values()), strict=True)]

    return {"observations": steps(slice(None, -1)), "next_observations": steps(slice(1, None)),
            "actions": list(rng.normal(size=(length, 7))), "terminals": [0] * length,
            "language": ["open the drawer"] if seed % 2 else [""]}


def test_save_is_np_save_and_round_trips(tmp_path: Path) -> None:
    trajs = [_trajectory(3, 0), _trajectory(5, 1, saliency=True)]
    legacy.save_out_npy(tmp_path / "out.npy", trajs)
    np.save(tmp_path / "reference.npy", np.array(trajs, dtype=object), allow_pickle=True)
    assert (tmp_path / "out.npy").read_bytes() == (tmp_path / "reference.npy").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy", "reference.npy"]  # no tmp
    back = legacy.load_out_npy(tmp_path / "out.npy")
    assert len(back) == 2 and back[1]["language"] == ["open the drawer"]
    for original, loaded in zip(trajs, back, strict=True):
        for a, b in zip(original["observations"], loaded["observations"], strict=True):
            np.testing.assert_array_equal(a["images0"], b["images0"])
            np.testing.assert_array_equal(a["state"], b["state"])
        np.testing.assert_array_equal(np.stack(original["actions"]), np.stack(loaded["actions"]))
    with pytest.raises(ValueError, match="without trajectories"):
        legacy.save_out_npy(tmp_path / "empty.npy", [])


def test_pickle_warning_once_per_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a.npy", "b.npy"):
        legacy.save_out_npy(tmp_path / name, [_trajectory(2, 0)])
    with caplog.at_level(logging.WARNING, logger="bridge_torch.data.sources.legacy_numpy"):
        for name in ("a.npy", "a.npy", "b.npy"):
            legacy.load_out_npy(tmp_path / name)
    warnings = [r.getMessage() for r in caplog.records if "executes pickle" in r.getMessage()]
    assert len(warnings) == 2 and "a.npy" in warnings[0] and "b.npy" in warnings[1]


@pytest.mark.parametrize(("payload", "message"), [
    (np.zeros((3, 4)), r"expected a 1-D object array .* found \(dtype\('float64'\), \(3, 4\)\)"),
    ([{"observations": []}], r"trajectory 0: missing keys \['next_observations', 'actions'\]"),
    (["not a dict"], "trajectory 0: expected a trajectory dict, found str"),
])
def test_load_rejects_malformed_files(tmp_path: Path, payload, message: str) -> None:
    path = tmp_path / "bad.npy"
    array = payload if isinstance(payload, np.ndarray) else np.empty(len(payload), dtype=object)
    if not isinstance(payload, np.ndarray):
        array[:] = payload
    np.save(path, array, allow_pickle=True)
    with pytest.raises(ValueError, match=message) as info:
        legacy.load_out_npy(path)
    assert str(path) in str(info.value)


def test_load_names_the_bad_step(tmp_path: Path) -> None:
    trajs = [_trajectory(2, 0), _trajectory(4, 1)]
    trajs[1]["next_observations"][2]["images0"] = np.zeros((8, 8, 3), np.float32)
    legacy.save_out_npy(tmp_path / "out.npy", trajs)
    with pytest.raises(ValueError, match=r"trajectory 1 next_observations\[2\]: expected images0 "
                                         r"uint8 \(8, 8, 3\), found \(dtype\('float32'\)"):
        legacy.load_out_npy(tmp_path / "out.npy")
    trajs[1] = _trajectory(4, 1)
    trajs[1]["actions"] = trajs[1]["actions"][:-1]
    legacy.save_out_npy(tmp_path / "out.npy", trajs)
    with pytest.raises(ValueError, match=r"trajectory 1: expected observations, next_obs.*"
                                         r"'actions': 3"):
        legacy.load_out_npy(tmp_path / "out.npy")
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"not a readable out\.npy"):
        legacy.load_out_npy(tmp_path / "garbage.npy")


def test_legacy_to_trajectories_stores_frames_once(tmp_path: Path) -> None:
    trajs = [_trajectory(3, 0), _trajectory(4, 1, saliency=True)]
    out = list(legacy.legacy_to_trajectories(trajs, tmp_path / "out.npy"))
    first, second = out
    assert first.source == f"{tmp_path / 'out.npy'}#0" and first.language == []
    assert second.language == ["open the drawer"]
    assert first.frames["images0"].shape == (4, 8, 8, 3) and first.frames["images0"].dtype == \
        np.uint8
    np.testing.assert_array_equal(first.frames["images0"][-1],
                                  trajs[0]["next_observations"][-1]["images0"])
    np.testing.assert_array_equal(first.proprio[:3], np.stack(
        [o["state"] for o in trajs[0]["observations"]]).astype(np.float32))
    assert first.proprio.dtype == np.float32 and first.actions.shape == (3, 7)
    assert first.saliency is None and second.saliency.shape == (5, 8, 8)
    np.testing.assert_array_equal(second.saliency[2],
                                  trajs[1]["observations"][2]["saliency"][..., 0])
