"""The LR schedule is optax's warmup_cosine_decay_schedule; the optimizer follows the config."""

import itertools
import math

import pytest
import torch

from bridge_torch.train.config import OptimizerConfig, SchedulerConfig
from bridge_torch.train.optim import build_optimizer, build_scheduler, lr_factor


def schedule(kind: str, warmup: int, decay: int, steps: int, lr: float = 1.0) -> list[float]:
    """The LR each of ``steps`` updates uses, read from a real LambdaLR stepped per update."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], OptimizerConfig(lr=lr), torch.device("cpu"))
    scheduler = build_scheduler(
        optimizer, SchedulerConfig(type=kind, warmup_steps=warmup, decay_steps=decay)
    )
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_starts_at_zero_and_peaks_at_warmup_steps():
    lrs = schedule("cosine", warmup=10, decay=50, steps=60, lr=3e-4)
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(3e-4 * 5 / 10)
    assert lrs[10] == pytest.approx(3e-4)
    assert max(lrs) == pytest.approx(3e-4)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))  # strictly rising warmup


def test_cosine_reaches_zero_at_decay_steps_including_warmup():
    lrs = schedule("cosine", warmup=10, decay=50, steps=60)
    # halfway through the cosine part (update 30 of 10..50) the factor is exactly 0.5
    assert lrs[30] == pytest.approx(0.5)
    assert lrs[49] == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert lrs[50] == pytest.approx(0.0, abs=1e-12)
    assert all(lr == pytest.approx(0.0, abs=1e-12) for lr in lrs[50:])
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:51]))  # monotone decay


def test_constant_holds_the_peak_after_warmup():
    lrs = schedule("constant", warmup=4, decay=0, steps=20, lr=2.0)
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert lrs[4:] == pytest.approx([2.0] * 16)


def test_no_warmup_starts_at_peak():
    assert lr_factor(0, kind="cosine", warmup_steps=0, decay_steps=100) == 1.0
    assert lr_factor(100, kind="cosine", warmup_steps=0, decay_steps=100) == 0.0


def test_scheduler_state_round_trips_with_weights_only(tmp_path):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([param], OptimizerConfig(), torch.device("cpu"))
    scheduler = build_scheduler(optimizer, SchedulerConfig(warmup_steps=5, decay_steps=20))
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    torch.save(scheduler.state_dict(), tmp_path / "s.pt")
    fresh_optimizer = build_optimizer([param], OptimizerConfig(), torch.device("cpu"))
    fresh = build_scheduler(fresh_optimizer, SchedulerConfig(warmup_steps=5, decay_steps=20))
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert fresh.last_epoch == 7
    assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())


def test_optimizer_choice_and_hyperparameters():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = build_optimizer(params, OptimizerConfig(), torch.device("cpu"))
    assert type(adam) is torch.optim.Adam
    assert adam.defaults["betas"] == (0.9, 0.999)
    assert adam.defaults["eps"] == 1e-8
    assert adam.defaults["weight_decay"] == 0.0
    adamw = build_optimizer(
        params, OptimizerConfig(name="adamw", weight_decay=0.01, betas=[0.8, 0.9]),
        torch.device("cpu"),
    )
    assert type(adamw) is torch.optim.AdamW
    assert adamw.defaults["weight_decay"] == 0.01
    assert adamw.defaults["betas"] == (0.8, 0.9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"type": "linear"}, "scheduler.type"),
        ({"warmup_steps": 100, "decay_steps": 50}, "includes the warmup"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_scheduler_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SchedulerConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "sgd"}, "optimizer.name"),
        ({"betas": [0.9]}, "betas"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_optimizer_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**kwargs)
