"""Action relabelling and per-dimension statistics.

Relabelled actions are what the robot *achieved* (proprio deltas) plus a binarised gripper, so
the policy learns the motion it sees in the frames rather than noisy commands. Statistics are
computed in float64 and merged exactly across stores, so the normalisation of a multi-task run
does not depend on how the data was split into files. See docs/semantics.md, 'Action relabelling
and normalisation'.
"""

import sys
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

GRIPPER_OPEN_THRESHOLD = 0.95  # raw gripper above this counts as open (1)
GRIPPER_CLOSED_THRESHOLD = 0.05  # raw gripper below this counts as closed (0)
STD_EPSILON = 1e-6  # floor for std so a constant dimension does not normalise to inf
NORMALIZATION_TYPES = ("normal", "bounds", "none")
# the statistics each normalisation reads (e.g. an imported JAX policy has no min/max)
NORMALIZATION_FIELDS = {"normal": ("mean", "std"), "bounds": ("min", "max"), "none": ()}


def binarize_gripper(gripper: np.ndarray) -> np.ndarray:
    """Binarise a continuous gripper command as the JAX loader does.

    Values > 0.95 become 1 and < 0.05 become 0; an intermediate value takes the value of the next
    non-intermediate step after it; a trailing run of intermediate values keeps the trajectory's
    last raw value (not binarised), exactly as the original's reverse scan seeded with it.

    Args:
        gripper: float (T,) raw gripper commands of one trajectory.
    Returns:
        float32 (T,).
    """
    gripper = np.asarray(gripper, dtype=np.float32)
    if gripper.ndim != 1:
        raise ValueError(f"binarize_gripper expects a (T,) array, got shape {gripper.shape}")
    steps = gripper.shape[0]
    if steps == 0:
        return gripper.copy()
    decided = (gripper > GRIPPER_OPEN_THRESHOLD) | (gripper < GRIPPER_CLOSED_THRESHOLD)
    # labels[T] is the scan's initial carry: the last raw value.
    labels = np.append((gripper > GRIPPER_OPEN_THRESHOLD).astype(np.float32), gripper[-1])
    # index of the first decided step at or after each step (T when there is none)
    own_index = np.where(decided, np.arange(steps), steps)
    next_decided = np.minimum.accumulate(own_index[::-1])[::-1]
    return labels[next_decided]


