"""The flat spellings of the data section's keys, as earlier versions wrote them.

The training config's ``data`` section holds ``load``, ``sample`` and ``augment``. Before, the
keys of the first two sat directly under ``data`` (``data.obs_horizon``, ``data.camera``). Run
directories, checkpoints and shell histories hold that spelling, so it stays valid there:

* ``migrate_data`` moves the flat keys of a data dict into their sections. It is the one
  migration: a run's config.yaml and the config inside a checkpoint go through it.
* ``rewrite_overrides`` rewrites command-line overrides before Hydra composes them
  (``data.obs_horizon=2`` -> ``data.sample.obs_horizon=2``), with a notice per key.

A YAML preset must use the current keys: composition refuses a flat one, naming the current key
("did you mean ..."), since keeping both spellings in the schema would print every data setting
twice in ``--cfg job`` and ``--help``.
"""

import logging
from dataclasses import fields
from typing import Any

from bridge_torch.data.config import LoadConfig, SampleConfig

log = logging.getLogger(__name__)

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
