"""A TFDS directory's uncached shards packed by worker processes (``rlds.num_workers``): the same
cache entries as one process, the same error for a corrupt shard, a clear one for a worker that
died, nothing half-written left behind, and the ``auto`` rule."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bridge_torch.atomic import TEMP_RE, is_temporary
from bridge_torch.data import rlds_stream
from bridge_torch.data.rlds_stream import RldsStreamConfig, auto_workers, open_tfds_split
from bridge_torch.data.sources.tfrecord import iter_records, write_records
from bridge_torch.train.config import compose_config
from rlds_helpers import RAIL_DIR, copy_release

TRAIN0 = "bridge_dataset-train.tfrecord-00000-of-00002"
TRAIN1 = "bridge_dataset-train.tfrecord-00001-of-00002"


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return copy_release(RAIL_DIR, tmp_path / "tfds" / "bridge_dataset" / "1.0.0")


def _pack(release: Path, cache: Path, split: str, num_workers: int, monkeypatch) -> list:
    monkeypatch.setenv("BRIDGE_TORCH_CACHE", str(cache))
    (stores,) = open_tfds_split(release, [["**"]], [], split, camera="images0", im_size=16,
                                progress=False, num_workers=num_workers)
    return stores


def _files(cache: Path) -> dict[str, bytes]:
    return {p.relative_to(cache).as_posix(): p.read_bytes() for p in sorted(cache.rglob("*"))
            if p.is_file()}


def _setting_dir(cache: Path) -> Path:
    return next(cache.glob("rlds/*/*"))


def _grow_train_shards(release: Path, copies: int) -> None:
    """Each train shard holds its records ``copies`` times (packing one takes a while)."""
    for shard in release.glob("*-train.tfrecord-*"):
        write_records(shard, [data for _, _, data in iter_records(shard)] * copies)
    info = json.loads((release / "dataset_info.json").read_text())
    train = next(split for split in info["splits"] if split["name"] == "train")
    train["shardLengths"] = [str(int(n) * copies) for n in train["shardLengths"]]
    (release / "dataset_info.json").write_text(json.dumps(info))


def test_two_workers_pack_the_same_bytes_as_one(release: Path, tmp_path: Path,
                                                monkeypatch) -> None:
    for workers in (1, 2):
        for split in ("train", "val"):
            stores = _pack(release, tmp_path / f"cache{workers}", split, workers, monkeypatch)
            assert [s.num_trajectories for s in stores] == [1, 1]
    one, two = _files(tmp_path / "cache1"), _files(tmp_path / "cache2")
    assert sum(name.endswith("/done.json") for name in one) == 4
    assert sum("/packed/" in name for name in one) >= 4
    assert one.keys() == two.keys()
    assert [name for name in one if one[name] != two[name]] == []


def test_a_corrupt_shard_gives_the_same_error_with_two_workers(release: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    shard = release / TRAIN1
    shard.write_bytes(shard.read_bytes()[:-100])
    messages = []
    for workers in (1, 2):
        cache = tmp_path / f"cache{workers}"
        with pytest.raises(ValueError, match=rf"{TRAIN1}: record 0: truncated shard") as error:
            _pack(release, cache, "train", workers, monkeypatch)
        messages.append(str(error.value).replace(str(cache), "<cache>"))
        directory = _setting_dir(cache)
        assert not (directory / TRAIN1).exists()
        assert not [p.name for p in directory.iterdir() if is_temporary(p.name)]
    assert messages[0] == messages[1]
    assert "shards packed before stay cached" in messages[1]


@pytest.mark.slow
def test_a_killed_worker_is_named_and_leaves_nothing_half_written(release: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch) -> None:
    _grow_train_shards(release, copies=24)
    cache, outcome = tmp_path / "cache", {}

    def run() -> None:
        try:
            _pack(release, cache, "train", 2, monkeypatch)
        except ValueError as err:
            outcome["error"] = str(err)

    packer = threading.Thread(target=run)
    packer.start()
    killed, deadline = None, time.monotonic() + 120
    while killed is None and packer.is_alive() and time.monotonic() < deadline:
        for path in cache.glob(f"rlds/*/*/.{TRAIN0}.tmp-*"):  # TRAIN0 is being packed
            killed = int(TEMP_RE.match(path.name)["pid"])
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.005)
    packer.join(120)
    assert killed is not None, "never saw the worker packing the shard"
    assert f"{release / TRAIN0}" in outcome["error"]
    assert "the worker process packing" in outcome["error"] and "died" in outcome["error"]
    directory = _setting_dir(cache)
    assert TRAIN0 not in [p.name for p in directory.iterdir()]
    assert not [p.name for p in directory.iterdir() if is_temporary(p.name)]
    stores = _pack(release, cache, "train", 2, monkeypatch)  # the next run packs the rest
    assert [s.num_trajectories for s in stores] == [24, 24]


def test_num_workers_setting(monkeypatch) -> None:
    assert compose_config([f"data_path={RAIL_DIR}", "rlds.num_workers=3"]).rlds.workers() == 3
    assert compose_config([f"data_path={RAIL_DIR}"]).rlds.num_workers == "auto"
    for bad in ("0", "two", "1.5", "true"):
        with pytest.raises(ValueError, match=r"rlds\.num_workers must be 'auto' or a number "
                                             r">= 1, got"):
            compose_config([f"data_path={RAIL_DIR}", f"rlds.num_workers={bad}"])
    for cores, ranks, workers in ((2, None, 2), (16, "4", 4), (64, "1", 8), (2, "4", 1)):
        monkeypatch.setattr(rlds_stream.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        if ranks is None:
            monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks)
        assert auto_workers() == RldsStreamConfig().workers() == workers
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "all")
    with pytest.raises(ValueError, match=r"LOCAL_WORLD_SIZE='all': expected the number of DDP"):
        auto_workers()


@pytest.mark.slow
def test_packing_benchmark_times_each_worker_count_on_an_empty_cache() -> None:
    bench = Path(__file__).resolve().parents[1] / "bench" / "rlds_stream.py"
    out = subprocess.run([sys.executable, str(bench), "--shards", "2", "--episodes-per-shard",
                          "1", "--workers", "1", "2", "1", "--im-size", "8"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["episodes"] == 2 and [r["workers"] for r in report["results"]] == [1, 2, 1]
    for row in report["results"]:
        assert row["episodes_per_s"] == pytest.approx(2 / row["seconds"])
        assert row["cpu_s"] > 0
