"""One raw BridgeData trajectory as read, offering both output shapes the converter writes.

:func:`bridge_raw.read_trajectory` returns a :class:`RawTrajectory`: the per-camera frames, the
state, time stamps and actions as stored in the pickles, the language lines and the optional
saliency maps, plus whether the one-frame latency shift applies. Why both views live here: the
packed store wants stacked arrays (:meth:`RawTrajectory.trajectory`), while the legacy out.npy
wants the original converter's lists of per-step dicts (:meth:`RawTrajectory.out_dict`), whose
pickled bytes depend on which step dicts share one frame object. Building the dicts only for
out.npy keeps ``--format packed`` from making T dicts per trajectory just to stack them again.
Both views apply the latency shift the same way (docs/semantics.md, 'Data format and latency
shift').
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge_torch.data.store import Trajectory

SALIENCY_KEY = "saliency"  # the observation key of saliency maps in out.npy


@dataclass(frozen=True)
class RawTrajectory:
    """A raw ``traj<i>`` folder's contents; T frames, T-1 actions before the latency shift."""

    frames: dict[str, list[np.ndarray]]  # camera -> T uint8 (S, S, 3) frames, in camera order
    state: Sequence  # (T, 7) full_state as stored in obs_dict.pkl (list or array)
    time_stamp: Sequence  # (T,) as stored in obs_dict.pkl
    actions: list  # T-1 actions as stored in policy_out.pkl
    language: list[str]  # lang.txt lines without ``confidence`` lines; [""] without the file
    saliency: list[np.ndarray] | None  # T float32 (S, S, 1) maps, or None
    latency_shift: bool  # drop the first frame and the last action (data before 2021-07-23)
    source: str  # the trajectory folder, named in error messages and store metadata

    def trajectory(self) -> Trajectory:
        """The packed store's view: frames[shift:] stacked once per camera, float32 proprio and
        actions, saliency (T+1, S, S), and the language without blank lines."""
        shift = int(self.latency_shift)
        saliency = None
        if self.saliency is not None:
            maps = np.stack(self.saliency[shift:])
            saliency = maps.reshape(maps.shape[:3])
        return Trajectory(
            frames={camera: np.stack(frames[shift:]) for camera, frames in self.frames.items()},
            proprio=np.asarray(self.state[shift:]).astype(np.float32),
            actions=np.asarray(self.actions[:len(self.actions) - shift], dtype=np.float32),
            language=[line for line in self.language if line.strip()],
            saliency=saliency,
            source=self.source,
        )

    def out_dict(self) -> dict[str, Any]:
        """The original converter's out.npy dict: observations hold frames ``[:-1]`` and
        next_observations ``[1:]`` of every column, sliced from the stored sequences as the
        original does, so observations[t+1] and next_observations[t] share one frame object and
        the pickled out.npy has the original's bytes."""
        columns: dict[str, Sequence] = {**self.frames, "state": self.state,
                                        "time_stamp": self.time_stamp}
        if self.saliency is not None:
            columns[SALIENCY_KEY] = self.saliency
        observations = _per_step(columns, slice(None, -1))
        next_observations = _per_step(columns, slice(1, None))
        actions, terminals = self.actions, [0] * len(self.actions)
        if self.latency_shift:  # a_k pairs with the frame captured one step later
            observations, next_observations = observations[1:], next_observations[1:]
            actions, terminals = actions[:-1], terminals[:-1]
        return {"observations": observations, "next_observations": next_observations,
                "actions": actions, "terminals": terminals, "language": self.language}


def _per_step(columns: dict[str, Sequence], window: slice) -> list[dict[str, Any]]:
    """Per-frame sequences -> list of per-step dicts over ``window`` (the original's zip)."""
    sliced = [column[window] for column in columns.values()]
    return [dict(zip(columns, values, strict=True)) for values in zip(*sliced, strict=True)]
