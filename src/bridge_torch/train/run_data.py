"""The data of one training run: train/val ``TrainingData``, statistics and the agent's shapes.

Task directories come from ``bridgedata.include``/``exclude`` under ``data_path``; the normalisation
statistics are merged over the train split only (and, on resume, taken from the checkpoint so a
changed dataset cannot silently change the normalisation of a model mid-run). The val split is
optional: task directories without one are skipped, and a run without any validates nothing.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from bridge_torch.agents import AgentShapes
from bridge_torch.data.datasets import open_sub_datasets, training_statistics
from bridge_torch.data.sampler import TrainingData
from bridge_torch.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class RunData:
    train: TrainingData
    val: TrainingData | None  # None when no task directory has a val split
    stats: dict  # {"actions": {...}, "proprio": {...}} of the train split
    agent_shapes: AgentShapes  # the dimensions the agent is built for (saved in checkpoints)


def load_run_data(config: TrainConfig, device: torch.device, stats: dict | None = None) -> RunData:
    """Open the train (and val) stores of the selected task directories on ``device``.

    Args:
        stats: statistics to normalise with (a resumed run's); None = compute from the train split.
    """
    bridgedata = config.bridgedata
    selection = (Path(config.data_path), bridgedata.sub_datasets(), bridgedata.exclude)
    train_stores = open_sub_datasets(*selection, split="train")
    if stats is None:
        stats = training_statistics(train_stores, relabel_actions=config.data.relabel_actions)
    train = TrainingData.from_stores(train_stores, stats, config.data, device)
    # sub-datasets only weight training draws: validation keeps every task that has a val split
    val_stores = [group for group in open_sub_datasets(*selection, split="val") if group]
    val = TrainingData.from_stores(val_stores, stats, config.data, device) if val_stores else None
    if val is None:
        log.warning("no task directory under %s has a val split: validation is skipped",
                    config.data_path)
    height, width = train.image_size
    if height != width:
        raise ValueError(f"the encoders expect square images, the stores hold {height}x{width}")
    shapes = AgentShapes(action_dim=train.action_dim, proprio_dim=train.proprio_dim,
                         obs_horizon=config.data.obs_horizon,
                         act_pred_horizon=config.data.act_pred_horizon, image_size=height)
    return RunData(train, val, stats, shapes)
