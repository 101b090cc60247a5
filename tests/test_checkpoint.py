"""Checkpoint files: atomic writes, weights-only loading, pruning and strict loading errors."""

import signal
import subprocess
import sys
import textwrap
import time
from itertools import chain
from pathlib import Path

import pytest
import torch
from torch import nn

from bridge_torch.agents import AGENTS, AgentShapes, build_agent
from bridge_torch.deploy import restore
from bridge_torch.train import checkpoint, runs
from bridge_torch.train.config import config_from_container
from helpers import make_run


def minimal_state(step: int, value: float = 0.0) -> dict:
    return {
        "step": step,
        "config": {"algo": "bc"},
        "stats": {"actions": {"mean": [0.0]}},
        "agent_shapes": {"action_dim": 1},
        "model": {"w": torch.full((3,), value)},
        "ema": None,
    }


def test_save_load_round_trip_weights_only(tmp_path):
    path = runs.checkpoint_path(tmp_path, 7)
    state = minimal_state(7, 1.5)
    state["rng"] = [{"python": (3, tuple(range(5)), None), "torch": torch.get_rng_state()}]
    checkpoint.save(path, state)
    assert path.name == "ckpt_7.pt"
    loaded = checkpoint.load(path)
    assert loaded["step"] == 7
    torch.testing.assert_close(loaded["model"]["w"], torch.full((3,), 1.5))
    torch.testing.assert_close(loaded["rng"][0]["torch"], state["rng"][0]["torch"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_7.pt"]  # no temp file left behind


def test_load_rejects_files_that_are_not_checkpoints(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "ckpt_1.pt")
    with pytest.raises(ValueError, match=r"missing keys \['step'"):
        checkpoint.load(tmp_path / "ckpt_1.pt")
    with pytest.raises(FileNotFoundError, match=r"ckpt_2\.pt"):
        checkpoint.load(tmp_path / "ckpt_2.pt")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = runs.checkpoint_path(tmp_path, 5)
    checkpoint.save(path, minimal_state(5, 1.0))
    real_save = torch.save

    def crash_mid_write(obj, handle):
        real_save(obj, handle)
        handle.truncate(10)  # a partial file ...
        raise OSError("disk full")  # ... then the write dies

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, minimal_state(5, 2.0))
    with pytest.raises(OSError):
        checkpoint.save(runs.checkpoint_path(tmp_path, 6), minimal_state(6))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_5.pt"]  # nothing partial
    torch.testing.assert_close(checkpoint.load(path)["model"]["w"], torch.full((3,), 1.0))


@pytest.mark.slow
def test_killed_save_leaves_previous_checkpoint_usable(tmp_path):
    """SIGKILL a real process while it overwrites ckpt_1.pt: the old file must survive."""
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        from bridge_torch.train import checkpoint, runs
        path = runs.checkpoint_path({str(tmp_path)!r}, 1)
        state = {{"step": 1, "config": {{}}, "stats": {{}}, "agent_shapes": {{}},
                  "model": {{"w": torch.ones(3)}}, "ema": None}}
        checkpoint.save(path, state)
        real_save = torch.save
        def slow_save(obj, handle):
            real_save(obj, handle)
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)
        torch.save = slow_save
        state["model"]["w"] = torch.zeros(3)
        checkpoint.save(path, state)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    torch.testing.assert_close(
        checkpoint.load(runs.checkpoint_path(tmp_path, 1))["model"]["w"], torch.ones(3)
    )
    assert runs.latest_checkpoint(tmp_path).name == "ckpt_1.pt"  # the temp file is ignored
    partial = [p for p in tmp_path.iterdir() if p.name != "ckpt_1.pt"]
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # killed mid-write
    assert runs.remove_partial(tmp_path) == partial  # what resume does first
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_1.pt"]


def test_latest_and_prune_order_by_step_not_name(tmp_path):
    assert runs.latest_checkpoint(tmp_path) is None
    for step in (9, 10, 100, 2):
        checkpoint.save(runs.checkpoint_path(tmp_path, step), minimal_state(step))
    (tmp_path / "ckpt_notes.txt").write_text("not a checkpoint")
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == [
        "ckpt_2.pt", "ckpt_9.pt", "ckpt_10.pt", "ckpt_100.pt"
    ]
    assert runs.latest_checkpoint(tmp_path).name == "ckpt_100.pt"
    assert runs.prune(tmp_path, None) == []
    removed = runs.prune(tmp_path, 2)
    assert [p.name for p in removed] == ["ckpt_2.pt", "ckpt_9.pt"]
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["ckpt_10.pt", "ckpt_100.pt"]


