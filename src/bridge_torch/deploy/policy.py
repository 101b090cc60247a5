"""A trained agent as a robot policy: camera frames (and a goal image) in, robot actions out.

``Policy.from_run(run_dir)`` restores the EMA weights strictly and wraps them with what the robot
loop needs (docs/semantics.md, 'Deployment'): frames of any size resized as the training images
were made (PIL LANCZOS squash of the full frame, so deployment matches the converter; the JAX
robot service resized with skimage anti-aliasing instead, a small train/deploy mismatch); an
observation history padded with the first frame at episode start;
action chunks executed ``act_exec_horizon`` at a time before predicting again; actions
un-normalised with the run's statistics; an optional sticky gripper. ``BatchedPolicy`` does the
same for many environments at once, keeping each one's history, chunk and gripper state.

    policy = Policy.from_run("runs/bridgedata_torch/gc_bc_...", device="cuda")
    policy.reset()
    action = policy.act(camera_frame, goal_image=goal_frame)   # (7,) float32
"""

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from bridge_torch.agents.base import Agent
from bridge_torch.batch import IMAGE, PROPRIO, action_name
from bridge_torch.data.actions import denormalize, normalize
from bridge_torch.data.store_checks import check_statistics
from bridge_torch.deploy.graphed import GraphedSampler
from bridge_torch.deploy.restore import restore_agent

GRIPPER_THRESHOLD = 0.5  # a gripper value below this asks for "closed"


class NonFiniteAction(RuntimeError):
    """The network produced NaN/inf: no action is returned (a robot must never receive one)."""


def resize_frame(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) of any size -> uint8 (size, size, 3), LANCZOS, aspect ratio squashed."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or \
            min(image.shape[:2]) < 1:
        raise ValueError(f"expected a uint8 (H, W, 3) camera frame with H, W >= 1, got "
                         f"{image.dtype} {image.shape}")
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


