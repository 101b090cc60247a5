"""Vectorised transition sampling: whole batches by index arithmetic on the device.

``TransitionSampler.sample(B)`` draws B transitions with a handful of tensor ops, no per-sample
Python: sub-datasets are mixed by ``sample_weights`` (uniform over sub-datasets when None, as
JAX), transitions are uniform within a sub-dataset (so long trajectories are drawn more often than
short ones, as the original does; not trajectory-uniform as the earlier port was), goals
follow the relabelling strategy (``data/goals.py``), the observation window ``t-K+1..t`` repeats
the first frame before the trajectory start and the action chunk ``t..t+T_act-1`` repeats the last
action (docs/semantics.md, 'Observation and action horizons'); every transition is a valid
sample. ``iterate_validation`` visits every transition of a split exactly once, in order, with
seeded goals. Both take the ``SampleConfig``; whether a batch carries goals and saliency targets
is what the ``TrainingData`` was opened with (``LoadConfig``).

Random numbers come from a CPU ``torch.Generator`` whatever the device (a few floats per sample,
copied asynchronously), so a seed gives the same batches on CPU and CUDA, with frames on the
device or gathered from memory maps, and a run resumes exactly wherever its frames live.

DDP: each rank builds its own sampler with ``seed + rank`` and draws its share of the global
batch; the streams are independent, so no index is communicated between ranks.
"""

import functools
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import torch

from bridge_torch.batch import (
    ACTIONS,
    GOALS,
    IMAGE,
    OBSERVATIONS,
    PROPRIO,
    SALIENCY,
    SALIENCY_MASK,
)
from bridge_torch.data.config import SampleConfig
from bridge_torch.data.goals import sample_goal_frames, sampled_lengths
from bridge_torch.data.saliency_targets import aggregate_window, minmax_normalize
from bridge_torch.data.training_data import TrainingData
from bridge_torch.data.transfer import to_device

__all__ = ["SampleConfig", "TrainingData", "TransitionSampler", "iterate_validation"]
log = logging.getLogger(__name__)


class _TransitionIndex:
    """Maps a global transition number (over the sampled transitions) to (trajectory, t)."""

    def __init__(self, data: TrainingData, cfg: SampleConfig) -> None:
        self.lengths = sampled_lengths(data.traj_length, cfg.goal_relabeling_strategy,
                                       list(cfg.goal_delta))
        self.ends = torch.cumsum(self.lengths, 0)  # (n,) exclusive end per trajectory
        self.num_transitions = int(self.ends[-1])
        bounds = data.sub_dataset_traj_start
        starts = [int(self.ends[b - 1]) if b > 0 else 0 for b in bounds]
        self.sub_start = torch.tensor(starts[:-1], device=data.device)  # (S,) first transition
        self.sub_count = torch.tensor([b - a for a, b in itertools.pairwise(starts)],
                                      device=data.device)  # (S,) transitions per sub-dataset

    def locate(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 (B,) transition numbers -> (trajectory (B,), t within it (B,))."""
        traj = torch.searchsorted(self.ends, r, right=True)
        return traj, r - (self.ends[traj] - self.lengths[traj])


class TransitionSampler:
    """Draws training batches (not augmented) from ``TrainingData`` with a seeded generator."""

    def __init__(self, data: TrainingData, cfg: SampleConfig, *,
                 sample_weights: list[float] | None = None, seed: int) -> None:
        """Args:
            sample_weights: one probability per sub-dataset, summing to 1; None = uniform over
                sub-datasets (JAX).
            seed: generator seed; under DDP pass ``seed + rank``.
        """
        self.data, self.cfg, self.seed = data, cfg, seed
        self._index = _TransitionIndex(data, cfg)
        counts = self._index.sub_count.tolist()
        for s, count in enumerate(counts):
            if count == 0:
                raise ValueError(f"sub-dataset {s} has no transitions to sample (goal_delta "
                                 f"{list(cfg.goal_delta)} truncates all its trajectories?)")
        weights = _check_weights(sample_weights, len(counts))
        cumulative = torch.cumsum(torch.tensor(weights, dtype=torch.float64), 0)
        cumulative[-1] = 1.0  # rounding must not leave a gap that no sub-dataset covers
        self._cumulative_weights = cumulative.to(data.device)
        self._generator = torch.Generator()
        self._generator.manual_seed(seed)

    def sample(self, batch_size: int) -> dict[str, Any]:
        """One batch (``bridge_torch.batch`` layout) on the data's ``batch_device``, without a
        host sync."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        u = to_device(torch.rand((2, batch_size), dtype=torch.float64, generator=self._generator),
                      self.data.device)
        sub = torch.searchsorted(self._cumulative_weights, u[0], right=True)
        sub = sub.clamp_(max=self._cumulative_weights.shape[0] - 1)
        count = self._index.sub_count[sub]
        offset = torch.minimum((u[1] * count).floor().long(), count - 1)
        traj, t = self._index.locate(self._index.sub_start[sub] + offset)
        return _assemble_batch(self.data, self.cfg, traj, t, self._generator)

    def state_dict(self) -> dict[str, Any]:
        """Generator state (uint8 tensor) and seed: plain data, ``weights_only``-loadable."""
        return {"generator": self._generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the stream exactly where ``state_dict`` was taken."""
        if state.get("seed") != self.seed:
            log.warning("sampler state was saved with seed %s, this sampler has seed %s; "
                        "continuing the saved stream", state.get("seed"), self.seed)
        generator = torch.as_tensor(state["generator"], dtype=torch.uint8).cpu()
        if generator.numel() != self._generator.get_state().numel():
            raise ValueError(f"sampler state: expected a CPU generator state of "
                             f"{self._generator.get_state().numel()} bytes, got "
                             f"{generator.numel()} (a CUDA generator's, saved by a version "
                             f"that sampled on the GPU?)")
        self._generator.set_state(generator)


def iterate_validation(data: TrainingData, cfg: SampleConfig, batch_size: int, *, seed: int,
                       max_batches: int | None = None, rank: int = 0,
                       world_size: int = 1) -> Iterator[dict[str, Any]]:
    """Every sampled transition of the split once, in store order (last batch may be smaller).

    Batch ``b`` draws its goals from a generator seeded from ``(seed, b)``, so every evaluation
    sees the same batches (JAX draws validation goals from the unseeded TF global RNG) whatever
    the sharding. No augmentation.

    Args:
        max_batches: stop after this many batches (counted before sharding); None = all.
        rank, world_size: yield only batches ``b`` with ``b % world_size == rank`` (DDP: each
            rank gathers only its share; the union over ranks is the full pass).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batches is not None and max_batches < 0:
        raise ValueError(f"max_batches must be >= 0 or None, got {max_batches}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank} of {world_size}")
    index = _TransitionIndex(data, cfg)
    generator = torch.Generator()
    for number, start in enumerate(range(0, index.num_transitions, batch_size)):
        if max_batches is not None and number >= max_batches:
            return
        if number % world_size != rank:
            continue
        generator.manual_seed(_batch_seed(seed, number))
        stop = min(start + batch_size, index.num_transitions)
        traj, t = index.locate(torch.arange(start, stop, device=data.device))
        yield _assemble_batch(data, cfg, traj, t, generator)


def _batch_seed(seed: int, number: int) -> int:
    """A 32-bit seed per (seed, batch): the CPU generator only uses the low 32 bits."""
    return (seed * 0x9E3779B1 + number) % 2**32  # odd multiplier: distinct seeds stay distinct


def _check_weights(sample_weights: list[float] | None, num_sub_datasets: int) -> list[float]:
    if sample_weights is None:
        return [1.0 / num_sub_datasets] * num_sub_datasets
    weights = [float(w) for w in sample_weights]
    if len(weights) != num_sub_datasets:
        raise ValueError(f"sample_weights has {len(weights)} entries for {num_sub_datasets} "
                         f"sub-datasets")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"sample_weights must be >= 0 and sum to 1, got {weights}")
    return weights


