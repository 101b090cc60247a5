"""TFRecord files and ``tf.train.Example`` records, read without TensorFlow or protobuf.

A TFRecord file is a bare sequence of records: ``uint64 length | uint32 masked CRC32C of the 8
length bytes | data | uint32 masked CRC32C of data`` (all little-endian). Both checksums are
verified, so a truncated or bit-flipped download fails loudly instead of feeding garbage to
training; every error names the file and the record index.

An Example is ``Features features = 1``; ``Features`` is ``map<string, Feature> feature = 1``
(entries of ``key = 1``, ``value = 2``); a ``Feature`` holds one of ``bytes_list = 1``,
``float_list = 2``, ``int64_list = 3``, each a message whose field 1 holds the values. Float and
int64 values may come packed (one length-delimited run) or unpacked (one field per value), in any
mix; unknown fields are skipped by wire type, as protobuf parsers do.
"""

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bridge_torch.data.sources.crc32c import masked_crc32c

HEADER = struct.Struct("<QI")  # data length, masked CRC32C of the 8 length bytes
FOOTER = struct.Struct("<I")  # masked CRC32C of the data
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
BYTES_LIST, FLOAT_LIST, INT64_LIST, EMPTY = "bytes_list", "float_list", "int64_list", "empty"
KINDS = {1: BYTES_LIST, 2: FLOAT_LIST, 3: INT64_LIST}


class TFRecordError(ValueError):
    """A shard that is not a valid TFRecord file, or a record that is not a tf.train.Example."""

    def __init__(self, shard: Path | str, index: int, detail: str) -> None:
        super().__init__(f"{shard}: record {index}: {detail}")
        self.shard, self.index, self.detail = str(shard), index, detail


class _Malformed(Exception):
    """Internal: the protobuf wire data is invalid (turned into a TFRecordError by the caller)."""


@dataclass(frozen=True)
class Feature:
    """One value list of an Example: ``list[bytes]``, float32 or int64 array; EMPTY = no kind."""

    kind: str
    values: list[bytes] | np.ndarray

    def __len__(self) -> int:
        return len(self.values)


# ---------------------------------------------------------------------------------------------
# Framing


def _read_exact(file: BinaryIO, size: int, shard: Path, index: int, offset: int,
                what: str) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise TFRecordError(shard, index, f"truncated shard: the {what} at byte {offset} needs "
                            f"{size} bytes, only {len(data)} left")
    return data


def _check(shard: Path, index: int, what: str, data: bytes, stored: int) -> None:
    computed = masked_crc32c(data)
    if computed != stored:
        raise TFRecordError(shard, index, f"CRC mismatch in the {what} (stored 0x{stored:08x}, "
                            f"computed 0x{computed:08x}): the file is corrupt")


def read_record(file: BinaryIO, shard: Path, index: int) -> bytes | None:
    """The data of the record at the file's position (checksums verified); None at a clean end.

    Raises:
        TFRecordError: a truncated record or a checksum mismatch.
    """
    offset = file.tell()
    head = file.read(HEADER.size)
    if not head:
        return None
    if len(head) != HEADER.size:
        raise TFRecordError(shard, index, f"truncated shard: {len(head)} bytes at byte {offset}, "
                            f"a record header needs {HEADER.size}")
    length, length_crc = HEADER.unpack(head)
    _check(shard, index, "length", head[:8], length_crc)
    data = _read_exact(file, length, shard, index, offset + HEADER.size, f"{length}-byte data")
    (data_crc,) = FOOTER.unpack(_read_exact(file, FOOTER.size, shard, index,
                                            offset + HEADER.size + length, "data checksum"))
    _check(shard, index, "data", data, data_crc)
    return data


def iter_records(shard: Path) -> Iterator[tuple[int, int, bytes]]:
    """``(index, byte offset, data)`` of every record, read one at a time (bounded memory)."""
    with open(shard, "rb") as file:
        for index in range(1 << 62):
            offset = file.tell()
            data = read_record(file, shard, index)
            if data is None:
                return
            yield index, offset, data


