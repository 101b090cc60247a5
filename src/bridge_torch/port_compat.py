"""The earlier PyTorch port's command-line spellings, accepted with their meaning.

Users of the port have its commands in their shell history. Before Hydra sees the command line,
``translate_train_argv`` rewrites each of the port's overrides into ours (``wandb.enabled=false``
-> ``wandb.mode=disabled``) and logs once per spelling "<old> is accepted for compatibility; the
current name is <new>". Only the spellings in the tables below are rewritten: anything else
reaches Hydra as typed, so a misspelt or unknown key stays an error. Because the rewritten list
is what Hydra records as the job's overrides, ``resume=<run>`` and multirun sweeps
(``data.augment=true,false``) see only our names.

``translate_train_argv`` then rewrites the flat data spellings of our own earlier versions
(``data.obs_horizon`` -> ``data.sample.obs_horizon``, ``bridge_torch.data.config_migration``), so
the port's keys that became flat data keys arrive at their current names too.

``ddp.enabled`` has no counterpart (DDP is on exactly when torchrun starts more than one
process); it is checked against the launch and dropped. ``translate_eval_argv`` turns the port's
``--save_dir <run>`` into ``bridge-torch-eval``'s positional run directory.
"""

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, OverrideType
from hydra.errors import HydraException

from bridge_torch.data import config_migration

log = logging.getLogger(__name__)

NOTICE = "{old} is accepted for compatibility; the current name is {new}"
DDP_KEY = "ddp.enabled"
DDP_NEW = "none: DDP is on exactly when torchrun starts more than one process"
# the port's augment_kwargs op names -> data.augment.order entries
PORT_OPS = {"random_resized_crop": "crop", "random_brightness": "brightness",
            "random_contrast": "contrast", "random_saturation": "saturation", "random_hue": "hue"}
# the port's encoder_kwargs.arch (backbone depth) -> our encoder of that depth
PORT_ARCHS = {"resnet18": "resnetv1-18-bridge", "resnet34": "resnetv1-34-bridge",
              "resnet50": "resnetv1-50-bridge"}
PLAIN_TEXT = re.compile(r"[\w\-./:]+")  # a string that needs no quotes in an override


def _switch(on: str, off: str) -> Callable[[Any], str]:
    """A port boolean that became a choice of strings (``wandb.enabled`` -> ``wandb.mode``)."""

    def convert(value: Any) -> str:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return on if value else off

    return convert


def _one_number(value: Any) -> float:
    """The port wrote single augmentation magnitudes as one-element lists (``[0.2]``)."""
    number = value[0] if isinstance(value, list) and len(value) == 1 else value
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ValueError(f"expected a number or a one-element list, got {value!r}")
    return float(number)


