"""Read flax msgpack checkpoints with msgpack and numpy only (no JAX, flax or pickle).

A flax checkpoint is one msgpack value: nested maps with string keys (sequences may be msgpack
arrays or, in older files, maps keyed "0", "1", ...), whose leaves are msgpack extension
objects. Extension code 1 (ndarray) and 3 (NumPy scalar) carry a msgpack array
``[shape, dtype name, raw little-endian C-order bytes]``; code 2 is a Python complex stored as
``(real, imag)``; code 4 is a tuple whose payload is a msgpack array.

The file is memory-mapped and every array is an ``np.frombuffer`` view into the mapping, so a
350 MB checkpoint costs no private copy until its weights are converted. msgpack walks the
containers; the reader parses only the extension framing itself, to know where each array's
bytes start. Sequences come back as dicts keyed "0", "1", ..., so both encodings give the same
tree and every leaf has a "/"-separated path.
"""

import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bridge_torch.deploy.jax_import.errors import JaxImportError

try:
    import msgpack
except ImportError:  # an optional dependency: only the importer needs it
    raise ImportError("importing JAX checkpoints needs msgpack: "
                      "pip install 'bridge-torch[jax-import]'") from None

Tree = dict[str, Any]
EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR, EXT_TUPLE = 1, 2, 3, 4
MAP_LEADS = {*range(0x80, 0x90), 0xDE, 0xDF}
ARRAY_LEADS = {*range(0x90, 0xA0), 0xDC, 0xDD}
FIXEXT_SIZES = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}  # lead byte -> payload bytes
EXT_LENGTH_BYTES = {0xC7: 1, 0xC8: 2, 0xC9: 4}  # lead byte -> bytes of the big-endian length
BIN_LENGTH_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4}
CHUNKED_ARRAY_KEY = "__msgpack_chunked_array__"  # flax's marker for arrays split above 2**30 B
HEADER_PEEK = 4096  # bytes enough for any ndarray payload's [shape, dtype] prefix


class _ViewReader:
    """File-like ``read`` over a memoryview, so msgpack's Unpacker can walk a mapping."""

    def __init__(self, view: memoryview) -> None:
        self.view, self.pos = view, 0

    def read(self, size: int) -> bytes:
        chunk = bytes(self.view[self.pos:self.pos + size])
        self.pos += len(chunk)
        return chunk


class _Walker:
    """Decodes one msgpack value from ``view``, returning array leaves as views into it."""

    def __init__(self, view: memoryview, source: str) -> None:
        self.view, self.source = view, source
        self.unpacker = msgpack.Unpacker(_ViewReader(view), raw=False, strict_map_key=False,
                                         read_size=1 << 20, max_buffer_size=2**31 - 1)

    def fail(self, path: str, problem: str) -> JaxImportError:
        where = f" at leaf {path!r}" if path else ""
        return JaxImportError(f"{self.source}: {problem}{where}")

    def value(self, path: str) -> Any:
        pos = self.unpacker.tell()
        if pos >= len(self.view):
            raise self.fail(path, "file ends in the middle of the tree (truncated?)")
        lead = self.view[pos]
        if lead in MAP_LEADS:
            return self.container(path, self.unpacker.read_map_header(), keyed=True)
        if lead in ARRAY_LEADS:
            return self.container(path, self.unpacker.read_array_header(), keyed=False)
        if lead in FIXEXT_SIZES or lead in EXT_LENGTH_BYTES:
            leaf = self.extension(pos, lead, path)
            self.unpacker.skip()
            return leaf
        return np.asarray(self.unpacker.unpack())  # a plain msgpack scalar leaf

    def container(self, path: str, size: int, *, keyed: bool) -> Tree:
        node: Tree = {}
        for index in range(size):
            key = str(self.unpacker.unpack()) if keyed else str(index)
            child = f"{path}/{key}" if path else key
            if key == CHUNKED_ARRAY_KEY:
                raise self.fail(path, "chunked arrays (over 2**30 bytes) are not supported")
            if key in node:
                raise self.fail(child, "duplicate key")
            node[key] = self.value(child)
        return node

    def extension(self, pos: int, lead: int, path: str) -> Any:
        if lead in FIXEXT_SIZES:
            length, start = FIXEXT_SIZES[lead], pos + 1
        else:
            start = pos + 1 + EXT_LENGTH_BYTES[lead]
            length = int.from_bytes(self.view[pos + 1:start], "big")
        if start + 1 + length > len(self.view):
            raise self.fail(path, "file ends inside an array (truncated?)")
        code, payload = int.from_bytes(self.view[start:start + 1], "big", signed=True), start + 1
        if code in (EXT_NDARRAY, EXT_NPSCALAR):
            return self.ndarray(payload, length, path)
        if code == EXT_COMPLEX:
            real, imag = msgpack.unpackb(self.view[payload:payload + length])
            return np.asarray(complex(real, imag))
        if code == EXT_TUPLE:
            inner = _Walker(self.view[payload:payload + length], self.source)
            return inner.value(path)
        raise self.fail(path, f"unknown msgpack extension type {code}")

    def ndarray(self, start: int, length: int, path: str) -> np.ndarray:
        header = msgpack.Unpacker(raw=False)
        header.feed(self.view[start:start + min(length, HEADER_PEEK)])
        if header.read_array_header() != 3:
            raise self.fail(path, "array payload is not [shape, dtype, data]")
        shape, dtype_name = tuple(header.unpack()), header.unpack()
        lead_pos = start + header.tell()
        width = BIN_LENGTH_BYTES.get(self.view[lead_pos])
        if width is None:
            raise self.fail(path, "array data is not msgpack bin")
        nbytes = int.from_bytes(self.view[lead_pos + 1:lead_pos + 1 + width], "big")
        data = lead_pos + 1 + width
        if data + nbytes != start + length:
            raise self.fail(path, "array data does not fill its extension payload")
        return array_view(self.view, data, nbytes, shape, dtype_name,
                          lambda problem: self.fail(path, problem))


