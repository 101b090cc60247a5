"""Periodic closed-loop evaluation inside a training run: ``sim/*`` metrics from the live agent.

The agent (the EMA copy when the run keeps one) is wrapped as a policy with the run's statistics,
evaluated on ``sim_eval`` held-out episodes and put back in its previous train/eval mode.
"""

import logging
from typing import Any

from torch import nn

from bridge_torch.config import SimEvalConfig, TrainConfig
from bridge_torch.policy import BatchedPolicy
from bridge_torch.sim.collect import recorded_camera
from bridge_torch.sim.env import CameraConfig, import_metaworld
from bridge_torch.sim.evaluate import SimEvalSettings, evaluate_policy

log = logging.getLogger(__name__)


def settings_from_config(cfg: SimEvalConfig) -> SimEvalSettings:
    position = None if cfg.camera_position is None else tuple(cfg.camera_position)
    return SimEvalSettings(tuple(cfg.tasks), cfg.episodes, cfg.seed, cfg.max_steps,
                           CameraConfig(cfg.camera, position, cfg.render_size),
                           videos_per_task=0)


def check_sim_eval(config: TrainConfig) -> None:
    """At start-up, not at the first evaluation: fail when sim_eval is on but the extra is not,
    and warn when sim_eval's camera is not the one the training data was collected with."""
    if not config.sim_eval.interval:
        return
    import_metaworld()
    recorded = recorded_camera(config.data_path)
    configured = settings_from_config(config.sim_eval).camera
    if recorded is not None and recorded != configured:
        log.warning("sim_eval renders with %s but %s was collected with %s: the policy will see "
                    "another view (set sim_eval.camera, camera_position and render_size)",
                    configured, config.data_path, recorded)


def sim_eval_metrics(agent: nn.Module, stats: dict[str, Any], config: TrainConfig
                     ) -> dict[str, float]:
    """``sim/success_rate``, ``sim/mean_steps_to_success`` and ``sim/<task>/success_rate``."""
    was_training = agent.training
    try:
        policy = BatchedPolicy(agent, stats=stats,
                               normalization_type=config.data.normalization_type,
                               image_size=agent.encoder.image_size,
                               obs_horizon=config.data.obs_horizon, seed=config.seed)
        report = evaluate_policy(policy, settings_from_config(config.sim_eval), progress=False)
    finally:
        agent.train(was_training)
    overall = report["overall"]
    metrics = {"sim/success_rate": overall["success_rate"]}
    if overall["mean_steps_to_success"] is not None:
        metrics["sim/mean_steps_to_success"] = overall["mean_steps_to_success"]
    for task, row in report["tasks"].items():
        metrics[f"sim/{task}/success_rate"] = row["success_rate"]
    return metrics
