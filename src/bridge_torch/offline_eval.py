"""``bridge-torch-eval``: offline validation of a trained run.

Loads the run's config and a checkpoint strictly (missing or unexpected keys are errors); the
checkpoint alone says how to read the data: its statistics normalise it and its shapes (image
size, camera, action/proprio dimensions, observation and action horizons) must fit it. Only the
evaluated split (val by default, ``--split train``) is opened. The train split's statistics, as
recorded in its packed stores' ``meta.json`` and merged as the trainer merges them, must match the
checkpoint's (``--allow-stats-mismatch`` overrides); reading those small files needs no array,
and where the train split has no packed store (an out.npy never packed, a copy without the train
split, TFDS train shards not in the cache) the check is skipped, saying why, rather than packing
or unpickling anything. Then the full deterministic validation pass runs and the metrics are
reported next to the predict-the-training-mean baseline (action 0 in normalised units). The run's
own data path came with the run directory: its out.npy files are unpickled only with
``--allow-pickle``.

    bridge-torch-eval runs/bridgedata_torch/gc_bc_... --json metrics.json --plot actions.png \
        --loss-plot loss_curves.png
"""

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bridge_torch.agents import AgentShapes
from bridge_torch.batch import ACTIONS, GOALS, OBSERVATIONS, action_name
from bridge_torch.cli_errors import CliParser, debug_requested, user_errors
from bridge_torch.data.actions import denormalize, training_statistics
from bridge_torch.data.datasets import SPLIT_DIRS
from bridge_torch.data.sampler import TrainingData, iterate_validation
from bridge_torch.data.split_metadata import NotPacked, StoreMeta
from bridge_torch.data.store_checks import META_FILE
from bridge_torch.deploy.restore import RestoredAgent, restore_agent
from bridge_torch.plots import action_figure, loss_figure, save_png
from bridge_torch.port_compat import translate_eval_argv
from bridge_torch.train.config import TrainConfig
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.metrics_log import read_metrics
from bridge_torch.train.run_data import (
    DataLayout,
    check_given_stats,
    check_layout,
    open_run_split,
    recorded_train_split,
)
from bridge_torch.train.validation import evaluate

log = logging.getLogger(__name__)


def statistics_mismatch(saved: dict, fresh: dict, rtol: float = 1e-4) -> list[str]:
    """Names of the statistics that differ between a checkpoint and the dataset."""
    problems = []
    for group in ("actions", "proprio"):
        for key in ("mean", "std"):
            a, b = np.asarray(saved[group][key]), np.asarray(fresh[group][key])
            if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=1e-7):
                problems.append(f"{group}.{key}")
    return problems


def evaluation_config(config: TrainConfig, shapes: AgentShapes, data_path: str | None, *,
                      allow_pickle: bool, allow_image_mismatch: bool) -> TrainConfig:
    """The checkpoint's config with this command's data path and opt-ins (never the saved ones),
    sampling the horizons the checkpoint's agent was built for.

    The run's own ``data_path`` comes from a possibly downloaded run directory, so its out.npy
    files are unpickled only with ``--allow-pickle``; a ``--data_path`` the user names gets a
    fresh training run's default (pack an out.npy that has no packed store yet).
    """
    load = replace(config.data.load, allow_image_mismatch=allow_image_mismatch,
                   allow_pickle=True if allow_pickle else (None if data_path else False))
    sample = replace(config.data.sample, obs_horizon=shapes.obs_horizon,
                     act_pred_horizon=shapes.act_pred_horizon)
    return replace(config, data=replace(config.data, load=load, sample=sample), resume=None,
                   data_path=str(data_path) if data_path else config.data_path)


def check_train_statistics(restored: RestoredAgent, recorded: list[StoreMeta], skipped: str,
                           relabel_actions: bool, *, allow_stats_mismatch: bool) -> None:
    """The checkpoint's statistics must be those the train split recorded (merged as the trainer
    merges them); without a recorded train split the check is skipped, saying why."""
    if not recorded:
        log.warning("statistics check skipped: %s; evaluating with the statistics of %s",
                    skipped, restored.path)
        return
    mismatch = statistics_mismatch(restored.stats,
                                   training_statistics([recorded], relabel_actions))
    if mismatch and not allow_stats_mismatch:
        raise ValueError(f"{restored.path}: the dataset's statistics differ from the checkpoint's "
                         f"({', '.join(mismatch)}) as the train split's {len(recorded)} packed "
                         f"store(s) record them ({recorded[0].path / META_FILE}, ...); is this "
                         "the data the run was trained on? Pass --allow-stats-mismatch to "
                         "evaluate with the checkpoint's statistics")
    if mismatch:
        log.warning("the train split's statistics differ from %s's (%s): evaluating with the "
                    "checkpoint's (--allow-stats-mismatch)", restored.path, ", ".join(mismatch))


