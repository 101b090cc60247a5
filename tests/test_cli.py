"""Every command's user errors: one ``error:`` line, no traceback, a suggestion for a typo; the
shared option spellings; the CPU thread default; what the commands print."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bridge_torch import cpu_threads
from bridge_torch.cli_errors import CliParser, dataclass_keys, hydra_error_message, suggest_key
from bridge_torch.demo import already_converted
from bridge_torch.offline_eval import main as eval_main
from bridge_torch.sim.closed_loop import format_table
from bridge_torch.train.config import TrainConfig, compose_config

BIN = Path(sys.executable).parent


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A console script as a user runs it."""
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line]


USER_ERRORS = [  # (command, exit status, text of the one error line)
    (["bridge-torch-synthetic", "--out", "{tmp}/raw", "--seeed", "1"], 2,
     "unrecognized arguments: --seeed 1 (did you mean --seed?)"),
    (["bridge-torch-synthetic", "--out", "{tmp}/raw", "--num_tasks", "0"], 2,
     "num_tasks, dates_per_task, trajs_per_date and cameras must be >= 1"),
    (["bridge-torch-convert", "--input_path", "{tmp}/missing", "--output_path", "{tmp}/out"], 2,
     "is not a directory"),
    (["bridge-torch-convert", "--input_path", "{tmp}", "--out", "{tmp}/o", "--format", "pakced"],
     2, "invalid choice: 'pakced'"),
    (["bridge-torch-inspect", "{tmp}/missing"], 2, "does not exist"),
    (["bridge-torch-inspect", "{tmp}"], 1, "found no packed store"),
    (["bridge-torch-eval", "{tmp}/no_run"], 2, "run directory"),
    (["bridge-torch-eval", "{tmp}"], 1, ""),
    (["bridge-torch-demo", "--algos", "bcc"], 2, "(did you mean bc?)"),
    (["bridge-torch-sim", "evl", "x"], 2, "(did you mean eval?)"),
    (["bridge-torch-sim", "eval", "{tmp}/no_run", "--tasks", "reach-v3"], 2, "run directory"),
    (["bridge-torch-import-jax", "{tmp}", "--config", "{tmp}/c.json", "--out", "{tmp}/r"], 1, ""),
    (["bridge-torch-train"], 2, "data_path is required"),
    (["bridge-torch-train", "data_path={tmp}"], 1, "matches no task directory"),
    (["bridge-torch-train", "data_path={tmp}", "optimizer.lrr=1"], 2,
     "unknown key optimizer.lrr (did you mean optimizer.lr?)"),
    (["bridge-torch-train", "data_path={tmp}", "algo=gcbc"], 2,
     "unknown algo 'gcbc' (did you mean gc_bc?)"),
    (["bridge-torch-train", "resume={tmp}/no_run"], 2, "not a run directory"),
]


@pytest.mark.slow
@pytest.mark.parametrize("command,status,text", USER_ERRORS,
                         ids=[" ".join(c[:2]) for c, _, _ in USER_ERRORS])
def test_user_errors_are_one_line(tmp_path: Path, command: list[str], status: int,
                                  text: str) -> None:
    result = run_cli([arg.format(tmp=tmp_path) for arg in command])
    lines = error_lines(result)
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{command[0]}"), result.stderr
    assert text in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "+optimizer" not in result.stderr  # Hydra's append hint is wrong for our schema


@pytest.mark.slow
def test_debug_and_hydra_full_error_show_the_traceback(tmp_path: Path) -> None:
    result = run_cli(["bridge-torch-synthetic", "--out", str(tmp_path), "--num_tasks", "0",
                      "--debug"])
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "ValueError: num_tasks" in result.stderr
    result = run_cli(["bridge-torch-train", f"data_path={tmp_path}"], {"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "matches no task directory" in result.stderr


@pytest.mark.slow
def test_readme_synthetic_line_runs_as_pasted(tmp_path: Path) -> None:
    """``--out`` was ambiguous between four spellings of the output option."""
    result = run_cli(["bridge-torch-synthetic", "--out", str(tmp_path / "raw"), "--seed", "0",
                      "--num_tasks", "1", "--dates_per_task", "1", "--trajs_per_date", "1",
                      "--image-height", "32", "--image-width", "32"])
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "raw").rglob("obs_dict.pkl"))


