"""Write simulated demonstrations as raw BridgeData trajectories, for the converter.

Only the files the converter reads are written: ``images0/im_<t>.jpg``, ``obs_dict.pkl``
(``full_state``, ``time_stamp``), ``policy_out.pkl`` (a list of dicts with ``actions``) and
``lang.txt``. A trajectory is written into a temporary folder and renamed, so an interrupted
collection never leaves a half-written ``traj<i>`` that the converter would read.
"""

import shutil
from pathlib import Path

import numpy as np

from bridge_torch.data.sources.bridge_raw import LANG_FILE, OBS_FILE, POLICY_FILE
from bridge_torch.data.sources.raw_files import encode_image, write_pickle

JPEG_QUALITY = 95  # near-lossless: eval feeds the policy raw renders, training decoded JPEGs
STEP_SECONDS = 0.2  # nominal time between frames (BridgeData's 5 Hz)


def write_trajectory(traj_dir: Path, frames: np.ndarray, proprio: np.ndarray,
                     actions: np.ndarray, language: str) -> None:
    """Write one ``traj<i>`` folder atomically.

    Args:
        traj_dir: the final ``.../raw/traj_group0/traj<i>`` path; must not exist yet.
        frames: uint8 (T, H, W, 3) camera frames.
        proprio: float (T, 7) ``full_state`` of every frame.
        actions: float (T-1, 7) Bridge actions taken between frames.
        language: the instruction written to lang.txt.
    """
    steps = len(frames)
    if proprio.shape != (steps, 7) or actions.shape != (steps - 1, 7):
        raise ValueError(f"{traj_dir}: expected proprio ({steps}, 7) and actions ({steps - 1}, 7) "
                         f"for {steps} frames, got {proprio.shape} and {actions.shape}")
    if traj_dir.exists():
        raise FileExistsError(f"{traj_dir} already exists; collect into an empty directory")
    tmp = traj_dir.with_name(f".{traj_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images0").mkdir(parents=True)
    for t, frame in enumerate(frames):
        (tmp / "images0" / f"im_{t}.jpg").write_bytes(encode_image(frame, "JPEG",
                                                                  quality=JPEG_QUALITY))
    obs = {"full_state": np.asarray(proprio, np.float64),
           "time_stamp": STEP_SECONDS * np.arange(steps, dtype=np.float64)}
    policy_out = [{"actions": np.asarray(a, np.float64)} for a in actions]
    write_pickle(tmp / OBS_FILE, obs)
    write_pickle(tmp / POLICY_FILE, policy_out)
    (tmp / LANG_FILE).write_text(language + "\n")
    tmp.rename(traj_dir)
