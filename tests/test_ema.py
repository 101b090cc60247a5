"""EMA: the Polyak rate semantics of JAX, buffers copied, the copy always in eval mode."""

import pytest
import torch
from torch import nn

from bridge_torch.train.ema import EMA


class Net(nn.Module):
    """A parameter, dropout and a normalisation buffer: everything the EMA must handle."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.dropout = nn.Dropout(0.5)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(self.linear(x)))


def test_rate_semantics_match_polyak_update():
    torch.manual_seed(0)
    model = Net()
    ema = EMA(model, rate=0.25)
    start = ema.module.linear.weight.clone()
    with torch.no_grad():
        model.linear.weight.add_(1.0)
    ema.update(model)
    # ema <- rate * params + (1 - rate) * ema
    expected = 0.25 * model.linear.weight + 0.75 * start
    torch.testing.assert_close(ema.module.linear.weight, expected)
    ema.update(model)
    expected = 0.25 * model.linear.weight + 0.75 * expected
    torch.testing.assert_close(ema.module.linear.weight, expected)


def test_rate_one_copies_weights():
    model = Net()
    ema = EMA(model, rate=1.0)
    with torch.no_grad():
        model.linear.bias.fill_(3.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.linear.bias, torch.full((2,), 3.0))


def test_buffers_are_copied():
    model = Net().train()
    ema = EMA(model, rate=0.002)
    model(torch.randn(16, 3) * 5 + 2)  # training forward moves BatchNorm's running stats
    assert not torch.equal(ema.module.norm.running_mean, model.norm.running_mean)
    ema.update(model)
    torch.testing.assert_close(ema.module.norm.running_mean, model.norm.running_mean)
    torch.testing.assert_close(ema.module.norm.running_var, model.norm.running_var)
    assert int(ema.module.norm.num_batches_tracked) == 1


def test_copy_is_eval_mode_frozen_and_independent():
    model = Net().train()
    ema = EMA(model, rate=0.5)
    assert not ema.module.training
    assert all(not m.training for m in ema.module.modules())
    assert all(not p.requires_grad for p in ema.module.parameters())
    ema.update(model)
    assert not ema.module.training  # updates never flip it back
    x = torch.randn(4, 3)
    torch.testing.assert_close(ema.module(x), ema.module(x))  # no dropout noise
    assert ema.module.linear.weight.data_ptr() != model.linear.weight.data_ptr()


def test_state_dict_round_trip():
    model = Net()
    ema = EMA(model, rate=0.1)
    with torch.no_grad():
        model.linear.weight.add_(2.0)
    ema.update(model)
    other = EMA(Net(), rate=0.1)
    other.load_state_dict(ema.state_dict())
    torch.testing.assert_close(other.module.linear.weight, ema.module.linear.weight)


def test_bad_rate_is_rejected():
    with pytest.raises(ValueError, match="rate"):
        EMA(Net(), rate=0.0)
