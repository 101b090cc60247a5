"""CPU threads under load: the demo's training step with 1, 2 and ``auto`` threads, each alone
and next to a competing CPU-bound process (``python -c "while True: pass"``).

Run:  python bench/threads.py [--algo gc_ddpm_bc] [--threads 1 2 auto] [--competitors 0 1]
                              [--repeats 2] [--steps 8] [--json out.json]

Every (threads, competitors) configuration runs in a fresh child process, configurations
alternate within each repeat so that drifts of the machine's speed hit all of them alike. A child
builds the demo's configuration (``bridge_torch.demo.demo_overrides``: batch 32, 64² images,
ResNet "mini" encoder with 16 filters) on a synthetic packed store, sets its threads
(``OMP_NUM_THREADS`` and ``torch.set_num_threads``; ``auto``: ``configure_cpu_threads`` with
``BRIDGE_TORCH_THREADS=auto``), warms up and times single training steps. Competitors start a
second before the child. Prints a table (median over repeats of each child's median s/step,
and the slowest step seen); the last line is all results as one JSON object.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bridge_torch.cpu_threads import available_cores, configure_cpu_threads
from bridge_torch.demo import DEFAULT_STEPS, demo_overrides
from bridge_torch.train.build import build_training_state
from bridge_torch.train.config import compose_config
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.loop import train_step
from bridge_torch.train.run_data import load_run_data
from common import emit, environment, write_task_dir

SPIN = "while True: pass"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="gc_ddpm_bc", choices=sorted(DEFAULT_STEPS))
    parser.add_argument("--threads", nargs="+", default=["1", "2", "auto"])
    parser.add_argument("--competitors", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per child")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("THREADS", "DATA", "RUNS"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, threads: str, data: str, runs: str) -> dict:
    """Runs in the child: the demo's training step, timed one step at a time."""
    used = configure_cpu_threads("cpu") if threads == "auto" else int(threads)
    torch.set_num_threads(used)
    overrides = demo_overrides(args.algo, Path(data), Path(runs), DEFAULT_STEPS[args.algo], 0)
    config = compose_config(overrides)
    device = torch.device("cpu")
    state, _ = build_training_state(config, load_run_data(config, device),
                                    DistInfo(rank=0, local_rank=0, world_size=1), device, None)
    seconds = []
    for i in range(args.warmup + args.steps):
        started = time.perf_counter()
        batch = state.augmenter(state.sampler.sample(config.batch_size))
        train_step(state, batch, None, config.optimizer.max_grad_norm)
        if i >= args.warmup:
            seconds.append(time.perf_counter() - started)
    return {"threads": used, "median_s": statistics.median(seconds), "max_s": max(seconds)}


def run_child(args: argparse.Namespace, threads: str, competitors: int, data: Path) -> dict:
    """One configuration in a fresh process, with ``competitors`` spinning processes around it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "BRIDGE_TORCH_THREADS")}
    env.update({"BRIDGE_TORCH_THREADS": "auto"} if threads == "auto" else
               {"OMP_NUM_THREADS": threads})
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(competitors)]
    try:
        time.sleep(1.0 if spinners else 0.0)
        with tempfile.TemporaryDirectory(prefix="bench_threads_runs_") as runs:
            child = subprocess.run(
                [sys.executable, __file__, "--algo", args.algo, "--warmup", str(args.warmup),
                 "--steps", str(args.steps), "--child", threads, str(data), runs],
                capture_output=True, text=True, env=env)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    if child.returncode != 0:
        raise RuntimeError(f"child {threads} threads failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def summarize(label: str, samples: list[dict]) -> dict:
    """One table row: median over repeats of the per-child medians."""
    return {"config": label, "threads_used": sorted({s["threads"] for s in samples}),
            "median_s": round(statistics.median(s["median_s"] for s in samples), 4),
            "max_s": round(max(s["max_s"] for s in samples), 4),
            "per_repeat_s": [round(s["median_s"], 4) for s in samples]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args, *args.child)))
        return {}
    header = {**environment(), "algo": args.algo, "cores": available_cores(),
              "loadavg_start": [round(v, 2) for v in os.getloadavg()]}
    print(" ".join(f"{k}={v}" for k, v in header.items()), flush=True)
    configs = [(t, c) for c in args.competitors for t in args.threads]
    samples: dict[tuple[str, int], list[dict]] = {config: [] for config in configs}
    with tempfile.TemporaryDirectory(prefix="bench_threads_data_") as tmp:
        data = write_task_dir(Path(tmp), trajectories=48, length=20, image_size=64)
        for _ in range(args.repeats):
            for threads, competitors in configs:
                samples[threads, competitors].append(run_child(args, threads, competitors, data))
    print(f"{'threads':>8} {'competitors':>11} {'used':>6} {'s/step':>8} {'slowest':>8}  repeats")
    rows = []
    for (threads, competitors), runs in samples.items():
        row = {**summarize(f"{threads} threads, {competitors} competing", runs),
               "threads": threads, "competitors": competitors}
        rows.append(row)
        print(f"{threads:>8} {competitors:>11} {','.join(map(str, row['threads_used'])):>6} "
              f"{row['median_s']:8.3f} {row['max_s']:8.3f}  {row['per_repeat_s']}")
    return emit({**header, "results": rows}, args.json)


if __name__ == "__main__":
    main()
