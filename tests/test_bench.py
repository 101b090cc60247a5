"""The benchmark scripts run and report what BENCHMARKS.md quotes (tiny settings, CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY_MODEL = ["--device", "cpu", "--image-size", "32", "--encoder", "resnetv1-mini-bridge"]


def run_bench(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_train_step_bench_reports_every_agent_split_and_memory() -> None:
    report = run_bench("train_step.py", *TINY_MODEL, "--algos", "bc", "gc_ddpm_bc",
                       "--batch-size", "4", "--warmup", "1", "--windows", "1",
                       "--steps-per-window", "1", "--trajectories", "4", "--traj-length", "8")
    assert [(r["algo"], r["precision"]) for r in report["results"]] == [
        ("bc", "fp32"), ("gc_ddpm_bc", "fp32")]  # CPU default: fp32 only
    for row in report["results"]:
        assert row["ms_per_step"] > 0 and row["data_ms"] > 0 and row["peak_mib"] > 100
        assert row["ms_per_step"] == pytest.approx(row["data_ms"] + row["update_ms"], abs=0.02)
        # both are rounded from one step time: ms to 0.005, samples/s to 0.05, at any speed
        low, high = (4000 / (row["ms_per_step"] + d) for d in (0.005, -0.005))
        assert low - 0.0501 <= row["samples_per_s"] <= high + 0.0501


@pytest.mark.slow
def test_train_step_bench_applies_overrides_and_profiles() -> None:
    report = run_bench("train_step.py", *TINY_MODEL, "--algos", "gc_bc", "--batch-size", "4",
                       "--warmup", "1", "--windows", "1", "--steps-per-window", "1",
                       "--trajectories", "4", "--traj-length", "8", "--profile", "3",
                       "--set", "encoder.fused_norm=false", "optimizer.lr=1e-3")
    assert report["overrides"] == ["encoder.fused_norm=false", "optimizer.lr=1e-3"]
    (row,) = report["results"]
    assert len(row["profile"]) == 3
    times = [ms for _, ms, _ in row["profile"]]
    assert times == sorted(times, reverse=True) and times[0] > 0
    assert all(calls >= 1 for _, _, calls in row["profile"])


@pytest.mark.slow
def test_precision_bench_compares_runs_with_fp32() -> None:
    report = run_bench("precision.py", "--device", "cpu", "--algos", "gc_bc", "--steps", "6",
                       "--batch-size", "4", "--image-size", "32", "--encoder",
                       "resnetv1-mini-bridge", "--trajectories", "2", "--log-interval", "2")
    rows = {row["precision"]: row for row in report["results"]}
    assert set(rows) == {"fp32", "bf16"}
    assert rows["fp32"]["max_rel_diff_to_fp32"] == 0
    assert 0 < rows["bf16"]["max_rel_diff_to_fp32"] < 0.1  # same batches, other rounding
    assert all(row["val_mse"] > 0 and row["loss_last"] > 0 for row in rows.values())


@pytest.mark.slow
def test_a_failing_configuration_is_reported_and_the_others_still_run() -> None:
    report = run_bench("inference.py", *TINY_MODEL, "--algos", "nonexistent_algo", "bc",
                       "--warmup", "1", "--calls", "2")
    broken, working = report["results"]
    assert "algo" in broken["error"] and "median_ms" not in broken
    assert working["algo"] == "bc" and working["median_ms"] > 0


def test_inference_bench_refuses_cuda_graphs_without_cuda() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "inference.py"), "--device", "cpu",
                          "--cuda-graphs"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--cuda-graphs needs a CUDA device" in out.stderr


@pytest.mark.slow
def test_inference_and_data_benches_report_json() -> None:
    report = run_bench("inference.py", *TINY_MODEL, "--algos", "gc_bc", "--precisions", "fp32",
                       "bf16", "--warmup", "1", "--calls", "3")
    assert [r["precision"] for r in report["results"]] == ["fp32", "bf16"]
    assert all(0 < r["median_ms"] <= r["p90_ms"] for r in report["results"])
    data = run_bench("data.py", "--device", "cpu", "--batch-size", "8", "--image-size", "32",
                     "--obs-horizons", "1", "--seconds", "0.2", "--trajectories", "4",
                     "--traj-length", "8", "--stores", "2", "--breakdown")
    breakdown = {(r["path"], "+".join(r["order"])): r["ms_per_batch"] for r in data["breakdown"]}
    assert ("C kernel", "crop+brightness+contrast+saturation+hue") in breakdown
    assert ("C kernel, portable", "crop") in breakdown
    assert ("PyTorch compiled", "") in breakdown and all(ms > 0 for ms in breakdown.values())
    assert {r["what"] for r in data["sampling"]} == {
        "sample+gather", "sample+gather, frames on host", "+ augment, PyTorch eager",
        "+ augment, PyTorch compiled", "+ augment, C kernel"}
    opened = {r["what"]: r for r in data["open"]}
    assert opened["out.npy, cached"]["seconds"] < opened["out.npy, first open (pack)"]["seconds"]
