"""Closed-loop, goal-conditioned evaluation of a policy on held-out Meta-World episodes.

For each episode ``(task, variation, seed)`` the scripted expert first runs from the start state
to success; its final frame is the goal image. The environment is then reset to the same start
and the policy acts from (frame, goal) until ``info["success"]`` or ``max_steps``. Episodes
whose expert fails have no goal and are replaced by the next of the sequence (counted). The
policy's sampling generator is re-seeded per episode from the episode's identity, so the same
episodes give the same outcomes whatever order or subset is evaluated.
"""

import logging
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from bridge_torch.atomic import write_atomic
from bridge_torch.deploy.policy import BatchedPolicy
from bridge_torch.sim.actions import bridge_to_metaworld
from bridge_torch.sim.collect import episode_for, run_expert
from bridge_torch.sim.env import CameraConfig, Episode, SimEnv, expert_policy

log = logging.getLogger(__name__)
DEFAULT_EVAL_SEED = 1000  # episode seeds for evaluation; collection starts at 0 (disjoint)
MAX_EXPERT_FAILURES_FACTOR = 2  # extra episodes tried per wanted one when the expert fails
GIF_FRAME_MS = 100


@dataclass(frozen=True)
class SimEvalSettings:
    """What to evaluate and how; the defaults match ``bridge-torch-sim collect``'s camera."""

    tasks: tuple[str, ...]
    episodes: int = 10  # held-out episodes per task
    seed: int = DEFAULT_EVAL_SEED  # first seed of the episode sequence
    max_steps: int = 200  # step budget of the policy per episode (experts need 30-100)
    camera: CameraConfig = field(default_factory=CameraConfig)
    videos_per_task: int = 1  # GIFs (goal | observation) of each task's first episodes


@dataclass
class EpisodeResult:
    """Outcome of one policy rollout; ``frames`` (goal | observation) only when recorded."""

    episode: Episode
    success: bool
    steps: int  # policy steps taken (to success, or the budget)
    expert_steps: int
    frames: Optional[list[np.ndarray]] = None


def episode_seed(episode: Episode) -> int:
    """A stable per-episode seed for the policy's sampling generator."""
    return zlib.crc32(f"{episode.task}/{episode.variation}/{episode.seed}".encode())


def rollout(env: SimEnv, policy: BatchedPolicy, episode: Episode, goal: np.ndarray,
            max_steps: int, record: bool = False) -> tuple[bool, int, Optional[list[np.ndarray]]]:
    """Run the policy from the episode's start; returns (success, steps, side-by-side frames)."""
    policy.reset()
    policy.generator.manual_seed(episode_seed(episode))
    obs = env.reset(episode.variation)
    frame = env.render()
    frames = [np.concatenate([goal, frame], axis=1)] if record else None
    for step in range(1, max_steps + 1):
        proprio = env.proprio(obs)[None] if policy.uses_proprio else None
        action = policy.act(frame[None], goal[None], proprio)[0]
        obs, success, truncated = env.step(bridge_to_metaworld(action))
        frame = env.render()
        if frames is not None:
            frames.append(np.concatenate([goal, frame], axis=1))
        if success or truncated:
            return success, step, frames
    return False, max_steps, frames


def evaluate_task(policy: BatchedPolicy, task: str, settings: SimEvalSettings,
                  progress: Optional[tqdm] = None) -> tuple[list[EpisodeResult], int]:
    """Evaluate one task's held-out episodes; returns the results and the expert failures."""
    results: list[EpisodeResult] = []
    failures, env = 0, None
    try:
        for index in range(settings.episodes * MAX_EXPERT_FAILURES_FACTOR):
            if len(results) == settings.episodes:
                break
            episode = episode_for(task, index, settings.seed)
            if env is None or env.seed != episode.seed:  # one live renderer per process
                if env is not None:
                    env.close()
                env = SimEnv(task, episode.seed, settings.camera)
            demo = run_expert(env, episode)
            if not demo.success:
                failures += 1
                continue
            record = len(results) < settings.videos_per_task
            success, steps, frames = rollout(env, policy, episode, demo.frames[-1],
                                             settings.max_steps, record)
            results.append(EpisodeResult(episode, success, steps, len(demo.actions), frames))
            if progress is not None:
                progress.update(1)
    finally:
        if env is not None:
            env.close()
    if len(results) < settings.episodes:
        raise RuntimeError(f"{task}: the expert failed on {failures} episodes; could not build "
                           f"{settings.episodes} held-out episodes")
    return results, failures


def _summary(results: list[EpisodeResult]) -> dict[str, Any]:
    successes = [r for r in results if r.success]
    return {"episodes": len(results), "successes": len(successes),
            "success_rate": len(successes) / len(results) if results else 0.0,
            "mean_steps_to_success": (float(np.mean([r.steps for r in successes]))
                                      if successes else None),
            "mean_expert_steps": float(np.mean([r.expert_steps for r in results]))
            if results else None}


def evaluate_policy(policy: BatchedPolicy, settings: SimEvalSettings,
                    video_dir: Optional[Path] = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate every task; returns the report (per task, overall, per episode, settings)."""
    if policy.num_envs != 1:
        raise ValueError(f"evaluate_policy steps one environment at a time; got a policy for "
                         f"{policy.num_envs}")
    if not policy.goal_conditioned:
        raise ValueError("closed-loop evaluation conditions on the expert's final frame: the "
                         "policy must be goal-conditioned (gc_bc or gc_ddpm_bc)")
    for task in settings.tasks:  # unknown tasks and a missing extra fail before any rollout
        expert_policy(task)
    report: dict[str, Any] = {"tasks": {}, "episodes": []}
    everything: list[EpisodeResult] = []
    total = settings.episodes * len(settings.tasks)
    with tqdm(total=total, desc="sim eval", disable=not progress) as bar:
        for task in settings.tasks:
            results, failures = evaluate_task(policy, task, settings, bar)
            report["tasks"][task] = {**_summary(results), "expert_failures": failures}
            everything += results
            if video_dir is not None:
                for i, result in enumerate(r for r in results if r.frames is not None):
                    save_gif(video_dir / f"{task}_{i}.gif", result.frames)
    report["overall"] = _summary(everything)
    report["episodes"] = [{**asdict(r.episode), "success": r.success, "steps": r.steps,
                           "expert_steps": r.expert_steps} for r in everything]
    report["settings"] = {**asdict(settings), "tasks": list(settings.tasks)}
    return report


def save_gif(path: Path, frames: list[np.ndarray]) -> None:
    """Write an animated GIF atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    write_atomic(path, lambda handle: images[0].save(
        handle, format="GIF", save_all=True, append_images=images[1:], duration=GIF_FRAME_MS,
        loop=0))


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table: success rate and mean steps to success per task, then overall; every
    column as wide as its longest entry (task names included)."""
    header = ["task", "success", "rate", "steps", "expert"]
    rows = [header]
    for name, row in [*report["tasks"].items(), ("overall", report["overall"])]:
        steps = row["mean_steps_to_success"]
        rows.append([name, f"{row['successes']}/{row['episodes']}", f"{row['success_rate']:.2f}",
                     "-" if steps is None else f"{steps:.1f}", f"{row['mean_expert_steps']:.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [" ".join([r[0].ljust(widths[0]), *(r[i].rjust(widths[i]) for i in range(1, len(r)))])
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
