"""``sample_actions`` replayed from CUDA graphs: a robot's per-step call as one launch.

For one observation an action costs hundreds of small kernels (the encoder's convolutions and
norms, then 20 denoising steps of the diffusion head), and a GPU spends most of the call waiting
for the CPU to launch them. ``GraphedSampler`` captures the whole call once per input signature
(batch size, image shapes, goal, proprio) into a CUDA graph with static input buffers; each call
then copies its inputs in and replays the graph. Random draws (the diffusion noise) come from the
given CUDA generator, registered with every graph, so each replay draws fresh noise from it and
re-seeding the generator repeats a sequence; the warm-up before a capture consumes draws too.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from bridge_torch.agents.base import Agent

Inputs = dict[str, torch.Tensor]
WARMUP_CALLS = 2  # eager calls on a side stream before capturing (cuDNN/Triton set-up)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    observations: Inputs  # static buffers the graph reads
    goals: Optional[Inputs]
    actions: torch.Tensor  # static buffer the graph writes


class GraphedSampler:
    """``sampler(observations, goals)`` = ``agent.sample_actions(...)``, from CUDA graphs."""

    def __init__(self, agent: Agent, *, argmax: bool, generator: torch.Generator) -> None:
        if generator.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA generator, got one on {generator.device}")
        self.agent, self.argmax, self.generator = agent, argmax, generator
        self._graphs: dict[tuple, _Captured] = {}

    def __call__(self, observations: Inputs, goals: Optional[Inputs] = None) -> torch.Tensor:
        key = _signature(observations, goals)
        if key not in self._graphs:
            self._graphs[key] = self._capture(observations, goals)
        captured = self._graphs[key]
        _copy_into(captured.observations, observations)
        if goals is not None:
            _copy_into(captured.goals, goals)
        captured.graph.replay()
        return captured.actions.clone()

    def _sample(self, observations: Inputs, goals: Optional[Inputs]) -> torch.Tensor:
        return self.agent.sample_actions(observations, goals, argmax=self.argmax,
                                         generator=self.generator)

    def _capture(self, observations: Inputs, goals: Optional[Inputs]) -> _Captured:
        static_obs = {name: value.clone() for name, value in observations.items()}
        static_goals = None if goals is None else {k: v.clone() for k, v in goals.items()}
        device = self.generator.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._sample(static_obs, static_goals)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        with torch.cuda.graph(graph):
            actions = self._sample(static_obs, static_goals)
        return _Captured(graph, static_obs, static_goals, actions)


def _signature(observations: Inputs, goals: Optional[Inputs]) -> tuple:
    def shapes(inputs: Optional[Inputs]) -> tuple:
        if inputs is None:
            return ()
        return tuple((name, tuple(value.shape), value.dtype) for name, value in
                     sorted(inputs.items()))

    return shapes(observations), goals is not None, shapes(goals)


def _copy_into(static: Inputs, values: Inputs) -> None:
    for name, value in values.items():
        static[name].copy_(value, non_blocking=True)
