"""Broken TFDS/RLDS input: a clear error naming shard and record, or a counted skip of the
episode; never a half-written output. Also the CRC32C and protobuf wire-format details."""

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from bridge_torch.data import store_concat
from bridge_torch.data.sources import crc32c
from bridge_torch.data.sources.bridge_raw import BAD_IMAGE, TOO_SHORT
from bridge_torch.data.sources.rlds_convert import (
    WORK_DIR,
    RldsConversionError,
    RldsOptions,
    convert_rlds,
)
from bridge_torch.data.sources.tfds import DatasetFormatError
from bridge_torch.data.sources.tfrecord import (
    Feature,
    TFRecordError,
    iter_records,
    parse_example,
    write_records,
)
from bridge_torch.data.store import open_store
from rlds_helpers import OPEN_X_DIR, RAIL_DIR, copy_release, encode_example, rewrite_shard

VAL0 = "bridge_dataset-val.tfrecord-00000-of-00002"
TRAIN1 = "bridge_dataset-train.tfrecord-00001-of-00002"


def _convert(src: Path, out: Path, **kwargs):
    return convert_rlds(RldsOptions(src, out, im_size=16, **kwargs), num_workers=1,
                        progress=False)


def _nothing_written(out: Path) -> bool:
    """No final store and no conversion.json (the hidden work directory may hold shards)."""
    stores = [p for p in out.glob("**/packed/meta.json") if WORK_DIR not in p.parts]
    return not (out / "conversion.json").exists() and not stores


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return copy_release(RAIL_DIR, tmp_path / "bridge_dataset" / "1.0.0")


def test_crc32c_known_values_and_block_path() -> None:
    assert crc32c.crc32c(b"123456789") == 0xE3069283
    assert crc32c.masked_crc32c(bytes.fromhex("4b00030000000000")) == 0x062562AE
    rng = np.random.default_rng(0)
    for size in (0, 3, 1023, 1024, 1025, 4099, 70001):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        loop = crc32c._update(0xFFFFFFFF, data) ^ 0xFFFFFFFF
        assert crc32c.crc32c(data) == loop, size


def test_chunked_crc_equals_one_pass(monkeypatch) -> None:
    data = np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    whole = crc32c.crc32c(data)
    monkeypatch.setattr(crc32c, "CHUNK", 4096)
    assert crc32c.crc32c(data) == whole


def test_example_wire_forms() -> None:
    features = {"f": Feature("float_list", np.float32([1.5, -2.25, 3e-8])),
                "i": Feature("int64_list", np.int64([0, 1, -1, 2**62, -(2**63)])),
                "b": Feature("bytes_list", [b"", b"\xff\xd8jpeg"]), "e": Feature("empty", [])}
    for packed in (True, False):
        data = encode_example(features, packed=packed) + b"\x98\x06\x2a"  # field 99: skipped
        parsed = parse_example(data, "x", 0)
        assert parsed["f"].values.tolist() == features["f"].values.tolist()
        assert parsed["i"].values.tolist() == features["i"].values.tolist()
        assert parsed["b"].values == features["b"].values and parsed["e"].kind == "empty"

    def message(tag: int, payload: bytes) -> bytes:
        return bytes([tag, len(payload)]) + payload

    mixed = message(0x0A, struct.pack("<2f", 1.0, 2.0)) + b"\x0d" + struct.pack("<f", 3.0)
    entry = message(0x0A, b"f") + message(0x12, message(0x12, mixed))
    parsed = parse_example(message(0x0A, message(0x0A, entry)), "x", 0)
    assert parsed["f"].values.tolist() == [1.0, 2.0, 3.0]  # a packed run, then one unpacked
    with pytest.raises(TFRecordError, match=r"x: record 7: not a tf\.train\.Example"):
        parse_example(message(0x0A, message(0x0A, entry))[:-3], "x", 7)


def test_truncated_shard_is_an_error_naming_shard_and_record(release: Path, tmp_path) -> None:
    shard = release / TRAIN1
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(RldsConversionError, match=rf"{TRAIN1}: record 0: truncated shard"):
        _convert(release, tmp_path / "out")
    assert _nothing_written(tmp_path / "out")
    shard.write_bytes(shard.read_bytes()[:5])
    with pytest.raises(TFRecordError, match="record 0: truncated shard: 5 bytes"):
        list(iter_records(shard))


def test_crc_mismatch_fails_then_a_repaired_shard_resumes(release: Path, tmp_path) -> None:
    good = (release / VAL0).read_bytes()
    broken = bytearray(good)
    broken[5000] ^= 0x01
    (release / VAL0).write_bytes(bytes(broken))
    out = tmp_path / "out"
    with pytest.raises(RldsConversionError, match=rf"{VAL0}: record 0: CRC mismatch in the data"):
        _convert(release, out)
    assert _nothing_written(out)
    assert len(list((out / WORK_DIR).glob("*/*/done.json"))) == 3  # the others are kept
    length = bytearray(good)
    length[0] ^= 0x01
    (release / VAL0).write_bytes(bytes(length))
    with pytest.raises(RldsConversionError, match=r"record 0: CRC mismatch in the length"):
        _convert(release, out)
    (release / VAL0).write_bytes(good)
    report = _convert(release, out)
    assert (report.shards, report.resumed_shards) == (4, 3)
    assert report.episodes == {"train": 2, "val": 2} and not (out / WORK_DIR).exists()


