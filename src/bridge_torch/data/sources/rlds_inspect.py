"""``bridge-torch-inspect`` on a TFDS/RLDS release: episodes, steps, cameras, languages, stats.

Counts are what the converter would produce (an episode of T steps is T-1 transitions; episodes
under 2 steps are counted as skipped); statistics cover the state, the stored actions and the
relabelled actions of those transitions. Only the preview decodes images (three per row).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from bridge_torch.data.actions import compute_statistics, relabel_actions
from bridge_torch.data.sources import rlds
from bridge_torch.data.sources.tfds import FeatureSpec, open_tfds
from bridge_torch.data.sources.tfrecord import Feature


class LazyFrames(Sequence):
    """One camera's frames of an episode, decoded only when indexed (for the preview)."""

    def __init__(self, images: list[bytes], spec: FeatureSpec, where: str) -> None:
        self.images, self.spec, self.where = images, spec, where

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return np.asarray(rlds.decode_image(self.images[index], self.spec, self.where))


def _cameras(variant: rlds.Variant, features: dict[str, Feature]) -> list[str]:
    """The release's names of the cameras this episode recorded."""
    return [key.rsplit("/", 1)[-1] for camera, key in variant.cameras.items()
            if rlds.recorded(features, variant, camera)]


def scan_rlds(source: Any, k: int, tally: Any, picker: Any) -> None:
    """Add one split of a TFDS directory (``source.path``, ``source.split``) to ``tally``."""
    dataset = open_tfds(source.path)
    variant = rlds.detect_variant(dataset)
    main = dataset.features[next(iter(variant.cameras.values()))]
    picks = set(picker.indices(k, dataset.num_episodes(source.split)))
    position = 0
    for shard in dataset.splits[source.split]:
        for index, _, features in rlds.shard_examples(shard):
            where = f"{shard.path.name} record {index}"
            position += 1
            try:
                steps = rlds.episode_length(features, variant, where)
                actions, state = rlds.actions_and_state(dataset, variant, features, steps, where)
                text = rlds.language(dataset, variant, features, steps, where)
            except rlds.SkipEpisode:
                tally.skipped += 1
                continue
            tally.add_trajectories(source, [steps - 1], [text], _cameras(variant, features),
                                   main.shape[:2])
            for key, values in (("actions", actions[:-1]), ("proprio", state),
                                ("actions_relabeled", relabel_actions(state, actions[:-1]))):
                tally.stats[key].append(compute_statistics(values))
            if position - 1 in picks:
                picker.add(LazyFrames(features[main.key].values, main, where), text,
                           source.task)
