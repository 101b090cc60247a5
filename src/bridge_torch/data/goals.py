"""Goal relabelling (docs/semantics.md, 'Goal relabelling'), vectorised over a batch.

Every strategy works on trajectory-local indices: transition ``t`` of a trajectory with ``L``
transitions has frames ``0..L`` (frame ``t+1`` is ``next_observations[t]``). The functions here
return the *goal frame* of each transition, so the caller only adds the trajectory's first frame.
All draws come from the caller's CPU ``torch.Generator`` (copied to the data's device without a
host sync): one call, no per-sample Python.

Strategies (JAX ``tf_goal_relabeling.py``; ``reached`` = with probability ``reached_proportion``,
and always for the last transition ``t = L-1``; goal = ``next_observations[g]`` = frame ``g+1``):

* ``uniform``: reached -> ``g = t``; else ``g`` uniform over ``{t+1 .. L-1}``.
* ``last_state_upweighted``: reached -> ``g = t``; else ``g = min(t + o, L-1)`` with the offset
  ``o`` uniform over ``{1 .. L-1}`` (so the last state is over-weighted for late ``t``).
* ``geometric``: reached -> ``g = t``; else ``g = t + k`` with ``P(k) ∝ discount**k`` over
  ``k in {1 .. L-1-t}`` (drawn by inverting the truncated geometric CDF).
* ``delta_goals``: the trajectory is truncated to its first ``L - lo`` transitions (shorter
  trajectories contribute none); the goal frame is uniform over ``[t+lo, min(L+1, t+hi))`` of all
  ``L+1`` frames, so ``lo = 0`` allows the current frame itself. Only the sampled transitions are
  truncated: observation windows and action chunks still see the whole trajectory, as in JAX,
  where the chunks are computed before relabelling truncates.
"""

import math

import torch

from bridge_torch.data.transfer import to_device

GOAL_STRATEGIES = ("uniform", "last_state_upweighted", "geometric", "delta_goals")


def sampled_lengths(lengths: torch.Tensor, strategy: str, goal_delta: list[int]) -> torch.Tensor:
    """Number of transitions of each trajectory that may be sampled under ``strategy``.

    Args:
        lengths: int64 (n,) transitions per trajectory.
    Returns:
        int64 (n,): ``lengths``, or ``max(L - goal_delta[0], 0)`` for ``delta_goals``.
    """
    if strategy == "delta_goals":
        return (lengths - goal_delta[0]).clamp(min=0)
    return lengths


def sample_goal_frames(
    t: torch.Tensor,
    length: torch.Tensor,
    *,
    strategy: str,
    reached_proportion: float,
    discount: float,
    goal_delta: list[int],
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw the goal frame of each transition.

    Args:
        t: int64 (B,) transition index within its trajectory.
        length: int64 (B,) transitions of that trajectory (L >= 1).
    Returns:
        int64 (B,) goal frame within the trajectory, in ``[0, L]``.
    """
    # Two uniforms per sample for every strategy, so the generator advances identically.
    u = to_device(torch.rand((2, t.shape[0]), dtype=torch.float64, generator=generator), t.device)
    if strategy == "delta_goals":
        return _delta_goal_frames(t, length, u[0], goal_delta)
    future = _FUTURE_INDEX[strategy](t, length, u[0], discount)
    reached = (u[1] < reached_proportion) | (t == length - 1)
    return torch.where(reached, t, future) + 1


def _uniform_future(t: torch.Tensor, length: torch.Tensor, u: torch.Tensor,
                    discount: float) -> torch.Tensor:
    low = t + 1
    index = (u * (length - low) + low).floor().long()
    return torch.minimum(index, length - 1)


def _last_state_upweighted_future(t: torch.Tensor, length: torch.Tensor, u: torch.Tensor,
                                  discount: float) -> torch.Tensor:
    offset = 1 + (u * (length - 1)).floor().long()  # uniform over {1 .. L-1}
    return torch.minimum(t + offset, length - 1)


def _geometric_future(t: torch.Tensor, length: torch.Tensor, u: torch.Tensor,
                      discount: float) -> torch.Tensor:
    remaining = length - 1 - t  # candidates k = 1 .. remaining
    if discount == 1.0:
        k = (u * remaining).floor().long() + 1
    else:
        # P(k <= m) = (1 - d^m) / (1 - d^n)  =>  k = ceil(log(1 - u (1 - d^n)) / log d)
        log_d = math.log(discount)
        tail = -torch.expm1(remaining.double() * log_d)  # 1 - d^n
        k = torch.ceil(torch.log1p(-u * tail) / log_d).long()
    k = torch.minimum(k.clamp(min=1), remaining.clamp(min=1))
    return torch.minimum(t + k, length - 1)


def _delta_goal_frames(t: torch.Tensor, length: torch.Tensor, u: torch.Tensor,
                       goal_delta: list[int]) -> torch.Tensor:
    low = t + goal_delta[0]
    high = torch.minimum(length + 1, t + goal_delta[1])
    frame = (u * (high - low) + low).floor().long()
    return torch.minimum(frame, length)


_FUTURE_INDEX = {
    "uniform": _uniform_future,
    "last_state_upweighted": _last_state_upweighted_future,
    "geometric": _geometric_future,
}