class BatchedPolicy:
    """Acts for ``num_envs`` environments at once; each keeps its own episode state."""

    def __init__(self, agent: Agent, *, stats: dict, normalization_type: str,
                 num_envs: int = 1, act_exec_horizon: int = 1,
                 sticky_gripper_num_steps: Optional[int] = 1, argmax: bool = True,
                 seed: int = 0, cuda_graphs: bool = False) -> None:
        """The image size, observation history and required inputs come from the agent's
        ``shapes`` and ``inputs``.

        Args:
            act_exec_horizon: actions of each predicted chunk executed before predicting again.
            sticky_gripper_num_steps: consecutive disagreeing actions before the gripper state
                flips (JAX 1); None = pass the raw gripper value through.
            argmax: deterministic actions (the mode); else sample with a generator seeded by
                ``seed``.
            cuda_graphs: on CUDA, replay each prediction from a captured CUDA graph (see
                ``deploy/graphed.py``): the first call per batch size captures, later calls are
                several times faster at batch 1.
        """
        if act_exec_horizon < 1:
            raise ValueError(f"act_exec_horizon must be >= 1, got {act_exec_horizon}")
        self.agent, self.stats, self.kind = agent.eval(), stats, normalization_type
        self.image_size, self.obs_horizon = agent.shapes.image_size, agent.shapes.obs_horizon
        self.num_envs = num_envs
        self.act_exec_horizon, self.sticky = act_exec_horizon, sticky_gripper_num_steps
        self.argmax = argmax
        self.device = next(agent.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs an agent on CUDA, this one is on {self.device}")
        self.graphed = (GraphedSampler(agent, argmax=argmax, generator=self.generator)
                        if cuda_graphs else None)
        self.goal_conditioned, self.uses_proprio = agent.inputs.goal_image, agent.inputs.proprio
        self.action_dim, self.proprio_dim = agent.shapes.action_dim, agent.shapes.proprio_dim
        fields = {"normal": ("mean", "std"), "bounds": ("min", "max"), "none": ()}[self.kind]
        for key, dim in (("actions", self.action_dim), ("proprio", self.proprio_dim)):
            check_statistics(stats.get(key), dim, f"policy stats.{key}", fields)
        self.reset()

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: Any = None, *, device: str = "cpu",
                 use_ema: bool = True, **kwargs: Any) -> "BatchedPolicy":
        """Restore a run's checkpoint (latest by default; strict loading) as a policy."""
        restored = restore_agent(run_dir, checkpoint, device=device, use_ema=use_ema)
        return cls(restored.agent, stats=restored.stats,
                   normalization_type=restored.config.data.sample.normalization_type, **kwargs)

    def reset(self, env_ids: Optional[list[int]] = None) -> None:
        """Start new episodes (all environments by default)."""
        ids = range(self.num_envs) if env_ids is None else env_ids
        if env_ids is None:
            k, s = self.obs_horizon, self.image_size
            self.images = np.zeros((self.num_envs, k, s, s, 3), np.uint8)
            self.proprio: Optional[np.ndarray] = None
            self.chunks: list[Optional[np.ndarray]] = [None] * self.num_envs
            self.chunk_step = np.zeros(self.num_envs, int)
            self.closed = np.zeros(self.num_envs, bool)
            self.disagreeing = np.zeros(self.num_envs, int)
            self.fresh = np.ones(self.num_envs, bool)
        for i in ids:
            self.chunks[i], self.chunk_step[i], self.fresh[i] = None, 0, True
            self.closed[i], self.disagreeing[i] = False, 0

    def act(self, images: np.ndarray, goal_images: Optional[np.ndarray] = None,
            proprio: Optional[np.ndarray] = None) -> np.ndarray:
        """Args:
            images: uint8 (N, H, W, 3) current camera frames, any H, W.
            goal_images: uint8 (N, H', W', 3), required by goal-conditioned agents.
            proprio: float (N, P) robot state, required when the agent uses proprio.
        Returns:
            float32 (N, A) actions in the robot's units (gripper exactly 0/1 with sticky gripper).
        Raises:
            ValueError: an empty or non-uint8 frame, or proprio that is not finite or not of the
                trained dimension.
            NonFiniteAction: the network produced NaN/inf (names the dimension).
        """
        if len(images) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} frames, got {len(images)}")
        if self.goal_conditioned and goal_images is None:
            raise ValueError("goal-conditioned: pass goal_image= (BatchedPolicy: goal_images=)")
        if self.uses_proprio and proprio is None:
            raise ValueError("this policy was trained with proprio: pass proprio")
        if proprio is not None:
            proprio = self._checked_proprio(proprio)
        self._push_observation(images, proprio)
        need = [i for i in range(self.num_envs) if self.chunks[i] is None
                or self.chunk_step[i] >= min(self.act_exec_horizon, len(self.chunks[i]))]
        if need:
            self._predict(need, goal_images)
        actions = np.stack([self.chunks[i][self.chunk_step[i]] for i in range(self.num_envs)])
        self.chunk_step += 1
        return self._postprocess_gripper(actions.astype(np.float32))

    def _checked_proprio(self, proprio: np.ndarray) -> np.ndarray:
        """float32 (N, P) of the trained P, all finite; else an error naming env and dimension."""
        state = np.asarray(proprio, dtype=np.float32)
        if state.shape != (self.num_envs, self.proprio_dim):
            raise ValueError(f"expected proprio of shape ({self.num_envs}, {self.proprio_dim}) "
                             f"(the trained proprio_dim), got {state.shape}")
        bad = np.argwhere(~np.isfinite(state))
        if bad.size:
            env, dim = bad[0]
            raise ValueError(f"proprio of environment {env} has {state[env, dim]} in dimension "
                             f"{dim}: the robot state must be finite")
        return state

    def _push_observation(self, images: np.ndarray, proprio: Optional[np.ndarray]) -> None:
        frames = np.stack([resize_frame(im, self.image_size) for im in images])
        self.images = np.concatenate([self.images[:, 1:], frames[:, None]], axis=1)
        if proprio is not None:
            state = normalize(proprio, self.stats["proprio"], self.kind)
            state = state.astype(np.float32)
            if self.proprio is None:
                self.proprio = np.repeat(state[:, None], self.obs_horizon, axis=1)
            self.proprio = np.concatenate([self.proprio[:, 1:], state[:, None]], axis=1)
        for i in np.flatnonzero(self.fresh):  # episode start: pad the history with this frame
            self.images[i] = frames[i]
            if self.proprio is not None:
                self.proprio[i] = state[i]
            self.fresh[i] = False

    def _predict(self, envs: list[int], goal_images: Optional[np.ndarray]) -> None:
        observations = {IMAGE: torch.from_numpy(self.images[envs]).to(self.device)}
        if self.proprio is not None:
            observations[PROPRIO] = torch.from_numpy(self.proprio[envs]).to(self.device)
        goals = None
        if goal_images is not None:
            goal = np.stack([resize_frame(goal_images[i], self.image_size) for i in envs])
            goals = {IMAGE: torch.from_numpy(goal).to(self.device)}
        if self.graphed is not None:
            chunk = self.graphed(observations, goals)
        else:
            chunk = self.agent.sample_actions(observations, goals, argmax=self.argmax,
                                              generator=self.generator)
        chunk = denormalize(chunk.float().cpu().numpy(), self.stats["actions"], self.kind)
        bad = np.argwhere(~np.isfinite(chunk))
        if bad.size:
            row, step, dim = bad[0]
            raise NonFiniteAction(f"the policy predicted {chunk[row, step, dim]} for action "
                                  f"dimension {dim} ({action_name(dim, chunk.shape[-1])}) of "
                                  f"environment {envs[row]} (chunk step {step}); no action is "
                                  "returned")
        for row, i in enumerate(envs):
            self.chunks[i], self.chunk_step[i] = chunk[row], 0

    def _postprocess_gripper(self, actions: np.ndarray) -> np.ndarray:
        """Sticky gripper (docs/semantics.md, 'Deployment'): flip only after ``sticky``
        disagreeing actions."""
        if self.sticky is None:
            return actions
        wants_closed = actions[:, -1] < GRIPPER_THRESHOLD
        disagree = wants_closed != self.closed
        self.disagreeing = np.where(disagree, self.disagreeing + 1, 0)
        flip = self.disagreeing >= self.sticky
        self.closed = np.where(flip, ~self.closed, self.closed)
        self.disagreeing[flip] = 0
        actions[:, -1] = np.where(self.closed, 0.0, 1.0)
        return actions


class Policy:
    """One environment: ``reset()`` then ``act(frame, goal_image=..., proprio=...) -> (A,)``."""

    def __init__(self, batched: BatchedPolicy) -> None:
        if batched.num_envs != 1:
            raise ValueError("Policy wraps a single environment; use BatchedPolicy for more")
        self.batched = batched

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: Any = None, *, device: str = "cpu",
                 **kwargs: Any) -> "Policy":
        return cls(BatchedPolicy.from_run(run_dir, checkpoint, device=device, num_envs=1,
                                          **kwargs))

    def reset(self) -> None:
        self.batched.reset()

    def act(self, image: np.ndarray, goal_image: Optional[np.ndarray] = None,
            proprio: Optional[np.ndarray] = None) -> np.ndarray:
        goals = None if goal_image is None else np.asarray(goal_image)[None]
        state = None if proprio is None else np.asarray(proprio)[None]
        return self.batched.act(np.asarray(image)[None], goals, state)[0]

