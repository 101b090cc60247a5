"""Reading raw BridgeData: one ``raw/traj_group*/traj*`` folder -> :class:`RawTrajectory`.

:func:`read_trajectory` reads what the original converter reads for one trajectory folder:
LANCZOS-squashed frames of every ``images<N>`` camera, ``state`` and ``time_stamp``, optional
``saliency``, the raw actions and the language lines, and notes whether the one-frame latency
shift for data recorded before 2021-07-23 applies. The result offers the packed store's
``Trajectory`` and the original's out.npy dict (``raw_trajectory.py``). Unlike the original, it
checks everything first: anything unexpected raises :class:`SkipTrajectory` whose ``reason`` (a
short summary key) and ``detail`` (what was expected vs found) the converter logs and counts.
Layout, latency shift and schema: docs/semantics.md, 'Data format and latency shift'.

The raw format stores ``obs_dict.pkl`` / ``policy_out.pkl`` as pickles, so reading them executes
pickle: convert only data from your own robot stack.
"""

import datetime as dt
import glob
import logging
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bridge_torch.data.sources.pickle_guard import refuse_if_forbidden
from bridge_torch.data.sources.raw_trajectory import RawTrajectory

log = logging.getLogger(__name__)
CAMERA_DIR = re.compile(r"^images(\d+)$")  # depth_images*, images0_saliency.gif, ... never match
FRAME_FILE = re.compile(r"^im_(\d+)\.jpg$")
DATE_FORMAT = "%Y-%m-%d_%H-%M-%S"  # names of the dated folders
LATENCY_CUTOFF = dt.datetime(2021, 7, 23)  # older data has a one-frame camera delay
STATE_DIM = 7  # full_state: x, y, z, roll, pitch, yaw, gripper
ACTION_DIM = 7  # dx, dy, dz, droll, dpitch, dyaw, gripper target
OBS_FILE, POLICY_FILE, LANG_FILE = "obs_dict.pkl", "policy_out.pkl", "lang.txt"
SALIENCY_FILE = "saliency_map.pkl"
MAIN_CAMERA = "images0"  # every trajectory needs it: training and out.npy readers use it
SALIENCY_TOLERANCE = 1e-3  # producer maps are min-max normalised; allow rounding outside [0, 1]

# Summary keys of skipped trajectories.
MISSING_PICKLE = "missing obs_dict.pkl/policy_out.pkl"
NO_IMAGES = "missing or empty images dir"
BAD_IMAGE = "corrupt or unreadable image"
FRAME_MISMATCH = "camera frames missing or mismatched"
BAD_PICKLE = "malformed pickle"
BAD_LANGUAGE = "unreadable lang.txt"
LENGTH_MISMATCH = "inconsistent lengths"
NON_FINITE = "NaN or inf values"
TOO_SHORT = "fewer than 2 frames"
BROKEN_LINK = "symlink loop or dangling link"
# Summary keys of skipped dated folders.
NOT_DATED = "not a YYYY-MM-DD_HH-MM-SS folder"
LMDB_PATH = "lmdb path"
NO_TRAJECTORIES = "no raw/traj_group*/traj* inside"