def evaluation_data(restored: RestoredAgent, config: TrainConfig, split: str,
                    device: torch.device, *, allow_stats_mismatch: bool) -> TrainingData:
    """``split`` alone, checked against the checkpoint and normalised with its statistics."""
    shapes = restored.agent.shapes
    layout = DataLayout(shapes.image_size, config.data.load.camera, shapes.action_dim,
                        shapes.proprio_dim, str(restored.path))
    stores = open_run_split(config, split, layout, alone=True)
    if not stores:
        raise ValueError(f"{config.data_path}: no {split} split to evaluate on")
    try:
        recorded, skipped = recorded_train_split(config, layout, evaluated=split), ""
    except NotPacked as why:
        recorded, skipped = [], str(why)
    check_layout(layout, [*recorded, *(s for group in stores for s in group)],
                 config.data.load.camera,
                 allow_image_mismatch=config.data.load.allow_image_mismatch,
                 escape="--allow-image-mismatch")
    check_train_statistics(restored, recorded, skipped, config.data.sample.relabel_actions,
                           allow_stats_mismatch=allow_stats_mismatch)
    check_given_stats(restored.stats, stores[0][0], str(restored.path),
                      config.data.sample.normalization_type)
    return TrainingData.from_stores(stores, restored.stats, config.data.load, config.data.sample,
                                   device)


def evaluate_run(run_dir: Path, *, checkpoint: Any = None, data_path: str | None = None,
                 split: str = "val", device: str = "cpu", batch_size: int | None = None,
                 max_batches: int | None = None, allow_stats_mismatch: bool = False,
                 allow_image_mismatch: bool = False, allow_pickle: bool = False,
                 use_ema: bool = True, plot: Path | None = None,
                 loss_plot: Path | None = None) -> dict[str, Any]:
    """Validation metrics of a run's checkpoint on one split (see module docstring)."""
    if split not in SPLIT_DIRS:
        raise ValueError(f"split must be one of {list(SPLIT_DIRS)}, got {split!r}")
    restored = restore_agent(run_dir, checkpoint, device=device, use_ema=use_ema)
    config = evaluation_config(restored.config, restored.agent.shapes, data_path,
                               allow_pickle=allow_pickle, allow_image_mismatch=allow_image_mismatch)
    data = evaluation_data(restored, config, split, torch.device(device),
                           allow_stats_mismatch=allow_stats_mismatch)
    log.info("evaluating %s (step %d) on the %s split of %s: %d transitions", restored.path.name,
             restored.step, split, config.data_path, data.num_transitions)
    batch = batch_size or config.val_batch_size

    def batches() -> Any:
        return iterate_validation(data, config.data.sample, batch, seed=config.seed,
                                  max_batches=max_batches)

    metrics = evaluate(restored.agent, batches(), seed=config.seed, info=DistInfo(),
                       amp_dtype=None)
    squares = [b[ACTIONS].float().pow(2).flatten(1).sum(1) for b in batches()]
    metrics["baseline_mse"] = torch.cat(squares).mean().item()
    if plot is not None:
        title = f"{Path(run_dir).name} · {restored.path.name} (step {restored.step})"
        plot_actions(restored.agent, data, restored.stats, config, plot, title=title,
                     split=split)
    if loss_plot is not None:
        save_png(loss_figure({config.algo: read_metrics(run_dir)}, title=Path(run_dir).name),
                 loss_plot)
    return {"run_dir": str(run_dir), "checkpoint": str(restored.path), "step": restored.step,
            "algo": config.algo, "split": split, "transitions": data.num_transitions, **metrics}


