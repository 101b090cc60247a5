"""The training configuration: one typed, validated dataclass tree mapped onto Hydra's YAML.

``TrainConfig`` is registered in Hydra's ConfigStore as ``train_schema``; ``conf/config.yaml``
lists it first in its defaults, so every YAML file and every command-line override is checked
against these types (unknown keys and wrong types fail at composition), and each dataclass's
``__post_init__`` checks values when the composed config becomes a ``TrainConfig``.
Defaults are the JAX ``train_config.py`` values (docs/semantics.md, 'Training defaults') unless
a comment says why.
The model, encoder, saliency and data sections are the owners' dataclasses (``DataConfig``
composes data/'s load and sample settings with the augmentation: train/data_config.py).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bridge_torch.data.config_migration import migrate_config, rewrite_overrides
from bridge_torch.data.rlds_stream import RldsStreamConfig
from bridge_torch.data.task_selection import check_tasks, task_patterns
from bridge_torch.models.resnet import EncoderConfig
from bridge_torch.models.saliency import SaliencyConfig
from bridge_torch.train.config_checks import (
    apply_resume_overrides,
    check_finite,
    derive_loading,
    refuse_resolvers,
    refuse_unknown_keys,
    typed_model_config,
)
from bridge_torch.train.data_config import DataConfig

log = logging.getLogger(__name__)
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class BridgeDataConfig:
    """Which task directories under ``data_path`` to train on (docs/semantics.md, 'Task
    selection')."""

    # list of sub-datasets, each a list of glob patterns relative to data_path ("**" = any depth);
    # default: every task directory holding a train split (the `all_local` preset)
    include: list[list[str]] = field(default_factory=lambda: [["**"]])
    # fnmatch patterns of task directories to drop (JAX default [])
    exclude: list[str] = field(default_factory=list)
    # one weight per include entry, summing to 1; None = uniform over sub-datasets (JAX default)
    sample_weights: Optional[list[float]] = None
    # task directory names (fnmatch patterns allowed), each found at any depth under data_path;
    # when set, they form ONE sub-dataset in place of `include` (bridgedata.tasks=[a,b])
    tasks: Optional[list[str]] = None

    def __post_init__(self) -> None:
        if not self.include or any(not patterns for patterns in self.include):
            raise ValueError(f"bridgedata.include needs non-empty pattern lists, got "
                             f"{self.include}")
        check_tasks(self.tasks, self.include)
        if self.sample_weights is not None:
            weights = list(self.sample_weights)
            if len(weights) != len(self.sub_datasets()):
                raise ValueError(
                    f"bridgedata.sample_weights has {len(weights)} entries but there are "
                    f"{len(self.sub_datasets())} sub-datasets"
                )
            if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
                raise ValueError(
                    f"bridgedata.sample_weights must be >= 0 and sum to 1, got {weights}"
                )

    def sub_datasets(self) -> list[list[str]]:
        """The glob patterns of each sub-dataset: ``tasks`` when set, else ``include``."""
        return task_patterns(self.tasks) if self.tasks is not None else self.include


@dataclass
class OptimizerConfig:
    name: str = "adam"  # "adam" (JAX) | "adamw"
    lr: float = 3e-4  # peak learning rate (JAX 3e-4)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # (b1, b2), JAX optax
    eps: float = 1e-8  # JAX optax default
    weight_decay: float = 0.0  # JAX: none
    max_grad_norm: Optional[float] = None  # global-norm clipping; None = off (JAX: none)

    def __post_init__(self) -> None:
        if self.name not in ("adam", "adamw"):
            raise ValueError(f"optimizer.name must be 'adam' or 'adamw', got {self.name!r}")
        if self.lr <= 0 or self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("optimizer.lr and optimizer.eps must be > 0, weight_decay >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optimizer.betas must be two values in [0, 1), got {self.betas}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(
                f"optimizer.max_grad_norm must be > 0 or null, got {self.max_grad_norm}"
            )


@dataclass
class SchedulerConfig:
    """Linear warmup from 0, then cosine to 0 at ``decay_steps`` (warmup included), or constant."""

    type: str = "cosine"  # "cosine" (JAX warmup_cosine_decay_schedule) | "constant" after warmup
    warmup_steps: int = 2000  # updates of linear warmup from lr 0 (JAX 2000)
    decay_steps: int = 2_000_000  # update at which the cosine reaches 0, warmup included (JAX 2e6)

    def __post_init__(self) -> None:
        if self.type not in ("cosine", "constant"):
            raise ValueError(f"scheduler.type must be 'cosine' or 'constant', got {self.type!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"scheduler.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.type == "cosine" and self.decay_steps < self.warmup_steps:
            raise ValueError(
                f"scheduler.decay_steps ({self.decay_steps}) includes the warmup and must be >= "
                f"warmup_steps ({self.warmup_steps})"
            )


@dataclass
class DDPConfig:
    """DistributedDataParallel settings; DDP is on whenever torchrun starts more than one rank."""

    find_unused_parameters: bool = False  # True only if some parameters get no gradient
    timeout_s: float = 1800.0  # collective timeout in seconds (torch default 30 min)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"ddp.timeout_s must be > 0, got {self.timeout_s}")


@dataclass
class AMPConfig:
    """Autocast of the forward/loss; the grad scaler is always in the step, enabled for fp16."""

    enabled: Optional[bool] = None  # None = on for CUDA, off on CPU; true also allows CPU autocast
    dtype: str = "bfloat16"  # "bfloat16" | "float16" (float16 turns the GradScaler on)
    init_scale: float = 65536.0  # GradScaler initial loss scale (torch default 2**16)
    growth_factor: float = 2.0  # GradScaler (earlier port's default)
    backoff_factor: float = 0.5  # GradScaler
    growth_interval: int = 2000  # GradScaler: finite steps before the scale grows
    tf32: bool = True  # CUDA only: TF32 matmuls/convolutions for the float32 parts (Ampere+)

    def __post_init__(self) -> None:
        if self.dtype not in AMP_DTYPES:
            raise ValueError(f"amp.dtype must be one of {sorted(AMP_DTYPES)}, got {self.dtype!r}")
        if self.init_scale <= 0 or self.growth_factor <= 1 or not 0 < self.backoff_factor < 1:
            raise ValueError("amp needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1")
        if self.growth_interval < 1:
            raise ValueError(f"amp.growth_interval must be >= 1, got {self.growth_interval}")


@dataclass
class CompileConfig:
    """``torch.compile`` of the agent (before DDP); off by default (JAX has no such step)."""

    enabled: bool = False
    backend: str = "inductor"  # torch.compile backend ("inductor", "aot_eager", "eager")
    mode: str = "default"  # "default" | "reduce-overhead" | "max-autotune"
    dynamic: bool = False  # shapes are fixed: batch size and image size never change
    fullgraph: bool = False


@dataclass
class EMAConfig:
    """Moving average of the weights, used for validation sampling and saved in checkpoints."""

    enabled: bool = False  # the gc_ddpm_bc preset turns it on (its JAX target network)
    rate: float = 0.002  # ema <- rate*params + (1-rate)*ema per update (JAX target_update_rate)

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"ema.rate must be in (0, 1], got {self.rate}")


@dataclass
class WandbConfig:
    # "online" | "offline" | "disabled"; the first two need pip install bridge-torch[wandb]
    mode: str = "disabled"
    project: str = "bridgedata_torch"  # the earlier port's project name
    entity: Optional[str] = None  # W&B team/user; None = your default
    group: Optional[str] = None  # groups runs in the W&B UI (e.g. one sweep)
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"wandb.mode must be one of {WANDB_MODES}, got {self.mode!r}")


