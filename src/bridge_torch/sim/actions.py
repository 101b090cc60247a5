"""Adapters between Meta-World's 4-D actions and BridgeData's 7-D action convention.

Meta-World: ``[dx, dy, dz, grip]`` in [-1, 1]; a position unit moves the end-effector target by
``ACTION_SCALE_M`` metres (``SawyerXYZEnv.action_scale``); ``grip > 0`` closes the fingers.
Bridge: ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` with deltas in metres and radians and the
gripper 1 = open, 0 = closed. Rotation deltas are zero (Meta-World's hand does not rotate). The
gripper is binarised on the way in, so recorded actions match what relabelling produces
(docs/semantics.md, 'Action relabelling and normalisation') and what a policy with a sticky
gripper outputs.
"""

import numpy as np

ACTION_SCALE_M = 0.01  # metres of end-effector target motion per unit of Meta-World action
METAWORLD_DIM, BRIDGE_DIM = 4, 7


def _check(action: np.ndarray, dim: int, what: str) -> np.ndarray:
    action = np.asarray(action, dtype=np.float64)
    if action.shape[-1:] != (dim,):
        raise ValueError(f"expected {what} actions with last dimension {dim}, got {action.shape}")
    return action


def metaworld_to_bridge(action: np.ndarray) -> np.ndarray:
    """(..., 4) Meta-World -> (..., 7) Bridge: metres, zero rotation, gripper 1 open / 0 closed."""
    action = _check(action, METAWORLD_DIM, "Meta-World")
    out = np.zeros((*action.shape[:-1], BRIDGE_DIM))
    out[..., :3] = np.clip(action[..., :3], -1.0, 1.0) * ACTION_SCALE_M  # the env clips too
    out[..., 6] = (action[..., 3] <= 0).astype(np.float64)  # any closing effort = closed
    return out


def bridge_to_metaworld(action: np.ndarray) -> np.ndarray:
    """(..., 7) Bridge -> (..., 4) Meta-World; rotations are dropped, values clipped to [-1, 1]."""
    action = _check(action, BRIDGE_DIM, "Bridge")
    out = np.empty((*action.shape[:-1], METAWORLD_DIM))
    out[..., :3] = np.clip(action[..., :3] / ACTION_SCALE_M, -1.0, 1.0)
    out[..., 3] = 1.0 - 2.0 * np.clip(action[..., 6], 0.0, 1.0)  # 1 open -> -1, 0 closed -> +1
    return out
