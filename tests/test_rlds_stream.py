"""Training straight from a TFDS/RLDS directory: its shards packed one by one into the cache,
the same training data as a conversion, reused while fresh, re-packed when a shard changed, a
corrupt shard named, and two processes sharing the packing."""

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge_torch.atomic import is_temporary
from bridge_torch.data import rlds_stream
from bridge_torch.data.actions import training_statistics
from bridge_torch.data.datasets import resolve_task_dirs
from bridge_torch.data.rlds_stream import open_tfds_split
from bridge_torch.data.sampler import TransitionSampler
from bridge_torch.data.sources import rlds
from bridge_torch.data.sources.rlds_convert import RldsOptions, convert_rlds
from bridge_torch.data.sources.tfds import open_tfds
from bridge_torch.data.sources.tfrecord import Feature
from bridge_torch.data.store import open_store
from bridge_torch.offline_eval import evaluate_run
from bridge_torch.train import checkpoint
from bridge_torch.train.config import compose_config
from bridge_torch.train.loop import train
from bridge_torch.train.metrics_log import read_metrics
from bridge_torch.train.run_data import load_run_data
from helpers import make_run
from rlds_helpers import OPEN_X_DIR, RAIL_DIR, copy_release, rewrite_shard
from test_rlds import TINY

