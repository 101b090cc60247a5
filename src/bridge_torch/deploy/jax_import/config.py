"""The original JAX training config (the JSON next to a released checkpoint) -> our config.

The result is a plain dict keyed by ``TrainConfig``'s own section names (``algo``, ``model``,
``encoder``, ``data``, ``ema``, ...), so it can be merged onto the schema, printed as overrides
or kept when the dataclasses move. Architecture keys are required and checked: a key we would
have to guess, or one we do not model, is an error rather than a silently different network.
Training-only keys (learning rate, warmup, EMA rate, ...) are carried over where we have an
equivalent, so a run's config records them.
"""

import json
import re
from pathlib import Path
from typing import Any

from bridge_torch.deploy.jax_import.errors import JaxImportError

SUPPORTED_AGENTS = ("bc", "gc_bc", "gc_ddpm_bc")
JAX_ENCODERS = ("resnetv1-18-bridge", "resnetv1-34-bridge", "resnetv1-50-bridge")
IMAGE_SIZE_IN_NAME = re.compile(r"_(\d+)_config\.json$")  # e.g. gc_bc_128_config.json
# agent_kwargs that only affect training, or that we ignore on purpose (hidden_dim: the original
# never passes it to its score network, whose width is fixed and read from the kernels instead)
TRAINING_ONLY = {"learning_rate", "warmup_steps", "decay_steps", "actor_decay_steps",
                 "target_update_rate", "action_samples", "dropout_target_networks"}
BC_KEYS = {"network_kwargs", "policy_kwargs", "use_proprio"}
GOAL_KEYS = {"early_goal_concat", "shared_goal_encoder"}
DDPM_KEYS = {"score_network_kwargs", "use_proprio", "diffusion_steps", "beta_schedule",
             "repeat_last_step"}
NETWORK_KEYS = {"hidden_dims", "dropout_rate", "use_layer_norm"}
POLICY_KEYS = {"fixed_std", "tanh_squash_distribution", "state_dependent_std"}
SCORE_KEYS = {"time_dim", "num_blocks", "dropout_rate", "use_layer_norm", "hidden_dim"}
ENCODER_KEYS = {"num_filters", "pooling_method", "add_spatial_coordinates", "act",
                "softmax_temperature"}
JAX_SCORE_WIDTH = 256  # the original's built-in MLPResNet width


def load(path: Path) -> dict[str, Any]:
    """Parse the config JSON; any problem names the file."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise JaxImportError(f"{path}: cannot read the JAX config JSON ({err})") from None
    if not isinstance(config, dict):
        raise JaxImportError(f"{path}: the JAX config JSON must hold an object")
    return config


def image_size(config_path: Path, im_size: int | None) -> int:
    """``im_size`` if given, else the size in the config's name (it is not in the JSON)."""
    if im_size is not None:
        if im_size < 1:
            raise JaxImportError(f"im_size must be >= 1, got {im_size}")
        return im_size
    match = IMAGE_SIZE_IN_NAME.search(Path(config_path).name)
    if match is None:
        raise JaxImportError(f"{config_path}: the image size is not in the JSON and the name is "
                             "not <name>_<size>_config.json; pass --im_size")
    return int(match.group(1))


def _section(config: dict, key: str, allowed: set[str]) -> dict[str, Any]:
    """``config[key]`` as a dict whose keys are all in ``allowed``."""
    value = config.get(key)
    if not isinstance(value, dict):
        raise JaxImportError(f"config key {key!r} must be an object, found {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise JaxImportError(f"config key {key}: unsupported entries {unknown} "
                             f"(the importer knows {sorted(allowed)})")
    return value


def _required(section: dict, key: str, where: str) -> Any:
    if key not in section:
        raise JaxImportError(f"config lacks {where}.{key}, which the architecture depends on")
    return section[key]


def agent_name(config: dict) -> str:
    """The ``agent`` of the JSON, if the importer supports it."""
    agent = config.get("agent")
    if agent not in SUPPORTED_AGENTS:
        raise JaxImportError(f"config agent {agent!r} is not supported; the importer handles "
                             f"{list(SUPPORTED_AGENTS)}")
    return agent


