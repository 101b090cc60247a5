"""Synthetic raw BridgeData: learnable toy scenes written in the real on-disk layout.

Each trajectory is a scripted reach-and-grasp seen from above: a textured table, a block in the
task's colour at a random position, and a white end-effector marker whose radius encodes the
height z and whose ring thickness the gripper opening (thin ring = open, filled disc = closed).
The marker moves toward the block with noisy proportional steps, descends, closes the gripper
through intermediate commands (exercising the relabelling's gripper binarisation) and lifts the
block.
End-effector x, y map linearly to pixels, so a policy conditioned on the image (and a goal image)
can learn the commanded motion ``[dx, dy, dz, droll, dpitch, dyaw, gripper]``; ``full_state``
integrates it with noise. The wrist rotation follows the motion, so all seven action dimensions
are predictable from what the camera sees. Dated folders before 2021-07-23
(``dates_before_cutoff``) show each state one frame late, the camera delay the converter's
latency shift compensates.

Everything derives from the seed (one generator per folder and trajectory, keyed by its
indices), so the same arguments give byte-identical trees.

Usage::

    bridge-torch-synthetic --output_path raw/ --seed 0 --num_tasks 2 --trajs_per_date 10
    bridge-torch-convert --input_path raw/ --output_path data/ --im_size 64
"""

import datetime as dt
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from bridge_torch.cli_errors import CliParser, debug_requested, user_errors
from bridge_torch.data.sources.bridge_raw import (
    LANG_FILE,
    LATENCY_CUTOFF,
    OBS_FILE,
    POLICY_FILE,
    SALIENCY_FILE,
)
from bridge_torch.data.sources.raw_files import encode_image, write_pickle

LAB, ENVIRONMENT, COLLECTION = "synthetic_lab", "tabletop", "00"
WORKSPACE_LOW = np.array([0.15, -0.15, 0.02])  # end-effector x, y, z bounds in metres
WORKSPACE_HIGH = np.array([0.40, 0.15, 0.20])
GRASP_Z = 0.04  # height at which the gripper closes
IMAGE_MARGIN = 0.08  # fraction of the image left around the workspace
WRIST_GAIN = 4.0  # rad of wrist rotation per metre of end-effector motion
STEP_SECONDS = 0.2  # time between frames (the robot's 5 Hz control rate)
COLORS = {"red": (210, 40, 40), "blue": (40, 70, 210), "yellow": (225, 200, 30),
          "purple": (150, 50, 170), "orange": (240, 130, 20), "cyan": (30, 190, 200)}
MARKER_COLOR = (250, 250, 250)
INSTRUCTIONS = ("pick up the {color} block", "grasp the {color} block and lift it",
                "move the gripper to the {color} block and pick it up")
NO_DETECTION_PROBABILITY = 0.1  # saliency frames left all-zero, as the real producer does


def _task_name(task: int) -> tuple[str, str]:
    color = list(COLORS)[task % len(COLORS)]
    suffix = f"_{task}" if task >= len(COLORS) else ""
    return color, f"pick_up_{color}_block{suffix}"


def _to_pixels(xy: np.ndarray, hw: tuple[int, int], camera: int) -> np.ndarray:
    """(..., 2) x, y metres -> (..., 2) row, col pixels; other cameras see the table rotated."""
    frac = (xy - WORKSPACE_LOW[:2]) / (WORKSPACE_HIGH[:2] - WORKSPACE_LOW[:2])
    if camera % 2:
        frac = np.stack([frac[..., 1], 1.0 - frac[..., 0]], axis=-1)
    span = np.array(hw, dtype=np.float64) - 1
    return (IMAGE_MARGIN + (1 - 2 * IMAGE_MARGIN) * frac) * span


