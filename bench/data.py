"""Data-pipeline benchmark: sampling, gathering and augmentation throughput, and dataset opening.

Run:  python bench/data.py [--device cpu cuda] [--batch-size 256] [--image-size 128]
                           [--obs-horizons 1 2] [--seconds 3] [--stores 1] [--breakdown]
                           [--skip-open] [--json results.json]

Builds a synthetic packed store (random frames; ``--stores`` splits it into several, as a
dataset of many task directories) in a temporary directory, then measures
samples/s of (a) ``TransitionSampler.sample`` (index arithmetic + gather of the observation
window, goal and action chunk; also with the frames left in the memory maps,
``frame_storage=host``, and on CUDA that behind a simulated 10 ms GPU step, which shows whether
the host's gather overlaps the GPU's work) and (b) sample + ``Augmenter`` (observation frames
and goal) with PyTorch ops, eager and compiled (``augment.compile``), on CPU with the C kernel
(``augment.native_cpu``, the CPU default) and on CUDA with the Triton kernel
(``augment.fused_cuda``), for each observation horizon and device (CUDA when present): the
median over windows of ``--seconds / 5`` after a warm-up, synchronising the device at every
window edge. ``--breakdown`` also times CPU augmentation alone, per path (the C kernel, the C
kernel's portable loops where the CPU has AVX-512, compiled PyTorch ops) and for growing
prefixes of the default op order. It also times opening a
split from a legacy ``out.npy`` the first time (pack into the cache) and
again (cache hit), against opening the packed store directly, each in a fresh subprocess that
reports its own peak RSS. Prints a table; the last line is the results as one JSON object.
"""

import argparse
import functools
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bridge_torch.batch import GOALS, IMAGE, OBSERVATIONS
from bridge_torch.data.augment import cpu_kernel as augment_cpu
from bridge_torch.data.augment.augmenter import AugmentConfig, Augmenter
from bridge_torch.data.augment.ops import CONFIGURABLE_OPS, kernel_ops
from bridge_torch.data.config import LoadConfig
from bridge_torch.data.datasets import open_split
from bridge_torch.data.sampler import SampleConfig, TrainingData, TransitionSampler
from bridge_torch.data.sources.legacy_numpy import save_out_npy
from bridge_torch.data.store import open_store, write_store
from bridge_torch.triton_support import kernels_run_on
from common import emit, peak_rss_mib, run_child, synchronize, synthetic_trajectories

WINDOWS = 5  # measurement windows per configuration; the median is reported
WARMUP_BATCHES = 3
STEP_MS = 10  # simulated training step for the overlap check on CUDA


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", nargs="+", default=None,
                        help="devices to measure (default: cpu, and cuda when available)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--obs-horizons", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--act-pred-horizon", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--trajectories", type=int, default=100)
    parser.add_argument("--traj-length", type=int, default=40, help="transitions per trajectory")
    parser.add_argument("--stores", type=int, default=1,
                        help="split the trajectories over this many packed stores (a real "
                             "dataset has one per task directory)")
    parser.add_argument("--skip-open", action="store_true", help="skip the dataset-opening part")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time CPU augmentation alone per path and op prefix")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--open-child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.stores <= args.trajectories:
        parser.error(f"--stores must be in [1, --trajectories], got {args.stores}")
    return args


def throughput(step, batch_size: int, seconds: float, device: torch.device) -> float:
    """Median samples/s of ``step()`` over WINDOWS windows after a warm-up."""
    for _ in range(WARMUP_BATCHES):
        step()
    rates = []
    for _ in range(WINDOWS):
        synchronize(device)
        start, batches = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / WINDOWS or batches == 0:
            step()
            batches += 1
        synchronize(device)
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def gpu_busy(ms: float) -> Callable[[], None]:
    """A function that queues about ``ms`` milliseconds of GPU work (a spin kernel)."""
    cycles = 10_000_000
    torch.cuda.synchronize()
    start = time.perf_counter()
    torch.cuda._sleep(cycles)
    torch.cuda.synchronize()
    per_ms = cycles / ((time.perf_counter() - start) * 1000)
    return lambda: torch.cuda._sleep(int(per_ms * ms))