def encoder_section(config: dict) -> dict[str, Any]:
    """``encoder`` / ``encoder_kwargs`` -> our ``encoder`` section."""
    name = config.get("encoder")
    if name not in JAX_ENCODERS:
        raise JaxImportError(f"config encoder {name!r} is not supported; the importer handles "
                             f"{list(JAX_ENCODERS)}")
    kwargs = _section(config, "encoder_kwargs", ENCODER_KEYS)
    section = {"name": name, "num_filters": int(kwargs.get("num_filters", 64))}
    for key in ("pooling_method", "add_spatial_coordinates", "act"):
        section[key] = _required(kwargs, key, "encoder_kwargs")
    if "softmax_temperature" in kwargs:  # spatial_softmax only; recorded either way
        section["softmax_temperature"] = float(kwargs["softmax_temperature"])
    learned = kwargs.get("softmax_temperature", 1.0) == -1
    if section["pooling_method"] == "spatial_softmax" and learned:
        raise JaxImportError("encoder_kwargs.softmax_temperature -1 (a learned temperature) "
                             "is not supported by the importer")
    return section


def _policy_model(agent_kwargs: dict) -> dict[str, Any]:
    """bc / gc_bc: the MLP and Gaussian head settings."""
    network = _section(agent_kwargs, "network_kwargs", NETWORK_KEYS)
    policy = _section(agent_kwargs, "policy_kwargs", POLICY_KEYS)
    fixed_std = policy.get("fixed_std")
    model = {
        "hidden_dims": [int(w) for w in _required(network, "hidden_dims", "network_kwargs")],
        "dropout_rate": float(network.get("dropout_rate") or 0.0),
        "use_layer_norm": bool(network.get("use_layer_norm", False)),
        "fixed_std": None if fixed_std is None else [float(s) for s in fixed_std],
        "tanh_squash_distribution": bool(policy.get("tanh_squash_distribution", False)),
        "state_dependent_std": bool(policy.get("state_dependent_std", False)),
    }
    if fixed_std is None:
        model["state_dependent_std"] = bool(_required(policy, "state_dependent_std",
                                                      "policy_kwargs"))
    return model


def _ddpm_model(agent_kwargs: dict) -> dict[str, Any]:
    """gc_ddpm_bc: score network and diffusion settings; the width is the original's 256."""
    score = _section(agent_kwargs, "score_network_kwargs", SCORE_KEYS)
    where = "score_network_kwargs"
    return {
        "time_dim": int(_required(score, "time_dim", where)),
        "num_blocks": int(_required(score, "num_blocks", where)),
        "dropout_rate": float(_required(score, "dropout_rate", where) or 0.0),
        "score_layer_norm": bool(_required(score, "use_layer_norm", where)),
        "score_width": JAX_SCORE_WIDTH,
        "diffusion_steps": int(_required(agent_kwargs, "diffusion_steps", "agent_kwargs")),
        "beta_schedule": str(_required(agent_kwargs, "beta_schedule", "agent_kwargs")),
        "repeat_last_step": int(agent_kwargs.get("repeat_last_step", 0)),
    }


def model_section(config: dict, agent: str) -> dict[str, Any]:
    """``agent_kwargs`` -> our ``model`` section."""
    allowed = TRAINING_ONLY | (DDPM_KEYS if agent == "gc_ddpm_bc" else BC_KEYS)
    if agent != "bc":
        allowed |= GOAL_KEYS
    agent_kwargs = _section(config, "agent_kwargs", allowed)
    model = _ddpm_model(agent_kwargs) if agent == "gc_ddpm_bc" else _policy_model(agent_kwargs)
    model["use_proprio"] = bool(_required(agent_kwargs, "use_proprio", "agent_kwargs"))
    if agent != "bc":
        model["early_goal_concat"] = bool(_required(agent_kwargs, "early_goal_concat",
                                                    "agent_kwargs"))
        model["shared_goal_encoder"] = bool(_required(agent_kwargs, "shared_goal_encoder",
                                                      "agent_kwargs"))
        if not model["early_goal_concat"]:
            raise JaxImportError("agent_kwargs.early_goal_concat false (late goal fusion) is not "
                                 "supported by the importer")
    return model


def horizons(config: dict) -> tuple[int, int]:
    """(obs_horizon, act_pred_horizon); absent or null means single frames and actions."""
    dataset = config.get("dataset_kwargs") or {}
    return int(dataset.get("obs_horizon") or 1), int(dataset.get("act_pred_horizon") or 1)