def relabel_actions(proprio: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Return achieved actions: dims 0-5 = proprio deltas, last dim = binarised gripper.

    Dims between 6 and the last (none for BridgeData's 7-D actions) are kept raw.

    Args:
        proprio: float (T+1, P) robot state of every frame, P >= 6 (x, y, z, roll, pitch, yaw, ...).
        actions: float (T, A) raw commanded actions, A >= 7, gripper last.
    Returns:
        float32 (T, A).
    """
    proprio, actions = np.asarray(proprio), np.asarray(actions)
    if proprio.ndim != 2 or actions.ndim != 2 or proprio.shape[0] != actions.shape[0] + 1:
        raise ValueError(f"relabel_actions expects proprio (T+1, P) and actions (T, A), got "
                         f"{proprio.shape} and {actions.shape}")
    if proprio.shape[1] < 6 or actions.shape[1] < 7:
        raise ValueError(f"relabel_actions needs P >= 6 proprio dims and A >= 7 action dims "
                         f"(6 deltas + gripper), got P={proprio.shape[1]}, A={actions.shape[1]}")
    out = np.array(actions, dtype=np.float32, copy=True)
    proprio = proprio.astype(np.float64)  # raw states may be float64: subtract before rounding
    out[:, :6] = proprio[1:, :6] - proprio[:-1, :6]
    out[:, -1] = binarize_gripper(actions[:, -1])
    return out


def compute_statistics(x: np.ndarray) -> dict[str, Any]:
    """Per-dimension count, mean, std, min and max of a (N, D) array, as JSON-ready lists."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"compute_statistics expects a non-empty (N, D) array, got {x.shape}")
    return {
        "count": int(x.shape[0]),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
    }


def merge_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact count-weighted merge of statistics from several stores (parallel-variance formula)."""
    if not parts:
        raise ValueError("merge_statistics needs at least one set of statistics")
    counts = np.array([p["count"] for p in parts], dtype=np.float64)
    means = np.array([p["mean"] for p in parts], dtype=np.float64)
    variances = np.array([p["std"] for p in parts], dtype=np.float64) ** 2
    total = counts.sum()
    mean = (counts[:, None] * means).sum(0) / total
    second_moment = (counts[:, None] * (variances + (means - mean) ** 2)).sum(0) / total
    return {
        "count": int(total),
        "mean": mean.tolist(),
        "std": np.sqrt(second_moment).tolist(),
        "min": np.min([p["min"] for p in parts], axis=0).tolist(),
        "max": np.max([p["max"] for p in parts], axis=0).tolist(),
    }


class RecordsStatistics(Protocol):
    """An opened store, or only its ``meta.json``: both carry the statistics written with it."""

    stats: dict[str, Any]


def training_statistics(stores: Sequence[Sequence[RecordsStatistics]],
                        relabel_actions: bool) -> dict:
    """Action and proprio statistics merged exactly over all given (train) stores.

    Returns:
        ``{"actions": stats, "proprio": stats}``; the actions are the relabelled ones when
        ``relabel_actions``, else the raw ones. Proprio uses its own statistics (the JAX code
        normalised proprio with the action statistics).
    """
    flat = [store for group in stores for store in group]
    if not flat:
        raise ValueError("training_statistics: no stores given")
    key = "actions_relabeled" if relabel_actions else "actions"
    return {"actions": merge_statistics([s.stats[key] for s in flat]),
            "proprio": merge_statistics([s.stats["proprio"] for s in flat])}


def _check_kind(kind: str) -> None:
    if kind not in NORMALIZATION_TYPES:
        raise ValueError(f"normalization type must be one of {NORMALIZATION_TYPES}, got {kind!r}")


def _is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch: the converters use this module
    in worker processes that need only numpy, and importing torch costs each of them a second."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _as_like(values: list[float], x: Any) -> Any:
    """Statistics as an array/tensor of ``x``'s float dtype and device (float32 for integers)."""
    if _is_tensor(x):
        torch = sys.modules["torch"]
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.as_tensor(values, dtype=dtype, device=x.device)
    dtype = np.asarray(x).dtype
    return np.asarray(values, dtype=dtype if np.issubdtype(dtype, np.floating) else np.float32)


def _safe_std(stats: dict[str, Any]) -> list[float]:
    """The per-dimension std, floored so a constant dimension does not divide by zero."""
    return np.maximum(np.asarray(stats["std"], dtype=np.float64), STD_EPSILON).tolist()


def normalize(x: Any, stats: dict[str, Any], kind: str = "normal") -> Any:
    """Normalise a numpy array or torch tensor along its last dim ("normal" / "bounds" / "none")."""
    _check_kind(kind)
    if kind == "none":
        return x
    if kind == "normal":
        return (x - _as_like(stats["mean"], x)) / _as_like(_safe_std(stats), x)
    lo, hi = _as_like(stats["min"], x), _as_like(stats["max"], x)
    span = hi - lo
    span = span + (span == 0)  # constant dimension: map to 0 instead of dividing by zero
    scaled = (x - lo) / span
    return scaled.clamp(0, 1) if _is_tensor(x) else np.clip(scaled, 0, 1)


def denormalize(x: Any, stats: dict[str, Any], kind: str = "normal") -> Any:
    """Invert :func:`normalize` (for "bounds", values are mapped back into [min, max])."""
    _check_kind(kind)
    if kind == "none":
        return x
    if kind == "normal":
        return x * _as_like(_safe_std(stats), x) + _as_like(stats["mean"], x)
    lo, hi = _as_like(stats["min"], x), _as_like(stats["max"], x)
    return x * (hi - lo) + lo