class Skip(Exception):
    """Input the converter leaves out: ``reason`` keys the summary, ``detail`` explains."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SkipTrajectory(Skip):
    """A trajectory folder that cannot be converted."""


class SkipFolder(Skip):
    """A collection entry that is not a usable dated folder."""


class SaliencyUnavailable(Exception):
    """saliency_map.pkl is missing or unusable; the trajectory is kept without saliency."""


def parse_folder_date(name: str) -> dt.datetime | None:
    """The date of a ``YYYY-MM-DD_HH-MM-SS`` folder name, or None when it is not one."""
    try:
        return dt.datetime.strptime(name, DATE_FORMAT)
    except ValueError:
        return None


def needs_latency_shift(date: dt.datetime) -> bool:
    """Data recorded before 2021-07-23 pairs action a_k with the next frame (camera delay)."""
    return date < LATENCY_CUTOFF


def find_collections(input_path: Path, depth: int) -> list[Path]:
    """Collection directories: ``depth - 1`` levels below ``input_path`` (itself for 1)."""
    if depth <= 1:
        return [Path(input_path)]
    pattern = os.path.join(glob.escape(str(input_path)), *["*"] * (depth - 1))
    return sorted(Path(p) for p in glob.glob(pattern) if os.path.isdir(p))


def _broken_link(path: Path) -> bool:
    """A symlink that resolves to nothing: dangling, or a loop (``exists`` is False for both)."""
    return path.is_symlink() and not path.exists()


def trajectory_dirs(dated_folder: Path) -> list[Path]:
    """``raw/traj_group*/traj*`` directories of a dated folder, sorted by path; broken links
    are kept so that reading them is a logged, counted skip rather than a silent omission."""
    return sorted(p for p in dated_folder.glob("raw/traj_group*/traj*")
                  if p.is_dir() or _broken_link(p))


def check_links(traj_dir: Path) -> None:
    """A trajectory folder that is, or holds, a symlink loop or dangling link is damaged."""
    if _broken_link(traj_dir):
        raise SkipTrajectory(BROKEN_LINK, f"{traj_dir} is a symlink that resolves to nothing "
                             "(a loop or a missing target)")
    broken = sorted(p.name for p in traj_dir.iterdir() if _broken_link(p))
    if broken:
        raise SkipTrajectory(BROKEN_LINK, f"{traj_dir} holds symlinks that resolve to nothing "
                             f"(loops or missing targets): {broken}")


def read_dated_folder(folder: Path, relative: str) -> tuple[dt.datetime, list[Path]]:
    """Date and trajectory directories of one entry of a collection directory.

    Args:
        relative: the entry's path relative to the input root (searched for ``lmdb``).
    Raises:
        SkipFolder: an lmdb path, not a ``YYYY-MM-DD_HH-MM-SS`` directory, or no trajectories.
    """
    if "lmdb" in relative:
        raise SkipFolder(LMDB_PATH, "lmdb data is not supported")
    date = parse_folder_date(folder.name)
    if date is None or not folder.is_dir():
        kind = "directory" if folder.is_dir() else "file"
        raise SkipFolder(NOT_DATED, f"expected a dated directory YYYY-MM-DD_HH-MM-SS, found "
                         f"{kind} {folder.name!r}")
    trajs = trajectory_dirs(folder)
    if not trajs:
        raise SkipFolder(NO_TRAJECTORIES, "expected trajectories in raw/traj_group*/traj*, "
                         "found none")
    return date, trajs


def camera_dirs(traj_dir: Path) -> list[Path]:
    """``images<N>`` directories sorted by N; depth images and stray files are ignored."""
    found = [p for p in traj_dir.iterdir() if p.is_dir() and CAMERA_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(CAMERA_DIR.match(p.name).group(1)))


def _frame_indices(camera_dir: Path) -> set[int]:
    return {int(m.group(1)) for p in camera_dir.iterdir() if (m := FRAME_FILE.match(p.name))}


def count_frames(traj_dir: Path) -> dict[str, int]:
    """Frames per camera; every camera must hold exactly ``im_0 .. im_{T-1}.jpg`` of the first.

    Returns:
        ``{camera name: T}`` in camera order.
    Raises:
        SkipTrajectory: no camera, no images0, an empty first camera, gaps, or a camera with
            another count.
    """
    cameras = camera_dirs(traj_dir)
    if not cameras:
        raise SkipTrajectory(NO_IMAGES, f"expected an images<N>/ directory in {traj_dir}, "
                             f"found {sorted(p.name for p in traj_dir.iterdir())}")
    if cameras[0].name != MAIN_CAMERA:
        raise SkipTrajectory(NO_IMAGES, f"expected {traj_dir / MAIN_CAMERA}/ (the camera "
                             f"training reads), found only {[c.name for c in cameras]}")
    expected = _frame_indices(cameras[0])
    if not expected:
        raise SkipTrajectory(NO_IMAGES, f"expected im_<t>.jpg frames in {cameras[0]}, found none")
    steps = len(expected)
    for camera in cameras:
        found = expected if camera == cameras[0] else _frame_indices(camera)
        if found != set(range(steps)):
            missing = sorted(set(range(steps)) - found)[:5]
            raise SkipTrajectory(FRAME_MISMATCH, f"expected im_0..im_{steps - 1}.jpg (the "
                                 f"{steps} frames of {cameras[0].name}) in {camera}, found "
                                 f"{len(found)} frames, missing e.g. {missing}")
    return {camera.name: steps for camera in cameras}


def read_frames(camera_dir: Path, steps: int, im_size: int) -> list[np.ndarray]:
    """``im_0 .. im_{steps-1}`` squashed to uint8 (im_size, im_size, 3) with LANCZOS."""
    frames = []
    for t in range(steps):
        path = camera_dir / f"im_{t}.jpg"
        try:
            with Image.open(path) as image:
                image.load()  # decode now: a truncated JPEG raises here, not silently later
                if image.mode != "RGB":
                    raise SkipTrajectory(BAD_IMAGE, f"expected an RGB JPEG at {path}, found "
                                         f"mode {image.mode}")
                frames.append(squash_frame(image, im_size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise SkipTrajectory(BAD_IMAGE, f"cannot decode {path}: {err}") from err
    return frames


def squash_frame(image: Image.Image, im_size: int) -> np.ndarray:
    """The whole frame squashed to uint8 (im_size, im_size, 3) with LANCZOS, as the original
    converter does; every source resizes through this, so frames of one scene match whichever
    release they came from."""
    return np.array(image.resize((im_size, im_size), Image.Resampling.LANCZOS))


def load_pickle(path: Path) -> Any:
    """Unpickle one raw file (pickle is the raw format); failures become SkipTrajectory.

    Raises:
        PickleRefused: ``$BRIDGE_TORCH_NO_PICKLE`` forbids unpickling (not a skip: no raw
            trajectory can be read then).
    """
    refuse_if_forbidden(path)
    try:
        with open(path, "rb") as file:
            return pickle.load(file)
    except Exception as err:  # a corrupt pickle can raise nearly any exception type
        raise SkipTrajectory(BAD_PICKLE, f"cannot unpickle {path}: "
                             f"{type(err).__name__}: {err}") from err


def _numeric(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``value`` as a finite float64 array of ``shape``, else SkipTrajectory saying what differs."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SkipTrajectory(BAD_PICKLE, f"{what}: expected numbers of shape {shape}, found "
                             f"{type(value).__name__} ({err})") from err
    if array.shape != shape:
        reason = LENGTH_MISMATCH if array.shape[1:] == shape[1:] else BAD_PICKLE
        raise SkipTrajectory(reason, f"{what}: expected shape {shape}, found {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        raise SkipTrajectory(NON_FINITE, f"{what}: NaN or inf at index {bad}")
    return array


def read_obs_dict(traj_dir: Path, steps: int) -> tuple[Sequence, Sequence]:
    """``full_state`` (T, 7) and ``time_stamp`` (T,) of obs_dict.pkl, as stored (list or array)."""
    path = traj_dir / OBS_FILE
    obs = load_pickle(path)
    if not isinstance(obs, dict) or "full_state" not in obs or "time_stamp" not in obs:
        found = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
        raise SkipTrajectory(BAD_PICKLE, f"{path}: expected a dict with 'full_state' and "
                             f"'time_stamp', found {found}")
    _numeric(obs["full_state"], (steps, STATE_DIM), f"{path} full_state ({steps} frames)")
    _numeric(obs["time_stamp"], (steps,), f"{path} time_stamp ({steps} frames)")
    return obs["full_state"], obs["time_stamp"]


def read_actions(traj_dir: Path, steps: int) -> list:
    """The T-1 actions of policy_out.pkl: each dict's ``actions``, or the rows of a plain list."""
    path = traj_dir / POLICY_FILE
    policy_out = load_pickle(path)
    if isinstance(policy_out, np.ndarray) and policy_out.ndim > 0:
        policy_out = list(policy_out)  # rows, as iterating the original's array does
    if not isinstance(policy_out, list | tuple) or len(policy_out) == 0:
        raise SkipTrajectory(BAD_PICKLE, f"{path}: expected a non-empty list of dicts or of "
                             f"{ACTION_DIM}-D actions, found {type(policy_out).__name__}")
    if isinstance(policy_out[0], dict):
        if not all(isinstance(step, dict) and "actions" in step for step in policy_out):
            raise SkipTrajectory(BAD_PICKLE, f"{path}: expected every entry to be a dict with "
                                 "'actions'")
        actions = [step["actions"] for step in policy_out]
    else:
        actions = list(policy_out)
    _numeric(actions, (steps - 1, ACTION_DIM), f"{path} actions ({steps} frames -> {steps - 1} "
             "actions)")
    return actions