def test_resolve_checkpoint(tmp_path):
    checkpoint.save(runs.checkpoint_path(tmp_path, 3), minimal_state(3))
    assert runs.resolve_checkpoint(tmp_path, None).name == "ckpt_3.pt"
    assert runs.resolve_checkpoint(tmp_path, 3) == tmp_path / "ckpt_3.pt"
    assert runs.resolve_checkpoint(tmp_path, "ckpt_3.pt") == tmp_path / "ckpt_3.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no ckpt"):
        runs.resolve_checkpoint(empty, None)


def test_load_module_state_names_missing_unexpected_and_mismatched_keys():
    module = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    state = module.state_dict()
    checkpoint.load_module_state(module, state, source="ok")  # exact fit loads
    with pytest.raises(ValueError, match=r"missing keys \['1.bias'\]"):
        checkpoint.load_module_state(
            module, {k: v for k, v in state.items() if k != "1.bias"}, source="ckpt"
        )
    with pytest.raises(ValueError, match=r"unexpected keys \['_orig_mod.0.weight'\]"):
        checkpoint.load_module_state(
            module, {**state, "_orig_mod.0.weight": state["0.weight"]}, source="ckpt"
        )
    with pytest.raises(ValueError, match=r"1.weight: checkpoint \(7, 3\) vs model \(4, 3\)"):
        checkpoint.load_module_state(module, {**state, "1.weight": torch.zeros(7, 3)}, source="x")


def test_assigned_weights_take_the_dtype_and_layout_of_the_module():
    with torch.device("meta"):
        module = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    state = {"weight": weight, "bias": torch.randn(4)}
    checkpoint.load_module_state(module, state, source="x", assign=True)
    assert module.weight.dtype == torch.float32 and module.weight.requires_grad
    assert module.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(module.weight, weight.float())
    assert module.bias.data_ptr() == state["bias"].data_ptr()  # fits already: not copied


@pytest.mark.parametrize("algo", sorted(AGENTS))
def test_restored_agent_acts_bit_identically_to_one_initialised_then_loaded(tmp_path, algo):
    """``restore_agent`` skips the random initialisation (meta device, tensors assigned): every
    tensor, non-persistent buffers included, and every sampled action are those of an agent built
    the costly way, its random weights then overwritten by copying."""
    run_dir = make_run(tmp_path, algo, ema=True)
    saved = checkpoint.load(run_dir / "ckpt_5.pt")
    config = config_from_container(saved["config"], source="test")
    reference = build_agent(config.algo, config.model, config.encoder, config.saliency,
                            AgentShapes(**saved["agent_shapes"]))
    checkpoint.load_module_state(reference, saved["ema"], source="test")
    restored = restore.restore_agent(run_dir, device="cpu").agent
    pairs = zip(chain(reference.named_parameters(), reference.named_buffers()),
                chain(restored.named_parameters(), restored.named_buffers()), strict=True)
    for (name, want), (got_name, got) in pairs:
        assert got_name == name and got.device.type == "cpu" and got.dtype == want.dtype
        assert got.stride() == want.stride() and torch.equal(got, want), name
    g = torch.Generator().manual_seed(0)
    observations = {"image": torch.randint(0, 256, (3, 1, 32, 32, 3), dtype=torch.uint8,
                                           generator=g),
                    "proprio": torch.randn(3, 1, 7, generator=g)}
    goals = {"image": torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=g)}
    sampled = [agent.eval().sample_actions(observations, goals, argmax=False,
                                           generator=torch.Generator().manual_seed(1))
               for agent in (reference, restored)]
    assert torch.equal(*sampled)