def _assemble_batch(data: TrainingData, cfg: SampleConfig, traj: torch.Tensor, t: torch.Tensor,
                    generator: torch.Generator) -> dict[str, Any]:
    """Gather the batch of transitions ``(traj, t)`` (on ``data.device``) and deliver it on
    ``data.batch_device``; goals are drawn from the CPU ``generator``."""
    window = cfg.obs_horizon
    length, first_frame = data.traj_length[traj], data.traj_frame_start[traj]
    offsets = torch.arange(1 - window, 1, device=t.device)  # (K,) oldest first
    obs_frames = first_frame[:, None] + (t[:, None] + offsets).clamp_(min=0)  # (B, K)
    chunk = torch.arange(cfg.act_pred_horizon, device=t.device)
    action_rows = data.traj_action_start[traj][:, None] + torch.minimum(
        t[:, None] + chunk, (length - 1)[:, None])  # (B, T_act)
    deliver = functools.partial(to_device, device=data.batch_device)
    observations: dict[str, torch.Tensor] = {PROPRIO: deliver(data.proprio[obs_frames])}
    batch: dict[str, Any] = {OBSERVATIONS: observations,
                             ACTIONS: deliver(data.actions[action_rows])}
    if data.has_goals:
        goal_frames = first_frame + sample_goal_frames(
            t, length, strategy=cfg.goal_relabeling_strategy,
            reached_proportion=cfg.reached_proportion, discount=cfg.discount,
            goal_delta=list(cfg.goal_delta), generator=generator)
        batch[GOALS] = {IMAGE: deliver(data.gather_frames(goal_frames)),
                        PROPRIO: deliver(data.proprio[goal_frames])}
    observations[IMAGE] = deliver(data.gather_frames(obs_frames))
    if data.has_saliency:
        maps = deliver(data.gather_saliency(obs_frames)).float()  # (B, K, H, W)
        target, informative = minmax_normalize(
            aggregate_window(maps, deliver(t), cfg.saliency_alpha))
        observations[SALIENCY] = target
        observations[SALIENCY_MASK] = deliver(data.traj_has_saliency[traj]) & informative
    return batch
