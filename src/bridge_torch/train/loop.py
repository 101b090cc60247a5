"""Train BC / GC-BC / GC-DDPM-BC on BridgeData: the ``bridge-torch-train`` Hydra app.

    bridge-torch-train data_path=/data/bridge algo=gc_bc            # one process (CPU or 1 GPU)
    bridge-torch-train -m algo=bc,gc_bc seed=1,2,3 data_path=...    # Hydra multirun, sequential
    torchrun --nproc_per_node 8 -m bridge_torch.train data_path=...  # DDP on one node
    torchrun --nnodes 2 --node_rank R --master_addr HOST --master_port 29500 \\
        --nproc_per_node 8 -m bridge_torch.train data_path=...       # DDP on two nodes
    bridge-torch-train resume=<run dir> num_steps=400000            # continue a run exactly

``python -m bridge_torch.train`` is the same app. Settings: conf/config.yaml and the dataclasses in
config.py (``bridge-torch-train --cfg job`` prints the composed config). The run directory
``<save_dir>/bridgedata_torch/<name>_<timestamp>_<suffix>/`` receives config.yaml/json, stats.json,
model_summary.json, metrics.jsonl, ckpt_<step>.pt, status.json and the lock its process holds
(``train/runs.py``); its path is the last line of stdout.
"""

import logging
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from bridge_torch import port_compat
from bridge_torch.agents import count_parameters
from bridge_torch.batch import ACTIONS
from bridge_torch.cli_errors import (
    FAILURE_STATUS,
    USAGE_STATUS,
    carry_errors,
    dataclass_keys,
    fail,
    run_hydra_app,
)
from bridge_torch.cpu_threads import configure_cpu_threads
from bridge_torch.data.sampler import iterate_validation
from bridge_torch.train import distributed, runs
from bridge_torch.train.build import (
    autocast_dtype,
    build_training_state,
    configure_backends,
    split_batch,
)
from bridge_torch.train.config import (
    TrainConfig,
    register_configs,
    resolve_config,
    to_container,
)
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.init_from import load_initial
from bridge_torch.train.metrics_log import LogWindow, MetricsLogger, reduce_log_metrics
from bridge_torch.train.nonfinite import NonFiniteGuard
from bridge_torch.train.run_data import DataLayout, RunData, load_run_data
from bridge_torch.train.state import (
    TrainState,
    prepare_run_dir,
    save_training_state,
    write_run_files,
)
from bridge_torch.train.termination import EXIT_STATUS, Terminated, sigterm_unwinds
from bridge_torch.train.validation import evaluate

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One run's fixed context: what the loop reads at every step besides the training state."""

    config: TrainConfig
    info: DistInfo
    device: torch.device
    run_dir: Path
    batch_per_rank: int
    amp_dtype: torch.dtype | None
    sim_eval: Callable[[nn.Module, dict], dict] | None  # (agent, stats) -> sim/* metrics
    data: RunData | None = None
    state: TrainState | None = None
    summary: dict | None = None
    start_step: int = 0


def train(config: TrainConfig) -> Path:
    """Run (or resume) one training run; return its run directory."""
    info = distributed.read_env()
    if not info.is_main:
        logging.getLogger("bridge_torch").setLevel(logging.WARNING)  # one rank speaks
    device = distributed.resolve_device(config.device, info)
    distributed.init_process_group(info, device, config.ddp.timeout_s)
    batch_per_rank = split_batch(config.batch_size, info)  # config errors before any directory
    amp_dtype, sim_eval = autocast_dtype(config, device), closed_loop_evaluator(config)
    configure_backends(config, device)
    with sigterm_unwinds():
        try:
            run_dir, lock = prepare_run_dir(config, info)
            run = Run(config, info, device, run_dir, batch_per_rank, amp_dtype, sim_eval)
            status = runs.StatusRecorder(run_dir, enabled=info.is_main)
            with lock or nullcontext(), status:  # the status is final before the lock goes
                start_run(run, status)
                fit(run, status)
        finally:
            distributed.destroy_process_group()
    if info.is_main:
        report_artefacts(run_dir)
    return run_dir


def start_run(run: Run, status: runs.StatusRecorder) -> None:
    """Data, agent, optimizer/EMA (restored from the newest loadable checkpoint on resume)."""
    config, info = run.config, run.info
    source, resumed = runs.load_latest(run.run_dir) if config.resume else (None, None)
    initial = load_initial(config.init_from, config.algo) if config.init_from else None
    stats = resumed["stats"] if resumed else initial.stats if initial else None
    layout = DataLayout.of_checkpoint(resumed, str(source)) if resumed else None
    run.data = load_run_data(config, run.device, stats=stats, expected=layout)
    run.state, run.start_step = build_training_state(config, run.data, info, run.device,
                                                     resumed, source=source, initial=initial)
    run.summary = count_parameters(run.state.agent)
    status.step = run.start_step
    status.checkpoint = run.start_step if resumed else None
    if info.is_main:
        write_run_files(run.run_dir, config, run.data.stats, run.summary)
        status.update()
        log.info("run %s from step %d on %s (world size %d)%s", run.run_dir, run.start_step,
                 run.device, info.world_size, f", resumed from {source}" if source else "")


