"""BC, GC-BC and GC-DDPM-BC: the original's parameter counts and losses, sampling, saliency."""

import math

import pytest
import torch

from bridge_torch.agents import AGENTS, AgentShapes, build_agent, count_parameters, model_config
from bridge_torch.models.resnet import EncoderConfig
from bridge_torch.models.saliency import SaliencyConfig
from bridge_torch.train.config import typed_model_config

MINI = EncoderConfig(name="resnetv1-mini-bridge", num_filters=8)
SMALL_MODEL = dict(hidden_dims=[32, 32], score_width=32, num_blocks=1)


def _agent(algo: str, *, k: int = 1, h: int = 1, size: int = 32, saliency: bool = False,
           encoder: EncoderConfig = MINI, **model) -> torch.nn.Module:
    cfg = typed_model_config(algo, {**SMALL_MODEL, **model})
    return build_agent(algo, cfg, encoder, SaliencyConfig(enabled=saliency, weight=1.0),
                       AgentShapes(action_dim=7, proprio_dim=7, obs_horizon=k,
                                   act_pred_horizon=h, image_size=size))


def _batch(b: int = 4, *, k: int = 1, h: int = 1, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": {
            "image": torch.randint(0, 256, (b, k, size, size, 3), dtype=torch.uint8, generator=g),
            "proprio": torch.randn(b, k, 7, generator=g),
            "saliency": torch.rand(b, size, size, generator=g),
            "saliency_mask": torch.tensor([True, False] * (b // 2)),
        },
        "goals": {"image": torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8,
                                         generator=g),
                  "proprio": torch.randn(b, 7, generator=g)},
        "actions": torch.randn(b, h, 7, generator=g),
    }


@pytest.mark.parametrize("algo,expected", [("bc", 21_555_655), ("gc_bc", 21_565_063),
                                           ("gc_ddpm_bc", 23_025_911)])
