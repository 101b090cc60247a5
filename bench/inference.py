"""Inference benchmark: ``sample_actions`` latency for one observation, per agent and precision.

Run:  python bench/inference.py [--device cuda] [--algos bc gc_bc gc_ddpm_bc]
                                [--precisions fp32 bf16] [--image-size 128]
                                [--encoder resnetv1-34-bridge] [--cuda-graphs] [--json out.json]

Each (agent, precision) runs in a fresh process: the agent with its preset's defaults (the JAX
original's) in eval mode, one uint8 observation (and goal) already on the device, the call a
robot makes every control step. Reported: the median latency over ``--calls`` calls after
warm-up (each call synchronised, as a controller waits for its action), the 90th percentile,
and peak memory. GC-DDPM-BC's figure includes its full reverse diffusion (20 steps by default).
Prints a table; the last line is all results as one JSON object.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bridge_torch.agents import AgentShapes, build_agent
from bridge_torch.batch import IMAGE
from bridge_torch.deploy.graphed import GraphedSampler
from bridge_torch.train.config import compose_config
from common import agent_parser, emit, environment, peak_memory_mib, sweep, synchronize

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = agent_parser(__doc__.splitlines()[0], PRECISIONS)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay sample_actions from CUDA graphs (bridge_torch.deploy.graphed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("ALGO", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cuda_graphs and not args.device.startswith("cuda"):
        parser.error(f"--cuda-graphs needs a CUDA device, got --device {args.device}")
    return args


def measure(args: argparse.Namespace, algo: str, precision: str) -> dict:
    """Runs in the child process: one (agent, precision) configuration."""
    config = compose_config([f"algo={algo}", f"encoder.name={args.encoder}", "data_path=unused"])
    device = torch.device(args.device)
    sample = config.data.sample
    shapes = AgentShapes(action_dim=7, proprio_dim=7, obs_horizon=sample.obs_horizon,
                         act_pred_horizon=sample.act_pred_horizon, image_size=args.image_size)
    agent = build_agent(algo, config.model, config.encoder, config.saliency, shapes)
    agent = agent.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(0)
    size = args.image_size
    observation = {IMAGE: torch.randint(0, 256, (1, sample.obs_horizon, size, size, 3),
                                        dtype=torch.uint8, generator=generator, device=device)}
    goal = {IMAGE: observation[IMAGE][:, -1]} if algo != "bc" else None
    dtype = PRECISIONS[precision]
    graphed = (GraphedSampler(agent, argmax=True, generator=generator) if args.cuda_graphs
               else None)

    def call() -> None:
        # no autocast weight cache: a CUDA graph must not capture a cache filled outside it
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None,
                            cache_enabled=graphed is None):
            if graphed is not None:
                graphed(observation, goal)
            else:
                agent.sample_actions(observation, goal, argmax=True, generator=generator)
        synchronize(device)

    for _ in range(args.warmup):
        call()
    latencies = []
    for _ in range(args.calls):
        started = time.perf_counter()
        call()
        latencies.append(1000 * (time.perf_counter() - started))
    latencies.sort()
    return {"algo": algo, "precision": precision,
            "median_ms": round(statistics.median(latencies), 3),
            "p90_ms": round(latencies[int(0.9 * (len(latencies) - 1))], 3),
            "peak_mib": round(peak_memory_mib(device), 1)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args, *args.child)))
        return {}
    header = {**environment(), "device": args.device, "image_size": args.image_size,
              "encoder": args.encoder, "cuda_graphs": args.cuda_graphs}
    print(" ".join(f"{k}={v}" for k, v in header.items()), flush=True)
    print(f"{'algo':12s} {'prec':5s} {'median ms':>10s} {'p90 ms':>9s} {'peak MiB':>9s}",
          flush=True)
    rows = sweep(__file__, args, lambda row: f"{row['median_ms']:10.2f} {row['p90_ms']:9.2f} "
                                             f"{row['peak_mib']:9.0f}")
    return emit({**header, "results": rows}, args.json)


if __name__ == "__main__":
    main()