def _simulate(rng: np.random.Generator, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scripted reach-grasp-lift with noisy commands.

    Returns:
        full_state float64 (T, 7), commanded actions float64 (T-1, 7), block xy (T, 2).
    """
    target = rng.uniform(WORKSPACE_LOW[:2] + 0.03, WORKSPACE_HIGH[:2] - 0.03)
    start = rng.uniform(WORKSPACE_LOW[:2], WORKSPACE_HIGH[:2])
    while np.linalg.norm(start - target) < 0.08:  # start visibly away from the block
        start = rng.uniform(WORKSPACE_LOW[:2], WORKSPACE_HIGH[:2])
    state = np.zeros((steps, 7))
    state[0] = [*start, rng.uniform(0.10, 0.18), *rng.normal(0.0, 0.05, 3), 1.0]
    actions = np.zeros((steps - 1, 7))
    approach = max(1, round(0.6 * (steps - 1)))
    gripper_commands = np.r_[np.ones(approach), 0.6, 0.25, np.zeros(steps)][:steps - 1]
    block = np.tile(target, (steps, 1))
    for t in range(steps - 1):
        pos = state[t, :3]
        if t < approach:
            goal = np.r_[target, GRASP_Z]
            move = (goal - pos) / (approach - t) + rng.normal(0.0, 0.002, 3)
        else:
            move = rng.normal(0.0, 0.002, 3) + (t >= approach + 2) * np.array([0, 0, 0.03])
        actions[t, :3] = move
        # the wrist tilts with the motion (roll, pitch) and turns as it descends (yaw), so the
        # rotation commands are as predictable from the images as the translation
        actions[t, 3:6] = WRIST_GAIN * np.array([-move[1], move[0], move[2]])
        actions[t, 3:6] += rng.normal(0.0, 0.002, 3)
        actions[t, 6] = gripper_commands[t]
        state[t + 1, :3] = np.clip(pos + move * (1 + rng.normal(0.0, 0.03)) +
                                   rng.normal(0.0, 0.001, 3), WORKSPACE_LOW, WORKSPACE_HIGH)
        state[t + 1, 3:6] = state[t, 3:6] + actions[t, 3:6] + rng.normal(0.0, 0.002, 3)
        state[t + 1, 6] = state[t, 6] + 0.7 * (gripper_commands[t] - state[t, 6])
        if state[t + 1, 6] < 0.5:  # grasped: the block moves with the gripper
            block[t + 1] = state[t + 1, :2]
    return state, actions, block


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """A wood-like table: base colour, low-frequency blotches and grain stripes, uint8 (H, W, 3)."""
    base = np.array([150, 115, 80]) + rng.integers(-25, 25, 3)
    blotch = Image.fromarray(rng.uniform(-20, 20, (6, 8)).astype(np.float32))
    blotch = np.asarray(blotch.resize((hw[1], hw[0]), Image.Resampling.BILINEAR))
    rows = np.arange(hw[0])[:, None]
    grain = 8 * np.sin(rows * (2 * np.pi / max(hw[0] / 24, 2)) + rng.uniform(0, 2 * np.pi))
    table = base[None, None] + (blotch + grain)[..., None]
    return np.clip(table, 0, 255).astype(np.uint8)


def _disc(image: np.ndarray, center: np.ndarray, radius: float, color: tuple[int, int, int],
          inner: float = 0.0) -> None:
    """Paint a disc (a ring when ``inner`` >= 1 px) in place, touching only its bounding box."""
    top, left = (np.floor(center - radius)).astype(int).clip(0)
    bottom, right = np.minimum(np.ceil(center + radius).astype(int) + 1, image.shape[:2])
    rows, cols = np.ogrid[top:bottom, left:right]
    dist2 = (rows - center[0]) ** 2 + (cols - center[1]) ** 2
    mask = dist2 <= radius**2
    if inner >= 1.0:  # a sub-pixel hole would leave a stray background dot
        mask &= dist2 >= inner**2
    image[top:bottom, left:right][mask] = color


def _render(background: np.ndarray, state: np.ndarray, block: np.ndarray,
            color: tuple[int, int, int], camera: int) -> np.ndarray:
    """One frame: table, block (square), end-effector marker (size = z, fill = gripper)."""
    hw = background.shape[:2]
    image = background.copy()
    scale = min(hw)
    center = _to_pixels(block, hw, camera)
    half = 0.08 * scale
    top, left = np.round(center - half).astype(int).clip(0)
    image[top:int(center[0] + half), left:int(center[1] + half)] = color
    z = (state[2] - WORKSPACE_LOW[2]) / (WORKSPACE_HIGH[2] - WORKSPACE_LOW[2])
    radius = scale * (0.07 + 0.08 * z)
    opening = float(np.clip(state[6], 0.0, 1.0))
    _disc(image, _to_pixels(state[:2], hw, camera), radius, MARKER_COLOR,
          inner=radius * 0.6 * opening)
    return image


def _saliency(block: np.ndarray, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """float32 (T, 1, H, W): Gaussian at the block (camera 0), max 1; some frames all-zero."""
    sigma = 0.05 * min(hw)
    maps = np.zeros((len(block), 1, *hw), np.float32)
    for t, (row, col) in enumerate(_to_pixels(block, hw, 0)):
        if rng.uniform() < NO_DETECTION_PROBABILITY:
            continue
        blob = np.outer(np.exp(-0.5 * ((np.arange(hw[0]) - row) / sigma) ** 2),
                        np.exp(-0.5 * ((np.arange(hw[1]) - col) / sigma) ** 2))
        maps[t, 0] = blob / blob.max()
    return maps


def _transform(pose: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform of [x, y, z, roll, pitch, yaw] (R = Rz Ry Rx)."""
    (cr, cp, cy), (sr, sp, sy) = np.cos(pose[3:6]), np.sin(pose[3:6])
    matrix = np.eye(4)
    matrix[:3, :3] = [[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                      [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                      [-sp, cp * sr, cp * cr]]
    matrix[:3, 3] = pose[:3]
    return matrix


def _obs_dict(rng: np.random.Generator, state: np.ndarray, actions: np.ndarray,
              start_time: float) -> dict[str, np.ndarray]:
    """obs_dict.pkl: every key of the robot stack's raw saver, with plausible shapes."""
    steps = len(state)
    joints = state[:, :6] @ rng.normal(0.0, 1.0, (6, 6))  # fake but consistent joint angles
    time_stamp = start_time + STEP_SECONDS * np.arange(steps) + rng.uniform(0, 0.01, steps)
    desired = state.copy()
    desired[1:, :6] = state[:-1, :6] + actions[:, :6]
    desired[1:, 6] = actions[:, 6]
    bounds = np.r_[WORKSPACE_HIGH, np.pi, 1.0]
    return {"full_state": state, "state": state.copy(), "qpos": joints,
            "qvel": np.gradient(joints, STEP_SECONDS, axis=0),
            "joint_effort": rng.normal(0.0, 0.1, (steps, 6)), "desired_state": desired,
            "time_stamp": time_stamp, "eef_transform": np.stack([_transform(s) for s in state]),
            "high_bound": np.tile(bounds, (steps, 1)),
            "low_bound": np.tile(np.r_[WORKSPACE_LOW, -np.pi, 0.0], (steps, 1)),
            "env_done": np.zeros(steps, dtype=bool),
            "t_get_obs": rng.uniform(0.005, 0.02, steps)}


def _policy_out(state: np.ndarray, actions: np.ndarray) -> list[dict]:
    """policy_out.pkl as VR-teleop data: a list of T-1 dicts with ``actions``."""
    return [{"actions": action, "new_robot_transform": _transform(state[t, :6] + action[:6]),
             "delta_robot_transform": _transform(action[:6]), "policy_type": "VRTeleopPolicy"}
            for t, action in enumerate(actions)]


def _write_trajectory(traj_dir: Path, rng: np.random.Generator, *, steps: int, color: str,
                      backgrounds: list[np.ndarray], delayed: bool, start_time: float,
                      with_lang: bool, with_saliency: bool, with_depth: bool) -> np.ndarray:
    """Write one ``traj<i>`` folder; returns the end-effector xy path (for diagnostics.png)."""
    state, actions, block = _simulate(rng, steps)
    shown = np.maximum(np.arange(steps) - 1, 0) if delayed else np.arange(steps)
    lighting = rng.uniform(0.9, 1.1)
    for camera, background in enumerate(backgrounds):
        lit = np.clip(background * lighting, 0, 255).astype(np.uint8)
        camera_dir = traj_dir / f"images{camera}"
        camera_dir.mkdir(parents=True)
        for t, s in enumerate(shown):
            frame = _render(lit, state[s], block[s], COLORS[color], camera)
            (camera_dir / f"im_{t}.jpg").write_bytes(encode_image(frame, "JPEG"))
    if with_depth:
        depth_dir = traj_dir / "depth_images0"
        depth_dir.mkdir()
        for t, s in enumerate(shown):  # uint16 millimetres: table at 600, marker nearer
            depth = np.full(backgrounds[0].shape[:2], 600, np.uint16)
            _disc(depth, _to_pixels(state[s, :2], depth.shape, 0), 0.05 * min(depth.shape),
                  int(600 - 1000 * state[s, 2]))
            (depth_dir / f"im_{t}.png").write_bytes(encode_image(depth, "PNG"))
    write_pickle(traj_dir / OBS_FILE, _obs_dict(rng, state, actions, start_time))
    write_pickle(traj_dir / POLICY_FILE, _policy_out(state, actions))
    write_pickle(traj_dir / "agent_data.pkl", {"traj_ok": True, "term_t": steps - 1,
                                          "policy_type": "ScriptedReachGraspPolicy"})
    if with_lang:
        lines = [INSTRUCTIONS[i].format(color=color) for i in
                 sorted(rng.choice(len(INSTRUCTIONS), size=1 + (rng.uniform() < 0.2),
                                   replace=False))]
        lines.append(f"confidence: {rng.uniform(0.8, 1.0):.3f}")
        (traj_dir / LANG_FILE).write_text("\n".join(lines) + "\n")
    if with_saliency:
        write_pickle(traj_dir / SALIENCY_FILE,
                _saliency(block[shown], backgrounds[0].shape[:2], rng))
    return state[:, :2]


def _diagnostics(paths: list[np.ndarray]) -> bytes:
    """A small PNG of every trajectory's xy path (the real folders carry a diagnostics plot)."""
    image = np.full((96, 96, 3), 255, np.uint8)
    for i, path in enumerate(paths):
        for row, col in np.round(_to_pixels(path, (96, 96), 0)).astype(int):
            image[row, col] = list(COLORS.values())[i % len(COLORS)]
    return encode_image(image, "PNG")


def _folder_date(seed: int, task: int, index: int, before_cutoff: bool) -> dt.datetime:
    """Dated folder names, unique per task, before or after the latency cutoff."""
    rng = np.random.default_rng([seed, task, index, 0, int(before_cutoff)])
    base = dt.datetime(2021, 1, 4, 9) if before_cutoff else dt.datetime(2022, 3, 14, 9)
    when = base + dt.timedelta(days=4 * index + task % 4, seconds=int(rng.integers(0, 8 * 3600)))
    if before_cutoff and when >= LATENCY_CUTOFF:
        raise ValueError(f"dates_before_cutoff={index + 1} does not fit before {LATENCY_CUTOFF}")
    return when


def _write_dated_folder(folder: Path, *, seed: int, task: int, index: int, when: dt.datetime,
                        options: dict, bar: tqdm) -> None:
    """One ``YYYY-MM-DD_HH-MM-SS`` folder: metadata, diagnostics and its trajectories."""
    color, name = _task_name(task)
    rng = np.random.default_rng([seed, task, index])
    hw = options["image_hw"]
    backgrounds = [_background(rng, hw) for _ in range(options["cameras"])]
    start = (when - dt.datetime(1970, 1, 1)).total_seconds()  # timezone-independent
    paths = []
    for i in range(options["trajs_per_date"]):
        traj_rng = np.random.default_rng([seed, task, index, i + 1])
        steps = int(traj_rng.integers(options["min_len"], options["max_len"] + 1))
        paths.append(_write_trajectory(
            folder / "raw" / "traj_group0" / f"traj{i}", traj_rng, steps=steps, color=color,
            backgrounds=backgrounds, delayed=when < LATENCY_CUTOFF, start_time=start + 60 * i,
            with_lang=options["with_lang"], with_saliency=options["with_saliency"],
            with_depth=options["with_depth"]))
        bar.update()
    metadata = {"date": when.isoformat(), "robot": "widowx_synthetic", "environment": ENVIRONMENT,
                "task": name, "camera_type": "synthetic top-down", "num_cameras":
                options["cameras"], "policy_desc": "scripted reach, grasp and lift",
                "generator": "bridge-torch-synthetic", "seed": seed}
    config = {"camera_topics": [f"/cam{c}/image_raw" for c in range(options["cameras"])],
              "image_height": hw[0], "image_width": hw[1], "move_duration": STEP_SECONDS,
              "workspace_low": WORKSPACE_LOW.tolist(), "workspace_high": WORKSPACE_HIGH.tolist()}
    (folder / "collection_metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (folder / "diagnostics.png").write_bytes(_diagnostics(paths))


def generate_raw_dataset(out_dir: Path, *, seed: int, num_tasks: int = 2,
                         dates_per_task: int = 2, trajs_per_date: int = 5, min_len: int = 14,
                         max_len: int = 22, cameras: int = 1, with_lang: bool = True,
                         with_saliency: bool = False, with_depth: bool = False,
                         image_hw: tuple[int, int] = (480, 640), dates_before_cutoff: int = 0,
                         progress: bool = False) -> Path:
    """Write a raw BridgeData tree and return ``out_dir`` (convert it with ``--depth 5``).

    Layout: ``out_dir/synthetic_lab/tabletop/pick_up_<color>_block/00/<YYYY-MM-DD_HH-MM-SS>/``
    with ``collection_metadata.json``, ``config.json``, ``diagnostics.png`` and
    ``raw/traj_group0/traj<i>/{images<c>/im_<t>.jpg, obs_dict.pkl, policy_out.pkl,
    agent_data.pkl, [lang.txt], [saliency_map.pkl], [depth_images0/im_<t>.png]}``.

    Args:
        seed: everything derives from it; the same arguments give byte-identical files.
        min_len, max_len: frames per trajectory T (inclusive range); T-1 transitions.
        image_hw: raw frame (height, width); the real data is (480, 640).
        dates_before_cutoff: how many of each task's dated folders predate 2021-07-23 (their
            frames lag the state by one step, which the converter's latency shift undoes).
    """
    if num_tasks < 1 or dates_per_task < 1 or trajs_per_date < 1 or cameras < 1:
        raise ValueError("num_tasks, dates_per_task, trajs_per_date and cameras must be >= 1")
    if not 2 <= min_len <= max_len:
        raise ValueError(f"need 2 <= min_len <= max_len, got {min_len}, {max_len}")
    if min(image_hw) < 16 or not 0 <= dates_before_cutoff <= dates_per_task:
        raise ValueError(f"need image_hw >= 16 px and 0 <= dates_before_cutoff <= "
                         f"dates_per_task, got {image_hw}, {dates_before_cutoff}")
    options = {"trajs_per_date": trajs_per_date, "min_len": min_len, "max_len": max_len,
               "cameras": cameras, "with_lang": with_lang, "with_saliency": with_saliency,
               "with_depth": with_depth, "image_hw": tuple(image_hw)}
    out_dir = Path(out_dir)
    total = num_tasks * dates_per_task * trajs_per_date
    with tqdm(total=total, desc="synthetic", unit="traj", disable=not progress) as bar:
        for task in range(num_tasks):
            collection = out_dir / LAB / ENVIRONMENT / _task_name(task)[1] / COLLECTION
            for index in range(dates_per_task):
                before = index < dates_before_cutoff
                when = _folder_date(seed, task, index if before else index - dates_before_cutoff,
                                    before)
                folder = collection / when.strftime("%Y-%m-%d_%H-%M-%S")
                folder.mkdir(parents=True)
                _write_dated_folder(folder, seed=seed, task=task, index=index, when=when,
                                    options=options, bar=bar)
    return out_dir


def build_parser() -> CliParser:
    """The options of ``bridge-torch-synthetic``."""
    parser = CliParser(prog="bridge-torch-synthetic", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--output_path", "--out", "--out_dir", type=Path, required=True, metavar="DIR",
        help="directory to create (or an empty one)")
    add("--seed", type=int, default=0)
    add("--num_tasks", type=int, default=2)
    add("--dates_per_task", type=int, default=2)
    add("--trajs_per_date", type=int, default=10)
    add("--min_len", type=int, default=14, help="frames per trajectory, at least")
    add("--max_len", type=int, default=22, help="frames per trajectory, at most")
    add("--cameras", type=int, default=1)
    add("--image_height", type=int, default=480)
    add("--image_width", type=int, default=640)
    add("--no_lang", action="store_true", help="write no lang.txt")
    add("--saliency", action="store_true", help="write saliency_map.pkl")
    add("--depth_images", action="store_true", help="write depth_images0/")
    add("--dates_before_cutoff", type=int, default=0,
        help="dated folders per task before 2021-07-23 (latency-shifted on conversion)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``bridge-torch-synthetic``: write a synthetic raw tree."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = args.output_path
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--output_path {out} exists and is not an empty directory")
    with user_errors(parser.prog, debug=debug_requested(args), usage=(ValueError,)):
        generate_raw_dataset(
            out, seed=args.seed, num_tasks=args.num_tasks,
            dates_per_task=args.dates_per_task, trajs_per_date=args.trajs_per_date,
            min_len=args.min_len, max_len=args.max_len, cameras=args.cameras,
            with_lang=not args.no_lang, with_saliency=args.saliency,
            with_depth=args.depth_images, image_hw=(args.image_height, args.image_width),
            dates_before_cutoff=args.dates_before_cutoff, progress=True)
    print(f"wrote a synthetic raw BridgeData tree to {out} "
          f"(convert with: bridge-torch-convert --input_path {out} --output_path data/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
