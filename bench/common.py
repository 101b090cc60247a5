"""Shared by the benchmarks: synthetic stores, device sync, timing windows, child processes.

Each benchmark script runs every configuration in a fresh child process (``--child``) so peak
memory, compile caches and allocator state belong to that configuration alone.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from bridge_torch.agents import AGENTS
from bridge_torch.data.store import Trajectory, write_store


def synthetic_trajectories(count: int, length: int, image_size: int,
                           seed: int = 0) -> Iterator[Trajectory]:
    """Random frames and smooth random proprio; enough structure for every code path."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        frames = rng.integers(0, 256, (length + 1, image_size, image_size, 3), dtype=np.uint8)
        proprio = np.cumsum(rng.normal(0, 0.01, (length + 1, 7)), axis=0).astype(np.float32)
        actions = rng.uniform(-1, 1, (length, 7)).astype(np.float32)
        yield Trajectory(frames={"images0": frames}, proprio=proprio, actions=actions,
                         language=["synthetic"], source=f"synthetic#{i}")


def write_task_dir(root: Path, trajectories: int, length: int, image_size: int) -> Path:
    """A ``<root>/bench_task/train/packed`` store, the layout ``bridgedata=all_local`` finds."""
    write_store(root / "bench_task" / "train" / "packed",
                synthetic_trajectories(trajectories, length, image_size), progress=False)
    return root


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(step: Callable[[], object], windows: int, per_window: int,
                device: torch.device) -> tuple[float, list[float]]:
    """Median seconds per ``step()`` over ``windows`` windows of ``per_window`` calls, each
    window bracketed by device synchronisation (the caller warms up first)."""
    seconds = []
    for _ in range(windows):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(per_window):
            step()
        synchronize(device)
        seconds.append((time.perf_counter() - start) / per_window)
    return statistics.median(seconds), seconds


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated by torch, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's own peak RSS. ``/proc/self/status`` VmHWM belongs to the current address
    space, whereas ``getrusage`` ru_maxrss survives ``exec`` and would report the parent's."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(script: str, args: list[str]) -> dict:
    """Run ``script --child ...`` in a fresh interpreter; return the JSON object it printed last."""
    child = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def environment() -> dict:
    """What the figures were measured on."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def child_arguments(args: argparse.Namespace, parent_only: tuple[str, ...]) -> list[str]:
    """The parsed options as command-line flags for a child, minus the parent-only ones."""
    flags = []
    for name, value in vars(args).items():
        if name in parent_only or value is None or value is False:
            continue
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag] if value is True else [f"{flag}={value}"]
    return flags


def emit(results: dict, json_path: Path | None) -> dict:
    """Write the results to ``json_path`` (if given) and print them as the last line."""
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results), flush=True)
    return results


def default_precisions(device: str) -> list[str]:
    """fp32 and bf16 on CUDA; fp32 alone on CPU (bf16 autocast there is slow emulation)."""
    return ["fp32", "bf16"] if device.startswith("cuda") else ["fp32"]


def agent_parser(description: str, precisions: Iterable[str]) -> argparse.ArgumentParser:
    """The options every per-agent benchmark takes: device, agents, precisions, image, encoder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--algos", nargs="+", default=list(AGENTS))
    parser.add_argument("--precisions", nargs="+", default=None, choices=list(precisions),
                        help="default: fp32 and bf16 on CUDA; fp32 on CPU, where bf16 autocast "
                             "is emulated and many times slower without AMX")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--encoder", default="resnetv1-34-bridge")
    return parser


def sweep(script: str, args: argparse.Namespace, row_text: Callable[[dict], str],
          extra: tuple[str, ...] = ()) -> list[dict]:
    """Every (agent, precision) of ``args`` in its own child of ``script``; prints each row."""
    args.precisions = args.precisions or default_precisions(args.device)
    passthrough = child_arguments(args, parent_only=("algos", "precisions", "json", "child"))
    rows = []
    for algo in args.algos:
        for precision in args.precisions:
            try:
                row = run_child(script, [*passthrough, "--child", algo, precision, *extra])
            except RuntimeError as error:  # one broken configuration must not hide the others
                rows.append({"algo": algo, "precision": precision, "error": str(error)})
                print(f"{algo:12s} {precision:5s} FAILED\n{error}", flush=True)
                continue
            rows.append(row)
            print(f"{algo:12s} {precision:5s} {row_text(row)}", flush=True)
    return rows