def test_parameter_counts_equal_the_jax_original(algo: str, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        agent = build_agent(algo, model_config(algo), EncoderConfig(), SaliencyConfig(),
                            AgentShapes(action_dim=7, proprio_dim=7, obs_horizon=1,
                                        act_pred_horizon=1, image_size=128))
    assert count_parameters(agent)["total"] == expected


@pytest.mark.parametrize("algo", sorted(AGENTS))
@pytest.mark.parametrize("k,h", [(1, 1), (2, 4)])
def test_loss_and_sample_shapes(algo: str, k: int, h: int) -> None:
    agent = _agent(algo, k=k, h=h)
    batch = _batch(k=k, h=h)
    loss, metrics = agent.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(v.ndim == 0 and not v.requires_grad for v in metrics.values())
    agent.eval()
    actions = agent.sample_actions(batch["observations"], batch["goals"], argmax=True)
    assert actions.shape == (4, h, 7)
    assert set(agent.validation_metrics(batch)) >= {"mse", "total_loss"}


def test_bc_loss_with_fixed_std_one_is_scaled_mse() -> None:
    agent = _agent("bc", dropout_rate=0.0).eval()
    batch = _batch()
    with torch.no_grad():
        loss, metrics = agent.loss(batch)
        mean = agent.sample_actions(batch["observations"], argmax=True)
    per_sample = 0.5 * (batch["actions"] - mean).pow(2).flatten(1).sum(1) + 3.5 * math.log(
        2 * math.pi)
    assert torch.allclose(loss, per_sample.mean(), atol=1e-5)
    assert torch.allclose(metrics["mse"], 2 * (per_sample.mean() - 3.5 * math.log(2 * math.pi)),
                          atol=1e-4)
    assert metrics["mean_std"] == 1.0 and metrics["max_std"] == 1.0


def test_validation_mse_per_action_dimension() -> None:
    agent = _agent("bc", h=4).eval()
    batch = _batch(h=4)
    metrics = agent.validation_metrics(batch)
    with torch.no_grad():
        mean = agent.sample_actions(batch["observations"], argmax=True)
    expected = (batch["actions"] - mean).pow(2).sum(1).mean(0)  # over the chunk, then the batch
    names = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
    assert torch.allclose(torch.stack([metrics[f"mse_{n}"] for n in names]), expected, atol=1e-5)
    assert torch.allclose(metrics["mse"], expected.sum(), atol=1e-5)


def test_std_variants_and_tanh_squash() -> None:
    learned = _agent("bc", fixed_std=None)
    assert learned.head.log_std is not None and learned.head.log_std.abs().sum() == 0
    state_dependent = _agent("bc", fixed_std=None, state_dependent_std=True)
    assert state_dependent.head.log_std_head is not None
    tanh = _agent("bc", tanh_squash_distribution=True).eval()
    batch = _batch()
    batch["actions"] = batch["actions"].clamp(-0.9, 0.9)
    loss, _ = tanh.loss(batch)
    assert torch.isfinite(loss)
    assert tanh.sample_actions(batch["observations"]).abs().max() < 1


def test_ddpm_loss_at_init_has_the_jax_magnitude() -> None:
    torch.manual_seed(0)
    agent = _agent("gc_ddpm_bc", h=4)
    loss, metrics = agent.loss(_batch(b=64, h=4))
    # ε ~ N(0, I) summed over 7 action dims: ≈ 7 plus the untrained network's output variance.
    assert 6.0 < metrics["ddpm_loss"] < 30.0 and torch.isfinite(loss)


@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_sampling_needs_eval_mode_and_is_deterministic(algo: str) -> None:
    agent = _agent(algo, h=2)
    batch = _batch(h=2)
    with pytest.raises(RuntimeError, match="eval mode"):
        agent.sample_actions(batch["observations"], batch["goals"])
    agent.eval()
    first = agent.sample_actions(batch["observations"], batch["goals"],
                                 generator=torch.Generator().manual_seed(3))
    again = agent.sample_actions(batch["observations"], batch["goals"],
                                 generator=torch.Generator().manual_seed(3))
    other = agent.sample_actions(batch["observations"], batch["goals"],
                                 generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_ddpm_validation_loss_follows_the_generator_not_the_global_rng() -> None:
    agent = _agent("gc_ddpm_bc").eval()
    batch = _batch()

    def metrics(seed: int) -> dict:
        return agent.validation_metrics(batch, generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(0)
    first = metrics(5)
    torch.manual_seed(1)  # another global RNG state: the same numbers
    again = metrics(5)
    assert first["ddpm_loss"] == again["ddpm_loss"] and first["mse"] == again["mse"]
    assert metrics(6)["ddpm_loss"] != first["ddpm_loss"]


def test_ddpm_sampler_clips_and_repeats_last_step() -> None:
    agent = _agent("gc_ddpm_bc", repeat_last_step=2, action_clip=0.5).eval()
    batch = _batch()
    out = agent.sample_actions(batch["observations"], batch["goals"],
                               generator=torch.Generator().manual_seed(0))
    assert out.abs().max() <= 0.5


@pytest.mark.parametrize("algo,fusion", [("bc", {}), ("gc_bc", {}),
                                         ("gc_bc", {"early_goal_concat": False}),
                                         ("gc_bc", {"early_goal_concat": False,
                                                    "shared_goal_encoder": False}),
                                         ("gc_ddpm_bc", {})])
def test_saliency_term_reaches_the_encoder_and_masks_samples(algo: str, fusion: dict) -> None:
    torch.manual_seed(0)
    agent = _agent(algo, saliency=True, dropout_rate=0.0, size=64, **fusion)  # 2x2 final map
    batch = _batch(size=64)
    torch.manual_seed(1)
    loss, metrics = agent.loss(batch)
    assert metrics["saliency_reg"] > 0
    assert torch.allclose(metrics["total_loss"], loss.detach())
    conv = agent.encoder.encoder.conv_init.weight
    (grad,) = torch.autograd.grad(metrics_free_reg(agent, batch), conv)
    assert grad.abs().sum() > 0
    changed = _batch(size=64)
    changed["observations"]["saliency"][1] = 1 - changed["observations"]["saliency"][1]
    torch.manual_seed(1)
    _, metrics_changed = agent.loss(changed)
    assert torch.equal(metrics["saliency_reg"], metrics_changed["saliency_reg"])


def metrics_free_reg(agent: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The regulariser alone: total loss with saliency minus the same loss without it."""
    torch.manual_seed(1)
    with_reg, _ = agent.loss(batch)
    agent.saliency.enabled = False
    torch.manual_seed(1)
    without, _ = agent.loss(batch)
    agent.saliency.enabled = True
    return with_reg - without


def test_saliency_on_a_1x1_feature_map_is_refused() -> None:
    agent = _agent("bc", saliency=True, size=32)
    with pytest.raises(ValueError, match="larger than 1x1"):
        agent.loss(_batch(size=32))


def test_missing_saliency_targets_are_a_clear_error() -> None:
    agent = _agent("bc", saliency=True, size=64)
    batch = _batch(size=64)
    del batch["observations"]["saliency"]
    with pytest.raises(KeyError, match="load_saliency"):
        agent.loss(batch)


@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_each_agent_fits_a_tiny_dataset(algo: str) -> None:
    """Actions are a function of the image: the loss must fall by a clear margin."""
    torch.manual_seed(0)
    agent = _agent(algo, size=32, h=1, dropout_rate=0.0)
    batch = _batch(b=8, size=32, seed=1)
    brightness = batch["observations"]["image"].float().mean(dim=(1, 2, 3, 4))
    batch["actions"] = ((brightness - brightness.mean()) / brightness.std())[:, None, None].expand(
        8, 1, 7).contiguous()
    optimizer = torch.optim.Adam(agent.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss, _ = agent(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    floor = 3.5 * math.log(2 * math.pi) if algo != "gc_ddpm_bc" else 0.0
    assert last - floor < 0.5 * (first - floor), (first, last)


@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_bf16_autocast_on_cpu(algo: str) -> None:
    agent = _agent(algo, saliency=True, size=64)
    batch = _batch(size=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = agent.loss(batch)
        loss.backward()
        agent.eval()
        actions = agent.sample_actions(batch["observations"], batch["goals"])
    assert torch.isfinite(loss) and actions.dtype == torch.float32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_cuda_bf16_step(algo: str) -> None:
    agent = _agent(algo, saliency=True, size=64).cuda()
    batch = {k: ({kk: vv.cuda() for kk, vv in v.items()} if isinstance(v, dict) else v.cuda())
             for k, v in _batch(size=64).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = agent.loss(batch)
    loss.backward()
    agent.eval()
    assert agent.sample_actions(batch["observations"], batch["goals"]).is_cuda
