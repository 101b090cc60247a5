"""Training-step benchmark: the real trainer's step, end to end, per agent and precision.

Run:  python bench/train_step.py [--device cuda] [--algos bc gc_bc gc_ddpm_bc]
                                 [--precisions fp32 bf16] [--batch-size 256] [--image-size 128]
                                 [--encoder resnetv1-34-bridge] [--compile] [--profile N]
                                 [--set KEY=VALUE ...] [--json out.json]

Each (agent, precision) runs in a fresh process on a synthetic packed store, through exactly the
code ``bridge-torch-train`` runs: ``load_run_data`` (frames on the device), the sampler and
augmenter, ``build_training_state`` (agent, Adam, warmup+cosine, EMA, GradScaler) and
``train_step`` (autocast forward, backward, optimizer, EMA). Reported, after warm-up:

* ``ms_per_step``: median over windows of whole steps (sample, gather, augment, update), the
  device synchronised only at window edges, as in training; ``samples_per_s`` from it;
* ``data_ms`` / ``update_ms``: the same steps with a synchronisation between the data part and
  the update, to split the time (``data_fraction`` = data / (data + update));
* ``peak_mib``: peak CUDA memory allocated (CPU: the process's peak RSS);
* ``compile_s``: with ``--compile``, the first step's time minus a steady step;
* ``profile``: with ``--profile N``, the N ops with the most self time on the device (CPU:
  on the host) per step, from ``torch.profiler`` over one window: where the update's time goes.

Prints a table; the last line is all results as one JSON object. The defaults are the JAX
original's (batch 256, 128 px, ResNet-34); on a CPU pass a smaller ``--batch-size``.
"""

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bridge_torch.train.build import autocast_dtype, build_training_state, configure_backends
from bridge_torch.train.config import compose_config
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.loop import train_step
from bridge_torch.train.run_data import load_run_data
from common import (
    agent_parser,
    emit,
    environment,
    median_rate,
    peak_memory_mib,
    sweep,
    synchronize,
    write_task_dir,
)

PRECISIONS = {"fp32": ["amp.enabled=false"], "bf16": ["amp.enabled=true", "amp.dtype=bfloat16"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = agent_parser(__doc__.splitlines()[0], PRECISIONS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="torch.compile the agent")
    parser.add_argument("--warmup", type=int, default=3, help="steps before measuring")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps-per-window", type=int, default=4)
    parser.add_argument("--trajectories", type=int, default=64)
    parser.add_argument("--traj-length", type=int, default=40)
    parser.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE",
                        help="extra training-config overrides, e.g. encoder.fused_norm=false")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also report the N ops with the most device time per step")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("ALGO", "PRECISION", "DATA"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def op_profile(step: Callable[[], None], steps: int, top: int,
               device: torch.device) -> list[list]:
    """``[op, self ms per step, calls per step]`` for the ``top`` ops by self time on ``device``."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)

    def self_us(event) -> float:
        return event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total

    events = sorted(prof.key_averages(), key=self_us, reverse=True)[:top]
    return [[event.key[:90], round(self_us(event) / 1000 / steps, 3), event.count // steps]
            for event in events]


def measure(args: argparse.Namespace, algo: str, precision: str, data_path: str) -> dict:
    """Runs in the child process: one (agent, precision) configuration."""
    overrides = [f"algo={algo}", f"data_path={data_path}", f"batch_size={args.batch_size}",
                 f"device={args.device}", f"encoder.name={args.encoder}",
                 f"compile.enabled={str(args.compile).lower()}", *PRECISIONS[precision],
                 *(args.set or [])]
    config = compose_config(overrides)
    device = torch.device(args.device)
    configure_backends(config, device)
    info = DistInfo(rank=0, local_rank=0, world_size=1)
    data = load_run_data(config, device)
    state, _ = build_training_state(config, data, info, device, resumed=None)
    amp = autocast_dtype(config, device)
    clip = config.optimizer.max_grad_norm

    def fetch() -> dict:
        return state.augmenter(state.sampler.sample(args.batch_size))

    def step() -> None:
        train_step(state, fetch(), amp, clip)

    synchronize(device)
    started = time.perf_counter()
    step()
    synchronize(device)
    first_s = time.perf_counter() - started
    for _ in range(args.warmup - 1):
        step()
    per_step, _ = median_rate(step, args.windows, args.steps_per_window, device)
    data_s, _ = median_rate(fetch, args.windows, args.steps_per_window, device)
    update_s = max(per_step - data_s, 0.0)
    return {"algo": algo, "precision": precision, "compile": args.compile,
            "ms_per_step": round(1000 * per_step, 2),
            "samples_per_s": round(args.batch_size / per_step, 1),
            "data_ms": round(1000 * data_s, 2), "update_ms": round(1000 * update_s, 2),
            "data_fraction": round(data_s / per_step, 3),
            "peak_mib": round(peak_memory_mib(device), 1),
            "compile_s": round(first_s - per_step, 2) if args.compile else None,
            "profile": op_profile(step, args.steps_per_window, args.profile, device)
            if args.profile else None}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args, *args.child)))
        return {}
    header = {**environment(), "device": args.device, "batch_size": args.batch_size,
              "image_size": args.image_size, "encoder": args.encoder, "compile": args.compile,
              "overrides": args.set or []}
    print(" ".join(f"{k}={v}" for k, v in header.items()), flush=True)
    print(f"{'algo':12s} {'prec':5s} {'ms/step':>9s} {'samples/s':>10s} {'data ms':>8s} "
          f"{'update ms':>9s} {'data %':>7s} {'peak MiB':>9s} {'compile s':>9s}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bridge_torch_bench_") as tmp:
        data = write_task_dir(Path(tmp), args.trajectories, args.traj_length, args.image_size)
        rows = sweep(__file__, args, lambda row: (
            f"{row['ms_per_step']:9.1f} {row['samples_per_s']:10.0f} {row['data_ms']:8.2f} "
            f"{row['update_ms']:9.1f} {100 * row['data_fraction']:6.1f}% "
            f"{row['peak_mib']:9.0f} {row['compile_s'] or '-':>9}"
            + "".join(f"\n    {ms:8.3f} ms {calls:4d}x  {op}"
                      for op, ms, calls in row["profile"] or [])
        ), extra=(str(data),))
    return emit({**header, "results": rows}, args.json)


if __name__ == "__main__":
    main()
