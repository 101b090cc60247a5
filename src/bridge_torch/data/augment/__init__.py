"""Batched image augmentation: the op table, the PyTorch ops and the accelerated kernels."""

from bridge_torch.data.augment.augmenter import AugmentConfig, Augmenter

__all__ = ["AugmentConfig", "Augmenter"]