def measure_sampling(store_paths: list[Path], args: argparse.Namespace) -> list[dict]:
    stores = [open_store(path) for path in store_paths]
    stats = {"actions": stores[0].stats["actions_relabeled"], "proprio": stores[0].stats["proprio"]}
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    for name in devices:
        device = torch.device(name)
        for horizon in args.obs_horizons:
            cfg = SampleConfig(obs_horizon=horizon, act_pred_horizon=args.act_pred_horizon)
            data = TrainingData.from_stores([stores], stats, LoadConfig(), cfg, device)
            sampler = TransitionSampler(data, cfg, seed=0)
            augmenters = {
                "+ augment, PyTorch eager": AugmentConfig(native_cpu=False, compile=False),
                "+ augment, PyTorch compiled": AugmentConfig(native_cpu=False, compile=True)}
            if device.type == "cpu":
                augmenters["+ augment, C kernel"] = AugmentConfig(native_cpu=True)
            elif kernels_run_on(torch.empty(0, device=device)):
                augmenters["+ augment, Triton kernel"] = AugmentConfig(fused_cuda=True)
            # frames gathered from the memory maps on the host (and copied over to CUDA)
            host_data = TrainingData.from_stores([stores], stats, LoadConfig(frame_storage="host"),
                                                 cfg, device)
            host = TransitionSampler(host_data, cfg, seed=0)
            steps = {"sample+gather": lambda s=sampler: s.sample(args.batch_size),
                     "sample+gather, frames on host": lambda s=host: s.sample(args.batch_size)}
            if device.type == "cuda":
                # a 10 ms GPU step queued before each batch: ~10 ms per batch when the host's
                # gather overlaps it, 10 ms + the gather when the host waits for the GPU
                busy = gpu_busy(STEP_MS)
                steps[f"{STEP_MS} ms GPU step alone"] = busy
                steps[f"{STEP_MS} ms step + host frames"] = \
                    lambda s=host, b=busy: (b(), s.sample(args.batch_size))
            for label, augment_cfg in augmenters.items():
                augmenter = Augmenter(augment_cfg, seed=0)
                steps[label] = lambda s=sampler, a=augmenter: a(s.sample(args.batch_size))
            for what, step in steps.items():
                rate = throughput(step, args.batch_size, args.seconds, device)
                results.append({"device": str(device), "obs_horizon": horizon, "what": what,
                                "samples_per_s": round(rate, 1),
                                "ms_per_batch": round(1000 * args.batch_size / rate, 3)})
                print(f"{device!s:6s} K={horizon}  {what:32s} {rate:10.0f} samples/s  "
                      f"{1000 * args.batch_size / rate:8.2f} ms/batch", flush=True)
    return results


def measure_breakdown(args: argparse.Namespace) -> list[dict]:
    """CPU augmentation alone (one batch's observation frames and goals, no sampling) per path,
    for growing prefixes of the default op order and for the colour ops without the crop: where
    the time goes. The C kernel is called directly, with and without its AVX-512 loops, on the
    same per-image parameters; the PyTorch ops through the ``Augmenter``."""
    generator = torch.Generator().manual_seed(0)
    size, n = args.image_size, args.batch_size
    frames = torch.randint(0, 256, (2 * n, size, size, 3), dtype=torch.uint8, generator=generator)
    batch = {OBSERVATIONS: {IMAGE: frames[:n, None]}, GOALS: {IMAGE: frames[n:]}}
    params = Augmenter(AugmentConfig(), seed=0).draw(2 * n)
    kernel = augment_cpu.load_kernel()

    def c_kernel(order: list[str], allow_avx512: bool) -> Callable[[], torch.Tensor]:
        codes = augment_cpu.op_codes(kernel_ops(order))
        return functools.partial(augment_cpu.augment, frames, params, codes, kernel,
                                 allow_avx512=allow_avx512)

    def pytorch_compiled(order: list[str]) -> Callable[[], dict]:
        augmenter = Augmenter(AugmentConfig(order=order, native_cpu=False, compile=True), seed=0)
        return functools.partial(augmenter, batch)

    paths = {"C kernel": functools.partial(c_kernel, allow_avx512=True),
             "C kernel, portable": functools.partial(c_kernel, allow_avx512=False),
             "PyTorch compiled": pytorch_compiled}
    default = list(CONFIGURABLE_OPS)
    orders = [default[:k] for k in range(len(default) + 1)] + [default[1:]]
    results = []
    for path, make_step in paths.items():
        if kernel is None and path.startswith("C kernel"):
            continue
        for order in orders:
            rate = throughput(make_step(order), n, args.seconds, torch.device("cpu"))
            ms = 1000 * n / rate
            results.append({"path": path, "order": order, "ms_per_batch": round(ms, 2)})
            print(f"{path:18s} {'+'.join(order) or '(none)':38s} {ms:8.2f} ms per "
                  f"{2 * n} images", flush=True)
    return results