@dataclass
class SimEvalConfig:
    """Closed-loop success on Meta-World during training (``bridge_torch.sim``, the sim extra)."""

    interval: int = 0  # updates between sim evaluations (and after the last); 0 = off
    tasks: list[str] = field(default_factory=list)  # Meta-World tasks, e.g. [reach-v3, push-v3]
    episodes: int = 2  # held-out episodes per task
    seed: int = 1000  # first held-out episode seed (bridge-torch-sim collect starts at 0)
    max_steps: int = 200  # policy steps per episode before it counts as a failure
    # The policy must see the view it was trained on: by default the camera that
    # bridge-torch-sim collect recorded for data_path; the three fields below apply when
    # camera_from_data is false or the data has no collect manifest.
    camera_from_data: bool = True
    camera: str = "corner2"
    camera_position: Optional[list[float]] = field(default_factory=lambda: [0.75, 0.075, 0.7])
    render_size: int = 128  # rendered frame side in pixels (resized to the model's input)

    def __post_init__(self) -> None:
        if self.interval < 0:
            raise ValueError(f"sim_eval.interval must be >= 0 (0 = off), got {self.interval}")
        if self.interval and not self.tasks:
            raise ValueError("sim_eval.interval > 0 needs sim_eval.tasks, e.g. [reach-v3]")
        for key in ("episodes", "max_steps", "render_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"sim_eval.{key} must be >= 1, got {getattr(self, key)}")
        if self.camera_position is not None and len(self.camera_position) != 3:
            raise ValueError(f"sim_eval.camera_position must be [x, y, z] or null, got "
                             f"{self.camera_position}")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved resolved in the run directory and every checkpoint."""

    name: str = ""  # run name, prefix of the run directory; "" = the algo name
    data_path: str = MISSING  # root of the task directories (out.npy / packed), or a TFDS dir
    save_dir: str = "runs"  # runs go to <save_dir>/bridgedata_torch/<name>_<timestamp>/
    algo: str = "gc_bc"  # agent: "bc" | "gc_bc" | "gc_ddpm_bc" (set by the algo preset)
    batch_size: int = 256  # GLOBAL training batch, split evenly across DDP ranks (JAX 256)
    val_batch_size: int = 256  # global validation batch
    num_steps: int = 2_000_000  # optimizer updates (JAX 2e6)
    log_interval: int = 100  # updates between training/* log events (JAX 100)
    eval_interval: int = 5000  # updates between validation passes; also after the last (JAX 5000)
    eval_batches: Optional[int] = None  # validation batches per pass; None = full pass (JAX)
    save_interval: int = 5000  # updates between checkpoints; also after the last (JAX 5000)
    keep_last: Optional[int] = None  # keep the K newest checkpoints; None = all (JAX keeps all)
    # non-finite (NaN/inf) updates to skip, not apply, in the whole run before it stops; 0 = stop
    # at the first (JAX trains on)
    skip_nonfinite_updates: int = 0
    seed: int = 42  # seeds torch, numpy, random, the sampler and the augmenter (JAX 42)
    device: str = "auto"  # "auto" (CUDA if available, else CPU) | "cpu" | "cuda" | "cuda:N"
    resume: Optional[str] = None  # a run directory: continue it exactly from its latest checkpoint
    init_from: Optional[str] = None  # run dir or ckpt_<step>.pt: fine-tune from its weights
    bridgedata: BridgeDataConfig = field(default_factory=BridgeDataConfig)
    # the agent's own settings, validated by its config dataclass (``agents.AGENTS[algo]``)
    model: Any = field(default_factory=dict)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    saliency: SaliencyConfig = field(default_factory=SaliencyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rlds: RldsStreamConfig = field(default_factory=RldsStreamConfig)  # data_path = a TFDS dir
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    amp: AMPConfig = field(default_factory=AMPConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sim_eval: SimEvalConfig = field(default_factory=SimEvalConfig)

    def __post_init__(self) -> None:
        self.model = typed_model_config(self.algo, self.model)
        check_finite(self)
        derive_loading(self.algo, self.model, self.saliency, self.data.load)
        positive = ("batch_size", "val_batch_size", "num_steps", "log_interval", "eval_interval",
                    "save_interval")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ValueError(
                f"eval_batches must be >= 1, or null for a full validation pass; got "
                f"{self.eval_batches}"
            )
        if self.init_from is not None and self.resume is not None:
            raise ValueError("init_from and resume exclude each other: resume continues a run, "
                             "init_from starts a new one from its weights")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or null (keep all), got {self.keep_last}")
        if self.skip_nonfinite_updates < 0:
            raise ValueError(f"skip_nonfinite_updates must be >= 0, got "
                             f"{self.skip_nonfinite_updates}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as error:
                raise ValueError(f"device {self.device!r} is not a torch device: {error}") from None

    @property
    def run_name(self) -> str:
        return self.name or self.algo


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore so conf/config.yaml can start its defaults with it.

    The ``model`` section stays open to Hydra: which keys it may hold depends on ``algo``, and
    ``typed_model_config`` checks them against that agent's config once the algo is known.
    """
    schema = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(schema.model, False)
    ConfigStore.instance().store(name="train_schema", node=schema)


def to_container(config: TrainConfig) -> dict:
    """The config as plain dicts/lists/scalars (for config.json, checkpoints and W&B)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)


def to_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config), resolve=True)


def _read_saved(path: Path) -> DictConfig:
    """A saved config.yaml merged onto the schema; an unknown key, a wrong type or a resolver
    interpolation names the file."""
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        refuse_resolvers(raw, source=str(path))
        return OmegaConf.merge(OmegaConf.structured(TrainConfig),
                               migrate_config(raw, source=str(path)))
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ValueError(f"{path} is not a valid bridge-torch config: {err}") from err


def load_config(path: Path) -> TrainConfig:
    """Read a saved config.yaml back into a validated ``TrainConfig``."""
    return OmegaConf.to_object(_read_saved(path))


def config_from_container(saved: dict, *, source: str) -> TrainConfig:
    """A config saved as plain containers (a checkpoint's) as a validated ``TrainConfig``."""
    refuse_resolvers(saved, source=source)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig),
                                                   migrate_config(saved, source=source)))
    except (OmegaConfBaseException, ValueError) as err:
        raise ValueError(f"{source} is not a valid bridge-torch config: {err}") from err


