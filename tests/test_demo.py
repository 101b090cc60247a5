"""bridge-torch-demo in a reduced mode: the whole flow runs and reports its table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


@pytest.mark.slow
def test_demo_reduced_flow(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "bridge_torch.demo", "--out", str(tmp_path),
                          "--steps", "4", "--trajectories", "2", "--algos", "gc_ddpm_bc",
                          "--allow-worse"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "val mse" in run.stdout and "baseline" in run.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["algo"] for r in summary["rows"]] == ["gc_ddpm_bc"]
    for row in summary["rows"]:
        assert row["step"] == 4 and row["baseline_mse"] > 0 and row["mse"] > 0
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    with Image.open(tmp_path / "actions_gc_ddpm_bc.png") as image:
        assert image.size == (1000, 1050)  # 7 action panels in rows of 2
