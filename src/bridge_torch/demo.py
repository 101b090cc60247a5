"""``bridge-torch-demo``: the whole flow on synthetic data, on CPU, in a few minutes.

generate a raw BridgeData tree -> bridge-torch-convert -> bridge-torch-train BC, GC-BC and
GC-DDPM-BC (real CLI subprocesses, small encoder) -> bridge-torch-eval each -> a table of val
action MSE against the predict-the-mean baseline, ``loss_curves.png`` (all runs),
``actions_<algo>.png`` (each run's predicted vs true actions) and ``summary.json`` in
``--output_path``.
Re-running reuses the generated and converted data and trains fresh runs. Exits non-zero if a
policy does not beat the baseline.

    bridge-torch-demo --output_path demo_output
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bridge_torch.agents import AGENTS
from bridge_torch.cli_errors import CliParser, debug_requested, fail, user_errors
from bridge_torch.cpu_threads import ENV_VAR as THREADS_ENV
from bridge_torch.cpu_threads import configure_cpu_threads
from bridge_torch.data.sources.convert import (
    ALREADY_DONE,
    DONE_MARKER,
    CollectionReport,
    ConvertOptions,
    convert,
    format_summary,
)
from bridge_torch.data.sources.synthetic import generate_raw_dataset
from bridge_torch.offline_eval import evaluate_run, format_table
from bridge_torch.plots import loss_figure, save_png
from bridge_torch.train.metrics_log import read_metrics

ALGOS = tuple(AGENTS)  # every registered agent
# Updates per algorithm (400 unless listed): the diffusion policy's sampled actions need more
# training than a Gaussian's mean to beat the baseline (its val MSE includes its sampling spread).
DEFAULT_STEPS = {algo: {"gc_ddpm_bc": 1000}.get(algo, 400) for algo in ALGOS}


def _stage(message: str) -> None:
    print(f"\n== {message}", flush=True)


def prepare_data(out: Path, trajectories: int, seed: int, im_size: int = 64) -> Path:
    """Generate and convert the synthetic dataset once; later runs reuse it (at the ``im_size``
    it was first converted at)."""
    raw, data = out / "raw", out / "data"
    if not (raw / ".complete").is_file():
        _stage(f"generating synthetic raw BridgeData in {raw}")
        shutil.rmtree(raw, ignore_errors=True)  # an interrupted generation starts over
        generate_raw_dataset(raw, seed=seed, num_tasks=2, dates_per_task=2,
                             trajs_per_date=trajectories, image_hw=(240, 320), progress=True)
        (raw / ".complete").touch()
    _stage(f"converting to packed stores in {data}")
    options = ConvertOptions(raw, data, depth=5, train_proportion=0.8, im_size=im_size,
                             seed=seed, format="packed")
    reports = convert(options, num_workers=2)
    print(already_converted(reports) or format_summary(reports))
    return data


def already_converted(reports: list[CollectionReport]) -> str | None:
    """``already converted: N trajectories ...`` when a re-run converted nothing new, else None
    (the converter's summary would count 0 trajectories written)."""
    if not reports or any(r.status != ALREADY_DONE for r in reports):
        return None
    counts = [json.loads((Path(r.output_dir) / DONE_MARKER).read_text()) for r in reports]
    train, val = (sum(c[f"num_{split}"] for c in counts) for split in ("train", "val"))
    return (f"already converted: {train + val} trajectories (train {train}, val {val}) in "
            f"{len(reports)} collections")


def demo_overrides(algo: str, data: Path, runs: Path, steps: int, seed: int) -> list[str]:
    """The demo's training configuration as ``bridge-torch-train`` overrides."""
    overrides = [
        f"algo={algo}", f"data_path={data}", f"save_dir={runs}", f"name=demo_{algo}",
        f"num_steps={steps}", "batch_size=32", "val_batch_size=128", f"seed={seed}",
        f"log_interval={max(steps // 20, 1)}", f"eval_interval={steps}", f"save_interval={steps}",
        "device=cpu", "encoder.name=resnetv1-mini-bridge", "encoder.num_filters=16",
        "model.hidden_dims=[128,128]", "model.score_width=128", "optimizer.lr=1e-3",
        f"scheduler.warmup_steps={steps // 10}", f"scheduler.decay_steps={steps}",
    ]
    # only used where the preset keeps an EMA (gc_ddpm_bc): over a few hundred steps the JAX rate
    # of 0.002 would lag far behind
    return [*overrides, "ema.rate=0.05"]


def train(algo: str, data: Path, runs: Path, steps: int, seed: int) -> Path:
    """Run the real ``bridge-torch-train`` CLI; returns the run directory it printed."""
    overrides = demo_overrides(algo, data, runs, steps, seed)
    _stage(f"training {algo} for {steps} steps: bridge-torch-train {' '.join(overrides)}")
    # One training thread unless the user says otherwise: the table is then the same on every
    # run (float sums depend on the thread count), and a busy machine does not slow it 10x.
    env = {**os.environ, THREADS_ENV: os.environ.get(THREADS_ENV, "1")}
    result = subprocess.run([sys.executable, "-m", "bridge_torch.train", *overrides],
                            stdout=subprocess.PIPE, text=True, env=env)
    if result.returncode != 0:  # its own error line is already on stderr
        fail("bridge-torch-demo", f"training {algo} failed (exit status {result.returncode})")
    last = result.stdout.strip().splitlines()[-1]
    if not last.startswith("run_dir: "):
        raise RuntimeError(f"bridge-torch-train did not report its run directory: {last!r}")
    return Path(last.removeprefix("run_dir: "))


def loss_curves(run_dirs: dict[str, Path], path: Path) -> None:
    """Every run's curves in one figure; each loss kind on its own axis (see plots.py)."""
    runs = {algo: read_metrics(run_dir) for algo, run_dir in run_dirs.items()}
    save_png(loss_figure(runs, title="demo runs on synthetic data"), path)


def build_parser() -> CliParser:
    """The options of ``bridge-torch-demo``."""
    parser = CliParser(prog="bridge-torch-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_path", "--out", type=Path, default=Path("demo_output"),
                        metavar="DIR", help="everything goes here (default demo_output)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training updates for every algorithm (default {DEFAULT_STEPS})")
    parser.add_argument("--trajectories", type=int, default=12, help="per dated folder")
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-worse", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    """``bridge-torch-demo``: the whole flow; user errors end it with one ``error:`` line."""
    args = build_parser().parse_args(argv)
    with user_errors("bridge-torch-demo", debug=debug_requested(args)):
        run_demo(args)


def run_demo(args: argparse.Namespace) -> None:
    """Data, one run per algorithm, evaluation, plots and the table; exits 1 if a policy
    does not beat the baseline."""
    start, out = time.time(), args.output_path
    configure_cpu_threads("cpu")  # this process converts and evaluates; each run sets its own
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, args.trajectories, args.seed)
    run_dirs, rows = {}, []
    for algo in args.algos:
        t0 = time.time()
        steps = args.steps or DEFAULT_STEPS[algo]
        run_dirs[algo] = train(algo, data, out / "runs", steps, args.seed)
        _stage(f"evaluating {algo}: bridge-torch-eval {run_dirs[algo]}")
        rows.append({**evaluate_run(run_dirs[algo], device="cpu",
                                    plot=out / f"actions_{algo}.png"),
                     "wall_s": round(time.time() - t0, 1)})
    loss_curves(run_dirs, out / "loss_curves.png")
    summary = {"rows": rows, "wall_s": round(time.time() - start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _stage(f"results (val action MSE in normalised units; baseline = predict the mean), "
           f"{summary['wall_s']:.0f} s in all")
    print(format_table(rows))
    print(f"\nloss curves: {out / 'loss_curves.png'}\nactions: {out}/actions_<algo>.png"
          f"\nsummary: {out / 'summary.json'}")
    losers = [r["algo"] for r in rows if not r["mse"] < r["baseline_mse"]]
    if losers and not args.allow_worse:
        sys.exit(f"demo failed: {', '.join(losers)} did not beat the predict-the-mean baseline")


if __name__ == "__main__":
    main()