def array_view(view: memoryview, offset: int, nbytes: int, shape: tuple[int, ...],
               dtype_name: str, fail: Callable[[str], JaxImportError]) -> np.ndarray:
    """The stored bytes as an array; a view unless the dtype needs widening (bfloat16)."""
    count = int(np.prod(shape, dtype=np.int64))
    if dtype_name == "bfloat16":  # not a NumPy dtype: the upper half of a float32's bits
        if nbytes != 2 * count:
            raise fail(f"bfloat16 {shape} needs {2 * count} bytes, found {nbytes}")
        bits = np.frombuffer(view, np.dtype("<u2"), count, offset).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    try:
        dtype = np.dtype(dtype_name).newbyteorder("<")
    except TypeError:
        raise fail(f"unknown dtype {dtype_name!r}") from None
    if nbytes != count * dtype.itemsize:
        raise fail(f"{dtype_name} {shape} needs {count * dtype.itemsize} bytes, found {nbytes}")
    return np.frombuffer(view, dtype, count, offset).reshape(shape)


def decode(buffer: Any, source: str) -> Tree:
    """The checkpoint tree held in ``buffer`` (bytes, mmap, ...); ``source`` names it in errors.

    Raises:
        JaxImportError: the bytes are not one complete flax msgpack map (not msgpack, truncated,
            trailing bytes, unknown extension or dtype).
    """
    view = memoryview(buffer).cast("B")
    walker = _Walker(view, source)
    if len(view) == 0 or view[0] not in MAP_LEADS:
        raise walker.fail("", "not a flax msgpack checkpoint (it does not start with a map)")
    try:
        tree = walker.value("")
    except JaxImportError:
        raise
    except (msgpack.exceptions.UnpackException, ValueError, TypeError) as err:
        raise walker.fail("", f"not a valid flax msgpack checkpoint, truncated or corrupt "
                              f"({type(err).__name__}: {err})") from None
    if walker.unpacker.tell() != len(view):
        raise walker.fail("", f"{len(view) - walker.unpacker.tell()} unexpected bytes after "
                              "the checkpoint tree")
    return tree


def read(path: Path) -> Tree:
    """Memory-map ``path`` and decode it; array leaves stay views into the mapping."""
    path = Path(path)
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise JaxImportError(f"{path}: empty file, not a flax msgpack checkpoint")
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return decode(mapping, str(path))


def locate(path: Path) -> Path:
    """The msgpack file of a checkpoint given as ``checkpoint_<step>/``, its ``checkpoint``
    file, or a bare ``checkpoint_<step>`` file (flax before orbax)."""
    path = Path(path)
    if path.is_dir():
        inner = path / "checkpoint"
        if not inner.is_file():
            raise JaxImportError(f"{path}: no 'checkpoint' file in this directory; expected the "
                                 "released layout checkpoint_<step>/checkpoint (orbax OCDBT "
                                 "directories are not supported)")
        return inner
    if not path.is_file():
        raise JaxImportError(f"{path}: no such checkpoint file or directory")
    return path


def leaves(tree: Tree, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, leaf) of a decoded tree, depth first in stored order."""
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, dict):
            yield from leaves(value, path)
        else:
            yield path, value
