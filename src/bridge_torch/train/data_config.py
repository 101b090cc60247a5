"""The run config's data section: ``DataConfig`` and the flat spellings of its keys.

``DataConfig`` composes what is loaded (``load``), how samples are drawn (``sample``) - both
owned by the data package, which never imports train/ - and the augmentation (``augment``).
Before, the keys of the first two sat directly under ``data`` (``data.obs_horizon``,
``data.camera``). Run directories, checkpoints, presets and shell histories hold that spelling,
so it stays valid:

* ``migrate_data`` moves the flat keys of a data dict into their sections. It is the one
  migration: a run's config.yaml, the config inside a checkpoint and whatever a YAML preset set
  under a flat key all go through it.
* ``rewrite_overrides`` rewrites command-line overrides before Hydra composes them
  (``data.obs_horizon=2`` -> ``data.sample.obs_horizon=2``), with a notice per key.
* ``add_aliases`` gives the composition schema an alias per flat key
  (``data.obs_horizon: ${data.sample.obs_horizon}``), so a YAML preset may still set one;
  ``resolve_aliases`` moves what a preset set onto the current key and drops the aliases before
  the config is validated.
"""

import logging
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from bridge_torch.data.augment import AugmentConfig
from bridge_torch.data.config import LoadConfig, SampleConfig

log = logging.getLogger(__name__)


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


# flat key under data -> its place in the data section ("obs_horizon" -> "sample.obs_horizon")
FLAT_KEYS: dict[str, str] = {
    f.name: f"{section}.{f.name}"
    for section, schema in (("load", LoadConfig), ("sample", SampleConfig))
    for f in fields(schema)
}
NOTICE = "data.{old} is accepted for compatibility; the current name is data.{new}"


def migrate_data(data: Any, *, source: str) -> Any:
    """``data`` (a data section as plain dicts) with every flat key moved into its section.

    Returns a new dict; anything that is not a dict is returned as is, for the schema to
    refuse. Where a dict holds both spellings of a key, the flat one wins: bridge-torch never
    writes both, so the flat one was added by hand. ``source`` names the file in the log line
    and in errors.
    """
    if not isinstance(data, dict) or not FLAT_KEYS.keys() & data.keys():
        return data
    migrated = {key: value for key, value in data.items() if key not in FLAT_KEYS}
    moved = []
    for key, value in data.items():
        if key not in FLAT_KEYS:
            continue
        section, name = FLAT_KEYS[key].split(".")
        current = migrated.get(section)
        if current is not None and not isinstance(current, dict):
            raise ValueError(f"{source}: data.{section} must be a section of settings, got "
                             f"{current!r}")
        migrated[section] = {**(current or {}), name: value}
        moved.append(f"data.{FLAT_KEYS[key]}")
    log.info("%s: flat data keys read as %s", source, ", ".join(moved))
    return migrated


def migrate_config(config: Any, *, source: str) -> Any:
    """A saved config (plain dicts: a config.yaml or a checkpoint's) with its data section
    migrated by ``migrate_data``."""
    if not isinstance(config, dict) or "data" not in config:
        return config
    return {**config, "data": migrate_data(config["data"], source=source)}


def rewrite_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Command-line overrides with each flat data key replaced by its current name, and a notice
    per rewritten key. Everything else (flags, other keys, typos) passes unchanged."""
    rewritten, notices = [], []
    for token in overrides:
        body = token.lstrip("+~")
        key, equals, value = body.partition("=")
        section, _, name = key.partition(".")
        if token.startswith("-") or section != "data" or name not in FLAT_KEYS:
            rewritten.append(token)
            continue
        prefix = token[:len(token) - len(body)]
        rewritten.append(f"{prefix}data.{FLAT_KEYS[name]}{equals}{value}")
        notices.append(NOTICE.format(old=name, new=FLAT_KEYS[name]))
    return rewritten, notices


def _alias(key: str) -> str:
    return "${data." + FLAT_KEYS[key] + "}"


def _within(key: str, section: str) -> bool:
    """Whether ``key`` is ``section`` or lies below it (``data.sample.x`` within ``data``)."""
    return key == section or key.startswith(section + ".")


def add_aliases(schema: DictConfig) -> None:
    """Give the composition schema's data section one alias per flat key (see module doc)."""
    with open_dict(schema.data):
        for key in FLAT_KEYS:
            schema.data[key] = _alias(key)


def resolve_aliases(cfg: DictConfig, overrides: list[str]) -> None:
    """Move what a YAML preset set under a flat key onto its current key and drop the aliases.

    A command-line override of the current key (or of a section holding it) wins over the
    preset's flat key, as it would over a preset written with the current name; ``overrides``
    are the command's, already rewritten by ``rewrite_overrides``.
    """
    data = cfg.data
    raw = OmegaConf.to_container(data, resolve=False)
    if not FLAT_KEYS.keys() & raw.keys():
        return  # composed without the aliases
    overridden = [token.lstrip("+~").partition("=")[0] for token in overrides]
    kept = {key: raw[key] for key in FLAT_KEYS if key in raw and raw[key] != _alias(key)
            and not any(_within(f"data.{FLAT_KEYS[key]}", o) for o in overridden)}
    with open_dict(data):
        for key in FLAT_KEYS:
            data.pop(key, None)
    for section, values in migrate_data(kept, source="a YAML preset").items():
        for name, value in values.items():
            data[section][name] = value
