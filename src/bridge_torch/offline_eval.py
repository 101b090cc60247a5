"""``bridge-torch-eval``: offline validation of a trained run.

Loads the run's config and a checkpoint strictly (missing or unexpected keys are errors), checks
that the data has the checkpoint's image size, camera and dimensions and that the dataset's
statistics (recomputed over the train split as the trainer does) match the checkpoint's, runs the
full deterministic validation pass and reports the metrics next to the predict-the-training-mean
baseline (action 0 in normalised units). The run's own data path came with the run directory:
its out.npy files are unpickled only with ``--allow-pickle``.

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

from bridge_torch.batch import ACTIONS, GOALS, OBSERVATIONS, action_name
from bridge_torch.cli_errors import CliParser, debug_requested, user_errors
from bridge_torch.data.actions import denormalize
from bridge_torch.data.sampler import iterate_validation
from bridge_torch.deploy.restore import restore_agent
from bridge_torch.plots import action_figure, loss_figure, save_png
from bridge_torch.port_compat import translate_eval_argv
from bridge_torch.train.config import TrainConfig
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.metrics_log import read_metrics
from bridge_torch.train.run_data import DataLayout, RunData, load_run_data
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


def evaluation_config(config: TrainConfig, data_path: str | None, *, allow_pickle: bool,
                      allow_image_mismatch: bool) -> TrainConfig:
    """The checkpoint's config with this command's data path and opt-ins (never the saved ones).

    The run's own ``data_path`` comes from a possibly downloaded run directory, so its out.npy
    files are unpickled only with ``--allow-pickle``; a ``--data_path`` the user names gets a
    fresh training run's default (pack an out.npy that has no packed store yet).
    """
    load = replace(config.data.load, allow_image_mismatch=allow_image_mismatch,
                   allow_pickle=True if allow_pickle else (None if data_path else False))
    return replace(config, data=replace(config.data, load=load), resume=None,
                   data_path=str(data_path) if data_path else config.data_path)


def evaluate_run(run_dir: Path, *, checkpoint: Any = None, data_path: str | None = None,
                 device: str = "cpu", batch_size: int | None = None,
                 max_batches: int | None = None, allow_stats_mismatch: bool = False,
                 allow_image_mismatch: bool = False, allow_pickle: bool = False,
                 use_ema: bool = True, plot: Path | None = None,
                 loss_plot: Path | None = None) -> dict[str, Any]:
    """Validation metrics of a run's checkpoint on its val split (see module docstring)."""
    restored = restore_agent(run_dir, checkpoint, device=device, use_ema=use_ema)
    config = evaluation_config(restored.config, data_path, allow_pickle=allow_pickle,
                               allow_image_mismatch=allow_image_mismatch)
    layout = DataLayout(restored.agent.shapes.image_size, config.data.load.camera,
                        restored.agent.shapes.action_dim, restored.agent.shapes.proprio_dim,
                        str(restored.path))
    data = load_run_data(config, torch.device(device), expected=layout)
    mismatch = statistics_mismatch(restored.stats, data.stats)
    if mismatch and not allow_stats_mismatch:
        raise ValueError(f"{restored.path}: the dataset's statistics differ from the checkpoint's "
                         f"({', '.join(mismatch)}); is this the data the run was trained on? "
                         "Pass --allow-stats-mismatch to evaluate with the checkpoint's statistics")
    if mismatch:
        data = load_run_data(config, torch.device(device), stats=restored.stats, expected=layout)
    if data.val is None:
        raise ValueError(f"{config.data_path}: no val split to evaluate on")
    log.info("evaluating %s (step %d) on the val split of %s: %d transitions", restored.path.name,
             restored.step, config.data_path, data.val.num_transitions)
    batch = batch_size or config.val_batch_size

    def batches() -> Any:
        return iterate_validation(data.val, config.data.sample, batch, seed=config.seed,
                                  max_batches=max_batches)

    metrics = evaluate(restored.agent, batches(), seed=config.seed, info=DistInfo(),
                       amp_dtype=None)
    squares = [b[ACTIONS].float().pow(2).flatten(1).sum(1) for b in batches()]
    metrics["baseline_mse"] = torch.cat(squares).mean().item()
    if plot is not None:
        title = f"{Path(run_dir).name} · {restored.path.name} (step {restored.step})"
        plot_actions(restored.agent, data, config, plot, title=title)
    if loss_plot is not None:
        save_png(loss_figure({config.algo: read_metrics(run_dir)}, title=Path(run_dir).name),
                 loss_plot)
    return {"run_dir": str(run_dir), "checkpoint": str(restored.path), "step": restored.step,
            "algo": config.algo, "transitions": data.val.num_transitions, **metrics}


def plot_actions(agent: torch.nn.Module, data: RunData, config: Any, path: Path, *, title: str,
                 transitions: int = 60) -> None:
    """Predicted vs true (first chunk step, robot units) over the first val transitions."""
    true, predicted = [], []
    generator = torch.Generator(device=next(agent.parameters()).device).manual_seed(config.seed)
    for batch in iterate_validation(data.val, config.data.sample, transitions, seed=config.seed,
                                    max_batches=1):
        with torch.no_grad():
            out = agent.sample_actions(batch[OBSERVATIONS], batch.get(GOALS), argmax=True,
                                       generator=generator)
        true = denormalize(batch[ACTIONS][:, 0].float().cpu().numpy(), data.stats["actions"],
                           config.data.sample.normalization_type)
        predicted = denormalize(out[:, 0].float().cpu().numpy(), data.stats["actions"],
                                config.data.sample.normalization_type)
    boundaries = np.cumsum(data.val.traj_length.cpu().numpy())
    names = [action_name(d, true.shape[1]) for d in range(true.shape[1])]
    figure = action_figure(true, predicted, names=names, boundaries=[
        float(b) - 0.5 for b in boundaries if b < len(true)], title=(
        f"{title}\ntrue vs predicted first action of each chunk (robot units) and its MSE, "
        f"first {len(true)} val transitions"))
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
    # its "training data: N stores" line is logged for the train AND the val split: said below
    logging.getLogger("bridge_torch.data.training_data").setLevel(logging.WARNING)
    checkpoint = int(args.checkpoint) if args.checkpoint and args.checkpoint.isdigit() \
        else args.checkpoint
    with user_errors(parser.prog, debug=debug_requested(args)):
        result = evaluate_run(args.run_dir, checkpoint=checkpoint, data_path=args.data_path,
                              device=args.device, batch_size=args.batch_size,
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