def fit(run: Run, status: runs.StatusRecorder) -> None:
    """The update loop, from ``run.start_step`` to ``num_steps``."""
    config, state, info = run.config, run.state, run.info
    logger = MetricsLogger(run.run_dir, config.wandb, enabled=info.is_main,
                           config=to_container(config),
                           resume_step=run.start_step if config.resume else None)
    progress = tqdm(total=config.num_steps, initial=run.start_step, disable=not info.is_main,
                    desc=run.run_dir.name, dynamic_ncols=True)
    window = LogWindow(time.perf_counter())
    try:
        for step in range(run.start_step, config.num_steps):
            started = time.perf_counter()
            batch = state.augmenter(state.sampler.sample(run.batch_per_rank))
            fetched = time.perf_counter()
            lr = state.scheduler.get_last_lr()[0]  # the LR this update uses (JAX logs the same)
            metrics = train_step(state, batch, run.amp_dtype, config.optimizer.max_grad_norm)
            window.add(fetched - started, time.perf_counter() - fetched)
            status.step = done = step + 1
            progress.update(1)
            if done % config.log_interval == 0 or done == config.num_steps:
                logged = reduce_log_metrics(metrics, lr, window, config.batch_size, info)
                logger.log(done, logged)
                progress.set_postfix(loss=f"{logged['training/loss']:.4f}")
            after_update(run, done, logger, status)
            if done % config.log_interval == 0:
                window = LogWindow(time.perf_counter())  # checkpoint/eval time is not training
    except RuntimeError as err:  # a rank died: say so, not just a backend error from a collective
        failure = distributed.peer_failure(err, info, status.step)
        if failure is None:
            raise
        raise failure from err
    finally:  # ---- close (also on errors and Ctrl-C) -----------------------------------------
        progress.close()
        logger.close()
        state.model = state.agent  # release the DDP wrapper before its process group goes


def after_update(run: Run, done: int, logger: MetricsLogger,
                 status: runs.StatusRecorder) -> None:
    """Check for non-finite updates, then checkpoint and evaluate when due."""
    config, info = run.config, run.info
    last = done == config.num_steps
    saving = done % config.save_interval == 0 or last
    evaluating = run.data.val is not None and (done % config.eval_interval == 0 or last)
    sim_due = run.sim_eval is not None and (done % config.sim_eval.interval == 0 or last)
    # The guard's counters live on the device; reading them is a host sync, so on CUDA it happens
    # only where the loop syncs anyway (log steps, whose metrics were just read) and before
    # anything that would use the weights; on the CPU a read is free, so after every update.
    # The same condition on every rank: the check agrees over ranks with a collective.
    if (run.device.type == "cpu" or done % config.log_interval == 0 or last or saving
            or evaluating or sim_due):
        check_nonfinite(run.state.guard, done, info)
    if saving:
        save_training_state(run.state, run.run_dir, done, config, run.data, run.summary, info)
        status.checkpoint = done
        status.update()
    if evaluating:
        validate(run, done, logger)
    if sim_due and info.is_main:  # closed loop, main rank only (one renderer)
        eval_agent = run.state.ema.module if run.state.ema is not None else run.state.agent
        logger.log(done, run.sim_eval(eval_agent, run.data.stats))


def check_nonfinite(guard: NonFiniteGuard, done: int, info: DistInfo) -> None:
    """Stop on a non-finite update beyond the budget; log when more were skipped."""
    skipped = guard.check(info)
    if skipped > guard.reported:
        log.warning("step %d: %d non-finite update(s) skipped so far (skip_nonfinite_updates=%d)",
                    done, skipped, guard.budget)
        guard.reported = skipped


def validate(run: Run, done: int, logger: MetricsLogger) -> None:
    """A validation pass with the EMA (or trained) weights: logged, and one line on the console."""
    config, state = run.config, run.state
    eval_agent = state.ema.module if state.ema is not None else state.agent
    batches = iterate_validation(run.data.val, config.data.sample, config.val_batch_size,
                                 seed=config.seed, max_batches=config.eval_batches)
    metrics = evaluate(eval_agent, batches, seed=config.seed, info=run.info,
                       amp_dtype=run.amp_dtype)
    logger.log(done, {f"validation/{k}": v for k, v in metrics.items()})
    shown = [f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.endswith("loss") or k == "mse"]
    if shown:
        log.info("step %d validation: %s", done, ", ".join(shown))


def closed_loop_evaluator(config: TrainConfig) -> Callable[[nn.Module, dict], dict] | None:
    """``(agent, stats) -> sim/* metrics`` on Meta-World, resolved at start-up (a missing extra
    fails here), or None: ``sim`` is imported only when ``sim_eval.interval > 0``."""
    if not config.sim_eval.interval:
        return None
    from bridge_torch.sim.training import sim_eval_metrics, sim_eval_settings

    settings = sim_eval_settings(config)
    return lambda agent, stats: sim_eval_metrics(agent, stats, config, settings)


