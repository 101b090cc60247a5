"""The README's commands and Python snippets work as pasted.

Conventions (for whoever edits README.md):

* Every fenced code block is checked, and every inline code span that starts with
  ``bridge-torch-``, except a fenced block right after ``<!-- not-tested: reason -->``.
* In shell blocks each command line (``\\`` continuations joined, ``# comments`` dropped,
  ``NAME=value`` prefixes skipped) that runs a ``bridge-torch-*`` console script, or
  ``-m bridge_torch.train``, is parsed without running: argparse commands by their module's
  ``build_parser()`` (found through the console-script entry point), the Hydra trainer by
  composing its config (``compose_config``). Other lines (``make``, ``pip``, ``python bench/...``,
  program output) are left alone.
* Placeholders: ``<anything>`` is a name (``x``); ``[--option value]`` is an optional part and
  is checked as if given; ``a|b`` takes ``a``; ``...`` is dropped; ``$NAME`` is the value of a
  ``NAME=value`` line in this or an earlier block; Hydra sweeps (``-m``, ``algo=bc,gc_bc``)
  take their first value; ``resume=<path>`` is a real tiny run.
* Python blocks run on the CPU in a fresh namespace holding ``frame`` and ``goal`` (uint8 camera
  images) and ``device = "cpu"``; a string holding ``<...>`` (``"runs/.../gc_bc_<timestamp>"``)
  becomes the directory of a tiny run of the algorithm its name starts with. A snippet must
  therefore use ``device="cpu"`` or a device variable, never a hard-coded ``"cuda"``.
"""

import importlib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

from bridge_torch.train.config import compose_config

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_TESTED = re.compile(r"<!--\s*not-tested:.*?-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
PLACEHOLDER = re.compile(r"<[^<>\n]*>")
TRAIN, TRAIN_MODULE = "bridge-torch-train", "bridge_torch.train"
ALGOS = ("gc_ddpm_bc", "gc_bc", "bc")  # longest first: a run name starts with its algo


@dataclass
class Block:
    line: int  # 1-based line of the opening fence (or of the inline span)
    lang: str
    text: str


def readme_blocks(text: str) -> list[Block]:
    """Fenced blocks not marked ``not-tested``, and inline ``bridge-torch-*`` spans."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            blocks += [Block(i + 1, "bash", span) for span in re.findall(r"`([^`]+)`", lines[i])
                       if span.startswith("bridge-torch-") and " " in span]  # not a bare name
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not NOT_TESTED.search(previous):
            blocks.append(Block(i + 1, fence.group(1) or "text", "\n".join(lines[i + 1:end])))
        i = end + 1
    return blocks


def command_lines(block: Block, variables: dict[str, str]) -> list[list[str]]:
    """The block's commands as argument lists, placeholders substituted (module docstring);
    ``variables`` collects the ``NAME=value`` lines of this and the earlier blocks."""
    joined = re.sub(r"\\\n", " ", block.text)
    variables.update(re.findall(r"^([A-Z_]+)=(\S+)\s*$", joined, flags=re.M))
    commands = []
    for line in joined.splitlines():
        line = PLACEHOLDER.sub("x", line)
        for name, value in variables.items():
            line = line.replace(f"${{{name}}}", value).replace(f"${name}", value)
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not shell (a diagram, program output)
            continue
        while words and re.match(r"^[A-Za-z_]+=", words[0]):
            words.pop(0)  # an environment assignment before the command
        if words and words[0].startswith("bridge-torch-"):
            commands.append(expand(words))
        elif TRAIN_MODULE in words and words.index(TRAIN_MODULE) > 0:
            commands.append([TRAIN, *expand(words[words.index(TRAIN_MODULE) + 1:])])
    return commands


def expand(words: list[str]) -> list[str]:
    """Optional ``[...]`` parts as given, ``a|b`` as ``a``, ``...`` dropped."""
    out = []
    for word in words:
        if word in ("...", "…"):
            continue
        if word.startswith("[-"):
            word = word[1:]
        if word.endswith("]") and "[" not in word:
            word = word[:-1]
        if "|" in word and "=" not in word:
            word = word.split("|")[0]
        out.append(word)
    return out


def parser_of(command: str) -> Callable:
    """``build_parser`` of the module behind a console script."""
    (script,) = entry_points(group="console_scripts", name=command)
    module = importlib.import_module(script.value.split(":")[0])
    assert hasattr(module, "build_parser"), f"{script.value}: expose build_parser() for this test"
    return module.build_parser


def train_overrides(args: list[str], run_dir: Path) -> list[str]:
    """Hydra's own flags dropped, sweeps at their first value, resume at a real run."""
    overrides, skip = [], False
    for arg in args:
        if skip or arg in ("-m", "--multirun"):
            skip = False
            continue
        if arg in ("--cfg", "-c", "--package", "-p"):
            skip = True
            continue
        key, _, value = arg.partition("=")
        if key == "resume":
            value = str(run_dir)
        elif not value.startswith("["):
            value = value.split(",")[0]
        overrides.append(f"{key}={value}")
    return overrides


BLOCKS = readme_blocks(README.read_text())
SHELL_VARIABLES: dict[str, str] = {}
COMMANDS = [(b.line, c) for b in BLOCKS if b.lang in ("bash", "sh", "shell", "console", "text")
            for c in command_lines(b, SHELL_VARIABLES)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def test_the_readme_has_commands_to_check() -> None:
    assert COMMANDS and any(c[0] == TRAIN for _, c in COMMANDS)


@pytest.mark.parametrize("line,command", COMMANDS,
                         ids=[f"L{n}:{' '.join(c)[:50]}" for n, c in COMMANDS])
def test_command_parses(line: int, command: list[str], tiny_run) -> None:
    if command[0] == TRAIN:
        compose_config(train_overrides(command[1:], tiny_run("gc_bc")))
        return
    parser = parser_of(command[0])()
    try:
        parser.parse_args(command[1:])
    except SystemExit as done:  # --help exits 0; an error has printed its one line
        assert done.code == 0, f"README.md:{line}: {' '.join(command)} does not parse"


def run_placeholder(literal: str, tiny_run) -> str:
    """A tiny run's directory for ``"...<placeholder>..."``, of the algorithm named."""
    name = Path(PLACEHOLDER.sub("", literal)).name
    algo = next((a for a in ALGOS if name.startswith(a)), "gc_bc")
    return str(tiny_run(algo))


@pytest.mark.parametrize("block", PYTHON, ids=[f"L{b.line}" for b in PYTHON])
def test_python_snippet_runs_on_cpu(block: Block, tiny_run, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.sub(r"([\"'])([^\"'\n]*<[^<>\n]*>[^\"'\n]*)\1",
                  lambda m: repr(run_placeholder(m.group(2), tiny_run)), block.text)
    assert not re.search(r"device\s*=\s*[\"']cuda", code), (
        f"README.md:{block.line}: use device=\"cpu\" or a device variable, not \"cuda\"")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    namespace = {"frame": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8),
                 "goal": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), "device": "cpu"}
    exec(compile(code, f"README.md:{block.line}", "exec"), namespace)