def legacy_trajectories(count: int, length: int, image_size: int) -> list[dict]:
    """The same synthetic data in the legacy out.npy schema."""
    out = []
    for traj in synthetic_trajectories(count, length, image_size, seed=1):
        frames, state = traj.frames["images0"], traj.proprio.astype(np.float64)
        steps = [{"images0": frames[t], "state": state[t], "time_stamp": float(t)}
                 for t in range(length + 1)]
        out.append({"observations": steps[:-1], "next_observations": steps[1:],
                    "actions": list(traj.actions), "terminals": [0] * length,
                    "language": traj.language})
    return out


def measure_open(workdir: Path, args: argparse.Namespace) -> list[dict]:
    """Open a split from out.npy (first: pack; second: cached) and a packed store directly."""
    task = workdir / "legacy_task"
    (task / "train").mkdir(parents=True)
    trajs = legacy_trajectories(args.trajectories, args.traj_length, args.image_size)
    save_out_npy(task / "train" / "out.npy", trajs)
    del trajs
    packed = workdir / "direct_store"
    write_store(packed, synthetic_trajectories(args.trajectories, args.traj_length,
                                               args.image_size, seed=1), progress=False)
    runs = [("python + imports only", "baseline", workdir),
            ("out.npy, first open (pack)", "split", task),
            ("out.npy, cached", "split", task),
            ("packed store, direct", "store", packed)]
    results = []
    for label, mode, path in runs:
        report = run_child(__file__, ["--open-child", mode, str(path)])
        results.append({"what": label, **report})
        print(f"{label:30s} {report['seconds']:8.2f} s   "
              f"peak RSS {report['peak_rss_mib']:8.0f} MiB", flush=True)
    return results


def open_child(mode: str, path: str) -> None:
    """Runs in the subprocess: open, touch every trajectory's index, report time and peak RSS."""
    start = time.perf_counter()
    if mode == "split":
        store = open_split(Path(path), "train")
    elif mode == "store":
        store = open_store(Path(path))
    if mode != "baseline":
        int(store.traj_length.sum())
    seconds = time.perf_counter() - start
    peak_mib = peak_rss_mib()
    print(json.dumps({"seconds": round(seconds, 3), "peak_rss_mib": round(peak_mib, 1)}))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.open_child:
        open_child(*args.open_child)
        return {}
    header = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "batch_size": args.batch_size, "image_size": args.image_size,
              "act_pred_horizon": args.act_pred_horizon, "stores": args.stores,
              "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(" ".join(f"{k}={v}" for k, v in header.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="bridge_torch_bench_") as tmp:
        workdir = Path(tmp)
        trajectories = synthetic_trajectories(args.trajectories, args.traj_length, args.image_size)
        bounds = [args.trajectories * i // args.stores for i in range(args.stores + 1)]
        store_paths = [write_store(workdir / f"bench_store_{i}",
                                   itertools.islice(trajectories, stop - start), progress=False)
                       for i, (start, stop) in enumerate(itertools.pairwise(bounds))]
        results = {**header, "sampling": measure_sampling(store_paths, args)}
        if args.breakdown:
            results["breakdown"] = measure_breakdown(args)
        if not args.skip_open:
            results["open"] = measure_open(workdir, args)
    return emit(results, args.json)


if __name__ == "__main__":
    main()
