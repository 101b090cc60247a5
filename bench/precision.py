"""Precision benchmark: does a bf16 (or fp16) run's training track an fp32 run's?

Run:  python bench/precision.py [--device cuda] [--algos gc_bc gc_ddpm_bc] [--steps 300]
                                [--batch-size 256] [--image-size 128]
                                [--encoder resnetv1-34-bridge] [--json out.json]

Generates a small synthetic BridgeData tree and converts it to packed stores (the demo's data,
``demo.prepare_data``, at ``--image-size``), then trains each agent with the real
``bridge-torch-train`` CLI once per precision with the same seed (so the same batches, noise and
augmentation): fp32 (TF32 matmuls on CUDA) and autocast. Reported per agent and
precision: the training loss averaged over the first and the last fifth of the logged steps, the
largest relative difference to fp32 at any logged step, the final validation loss and mse, and
the wall time. Prints a table; the last line is all results as one JSON object.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bridge_torch.agents import AGENTS
from bridge_torch.demo import prepare_data
from common import emit, environment

PRECISIONS = {"fp32": ["amp.enabled=false"], "bf16": ["amp.enabled=true", "amp.dtype=bfloat16"],
              "fp16": ["amp.enabled=true", "amp.dtype=float16"]}
VALIDATION_LOSS = "validation/total_loss"  # every agent's training objective, saliency included


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--algos", nargs="+", default=[a for a in AGENTS if a != "bc"])
    parser.add_argument("--precisions", nargs="+", default=["bf16"],
                        choices=[p for p in PRECISIONS if p != "fp32"],
                        help="compared against fp32, which always runs")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--encoder", default="resnetv1-34-bridge")
    parser.add_argument("--trajectories", type=int, default=12, help="per dated folder")
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def train(algo: str, precision: str, data: Path, runs: Path, args: argparse.Namespace) -> dict:
    """One real training run; returns its metrics.jsonl rows and wall time."""
    overrides = [f"algo={algo}", f"data_path={data}", f"save_dir={runs}",
                 f"name={algo}_{precision}", f"num_steps={args.steps}",
                 f"batch_size={args.batch_size}", f"device={args.device}", "seed=0",
                 f"encoder.name={args.encoder}", f"log_interval={args.log_interval}",
                 f"eval_interval={args.steps}", f"save_interval={args.steps}",
                 *PRECISIONS[precision]]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bridge_torch.train", *overrides],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"training {algo} {precision} failed:\n{result.stderr[-4000:]}")
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"rows": rows, "wall_s": time.perf_counter() - started}


def summarise(algo: str, precision: str, run: dict, reference: dict) -> dict:
    def losses(r: dict) -> dict[int, float]:
        return {row["step"]: row["training/loss"] for row in r["rows"] if "training/loss" in row}

    own, ref = losses(run), losses(reference)
    steps = sorted(own)
    fifth = max(len(steps) // 5, 1)
    validation = {key: value for row in run["rows"] for key, value in row.items()
                  if key.startswith("validation/")}
    return {"algo": algo, "precision": precision,
            "loss_first": round(sum(own[s] for s in steps[:fifth]) / fifth, 5),
            "loss_last": round(sum(own[s] for s in steps[-fifth:]) / fifth, 5),
            "max_rel_diff_to_fp32": round(max(abs(own[s] - ref[s]) / max(abs(ref[s]), 1e-8)
                                              for s in steps), 4),
            "val_loss": round(validation[VALIDATION_LOSS], 5),
            "val_mse": round(validation["validation/mse"], 5),
            "wall_s": round(run["wall_s"], 1)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    header = {**environment(), "device": args.device, "steps": args.steps,
              "batch_size": args.batch_size, "image_size": args.image_size,
              "encoder": args.encoder}
    print(" ".join(f"{k}={v}" for k, v in header.items()), flush=True)
    print(f"{'algo':12s} {'prec':5s} {'loss first':>10s} {'loss last':>10s} "
          f"{'max rel diff':>12s} {'val loss':>9s} {'val mse':>8s} {'wall s':>7s}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bridge_torch_bench_") as tmp:
        data = prepare_data(Path(tmp), args.trajectories, seed=0, im_size=args.image_size)
        for algo in args.algos:
            reference = train(algo, "fp32", data, Path(tmp) / "runs", args)
            for precision in ["fp32", *args.precisions]:
                run = reference if precision == "fp32" else train(
                    algo, precision, data, Path(tmp) / "runs", args)
                row = summarise(algo, precision, run, reference)
                rows.append(row)
                print(f"{algo:12s} {precision:5s} {row['loss_first']:10.4f} "
                      f"{row['loss_last']:10.4f} {row['max_rel_diff_to_fp32']:12.4f} "
                      f"{row['val_loss']:9.4f} {row['val_mse']:8.4f} {row['wall_s']:7.1f}",
                      flush=True)
    return emit({**header, "results": rows}, args.json)


if __name__ == "__main__":
    main()
