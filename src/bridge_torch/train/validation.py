"""Validation passes: deterministic iteration over the val split, sharded over DDP ranks.

Every rank evaluates every ``world_size``-th batch and the per-rank sums are combined with one
object gather at the end, so no rank idles at a barrier while rank 0 evaluates alone (as in the
earlier port, where a long evaluation could exceed the collective timeout). Each batch's sampling
noise is seeded from the batch index, so the numbers do not depend on the number of ranks. The
pass runs inside ``torch.random.fork_rng``: noise drawn from the global RNG (e.g. the DDPM loss's
timesteps) never shifts the training streams, so a run resumed from a checkpoint taken before an
evaluation continues exactly as the uninterrupted run.
"""

from collections.abc import Iterator

import torch
from torch import nn

from bridge_torch.batch import ACTIONS
from bridge_torch.train.distributed import DistInfo, gather_objects


def evaluate(
    agent: nn.Module,
    batches: Iterator[dict],
    *,
    seed: int,
    info: DistInfo,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Average ``agent.validation_metrics`` over ``batches``, weighted by batch size.

    Args:
        agent: the raw agent or its EMA copy (not the compiled/DDP wrapper); put in eval mode
            for the pass (dropout off) and returned to its previous mode afterwards.
        batches: the validation batches, identical on every rank (each rank keeps its share).
        seed: base seed of the per-batch sampling generator.
        info: this rank's place in the job.
        amp_dtype: autocast dtype of the training forward, or None.
    Returns:
        {metric name: weighted mean over all ranks' samples}; {} when there were no batches.
    """
    was_training = agent.training
    agent.eval()
    sums: dict[str, torch.Tensor] = {}
    count = 0
    device = next(agent.parameters()).device
    generator = torch.Generator(device=device)
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked, device_type=device.type), torch.no_grad():
        for index, batch in enumerate(batches):
            if index % info.world_size != info.rank:
                continue
            generator.manual_seed(seed + index)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                metrics = agent.validation_metrics(batch, generator=generator)
            size = batch[ACTIONS].shape[0]
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value.detach().float() * size
            count += size
    agent.train(was_training)
    local = {name: value.item() for name, value in sums.items()}  # one host sync per pass
    totals: dict[str, float] = {}
    total_count = 0
    for rank_sums, rank_count in gather_objects((local, count), info):
        total_count += rank_count
        for name, value in rank_sums.items():
            totals[name] = totals.get(name, 0.0) + value
    return {name: value / total_count for name, value in totals.items()} if total_count else {}
