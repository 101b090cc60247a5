"""Periodic closed-loop evaluation inside a training run: ``sim/*`` metrics from the live agent.

The agent (the EMA copy when the run keeps one) is wrapped as a policy with the run's statistics,
evaluated on ``sim_eval`` held-out episodes and put back in its previous train/eval mode.
"""

import logging
from typing import Any

from torch import nn

from bridge_torch.deploy.policy import BatchedPolicy
from bridge_torch.sim.closed_loop import SimEvalSettings, evaluate_policy
from bridge_torch.sim.collect import recorded_camera
from bridge_torch.sim.env import CameraConfig, import_metaworld
from bridge_torch.train.config import TrainConfig

log = logging.getLogger(__name__)


def sim_eval_settings(config: TrainConfig) -> SimEvalSettings | None:
    """The run's closed-loop settings, resolved at start-up (None when sim_eval is off).

    Fails here, not at the first evaluation, when the sim extra is missing. The camera is the one
    the training data was collected with when ``camera_from_data`` and ``collect`` recorded it;
    otherwise the configured one, with a warning when that differs from the recorded camera.
    """
    cfg = config.sim_eval
    if not cfg.interval:
        return None
    import_metaworld()
    recorded = recorded_camera(config.data_path)
    camera = CameraConfig(cfg.camera, cfg.camera_position, cfg.render_size)
    if recorded is not None and cfg.camera_from_data:
        camera = recorded
    elif recorded is not None and recorded != camera:
        log.warning("sim_eval renders with %s but %s was collected with %s: the policy will see "
                    "another view (sim_eval.camera_from_data=true uses the recorded camera)",
                    camera, config.data_path, recorded)
    return SimEvalSettings(tuple(cfg.tasks), cfg.episodes, cfg.seed, cfg.max_steps, camera,
                           videos_per_task=0)


def sim_eval_metrics(agent: nn.Module, stats: dict[str, Any], config: TrainConfig,
                     settings: SimEvalSettings) -> dict[str, float]:
    """``sim/success_rate``, ``sim/mean_steps_to_success`` and ``sim/<task>/success_rate``."""
    was_training = agent.training
    try:
        policy = BatchedPolicy(agent, stats=stats,
                               normalization_type=config.data.sample.normalization_type,
                               seed=config.seed)
        report = evaluate_policy(policy, settings, progress=False)
    finally:
        agent.train(was_training)
    overall = report["overall"]
    metrics = {"sim/success_rate": overall["success_rate"]}
    if overall["mean_steps_to_success"] is not None:
        metrics["sim/mean_steps_to_success"] = overall["mean_steps_to_success"]
    for task, row in report["tasks"].items():
        metrics[f"sim/{task}/success_rate"] = row["success_rate"]
    return metrics