def read_language(traj_dir: Path) -> list[str]:
    """Instruction lines of lang.txt without ``confidence`` lines, or ``[""]`` without the file."""
    path = traj_dir / LANG_FILE
    if not path.is_file():
        return [""]
    try:
        with open(path, encoding="utf-8") as file:
            lines = list(file)  # the original's line splitting (blank lines kept as "")
    except (OSError, UnicodeDecodeError) as err:
        raise SkipTrajectory(BAD_LANGUAGE, f"cannot read {path} as UTF-8 text: {err}") from err
    return [line.strip() for line in lines if "confidence" not in line]


def read_saliency(traj_dir: Path, steps: int, im_size: int) -> list[np.ndarray]:
    """saliency_map.pkl (T, 1, H, W) in [0, 1] -> T float32 (S, S, 1), PIL "F" BILINEAR.

    Raises:
        SaliencyUnavailable: the file is missing, unreadable, or not T finite maps in [0, 1]
            (the original dropped the whole trajectory on a frame-count mismatch; we keep it).
    """
    path = traj_dir / SALIENCY_FILE
    if not path.is_file():
        raise SaliencyUnavailable(f"{path} not found")
    try:
        maps = load_pickle(path)
    except SkipTrajectory as err:
        raise SaliencyUnavailable(err.detail) from err
    if not isinstance(maps, np.ndarray) or maps.ndim != 4 or maps.shape[:2] != (steps, 1) \
            or not np.issubdtype(maps.dtype, np.floating):
        found = (maps.dtype, maps.shape) if isinstance(maps, np.ndarray) else type(maps).__name__
        raise SaliencyUnavailable(f"{path}: expected a float array ({steps}, 1, H, W), "
                                  f"found {found}")
    if not np.all(np.isfinite(maps)) or maps.min() < -SALIENCY_TOLERANCE \
            or maps.max() > 1 + SALIENCY_TOLERANCE:
        raise SaliencyUnavailable(f"{path}: expected finite values in [0, 1], found "
                                  f"[{np.nanmin(maps)}, {np.nanmax(maps)}]")
    resized = []
    for frame in maps[:, 0].astype(np.float32):
        image = Image.fromarray(frame).resize((im_size, im_size), Image.Resampling.BILINEAR)
        resized.append(np.array(image, dtype=np.float32)[..., None])
    return resized


