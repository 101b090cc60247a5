"""Checks of a whole configuration that no single section can make: the ``model`` section typed by
the chosen agent, every number finite, no key outside the schema, no resolver in a saved config,
and which overrides a resumed run accepts.

Why the last three exist:

* A NaN or inf setting (``optimizer.lr=inf``, ``ddp.timeout_s=nan``) passes range checks such as
  ``lr > 0`` and silently trains garbage; one walk over the tree rejects it in every section.
* Hydra's ``+key=value`` adds a key even to a typed section, and converting the config to
  dataclasses drops it without a word: ``+optimizer.lrr=0.1`` would be a typo that does nothing.
* A run directory's config.yaml and a checkpoint's config are written resolved; an interpolation
  that calls a resolver (``${oc.env:HOME}``) was added by hand and would read the environment
  of whoever loads the run.
"""

import dataclasses
import difflib
import logging
import math
import re
from collections.abc import Callable
from typing import Any

from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bridge_torch.agents import AGENTS, agent_inputs, agent_spec
from bridge_torch.cli_errors import dataclass_keys
from bridge_torch.tree import dotted, leaves

log = logging.getLogger(__name__)

OPEN_SECTIONS = ("model",)  # typed later by the chosen agent's config (``typed_model_config``)
CONFIG_GROUPS = ("algo", "bridgedata")  # Hydra groups under conf/; fixed for a run on resume
RESOLVER_RE = re.compile(r"(?<!\\)\$\{\s*[\w.\-]+\s*:")  # ${name:...}: a resolver call


def typed_model_config(algo: str, model: Any) -> Any:
    """The ``model`` section as ``algo``'s config dataclass.

    A key of another registered agent is dropped with a log line, so one override list can
    sweep several algorithms (``-m algo=bc,gc_ddpm_bc model.hidden_dims=[128]``); a key no agent
    knows, or a wrong type, is an error naming ``model.<key>`` and this agent's settings.
    """
    spec = agent_spec(algo)
    if isinstance(model, spec.config):
        return model
    values = dict(model or {})
    own = {f.name for f in dataclasses.fields(spec.config)}
    others = {f.name for other in AGENTS.values()
              for f in dataclasses.fields(other.config)} - own
    for key in sorted(set(values) & others):
        log.info("model.%s is not a setting of algo %r: ignored", key, algo)
        del values[key]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(spec.config), values)
    except OmegaConfBaseException as err:
        reason = str(err.msg).splitlines()[0]
        close = difflib.get_close_matches(str(err.key), own, n=1)
        hint = f" (did you mean model.{close[0]}?)" if close and close[0] != err.key else ""
        raise ValueError(f"model.{err.key}: {reason}{hint}; the model settings of algo "
                         f"{algo!r} are: {', '.join(sorted(own))}") from None
    return OmegaConf.to_object(merged)


def derive_loading(algo: str, model: Any, saliency: Any, load: Any) -> None:
    """Fill ``data.load.load_goals`` / ``load_saliency`` from what the agent consumes."""
    inputs = agent_inputs(algo, model, saliency)
    for key, needed in (("load_goals", inputs.goal_image), ("load_saliency", inputs.saliency)):
        given = getattr(load, key)
        if given is not None and given != needed:
            why = ("saliency.enabled" if key == "load_saliency"
                   else f"algo {algo!r} {'reads' if needed else 'never reads'} goals")
            raise ValueError(f"data.load.{key}={given} contradicts {why}: it follows the agent, "
                             "drop the override")
        setattr(load, key, needed)


def check_finite(config: Any) -> None:
    """Raise ``ValueError`` naming the first float setting that is NaN or infinite."""
    for path, value in leaves(config):
        key = dotted(path)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key}={value}: settings must be finite numbers")


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of a composed config that its schema does not have (added with ``+key=``)."""
    schema = OmegaConf.get_type(node)
    known = ({f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema)
             else None)
    found = []
    for key in node:
        path = f"{prefix}{key}"
        if known is not None and key not in known:  # suggest from the keys at any depth below
            nested = [prefix + name for name in dataclass_keys(schema)]
            close = difflib.get_close_matches(path, nested, n=1)
            found.append(path + (f" (did you mean {close[0]}?)" if close else ""))
        elif path not in OPEN_SECTIONS and isinstance(node._get_node(key), DictConfig):
            found += unknown_keys(node._get_node(key), f"{path}.")
    return found


def refuse_unknown_keys(cfg: DictConfig) -> None:
    if unknown := unknown_keys(cfg):
        raise ValueError(f"unknown config keys: {', '.join(unknown)}. '+key=value' cannot add "
                         "settings to the typed config (only model.* is open, checked by the "
                         "agent's own config)")


def refuse_resolvers(tree: Any, *, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` and the key of the first resolver interpolation."""
    for path, value in leaves(tree):
        key = dotted(path)
        if isinstance(value, str) and RESOLVER_RE.search(value):
            raise ValueError(
                f"{source}: {key} = {value!r} calls a resolver (environment or other); a saved "
                "config is written resolved, so this was added by hand, and it is refused rather "
                "than resolved in the environment of whoever loads the run"
            )


def apply_resume_overrides(saved: DictConfig, overrides: list[Override],
                           compose: Callable[[list[str]], DictConfig]) -> None:
    """Apply a resume command's overrides to the run's saved config, in place.

    Plain ``key=value`` overrides apply (e.g. ``num_steps=``). A config group override must
    choose what the run already uses (so the run's own command line plus ``resume=`` works);
    a different choice would silently swap the algorithm or the data, and is refused.
    ``compose`` composes the defaults with a list of overrides (to see what a choice means).
    """
    plain = [o for o in overrides if o.key_or_group not in CONFIG_GROUPS]
    for override in plain:
        if override.is_delete() or override.is_sweep_override():
            raise ValueError(f"resume: unsupported override '{override.input_line}'")
        try:
            OmegaConf.update(saved, override.key_or_group, override.value(), merge=False)
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0]
            raise ValueError(f"resume: cannot apply '{override.input_line}': {reason}") from None
    groups = [o for o in overrides if o.key_or_group in CONFIG_GROUPS]
    if not groups:
        return
    fresh = compose([o.input_line for o in groups + plain if o.key_or_group != "resume"])
    for override in groups:
        key = override.key_or_group
        if _plain(fresh, key) != _plain(saved, key):
            raise ValueError(
                f"resume: the config group override '{override.input_line}' differs from the "
                f"run's saved {key} settings; a resumed run keeps them (drop it, or start a new "
                "run)"
            )


def _plain(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
