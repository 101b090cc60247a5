"""The data of one training run: train/val ``TrainingData``, statistics and the agent's shapes.

Task directories come from ``bridgedata.include``/``exclude`` under ``data_path``, or ``data_path``
is a TFDS directory whose shards are packed into the cache on first use (``data.rlds_stream``,
at ``rlds.im_size``, or the trained model's size on resume and evaluation, by
``rlds.num_workers`` worker processes); the normalisation
statistics are merged over the train split only (and, on resume, taken from the checkpoint so a
changed dataset cannot silently change the normalisation of a model mid-run). The val split is
optional: task directories without one are skipped, and a run without any validates nothing.

Data for a trained model (resume, evaluation) must have the layout the checkpoint was trained on:
:func:`check_layout` refuses stores whose image size, camera, action or proprio dimension differ,
so a 64² model is never silently evaluated on, or retrained at, 32². On resume, ``data_path`` comes
from the run directory, so out.npy files are not unpickled unless the command opts in.
:func:`open_run_split` opens one split as training does; evaluation uses it to open only the
split it evaluates, and :func:`recorded_train_split` to know the train split by its metadata.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bridge_torch.agents import AgentShapes
from bridge_torch.data.actions import NORMALIZATION_FIELDS, training_statistics
from bridge_torch.data.config_migration import migrate_config
from bridge_torch.data.datasets import open_task_groups, resolve_task_dirs
from bridge_torch.data.rlds_stream import cached_split_metadata, is_stream_path, open_tfds_split
from bridge_torch.data.sampler import TrainingData
from bridge_torch.data.split_metadata import StoreMeta, split_metadata
from bridge_torch.data.store import PackedStore
from bridge_torch.data.store_checks import check_statistics
from bridge_torch.train import runs
from bridge_torch.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class RunData:
    train: TrainingData
    val: TrainingData | None  # None when no task directory has a val split
    stats: dict  # {"actions": {...}, "proprio": {...}} of the train split
    agent_shapes: AgentShapes  # the dimensions the agent is built for (saved in checkpoints)


@dataclass(frozen=True)
class DataLayout:
    """What a trained model expects of its data (from a checkpoint)."""

    image_size: int  # square frames of this side
    camera: str  # the stored camera it observes
    action_dim: int
    proprio_dim: int
    source: str  # the checkpoint, for messages

    @classmethod
    def of_checkpoint(cls, state: dict, source: str) -> "DataLayout":
        shapes = state["agent_shapes"]
        saved = migrate_config(state["config"], source=source)  # also a checkpoint's flat keys
        return cls(int(shapes["image_size"]), str(saved["data"]["load"]["camera"]),
                   int(shapes["action_dim"]), int(shapes["proprio_dim"]), source)


def check_layout(expected: DataLayout, stores: Sequence[PackedStore | StoreMeta], camera: str, *,
                 allow_image_mismatch: bool, escape: str) -> None:
    """Refuse stores that do not fit a trained model (used by resume and evaluation).

    Opened stores and stores known by their ``meta.json`` alone (``StoreMeta``: a split that
    is not opened) are checked alike. Image size and camera may differ when
    ``allow_image_mismatch`` (logged; ``escape`` is the option that says so, named in the error);
    action and proprio dimensions never may: the network's output and the statistics have the
    checkpoint's.
    """
    for store in stores:
        found = {"image size": list(store.image_size), "camera": camera,
                 "action_dim": store.action_dim, "proprio_dim": store.proprio_dim}
        wanted = {"image size": [expected.image_size] * 2, "camera": expected.camera,
                  "action_dim": expected.action_dim, "proprio_dim": expected.proprio_dim}
        differ = [f"{key} {found[key]} (trained on {wanted[key]})" for key in wanted
                  if found[key] != wanted[key]]
        if not differ:
            continue
        what = f"{store.path} does not match {expected.source}: {', '.join(differ)}"
        if any(key in d for d in differ for key in ("action_dim", "proprio_dim")):
            raise ValueError(f"{what}; the network and its statistics have the checkpoint's "
                             "dimensions, so this data cannot be used with it")
        if not allow_image_mismatch:
            raise ValueError(f"{what}; is this the data the model was trained on? Pass {escape} "
                             "to use it anyway")
        log.warning("%s; using it anyway (%s)", what, escape)


def _resume_layout(config: TrainConfig) -> DataLayout | None:
    """The layout of the checkpoint a resumed run continues from (None for a fresh run)."""
    if config.resume is None:
        return None
    path, state = runs.load_latest(Path(config.resume))
    return DataLayout.of_checkpoint(state, str(path))


def check_given_stats(stats: dict, store: PackedStore, source: str, kind: str) -> None:
    """Statistics from a checkpoint are input too: the fields normalisation ``kind`` reads are
    well formed, finite and of the data's dimensions."""
    fields = NORMALIZATION_FIELDS[kind]
    for key, dim in (("actions", store.actions.shape[1]), ("proprio", store.proprio.shape[1])):
        entry = stats.get(key) if isinstance(stats, dict) else None
        if fields:
            check_statistics(entry, dim, f"{source} stats.{key}", fields)


