"""Non-finite training: a NaN or inf loss or gradient is never applied, and the run stops.

What happens to such an update: ``train_step`` skips it (the optimizer does not step) and hands
the verdict to :class:`NonFiniteGuard`, which counts it. Up to ``skip_nonfinite_updates`` of them
are tolerated in a whole run (default 0); the one beyond stops the run with a
:class:`NonFiniteTraining` error naming its step and its loss terms — always before the next
checkpoint or evaluation, so no checkpoint of a diverged run is ever written.

No host sync per step (CUDA): reading a device flag on the host (``bool(t)``, ``.item()``) waits
for every queued kernel and starves the GPU. The verdict therefore stays on the device: the
update is masked there (the fused optimizer's ``found_inf`` input, the mechanism the GradScaler
uses), and the counters below are updated with device ops only. The host reads them in
:meth:`NonFiniteGuard.check`, which the loop calls only where it synchronises anyway — on log
steps and before every checkpoint and evaluation — and after every step on the CPU, where a read
costs nothing.
"""

import torch

from bridge_torch.train.distributed import DistInfo, all_reduce_max


class NonFiniteTraining(FloatingPointError):
    """An update had a non-finite loss or gradient beyond ``skip_nonfinite_updates``."""


class NonFiniteGuard:
    """Device-side record of non-finite updates: how many, and the one that broke the budget."""

    def __init__(self, budget: int, device: torch.device, *, skipped: int = 0,
                 step: int = 0) -> None:
        self.budget = budget  # non-finite updates the run may skip (skip_nonfinite_updates)
        self.step = step  # updates recorded so far, the loop's step count
        self.skipped = torch.tensor(skipped, device=device)  # non-finite updates so far
        self.fatal_step = torch.tensor(-1, device=device)  # the update beyond the budget
        self.fatal_values: torch.Tensor | None = None  # its metrics, in ``names`` order
        self.names: list[str] = []
        self.reported = skipped  # the count the loop last logged

    def record(self, fault: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
        """Count one update; ``fault`` (0-dim bool) says it was non-finite and not applied.

        Device ops only: the budget comparison and the copy of the metrics happen under
        ``torch.where``, never on the host.
        """
        self.step += 1
        if not self.names:
            self.names = sorted(metrics)
        values = torch.stack([metrics[name].detach().float() for name in self.names])
        if self.fatal_values is None:
            self.fatal_values = torch.zeros_like(values)
        fatal = fault & (self.skipped == self.budget)
        self.fatal_step = torch.where(fatal, self.step, self.fatal_step)
        self.fatal_values = torch.where(fatal, values, self.fatal_values)
        self.skipped += fault

    def check(self, info: DistInfo) -> int:
        """Read the counters (one small host sync, agreed over ranks); return the number of
        skipped updates.

        Raises:
            NonFiniteTraining: an update beyond the budget was non-finite (on any rank).
        """
        local = torch.stack([self.skipped, self.fatal_step])
        skipped, fatal_step = all_reduce_max(local.clone(), info).tolist()
        if fatal_step < 0:
            return skipped
        if int(local[1]) == fatal_step and self.fatal_values is not None:
            values = self.fatal_values.tolist()
            terms = ", ".join(f"{n}={v:.6g}" for n, v in zip(self.names, values, strict=True))
        else:
            terms = "on another rank: see its log"
        allowed = (f"the {self.budget} non-finite updates skip_nonfinite_updates allows were "
                   "already skipped" if self.budget else "skip_nonfinite_updates=N would skip "
                   "up to N such updates instead")
        raise NonFiniteTraining(
            f"step {fatal_step}: the loss or a gradient is NaN or infinite ({terms}); the update "
            f"was not applied and training stops before writing a checkpoint ({allowed}). Look "
            "for bad data or a too-high learning rate"
        )
