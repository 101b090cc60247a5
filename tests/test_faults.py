"""Faults (issue 7): SIGKILL mid-run and resume, full disk, interrupted conversion, a dead DDP rank.

Every fault is real: processes are SIGKILLed or die with ``os._exit``, the full disk is a
``RLIMIT_FSIZE`` limit, the trainer is the ``bridge-torch-train`` console script. All are marked
``slow`` (subprocesses); CI still runs them (``make test``).
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bridge_torch.data.sources.convert import ConvertOptions, convert
from bridge_torch.data.sources.synthetic import generate_raw_dataset
from bridge_torch.train import checkpoint, runs
from bridge_torch.train.metrics_log import read_metrics
from helpers import dead_writer_temporary, free_port

pytestmark = pytest.mark.slow
TRAIN = str(Path(sys.executable).parent / "bridge-torch-train")
TINY = ["algo=bc", "batch_size=8", "val_batch_size=16", "device=cpu", "log_interval=1",
        "eval_interval=1000", "scheduler.warmup_steps=1", "scheduler.decay_steps=8",
        "encoder.name=resnetv1-mini-bridge", "encoder.num_filters=8", "model.hidden_dims=[16]"]
NUM_STEPS, SAVE_INTERVAL = 8, 2
KILL_SEED = 7  # seeds the step at which the run is killed
PEER_DEADLINE_S = 60  # a surviving rank must stop this soon after its peer died


def train_args(data: Path, save_dir: Path) -> list[str]:
    return [f"data_path={data}", f"save_dir={save_dir}", *TINY, f"num_steps={NUM_STEPS}",
            f"save_interval={SAVE_INTERVAL}"]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["training/loss"]) for e in read_metrics(run_dir) if "training/loss" in e]


def run_dir_of(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))


def wait_for_step(save_dir: Path, process: subprocess.Popen, step: int) -> Path:
    """Poll until the run has logged ``step`` losses and written a checkpoint; its run dir."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        found = list(save_dir.glob("bridgedata_torch/*"))
        metrics = found[0] / "metrics.jsonl" if found else None
        if metrics and metrics.is_file() and runs.latest_checkpoint(found[0]) is not None \
                and metrics.read_text().count('"training/loss"') >= step:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"the run ended or stalled before step {step}: {process.poll()}")


def test_sigkill_at_a_random_step_then_resume_continues_exactly(converted_tree: Path,
                                                                tmp_path: Path) -> None:
    kill_at = random.Random(KILL_SEED).randint(SAVE_INTERVAL + 1, NUM_STEPS - 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs share the cores
    reference = subprocess.Popen([TRAIN, *train_args(converted_tree, tmp_path / "full")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    victim = subprocess.Popen([TRAIN, *train_args(converted_tree, tmp_path / "killed")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        run_dir = wait_for_step(tmp_path / "killed", victim, kill_at)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_at = runs.latest_checkpoint(run_dir)
    assert killed_at.name != f"ckpt_{NUM_STEPS}.pt"  # it really died mid-run
    partial = run_dir / dead_writer_temporary(f"ckpt_{NUM_STEPS}.pt")  # as a kill leaves it
    partial.write_bytes(b"PK\x03\x04 partial")
    resumed = subprocess.run([TRAIN, f"resume={run_dir}"], capture_output=True, text=True,
                             timeout=300, env=env)
    assert run_dir_of(resumed) == run_dir
    stdout, stderr = reference.communicate(timeout=300)
    full = run_dir_of(subprocess.CompletedProcess(reference.args, reference.returncode, stdout,
                                                  stderr))
    expected = losses(full)
    assert [step for step, _ in expected] == list(range(1, NUM_STEPS + 1))
    assert losses(run_dir) == expected  # bit-identical, before and after the kill
    assert not partial.exists()
    a, b = (checkpoint.load(d / f"ckpt_{NUM_STEPS}.pt") for d in (full, run_dir))
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=0, atol=0, msg=name)


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys, torch
    from bridge_torch.train import checkpoint, runs
    state = {"step": 1, "config": {}, "stats": {}, "agent_shapes": {},
             "model": {"w": torch.ones(3)}, "ema": None}
    checkpoint.save(runs.checkpoint_path(sys.argv[1], 1), state)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    state.update(step=2, model={"w": torch.zeros(100_000)})
    checkpoint.save(runs.checkpoint_path(sys.argv[1], 2), state)
""")


def test_full_disk_during_checkpoint_write_fails_clearly_and_keeps_the_previous(
        tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"OSError: cannot write checkpoint {tmp_path / 'ckpt_2.pt'}")
    assert "is the disk full" in last and "Earlier checkpoints are unchanged" in last
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_1.pt"]  # no partial file either
    torch.testing.assert_close(checkpoint.load(tmp_path / "ckpt_1.pt")["model"]["w"],
                               torch.ones(3))


KILL_THIRD_OUT_NPY = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from bridge_torch.data.sources import convert
    real_save, out_npy_writes = np.save, []

    def save(file, array, allow_pickle=True):
        if allow_pickle and array.dtype == object:  # an out.npy (store arrays are plain)
            out_npy_writes.append(file)
            if len(out_npy_writes) == 3:  # collection 2's train split: half of it, then SIGKILL
                real_save(file, array[:1], allow_pickle=allow_pickle)
                file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        real_save(file, array, allow_pickle=allow_pickle)

    np.save = save
    sys.exit(convert.main(sys.argv[1:]))
""")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_converter_killed_mid_write_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    raw = generate_raw_dataset(tmp_path / "raw", seed=4, num_tasks=3, dates_per_task=1,
                               trajs_per_date=4, min_len=4, max_len=5, image_hw=(24, 32))
    settings = {"im_size": 16, "train_proportion": 0.75, "format": "both"}
    convert(ConvertOptions(raw, tmp_path / "clean", **settings), num_workers=1, progress=False)
    args = ["--input_path", str(raw), "--output_path", str(tmp_path / "out"), "--im_size", "16",
            "--train_proportion", "0.75", "--format", "both", "--num_workers", "1"]
    killed = subprocess.run([sys.executable, "-c", KILL_THIRD_OUT_NPY, *args],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    markers = sorted((tmp_path / "out").rglob("conversion.json"))
    assert len(markers) == 1  # collection 1 finished; collection 2 died writing
    partial = list((tmp_path / "out").rglob(".out.npy.tmp-*"))
    assert len(partial) == 1 and not (partial[0].parent / "out.npy").exists()
    reports = convert(ConvertOptions(raw, tmp_path / "out", **settings), num_workers=1,
                      progress=False)
    assert [r.status for r in reports] == ["already converted", "converted", "converted"]
    assert tree_bytes(tmp_path / "out") == tree_bytes(tmp_path / "clean")


DIE_AT_STEP_3 = textwrap.dedent("""
    import os, sys
    from bridge_torch.train import loop as train
    real_step, steps = train.train_step, []

    def train_step(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            os._exit(3)  # no cleanup, no goodbye: as a crash or the OOM killer would
        return real_step(*args, **kwargs)

    train.train_step = train_step
    sys.argv[0] = "bridge-torch-train"
    train.main()
""")


def test_a_dead_ddp_rank_stops_the_other_with_a_clear_error(converted_tree: Path,
                                                            tmp_path: Path) -> None:
    """Two gloo ranks without torchrun (as on two nodes): rank 1 dies at its third update."""
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    args = train_args(converted_tree, tmp_path)
    ranks = [subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, command in enumerate([[TRAIN, *args],
                                          [sys.executable, "-c", DIE_AT_STEP_3, *args]])]
    try:
        assert ranks[1].wait(timeout=300) == 3
        died = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=PEER_DEADLINE_S)
        assert time.monotonic() - died < PEER_DEADLINE_S
    finally:
        for process in ranks:
            process.kill()
            process.communicate()
    assert ranks[0].returncode not in (0, None)
    assert "PeerFailure: rank 0 of 2 lost contact with another rank after step 2" in stderr
    assert "a rank probably died" in stderr

