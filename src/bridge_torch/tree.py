"""Walking nested plain data (dataclasses, dicts, lists, tuples) leaf by leaf, with each leaf's
path: the one walker behind checkpoint digests and config checks."""

import dataclasses
from collections.abc import Iterator
from typing import Any

Path = tuple[str | int, ...]  # dict keys and field names (str), list positions (int)


def leaves(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every leaf under ``value`` (anything that is not a container) with its path."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from leaves(getattr(value, field.name), (*path, field.name))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, str(key)))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    else:
        yield path, value


def dotted(path: Path) -> str:
    """``("optimizer", "betas", 0)`` -> ``optimizer.betas[0]`` (how config keys are written)."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
