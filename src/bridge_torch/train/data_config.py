"""The run config's data section: ``DataConfig``.

It composes what is loaded (``load``) and how samples are drawn (``sample``) - both owned by the
data package, which never imports train/ - with the augmentation (``augment``). The flat
spellings earlier versions used (``data.obs_horizon``) are read by ``data/config_migration.py``.
"""

from dataclasses import dataclass, field

from bridge_torch.data.augment import AugmentConfig
from bridge_torch.data.config import LoadConfig, SampleConfig


@dataclass
class DataConfig:
    """What is loaded, how samples are drawn from it, and the augmentation of training batches.

    What is loaded besides images and actions follows the agent (``Agent.declared_inputs``):
    ``load.load_goals`` and ``load.load_saliency`` are filled in from it, and setting either to a
    value the agent contradicts is an error.
    """

    load: LoadConfig = field(  # load_goals / load_saliency null: derived from the agent
        default_factory=lambda: LoadConfig(load_goals=None, load_saliency=None))
    sample: SampleConfig = field(default_factory=SampleConfig)
    # what the original draws, per sample (docs/semantics.md, 'Augmentation')
    augment: AugmentConfig = field(default_factory=AugmentConfig)
