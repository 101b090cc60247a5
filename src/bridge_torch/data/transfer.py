"""Host -> device copies that do not make the host wait for the device."""

import torch


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``. Host tensors go to CUDA from pinned memory with ``non_blocking``, so
    the copy queues behind the device's work; a copy from pageable memory would first wait for
    the device to finish it (a host sync per batch)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    return x.to(device)
