"""Synthetic BridgeData: a raw tree in the real layout (spec §1) that a policy can learn.

Each trajectory shows a coloured target at a random position and an end-effector marker that
moves toward it with noisy motion, descends, closes its gripper near the target (through
intermediate values, so the §6.3 binarisation is exercised) and lifts. The marker's size encodes
height and its fill the gripper state, so motion and gripper are visible in the frames; the goal
image (the final frame) shows where the marker ends. Everything derives from the seed: the same
seed gives byte-identical trees.

Usage::

    bridge-torch-synthetic --out /tmp/raw --seed 0 --tasks 2 --trajectories 10
"""

import argparse
import datetime as dt
import io
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)
WORKSPACE_LOW = np.array([0.10, -0.15, 0.02])  # x, y, z metres (spec §14.1 bounds)
WORKSPACE_HIGH = np.array([0.45, 0.25, 0.25])
LATENCY_CUTOFF = dt.datetime(2021, 7, 23)
INSTRUCTIONS = ("put the gripper on the {color} target", "reach the {color} marker and grasp it")
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "yellow": (230, 200, 40)}


@dataclass
class SyntheticSpec:
    """What to generate; small defaults keep tests fast."""

    seed: int = 0
    num_tasks: int = 2  # task directories <lab>/<env>/<task>/00
    dates_per_task: int = 2  # dated collection folders per task
    trajs_per_date: int = 5
    min_frames: int = 14  # frames per trajectory (T); T-1 transitions
    max_frames: int = 22
    cameras: int = 1  # images0 .. images{cameras-1}
    image_hw: tuple[int, int] = (480, 640)
    with_lang: bool = True
    with_saliency: bool = False
    with_depth: bool = False
    before_cutoff: bool = False  # dated folders before 2021-07-23 (latency-shifted by converters)


def _to_pixels(xy: np.ndarray, hw: tuple[int, int]) -> tuple[float, float]:
    """Map end-effector (x, y) metres to (row, col): x grows down the image, y to the right."""
    frac = (xy - WORKSPACE_LOW[:2]) / (WORKSPACE_HIGH[:2] - WORKSPACE_LOW[:2])
    return float(frac[0] * (hw[0] - 1)), float(frac[1] * (hw[1] - 1))


def _simulate(rng: np.random.Generator, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (target xy, full_state (T, 7), commanded actions (T-1, 7)).

    Approach in xy, descend once close, close the gripper over three steps, then lift.
    """
    target = rng.uniform(WORKSPACE_LOW[:2] + 0.05, WORKSPACE_HIGH[:2] - 0.05)
    state = np.zeros((frames, 7))
    start = target
    while np.linalg.norm(start - target) < 0.15:  # start visibly away from the target
        start = rng.uniform(WORKSPACE_LOW[:2], WORKSPACE_HIGH[:2])
    state[0, :2], state[0, 2], state[0, 6] = start, rng.uniform(0.12, 0.2), 1.0
    actions = np.zeros((frames - 1, 7))
    closing = 0
    for t in range(frames - 1):
        pos = state[t, :3]
        to_target = target - pos[:2]
        distance = np.linalg.norm(to_target)
        if closing == 0 and distance < 0.03 and pos[2] < 0.07:
            closing = 1
        move = np.zeros(3)
        if closing == 0:
            move[:2] = np.clip(0.45 * to_target, -0.04, 0.04)
            move[2] = -0.035 if distance < 0.09 else 0.0
        else:
            move[2] = 0.03
            closing += 1
        gripper = (1.0, 1.0, 0.6, 0.3)[closing] if closing < 4 else 0.0
        actions[t, :3] = move + rng.normal(0, 0.003, 3)
        actions[t, 3:6] = rng.normal(0, 0.01, 3)
        actions[t, 6] = gripper
        state[t + 1, :3] = np.clip(pos + actions[t, :3] + rng.normal(0, 0.001, 3),
                                   WORKSPACE_LOW, WORKSPACE_HIGH)
        state[t + 1, 3:6] = state[t, 3:6] + actions[t, 3:6]
        state[t + 1, 6] = gripper
    return target, state, actions


def _render(state: np.ndarray, target: np.ndarray, color: tuple[int, int, int],
            background: np.ndarray) -> np.ndarray:
    """One uint8 (H, W, 3) frame: background, target disk, end-effector marker."""
    hw = background.shape[:2]
    img = background.copy()
    rows, cols = np.ogrid[:hw[0], :hw[1]]
    scale = hw[0] / 480
    tr, tc = _to_pixels(target, hw)
    img[(rows - tr) ** 2 + (cols - tc) ** 2 <= (55 * scale) ** 2] = color
    er, ec = _to_pixels(state[:2], hw)
    radius = (30 + 150 * state[2]) * scale  # higher = bigger
    dist2 = (rows - er) ** 2 + (cols - ec) ** 2
    marker = dist2 <= radius**2
    if state[6] < 0.5:  # closed gripper: a ring
        marker &= dist2 >= (0.55 * radius) ** 2
    img[marker] = (30, 60, 220)
    return img


def _saliency(state: np.ndarray, target: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float32 (1, H, W) Gaussian blob at the target, min-max normalised (spec §3 producer)."""
    rows, cols = np.ogrid[:hw[0], :hw[1]]
    tr, tc = _to_pixels(target, hw)
    sigma = 20 * hw[0] / 480
    blob = np.exp(-((rows - tr) ** 2 + (cols - tc) ** 2) / (2 * sigma**2))
    return (blob / blob.max()).astype(np.float32)[None]


def _write_jpeg(path: Path, frame: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue())


def _write_pickle(path: Path, payload: object) -> None:
    path.write_bytes(pickle.dumps(payload, protocol=4))


def _write_trajectory(traj_dir: Path, rng: np.random.Generator, spec: SyntheticSpec,
                      when: dt.datetime) -> None:
    frames = int(rng.integers(spec.min_frames, spec.max_frames + 1))
    target, state, actions = _simulate(rng, frames)
    color_name = list(COLORS)[int(rng.integers(len(COLORS)))]
    base = rng.integers(90, 140, size=3)
    noise = rng.integers(-12, 12, size=(*spec.image_hw, 1))
    background = np.clip(base + noise, 0, 255).astype(np.uint8)
    for camera in range(spec.cameras):
        cam_dir = traj_dir / f"images{camera}"
        cam_dir.mkdir(parents=True)
        for t in range(frames):
            frame = _render(state[t], target, COLORS[color_name], background)
            _write_jpeg(cam_dir / f"im_{t}.jpg", frame if camera == 0 else frame[:, ::-1])
    if spec.with_depth:
        (traj_dir / "depth_images0").mkdir()
        for t in range(frames):
            Image.fromarray(np.zeros(spec.image_hw, np.uint8)).save(
                traj_dir / "depth_images0" / f"im_{t}.png")
    stamps = when.timestamp() + 0.2 * np.arange(frames)
    _write_pickle(traj_dir / "obs_dict.pkl", {
        "full_state": state, "state": state.copy(), "qpos": rng.normal(size=(frames, 6)),
        "qvel": rng.normal(size=(frames, 6)), "joint_effort": rng.normal(size=(frames, 6)),
        "desired_state": state.copy(), "time_stamp": stamps,
        "eef_transform": np.tile(np.eye(4), (frames, 1, 1)),
        "high_bound": np.tile(np.r_[WORKSPACE_HIGH, 1.57, 1.0], (frames, 1)),
        "low_bound": np.tile(np.r_[WORKSPACE_LOW, -1.57, 0.0], (frames, 1)),
        "env_done": np.zeros(frames, bool), "t_get_obs": stamps + 0.01,
    })
    _write_pickle(traj_dir / "policy_out.pkl", [
        {"actions": a, "new_robot_transform": np.eye(4), "delta_robot_transform": np.eye(4),
         "policy_type": "VRTeleopPolicy"} for a in actions])
    _write_pickle(traj_dir / "agent_data.pkl", {"traj_ok": True})
    if spec.with_lang:
        instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))].format(color=color_name)
        (traj_dir / "lang.txt").write_text(f"{instruction}\nconfidence: 1\n")
    if spec.with_saliency:
        maps = np.concatenate([_saliency(s, target, spec.image_hw) for s in state])[:, None]
        maps[rng.uniform(size=frames) < 0.15] = 0.0  # frames without a detection
        _write_pickle(traj_dir / "saliency_map.pkl", maps.astype(np.float32))