def _pickle_setting(config: TrainConfig) -> bool | None:
    """``allow_pickle`` for the run's data: a resumed run's data path comes from its run
    directory, so it unpickles only when the command opts in."""
    if config.resume is not None and config.data.load.allow_pickle is None:
        return False
    return config.data.load.allow_pickle


def _selection(config: TrainConfig) -> tuple[Path, list[list[str]], list[str]]:
    bridgedata = config.bridgedata
    return Path(config.data_path), bridgedata.sub_datasets(), bridgedata.exclude


def _stream_size(config: TrainConfig, expected: DataLayout | None) -> int:
    """The image size a TFDS directory is packed at: the trained model's, else rlds.im_size."""
    return expected.image_size if expected is not None else config.rlds.im_size


def open_run_split(config: TrainConfig, split: str, expected: DataLayout | None, *,
                   alone: bool = False) -> list[list[PackedStore]]:
    """``split`` of the selected task directories, or of the TFDS directory ``data_path`` names;
    a sub-dataset without it is dropped (sub-datasets only weight training draws, and each one
    holds a train split).

    ``alone``: the split is read without the train split (evaluation), so a task directory that
    holds only this split counts too (``datasets.resolve_task_dirs``).
    """
    selection = _selection(config)
    if is_stream_path(config.data_path):
        stores = open_tfds_split(*selection, split, camera=config.data.load.camera,
                                 im_size=_stream_size(config, expected),
                                 num_workers=config.rlds.workers())
    else:
        groups = resolve_task_dirs(*selection, split if alone else "train")
        stores = open_task_groups(groups, split, selection[0],
                                  allow_pickle=_pickle_setting(config))
    return [group for group in stores if group]


def recorded_train_split(config: TrainConfig, expected: DataLayout | None, *,
                         evaluated: str) -> list[StoreMeta]:
    """The train split's stores by their ``meta.json`` alone, in the task directories chosen for
    evaluating ``evaluated`` (or a TFDS directory's cached train shards): nothing is opened,
    packed or unpickled.

    Raises:
        NotPacked: part of the train split has no packed store to read (says which and why).
    """
    selection = _selection(config)
    if is_stream_path(config.data_path):
        return cached_split_metadata(*selection, "train", camera=config.data.load.camera,
                                     im_size=_stream_size(config, expected))
    groups = resolve_task_dirs(*selection, evaluated)
    return [store for group in split_metadata(groups, "train") for store in group]


def load_run_data(config: TrainConfig, device: torch.device, stats: dict | None = None,
                  expected: DataLayout | None = None) -> RunData:
    """Open the train (and val) stores of the selected task directories on ``device``.

    Args:
        stats: statistics to normalise with (a resumed run's); None = compute from the train split.
        expected: the layout a trained model needs (evaluation; the training loop passes its
            resumed checkpoint's); on resume without it, read from the run's newest loadable
            checkpoint.
    """
    expected = expected or _resume_layout(config)
    escape = "--allow-image-mismatch" if config.resume is None else \
        "data.load.allow_image_mismatch=true"
    train_stores = open_run_split(config, "train", expected)
    val_stores = open_run_split(config, "val", expected)
    if expected is not None:
        check_layout(expected, [s for group in train_stores + val_stores for s in group],
                     config.data.load.camera,
                     allow_image_mismatch=config.data.load.allow_image_mismatch, escape=escape)
    if stats is None:
        stats = training_statistics(train_stores,
                                    relabel_actions=config.data.sample.relabel_actions)
    else:
        check_given_stats(stats, train_stores[0][0], expected.source if expected else "given",
                          config.data.sample.normalization_type)
    train = TrainingData.from_stores(train_stores, stats, config.data.load, config.data.sample,
                                     device)
    # sub-datasets only weight training draws: validation keeps every task that has a val split
    val = TrainingData.from_stores(val_stores, stats, config.data.load, config.data.sample,
                                   device) if val_stores else None
    if val is None:
        log.warning("no task directory under %s has a val split: validation is skipped",
                    config.data_path)
    height, width = train.image_size
    if height != width:
        raise ValueError(f"the encoders expect square images, the stores hold {height}x{width}")
    shapes = AgentShapes(action_dim=train.action_dim, proprio_dim=train.proprio_dim,
                         obs_horizon=config.data.sample.obs_horizon,
                         act_pred_horizon=config.data.sample.act_pred_horizon, image_size=height)
    return RunData(train, val, stats, shapes)