def test_parser_spellings_and_no_prefixes(capsys: pytest.CaptureFixture) -> None:
    parser = CliParser(prog="demo")
    parser.add_argument("--output_path", "--out", required=True)
    parser.add_argument("--num-workers", type=int, default=1)
    for spelling in ("--output_path", "--output-path", "--out"):
        assert parser.parse_args([spelling, "x"]).output_path == "x"
    assert parser.parse_args(["--out", "x", "--num_workers", "3"]).num_workers == 3
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--out", "x", "--num", "3"])  # a prefix is not an option
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("error:") == 1 and "usage" not in err
    assert "did you mean --num-workers?" in err or "did you mean --num_workers?" in err


def test_suggestions_for_config_keys() -> None:
    keys = dataclass_keys(TrainConfig)
    assert "optimizer.lr" in keys and "data.augment.brightness" in keys
    assert suggest_key("optimizer.lrr", keys) == " (did you mean optimizer.lr?)"
    assert suggest_key("lrr", keys) == " (did you mean optimizer.lr?)"
    assert suggest_key("batch_sise", keys) == " (did you mean batch_size?)"
    assert suggest_key("zzzzzz", keys) == ""
    with pytest.raises(Exception) as info:
        compose_config(["data_path=/d", "scheduler.warmup_step=3"])
    assert hydra_error_message(info.value, keys) == (
        "unknown key scheduler.warmup_step (did you mean scheduler.warmup_steps?)")


def test_thread_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu_threads.auto_threads(cores=2, busy=0.0) == 2
    assert cpu_threads.auto_threads(cores=2, busy=1.0) == 1
    assert cpu_threads.auto_threads(cores=2, busy=9.0) == 1
    assert cpu_threads.auto_threads(cores=16, busy=3.2) == 13
    monkeypatch.setenv(cpu_threads.ENV_VAR, "3")
    assert cpu_threads.requested_threads() == 3
    monkeypatch.setenv(cpu_threads.ENV_VAR, "auto")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads.requested_threads() is None  # the user's OMP_NUM_THREADS stays in charge
    monkeypatch.setenv(cpu_threads.ENV_VAR, "many")
    with pytest.raises(ValueError, match="BRIDGE_TORCH_THREADS"):
        cpu_threads.requested_threads()
    before = torch.get_num_threads()
    assert cpu_threads.configure_cpu_threads("cuda") == before  # the CPU setting is left alone
    assert cpu_threads.busy_cores(sample_s=0.05) >= 0.0


def test_sim_table_fits_long_task_names() -> None:
    row = {"successes": 3, "episodes": 10, "success_rate": 0.3, "mean_steps_to_success": 51.5,
           "mean_expert_steps": 60.0}
    table = format_table({"tasks": {"reach-v3": row, "button-press-topdown-v3": row},
                          "overall": {**row, "episodes": 20}}).splitlines()
    assert len({len(line) for line in table}) == 1  # every line as wide as the header
    assert table[3].startswith("button-press-topdown-v3 ") and table[2].startswith("reach-v3 ")


def test_demo_rerun_says_already_converted(converted_tree: Path) -> None:
    from bridge_torch.data.sources.convert import ALREADY_DONE, CollectionReport

    reports = [CollectionReport(str(m.parent), str(m.parent), status=ALREADY_DONE)
               for m in sorted(converted_tree.rglob("conversion.json"))]
    assert already_converted(reports) == (
        "already converted: 20 trajectories (train 16, val 4) in 2 collections")
    assert already_converted([*reports, CollectionReport("c", "o")]) is None


def test_eval_says_what_it_read_and_where_outputs_went(tiny_run, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    run = tiny_run("bc")
    eval_main([str(run), "--device", "cpu", "--json", str(tmp_path / "m.json"), "--plot",
               str(tmp_path / "a.png")])
    out = capsys.readouterr().out
    assert f"metrics: {tmp_path / 'm.json'}" in out and f"action plot: {tmp_path / 'a.png'}" in out
    assert json.loads((tmp_path / "m.json").read_text())["algo"] == "bc"
    assert "training data:" not in caplog.text and "on the val split" in caplog.text