def generate_raw_dataset(out_dir: Path, spec: SyntheticSpec | None = None,
                         progress: bool = False) -> Path:
    """Write a raw BridgeData tree under ``out_dir`` and return it.

    Layout: ``synthetic_lab/toykitchen_sim/reach_target_<k>/00/<YYYY-MM-DD_HH-MM-SS>/raw/
    traj_group0/traj<i>/`` (depth 5 for the converter), plus the collection's JSON files.
    """
    spec = spec or SyntheticSpec()
    out_dir = Path(out_dir)
    rng = np.random.default_rng(spec.seed)
    start = dt.datetime(2021, 5, 3, 10) if spec.before_cutoff else dt.datetime(2022, 3, 14, 9)
    jobs = [(k, d, i) for k in range(spec.num_tasks) for d in range(spec.dates_per_task)
            for i in range(spec.trajs_per_date)]
    for k, d, i in tqdm(jobs, desc="synthetic", unit="traj", disable=not progress):
        when = start + dt.timedelta(days=k, hours=d)
        dated = (out_dir / "synthetic_lab" / "toykitchen_sim" / f"reach_target_{k}" / "00"
                 / when.strftime("%Y-%m-%d_%H-%M-%S"))
        if i == 0:
            (dated / "raw").mkdir(parents=True, exist_ok=True)
            meta = {"robot": "widowx", "camera_type": "synthetic", "task": f"reach_target_{k}"}
            (dated / "collection_metadata.json").write_text(json.dumps(meta))
            (dated / "config.json").write_text(json.dumps({"seed": spec.seed}))
        traj_dir = dated / "raw" / "traj_group0" / f"traj{i}"
        traj_dir.mkdir(parents=True, exist_ok=True)
        _write_trajectory(traj_dir, rng, spec, when)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", "--output_path", dest="out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--dates", type=int, default=2, help="dated folders per task")
    parser.add_argument("--trajectories", type=int, default=10, help="per dated folder")
    parser.add_argument("--min_frames", type=int, default=14)
    parser.add_argument("--max_frames", type=int, default=22)
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--saliency", action="store_true", help="write saliency_map.pkl")
    parser.add_argument("--depth_images", action="store_true", help="write depth_images0/")
    parser.add_argument("--before_cutoff", action="store_true",
                        help="date folders before 2021-07-23 (latency-shifted on conversion)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    spec = SyntheticSpec(seed=args.seed, num_tasks=args.tasks, dates_per_task=args.dates,
                         trajs_per_date=args.trajectories, min_frames=args.min_frames,
                         max_frames=args.max_frames, cameras=args.cameras,
                         image_hw=(args.height, args.width), with_saliency=args.saliency,
                         with_depth=args.depth_images, before_cutoff=args.before_cutoff)
    generate_raw_dataset(args.out, spec, progress=True)
    print(f"raw dataset: {args.out}")


if __name__ == "__main__":
    main()
