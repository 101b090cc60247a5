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
        assert row["samples_per_s"] == pytest.approx(4000 / row["ms_per_step"], rel=0.01)


@pytest.mark.slow
def test_inference_and_data_benches_report_json() -> None:
    report = run_bench("inference.py", *TINY_MODEL, "--algos", "gc_bc", "--precisions", "fp32",
                       "bf16", "--warmup", "1", "--calls", "3")
    assert [r["precision"] for r in report["results"]] == ["fp32", "bf16"]
    assert all(0 < r["median_ms"] <= r["p90_ms"] for r in report["results"])
    data = run_bench("data.py", "--device", "cpu", "--batch-size", "8", "--image-size", "32",
                     "--obs-horizons", "1", "--seconds", "0.2", "--trajectories", "4",
                     "--traj-length", "8")
    assert {r["what"] for r in data["sampling"]} == {
        "sample+gather", "sample+gather+augment", "... augment.compile=true"}
    opened = {r["what"]: r for r in data["open"]}
    assert opened["out.npy, cached"]["seconds"] < opened["out.npy, first open (pack)"]["seconds"]
