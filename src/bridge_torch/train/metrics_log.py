"""The run directory's records: its unique name, its small files, and the metrics stream.

Every log event becomes one JSON line in ``metrics.jsonl`` (always written, rank 0 only) with the
update ``step`` and keys prefixed by their split (``training/loss``, ``validation/mse``), and goes
to W&B when ``wandb.mode`` is not "disabled". W&B is an optional extra, imported only when used.
"""

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bridge_torch.atomic import write_text_atomic
from bridge_torch.train.config import WandbConfig
from bridge_torch.train.distributed import DistInfo, all_reduce_sum
from bridge_torch.train.runs import METRICS_FILE

log = logging.getLogger(__name__)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All log events of a run, in order.

    A line that is not a whole event (a write cut short by a crash or power loss, which can also
    leave NUL bytes) is dropped with a warning naming the file and line: one torn line must not
    make the run's history, and so its resume, unreadable.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    events = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("step"), int):
            log.warning("%s line %d is not a complete event (a write cut short?): dropped",
                        path, number)
            continue
        events.append(event)
    return events


class MetricsLogger:
    """Appends log events to metrics.jsonl and, if configured, to W&B; a no-op unless enabled.

    Only rank 0 is enabled: the metrics it logs are already reduced over ranks.
    """

    def __init__(
        self,
        run_dir: Path,
        wandb_cfg: WandbConfig,
        *,
        enabled: bool,
        config: dict[str, Any],
        resume_step: int | None = None,
    ) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None
        self._wandb_run = None
        if not enabled:
            return
        if resume_step is not None:
            self._truncate_after(resume_step)
        self._file = open(self.path, "a")  # noqa: SIM115 - kept open for the run, closed in close()
        if wandb_cfg.mode != "disabled":
            self._wandb_run = _init_wandb(Path(run_dir), wandb_cfg, config)

    def _truncate_after(self, step: int) -> None:
        """Drop events logged after the checkpoint we resume from: they will be logged again."""
        kept = [event for event in read_metrics(self.path.parent) if event["step"] <= step]
        write_text_atomic(self.path, "".join(json.dumps(event) + "\n" for event in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._wandb_run is not None:
            self._log_figures()
            self._wandb_run.finish()

    def _log_figures(self) -> None:
        """The run's loss curves, the same figure ``bridge-torch-eval --loss-plot`` draws."""
        import wandb  # present: the run was started with it

        from bridge_torch.plots import loss_figure, to_image

        events = read_metrics(self.path.parent)
        if events:
            figure = loss_figure({self.path.parent.name: events}, title=self.path.parent.name)
            self._wandb_run.log({"figures/loss_curves": wandb.Image(to_image(figure))})


@dataclass
class LogWindow:
    """Host-side timing of the updates since the last log event (no device sync per step)."""

    started: float
    steps: int = 0
    data_s: float = 0.0
    update_s: float = 0.0

    def add(self, data_s: float, update_s: float) -> None:
        self.steps += 1
        self.data_s += data_s
        self.update_s += update_s


def reduce_log_metrics(
    metrics: dict[str, torch.Tensor], lr: float, window: LogWindow, global_batch: int,
    info: DistInfo,
) -> dict[str, float]:
    """Mean of the last update's metrics over ranks, plus LR and throughput (log steps only).

    ``tolist()`` is the window's single host-device sync; after it the wall time is exact, while
    the data/update split is host-side (CUDA kernels may still run after their launch returns).
    """
    names = sorted(metrics)
    values = torch.stack([metrics[name].detach().float() for name in names])
    values = all_reduce_sum(values, info) / info.world_size
    logged = {f"training/{name}": value for name, value in zip(names, values.tolist(), strict=True)}
    elapsed = time.perf_counter() - window.started
    logged["training/lr"] = lr
    logged["timer/samples_per_s"] = global_batch * window.steps / max(elapsed, 1e-9)
    logged["timer/data_s"] = window.data_s / window.steps
    logged["timer/update_s"] = window.update_s / window.steps
    return logged


def _init_wandb(run_dir: Path, cfg: WandbConfig, config: dict[str, Any]) -> Any:
    """Start (or, for a resumed run, continue) the W&B run whose id is the run directory name."""
    try:
        import wandb
    except ImportError:
        raise ImportError(
            f"wandb.mode={cfg.mode!r} needs the W&B client: pip install bridge-torch[wandb] "
            "(or set wandb.mode=disabled)"
        ) from None
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        tags=list(cfg.tags),
        id=run_dir.name,
        name=run_dir.name,
        dir=str(run_dir),
        mode=cfg.mode,
        config=config,
        resume="allow",
    )