def read_trajectory(traj_dir: Path, *, im_size: int, latency_shift: bool,
                    saliency: bool) -> RawTrajectory:
    """Read one raw ``traj<i>`` folder; the latency shift is applied by the result's views.

    With ``saliency``, a missing or bad saliency_map.pkl is logged and the trajectory kept
    without saliency.

    Raises:
        SkipTrajectory: the trajectory cannot be converted (reason and detail say why).
    """
    check_links(traj_dir)
    for name in (OBS_FILE, POLICY_FILE):
        if not (traj_dir / name).is_file():
            raise SkipTrajectory(MISSING_PICKLE, f"expected {traj_dir / name}, not found")
    frame_counts = count_frames(traj_dir)
    steps = next(iter(frame_counts.values()))
    if steps < 2 + latency_shift:
        raise SkipTrajectory(TOO_SHORT, f"{traj_dir}: {steps} frames give no transition"
                             + (" after the latency shift" if latency_shift else ""))
    state, time_stamp = read_obs_dict(traj_dir, steps)
    actions = read_actions(traj_dir, steps)
    language = read_language(traj_dir)
    frames = {name: read_frames(traj_dir / name, steps, im_size) for name in frame_counts}
    maps = None
    if saliency:
        try:
            maps = read_saliency(traj_dir, steps, im_size)
        except SaliencyUnavailable as err:
            log.warning("keeping %s without saliency: %s", traj_dir, err)
    return RawTrajectory(frames=frames, state=state, time_stamp=time_stamp, actions=actions,
                         language=language, saliency=maps, latency_shift=latency_shift,
                         source=str(traj_dir))
