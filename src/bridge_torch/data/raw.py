"""Reading one raw BridgeData trajectory folder into the out.npy trajectory schema (spec §1-§3).

The result is byte-for-byte what the original converter builds: LANCZOS-squashed frames, the
state/time stamp of each step as lists of per-step dicts, raw actions, all-zero terminals and the
language lines, with the one-frame latency shift for data recorded before 2021-07-23. Anything
unexpected raises :class:`BadTrajectory` with a short reason the converter counts and logs.
"""

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CAMERA_DIR = re.compile(r"^images(\d+)$")


class BadTrajectory(Exception):
    """A trajectory the converter skips; ``reason`` is a short key for the summary."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _load_pickle(path: Path) -> Any:
    if not path.is_file():
        raise BadTrajectory(f"missing {path.name}", str(path))
    try:
        with open(path, "rb") as f:
            return pickle.load(f)  # raw robot data written by the user's own robot stack
    except Exception as err:  # any unpickling failure means a corrupt file
        raise BadTrajectory(f"unreadable {path.name}", f"{path}: {err}") from err


def camera_dirs(traj_dir: Path) -> list[Path]:
    """``images<N>`` directories sorted by N; depth images and stray files are ignored."""
    found = [p for p in traj_dir.iterdir() if p.is_dir() and CAMERA_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(CAMERA_DIR.match(p.name).group(1)))


def read_frames(camera_dir: Path, count: int, im_size: int) -> list[np.ndarray]:
    """``im_0 .. im_{count-1}`` resized to im_size² with LANCZOS (aspect ratio squashed)."""
    frames = []
    for t in range(count):
        path = camera_dir / f"im_{t}.jpg"
        if not path.is_file():
            raise BadTrajectory("camera with fewer frames", f"{path} missing ({count} expected)")
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((im_size, im_size), Image.Resampling.LANCZOS)
                frames.append(np.asarray(img, dtype=np.uint8))
        except OSError as err:
            raise BadTrajectory("corrupt image", f"{path}: {err}") from err
    return frames


def resize_saliency(maps: Any, frames: int, im_size: int, path: Path) -> list[np.ndarray]:
    """(T, 1, H, W) float maps -> T float32 (S, S, 1) maps, PIL mode F BILINEAR (spec §3)."""
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[1] != 1 or maps.shape[0] < frames:
        raise BadTrajectory("bad saliency_map.pkl",
                            f"{path}: expected ({frames}, 1, H, W), found {maps.shape}")
    out = []
    for frame in maps[:frames, 0].astype(np.float32):
        img = Image.fromarray(frame, mode="F").resize((im_size, im_size), Image.Resampling.BILINEAR)
        out.append(np.asarray(img, dtype=np.float32)[..., None])
    return out


def _language(traj_dir: Path) -> list[str]:
    path = traj_dir / "lang.txt"
    if not path.is_file():
        return [""]
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if "confidence" not in line]


def _check_finite(name: str, values: np.ndarray, traj_dir: Path) -> None:
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
        raise BadTrajectory(f"non-finite {name}", f"{traj_dir}: {name} has NaN/inf or non-numbers")


def read_trajectory(traj_dir: Path, *, im_size: int, latency_shift: bool,
                    saliency: bool) -> dict[str, Any]:
    """Build one out.npy trajectory dict from a raw ``traj<i>`` folder."""
    obs_dict = _load_pickle(traj_dir / "obs_dict.pkl")
    policy_out = _load_pickle(traj_dir / "policy_out.pkl")
    cams = camera_dirs(traj_dir)
    if not cams:
        raise BadTrajectory("no image folder", f"{traj_dir} has no images<N>/ directory")
    steps = len(list(cams[0].glob("im_*.jpg")))
    if steps < 2 + latency_shift:
        raise BadTrajectory("too few frames", f"{traj_dir}: {steps} frames")
    images = {cam.name: read_frames(cam, steps, im_size) for cam in cams}
    if not isinstance(obs_dict, dict) or "full_state" not in obs_dict \
            or "time_stamp" not in obs_dict:
        raise BadTrajectory("bad obs_dict.pkl", f"{traj_dir}: needs a dict with full_state and "
                            "time_stamp")
    state = np.asarray(obs_dict["full_state"])
    stamps = np.asarray(obs_dict["time_stamp"])
    _check_finite("state", state, traj_dir)
    if len(policy_out) and isinstance(policy_out[0], dict):
        actions = [step["actions"] for step in policy_out]
    else:
        actions = list(policy_out)
    _check_finite("actions", np.asarray(actions, dtype=object).astype(float), traj_dir)
    if state.shape[0] != steps or len(actions) != steps - 1 or stamps.shape[0] != steps:
        raise BadTrajectory("inconsistent lengths", f"{traj_dir}: {steps} frames, "
                            f"{state.shape[0]} states, {stamps.shape[0]} time stamps, "
                            f"{len(actions)} actions (expected frames - 1)")
    columns: dict[str, list] = dict(images)
    columns["state"], columns["time_stamp"] = list(state), list(stamps)
    if saliency:
        maps = _load_pickle(traj_dir / "saliency_map.pkl")
        columns["saliency"] = resize_saliency(maps, steps, im_size, traj_dir / "saliency_map.pkl")
    observations = [dict(zip(columns, values, strict=True))
                    for values in zip(*(col[:-1] for col in columns.values()), strict=True)]
    next_observations = [dict(zip(columns, values, strict=True))
                         for values in zip(*(col[1:] for col in columns.values()), strict=True)]
    terminals = [0] * len(actions)
    if latency_shift:  # action a_k pairs with the frame captured one step later (spec §2)
        observations, next_observations = observations[1:], next_observations[1:]
        actions, terminals = actions[:-1], terminals[:-1]
    return {"observations": observations, "next_observations": next_observations,
            "actions": actions, "terminals": terminals, "language": _language(traj_dir)}