def resolve_config(cfg: DictConfig, overrides: list[str]) -> TrainConfig:
    """Validate a composed config; on ``resume=<run dir>`` start from the run's own config.

    A resumed run keeps everything it was started with (its saved config.yaml); the resume
    command's plain ``key=value`` overrides apply on top (e.g. ``num_steps=``), and a config group
    override must name the run's own choice (``config_checks.apply_resume_overrides``).
    """
    if cfg.resume is None:
        refuse_unknown_keys(cfg)
        return OmegaConf.to_object(cfg)
    run_dir = Path(cfg.resume).expanduser().resolve()
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"resume={cfg.resume}: no config.yaml in {run_dir}; not a run directory")
    saved = _read_saved(run_dir / "config.yaml")
    saved.data.load.allow_pickle = None  # opt-ins: per command, never inherited
    saved.data.load.allow_image_mismatch = False
    apply_resume_overrides(saved, OverridesParser.create().parse_overrides(overrides),
                           _compose)
    saved.resume = str(run_dir)
    return OmegaConf.to_object(saved)


def _compose(overrides: list[str]) -> DictConfig:
    """conf/config.yaml composed with ``overrides``, inside a running Hydra app or not."""
    if GlobalHydra.instance().is_initialized():
        return compose(config_name="config", overrides=overrides)
    with initialize_config_module(config_module="bridge_torch.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def compose_config(overrides: Optional[list[str]] = None) -> TrainConfig:
    """Compose conf/config.yaml with command-line style overrides, without running Hydra's app.

    For tests, notebooks and the demo: ``compose_config(["algo=bc", "data_path=/data"])``. The
    flat data spellings are rewritten first, as on the command line.
    """
    overrides, notices = rewrite_overrides(list(overrides or []))
    for notice in dict.fromkeys(notices):
        log.warning(notice)
    register_configs()
    return resolve_config(_compose(overrides), overrides)
