"""What every ``bridge-torch-*`` command shares: one option spelling policy and one-line errors.

* ``CliParser``: an ``argparse`` parser that never expands prefixes (``allow_abbrev=False``, so
  ``--out`` can never become ambiguous), accepts every ``--a_b`` option also as ``--a-b`` and
  the reverse, adds ``--debug`` (show the traceback of an error), and reports a usage error as
  one line with a "did you mean" for a misspelt option or choice (exit status 2).
* ``user_errors``: the library's ``ValueError`` / ``OSError`` (``FileNotFoundError`` included)
  raised for a user's mistake become ``<prog>: error: <message>`` without a traceback (exit
  status 1); ``--debug`` (``HYDRA_FULL_ERROR=1`` for the Hydra app) re-raises them instead.
* ``run_hydra_app``: the same for a Hydra app: composition errors (unknown keys with a
  suggestion, bad values, unknown config group options) and the errors its job raises inside
  ``carry_errors`` become one line; ``HYDRA_FULL_ERROR=1`` keeps Hydra's tracebacks.
"""

import argparse
import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from hydra.errors import HydraException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

USER_ERRORS = (ValueError, OSError)
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
USAGE_STATUS, FAILURE_STATUS = 2, 1


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the shortest candidate ``word`` begins, else the closest
    one, or ``""`` when none is close."""
    candidates = sorted(set(candidates) - {word}, key=lambda c: (len(c), c))
    longer = [c for c in candidates if c.startswith(word)] if len(word.strip("-")) >= 3 else []
    close = longer or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def fail(prog: str, message: object, status: int = FAILURE_STATUS) -> NoReturn:
    """Print ``<prog>: error: <message>`` to stderr and exit with ``status``."""
    print(f"{prog}: error: {describe(message)}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def describe(error: object) -> str:
    """An exception's message without Python's decoration (``[Errno 2] ...``)."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error)


@contextmanager
def user_errors(prog: str, *, debug: bool = False,
                usage: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn the library's user-facing errors into one ``error:`` line (``debug``: re-raise);
    those of a ``usage`` type (bad arguments) exit with status 2, the others with 1."""
    try:
        yield
    except USER_ERRORS as error:
        if debug:
            raise
        fail(prog, error, USAGE_STATUS if isinstance(error, usage) else FAILURE_STATUS)


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the conventions of the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the full traceback of an error")

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        """Also accept the ``_``/``-`` twin of every long option."""
        spellings = list(names)
        for name in names:
            if name.startswith("--"):
                for twin in (name.replace("_", "-"), "--" + name[2:].replace("-", "_")):
                    if twin not in spellings:
                        spellings.append(twin)
        return super().add_argument(*spellings, **kwargs)

    def option_names(self) -> set[str]:
        """Every option string of this parser and its sub-commands."""
        names = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    names |= sub.option_names() if isinstance(sub, CliParser) else set()
        return names

    def error(self, message: str) -> NoReturn:
        """One line with a suggestion, exit status 2 (argparse prints the whole usage)."""
        fail(self.prog, message + self._suggestion(message), USAGE_STATUS)

    def _suggestion(self, message: str) -> str:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            options = [w.split("=")[0] for w in unknown.group(1).split() if w.startswith("-")]
            return "".join(did_you_mean(o, self.option_names()) for o in options[:1])
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            return did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        return ""


def debug_requested(args: argparse.Namespace) -> bool:
    """Whether ``--debug`` was given (on the command or any sub-command)."""
    return bool(getattr(args, "debug", False))


def dataclass_keys(schema: type, prefix: str = "") -> list[str]:
    """Dotted names of every field of a dataclass tree (``optimizer.lr``, ...)."""
    keys = []
    for field in dataclasses.fields(schema):
        key = f"{prefix}{field.name}"
        keys.append(key)
        if dataclasses.is_dataclass(field.type):
            keys += dataclass_keys(field.type, f"{key}.")
    return keys


def suggest_key(key: str, keys: Iterable[str]) -> str:
    """Did-you-mean for a dotted key: the whole name, else its last part (``lrr`` ->
    ``optimizer.lr``)."""
    keys = list(keys)
    hint = did_you_mean(key, keys)
    if hint or "." in key:
        return hint
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in sorted(keys, key=len, reverse=True)}
    close = difflib.get_close_matches(key, sorted(by_leaf), n=1, cutoff=0.6)
    return f" (did you mean {by_leaf[close[0]]}?)" if close else ""


def hydra_error_message(error: Exception, keys: Iterable[str]) -> str:
    """One line for a Hydra composition error; ``keys`` are the schema's dotted names."""
    text = str(error).strip()
    unknown = re.match(r"Could not override '([^']+)'", text)
    if unknown:  # Hydra's "use +key to append" hint does not apply to a strict schema
        key = unknown.group(1)
        return f"unknown key {key}{suggest_key(key, keys)}"
    missing = re.match(r"In '[^']*': Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        options = getattr(error, "options", None) or []
        return (f"unknown {group} '{option}'{did_you_mean(option, options)}; "
                f"choose from {', '.join(options)}")
    in_file = re.match(r"In '([^']+)': ConfigKeyError.*\nKey '[^']+' not in .*\n\s*full_key: (\S+)",
                       text)
    if in_file:  # a key a YAML file sets that the schema lacks
        config_file, key = in_file.groups()
        return f"{config_file}.yaml sets unknown key {key}{suggest_key(key, keys)}"
    cause = error.__cause__
    first = text.splitlines()[0].removeprefix("Error merging override ") if text else type(
        error).__name__
    if cause is not None and str(cause).strip():
        return f"{first}: {str(cause).strip().splitlines()[0]}"
    override = getattr(error, "override", None)  # an override Hydra could not parse
    return f"{override}: {first}" if override else first


class CarriedError(BaseException):
    """A user error on its way past Hydra's handlers (they catch ``Exception``) to the app's
    entry point, which prints it as one line."""

    def __init__(self, error: BaseException, status: int) -> None:
        super().__init__(str(error))
        self.error, self.status = error, status


@contextmanager
def carry_errors(status: int) -> Iterator[None]:
    """Inside a Hydra job: hand user errors (and a missing or invalid setting) to
    ``run_hydra_app`` with the exit ``status`` they should end with."""
    try:
        yield
    except (*USER_ERRORS, OmegaConfBaseException) as error:
        raise CarriedError(error, status) from error


def _job_message(error: BaseException) -> str:
    if isinstance(error, MissingMandatoryValue):
        key = getattr(error, "full_key", None) or "a setting"
        return f"{key} is required: add {key}=... to the command"
    return describe(error).strip().splitlines()[0]


def run_hydra_app(app: Callable[[], Any], prog: str, keys: Iterable[str]) -> None:
    """Run a ``@hydra.main`` function with one-line user errors (``keys``: the schema's dotted
    names, for suggestions); ``HYDRA_FULL_ERROR=1`` shows every traceback instead."""
    debug = os.environ.get(FULL_ERROR_ENV) == "1"
    os.environ[FULL_ERROR_ENV] = "1"  # Hydra then raises its errors here instead of printing
    try:
        app()
    except CarriedError as carried:
        if debug:
            raise carried.error from None
        fail(prog, _job_message(carried.error), carried.status)
    except HydraException as error:
        if debug:
            raise
        fail(prog, hydra_error_message(error, keys), USAGE_STATUS)
    finally:
        if not debug:
            del os.environ[FULL_ERROR_ENV]
