"""Trust in what a run reads back: a torn metrics line, a truncated or bit-flipped checkpoint,
config typos, resume command lines and resolver interpolations in saved configs.

Each test is a probe that the code before these guards failed: a torn last line of
metrics.jsonl or a truncated newest checkpoint made resume impossible, a flipped bit loaded
silently, ``+optimizer.lrr=0.1`` and ``${oc.env:HOME}`` were accepted, and the run's own command
line plus ``resume=`` was refused.
"""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bridge_torch.train import checkpoint, runs
from bridge_torch.train.config import compose_config, config_from_container, load_config, to_yaml
from bridge_torch.train.loop import train
from trust_helpers import TINY, copy_run, finished_run, losses


@pytest.fixture(scope="module")
def finished(converted_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-update run (copy it before changing it)."""
    return finished_run(converted_tree, tmp_path_factory.mktemp("finished"))


# ---- 3. torn and corrupt files ----------------------------------------------------------------

def test_a_torn_last_metrics_line_is_dropped_with_a_warning_and_resume_works(finished,
                                                                            tmp_path, caplog):
    run_dir = copy_run(finished, tmp_path)
    expected = losses(run_dir)
    with open(run_dir / runs.METRICS_FILE, "a") as handle:
        handle.write('{"step": 3, "training/lo')  # power loss mid-line
    with caplog.at_level(logging.WARNING, logger="bridge_torch"):
        assert losses(run_dir) == expected
    lines = (run_dir / runs.METRICS_FILE).read_text().count("\n") + 1
    assert f"{run_dir / runs.METRICS_FILE} line {lines} is not a complete event" in caplog.text
    train(compose_config([f"resume={run_dir}", "num_steps=3"]))
    assert [step for step, _ in losses(run_dir)] == [1, 2, 3]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(finished, tmp_path,
                                                                 caplog):
    run_dir = copy_run(finished, tmp_path)
    expected = losses(run_dir)
    newest = run_dir / "ckpt_2.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    path, state = runs.load_latest(run_dir)
    assert path == run_dir / "ckpt_1.pt" and state["step"] == 1
    with caplog.at_level(logging.WARNING, logger="bridge_torch"):
        train(compose_config([f"resume={run_dir}", "num_steps=2"]))
    assert f"cannot read checkpoint {newest}: truncated or corrupt?" in caplog.text
    assert "falling back to the previous checkpoint" in caplog.text
    assert losses(run_dir) == expected  # steps 2.. retrained exactly
    assert checkpoint.load(newest)["step"] == 2  # rewritten whole


def largest_contiguous_weight(state: dict) -> str:
    model = state["model"]
    return max((k for k in model if model[k].is_contiguous()), key=lambda k: model[k].numel())


def flip_a_weight_byte(path: Path, state: dict, name: str) -> None:
    data = bytearray(path.read_bytes())
    offset = bytes(data).find(state["model"][name].numpy().tobytes()[:16])
    assert offset > 0
    data[offset + 1] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_flipped_byte_fails_loudly_naming_the_file(finished, tmp_path, caplog):
    run_dir = copy_run(finished, tmp_path)
    newest = run_dir / "ckpt_2.pt"
    state = checkpoint.load(newest)
    name = largest_contiguous_weight(state)
    flip_a_weight_byte(newest, state, name)
    with pytest.raises(ValueError, match=rf"checkpoint {newest} is corrupt: model/{name} differ"):
        checkpoint.load(newest)
    with caplog.at_level(logging.WARNING, logger="bridge_torch"):
        assert runs.load_latest(run_dir)[0] == run_dir / "ckpt_1.pt"
    assert f"checkpoint {newest} is corrupt" in caplog.text


def test_an_old_checkpoint_loads_and_resume_checks_its_parameter_sum(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    newest = run_dir / "ckpt_2.pt"
    state = checkpoint.load(newest)
    del state[checkpoint.DIGESTS_KEY]  # as written before the digests existed
    torch.save(state, newest)
    assert checkpoint.load(newest)["step"] == 2  # still loadable
    name = largest_contiguous_weight(state)
    flipped = state["model"][name].clone()
    flipped.view(-1).view(torch.int32)[0] ^= 1 << 23  # the lowest exponent bit of one weight
    state["model"][name] = flipped
    torch.save(state, newest)
    with pytest.raises(ValueError, match=rf"^{newest} is corrupt: its model weights sum to"):
        train(compose_config([f"resume={run_dir}", "num_steps=3"]))


# ---- 4. config typos, resume overrides, resolvers --------------------------------------------

@pytest.mark.parametrize("override, says", [
    ("+optimizer.lrr=0.1", "optimizer.lrr (did you mean optimizer.lr?)"),
    ("+lrr=1", "unknown config keys: lrr."),
    ("+data.augment.brightnes=0.1", "data.augment.brightnes (did you mean data.augment."
                                    "brightness?)"),
])
def test_plus_adding_a_key_outside_the_schema_is_an_error(override, says):
    with pytest.raises(ValueError, match="unknown config keys") as info:
        compose_config(["data_path=/d", override])
    assert says in str(info.value)


def test_plus_adding_a_model_key_is_left_to_the_agent():
    with pytest.raises(ValueError, match=r"model\.hidden_dimz: .*did you mean model\.hidden_dims"):
        compose_config(["data_path=/d", "+model.hidden_dimz=[8]"])


def test_resume_accepts_the_runs_own_group_choice_and_refuses_another(tmp_path):
    saved = compose_config(["data_path=/d", "algo=bc", "bridgedata=bridge_v2_all",
                            "bridgedata.exclude=[x*]"])
    (tmp_path / "config.yaml").write_text(to_yaml(saved))
    same = compose_config([f"resume={tmp_path}", "algo=bc", "bridgedata=bridge_v2_all",
                           "bridgedata.exclude=[x*]", "num_steps=7"])
    assert same.algo == "bc" and same.num_steps == 7 and same.bridgedata == saved.bridgedata
    for other in ("algo=gc_bc", "bridgedata=all_local"):
        with pytest.raises(ValueError, match=f"config group override '{other}' differs"):
            compose_config([f"resume={tmp_path}", other])


@pytest.mark.slow
def test_resume_with_the_same_command_line_works_through_the_cli(converted_tree, tmp_path):
    command = [sys.executable, "-m", "bridge_torch.train", f"data_path={converted_tree}",
               f"save_dir={tmp_path}", *TINY, "num_steps=1"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = first.stdout.strip().splitlines()[-1].removeprefix("run_dir: ")
    again = subprocess.run([*command[:-1], "num_steps=2", f"resume={run_dir}"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-1] == f"run_dir: {run_dir}"


def test_a_resolver_in_a_saved_config_is_refused_naming_file_and_key(tmp_path):
    saved = yaml.safe_load(to_yaml(compose_config(["data_path=/d"])))
    saved["data_path"] = "${oc.env:HOME}/data"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    for load in (lambda: load_config(path), lambda: compose_config([f"resume={tmp_path}"])):
        with pytest.raises(ValueError, match=rf"^{path}: data_path = '\$\{{oc.env:HOME\}}/data' "
                                             "calls a resolver"):
            load()
    saved["data_path"], saved["optimizer"]["name"] = "/d", "${oc.decode:'adam'}"
    with pytest.raises(ValueError, match=r"^ckpt_9.pt \[config\]: optimizer.name = "):
        config_from_container(saved, source="ckpt_9.pt [config]")
