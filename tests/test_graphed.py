"""CUDA-graph replay of ``sample_actions`` (deploy/graphed.py) gives the eager call's actions."""

import pytest
import torch

from bridge_torch.agents import AgentShapes, build_agent
from bridge_torch.deploy.graphed import GraphedSampler
from bridge_torch.models.resnet import EncoderConfig
from bridge_torch.models.saliency import SaliencyConfig
from bridge_torch.train.config import typed_model_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def small_agent(algo: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = typed_model_config(algo, {"hidden_dims": [32, 32], "score_width": 32})
    agent = build_agent(algo, model,
                        EncoderConfig(name="resnetv1-mini-bridge", num_filters=8),
                        SaliencyConfig(), AgentShapes(action_dim=7, proprio_dim=7, obs_horizon=2,
                                                      act_pred_horizon=3, image_size=32))
    return agent.to(device).eval()


def inputs(seed: int, device: str, batch: int = 1) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 2, 32, 32, 3), dtype=torch.uint8, generator=g)
    goals = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, generator=g)
    return {"image": images.to(device)}, {"image": goals.to(device)}


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("algo", ["bc", "gc_bc"])
def test_graphed_mode_equals_eager_for_new_inputs(algo: str) -> None:
    agent = small_agent(algo, "cuda")
    graphed = GraphedSampler(agent, argmax=True,
                             generator=torch.Generator("cuda").manual_seed(0))
    for seed in range(3):  # replays must read each call's inputs, not the captured ones
        observations, goals = inputs(seed, "cuda")
        goals = goals if algo == "gc_bc" else None
        expected = agent.sample_actions(observations, goals, argmax=True)
        torch.testing.assert_close(graphed(observations, goals), expected, rtol=1e-4, atol=1e-5)
    observations, goals = inputs(9, "cuda", batch=3)  # another batch size: a second graph
    goals = goals if algo == "gc_bc" else None
    torch.testing.assert_close(graphed(observations, goals),
                               agent.sample_actions(observations, goals, argmax=True),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@needs_cuda
def test_graphed_diffusion_draws_fresh_noise_from_its_generator() -> None:
    agent = small_agent("gc_ddpm_bc", "cuda")
    generator = torch.Generator("cuda")
    graphed = GraphedSampler(agent, argmax=True, generator=generator)
    observations, goals = inputs(0, "cuda")
    first, second = graphed(observations, goals), graphed(observations, goals)
    assert torch.isfinite(first).all() and not torch.equal(first, second)
    generator.manual_seed(5)  # re-seeding repeats the eager sequence
    replayed = [graphed(observations, goals) for _ in range(2)]
    generator.manual_seed(5)
    eager = [agent.sample_actions(observations, goals, generator=generator) for _ in range(2)]
    for got, expected in zip(replayed, eager, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_graphed_sampler_needs_a_cuda_generator() -> None:
    with pytest.raises(ValueError, match="CUDA generator"):
        GraphedSampler(small_agent("bc", "cpu"), argmax=True, generator=torch.Generator())
