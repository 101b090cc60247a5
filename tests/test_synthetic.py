"""The synthetic raw tree: real BridgeData layout, deterministic by seed, learnable signal."""

import pickle
from pathlib import Path

import numpy as np

from bridge_torch.data.synthetic import SyntheticSpec, generate_raw_dataset, main


def _small(seed: int, **kwargs) -> SyntheticSpec:
    return SyntheticSpec(seed=seed, num_tasks=1, dates_per_task=1, trajs_per_date=2,
                         min_frames=5, max_frames=6, image_hw=(48, 64), **kwargs)


def test_layout_matches_raw_bridgedata(raw_tree: Path) -> None:
    dated = sorted(raw_tree.glob("*/*/*/*/*"))
    assert len(dated) == 4 and all(d.name[:4] == "2022" for d in dated)
    for d in dated:
        assert (d / "collection_metadata.json").is_file() and (d / "config.json").is_file()
    traj = dated[0] / "raw" / "traj_group0" / "traj0"
    frames = sorted((traj / "images0").glob("im_*.jpg"))
    obs = pickle.loads((traj / "obs_dict.pkl").read_bytes())
    policy_out = pickle.loads((traj / "policy_out.pkl").read_bytes())
    assert obs["full_state"].shape == (len(frames), 7)
    assert obs["time_stamp"].shape == (len(frames),)
    assert {"state", "qpos", "qvel", "eef_transform", "env_done"} <= set(obs)
    assert len(policy_out) == len(frames) - 1 and policy_out[0]["actions"].shape == (7,)
    saliency = pickle.loads((traj / "saliency_map.pkl").read_bytes())
    assert saliency.shape == (len(frames), 1, 240, 320) and saliency.dtype == np.float32
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    lines = (traj / "lang.txt").read_text().splitlines()
    assert len(lines) == 2 and "confidence" in lines[1]


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = generate_raw_dataset(tmp_path / "a", _small(3))
    b = generate_raw_dataset(tmp_path / "b", _small(3))
    c = generate_raw_dataset(tmp_path / "c", _small(4))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    jpeg = next(p for p in files if p.suffix == ".jpg")
    assert (a / jpeg).read_bytes() != (c / jpeg).read_bytes()


def test_gripper_closes_through_intermediate_values(tmp_path: Path) -> None:
    root = generate_raw_dataset(tmp_path, SyntheticSpec(
        seed=1, num_tasks=1, dates_per_task=1, trajs_per_date=6, min_frames=24, max_frames=24,
        image_hw=(48, 64)))
    grippers = [np.array([s["actions"][6] for s in pickle.loads(p.read_bytes())])
                for p in root.rglob("policy_out.pkl")]
    closing = [g for g in grippers if (g < 0.05).any()]
    assert closing, "some trajectories must reach the target and close the gripper"
    for g in closing:
        assert g[0] == 1.0 and ((g > 0.05) & (g < 0.95)).any()


def test_cli_cameras_depth_and_cutoff(tmp_path: Path) -> None:
    main(["--out", str(tmp_path), "--tasks", "1", "--dates", "1", "--trajectories", "1",
          "--min_frames", "4", "--max_frames", "4", "--height", "48", "--width", "64",
          "--cameras", "2", "--depth_images", "--before_cutoff"])
    traj = next(tmp_path.rglob("traj0"))
    assert sorted(p.name for p in traj.iterdir() if p.is_dir()) == [
        "depth_images0", "images0", "images1"]
    assert traj.parents[2].name.startswith("2021-05")
