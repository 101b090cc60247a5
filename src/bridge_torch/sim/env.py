"""One Meta-World task as a rendered, seeded environment for demonstrations and closed-loop eval.

Why this wrapper exists (measured facts in the project's Meta-World notes):
* MuJoCo picks its GL backend when first imported; on a headless machine only ``MUJOCO_GL=egl``
  (Mesa llvmpipe) works, so it is set before the first import of mujoco/metaworld.
* The default scene renders at ~10 fps in software; shadows, MSAA and reflections off gives
  60-150 fps with the same content.
* ``corner2`` moved nearer frames the table; its images come out upside down (rotated by 180°).
* The green goal marker would leak the goal into the observation: it is hidden.
* ``reset(seed=k)`` picks a random variation first, so episodes are pinned by selecting the
  variation (object and goal positions) explicitly.

An episode is identified by ``(task, variation, seed)``: ``seed`` fixes the 50 pre-sampled
variations of ``gym.make`` (and the reset), ``variation`` indexes them.
"""

import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

MAX_EPISODE_STEPS = 500  # Meta-World truncates here; stepping further raises
NUM_VARIATIONS = 50  # variations pre-sampled per (task, seed) by gym.make
GRIPPER_OBS_INDEX = 3  # obs[3]: finger opening, 1 = open, 0 = closed
INSTALL_HINT = ("the simulation benchmark needs the 'sim' extra: pip install 'bridge-torch[sim]' "
                "(metaworld==3.1.1, mujoco==3.3.0, packaging) and Mesa EGL "
                "(apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)")


@dataclass(frozen=True)
class Episode:
    """The identity of a reproducible episode: same triple, same start state and frames."""

    task: str  # Meta-World v3 task name, e.g. "push-v3"
    variation: int  # index into the NUM_VARIATIONS variations drawn with ``seed``
    seed: int  # seed of gym.make (which variations) and of reset


@dataclass(frozen=True)
class CameraConfig:
    """Where the rendering camera sits and the square image size it produces."""

    name: str = "corner2"
    position: tuple[float, float, float] | None = (0.75, 0.075, 0.7)  # None = scene default
    image_size: int = 128  # pixels per side

    def __post_init__(self) -> None:
        # Positions from JSON or a config arrive as lists: store a tuple, so equal cameras compare
        # equal and the config stays hashable.
        if self.position is not None:
            object.__setattr__(self, "position", tuple(self.position))


DEFAULT_CAMERA = CameraConfig()


def import_metaworld() -> tuple[ModuleType, ModuleType]:
    """(gymnasium, metaworld), with ``MUJOCO_GL=egl`` set first; a clear error without the extra."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import gymnasium
        import metaworld
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return gymnasium, metaworld


def expert_policy(task: str) -> Any:
    """Meta-World's scripted expert for ``task`` (``get_action(obs) -> (4,)``)."""
    import_metaworld()
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise ValueError(f"no scripted expert for task {task!r}; known: {sorted(ENV_POLICY_MAP)}")
    # Several experts' gains exceed the action range by design (the env clips): not news.
    warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high",
                            category=UserWarning)
    return ENV_POLICY_MAP[task]()


class SimEnv:
    """A Meta-World MT1 task: fast offscreen rendering, hidden goal marker, pinned variations.

    Keep one ``SimEnv`` per process at a time (or close it before making the next): two live
    EGL renderers in one process corrupt each other's images.
    """

    def __init__(self, task: str, seed: int, camera: CameraConfig = DEFAULT_CAMERA) -> None:
        gym, _ = import_metaworld()
        self.task, self.seed, self.camera = task, seed, camera
        try:
            self.env = gym.make("Meta-World/MT1", env_name=task, seed=seed,
                                render_mode="rgb_array", camera_name=camera.name,
                                width=camera.image_size, height=camera.image_size,
                                disable_env_checker=True)  # its warnings flag Meta-World itself
        except (gym.error.Error, ValueError) as error:
            raise ValueError(f"cannot make Meta-World task {task!r}: {error}") from error
        model = self.env.unwrapped.model
        if camera.position is not None:
            model.camera(camera.name).pos[:] = camera.position
        # Must happen before the first render, which creates the GL context.
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.mat_reflectance[:] = 0
        model.site_rgba[:, 3] = 0  # hide the goal marker (and every other site)
        self.tasks = self.env.get_wrapper_attr("tasks")
        self.env.get_wrapper_attr("toggle_sample_tasks_on_reset")(False)

    def reset(self, variation: int) -> np.ndarray:
        """Start the episode ``(task, variation, seed)``; returns the 39-D state."""
        if not 0 <= variation < len(self.tasks):
            raise ValueError(f"variation must be in [0, {len(self.tasks)}), got {variation}")
        self.env.unwrapped.set_task(self.tasks[variation])
        obs, _ = self.env.reset(seed=self.seed)
        return obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """Apply a 4-D Meta-World action; returns (state, success, truncated)."""
        obs, _, _, truncated, info = self.env.step(np.asarray(action, dtype=np.float64))
        return obs, bool(info["success"]), bool(truncated)

    def render(self) -> np.ndarray:
        """uint8 (S, S, 3) upright camera frame."""
        return np.ascontiguousarray(self.env.render()[::-1, ::-1])

    def proprio(self, obs: np.ndarray) -> np.ndarray:
        """Bridge-style 7-D proprio ``[x, y, z, roll, pitch, yaw, gripper]`` of the current state.

        Position = the end-effector's position target in metres (the mocap body the hand is
        welded to), which moves by exactly the commanded delta; the hand itself trails it by
        20-45 %, so relabelled actions (proprio deltas) taken from the hand would teach a policy to
        command too little motion. The orientation is fixed in Meta-World (zeros); gripper = the
        finger opening ``obs[3]``, 1 open and 0 closed as in BridgeData.
        """
        target = self.env.unwrapped.data.mocap_pos[0]
        opening = float(np.clip(obs[GRIPPER_OBS_INDEX], 0.0, 1.0))
        return np.r_[target, 0.0, 0.0, 0.0, opening].astype(np.float64)

    def close(self) -> None:
        self.env.close()