def test_a_tensor_no_checkpoint_holds_must_be_made_on_the_cpu(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, "bc")
    build = restore.build_agent

    def with_derived_buffer(*args):
        agent = build(*args)
        agent.register_buffer("schedule", torch.arange(3.0), persistent=False)  # default device
        return agent

    monkeypatch.setattr(restore, "build_agent", with_derived_buffer)
    with pytest.raises(RuntimeError, match=r"ckpt_5\.pt \[model\]: \['schedule'\] hold no values"):
        restore.restore_agent(run_dir, device="cpu")


def test_restore_agent_loads_ema_or_model_weights_in_eval_mode(tmp_path):
    run_dir = make_run(tmp_path, "gc_ddpm_bc", ema=True)
    saved = checkpoint.load(run_dir / "ckpt_5.pt")
    restored = restore.restore_agent(run_dir, device="cpu")
    assert isinstance(restored, restore.RestoredAgent)
    assert not restored.agent.training
    assert restored.step == 5 and restored.path == run_dir / "ckpt_5.pt"
    assert restored.config.algo == "gc_ddpm_bc" and restored.stats == saved["stats"]
    for name, tensor in restored.agent.state_dict().items():
        torch.testing.assert_close(tensor, saved["ema"][name])
    plain = restore.restore_agent(run_dir, 5, device="cpu", use_ema=False)
    for name, tensor in plain.agent.state_dict().items():
        torch.testing.assert_close(tensor, saved["model"][name])
    observations = {"image": torch.zeros(2, 1, 32, 32, 3, dtype=torch.uint8),
                    "proprio": torch.zeros(2, 1, 7)}
    goals = {"image": torch.zeros(2, 32, 32, 3, dtype=torch.uint8), "proprio": torch.zeros(2, 7)}
    actions = restored.agent.sample_actions(observations, goals, argmax=True,
                                            generator=torch.Generator().manual_seed(0))
    assert actions.shape == (2, 1, 7)


def test_restore_agent_without_ema_uses_the_trained_weights(tmp_path):
    run_dir = make_run(tmp_path, "bc")
    restored = restore.restore_agent(run_dir, device="cpu")  # use_ema=True, but none saved
    saved = checkpoint.load(run_dir / "ckpt_5.pt")
    for name, tensor in restored.agent.state_dict().items():
        torch.testing.assert_close(tensor, saved["model"][name])


def test_restore_agent_rejects_another_algorithm(tmp_path):
    bc_run, gc_run = make_run(tmp_path, "bc"), make_run(tmp_path, "gc_bc")
    with pytest.raises(ValueError, match=r"trained with algo 'gc_bc' but .* is a 'bc' run"):
        restore.restore_agent(bc_run, gc_run / "ckpt_5.pt", device="cpu")


def test_restore_agent_rejects_another_action_dimension(tmp_path):
    run7, run6 = make_run(tmp_path, "gc_bc", 7), make_run(tmp_path, "gc_bc", 6)
    with pytest.raises(ValueError, match=r"action_dim 6 but the run .* 7-dimensional"):
        restore.restore_agent(run7, run6 / "ckpt_5.pt", device="cpu")


def test_restore_agent_is_strict_about_keys(tmp_path):
    run_dir = make_run(tmp_path, "gc_bc")
    saved = checkpoint.load(run_dir / "ckpt_5.pt")
    dropped = sorted(saved["model"])[0]
    del saved["model"][dropped]
    saved["model"]["extra.weight"] = torch.zeros(1)
    checkpoint.save(run_dir / "ckpt_6.pt", saved)
    with pytest.raises(ValueError) as info:
        restore.restore_agent(run_dir, device="cpu")
    message = str(info.value)
    assert "ckpt_6.pt [model]" in message
    assert f"missing keys ['{dropped}']" in message
    assert "unexpected keys ['extra.weight']" in message


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", bytes(range(256)) * 20,
                                     Path("/etc/passwd").read_bytes()
                                     if Path("/etc/passwd").is_file() else b"root:x:0:0"])
def test_a_file_that_is_not_a_checkpoint_is_named_as_such(tmp_path, content):
    """Text, random bytes or a system file: one clear error, never a KeyError or IndexError
    from torch's legacy unpickler, and not reported as 'pickled objects'."""
    path = tmp_path / "ckpt_1.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a bridge-torch checkpoint: not a PyTorch zip"):
        checkpoint.load(path)