def records_at(shard: Path, positions: Iterable[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
    """``(index, data)`` of the records at the given ``(index, byte offset)`` positions."""
    with open(shard, "rb") as file:
        for index, offset in positions:
            file.seek(offset)
            data = read_record(file, shard, index)
            if data is None:
                raise TFRecordError(shard, index, f"truncated shard: no record at byte {offset}")
            yield index, data


def write_records(shard: Path, records: Iterable[bytes]) -> None:
    """Write ``records`` as a TFRecord file (builds test and benchmark shards)."""
    with open(shard, "wb") as file:
        for data in records:
            length = struct.pack("<Q", len(data))
            file.write(length + FOOTER.pack(masked_crc32c(length)) + data
                       + FOOTER.pack(masked_crc32c(data)))


# ---------------------------------------------------------------------------------------------
# Protobuf wire format


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


def _fields(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field number, wire type, start, stop)`` of each field in ``buf[pos:end]``; for a
    varint, ``start`` is its value."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
            continue
        if wire == LENGTH_DELIMITED:
            size, pos = _varint(buf, pos, end)
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
        else:
            raise _Malformed(f"unsupported wire type {wire} (field {number})")
        if pos + size > end:
            raise _Malformed(f"field {number} runs past the end of its message")
        yield number, wire, pos, pos + size
        pos += size


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _values(kind: str, buf: bytes, start: int, stop: int) -> list:
    """The values of one BytesList / FloatList / Int64List message, in order (floats as
    float32 array chunks, so long lists are not converted value by value)."""
    values: list = []
    for number, wire, a, b in _fields(buf, start, stop):
        if number != 1:
            continue
        if kind == BYTES_LIST and wire == LENGTH_DELIMITED:
            values.append(buf[a:b])
        elif kind == FLOAT_LIST and wire in (LENGTH_DELIMITED, FIXED32):
            if (b - a) % 4:
                raise _Malformed(f"packed floats of {b - a} bytes (not a multiple of 4)")
            values.append(np.frombuffer(buf, "<f4", (b - a) // 4, a))
        elif kind == INT64_LIST and wire == VARINT:
            values.append(_signed(a))
        elif kind == INT64_LIST and wire == LENGTH_DELIMITED:
            while a < b:
                value, a = _varint(buf, a, b)
                values.append(_signed(value))
        else:
            raise _Malformed(f"{kind} value with wire type {wire}")
    return values


def _feature(buf: bytes, start: int, stop: int) -> Feature:
    kind, values = EMPTY, []
    for number, wire, a, b in _fields(buf, start, stop):
        if number in KINDS and wire == LENGTH_DELIMITED:  # a oneof: the last one set wins
            kind, values = KINDS[number], _values(KINDS[number], buf, a, b)
    if kind == FLOAT_LIST:
        return Feature(kind, np.concatenate([np.zeros(0, np.float32), *values]).astype(np.float32))
    if kind == INT64_LIST:
        return Feature(kind, np.asarray(values, dtype=np.int64))
    return Feature(kind, values)


def _map_entry(buf: bytes, start: int, stop: int) -> tuple[str, Feature]:
    key, feature = b"", Feature(EMPTY, [])
    for number, wire, a, b in _fields(buf, start, stop):
        if number == 1 and wire == LENGTH_DELIMITED:
            key = buf[a:b]
        elif number == 2 and wire == LENGTH_DELIMITED:
            feature = _feature(buf, a, b)
    try:
        return key.decode("utf-8"), feature
    except UnicodeDecodeError as err:
        raise _Malformed(f"feature key {key[:40]!r} is not UTF-8") from err


def parse_example(data: bytes, shard: Path | str, index: int) -> dict[str, Feature]:
    """Flat feature name -> :class:`Feature` of one serialized ``tf.train.Example``.

    Raises:
        TFRecordError: ``data`` is not a valid Example (names ``shard`` and ``index``).
    """
    features: dict[str, Feature] = {}
    try:
        for number, wire, a, b in _fields(data, 0, len(data)):
            if number == 1 and wire == LENGTH_DELIMITED:  # Example.features
                for entry, entry_wire, c, d in _fields(data, a, b):
                    if entry == 1 and entry_wire == LENGTH_DELIMITED:
                        key, feature = _map_entry(data, c, d)
                        features[key] = feature
    except _Malformed as err:
        raise TFRecordError(shard, index, f"not a tf.train.Example ({err})") from err
    return features
