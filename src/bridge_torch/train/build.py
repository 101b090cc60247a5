"""Everything a run is built from before its first update: the per-rank data streams, the agent,
EMA, optimizer, schedule and grad scaler (restored on resume, or initialised from another run's
weights with ``init_from``), and the agent wrapped for the step (compile, DDP)."""

from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bridge_torch.agents import build_agent
from bridge_torch.data.augment import Augmenter
from bridge_torch.data.sampler import TransitionSampler
from bridge_torch.train.config import AMP_DTYPES, TrainConfig
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.ema import EMA
from bridge_torch.train.init_from import InitialWeights, apply_initial
from bridge_torch.train.nonfinite import NonFiniteGuard
from bridge_torch.train.optim import build_optimizer, build_scheduler
from bridge_torch.train.run_data import RunData
from bridge_torch.train.state import TrainState, restore_training_state, seed_everything

# Offsets of seed + rank for each random stream. Two generators seeded alike draw the same
# uniforms, which would tie, e.g., each sample's crop to its transition index.
SAMPLER_STREAM, AUGMENT_STREAM, NOISE_STREAM = 0, 1_000_000, 2_000_000


def build_training_state(
    config: TrainConfig, data: RunData, info: DistInfo, device: torch.device,
    resumed: dict | None, source: Path | None = None, initial: InitialWeights | None = None,
) -> tuple[TrainState, int]:
    """Agent, EMA, optimizer, schedule, scaler and data streams; restored when resuming.

    Returns:
        The state with ``model`` = the agent compiled and/or DDP-wrapped, and the first step.
    """
    stream_seed = config.seed + info.rank  # every rank draws its own batches and noise
    sampler = TransitionSampler(data.train, config.data.sample, seed=stream_seed + SAMPLER_STREAM,
                                sample_weights=config.bridgedata.sample_weights)
    augmenter = Augmenter(config.data.augment, seed=stream_seed + AUGMENT_STREAM)
    seed_everything(config.seed)  # the same initial weights on every rank
    agent = build_agent(
        config.algo, config.model, config.encoder, config.saliency, data.agent_shapes
    ).to(device)
    ema = EMA(agent, config.ema.rate) if config.ema.enabled else None
    if initial is not None:
        apply_initial(initial, agent, ema)
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
    start_step = 0
    if resumed is not None:
        start_step = restore_training_state(state, resumed, info, device, str(source))
    state.guard = NonFiniteGuard(config.skip_nonfinite_updates, device, step=start_step,
                                 skipped=int(resumed.get("nonfinite_skipped", 0)) if resumed else 0)
    state.model = wrap_model(agent, config, info, device)
    return state, start_step


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
