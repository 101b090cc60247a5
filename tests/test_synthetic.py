"""The synthetic raw tree: real BridgeData layout, deterministic by seed, learnable."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge_torch.data.sources.bridge_raw import LATENCY_CUTOFF, parse_folder_date
from bridge_torch.data.sources.synthetic import COLORS, MARKER_COLOR, generate_raw_dataset, main

SMALL = {"num_tasks": 1, "dates_per_task": 1, "trajs_per_date": 2, "min_len": 5, "max_len": 6,
         "image_hw": (48, 64)}
OBS_SHAPES = {"full_state": (7,), "state": (7,), "qpos": (6,), "qvel": (6,),
              "joint_effort": (6,), "desired_state": (7,), "time_stamp": (),
              "eef_transform": (4, 4), "high_bound": (5,), "low_bound": (5,), "env_done": (),
              "t_get_obs": ()}


def _load(path: Path):
    return pickle.loads(path.read_bytes())


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_layout_matches_raw_bridgedata(raw_tree: Path) -> None:
    dated = sorted(raw_tree.glob("*/*/*/*/*"))  # depth 5: lab/env/task/00/<date>
    assert len(dated) == 4 and {d.parents[1].name for d in dated} == {
        "pick_up_red_block", "pick_up_blue_block"}
    for folder in dated:
        assert parse_folder_date(folder.name) > LATENCY_CUTOFF
        for name in ("collection_metadata.json", "config.json", "diagnostics.png"):
            assert (folder / name).is_file()
        assert json.loads((folder / "config.json").read_text())["image_height"] == 240
        assert len(list(folder.glob("raw/traj_group0/traj*"))) == 5
    traj = dated[0] / "raw" / "traj_group0" / "traj3"
    steps = len(list((traj / "images0").glob("im_*.jpg")))
    assert 8 <= steps <= 12 and (traj / "images0" / f"im_{steps - 1}.jpg").is_file()
    with Image.open(traj / "images0" / "im_0.jpg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (320, 240))
    obs = _load(traj / "obs_dict.pkl")
    assert {k: (v.shape[0], v.shape[1:]) for k, v in obs.items()} == {
        k: (steps, shape) for k, shape in OBS_SHAPES.items()}
    assert obs["full_state"].dtype == np.float64 and np.all(np.diff(obs["time_stamp"]) > 0)
    policy_out = _load(traj / "policy_out.pkl")
    assert len(policy_out) == steps - 1
    assert set(policy_out[0]) == {"actions", "new_robot_transform", "delta_robot_transform",
                                  "policy_type"}
    assert policy_out[0]["actions"].shape == (7,) and policy_out[0]["actions"].dtype == np.float64
    assert _load(traj / "agent_data.pkl")["traj_ok"] is True
    lines = (traj / "lang.txt").read_text().splitlines()
    assert lines[0].startswith(("pick up", "grasp", "move")) and "confidence" in lines[-1]
    saliency = _load(traj / "saliency_map.pkl")
    assert saliency.shape == (steps, 1, 240, 320) and saliency.dtype == np.float32
    peaks = saliency.max(axis=(1, 2, 3))
    assert set(np.round(peaks, 6)) <= {0.0, 1.0} and saliency.min() == 0.0 and peaks.max() == 1.0


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = generate_raw_dataset(tmp_path / "a", seed=3, with_saliency=True, **SMALL)
    b = generate_raw_dataset(tmp_path / "b", seed=3, with_saliency=True, **SMALL)
    c = generate_raw_dataset(tmp_path / "c", seed=4, with_saliency=True, **SMALL)
    assert _files(a) == _files(b)
    for rel in _files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    traj = next(a.rglob("traj0")).relative_to(a)
    traj_c = next(c.rglob("traj0")).relative_to(c)
    for name in ("images0/im_0.jpg", "obs_dict.pkl", "policy_out.pkl", "saliency_map.pkl"):
        assert (a / traj / name).read_bytes() != (c / traj_c / name).read_bytes(), name


def test_motion_gripper_and_frames_are_consistent(tmp_path: Path) -> None:
    root = generate_raw_dataset(tmp_path, seed=1, num_tasks=1, dates_per_task=1,
                                trajs_per_date=4, min_len=12, max_len=12, image_hw=(96, 128))
    for traj in sorted(root.rglob("traj_group0/traj*")):
        state = _load(traj / "obs_dict.pkl")["full_state"]
        actions = np.stack([s["actions"] for s in _load(traj / "policy_out.pkl")])
        # full_state integrates the commanded motion (noise is a few mm)
        np.testing.assert_allclose(np.diff(state[:, :3], axis=0), actions[:, :3], atol=0.01)
        gripper = actions[:, 6]
        assert gripper[0] == 1.0 and gripper[-1] == 0.0
        assert ((gripper > 0.05) & (gripper < 0.95)).sum() == 2  # closes through 2 steps
        assert np.all(np.diff(gripper) <= 0)
        first = np.asarray(Image.open(traj / "images0" / "im_0.jpg"), dtype=int)
        last = np.asarray(Image.open(traj / "images0" / "im_11.jpg"), dtype=int)
        # the block is drawn in the task colour; the closed gripper is a filled white disc
        assert (np.abs(first - COLORS["red"]).sum(-1) < 60).sum() > 50
        center = np.round(0.08 * 95 + 0.84 * 95 * (state[-1, 0] - 0.15) / 0.25).astype(int), \
            np.round(0.08 * 127 + 0.84 * 127 * (state[-1, 1] + 0.15) / 0.30).astype(int)
        assert np.abs(last[center] - MARKER_COLOR).sum() < 60


def test_options_cameras_depth_language_and_cutoff(tmp_path: Path) -> None:
    root = generate_raw_dataset(tmp_path, seed=2, num_tasks=1, dates_per_task=2,
                                trajs_per_date=1, min_len=4, max_len=4, image_hw=(48, 64),
                                cameras=2, with_depth=True, with_lang=False,
                                dates_before_cutoff=1)
    dated = sorted(root.glob("*/*/*/*/*"))
    assert [parse_folder_date(d.name) < LATENCY_CUTOFF for d in dated] == [True, False]
    for folder in dated:
        traj = folder / "raw" / "traj_group0" / "traj0"
        assert sorted(p.name for p in traj.iterdir()) == [
            "agent_data.pkl", "depth_images0", "images0", "images1", "obs_dict.pkl",
            "policy_out.pkl"]
        assert len(list((traj / "depth_images0").glob("im_*.png"))) == 4
        same = (traj / "images0" / "im_0.jpg").read_bytes() == \
            (traj / "images0" / "im_1.jpg").read_bytes()
        assert same == (folder == dated[0])  # old data: frames lag the state by one step


def test_cli_and_argument_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--out-dir", str(tmp_path / "cli"), "--num_tasks", "1", "--dates_per_task",
                 "1", "--trajs_per_date", "1", "--min_len", "3", "--max_len", "3",
                 "--image_height", "32", "--image_width", "48", "--saliency"]) == 0
    assert "bridge-torch-convert" in capsys.readouterr().out
    assert len(list((tmp_path / "cli").rglob("saliency_map.pkl"))) == 1
    with pytest.raises(SystemExit):  # refuses to write into a non-empty directory
        main(["--out_dir", str(tmp_path / "cli")])
    with pytest.raises(ValueError, match="min_len"):
        generate_raw_dataset(tmp_path / "bad", seed=0, min_len=1)