TRAIN0 = "bridge_dataset-train.tfrecord-00000-of-00002"
TRAIN1 = "bridge_dataset-train.tfrecord-00001-of-00002"
VAL0 = "bridge_dataset-val.tfrecord-00000-of-00002"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("BRIDGE_TORCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return copy_release(RAIL_DIR, tmp_path / "tfds" / "bridge_dataset" / "1.0.0")


def _open(root: Path, split: str = "train", im_size: int = 16) -> list:
    (stores,) = open_tfds_split(root, [["**"]], [], split, camera="images0", im_size=im_size,
                                progress=False)
    return stores


def _entries(cache: Path) -> list[str]:
    """The cache entries (shard files) that hold a finished packing, sorted."""
    return sorted(p.parent.name for p in cache.glob("rlds/*/*/*/done.json"))


def _flat(batch: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.slow
def test_training_from_the_tfds_dir_equals_training_on_its_conversion(cache: Path,
                                                                       tmp_path: Path) -> None:
    converted = tmp_path / "converted"
    convert_rlds(RldsOptions(RAIL_DIR, converted, im_size=32), num_workers=1, progress=False)
    common = ["algo=gc_bc", "num_steps=2", "log_interval=1", "eval_interval=2",
              "save_interval=2", "rlds.im_size=32", *TINY]
    configs = {name: compose_config([f"data_path={path}", f"save_dir={tmp_path / name}",
                                     *common])
               for name, path in (("stream", RAIL_DIR), ("converted", converted))}
    data = {name: load_run_data(config, torch.device("cpu")) for name, config in configs.items()}
    assert _entries(cache) == sorted(p.name for p in RAIL_DIR.glob("*.tfrecord-*"))
    stream, ref = data["stream"], data["converted"]
    # Both merge the same per-shard stores' statistics exactly (parallel-variance formula), the
    # conversion into its one store first and training over that store again: equal up to
    # float64 rounding.
    for group in ("actions", "proprio"):
        for key in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(stream.stats[group][key], ref.stats[group][key],
                                       rtol=1e-12, atol=1e-15)
        assert stream.stats[group]["count"] == ref.stats[group]["count"]
    for split in ("train", "val"):
        ours, theirs = getattr(stream, split), getattr(ref, split)
        assert ours.num_transitions == theirs.num_transitions
        every = torch.arange(ours.frames.num_rows)
        assert torch.equal(ours.frames.gather(every), theirs.frames.gather(every))
        samplers = [TransitionSampler(d, configs["stream"].data.sample, seed=7)
                    for d in (ours, theirs)]
        for _ in range(3):  # the same seed draws the same batches, value for value
            a, b = (_flat(s.sample(8)) for s in samplers)
            assert a.keys() == b.keys()
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6, msg=key)
    runs = {name: train(config) for name, config in configs.items()}
    events = {name: [{k: v for k, v in e.items() if not k.startswith("timer/")}
                     for e in read_metrics(run)] for name, run in runs.items()}
    assert [list(e) for e in events["stream"]] == [list(e) for e in events["converted"]]
    assert any("validation/mse" in e for e in events["stream"])
    for ours, theirs in zip(events["stream"], events["converted"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5)  # losses, gradient norms, val metrics
    metrics = {}
    for name, run in runs.items():  # evaluation reads the val split from the same cache
        out = subprocess.run([str(Path(sys.executable).parent / "bridge-torch-eval"), str(run),
                              "--device", "cpu", "--json", str(tmp_path / f"{name}.json")],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert out.returncode == 0, out.stderr[-3000:]
        metrics[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert "packing" not in out.stderr  # the stream run's eval found every shard cached
    assert metrics["stream"]["transitions"] == metrics["converted"]["transitions"] == 8 + 4
    assert metrics["stream"]["mse"] == pytest.approx(metrics["converted"]["mse"], rel=1e-5)


def test_only_the_opened_split_is_packed_and_fresh_entries_are_reused(cache: Path,
                                                                       release: Path,
                                                                       monkeypatch) -> None:
    first = _open(release)
    assert _entries(cache) == [TRAIN0, TRAIN1]  # the val split was not asked for
    assert [s.num_trajectories for s in first] == [1, 1]
    assert all(s.image_size == (16, 16) and s.cameras == ["images0"] for s in first)
    entry = first[0].path.parent

    def refuse(job):
        raise AssertionError(f"{job.shard.path.name} was packed again although it is cached")

    with monkeypatch.context() as patch:
        patch.setattr(rlds_stream, "convert_shard", refuse)
        again = _open(release)
        assert [s.path for s in again] == [s.path for s in first]
        shard = release / TRAIN0
        stat = shard.stat()
        os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same bytes
        _open(release)  # re-hashed, reused, and the record now has the new mtime
        record = json.loads((entry / "done.json").read_text())
        assert record["shard"]["mtime_ns"] == shard.stat().st_mtime_ns
    assert _open(release, im_size=8)[0].image_size == (8, 8)  # other settings: other entries
    assert len(_entries(cache)) == 4


def test_a_changed_shard_is_repacked_alone(cache: Path, release: Path, monkeypatch) -> None:
    before = _open(release)
    packed = []
    convert = rlds_stream.convert_shard
    monkeypatch.setattr(rlds_stream, "convert_shard",
                        lambda job: packed.append(job.shard.path.name) or convert(job))

    def scale_state(index: int, features: dict) -> None:
        state = features["steps/observation/state"]
        features["steps/observation/state"] = Feature(state.kind, state.values * 2)

    rewrite_shard(release / TRAIN1, scale_state)
    after = _open(release)
    assert packed == [TRAIN1]
    assert np.array_equal(after[0].proprio, before[0].proprio)
    np.testing.assert_array_equal(after[1].proprio, 2 * np.asarray(before[1].proprio))
    assert not [p for p in after[1].path.parents[1].iterdir() if is_temporary(p.name)]


def test_open_x_test_split_is_its_val_split(cache: Path) -> None:
    (store,) = _open(OPEN_X_DIR, "val")
    assert store.num_trajectories == 1
    assert store.path.parent.name == "bridge-test.tfrecord-00000-of-00001"


def test_a_corrupt_shard_names_shard_and_record_and_caches_nothing_of_it(
        cache: Path, release: Path) -> None:
    broken = bytearray((release / VAL0).read_bytes())
    broken[5000] ^= 0x01
    (release / VAL0).write_bytes(bytes(broken))
    with pytest.raises(ValueError, match=rf"{VAL0}: record 0: CRC mismatch in the data"):
        _open(release, "val")
    assert _entries(cache) == []
    directory = next(cache.glob("rlds/*/*"))
    assert not [p for p in directory.iterdir() if p.is_dir()]  # no entry, no temporary
    assert [s.num_trajectories for s in _open(release)] == [1, 1]  # train is intact


@pytest.mark.slow
def test_train_cli_reports_a_corrupt_shard_in_one_line(cache: Path, release: Path,
                                                       tmp_path: Path) -> None:
    shard = release / TRAIN1
    shard.write_bytes(shard.read_bytes()[:-100])
    out = subprocess.run([str(Path(sys.executable).parent / "bridge-torch-train"),
                          f"data_path={release}", f"save_dir={tmp_path / 'runs'}",
                          "rlds.im_size=16", "num_steps=1", *TINY], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert f"error: {shard}: record 0: truncated shard" in out.stderr
    assert _entries(cache) == [TRAIN0]  # the good shard stays cached for the next try


def test_a_shard_another_process_packs_is_waited_for_not_packed_twice(
        cache: Path, release: Path, monkeypatch) -> None:
    _open(release, "val")  # creates the cache directory of these settings
    directory = next(cache.glob("rlds/*/*"))
    packed = []
    convert = rlds_stream.convert_shard
    monkeypatch.setattr(rlds_stream, "convert_shard",
                        lambda job: packed.append(job.shard.path.name) or convert(job))
    result = {}
    with rlds_stream._shard_lock(directory / f".{TRAIN0}.lock", wait=True):  # "another run"
        worker = threading.Thread(target=lambda: result.update(stores=_open(release)))
        worker.start()
        deadline = time.monotonic() + 60
        while TRAIN1 not in _entries(cache) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert TRAIN1 in _entries(cache) and TRAIN0 not in _entries(cache)
        assert worker.is_alive()  # waiting for the shard the lock holder is packing
        dataset = open_tfds(release)  # the lock holder packs it, as the other run would
        holder = rlds_stream.ShardCache(dataset, rlds.detect_variant(dataset), ("images0",), 16)
        holder.pack(dataset.splits["train"][0])
    worker.join(60)
    assert packed == [TRAIN1, TRAIN0]  # each packed once: TRAIN0 by the holder only
    assert [s.path.parent.name for s in result["stores"]] == [TRAIN0, TRAIN1]


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [1, 2])
def test_two_processes_packing_at_once_pack_every_shard_once(cache: Path, release: Path,
                                                            num_workers: int) -> None:
    code = ("import logging, sys\nfrom pathlib import Path\n"
            "from bridge_torch.data.rlds_stream import open_tfds_split\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
            f"(stores,) = open_tfds_split(Path({str(release)!r}), [['**']], [], 'train', "
            f"camera='images0', im_size=16, progress=False, num_workers={num_workers})\n"
            "print('stores', [s.path.parent.name for s in stores])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    lines = [line for out, _ in outs for line in out.splitlines()]
    packed = sorted(line.split()[1].rstrip(":") for line in lines if line.startswith("packed "))
    assert packed == [TRAIN0, TRAIN1]  # by one process or the other, never by both
    assert lines.count(f"stores {[TRAIN0, TRAIN1]}") == 2


@pytest.mark.parametrize(("overrides", "message"), [
    (["bridgedata.include=[[a/*]]"], "is a TFDS directory, trained on as one sub-dataset"),
    (["bridgedata.exclude=[x]"], "--group_by task"),
    (["data.camera=image_1"], "use data.load.camera=images1"),
    (["data.camera=images7"], r"cameras \['images7'\] are not in the rail release"),
])
def test_settings_a_tfds_dir_cannot_honour_are_refused(cache: Path, tmp_path: Path,
                                                       overrides: list, message: str) -> None:
    config = compose_config([f"data_path={RAIL_DIR}", f"save_dir={tmp_path}", *TINY,
                             *overrides])
    with pytest.raises(ValueError, match=message):
        load_run_data(config, torch.device("cpu"))
    assert _entries(cache) == []


def test_rlds_im_size_is_checked() -> None:
    with pytest.raises(ValueError, match=r"rlds\.im_size must be >= 1"):
        compose_config([f"data_path={RAIL_DIR}", "rlds.im_size=0"])


def test_statistics_merge_over_the_shard_stores(cache: Path, release: Path) -> None:
    stores = _open(release)
    whole = np.concatenate([np.asarray(s.actions_relabeled) for s in stores]).astype(np.float64)
    stats = training_statistics([stores], relabel_actions=True)["actions"]
    np.testing.assert_allclose(stats["mean"], whole.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], whole.std(0), rtol=1e-5, atol=1e-7)
    assert stats["count"] == len(whole) == sum(open_store(s.path).num_transitions
                                               for s in stores)


def test_an_unwritable_cache_is_named_and_a_complete_one_still_reads(cache: Path,
                                                                     release: Path,
                                                                     monkeypatch) -> None:
    _open(release)
    monkeypatch.setattr(rlds_stream.os, "access", lambda path, mode: False)  # root ignores chmod
    assert [s.num_trajectories for s in _open(release)] == [1, 1]  # nothing to write
    with pytest.raises(ValueError, match=r"32px-images0 is not writable: set \$BRIDGE_TORCH_CACHE"):
        _open(release, im_size=32)


def test_a_data_path_above_the_tfds_dir_is_told_where_it_is(release: Path) -> None:
    with pytest.raises(ValueError, match=rf"matches no task directory.*{release} is a TFDS "
                                         "directory: pass it as data_path"):
        resolve_task_dirs(release.parent.parent, [["**"]], [])


@pytest.mark.slow
def test_evaluation_opens_only_the_val_shards_and_checks_the_cached_train_metadata(
        cache: Path, release: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run_dir = make_run(tmp_path, "bc")  # a 32px agent, as if trained on the release
    train_stores = _open(release, im_size=32)
    state = checkpoint.load(run_dir / "ckpt_5.pt")
    state["stats"] = training_statistics([train_stores], relabel_actions=True)
    state["config"]["data_path"] = str(release)
    checkpoint.save(run_dir / "ckpt_5.pt", state)
    with caplog.at_level(logging.WARNING, logger="bridge_torch.offline_eval"):
        checked = evaluate_run(run_dir)
    assert "statistics check skipped" not in caplog.text and checked["transitions"] > 0
    meta_file = train_stores[1].path / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["stats"]["actions_relabeled"]["std"][0] *= 1.01
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"ckpt_5\.pt: the dataset's statistics differ from the "
                                         r"checkpoint's \(actions\.std\)"):
        evaluate_run(run_dir)
    for store in train_stores:  # the train split was never packed at this size
        shutil.rmtree(store.path.parent)
    with caplog.at_level(logging.WARNING, logger="bridge_torch.offline_eval"):
        unchecked = evaluate_run(run_dir)
    assert _entries(cache) == [VAL0, "bridge_dataset-val.tfrecord-00001-of-00002"]
    assert f"statistics check skipped: {release / TRAIN0} is not packed into " in caplog.text
    assert unchecked["mse"] == checked["mse"] and unchecked["transitions"] == checked["transitions"]
