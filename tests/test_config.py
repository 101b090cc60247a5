"""Hydra config: presets compose onto the typed schema; bad keys, types, values fail clearly."""

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from bridge_torch.train.config import (
    BridgeDataConfig,
    TrainConfig,
    compose_config,
    load_config,
    resolve_config,
    to_container,
    to_yaml,
)


def test_default_composition_is_the_jax_gc_bc_config():
    config = compose_config(["data_path=/data"])
    assert isinstance(config, TrainConfig)
    assert config.algo == "gc_bc"
    assert (config.batch_size, config.num_steps, config.seed) == (256, 2_000_000, 42)
    assert (config.log_interval, config.eval_interval, config.save_interval) == (100, 5000, 5000)
    assert config.eval_batches is None and config.keep_last is None
    assert config.optimizer.name == "adam" and config.optimizer.lr == 3e-4
    assert config.optimizer.max_grad_norm is None and config.optimizer.weight_decay == 0.0
    assert (config.scheduler.type, config.scheduler.warmup_steps, config.scheduler.decay_steps) \
        == ("cosine", 2000, 2_000_000)
    assert config.encoder.name == "resnetv1-34-bridge"
    assert config.encoder.pooling_method == "avg" and config.encoder.act == "swish"
    assert config.encoder.add_spatial_coordinates
    assert config.model.hidden_dims == [256, 256, 256] and config.model.dropout_rate == 0.1
    assert config.model.fixed_std == [1.0] * 7 and config.model.early_goal_concat
    assert config.bridgedata.include == [["**"]]  # all_local
    assert config.wandb.mode == "disabled" and config.wandb.project == "bridgedata_torch"
    assert config.amp.enabled is None and config.amp.dtype == "bfloat16"
    assert not config.compile.enabled and not config.ema.enabled


def test_algo_presets():
    bc = compose_config(["data_path=/d", "algo=bc"])
    assert bc.algo == "bc" and not bc.data.load.load_goals and not bc.ema.enabled
    ddpm = compose_config(["data_path=/d", "algo=gc_ddpm_bc"])
    assert ddpm.algo == "gc_ddpm_bc"
    assert ddpm.ema.enabled and ddpm.ema.rate == 0.002
    assert (ddpm.model.time_dim, ddpm.model.num_blocks, ddpm.model.diffusion_steps) == (32, 3, 20)
    assert ddpm.model.beta_schedule == "cosine" and ddpm.model.clip_sampler
    assert (ddpm.data.sample.obs_horizon, ddpm.data.sample.act_pred_horizon) == (1, 1)
    assert ddpm.data.load.load_goals


def test_bridgedata_preset_and_overrides():
    config = compose_config(["data_path=/d", "bridgedata=bridge_v2_all", "batch_size=32",
                             "optimizer.max_grad_norm=1.0", "eval_batches=5"])
    assert len(config.bridgedata.include) == 1 and "scripted/?*" in config.bridgedata.include[0]
    assert config.batch_size == 32 and config.optimizer.max_grad_norm == 1.0
    assert config.eval_batches == 5


def test_saliency_switch_turns_on_target_loading():
    config = compose_config(["data_path=/d", "saliency.enabled=true", "saliency.alpha=0.5"])
    assert config.data.load.load_saliency and config.data.sample.saliency_alpha == 0.5
    with pytest.raises(ValueError, match="load_saliency"):
        compose_config(["data_path=/d", "saliency.enabled=true", "data.load_saliency=false"])


@pytest.mark.parametrize(
    "override, error, message",
    [
        ("foo=1", ConfigCompositionException, "Could not override 'foo'"),
        ("model.widths=[1]", ValueError, "model.widths"),  # checked by the agent's config
        ("batch_size=abc", ConfigCompositionException, "batch_size=abc"),
        ("algo=ppo", Exception, "Could not find 'algo/ppo'"),
        ("batch_size=0", ValueError, "batch_size must be >= 1"),
        ("eval_batches=0", ValueError, "null for a full validation pass"),
        ("scheduler.type=linear", ValueError, "scheduler.type"),
        ("wandb.mode=cloud", ValueError, "wandb.mode"),
        ("amp.dtype=float8", ValueError, "amp.dtype"),
        ("device=tpu9", ValueError, "not a torch device"),
        ("bridgedata.sample_weights=[0.3]", ValueError, "sample_weights"),
        ("encoder.name=resnet-9000", ValueError, "encoder.name"),
    ],
)
def test_bad_overrides_fail_with_clear_errors(override, error, message):
    with pytest.raises(error) as info:
        compose_config(["data_path=/d", override])
    text = str(info.value) + str(info.value.__cause__ or "")
    assert message in text


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["data_path=/d", "batch_size=abc"])
    assert "could not be converted to Integer" in str(info.value.__cause__)


def test_data_path_is_mandatory():
    with pytest.raises(MissingMandatoryValue, match="data_path"):
        compose_config([])


def test_yaml_and_json_round_trip(tmp_path):
    config = compose_config(["data_path=/d", "algo=gc_ddpm_bc", "bridgedata.exclude=[x*]"])
    (tmp_path / "config.yaml").write_text(to_yaml(config))
    assert load_config(tmp_path / "config.yaml") == config
    plain = to_container(config)
    assert plain["ema"]["enabled"] is True and plain["bridgedata"]["exclude"] == ["x*"]


def test_resume_starts_from_the_saved_config(tmp_path):
    saved = compose_config(["data_path=/d", "algo=bc", "batch_size=16", "num_steps=10"])
    (tmp_path / "config.yaml").write_text(to_yaml(saved))
    resumed = compose_config([f"resume={tmp_path}", "num_steps=20"])
    assert resumed.algo == "bc" and resumed.batch_size == 16  # from the run, not the defaults
    assert resumed.num_steps == 20 and resumed.resume == str(tmp_path.resolve())
    with pytest.raises(ValueError, match="config group override 'algo=gc_bc'"):
        compose_config([f"resume={tmp_path}", "algo=gc_bc"])
    with pytest.raises(ValueError, match="not a run directory"):
        compose_config([f"resume={tmp_path / 'nowhere'}"])


def test_resolve_config_validates_a_dictconfig():
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"data_path": "/d", "algo": "bc"})
    assert resolve_config(cfg, []).algo == "bc"
    cfg.batch_size = -4
    with pytest.raises(ValueError, match="batch_size"):
        resolve_config(cfg, [])


def test_bridgedata_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        BridgeDataConfig(include=[["a"], ["b"]], sample_weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="non-empty"):
        BridgeDataConfig(include=[[]])
    assert BridgeDataConfig(include=[["a"], ["b"]], sample_weights=[0.25, 0.75]).sample_weights


@pytest.mark.slow
def test_cli_rejects_unknown_keys_and_bad_values():
    """The real console script: composition errors and value errors exit non-zero, clearly."""
    for override, message in (("foo=1", "unknown key foo"),
                              ("keep_last=0", "keep_last must be >= 1")):
        result = subprocess.run(
            [sys.executable, "-m", "bridge_torch.train", "data_path=/nonexistent", override],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode != 0
        assert message in result.stdout + result.stderr
