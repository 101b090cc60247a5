"""The JAX checkpoint importer against checkpoints and outputs of the original code.

tests/fixtures/jax/<agent>/ holds what the original BridgeData V2 JAX code wrote: a checkpoint
(8 encoder filters, 1 score block), its config JSON and the original networks' outputs on fixed
inputs (reference.npz). Comparisons run in float32 on the CPU.
"""

import json
import mmap
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import msgpack
import numpy as np
import pytest
import torch

import flax_trees
from bridge_torch.agents.bc import gaussian_log_prob
from bridge_torch.deploy.jax_import import JaxImportError, cli, flax_msgpack, importer
from bridge_torch.deploy.jax_import import config as jax_config
from bridge_torch.deploy.policy import BatchedPolicy, Policy
from bridge_torch.deploy.restore import restore_agent
from bridge_torch.train.checkpoint import load
from bridge_torch.train.config import load_config
from flax_trees import FIXTURES, actor, in_every_weight_tree, pack

AGENTS = ("bc", "gc_bc", "gc_ddpm_bc")
SMALL_COUNTS = {"bc": 486_271, "gc_bc": 487_447, "gc_ddpm_bc": 896_135}
FULL_COUNTS = {"bc": 21_555_655, "gc_bc": 21_565_063, "gc_ddpm_bc": 23_025_911}


def checkpoint_dir(agent: str) -> Path:
    return FIXTURES / agent / "checkpoint_3"


def config_path(agent: str) -> Path:
    return FIXTURES / agent / f"{agent}_128_config.json"


def reference(agent: str) -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / agent / "reference.npz"))