def _data_section(config: dict, agent: str) -> dict[str, Any]:
    dataset = config.get("dataset_kwargs") or {}
    obs_horizon, act_pred_horizon = horizons(config)
    sample = {"obs_horizon": obs_horizon, "act_pred_horizon": act_pred_horizon,
              "normalization_type": "normal"}
    if "relabel_actions" in dataset:
        sample["relabel_actions"] = bool(dataset["relabel_actions"])
    if "goal_relabeling_strategy" in dataset:
        sample["goal_relabeling_strategy"] = dataset["goal_relabeling_strategy"]
    reached = (dataset.get("goal_relabeling_kwargs") or {}).get("reached_proportion")
    if reached is not None:
        sample["reached_proportion"] = float(reached)
    return {"load": {"load_goals": agent != "bc"}, "sample": sample}


def _training_sections(config: dict, agent: str) -> dict[str, Any]:
    """Optimizer, schedule, EMA and loop settings the original trained with."""
    agent_kwargs = config["agent_kwargs"]
    decay = agent_kwargs.get("actor_decay_steps" if agent == "gc_ddpm_bc" else "decay_steps")
    sections: dict[str, Any] = {
        "scheduler": {"type": "constant"} if decay is None else {"type": "cosine",
                                                                 "decay_steps": int(decay)},
        "ema": {"enabled": agent == "gc_ddpm_bc"},
        "optimizer": {},
    }
    if "warmup_steps" in agent_kwargs:
        sections["scheduler"]["warmup_steps"] = int(agent_kwargs["warmup_steps"])
    if "learning_rate" in agent_kwargs:
        sections["optimizer"]["lr"] = float(agent_kwargs["learning_rate"])
    if agent == "gc_ddpm_bc" and "target_update_rate" in agent_kwargs:
        sections["ema"]["rate"] = float(agent_kwargs["target_update_rate"])
    for key in ("seed", "batch_size", "num_steps", "log_interval", "eval_interval",
                "save_interval"):
        if config.get(key) is not None:
            sections[key] = int(config[key])
    return sections


def train_sections(config: dict) -> dict[str, Any]:
    """The whole mapping: a dict of ``TrainConfig`` sections (merge it onto the schema)."""
    agent = agent_name(config)
    sections = {
        "name": f"jax_{agent}",
        "data_path": "",  # the original read TFRecords; point a fine-tuning run at our data
        "algo": agent,
        "model": model_section(config, agent),
        "encoder": encoder_section(config),
        "data": _data_section(config, agent),
        **_training_sections(config, agent),
    }
    bridgedata = config.get("bridgedata_config") or {}
    if bridgedata.get("include"):
        sections["bridgedata"] = {key: bridgedata.get(key) for key in
                                  ("include", "exclude", "sample_weights") if key in bridgedata}
    return sections


def _metadata(config: dict, group: str) -> dict[str, list[float]]:
    """mean and std of one ``action_proprio_metadata`` entry (min/max there are placeholders)."""
    metadata = (config.get("bridgedata_config") or {}).get("action_proprio_metadata") or {}
    entry = metadata.get(group)
    if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
        raise JaxImportError(f"config lacks bridgedata_config.action_proprio_metadata.{group}"
                             ".mean/.std, the statistics the actions are normalised with")
    mean, std = [float(v) for v in entry["mean"]], [float(v) for v in entry["std"]]
    if len(mean) != len(std) or min(std) <= 0:
        raise JaxImportError(f"action_proprio_metadata.{group}: mean and std need the same "
                             f"length and std > 0, got {mean} and {std}")
    return {"mean": mean, "std": std}


def statistics(config: dict) -> dict[str, dict[str, list[float]]]:
    """Our ``stats.json``: the normalisation the original's eval scripts undo."""
    return {"actions": _metadata(config, "action"), "proprio": _metadata(config, "proprio")}


def agent_shapes(config: dict, size: int) -> dict[str, int]:
    """``build_agent``'s data arguments (saved in checkpoints as ``agent_shapes``)."""
    stats = statistics(config)
    obs_horizon, act_pred_horizon = horizons(config)
    return {"action_dim": len(stats["actions"]["mean"]),
            "proprio_dim": len(stats["proprio"]["mean"]), "obs_horizon": obs_horizon,
            "act_pred_horizon": act_pred_horizon, "image_size": size}
