"""Scripted-expert demonstrations on Meta-World, written as a BridgeData dataset.

For each task, episodes ``(task, variation = i % 50, seed = seed + i // 50)`` are rolled out with
Meta-World's expert until ``info["success"]``; only successful episodes are kept (failures are
skipped and the next episode is tried), each written as a raw trajectory (``raw_writer``) under
``<out>/raw/metaworld/sawyer/<task>/00/<date>/`` and listed with its identity in
``<out>/episodes.json``. The tree is then converted by the normal converter into ``<out>/data``,
with ``val_episodes`` of the ``episodes + val_episodes`` demonstrations per task in ``val``.
"""

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from bridge_torch.atomic import write_text_atomic
from bridge_torch.data.sources.convert import ConvertOptions, convert
from bridge_torch.sim.actions import metaworld_to_bridge
from bridge_torch.sim.env import (
    DEFAULT_CAMERA,
    MAX_EPISODE_STEPS,
    NUM_VARIATIONS,
    CameraConfig,
    Episode,
    SimEnv,
    expert_policy,
)
from bridge_torch.sim.raw_writer import write_trajectory

log = logging.getLogger(__name__)
RAW_PREFIX = Path("metaworld", "sawyer")  # <lab>/<env> levels of the raw layout
DATED_FOLDER = "2024-01-01_00-00-00"  # after the latency cutoff: no frame shift
CONVERT_DEPTH = 5  # <lab>/<env>/<task>/<NN>/<date>
MAX_ATTEMPTS_FACTOR = 3  # give up on a task after this many episodes per demonstration wanted
MANIFEST = "episodes.json"


@dataclass
class Demonstration:
    """An expert rollout: frames (T+1), proprio (T+1, 7), Bridge actions (T, 7)."""

    episode: Episode
    frames: np.ndarray
    proprio: np.ndarray
    actions: np.ndarray
    success: bool


def episode_for(task: str, index: int, seed: int) -> Episode:
    """The ``index``-th episode of a task's sequence starting at ``seed``."""
    return Episode(task, variation=index % NUM_VARIATIONS, seed=seed + index // NUM_VARIATIONS)


def run_expert(env: SimEnv, episode: Episode, max_steps: int = MAX_EPISODE_STEPS
               ) -> Demonstration:
    """Roll the scripted expert out from the episode's start until success or ``max_steps``."""
    expert = expert_policy(episode.task)
    obs = env.reset(episode.variation)
    frames, proprio, actions = [env.render()], [env.proprio(obs)], []
    success = False
    for _ in range(max_steps):
        action = expert.get_action(obs)
        obs, success, truncated = env.step(action)
        frames.append(env.render())
        proprio.append(env.proprio(obs))
        actions.append(metaworld_to_bridge(action))
        if success or truncated:
            break
    return Demonstration(episode, np.stack(frames), np.stack(proprio), np.stack(actions), success)


def collect_task(task: str, count: int, seed: int, raw_root: Path, camera: CameraConfig,
                 progress: tqdm) -> list[dict]:
    """Write ``count`` successful demonstrations of one task; returns their manifest entries."""
    folder = raw_root / RAW_PREFIX / task / "00" / DATED_FOLDER / "raw" / "traj_group0"
    folder.mkdir(parents=True, exist_ok=True)
    kept: list[dict] = []
    env: SimEnv | None = None
    try:
        for index in range(count * MAX_ATTEMPTS_FACTOR):
            if len(kept) == count:
                break
            episode = episode_for(task, index, seed)
            if env is None or env.seed != episode.seed:  # one live renderer per process
                if env is not None:
                    env.close()
                env = SimEnv(task, episode.seed, camera)
            demo = run_expert(env, episode)
            if not demo.success:
                log.info("%s: expert failed, skipped", episode)
                continue
            traj = folder / f"traj{len(kept)}"
            write_trajectory(traj, demo.frames, demo.proprio, demo.actions,
                             task.removesuffix("-v3").replace("-", " "))
            kept.append({**asdict(episode), "steps": len(demo.actions),
                         "trajectory": str(traj.relative_to(raw_root))})
            progress.update(1)
    finally:
        if env is not None:
            env.close()
    if len(kept) < count:
        raise RuntimeError(f"{task}: the expert succeeded in only {len(kept)} of "
                           f"{count * MAX_ATTEMPTS_FACTOR} episodes, {count} were wanted")
    return kept


def collect(tasks: list[str], episodes: int, out: Path, *, val_episodes: int = 5, seed: int = 0,
            camera: CameraConfig = DEFAULT_CAMERA, im_size: int = 128, num_workers: int = 1,
            progress: bool = True) -> Path:
    """Collect demonstrations of every task and convert them; returns ``<out>/data``.

    Args:
        episodes: training demonstrations per task; ``val_episodes`` more go to the val split.
        seed: first seed of the episode sequence (keep evaluation seeds disjoint).
        im_size: side of the converted training frames.
    """
    if episodes < 1 or val_episodes < 0:
        raise ValueError(f"need episodes >= 1 and val_episodes >= 0, got {episodes} and "
                         f"{val_episodes}")
    raw_root, data_root = out / "raw", out / "data"
    if raw_root.exists() and any(raw_root.iterdir()):
        raise FileExistsError(f"{raw_root} is not empty; collect into a new --out directory")
    for task in tasks:  # unknown tasks and a missing extra fail before anything is written
        expert_policy(task)
    total = episodes + val_episodes
    manifest: dict[str, list[dict]] = {}
    with tqdm(total=total * len(tasks), desc="expert demos", disable=not progress) as bar:
        for task in tasks:
            manifest[task] = collect_task(task, total, seed, raw_root, camera, bar)
    # int(n * p) train trajectories per dated folder (the converter's rule): p just above the
    # wanted fraction so float rounding never drops one.
    proportion = min(1.0, (episodes + 0.5) / total)
    options = ConvertOptions(raw_root, data_root, depth=CONVERT_DEPTH, train_proportion=proportion,
                             im_size=im_size, seed=seed, format="packed")
    reports = convert(options, num_workers=num_workers, progress=progress)
    failed = [r for r in reports if r.status != "converted"]
    if failed:
        raise RuntimeError(f"conversion of {out} failed: {failed}")
    _write_json(out / MANIFEST, {"seed": seed, "camera": asdict(camera), "im_size": im_size,
                                 "episodes_per_task": episodes, "val_episodes": val_episodes,
                                 "tasks": manifest})
    return data_root


def recorded_camera(data_path: str | Path) -> Optional[CameraConfig]:
    """The camera a ``collect`` dataset was rendered with (from the manifest beside its
    ``data/`` directory), or None for a dataset that ``collect`` did not write."""
    manifest = Path(data_path).parent / MANIFEST
    if not manifest.is_file():
        return None
    camera = json.loads(manifest.read_text())["camera"]
    return CameraConfig(camera["name"], camera["position"], camera["image_size"])


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1))