def close(actual: torch.Tensor | np.ndarray, expected: np.ndarray, atol: float,
          rtol: float = 0.0) -> None:
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    np.testing.assert_allclose(actual.reshape(expected.shape), expected, atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imported")
    return {a: importer.import_checkpoint(checkpoint_dir(a), config_path(a), root / a)
            for a in AGENTS}


def inputs(ref: dict[str, np.ndarray]) -> tuple[dict, dict]:
    obs = torch.from_numpy(ref["obs_image"])
    obs = obs if obs.ndim == 5 else obs[:, None]  # (B, K, H, W, 3)
    return {"image": obs}, {"image": torch.from_numpy(ref["goal_image"])}


def encode_with_stages(agent: torch.nn.Module, obs: dict, goal: dict
                       ) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Pooled features and the NHWC output of every ResNet stage (its last block's)."""
    stages: list[np.ndarray] = []
    blocks = agent.encoder.encoder.blocks
    hooks = [blocks[i].register_forward_hook(
        lambda _m, _i, out: stages.append(out.permute(0, 2, 3, 1).numpy())) for i in (2, 6, 12, 15)]
    with torch.no_grad():
        features, _ = agent.encoder(obs, goal)
    for hook in hooks:
        hook.remove()
    return features, stages


@pytest.mark.parametrize("agent", AGENTS)
def test_reader_gives_the_original_listing_as_read_only_views(agent: str) -> None:
    tree = flax_msgpack.read(checkpoint_dir(agent) / "checkpoint")
    found = [(path, leaf.shape, leaf.dtype.name) for path, leaf in flax_msgpack.leaves(tree)]
    assert found == flax_trees.listing(agent)
    kernel = tree["state"]["params"]["modules_actor"]["encoder"]["encoder"]["conv_init"]["kernel"]
    while isinstance(kernel, np.ndarray):  # a read-only view of the memory-mapped file
        assert not kernel.flags.writeable and not kernel.flags.owndata
        kernel = kernel.base
    assert isinstance(kernel, memoryview) and isinstance(kernel.obj, mmap.mmap)
    assert int(tree["state"]["step"]) == 3


def test_reader_decodes_flax_extension_types_and_rejects_unknown_ones() -> None:
    def ext(code: int, payload: object) -> msgpack.ExtType:
        return msgpack.ExtType(code, msgpack.packb(payload))

    half = np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16
    tree = {"c": ext(2, [1.0, -2.0]), "s": ext(3, [[], "int64", np.int64(7).tobytes()]),
            "t": ext(4, [1, 2]), "b": ext(1, [[2], "bfloat16", half.astype("<u2").tobytes()]),
            "big": ext(1, [[1], "float64", np.float64(0.25).tobytes()])}
    decoded = flax_msgpack.decode(msgpack.packb(tree), "mem")
    assert decoded["c"] == complex(1.0, -2.0) and int(decoded["s"]) == 7
    assert decoded["t"] == {"0": 1, "1": 2}
    assert decoded["b"].tolist() == [1.5, -2.0] and decoded["big"].tolist() == [0.25]
    with pytest.raises(JaxImportError, match=r"mem: unknown msgpack extension type 9 at leaf 'x'"):
        flax_msgpack.decode(msgpack.packb({"x": ext(9, [])}), "mem")
    with pytest.raises(JaxImportError, match=r"float32 \(3,\) needs 12 bytes, found 4 at leaf"):
        flax_msgpack.decode(msgpack.packb({"x": ext(1, [[3], "float32", b"1234"])}), "mem")


def test_maps_instead_of_lists_in_a_bare_file_import_the_same_weights(
        tmp_path: Path, runs: dict[str, Path]) -> None:
    tree = flax_msgpack.read(checkpoint_dir("gc_bc") / "checkpoint")  # lists come back as maps
    assert list(tree["state"]["opt_states"]) == ["0", "1"]
    bare = tmp_path / "checkpoint_3"
    bare.write_bytes(pack(tree))
    for path, kind in ((checkpoint_dir("gc_bc") / "checkpoint", list), (bare, dict)):
        raw = msgpack.unpackb(path.read_bytes(), ext_hook=lambda *_: 0)
        assert isinstance(raw["state"]["opt_states"], kind)  # the original stores a list
    out = importer.import_checkpoint(bare, config_path("gc_bc"), tmp_path / "run")
    ours, original = load(out / "ckpt_3.pt")["model"], load(runs["gc_bc"] / "ckpt_3.pt")["model"]
    assert ours.keys() == original.keys() and all(torch.equal(ours[k], original[k]) for k in ours)


@pytest.mark.parametrize("agent", ["bc", "gc_bc"])
def test_gaussian_policies_reproduce_the_original(agent: str, runs: dict[str, Path]) -> None:
    ref, model = reference(agent), restore_agent(runs[agent], device="cpu").agent
    obs, goal = inputs(ref)
    features, stages = encode_with_stages(model, obs, goal)
    close(features, ref["encoder_features"], 1e-4, 1e-4)
    close(features, ref["encoding"], 1e-4, 1e-4)
    for i, stage in enumerate(stages):
        close(stage, ref[f"encoder_stage{i}_out"], 1e-3)
    with torch.no_grad():
        hidden = model.mlp(features)
        mean, std = model.head(hidden)
        actions = model.sample_actions(obs, goal, argmax=True)
        single = model.sample_actions({"image": obs["image"][:1]}, {"image": goal["image"][:1]},
                                      argmax=True)
    close(hidden, ref["mlp_features"], 1e-4, 1e-4)
    close(mean, ref["actor_mean"], 1e-4)
    close(mean, ref["actor_mode"], 1e-4)
    close(std, ref["actor_std"], 1e-6)
    log_prob = gaussian_log_prob(torch.from_numpy(ref["ref_actions"])[:, None], mean, std, False)
    close(log_prob, ref["log_prob_ref_actions"], 1e-4, 1e-5)
    close(actions, ref["sample_actions_argmax"], 1e-4)
    close(single, ref["sample_actions_argmax_single"], 1e-4)
    # negative controls: the never-updated target_params must not be what we loaded
    assert np.abs(mean[:, 0].numpy() - ref["target_actor_mean"]).max() > 0.1
    assert np.abs(features.numpy() - ref["target_encoder_features"]).max() > 1e-3


@pytest.mark.parametrize(("prefix", "use_ema"), [("params", False), ("target", True)])
def test_ddpm_noise_predictions_match_with_online_and_target_weights(
        prefix: str, use_ema: bool, runs: dict[str, Path]) -> None:
    ref = reference("gc_ddpm_bc")
    model = restore_agent(runs["gc_ddpm_bc"], device="cpu", use_ema=use_ema).agent
    obs, goal = inputs(ref)
    features, stages = encode_with_stages(model, obs, goal)
    for name in ("encoder_features", "encoding"):
        close(features, ref[f"{prefix}_{name}"], 1e-4, 1e-4)
    for i, stage in enumerate(stages):
        close(stage, ref[f"{prefix}_encoder_stage{i}_out"], 1e-3)
    t = torch.from_numpy(ref["ddpm_time"]).float()
    with torch.no_grad():
        fourier = model.score.time_features(t)
        eps = model.score(features, torch.from_numpy(ref["noisy_actions"]).flatten(1), t)
        close(fourier, ref[f"{prefix}_time_fourier_features"], 1e-5)
        close(model.score.time_mlp(fourier), ref[f"{prefix}_time_cond_features"], 1e-4, 1e-4)
    close(eps, ref[f"{prefix}_reverse_network_out"], 1e-4)
    close(eps, ref[f"eps_pred_{prefix}"], 1e-4)
    other = "target" if prefix == "params" else "params"  # the two weight sets differ by 0.59
    assert np.abs(eps.numpy().reshape(4, 1, 7) - ref[f"eps_pred_{other}"]).max() > 0.1


def replay_noise(monkeypatch: pytest.MonkeyPatch, ref: dict[str, np.ndarray]) -> list:
    """Make the sampler draw the original's exported noise: x_T, then z for t = T-1 .. 1."""
    draws = [ref["sampler_x_T"], *ref["sampler_z"][:-1]]  # the last z (t = 0) is never used
    queue = [torch.from_numpy(d) for d in draws]

    def exported(shape: tuple[int, ...], **_: object) -> torch.Tensor:
        assert tuple(shape) == tuple(queue[0].shape)
        return queue.pop(0)

    monkeypatch.setattr("bridge_torch.agents.gc_ddpm_bc.standard_normal", exported)
    return queue


def test_ddpm_schedule_and_sampler_replay_the_original(monkeypatch: pytest.MonkeyPatch,
                                                       runs: dict[str, Path]) -> None:
    ref, model = reference("gc_ddpm_bc"), restore_agent(runs["gc_ddpm_bc"], device="cpu").agent
    close(model.betas, ref["betas"], 1e-5)
    close(model.alphas, ref["alphas"], 1e-5)
    close(model.alpha_bars, ref["alpha_hats"], 1e-5)
    queue = replay_noise(monkeypatch, ref)
    actions = model.sample_actions(*inputs(ref))
    assert queue == []
    close(actions, ref["sample_actions_seeded"], 1e-3)


def action_stats(agent: str) -> dict[str, list[float]]:
    config = json.loads(config_path(agent).read_text())
    return config["bridgedata_config"]["action_proprio_metadata"]["action"]


def denormalised(agent: str, actions: np.ndarray) -> np.ndarray:
    stats = action_stats(agent)
    return actions * np.float32(stats["std"]) + np.float32(stats["mean"])


@pytest.mark.parametrize("agent", ["bc", "gc_bc"])
def test_policy_from_run_acts_as_the_original_eval_script(agent: str,
                                                          runs: dict[str, Path]) -> None:
    ref = reference(agent)
    goals = ref["goal_image"] if agent == "gc_bc" else None
    single = Policy.from_run(runs[agent], sticky_gripper_num_steps=None)
    action = single.act(ref["obs_image"][0], goal_image=None if goals is None else goals[0])
    close(action, denormalised(agent, ref["sample_actions_argmax_single"]), 1e-4)
    batched = BatchedPolicy.from_run(runs[agent], num_envs=4, sticky_gripper_num_steps=None)
    close(batched.act(ref["obs_image"], goals), denormalised(agent, ref["sample_actions_argmax"]),
          1e-4)


def test_policy_from_run_samples_with_the_ema_weights(monkeypatch: pytest.MonkeyPatch,
                                                      runs: dict[str, Path]) -> None:
    ref = reference("gc_ddpm_bc")
    replay_noise(monkeypatch, ref)
    policy = BatchedPolicy.from_run(runs["gc_ddpm_bc"], num_envs=4, sticky_gripper_num_steps=None)
    actions = policy.act(ref["obs_image"][:, 0], ref["goal_image"])
    close(actions, denormalised("gc_ddpm_bc", ref["sample_actions_seeded"][:, 0]), 1e-3)


@pytest.mark.parametrize("agent", AGENTS)
def test_run_directory_is_a_normal_bridge_torch_run(agent: str, runs: dict[str, Path]) -> None:
    run = runs[agent]
    assert sorted(p.name for p in run.iterdir()) == [
        "ckpt_3.pt", "config.json", "config.yaml", "jax_config.json", "model_summary.json",
        "stats.json"]
    summary = json.loads((run / "model_summary.json").read_text())
    assert summary["total"] == summary["trainable"] == SMALL_COUNTS[agent]
    stats = json.loads((run / "stats.json").read_text())["actions"]
    assert stats == {key: action_stats(agent)[key] for key in ("mean", "std")}
    config, state = load_config(run / "config.yaml"), load(run / "ckpt_3.pt")
    assert config.algo == agent and config.encoder.num_filters == 8
    assert state["step"] == 3 and state["agent_shapes"]["image_size"] == 128
    assert state["model_summary"] == summary
    assert (state["ema"] is not None) == (agent == "gc_ddpm_bc") == config.ema.enabled


def test_config_mapping_of_the_diffusion_policy() -> None:
    original = json.loads(config_path("gc_ddpm_bc").read_text())
    sections = jax_config.train_sections(original)
    assert sections["model"] == {
        "time_dim": 32, "num_blocks": 1, "dropout_rate": 0.1, "score_layer_norm": True,
        "score_width": 256, "diffusion_steps": 20, "beta_schedule": "cosine",
        "repeat_last_step": 0, "use_proprio": False, "early_goal_concat": True,
        "shared_goal_encoder": True}
    assert sections["encoder"] == {"name": "resnetv1-34-bridge", "num_filters": 8, "act": "swish",
                                   "pooling_method": "avg", "add_spatial_coordinates": True}
    assert sections["ema"] == {"enabled": True, "rate": 0.5}
    assert jax_config.agent_shapes(original, 256) == {"action_dim": 7, "proprio_dim": 7,
                                                      "obs_horizon": 1, "act_pred_horizon": 1,
                                                      "image_size": 256}
    del original["encoder_kwargs"]["num_filters"]  # train_config.py leaves it to the default
    assert jax_config.encoder_section(original)["num_filters"] == 64
    assert jax_config.image_size(Path("gcbc_256_config.json"), None) == 256


def test_a_learned_state_dependent_std_maps_onto_its_head() -> None:
    tree = flax_msgpack.read(checkpoint_dir("bc") / "checkpoint")
    kernel = np.arange(256 * 7, dtype=np.float32).reshape(256, 7)
    in_every_weight_tree(lambda a: a.update(Dense_1={"kernel": kernel, "bias": np.ones(7)}))(tree)
    original = json.loads(config_path("bc").read_text())
    original["agent_kwargs"]["policy_kwargs"].update(fixed_std=None, state_dependent_std=True)
    run = importer.convert_tree(tree, original, 128, {"checkpoint": "<tree>", "config": "-"})
    assert torch.equal(run.model["head.log_std_head.weight"], torch.from_numpy(kernel.T))
    assert run.summary["total"] == SMALL_COUNTS["bc"] + 256 * 7 + 7


@pytest.mark.parametrize("agent", AGENTS)
def test_default_size_tree_has_the_released_parameter_count(agent: str, tmp_path: Path) -> None:
    tree = flax_msgpack.decode(pack(flax_trees.full_size_tree(agent)), "<tree>")
    original = json.loads(config_path(agent).read_text())
    original["encoder_kwargs"]["num_filters"] = 64
    if agent == "gc_ddpm_bc":
        original["agent_kwargs"]["score_network_kwargs"]["num_blocks"] = 3
    run = importer.convert_tree(tree, original, 256, {"checkpoint": "<tree>", "config": "-"})
    summary = json.loads((importer.write_run(run, tmp_path / "run") / "model_summary.json")
                         .read_text())
    assert summary["total"] == run.summary["total"] == FULL_COUNTS[agent]


# case: (checkpoint's agent, config's agent, edit of the tree, edit of the config, error)
EDITS: dict[str, tuple[str, str, Callable | None, Callable | None, str]] = {
    "another agent": ("gc_ddpm_bc", "gc_bc", None, None,
                      r"holds a gc_ddpm_bc network, but the config's agent is 'gc_bc'"),
    "filters mismatch": (
        "gc_bc", "gc_bc", None, lambda c: c["encoder_kwargs"].update(num_filters=16),
        r"state/params/modules_actor/encoder/encoder/conv_init/kernel: expected float "
        r"\(7, 7, 8, 16\), found float32 \(7, 7, 8, 8\)"),
    "score blocks mismatch": (
        "gc_ddpm_bc", "gc_ddpm_bc", None,
        lambda c: c["agent_kwargs"]["score_network_kwargs"].update(num_blocks=2),
        r"missing leaves 6: state/params/modules_actor/reverse_network/MLPResNetBlock_1/"),
    "extra leaf": ("gc_bc", "gc_bc",
                   in_every_weight_tree(lambda a: a.update(extra={"kernel": np.zeros(3)})), None,
                   r"unexpected leaves 1: state/params/modules_actor/extra/kernel \(3,\)"),
    "missing leaf": ("gc_bc", "gc_bc",
                     in_every_weight_tree(lambda a: a["network"]["Dense_2"].pop("bias")), None,
                     r"missing leaves 1: state/params/modules_actor/network/Dense_2/bias \(256,\)"),
    "integer weights": (
        "gc_bc", "gc_bc", lambda t: actor(t)["Dense_0"].update(bias=np.zeros(7, np.int32)), None,
        r"modules_actor/Dense_0/bias: expected float \(7,\), found int32"),
    "target differs": (
        "gc_bc", "gc_bc", lambda t: actor(t, "target_params")["Dense_0"].pop("bias"), None,
        r"state/target_params does not mirror state/params: missing "
        r"state/target_params/modules_actor/Dense_0/bias"),
    "unknown state key": ("bc", "bc", lambda t: t["state"].update(ema=np.zeros(1)), None,
                          r"unexpected \['state/ema'\]"),
    "unsupported agent": ("gc_bc", "gc_bc", None, lambda c: c.update(agent="gc_iql"),
                          r"config agent 'gc_iql' is not supported"),
    "unknown config key": ("gc_bc", "gc_bc", None,
                           lambda c: c["encoder_kwargs"].update(use_film=True),
                           r"encoder_kwargs: unsupported entries \['use_film'\]"),
}
FILES: dict[str, tuple[bytes | None, str]] = {  # bytes of the checkpoint file (None: none)
    "truncated": ((FIXTURES / "gc_bc" / "checkpoint_3" / "checkpoint").read_bytes()[:3_000_000],
                  r"checkpoint_3: file ends inside an array \(truncated\?\)"),
    "json, not msgpack": (b'{"state": {}}', r"checkpoint_3: not a flax msgpack checkpoint"),
    "empty": (b"", r"checkpoint_3: empty file"),
    "no checkpoint file": (None, r"no 'checkpoint' file in this directory"),
}


def assert_refused(tmp_path: Path, checkpoint: Path, config: Path, message: str) -> None:
    with pytest.raises(JaxImportError, match=message):
        importer.import_checkpoint(checkpoint, config, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]  # no run, no temp dir


@pytest.mark.parametrize("case", EDITS)
def test_bad_checkpoints_and_configs_are_refused_clearly(case: str, tmp_path: Path) -> None:
    tree_agent, config_agent, edit_tree, edit_config, message = EDITS[case]
    (tmp_path / "inputs").mkdir()
    checkpoint, config = checkpoint_dir(tree_agent), config_path(config_agent)
    if edit_tree is not None:
        checkpoint = flax_trees.rewrite_checkpoint(
            checkpoint / "checkpoint", tmp_path / "inputs" / "checkpoint_3", edit_tree)
    if edit_config is not None:
        config = flax_trees.rewrite_config(config, tmp_path / "inputs", edit_config)
    assert_refused(tmp_path, checkpoint, config, message)


@pytest.mark.parametrize("case", FILES)
def test_files_that_are_no_checkpoint_are_refused_clearly(case: str, tmp_path: Path) -> None:
    content, message = FILES[case]
    checkpoint = tmp_path / "inputs" / "checkpoint_3"
    (tmp_path / "inputs").mkdir()
    if content is None:
        checkpoint.mkdir()
    else:
        checkpoint.write_bytes(content)
    assert_refused(tmp_path, checkpoint, config_path("gc_bc"), message)


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full_disk = mock.Mock(side_effect=OSError("No space left on device"))
    monkeypatch.setattr("bridge_torch.train.checkpoint.save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        importer.import_checkpoint(checkpoint_dir("bc"), config_path("bc"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    with pytest.raises(JaxImportError, match="already exists"):
        importer.import_checkpoint(checkpoint_dir("bc"), config_path("bc"), tmp_path / "out")


def test_cli_imports_a_checkpoint_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = Path(sys.executable).parent / "bridge-torch-import-jax"
    out = tmp_path / "run"
    result = subprocess.run([str(script), str(checkpoint_dir("gc_bc") / "checkpoint"),
                             "--config", str(config_path("gc_bc")), "--out", str(out),
                             "--im_size", "96"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"run_dir: {out}"
    assert load(out / "ckpt_3.pt")["agent_shapes"]["image_size"] == 96
    again = ["--config", str(config_path("gc_bc")), "--out", str(tmp_path / "again")]
    assert cli.main([str(tmp_path), *again]) == 1  # a folder without a checkpoint file
    assert "error:" in capsys.readouterr().err and not (tmp_path / "again").exists()


def test_an_imported_policy_fine_tunes_with_init_from(runs: dict[str, Path],
                                                      converted_tree: Path,
                                                      tmp_path: Path) -> None:
    """bridge-torch-train ... init_from=<imported run>: the imported weights, a fresh optimizer,
    the original's normalisation; the first warmup step (lr 0) leaves the weights as imported."""
    imported = load(runs["gc_bc"] / "ckpt_3.pt")
    result = subprocess.run(
        [sys.executable, "-m", "bridge_torch.train", "algo=gc_bc",
         f"data_path={converted_tree}", f"save_dir={tmp_path}", f"init_from={runs['gc_bc']}",
         "encoder.num_filters=8", "num_steps=1", "batch_size=4", "val_batch_size=4",
         "device=cpu", "scheduler.warmup_steps=5"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    tuned = load(run_dir / "ckpt_1.pt")
    assert tuned["stats"] == imported["stats"]
    for name, tensor in imported["model"].items():
        torch.testing.assert_close(tuned["model"][name], tensor, rtol=0, atol=0, msg=name)
