"""Flax-format msgpack trees for the JAX importer's tests, written without flax.

``pack`` serialises as flax does: nested maps, sequences as msgpack arrays, every array a
msgpack extension of type 1 holding ``[shape, dtype name, little-endian C-order bytes]``.
``listing`` reads the leaf listing the original code's tooling wrote next to each fixture;
``full_size_tree`` scales that listing to the released default size (64 encoder filters,
3 score blocks) to check parameter counts without a 330 MB file.
"""

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from bridge_torch.deploy.jax_import import flax_msgpack

FIXTURES = Path(__file__).parent / "fixtures" / "jax"
SMALL_FILTERS, FULL_FILTERS = 8, 64
SCORE_BLOCK = re.compile(r"(reverse_network/MLPResNetBlock_)0/")


def _ext(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        data = value.astype(value.dtype.newbyteorder("<"), order="C").tobytes()
        payload = [list(value.shape), value.dtype.name, data]
        return msgpack.ExtType(1, msgpack.packb(payload))
    raise TypeError(f"cannot pack {type(value).__name__}")


def pack(tree: dict) -> bytes:
    """``tree`` (dicts, lists, arrays) as flax writes it; an array object met twice is encoded
    once (the default-size trees share one array per shape)."""
    encoded: dict[int, msgpack.ExtType] = {}

    def default(value: Any) -> Any:
        if id(value) not in encoded:
            encoded[id(value)] = _ext(value)
        return encoded[id(value)]

    return msgpack.packb(tree, default=default, use_bin_type=True)


def nest(flat: dict[str, np.ndarray]) -> dict:
    """A nested tree from "/"-paths; maps keyed "0".."n-1" become lists, as flax stores them."""
    root: dict = {}
    for path, value in flat.items():
        *parents, name = path.split("/")
        node = root
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    children = {key: _lists(value) for key, value in node.items()}
    if children and sorted(children) == [str(i) for i in range(len(children))]:
        return [children[str(i)] for i in range(len(children))]
    return children


def listing(agent: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(path, shape, dtype) of every leaf of the agent's fixture checkpoint, in file order."""
    rows = []
    for line in (FIXTURES / agent / f"params_{agent}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, shape, dtype, _ = line.split("\t")
        rows.append((path, tuple(int(d) for d in re.findall(r"\d+", shape)), dtype))
    return rows


def _full_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The default-size shape of a fixture leaf: encoder channels x8, head input widened."""
    scale = FULL_FILTERS // SMALL_FILTERS
    if "/encoder/encoder/" in path:
        if path.endswith("conv_init/kernel"):  # its input is the image, not a feature map
            return (*shape[:3], shape[3] * scale)
        if len(shape) == 4:
            return (*shape[:2], shape[2] * scale, shape[3] * scale)
        return (shape[0] * scale,)
    feature_growth = 8 * (FULL_FILTERS - SMALL_FILTERS)  # the encoder output is 8F wide
    if path.endswith(("network/Dense_0/kernel", "reverse_network/Dense_0/kernel")):
        return (shape[0] + feature_growth, shape[1])
    return shape


def full_size_tree(agent: str, score_blocks: int = 3) -> dict:
    """The fixture's tree at the released default size, filled with random float32 values."""
    pool = np.random.default_rng(0).standard_normal(3 * 3 * 512 * 512, dtype=np.float32)
    flat, arrays = {}, {}
    for path, shape, dtype in listing(agent):
        paths = [path]
        if SCORE_BLOCK.search(path):
            paths = [SCORE_BLOCK.sub(rf"\g<1>{b}/", path) for b in range(score_blocks)]
        for full_path in paths:
            full = _full_shape(full_path, shape)
            if (full, dtype) not in arrays:
                count = int(np.prod(full))
                value = pool[:count] if dtype == "float32" else np.arange(count, dtype=dtype)
                arrays[full, dtype] = value.reshape(full)
            flat[full_path] = arrays[full, dtype]
    return nest(flat)


def weight_trees(tree: dict) -> list[dict]:
    """The four copies of the parameter tree in a bc/gc_bc checkpoint (weights, target, Adam)."""
    state = tree["state"]
    adam = state["opt_states"]["0"]
    return [state["params"], state["target_params"], adam["mu"], adam["nu"]]


def actor(tree: dict, which: str = "params") -> dict:
    return tree["state"][which]["modules_actor"]


def in_every_weight_tree(edit: Callable[[dict], object]) -> Callable[[dict], None]:
    """Apply ``edit`` to params, target_params and Adam's moments alike (they must agree)."""
    def apply(tree: dict) -> None:
        for params in weight_trees(tree):
            edit(params["modules_actor"])

    return apply


def rewrite_checkpoint(source: Path, out: Path, edit: Callable[[dict], object]) -> Path:
    """``source`` decoded, changed in place by ``edit`` and written to ``out`` as flax would."""
    tree = flax_msgpack.read(source)
    edit(tree)
    out.write_bytes(pack(tree))
    return out


def rewrite_config(source: Path, folder: Path, edit: Callable[[dict], object]) -> Path:
    """The config JSON changed by ``edit``, under its own name in ``folder``."""
    config = json.loads(source.read_text())
    edit(config)
    path = folder / source.name
    path.write_text(json.dumps(config))
    return path
