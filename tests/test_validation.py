"""Validation: batch-size-weighted means, eval mode during the pass, seeded per batch."""

import pytest
import torch
from torch import nn

from bridge_torch.train import validation
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.validation import evaluate


class Probe(nn.Module):
    """Reports each batch's mean action and a draw from the generator it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.modes: list[bool] = []
        self.draws: list[float] = []

    def validation_metrics(self, batch, generator=None):
        self.modes.append(self.training)
        self.draws.append(float(torch.rand((), generator=generator)))
        return {"value": batch["actions"].mean()}


def batches(*sizes_and_values):
    return iter([{"actions": torch.full((size, 1, 2), value)} for size, value in sizes_and_values])


def test_weighted_mean_over_unequal_batches():
    probe = Probe().train()
    result = evaluate(probe, batches((8, 1.0), (8, 2.0), (4, 4.0)), seed=3, info=DistInfo(),
                      amp_dtype=None)
    assert result == {"value": pytest.approx((8 * 1 + 8 * 2 + 4 * 4) / 20)}
    assert probe.modes == [False, False, False]  # evaluated in eval mode ...
    assert probe.training  # ... and handed back in the mode it came in


def test_sampling_noise_is_seeded_per_batch():
    first, second = Probe(), Probe()
    evaluate(first, batches((2, 0.0), (2, 0.0)), seed=5, info=DistInfo(), amp_dtype=None)
    evaluate(second, batches((2, 0.0), (2, 0.0)), seed=5, info=DistInfo(), amp_dtype=None)
    assert first.draws == second.draws and first.draws[0] != first.draws[1]


def test_ranks_share_batches_and_combine_to_the_full_mean(monkeypatch):
    gathered = {}

    def gather_own(obj, info):
        gathered[info.rank] = obj
        return [obj]

    monkeypatch.setattr(validation, "gather_objects", gather_own)
    data = [(8, 1.0), (8, 2.0), (4, 4.0)]
    probes = {rank: Probe() for rank in (0, 1)}
    for rank, probe in probes.items():
        evaluate(probe, batches(*data), seed=0, info=DistInfo(rank, rank, 2), amp_dtype=None)
    assert gathered[0] == ({"value": 8 * 1.0 + 4 * 4.0}, 12)  # batches 0 and 2
    assert gathered[1] == ({"value": 8 * 2.0}, 8)  # batch 1
    single = Probe()
    evaluate(single, batches(*data), seed=0, info=DistInfo(), amp_dtype=None)
    assert probes[0].draws == single.draws[0::2] and probes[1].draws == single.draws[1::2]
    monkeypatch.setattr(validation, "gather_objects", lambda obj, info: [gathered[0], gathered[1]])
    result = evaluate(Probe(), iter([]), seed=0, info=DistInfo(0, 0, 2), amp_dtype=None)
    assert result == {"value": pytest.approx((8 + 16 + 16) / 20)}


def test_no_batches_gives_no_metrics():
    assert evaluate(Probe(), iter([]), seed=0, info=DistInfo(), amp_dtype=None) == {}


def test_pass_leaves_the_global_rng_untouched():
    class GlobalNoise(Probe):
        def validation_metrics(self, batch, generator=None):
            return {"value": torch.randn(()) + batch["actions"].mean()}  # global RNG

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    evaluate(GlobalNoise(), batches((2, 0.0), (2, 1.0)), seed=0, info=DistInfo(), amp_dtype=None)
    torch.testing.assert_close(torch.rand(3), expected)