def test_record_that_is_not_an_example(release: Path, tmp_path) -> None:
    write_records(release / VAL0, [b"this is plain text, not a protobuf message"])
    with pytest.raises(RldsConversionError, match=rf"{VAL0}: record 0: not a tf.train.Example"):
        _convert(release, tmp_path / "out")
    assert _nothing_written(tmp_path / "out")


def test_shard_with_more_records_than_the_metadata(release: Path, tmp_path) -> None:
    records = [data for _, _, data in iter_records(release / VAL0)]
    write_records(release / VAL0, records * 2)
    with pytest.raises(RldsConversionError, match=r"holds 2 records, but dataset_info\.json says"):
        _convert(release, tmp_path / "out")
    assert _nothing_written(tmp_path / "out")


def test_missing_metadata_or_shard(release: Path, tmp_path) -> None:
    (release / "features.json").unlink()
    with pytest.raises(DatasetFormatError, match=r"features\.json is missing"):
        _convert(release, tmp_path / "out")
    shutil.copy(RAIL_DIR / "features.json", release / "features.json")
    (release / TRAIN1).unlink()
    with pytest.raises(DatasetFormatError, match=f"lacks 1 of its 2 shard files, e.g. {TRAIN1}"):
        _convert(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_variant(release: Path, tmp_path) -> None:
    text = (release / "features.json").read_text().replace('"action"', '"motion"')
    (release / "features.json").write_text(text)
    with pytest.raises(ValueError, match=r"unknown RLDS variant .*rail: lacks steps/action"):
        _convert(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_undecodable_jpeg_and_short_episode_are_counted_skips(tmp_path: Path) -> None:
    release = copy_release(OPEN_X_DIR, tmp_path / "bridge" / "0.1.0")

    def corrupt_second(index: int, features: dict) -> None:
        if index == 1:
            images = features["steps/observation/image"].values
            images[3] = images[3][:200]  # a JPEG cut short

    rewrite_shard(release / "bridge-train.tfrecord-00000-of-00001", corrupt_second)

    def one_step(_: int, features: dict) -> None:
        for key, feature in list(features.items()):
            per_step = len(feature) // len(features["steps/is_first"])
            features[key] = Feature(feature.kind, feature.values[:per_step])

    rewrite_shard(release / "bridge-test.tfrecord-00000-of-00001", one_step)
    report = _convert(release, tmp_path / "out")
    assert dict(report.skipped) == {BAD_IMAGE: 1, TOO_SHORT: 1}
    assert report.examples[BAD_IMAGE] == "bridge-train.tfrecord-00000-of-00001 record 1"
    assert report.examples[TOO_SHORT] == "bridge-test.tfrecord-00000-of-00001 record 0"
    assert report.episodes == {"train": 1} and report.stores == ["train/packed"]
    assert open_store(tmp_path / "out" / "train" / "packed").trajectory_sources == [
        "bridge-train.tfrecord-00000-of-00001#0"]
    marker = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert marker["skipped_episodes"] == {BAD_IMAGE: 1, TOO_SHORT: 1}


def test_every_episode_skipped_writes_nothing(release: Path, tmp_path) -> None:
    report = _convert(release, tmp_path / "out", cameras=("image_3",), splits=("val",))
    assert report.episodes == {} and report.stores == [] and sum(report.skipped.values()) == 2
    assert not list((tmp_path / "out").glob("**/packed"))


def test_interrupted_worker_output_is_redone(release: Path, tmp_path) -> None:
    out = tmp_path / "out"
    (release / VAL0).write_bytes(b"\0" * 7)
    with pytest.raises(RldsConversionError, match=f"{VAL0}: record 0: truncated shard"):
        _convert(release, out)
    shutil.copy(RAIL_DIR / VAL0, release / VAL0)
    leftover = out / WORK_DIR / "train" / TRAIN1
    (leftover / "done.json").unlink()  # as if killed after its store, before done.json
    (leftover / "packed" / "actions.npy").write_bytes(b"garbage")
    report = _convert(release, out)
    assert report.resumed_shards == 2 and report.episodes == {"train": 2, "val": 2}
    reference = _convert(RAIL_DIR, tmp_path / "reference")
    for split in ("train", "val"):
        a, b = (open_store(p / split / "packed") for p in (out, tmp_path / "reference"))
        assert np.array_equal(a.actions, b.actions) and a.stats == b.stats
    assert reference.resumed_shards == 0


def test_interrupted_merge_writes_nothing_and_resumes(release: Path, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"

    def interrupted(source, target) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_concat, "_copy_rest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _convert(release, out)
    assert _nothing_written(out) and len(list((out / WORK_DIR).glob("*/*/done.json"))) == 4
    assert not list((out / "train").iterdir())  # no temporary store left either
    monkeypatch.undo()
    report = _convert(release, out)
    assert report.resumed_shards == 4 and report.episodes == {"train": 2, "val": 2}
    assert open_store(out / "train" / "packed").num_trajectories == 2
