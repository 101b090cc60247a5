"""The data section's two parts the data package owns: what is loaded (``LoadConfig``) and how a
sample is drawn from it (``SampleConfig``).

Their own module so that the sampler and the training data (which reads both: the camera, and
which actions to normalise how) depend on it, and not on each other. The training config
composes them with the augmentation as ``data.load``, ``data.sample`` and ``data.augment``.
"""

from dataclasses import dataclass, field
from typing import Optional

from bridge_torch.data.actions import NORMALIZATION_TYPES
from bridge_torch.data.goals import GOAL_STRATEGIES

FRAME_STORAGE = ("auto", "device", "host")


@dataclass
class LoadConfig:
    """Which stored inputs are opened, where their frames live, and the loading opt-ins."""

    camera: str = "images0"  # stored camera used as the observation (JAX images0)
    # "auto" | "device" | "host": where frames live (data/training_data.py); "auto" = device
    # when they take less than half of its free memory
    frame_storage: str = "auto"
    # whether batches carry goals / saliency targets (observations.saliency / saliency_mask,
    # port: --saliency); the training config derives both from the agent (null there until it
    # does, and a contradicting value is an error). No goals (BC) saves a gather and augment.
    load_goals: Optional[bool] = True
    load_saliency: Optional[bool] = False
    # unpickle legacy out.npy (pickle runs code; data/datasets.py): null = a fresh run packs an
    # out.npy that has no packed store yet, resume never unpickles; true = also re-pack stale
    # copies and unpickle on resume; false = never. Never inherited from a run's config.yaml.
    allow_pickle: Optional[bool] = None
    # resume on data whose image size or camera differ from the checkpoint's (never inherited)
    allow_image_mismatch: bool = False

    def __post_init__(self) -> None:
        if self.frame_storage not in FRAME_STORAGE:
            raise ValueError(f"data.load.frame_storage must be one of {FRAME_STORAGE}, got "
                             f"{self.frame_storage!r}")
        if not self.camera:
            raise ValueError("data.load.camera must name a stored camera, e.g. 'images0'")


@dataclass
class SampleConfig:
    """What a sample contains and how it is drawn (docs/semantics.md, 'Transition sampling')."""

    obs_horizon: int = 1  # K: frames t-K+1..t per observation (JAX obs_horizon; None there = 1)
    act_pred_horizon: int = 1  # T_act: actions t..t+T_act-1 per sample (JAX act_pred_horizon)
    # "uniform" | "last_state_upweighted" | "geometric" | "delta_goals" (JAX GC configs "uniform")
    goal_relabeling_strategy: str = "uniform"
    reached_proportion: float = 0.0  # probability that the goal is the next frame (JAX GC-BC 0.0)
    discount: float = 0.98  # "geometric": P(goal k steps ahead) ∝ discount**k, in (0, 1]
    # "delta_goals" [lo, hi): goal frame in [t+lo, t+hi); the last lo transitions of every
    # trajectory are not sampled (JAX goal_delta, no default there)
    goal_delta: list[int] = field(default_factory=lambda: [0, 1_000_000])
    relabel_actions: bool = True  # achieved proprio deltas + binarised gripper (JAX True)
    normalization_type: str = "normal"  # "normal" (JAX) | "bounds" | "none"
    saliency_alpha: float = 1.0  # decay per frame of age in the window's saliency sum (port 1.0)

    def __post_init__(self) -> None:
        for key in ("obs_horizon", "act_pred_horizon"):
            if getattr(self, key) < 1:
                raise ValueError(f"data.sample.{key} must be >= 1, got {getattr(self, key)}")
        if self.goal_relabeling_strategy not in GOAL_STRATEGIES:
            raise ValueError(f"data.sample.goal_relabeling_strategy must be one of "
                             f"{GOAL_STRATEGIES}, got {self.goal_relabeling_strategy!r}")
        if not 0.0 <= self.reached_proportion <= 1.0:
            raise ValueError(f"data.sample.reached_proportion must be in [0, 1], got "
                             f"{self.reached_proportion}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"data.sample.discount must be in (0, 1], got {self.discount}")
        if len(self.goal_delta) != 2 or self.goal_delta[0] < 0 or \
                self.goal_delta[1] <= self.goal_delta[0]:
            raise ValueError(f"data.sample.goal_delta must be [lo, hi] with 0 <= lo < hi, got "
                             f"{list(self.goal_delta)}")
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(f"data.sample.normalization_type must be one of "
                             f"{NORMALIZATION_TYPES}, got {self.normalization_type!r}")
        if self.saliency_alpha < 0:
            raise ValueError(f"data.sample.saliency_alpha must be >= 0, got {self.saliency_alpha}")
