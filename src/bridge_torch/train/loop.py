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
model_summary.json, metrics.jsonl and ckpt_<step>.pt; its path is the last line of stdout.
"""

import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from bridge_torch import port_compat
from bridge_torch.agents import build_agent, count_parameters
from bridge_torch.batch import ACTIONS
from bridge_torch.cli_errors import (
    FAILURE_STATUS,
    USAGE_STATUS,
    carry_errors,
    dataclass_keys,
    run_hydra_app,
)
from bridge_torch.cpu_threads import configure_cpu_threads
from bridge_torch.data.augment.augmenter import Augmenter
from bridge_torch.data.sampler import TransitionSampler, iterate_validation
from bridge_torch.sim.training import sim_eval_metrics, sim_eval_settings
from bridge_torch.train import checkpoint, distributed, runs
from bridge_torch.train.config import (
    AMP_DTYPES,
    TrainConfig,
    register_configs,
    resolve_config,
    to_container,
)
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.ema import EMA
from bridge_torch.train.metrics_log import LogWindow, MetricsLogger, reduce_log_metrics
from bridge_torch.train.optim import build_optimizer, build_scheduler
from bridge_torch.train.run_data import RunData, load_run_data
from bridge_torch.train.state import (
    TrainState,
    prepare_run_dir,
    restore_training_state,
    save_training_state,
    seed_everything,
    write_run_files,
)
from bridge_torch.train.validation import evaluate

log = logging.getLogger(__name__)
# Offsets of seed + rank for each random stream. Two generators seeded alike draw the same
# uniforms, which would tie, e.g., each sample's crop to its transition index.
SAMPLER_STREAM, AUGMENT_STREAM, NOISE_STREAM = 0, 1_000_000, 2_000_000


def train(config: TrainConfig) -> Path:
    """Run (or resume) one training run; return its run directory."""
    # ---- setup: who am I, which device, where does the run live ------------------------------
    info = distributed.read_env()
    if not info.is_main:
        logging.getLogger("bridge_torch").setLevel(logging.WARNING)  # one rank speaks
    device = distributed.resolve_device(config.device, info)
    distributed.init_process_group(info, device, config.ddp.timeout_s)
    batch_per_rank = split_batch(config.batch_size, info)
    amp_dtype = autocast_dtype(config, device)
    configure_backends(config, device)
    sim_settings = sim_eval_settings(config)
    run_dir = prepare_run_dir(config, info)
    resumed = checkpoint.load(runs.latest_checkpoint(run_dir)) if config.resume else None

    # ---- data, agent, optimizer/EMA: everything a checkpoint restores -----------------------
    data = load_run_data(config, device, stats=resumed["stats"] if resumed else None)
    state, start_step = build_training_state(config, data, info, device, resumed)
    summary = count_parameters(state.agent)
    if info.is_main:
        write_run_files(run_dir, config, data.stats, summary)
        log.info("run %s from step %d on %s (world size %d)", run_dir, start_step, device,
                 info.world_size)
    eval_agent = state.ema.module if state.ema is not None else state.agent

    # ---- loop ----------------------------------------------------------------------------------
    logger = MetricsLogger(run_dir, config.wandb, enabled=info.is_main,
                           config=to_container(config), resume_step=start_step if resumed else None)
    progress = tqdm(total=config.num_steps, initial=start_step, disable=not info.is_main,
                    desc=run_dir.name, dynamic_ncols=True)
    window = LogWindow(time.perf_counter())
    done = start_step  # updates completed (named when a lost rank stops the run)
    try:
        for step in range(start_step, config.num_steps):
            started = time.perf_counter()
            batch = state.augmenter(state.sampler.sample(batch_per_rank))
            fetched = time.perf_counter()
            lr = state.scheduler.get_last_lr()[0]  # the LR this update uses (JAX logs the same)
            metrics = train_step(state, batch, amp_dtype, config.optimizer.max_grad_norm)
            window.add(fetched - started, time.perf_counter() - fetched)
            done = step + 1
            progress.update(1)
            last = done == config.num_steps
            if done % config.log_interval == 0 or last:
                logged = reduce_log_metrics(metrics, lr, window, config.batch_size, info)
                logger.log(done, logged)
                progress.set_postfix(loss=f"{logged['training/loss']:.4f}")
            if done % config.save_interval == 0 or last:
                save_training_state(state, run_dir, done, config, data, summary, info)
            if data.val is not None and (done % config.eval_interval == 0 or last):
                batches = iterate_validation(data.val, config.data, config.val_batch_size,
                                             seed=config.seed, max_batches=config.eval_batches)
                val_metrics = evaluate(eval_agent, batches, seed=config.seed, info=info,
                                       amp_dtype=amp_dtype)
                logger.log(done, {f"validation/{k}": v for k, v in val_metrics.items()})
            sim_every = config.sim_eval.interval  # closed loop, main rank only (one renderer)
            if info.is_main and sim_settings is not None and (done % sim_every == 0 or last):
                logger.log(done, sim_eval_metrics(eval_agent, data.stats, config, sim_settings))
            if done % config.log_interval == 0:
                window = LogWindow(time.perf_counter())  # checkpoint/eval time is not training
    except RuntimeError as err:  # a rank died: say so, not just a backend error from a collective
        failure = distributed.peer_failure(err, info, done)
        if failure is None:
            raise
        raise failure from err
    finally:  # ---- close (also on errors and Ctrl-C) -----------------------------------------
        progress.close()
        logger.close()
        state.model = state.agent  # release the DDP wrapper before its process group goes
        distributed.destroy_process_group()
    return run_dir


def build_training_state(
    config: TrainConfig, data: RunData, info: DistInfo, device: torch.device,
    resumed: dict | None,
) -> tuple[TrainState, int]:
    """Agent, EMA, optimizer, schedule, scaler and data streams; restored when resuming.

    Returns:
        The state with ``model`` = the agent compiled and/or DDP-wrapped, and the first step.
    """
    stream_seed = config.seed + info.rank  # every rank draws its own batches and noise
    sampler = TransitionSampler(data.train, config.data, seed=stream_seed + SAMPLER_STREAM,
                                sample_weights=config.bridgedata.sample_weights)
    augmenter = Augmenter(config.data.augment, seed=stream_seed + AUGMENT_STREAM)
    seed_everything(config.seed)  # the same initial weights on every rank
    agent = build_agent(
        config.algo, config.model, config.encoder, config.saliency, data.agent_shapes
    ).to(device)
    ema = EMA(agent, config.ema.rate) if config.ema.enabled else None
    optimizer = build_optimizer(agent.parameters(), config.optimizer, device)
    scheduler = build_scheduler(optimizer, config.scheduler)
    # Always in the step; only enabled for float16, whose small gradients would underflow.
    scaler = torch.amp.GradScaler(
        device.type, enabled=autocast_dtype(config, device) == torch.float16,
        init_scale=config.amp.init_scale, growth_factor=config.amp.growth_factor,
        backoff_factor=config.amp.backoff_factor, growth_interval=config.amp.growth_interval,
    )
    state = TrainState(agent, agent, ema, optimizer, scheduler, scaler, sampler, augmenter)
    seed_everything(stream_seed + NOISE_STREAM)  # dropout and diffusion noise of this rank
    start_step = restore_training_state(state, resumed, info, device) if resumed else 0
    state.model = wrap_model(agent, config, info, device)
    return state, start_step


def train_step(
    state: TrainState, batch: dict, amp_dtype: torch.dtype | None, max_grad_norm: float | None
) -> dict[str, torch.Tensor]:
    """One optimizer update; returns detached 0-dim metric tensors, with no host sync of its
    own (only the float16 GradScaler reads its overflow flag on the host).

    Order matters: autocast wraps only the forward/loss (backward and the optimizer step run
    outside it); the forward goes THROUGH ``state.model`` — the compiled / DDP-wrapped agent —
    because DDP all-reduces gradients only for its own forward (calling the inner module would
    leave the ranks unsynchronised); gradients are unscaled before clipping so the threshold
    applies to true values.
    """
    device_type = batch[ACTIONS].device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss, metrics = state.model(batch)  # Agent.forward == Agent.loss
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    metrics = {"loss": loss.detach(), **metrics}
    if max_grad_norm is not None:
        state.scaler.unscale_(state.optimizer)
        metrics["grad_norm"] = nn.utils.clip_grad_norm_(state.agent.parameters(), max_grad_norm)
    state.scaler.step(state.optimizer)  # skipped if float16 gradients overflowed
    state.scaler.update()
    state.scheduler.step()  # per update: the LR is a function of the update index
    if state.ema is not None:
        state.ema.update(state.agent)
    return metrics


def split_batch(global_batch: int, info: DistInfo) -> int:
    """The per-rank share of the global batch (JAX shards its batch the same way)."""
    if global_batch % info.world_size:
        raise ValueError(
            f"batch_size={global_batch} is not divisible by the world size {info.world_size}"
        )
    return global_batch // info.world_size


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast dtype, or None for float32: AMP defaults to on for CUDA, off on CPU."""
    enabled = config.amp.enabled if config.amp.enabled is not None else device.type == "cuda"
    return AMP_DTYPES[config.amp.dtype] if enabled else None


def configure_backends(config: TrainConfig, device: torch.device) -> None:
    """Process-wide CUDA math settings of a run: TF32 for its float32 matmuls and convolutions
    (the JAX original's default precision on Ampere and later)."""
    if device.type == "cuda" and config.amp.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def wrap_model(
    agent: nn.Module, config: TrainConfig, info: DistInfo, device: torch.device
) -> nn.Module:
    """build -> to(device) -> compile -> DDP. The caller keeps ``agent`` (the raw module) for
    the EMA, checkpoints and validation, so no saved key ever carries a wrapper prefix."""
    model = agent
    if config.compile.enabled:
        model = torch.compile(
            model, backend=config.compile.backend, mode=config.compile.mode,
            dynamic=config.compile.dynamic, fullgraph=config.compile.fullgraph,
        )
    if info.is_distributed:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.ddp.find_unused_parameters,
            gradient_as_bucket_view=True,  # grads live in the all-reduce buckets: no copy
        )
    return model


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
    run_hydra_app(hydra_main, "bridge-torch-train", dataclass_keys(TrainConfig))


if __name__ == "__main__":
    main()
