"""Batched image augmentation: the op table, the PyTorch ops and the accelerated kernels."""

from bridge_torch.data.augment.augmenter import Augmenter
from bridge_torch.data.augment.ops import AugmentConfig

__all__ = ["AugmentConfig", "Augmenter"]
