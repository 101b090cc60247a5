"""Scripted-expert demonstrations on Meta-World, written as a BridgeData dataset: a source.

For each task, episodes ``(task, variation = i % 50, seed = seed + i // 50)`` are rolled out with
Meta-World's expert until ``info["success"]``; only successful episodes are kept (failures are
skipped and the next episode is tried). Each becomes a ``store.Trajectory`` - the rendered
frames resized as every source resizes (``squash_frame``), the end-effector target as proprio,
Bridge actions, the task name as instruction - and goes straight into the packed stores of
``<out>/data/metaworld/sawyer/<task>/00/{train,val}`` through the shared split writer: the first
``episodes`` demonstrations of a task train, the next ``val_episodes`` validate. No image is
compressed on the way, so training frames are the renderer's pixels, as evaluation's are. Every
episode's identity is listed in ``<out>/episodes.json``.
"""

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from bridge_torch.atomic import write_text_atomic
from bridge_torch.data.sources.bridge_raw import squash_frame
from bridge_torch.data.sources.split_writer import write_splits
from bridge_torch.data.store import Trajectory
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

log = logging.getLogger(__name__)
TASK_PREFIX = Path("metaworld", "sawyer")  # <lab>/<env> levels above each task directory
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


def successful_demos(task: str, seed: int, camera: CameraConfig, wanted: int
                     ) -> Iterator[Demonstration]:
    """The task's successful expert demonstrations in episode order, ``wanted`` of them."""
    env: SimEnv | None = None
    kept = 0
    try:
        for index in range(wanted * MAX_ATTEMPTS_FACTOR):
            if kept == wanted:
                return
            episode = episode_for(task, index, seed)
            if env is None or env.seed != episode.seed:  # one live renderer per process
                if env is not None:
                    env.close()
                env = SimEnv(task, episode.seed, camera)
            demo = run_expert(env, episode)
            if not demo.success:
                log.info("%s: expert failed, skipped", episode)
                continue
            kept += 1
            yield demo
    finally:
        if env is not None:
            env.close()
    if kept < wanted:
        raise RuntimeError(f"{task}: the expert succeeded in only {kept} of "
                           f"{wanted * MAX_ATTEMPTS_FACTOR} episodes, {wanted} were wanted")


def to_trajectory(demo: Demonstration, im_size: int) -> Trajectory:
    """A demonstration as the store holds it (frames resized like every other source's)."""
    episode = demo.episode
    frames = np.stack([squash_frame(Image.fromarray(f), im_size) for f in demo.frames])
    return Trajectory(frames={"images0": frames}, proprio=demo.proprio.astype(np.float32),
                      actions=demo.actions.astype(np.float32),
                      language=[episode.task.removesuffix("-v3").replace("-", " ")],
                      source=f"metaworld {episode.task} variation {episode.variation} "
                             f"seed {episode.seed}")


def collect_task(task: str, episodes: int, val_episodes: int, seed: int, task_dir: Path,
                 camera: CameraConfig, im_size: int, progress: tqdm) -> list[dict]:
    """Write one task's train and val stores; returns the manifest entries of its demos."""
    kept: list[dict] = []
    demos = successful_demos(task, seed, camera, episodes + val_episodes)

    def split(count: int, name: str) -> Iterator[Trajectory]:
        for demo in itertools.islice(demos, count):
            kept.append({**asdict(demo.episode), "steps": len(demo.actions), "split": name})
            progress.update(1)
            yield to_trajectory(demo, im_size)

    splits = {"train": split(episodes, "train")}
    if val_episodes:
        splits["val"] = split(val_episodes, "val")
    source = {"kind": "Meta-World expert demonstrations", "collector": "bridge-torch-sim collect",
              "task": task, "seed": seed, "camera": asdict(camera)}
    write_splits(task_dir, splits, source=source)
    return kept


def collect(tasks: list[str], episodes: int, out: Path, *, val_episodes: int = 5, seed: int = 0,
            camera: CameraConfig = DEFAULT_CAMERA, im_size: int = 128,
            progress: bool = True) -> Path:
    """Collect demonstrations of every task into packed stores; returns ``<out>/data``.

    Args:
        episodes: training demonstrations per task; ``val_episodes`` more go to the val split.
        seed: first seed of the episode sequence (keep evaluation seeds disjoint).
        im_size: side of the stored training frames.
    """
    if episodes < 1 or val_episodes < 0:
        raise ValueError(f"need episodes >= 1 and val_episodes >= 0, got {episodes} and "
                         f"{val_episodes}")
    data_root = out / "data"
    if data_root.exists() and any(data_root.iterdir()):
        raise FileExistsError(f"{data_root} is not empty; collect into a new --out directory")
    for task in tasks:  # unknown tasks and a missing extra fail before anything is written
        expert_policy(task)
    manifest: dict[str, list[dict]] = {}
    total = (episodes + val_episodes) * len(tasks)
    with tqdm(total=total, desc="expert demos", disable=not progress) as bar:
        for task in tasks:
            task_dir = data_root / TASK_PREFIX / task / "00"
            manifest[task] = collect_task(task, episodes, val_episodes, seed, task_dir, camera,
                                          im_size, bar)
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
