"""Whether bridge-torch may unpickle a file: the global "never" switch.

Unpickling runs whatever code the file names, so the legacy ``out.npy`` and the raw format's
``*.pkl`` files are only read where the user opted in (``data.load.allow_pickle``,
``--allow-pickle``; see ``data/datasets.py``). ``BRIDGE_TORCH_NO_PICKLE=1`` overrides every opt-in:
on a machine that must never run code from data files, nothing in bridge-torch unpickles.
"""

import os
from pathlib import Path

NO_PICKLE_ENV = "BRIDGE_TORCH_NO_PICKLE"
_OFF_VALUES = ("", "0", "false", "no", "off")


class PickleRefused(ValueError):
    """A pickle file was not read because unpickling is not allowed here."""


def pickle_forbidden() -> bool:
    """True when ``$BRIDGE_TORCH_NO_PICKLE`` is set to anything but 0/false/no/off/empty."""
    return os.environ.get(NO_PICKLE_ENV, "").strip().lower() not in _OFF_VALUES


def refuse_if_forbidden(path: Path) -> None:
    """Raise PickleRefused naming ``path`` when the global switch forbids unpickling."""
    if pickle_forbidden():
        raise PickleRefused(f"refusing to unpickle {path}: {NO_PICKLE_ENV}="
                            f"{os.environ[NO_PICKLE_ENV]} forbids reading pickle files (they "
                            "can run code); unset it to read this file")
