"""Policy: history, chunk execution, un-normalisation, sticky gripper, batching, from_run."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bridge_torch.agents import AgentShapes
from bridge_torch.batch import BatchInputs
from bridge_torch.deploy.policy import BatchedPolicy, Policy, resize_frame

STATS = {"actions": {"mean": [1.0] * 7, "std": [2.0] * 7, "min": [0.0] * 7, "max": [1.0] * 7},
         "proprio": {"mean": [0.5] * 7, "std": [0.25] * 7, "min": [0.0] * 7, "max": [1.0] * 7}}

@pytest.fixture
def gc_bc_run(tiny_run: Callable[[str], Path]) -> Path:
    return tiny_run("gc_bc")


class FakeAgent(nn.Module):
    """Returns chunk c of call c: action[h] = (c + h/10) in every dim; records its inputs."""

    def __init__(self, horizon: int = 1, goal_conditioned: bool = True,
                 use_proprio: bool = False, gripper: list[float] | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.inputs = BatchInputs(goal_image=goal_conditioned, proprio=use_proprio)
        self.shapes = AgentShapes(action_dim=7, proprio_dim=7, obs_horizon=3,
                                  act_pred_horizon=horizon, image_size=8)
        self.horizon, self.calls, self.gripper = horizon, [], gripper

    def sample_actions(self, observations, goals=None, *, argmax=False, generator=None):
        assert not self.training
        self.calls.append((observations, goals))
        c = len(self.calls) - 1
        b = observations["image"].shape[0]
        chunk = torch.tensor([c + h / 10 for h in range(self.horizon)])[None, :, None]
        actions = chunk.expand(b, self.horizon, 7).clone()
        if self.gripper is not None:
            actions[..., -1] = (self.gripper[c] - 1.0) / 2.0  # normalised so denormalised = value
        return actions


def _policy(agent: FakeAgent, **kwargs) -> BatchedPolicy:
    defaults = dict(stats=STATS, normalization_type="normal", sticky_gripper_num_steps=None)
    return BatchedPolicy(agent, **{**defaults, **kwargs})


def _frame(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def test_history_is_padded_with_the_first_frame_and_shifts() -> None:
    agent = FakeAgent()
    policy = Policy(_policy(agent))
    goal = _frame(99)
    for value in (10, 20, 30):
        policy.act(_frame(value), goal_image=goal)
    windows = [obs["image"][0, :, 0, 0, 0].tolist() for obs, _ in agent.calls]
    assert windows == [[10, 10, 10], [10, 10, 20], [10, 20, 30]]
    policy.reset()
    policy.act(_frame(40), goal_image=goal)
    assert agent.calls[-1][0]["image"][0, :, 0, 0, 0].tolist() == [40, 40, 40]


def test_chunks_run_act_exec_horizon_steps_and_are_denormalised() -> None:
    agent = FakeAgent(horizon=4)
    policy = Policy(_policy(agent, act_exec_horizon=2))
    actions = [policy.act(_frame(1), goal_image=_frame(2)) for _ in range(5)]
    assert len(agent.calls) == 3  # steps 0-1, 2-3, 4
    raw = [0.0, 0.1, 1.0, 1.1, 2.0]
    np.testing.assert_allclose([a[0] for a in actions], [r * 2.0 + 1.0 for r in raw], rtol=1e-6)


def test_sticky_gripper_flips_after_consecutive_disagreements() -> None:
    wants = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    agent = FakeAgent(gripper=wants)
    policy = Policy(_policy(agent, sticky_gripper_num_steps=2))
    out = [policy.act(_frame(1), goal_image=_frame(2))[-1] for _ in wants]
    assert out == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    passthrough = Policy(_policy(FakeAgent(gripper=[0.3]), sticky_gripper_num_steps=None))
    assert passthrough.act(_frame(1), goal_image=_frame(2))[-1] == pytest.approx(0.3)


def test_frames_of_any_size_are_resized_and_bad_frames_refused() -> None:
    big = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    small = resize_frame(big, 8)
    assert small.shape == (8, 8, 3) and small.dtype == np.uint8
    with pytest.raises(ValueError, match="uint8"):
        resize_frame(big.astype(np.float32), 8)
    agent = FakeAgent()
    Policy(_policy(agent)).act(big, goal_image=big)
    assert agent.calls[0][0]["image"].shape == (1, 3, 8, 8, 3)
    assert agent.calls[0][1]["image"].shape == (1, 8, 8, 3)


def test_missing_goal_or_proprio_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="goal"):
        Policy(_policy(FakeAgent())).act(_frame(1))
    with pytest.raises(ValueError, match="proprio"):
        Policy(_policy(FakeAgent(use_proprio=True))).act(_frame(1), goal_image=_frame(2))


def test_cuda_graphs_need_an_agent_on_cuda() -> None:
    with pytest.raises(ValueError, match="cuda_graphs needs an agent on CUDA"):
        _policy(FakeAgent(), cuda_graphs=True)


def test_proprio_history_is_normalised() -> None:
    agent = FakeAgent(use_proprio=True)
    policy = Policy(_policy(agent))
    policy.act(_frame(1), goal_image=_frame(2), proprio=np.full(7, 1.0))
    np.testing.assert_allclose(agent.calls[0][0]["proprio"].numpy(), np.full((1, 3, 7), 2.0))


def test_batched_equals_independent_single_policies() -> None:
    batched_agent = FakeAgent(horizon=3)
    batched = _policy(batched_agent, num_envs=2, act_exec_horizon=2)
    singles = [Policy(_policy(FakeAgent(horizon=3), act_exec_horizon=2)) for _ in range(2)]
    for step in range(4):
        frames = np.stack([_frame(step), _frame(50 + step)])
        goals = np.stack([_frame(7), _frame(8)])
        together = batched.act(frames, goals)
        alone = [p.act(frames[i], goal_image=goals[i]) for i, p in enumerate(singles)]
        np.testing.assert_allclose(together, np.stack(alone))
    batched.reset(env_ids=[1])
    assert batched.fresh.tolist() == [False, True]


@pytest.mark.slow
def test_from_run_restores_a_trained_policy(gc_bc_run: Path) -> None:
    policy = Policy.from_run(gc_bc_run, device="cpu")
    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    first = policy.act(frame, goal_image=frame)
    assert first.shape == (7,) and first.dtype == np.float32 and first[-1] in (0.0, 1.0)
    policy.reset()
    assert np.array_equal(policy.act(frame, goal_image=frame), first)  # deterministic (argmax)
