"""The two extension seams, exercised from this file alone.

* A new agent: a config dataclass + an ``Agent`` subclass + a registry entry + a preset (here in
  Hydra's ConfigStore instead of a YAML file); it trains, saves, resumes exactly and serves
  actions through ``Policy`` with no other file touched.
* A new data source: trajectories from a Python generator through the shared split writer; the
  trainer's loader opens them like any converted dataset.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from hydra.core.config_store import ConfigStore
from torch import nn

from bridge_torch.agents import AGENTS, AgentShapes, AgentSpec
from bridge_torch.agents.base import Agent, Batch, Metrics
from bridge_torch.agents.encoding import EncodingConfig
from bridge_torch.batch import ACTIONS, IMAGE, OBSERVATIONS
from bridge_torch.data.sources.split_writer import write_splits
from bridge_torch.data.store import Trajectory, open_store
from bridge_torch.deploy.policy import Policy
from bridge_torch.models.resnet import EncoderConfig
from bridge_torch.models.saliency import SaliencyConfig
from bridge_torch.train.config import compose_config
from bridge_torch.train.loop import train
from bridge_torch.train.metrics_log import read_metrics

SMALL_RUN = ["batch_size=8", "val_batch_size=8", "device=cpu", "log_interval=1",
             "eval_interval=2", "save_interval=2", "scheduler.warmup_steps=1",
             "scheduler.decay_steps=10", "encoder.name=resnetv1-mini-bridge",
             "encoder.num_filters=8"]


# ---- a new agent: config + class (+ registry entry and preset in the fixture) ----------------
@dataclass
class MeanColourConfig(EncodingConfig):
    """The toy agent's ``model`` section."""

    width: int = 16  # hidden units


class MeanColourAgent(Agent):
    """Predicts the action from the mean colour of the current frame: an MLP of 3 numbers."""

    def __init__(self, model: MeanColourConfig, encoder: EncoderConfig,
                 saliency: SaliencyConfig, shapes: AgentShapes) -> None:
        super().__init__(model, saliency, shapes)
        self.net = nn.Sequential(nn.Linear(3, model.width), nn.Tanh(),
                                 nn.Linear(model.width, shapes.act_pred_horizon *
                                           shapes.action_dim))

    def _predict(self, observations: dict) -> torch.Tensor:
        frame = observations[IMAGE][:, -1].float() / 255.0  # (B, H, W, 3)
        b = frame.shape[0]
        return self.net(frame.mean(dim=(1, 2))).reshape(b, self.shapes.act_pred_horizon, -1)

    def loss(self, batch: Batch, generator: Optional[torch.Generator] = None
             ) -> tuple[torch.Tensor, Metrics]:
        error = (self._predict(batch[OBSERVATIONS]) - batch[ACTIONS]).pow(2).sum(-1).mean()
        return error, {"mse_loss": error.detach(), "total_loss": error.detach()}

    def sample_actions(self, observations: dict, goals: Optional[dict] = None, *,
                       argmax: bool = False, generator: Optional[torch.Generator] = None
                       ) -> torch.Tensor:
        self._require_eval()
        with torch.no_grad():
            return self._predict(observations)


@pytest.fixture
def mean_colour_agent(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the toy agent (one registry line) and its preset (``algo=mean_colour``)."""
    monkeypatch.setitem(AGENTS, "mean_colour", AgentSpec(MeanColourAgent, MeanColourConfig))
    ConfigStore.instance().store(group="algo", name="mean_colour", package="_global_",
                                 node={"algo": "mean_colour", "model": {"width": 16}})
    return "mean_colour"


def test_a_new_agent_trains_saves_resumes_and_acts(mean_colour_agent: str,
                                                   converted_tree: Path, tmp_path: Path) -> None:
    base = [f"algo={mean_colour_agent}", f"data_path={converted_tree}", *SMALL_RUN]
    run_dir = train(compose_config([*base, f"save_dir={tmp_path / 'a'}", "num_steps=4"]))
    assert sorted(p.name for p in run_dir.glob("ckpt_*.pt")) == ["ckpt_2.pt", "ckpt_4.pt"]
    (run_dir / "ckpt_4.pt").unlink()  # continue from step 2 ...
    resumed = train(compose_config([f"resume={run_dir}", "num_steps=4"]))
    straight = train(compose_config([*base, f"save_dir={tmp_path / 'b'}", "num_steps=4"]))
    losses = [[(e["step"], e["training/loss"]) for e in read_metrics(d) if "training/loss" in e]
              for d in (resumed, straight)]
    assert losses[0] == losses[1] and len(losses[0]) == 4  # ... exactly as without the break

    policy = Policy.from_run(run_dir, device="cpu")
    frame = np.full((48, 64, 3), 128, np.uint8)
    action = policy.act(frame)  # not goal-conditioned: no goal needed (declared inputs)
    assert action.shape == (7,) and np.isfinite(action).all()
    with pytest.raises(ValueError, match=r"model\.depth"):  # its config validates `model`
        compose_config([*base, "model.depth=3"])


# ---- a new data source: trajectories from a generator --------------------------------------
def moving_dot(count: int, seed: int, size: int = 32) -> Iterator[Trajectory]:
    """Trajectories of a dot moving right; the action is the dot's displacement."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        steps = int(rng.integers(6, 10))
        x = np.clip(4 + np.arange(steps + 1) * 2 + rng.integers(0, 4), 0, size - 2)
        frames = np.zeros((steps + 1, size, size, 3), np.uint8)
        for t, column in enumerate(x):
            frames[t, size // 2 - 1:size // 2 + 1, column:column + 2] = (255, 64, 0)
        proprio = np.zeros((steps + 1, 7), np.float32)
        proprio[:, 0] = x / size
        actions = np.zeros((steps, 7), np.float32)
        actions[:, 0] = np.diff(x) / size
        actions[:, 6] = 1.0
        yield Trajectory(frames={"images0": frames}, proprio=proprio, actions=actions,
                         language=["move the dot right"], source=f"moving_dot {seed}/{index}")


def test_a_new_source_trains_through_the_shared_writer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    written = write_splits(data / "dots", {"train": moving_dot(12, seed=0),
                                           "val": moving_dot(3, seed=1)},
                           source={"kind": "moving dot generator"})
    assert set(written) == {"train", "val"}
    train_store = open_store(written["train"])
    assert train_store.num_trajectories == 12 and train_store.meta["source"]["split"] == "train"
    first = next(moving_dot(1, seed=0))
    np.testing.assert_array_equal(train_store.trajectory(0).frames["images0"],
                                  first.frames["images0"])

    run_dir = train(compose_config(["algo=bc", f"data_path={data}", f"save_dir={tmp_path}",
                                    "num_steps=2", "model.hidden_dims=[16]", *SMALL_RUN]))
    events = read_metrics(run_dir)
    assert [e["step"] for e in events if "training/loss" in e] == [1, 2]
    validation = [e for e in events if "validation/mse" in e]
    assert validation and np.isfinite(validation[-1]["validation/mse"])