def plot_actions(agent: torch.nn.Module, data: TrainingData, stats: dict, config: Any,
                 path: Path, *, title: str, split: str = "val", transitions: int = 60) -> None:
    """Predicted vs true (first chunk step, robot units) over the first transitions of ``data``."""
    true, predicted = [], []
    generator = torch.Generator(device=next(agent.parameters()).device).manual_seed(config.seed)
    for batch in iterate_validation(data, config.data.sample, transitions, seed=config.seed,
                                    max_batches=1):
        with torch.no_grad():
            out = agent.sample_actions(batch[OBSERVATIONS], batch.get(GOALS), argmax=True,
                                       generator=generator)
        true = denormalize(batch[ACTIONS][:, 0].float().cpu().numpy(), stats["actions"],
                           config.data.sample.normalization_type)
        predicted = denormalize(out[:, 0].float().cpu().numpy(), stats["actions"],
                                config.data.sample.normalization_type)
    boundaries = np.cumsum(data.traj_length.cpu().numpy())
    names = [action_name(d, true.shape[1]) for d in range(true.shape[1])]
    figure = action_figure(true, predicted, names=names, boundaries=[
        float(b) - 0.5 for b in boundaries if b < len(true)], title=(
        f"{title}\ntrue vs predicted first action of each chunk (robot units) and its MSE, "
        f"first {len(true)} {split} transitions"))
    save_png(figure, path)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the main metrics, one row per evaluated run."""
    header = f"{'algo':<12} {'step':>7} {'val mse':>10} {'baseline':>10} {'ratio':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = r["mse"] / r["baseline_mse"] if r["baseline_mse"] else float("nan")
        lines.append(f"{r['algo']:<12} {r['step']:>7} {r['mse']:>10.4f} "
                     f"{r['baseline_mse']:>10.4f} {ratio:>7.3f}")
    return "\n".join(lines)


def build_parser() -> CliParser:
    """The options of ``bridge-torch-eval``."""
    parser = CliParser(prog="bridge-torch-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", default=None, help="step or path; default: latest")
    parser.add_argument("--data_path", default=None,
                        help="evaluate on another copy of the data (default: the run's)")
    parser.add_argument("--split", choices=SPLIT_DIRS, default="val",
                        help="the split to evaluate; only its stores are opened (default: val)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--max_batches", type=int, default=None)
    parser.add_argument("--no-ema", dest="use_ema", action="store_false",
                        help="evaluate the trained weights instead of the EMA")
    parser.add_argument("--allow-stats-mismatch", action="store_true")
    parser.add_argument("--allow-image-mismatch", action="store_true",
                        help="evaluate on data whose image size or camera differ from the "
                        "checkpoint's")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="unpickle legacy out.npy files (pickle runs code; without "
                        "--data_path they come from the run directory): only for data you trust")
    parser.add_argument("--json", type=Path, default=None, help="write the metrics here")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of predicted vs true actions")
    parser.add_argument("--loss-plot", type=Path, default=None,
                        help="PNG of the run's loss curves, validation points and LR")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``bridge-torch-eval``: print the metrics table; say where every written file went."""
    parser = build_parser()
    args = parser.parse_args(translate_eval_argv(sys.argv[1:] if argv is None else argv))
    if not args.run_dir.is_dir():
        parser.error(f"run directory {args.run_dir} does not exist")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # its "training data: N stores" line would misname the evaluated split: said below
    logging.getLogger("bridge_torch.data.training_data").setLevel(logging.WARNING)
    checkpoint = int(args.checkpoint) if args.checkpoint and args.checkpoint.isdigit() \
        else args.checkpoint
    with user_errors(parser.prog, debug=debug_requested(args)):
        result = evaluate_run(args.run_dir, checkpoint=checkpoint, data_path=args.data_path,
                              split=args.split, device=args.device, batch_size=args.batch_size,
                              max_batches=args.max_batches,
                              allow_stats_mismatch=args.allow_stats_mismatch,
                              allow_image_mismatch=args.allow_image_mismatch,
                              allow_pickle=args.allow_pickle,
                              use_ema=args.use_ema, plot=args.plot, loss_plot=args.loss_plot)
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=2))
    print(format_table([result]))
    written = {"metrics": args.json, "action plot": args.plot, "loss plot": args.loss_plot}
    for what, path in written.items():
        if path is not None:
            print(f"{what}: {path}")


if __name__ == "__main__":
    main()
