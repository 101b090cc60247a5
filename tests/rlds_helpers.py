"""Shared by the RLDS tests: the checked-in TFDS fixture, its decoded ground truth, and a tiny
protobuf encoder for building (broken) Example records."""

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from bridge_torch.data.sources.tfrecord import (
    BYTES_LIST,
    FLOAT_LIST,
    Feature,
    iter_records,
    parse_example,
    write_records,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rlds"
RAIL_DIR = FIXTURES / "bridge_dataset" / "1.0.0"
OPEN_X_DIR = FIXTURES / "bridge" / "0.1.0"


def expected(name: str) -> dict:
    """The decoded ground truth of every record of ``bridge_dataset`` or ``bridge``."""
    return json.loads((FIXTURES / f"expected_{name}.json").read_text())


def episodes(truth: dict, split: str) -> list[dict]:
    """Expected episodes of one TFDS split, in on-disk order (shard index, then record)."""
    return [e for shard in truth["splits"][split]["shards"] for e in shard["episodes"]]


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """float32 arrays equal bit for bit."""
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def copy_release(src: Path, dst: Path) -> Path:
    """A writable copy of a fixture release directory."""
    shutil.copytree(src, dst)
    for path in dst.iterdir():
        path.chmod(0o644)
    return dst


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    head = _varint(number << 3 | wire)
    return head + (_varint(len(payload)) + payload if wire == 2 else payload)


def _list(feature: Feature, packed: bool) -> bytes:
    if feature.kind == BYTES_LIST:
        return b"".join(_field(1, 2, bytes(v)) for v in feature.values)
    if feature.kind == FLOAT_LIST:
        if packed:
            return _field(1, 2, np.asarray(feature.values, "<f4").tobytes())
        return b"".join(_field(1, 5, struct.pack("<f", v)) for v in feature.values)
    if packed:
        return _field(1, 2, b"".join(_varint(int(v)) for v in feature.values))
    return b"".join(_field(1, 0, _varint(int(v))) for v in feature.values)


def encode_example(features: dict[str, Feature], packed: bool = True) -> bytes:
    """A serialized tf.train.Example holding ``features`` (packed or unpacked numbers)."""
    kinds = {"bytes_list": 1, "float_list": 2, "int64_list": 3}
    entries = b""
    for key, feature in features.items():
        value = _field(kinds[feature.kind], 2, _list(feature, packed)) \
            if feature.kind in kinds else b""
        entries += _field(1, 2, _field(1, 2, key.encode()) + _field(2, 2, value))
    return _field(1, 2, entries)


def rewrite_shard(shard: Path, edit) -> None:
    """Re-encode every record of ``shard`` after ``edit(index, features)`` changed it."""
    records = []
    for index, _, data in iter_records(shard):
        features = parse_example(data, shard, index)
        edit(index, features)
        records.append(encode_example(features))
    write_records(shard, records)