def report_artefacts(run_dir: Path) -> None:
    """Name every file the run wrote, so nobody has to guess where its outputs went."""
    checkpoints = [p.name for p in runs.list_checkpoints(run_dir)]
    listing = {
        "checkpoints": ", ".join(checkpoints) if checkpoints else "none",
        "metrics": runs.METRICS_FILE,
        "config": f"{runs.CONFIG_YAML}, {runs.CONFIG_JSON}",
        "statistics": runs.STATS_FILE,
        "parameters": runs.SUMMARY_FILE,
        "status": runs.STATUS_FILE,
    }
    log.info("run directory %s:\n%s", run_dir,
             "\n".join(f"  {name:12s} {files}" for name, files in listing.items()))


def train_step(
    state: TrainState, batch: dict, amp_dtype: torch.dtype | None, max_grad_norm: float | None
) -> dict[str, torch.Tensor]:
    """One optimizer update, skipped if non-finite; returns detached 0-dim metric tensors
    (``grad_norm``: before clipping), with no host sync of its own on CUDA (only the float16
    GradScaler reads its overflow flag on the host, with a non-fused optimizer).

    Order matters: autocast wraps only the forward/loss (backward and the optimizer step run
    outside it); the forward goes THROUGH ``state.model`` — the compiled / DDP-wrapped agent —
    because DDP all-reduces gradients only for its own forward (calling the inner module would
    leave the ranks unsynchronised); gradients are unscaled before the norm and the clip so both
    see true values.
    """
    device_type = batch[ACTIONS].device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss, metrics = state.model(batch)  # Agent.forward == Agent.loss
    state.optimizer.zero_grad(set_to_none=True)
    loss_ok = torch.isfinite(loss.detach())
    # x1 keeps every value bit-identical; xinf makes every gradient non-finite, on every rank
    # once DDP has all-reduced them, so all ranks skip that update alike (see apply_update).
    state.scaler.scale(loss * torch.where(loss_ok, 1.0, math.inf)).backward()
    state.scaler.unscale_(state.optimizer)  # a no-op unless the float16 scaler is on
    params = list(state.agent.parameters())
    if max_grad_norm is not None:
        grad_norm = nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        grad_norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    metrics = {"loss": loss.detach(), **metrics, "grad_norm": grad_norm.detach()}
    fault = apply_update(state, grad_norm, loss_ok)
    state.scaler.update()
    state.scheduler.step()  # per update: the LR is a function of the update index
    if state.ema is not None:
        state.ema.update(state.agent)  # after a skipped update it moves toward unchanged weights
    if state.guard is not None:
        state.guard.record(fault, metrics)
    return metrics


def apply_update(state: TrainState, grad_norm: torch.Tensor,
                 loss_ok: torch.Tensor) -> torch.Tensor:
    """Step the optimizer unless the update is non-finite; return that verdict (0-dim bool).

    float16: the GradScaler skips updates whose gradients overflowed — routine for a loss scale,
    not a fault — so only a non-finite loss counts. Otherwise a non-finite gradient norm is the
    fault (a non-finite loss on any rank implies one, see train_step). A fused optimizer (CUDA)
    takes the verdict as its ``found_inf`` input, as from the GradScaler, and masks the update on
    the device: no host sync. Others are skipped by a host read, free on the CPU.
    """
    if state.scaler.is_enabled():
        state.scaler.step(state.optimizer)
        return ~loss_ok
    fault = ~torch.isfinite(grad_norm)
    if getattr(state.optimizer, "_step_supports_amp_scaling", False):
        state.optimizer.found_inf = fault.float()
        try:
            state.optimizer.step()
        finally:
            del state.optimizer.found_inf
    elif not fault.item():
        state.optimizer.step()
    return fault


@hydra.main(version_base="1.3", config_path="pkg://bridge_torch.conf", config_name="config")
def hydra_main(cfg: DictConfig) -> None:
    """Hydra's job: validate the composed config, train, print the run directory last."""
    with carry_errors(USAGE_STATUS):
        config = resolve_config(cfg, list(HydraConfig.get().overrides.task))
    configure_cpu_threads(config.device)
    with carry_errors(FAILURE_STATUS):
        run_dir = train(config)
    if distributed.read_env().is_main:
        print(f"run_dir: {run_dir}", flush=True)


def main() -> None:
    """Console entry point (``bridge-torch-train``): register the schema, hand over to Hydra;
    a user error ends it with one ``error:`` line (``HYDRA_FULL_ERROR=1``: the traceback)."""
    register_configs()
    sys.argv[1:] = port_compat.translate_train_argv(sys.argv[1:])  # the earlier port's spellings
    try:
        run_hydra_app(hydra_main, "bridge-torch-train", dataclass_keys(TrainConfig))
    except Terminated as stop:
        fail("bridge-torch-train", f"{stop}; the run can continue with resume=<run dir>",
             EXIT_STATUS)


if __name__ == "__main__":
    main()