def _lookup(table: dict[str, str], what: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in table:
            raise ValueError(f"unknown {what} {value!r}; the port's are {sorted(table)}")
        return table[value]

    return convert


def _op_order(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of op names, got {value!r}")
    return [_lookup(PORT_OPS, "augmentation op")(op) for op in value]


@dataclass(frozen=True)
class KeyAlias:
    """One of the port's keys and where its value goes in ours."""

    new: str  # our key
    convert: Optional[Callable[[Any], Any]] = None  # value mapping; None keeps the value as typed
    only: Optional[type] = None  # applies to values of this type only; others are our syntax


KEY_ALIASES: dict[str, KeyAlias] = {
    "wandb.enabled": KeyAlias("wandb.mode", _switch("online", "disabled")),
    "data.augment": KeyAlias("data.augment.enabled", only=bool),  # ours: a section
    "data.saliency_alpha": KeyAlias("saliency.alpha"),  # ours feeds data.sample.saliency_alpha
    "data.augment_next_obs_goal_differently":
        KeyAlias("data.augment.augment_next_obs_goal_differently"),
    "data.goal_relabeling_kwargs.reached_proportion": KeyAlias("data.sample.reached_proportion"),
    "data.augment_kwargs.random_resized_crop.scale": KeyAlias("data.augment.crop_scale"),
    "data.augment_kwargs.random_resized_crop.ratio": KeyAlias("data.augment.crop_ratio"),
    "data.augment_kwargs.random_brightness": KeyAlias("data.augment.brightness", _one_number),
    "data.augment_kwargs.random_contrast": KeyAlias("data.augment.contrast"),
    "data.augment_kwargs.random_saturation": KeyAlias("data.augment.saturation"),
    "data.augment_kwargs.random_hue": KeyAlias("data.augment.hue", _one_number),
    "data.augment_kwargs.augment_order": KeyAlias("data.augment.order", _op_order),
    "encoder": KeyAlias("encoder.name", only=str),  # ours: a section
    "encoder_kwargs.arch": KeyAlias("encoder.name", _lookup(PORT_ARCHS, "encoder arch")),
    "encoder_kwargs.pooling_method": KeyAlias("encoder.pooling_method"),
    "encoder_kwargs.add_spatial_coordinates": KeyAlias("encoder.add_spatial_coordinates"),
    "encoder_kwargs.act": KeyAlias("encoder.act"),
    "compile.kwargs.mode": KeyAlias("compile.mode"),
    "compile.kwargs.dynamic": KeyAlias("compile.dynamic"),
    "compile.kwargs.fullgraph": KeyAlias("compile.fullgraph"),
}
# keys that kept their name but whose values were renamed
VALUE_ALIASES: dict[str, dict[str, str]] = {
    "scheduler.type": {"warmup_cosine": "cosine"},
    "amp.dtype": {"bf16": "bfloat16", "fp16": "float16"},
}
# port keys that are refused with the reason instead of Hydra's bare "unknown key"
NO_EQUIVALENT = {
    "data.augment_kwargs.p": "every sample of every batch is augmented with its own parameters "
                             "(the port augmented about half of the batches, one draw per "
                             "batch); data.augment=false turns augmentation off",
}


@dataclass(frozen=True)
class Launch:
    """How this process was started: ``world_size`` is None without torchrun."""

    world_size: Optional[int] = None

    @classmethod
    def from_env(cls) -> "Launch":
        value = os.environ.get("WORLD_SIZE")  # torchrun sets it in every process it starts
        return cls(int(value) if value else None)


def rewrite_overrides(overrides: list[str], launch: Launch) -> tuple[list[str], list[str]]:
    """The port's overrides in ours, and a notice per rewritten spelling.

    Tokens that are not one of the port's spellings (flags, our keys, typos) pass unchanged.
    Raises:
        ValueError: a port key without equivalent, an invalid value for one, or a
            ``ddp.enabled`` that contradicts how the process was launched.
    """
    rewritten, notices = [], []
    for token in overrides:
        key = token.split("=", 1)[0].lstrip("+~")
        port_key = key in KEY_ALIASES or key in VALUE_ALIASES or key in NO_EQUIVALENT
        if token.startswith("-") or "=" not in token or not (port_key or key == DDP_KEY):
            rewritten.append(token)
            continue
        new_token, new_notices = _rewrite(token, key, launch)
        rewritten.extend([new_token] if new_token is not None else [])
        notices.extend(new_notices)
    return rewritten, notices


def _rewrite(token: str, key: str, launch: Launch) -> tuple[Optional[str], list[str]]:
    """One of the port's overrides in ours (None: nothing to pass on) and its notices."""
    if key in NO_EQUIVALENT:
        raise ValueError(f"{token}: the earlier port's {key} has no equivalent here: "
                         f"{NO_EQUIVALENT[key]}")
    try:
        override = OverridesParser.create().parse_override(token)
    except HydraException:
        return token, []  # Hydra reports the syntax error with its own context
    if key in VALUE_ALIASES:
        return _rename_values(token, key, _elements(token, override))
    if override.type != OverrideType.CHANGE:
        raise ValueError(f"{token}: the earlier port's {key} can only be set ({key}=<value>)")
    values = _elements(token, override)
    if key == DDP_KEY:
        check_ddp(values, launch)
        return None, [NOTICE.format(old=DDP_KEY, new=DDP_NEW)]
    alias = KEY_ALIASES[key]
    if alias.only is not None and not all(isinstance(v, alias.only) for v in values):
        return token, []  # our own syntax, e.g. a whole section as a dict
    if alias.convert is None:
        text = token.split("=", 1)[1]
    else:
        try:
            text = ",".join(_format(alias.convert(value)) for value in values)
        except ValueError as err:
            raise ValueError(f"{token}: {err}") from None
    return f"{alias.new}={text}", [NOTICE.format(old=key, new=alias.new)]


def _elements(token: str, override: Any) -> list[Any]:
    """The values of one override: one, or each choice of a comma-separated sweep."""
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return list(value.list)
    if override.is_sweep_override():
        raise ValueError(f"{token}: sweep the earlier port's keys with a comma-separated list")
    return [value]


def _rename_values(token: str, key: str, values: list[Any]) -> tuple[str, list[str]]:
    """``scheduler.type=warmup_cosine`` -> ``scheduler.type=cosine``; our values pass."""
    table = VALUE_ALIASES[key]
    renamed = [v for v in values if isinstance(v, str) and v in table]
    if not renamed:
        return token, []
    text = ",".join(_format(table.get(v, v) if isinstance(v, str) else v) for v in values)
    notices = [NOTICE.format(old=f"{key}={v}", new=f"{key}={table[v]}") for v in renamed]
    return f"{token.split('=', 1)[0]}={text}", notices


def _format(value: Any) -> str:
    """A value written back in override syntax (numbers, strings, lists of them)."""
    if isinstance(value, list):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if isinstance(value, str) and not PLAIN_TEXT.fullmatch(value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def check_ddp(values: list[Any], launch: Launch) -> None:
    """The port's ``ddp.enabled`` must agree with the launch: DDP here follows torchrun alone.

    Why refuse ``false`` under torchrun: the port then trained one unsynchronised copy per
    process on a slice of the batch; ``true`` without torchrun would silently run alone.
    """
    if len(values) != 1 or not isinstance(values[0], bool):
        raise ValueError(f"{DDP_KEY} takes true or false (no sweep), got {values}")
    processes = launch.world_size
    if values[0] and processes is None:
        raise ValueError(
            f"{DDP_KEY}=true asks for DistributedDataParallel, but this process was not "
            "started by torchrun (WORLD_SIZE is not set). Launch it with "
            "`torchrun --nproc_per_node=<GPUs> -m bridge_torch.train ...`; DDP is then on "
            f"by itself and {DDP_KEY} can be dropped")
    if not values[0] and processes is not None and processes > 1:
        raise ValueError(
            f"{DDP_KEY}=false, but torchrun started {processes} processes: without DDP each "
            f"would train its own copy on 1/{processes} of the batch. Run a single process "
            f"(bridge-torch-train ...) or drop {DDP_KEY}=false")


def _log_once(notices: list[str]) -> None:
    """Each notice once, by the first process only (torchrun starts the CLI in every one)."""
    if os.environ.get("RANK", "0") != "0":
        return
    for notice in dict.fromkeys(notices):
        log.warning(notice)


def translate_train_argv(argv: list[str]) -> list[str]:
    """``bridge-torch-train``'s arguments with the port's spellings and the flat data spellings
    rewritten (see module doc).

    Raises:
        SystemExit: with the reason, when a port spelling cannot be honoured.
    """
    try:
        rewritten, notices = rewrite_overrides(argv, Launch.from_env())
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    rewritten, flat_notices = config_migration.rewrite_overrides(rewritten)
    _log_once(notices + flat_notices)
    return rewritten


def translate_eval_argv(argv: list[str]) -> list[str]:
    """``bridge-torch-eval``'s arguments with the port's ``--save_dir <run>`` made positional."""
    rewritten, tokens, notices = [], iter(argv), []
    for token in tokens:
        name, equals, value = token.partition("=")
        if name != "--save_dir":
            rewritten.append(token)
            continue
        value = value if equals else next(tokens, "")
        if not value:
            raise SystemExit("error: --save_dir needs a run directory")
        rewritten.append(value)
        notices.append(NOTICE.format(old="--save_dir <run>", new="the positional <run>"))
    _log_once(notices)
    return rewritten
