"""Keys and shapes of a training batch: the one contract between the data layer and the agents.

A batch is a nested ``dict`` of tensors, all on the training device::

    {
      "observations": {
        "image":         uint8   (B, K, H, W, 3)  frames t-K+1..t, padded with the first frame
        "proprio":       float32 (B, K, P)        normalised proprio of the same frames
        "saliency":      float32 (B, H, W)        target map in [0, 1] (only with saliency data)
        "saliency_mask": bool    (B,)             True where the sample has a usable target
      },
      "goals": {
        "image":   uint8   (B, H, W, 3)           next_observations[goal index]
        "proprio": float32 (B, P)
      },
      "actions": float32 (B, T_act, A)            actions t..t+T_act-1, padded with the last action,
                                                  relabelled and normalised (docs/semantics.md)
    }

K is ``obs_horizon`` and T_act is ``act_pred_horizon``; both dimensions are always present, even
when they are 1, so agents never branch on rank. Images stay uint8 HWC until the encoder, which
scales them to [-1, 1] (channels-last in memory, the fast layout for convolutions).
"""

from dataclasses import dataclass

OBSERVATIONS = "observations"
GOALS = "goals"
ACTIONS = "actions"
IMAGE = "image"
PROPRIO = "proprio"
SALIENCY = "saliency"
SALIENCY_MASK = "saliency_mask"

# Bridge's 7-D action convention (end-effector deltas, then the gripper: 1 open, 0 closed).
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")


def action_name(dim: int, action_dim: int) -> str:
    """The name of action dimension ``dim``: Bridge's for 7-D actions, else ``dim<i>``."""
    return ACTION_NAMES[dim] if action_dim == len(ACTION_NAMES) else f"dim{dim}"


@dataclass(frozen=True)
class BatchInputs:
    """The optional parts of a batch an agent consumes; the sampler loads exactly these.

    Observation images and actions are always present. An agent declares the rest (see
    ``Agent.inputs``), and the sampler, ``Policy`` and the simulator derive what to load or
    require from it, so a new agent never needs a loading flag set by hand.
    """

    goal_image: bool = False  # ``goals.image`` (goal-conditioned agents)
    proprio: bool = False  # ``observations.proprio`` is fed to the network
    saliency: bool = False  # ``observations.saliency`` / ``saliency_mask`` regulariser targets


@dataclass(frozen=True)
class AgentShapes:
    """The data dimensions an agent is built for; saved in every checkpoint as a dict."""

    action_dim: int  # A
    proprio_dim: int  # P
    obs_horizon: int  # K: frames per observation
    act_pred_horizon: int  # T_act: actions predicted per sample
    image_size: int  # side of the square training images, in pixels
