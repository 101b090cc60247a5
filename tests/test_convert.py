"""bridge-torch-convert: the original converter's out.npy semantics and what we do better."""

import json
import logging
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge_torch.data.sources import bridge_raw as raw_format
from bridge_torch.data.sources import convert as convert_module
from bridge_torch.data.sources.convert import ConvertOptions, convert, main
from bridge_torch.data.sources.legacy_numpy import load_out_npy
from bridge_torch.data.sources.synthetic import generate_raw_dataset
from bridge_torch.data.store import open_store
from helpers import dead_writer_temporary

SIZE = 16


def _tree(tmp_path: Path, **kwargs) -> Path:
    spec = {"seed": 5, "num_tasks": 1, "dates_per_task": 1, "trajs_per_date": 4, "min_len": 5,
            "max_len": 7, "image_hw": (48, 64)}
    return generate_raw_dataset(tmp_path / "raw", **{**spec, **kwargs})


def _convert(raw: Path, out: Path, num_workers: int = 1, **kwargs):
    return convert(ConvertOptions(raw, out, im_size=SIZE, **kwargs), num_workers=num_workers,
                   progress=False)


def _cli(raw: Path, out: Path, *args: str) -> int:
    return main(["--input_path", str(raw), "--output_path", str(out), "--im_size", str(SIZE),
                 "--num_workers", "1", *args])


def _load(path: Path):
    return pickle.loads(path.read_bytes())


def _trajs(out: Path, split: str = "train") -> list[dict]:
    return [t for p in sorted(out.rglob(f"{split}/out.npy")) for t in load_out_npy(p)]


def _raw_actions(traj_dir: Path) -> np.ndarray:
    policy_out = _load(traj_dir / "policy_out.pkl")
    return np.stack([s["actions"] if isinstance(s, dict) else s for s in policy_out])


def _source(raw: Path, traj: dict) -> Path:
    """The raw trajectory folder a converted trajectory came from (matched by its actions)."""
    first = np.asarray(traj["actions"][0])
    hits = [d for d in raw.rglob("traj_group0/traj*")
            if any(np.array_equal(first, a) for a in _raw_actions(d)[:2])]
    assert len(hits) == 1
    return hits[0]


def _lanczos(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def test_out_npy_schema_and_values(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = _tree(tmp_path)
    assert _cli(raw, tmp_path / "out", "--train_proportion", "1.0") == 0
    assert "trajectories written: train 4, val 0" in capsys.readouterr().out
    task = tmp_path / "out" / "synthetic_lab" / "tabletop" / "pick_up_red_block" / "00"
    assert sorted(p.name for p in task.iterdir()) == ["conversion.json", "train"]  # no val/
    assert sorted(p.name for p in (task / "train").iterdir()) == ["out.npy"]
    trajs = _trajs(tmp_path / "out")
    assert len(trajs) == 4
    for traj in trajs:
        d = _source(raw, traj)
        state, stamps = (_load(d / "obs_dict.pkl")[k] for k in ("full_state", "time_stamp"))
        steps = len(state)
        assert list(traj) == ["observations", "next_observations", "actions", "terminals",
                              "language"]
        assert len(traj["observations"]) == len(traj["next_observations"]) == steps - 1
        assert list(traj["observations"][0]) == ["images0", "state", "time_stamp"]
        for t, (obs, nxt) in enumerate(zip(traj["observations"], traj["next_observations"],
                                           strict=True)):
            assert obs["images0"].dtype == np.uint8 and obs["images0"].shape == (SIZE, SIZE, 3)
            np.testing.assert_array_equal(obs["images0"], _lanczos(d / "images0" / f"im_{t}.jpg"))
            np.testing.assert_array_equal(obs["state"], state[t])
            np.testing.assert_array_equal(nxt["state"], state[t + 1])
            assert obs["time_stamp"] == stamps[t] and nxt["time_stamp"] == stamps[t + 1]
        np.testing.assert_array_equal(traj["next_observations"][-1]["images0"],
                                      _lanczos(d / "images0" / f"im_{steps - 1}.jpg"))
        np.testing.assert_array_equal(np.stack(traj["actions"]), _raw_actions(d))
        assert traj["terminals"] == [0] * (steps - 1)
        lang = [line.strip() for line in (d / "lang.txt").read_text().splitlines()]
        assert traj["language"] == lang[:-1] and "confidence" in lang[-1]


def test_latency_shift_only_before_the_cutoff(tmp_path: Path) -> None:
    raw = _tree(tmp_path, dates_per_task=2, dates_before_cutoff=1, trajs_per_date=1)
    _convert(raw, tmp_path / "out", train_proportion=1.0)
    trajs = _trajs(tmp_path / "out")
    assert len(trajs) == 2
    for traj in trajs:
        d = _source(raw, traj)
        shift = int(raw_format.needs_latency_shift(
            raw_format.parse_folder_date(d.parents[2].name)))
        state, actions = _load(d / "obs_dict.pkl")["full_state"], _raw_actions(d)
        assert len(traj["actions"]) == len(actions) - shift == len(traj["observations"])
        np.testing.assert_array_equal(traj["observations"][0]["state"], state[shift])
        np.testing.assert_array_equal(traj["observations"][0]["images0"],
                                      _lanczos(d / "images0" / f"im_{shift}.jpg"))
        np.testing.assert_array_equal(traj["next_observations"][-1]["state"], state[-1])
        np.testing.assert_array_equal(np.stack(traj["actions"]), actions[:len(actions) - shift])
    assert {len(t["actions"]) for t in trajs} != {len(_raw_actions(_source(raw, t))) for t in
                                                  trajs}  # one of the two really was shifted


def test_language_cameras_depth_and_array_policy_out(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=2, cameras=2, with_depth=True)
    first, second = sorted(raw.rglob("traj_group0/traj*"))
    (first / "lang.txt").unlink()
    (second / "lang.txt").write_text("open the drawer\n\nclose it\nconfidence: 0.9\n")
    (second / "policy_out.pkl").write_bytes(pickle.dumps(_raw_actions(second)))  # plain array
    (second / "images0_saliency.gif").write_bytes(b"not a camera")
    (second / "images_extra").mkdir()
    _convert(raw, tmp_path / "out", train_proportion=1.0)
    by_source = {_source(raw, t): t for t in _trajs(tmp_path / "out")}
    assert by_source[first]["language"] == [""]
    assert by_source[second]["language"] == ["open the drawer", "", "close it"]
    for d, traj in by_source.items():
        assert list(traj["observations"][0]) == ["images0", "images1", "state", "time_stamp"]
        np.testing.assert_array_equal(traj["observations"][1]["images1"],
                                      _lanczos(d / "images1" / "im_1.jpg"))
        np.testing.assert_array_equal(np.stack(traj["actions"]), _raw_actions(d))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth_selects_collections_and_output_paths(tmp_path: Path, depth: int) -> None:
    raw = _tree(tmp_path, trajs_per_date=1, min_len=3, max_len=3)
    collection = next(raw.rglob("traj_group0/traj0")).parents[3]  # raw/lab/env/task/00
    start = collection if depth == 1 else collection.parents[depth - 2]
    reports = _convert(start, tmp_path / "out", depth=depth, train_proportion=1.0)
    assert [(r.status, r.num_train) for r in reports] == [("converted", 1)]
    written = next((tmp_path / "out").rglob("out.npy")).parents[1]
    assert written.relative_to(tmp_path / "out") == Path(*collection.parts[-max(depth - 1, 1):])
    with pytest.raises(ValueError, match="no collection directories"):
        _convert(start, tmp_path / "other", depth=depth + 6)  # below every directory


def test_split_is_reproducible_by_seed_and_respects_the_proportion(tmp_path: Path) -> None:
    raw = _tree(tmp_path, dates_per_task=2, trajs_per_date=10, min_len=3, max_len=4)

    def val_set(seed: int, name: str) -> set[float]:
        reports = _convert(raw, tmp_path / name, seed=seed, train_proportion=0.7)
        assert [(r.num_train, r.num_val) for r in reports] == [(14, 6)]  # 7 + 3 per folder
        return {float(t["actions"][0][0]) for t in _trajs(tmp_path / name, "val")}

    first = val_set(0, "a")
    assert val_set(0, "b") == first
    for split in ("train", "val"):
        a, b = (next((tmp_path / n).rglob(f"{split}/out.npy")) for n in "ab")
        assert a.read_bytes() == b.read_bytes()
    assert any(val_set(seed, f"seed{seed}") != first for seed in (1, 2))


def _break(traj_dirs: list[Path]) -> None:
    """One fault per trajectory; the last one stays good."""
    (traj_dirs[0] / "obs_dict.pkl").unlink()
    for camera in ("images0", "images1"):
        shutil.rmtree(traj_dirs[1] / camera)
    for frame in (traj_dirs[2] / "images0").iterdir():
        frame.unlink()
    jpeg = traj_dirs[3] / "images0" / "im_1.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    (traj_dirs[4] / "images1" / "im_2.jpg").unlink()
    policy = _load(traj_dirs[5] / "policy_out.pkl")
    policy[1]["actions"] = np.full(7, np.nan)
    (traj_dirs[5] / "policy_out.pkl").write_bytes(pickle.dumps(policy))
    policy = _load(traj_dirs[6] / "policy_out.pkl")
    (traj_dirs[6] / "policy_out.pkl").write_bytes(pickle.dumps(policy[:-2]))
    (traj_dirs[7] / "obs_dict.pkl").write_bytes(b"\x80\x04garbage")
    for camera in ("images0", "images1"):
        for frame in (traj_dirs[8] / camera).glob("im_*.jpg"):
            if frame.name != "im_0.jpg":
                frame.unlink()
    (traj_dirs[9] / "obs_dict.pkl").write_bytes(pickle.dumps(["not", "a", "dict"]))


def test_bad_inputs_are_skipped_counted_and_logged(tmp_path: Path, caplog, capsys) -> None:
    raw = _tree(tmp_path, trajs_per_date=11, cameras=2)
    traj_dirs = sorted(raw.rglob("traj_group0/traj*"), key=lambda p: int(p.name[4:]))
    _break(traj_dirs)
    collection = traj_dirs[0].parents[3]
    (collection / "not_a_date").mkdir()
    (collection / "2022-01-01_00-00-00").mkdir()
    (collection / "2022-01-02_00-00-00_lmdb").mkdir()
    (collection.parent.parent / "empty_task" / "00" / "notes").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        assert _cli(raw, tmp_path / "out", "--train_proportion", "1.0") == 0
    summary = capsys.readouterr().out
    assert "trajectories written: train 1, val 0" in summary
    assert "collections: 2 (1 converted, 1 no output)" in summary
    assert "skipped trajectories: 10" in summary and "skipped folders: 4" in summary
    record = json.loads(next((tmp_path / "out").rglob("conversion.json")).read_text())
    assert record["skipped_trajectories"] == {
        raw_format.MISSING_PICKLE: 1, raw_format.NO_IMAGES: 2, raw_format.BAD_IMAGE: 1,
        raw_format.FRAME_MISMATCH: 1, raw_format.NON_FINITE: 1,
        raw_format.LENGTH_MISMATCH: 1, raw_format.BAD_PICKLE: 2, raw_format.TOO_SHORT: 1}
    assert record["skipped_folders"] == {"not a YYYY-MM-DD_HH-MM-SS folder": 1,
                                         "no raw/traj_group*/traj* inside": 1, "lmdb path": 1}
    for reason in record["skipped_trajectories"]:
        assert reason in summary
    messages = "\n".join(r.getMessage() for r in caplog.records)
    frames = len(_load(traj_dirs[4] / "obs_dict.pkl")["full_state"])
    assert f"in {traj_dirs[4] / 'images1'}, found {frames - 1} frames" in messages
    frames = len(_load(traj_dirs[6] / "obs_dict.pkl")["full_state"])
    assert f"expected shape ({frames - 1}, 7), found ({frames - 3}, 7)" in messages
    assert not (tmp_path / "out" / "synthetic_lab" / "tabletop" / "empty_task").exists()


def test_saliency_resized_bilinear_and_bad_maps_dropped(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=2, with_saliency=True)
    good, bad = sorted(raw.rglob("traj_group0/traj*"))
    maps = _load(good / "saliency_map.pkl")
    (bad / "saliency_map.pkl").write_bytes(pickle.dumps(_load(bad / "saliency_map.pkl")[:-1]))
    reports = _convert(raw, tmp_path / "out", train_proportion=1.0, saliency=True)
    assert reports[0].without_saliency == 1 and reports[0].num_train == 2
    by_source = {_source(raw, t): t for t in _trajs(tmp_path / "out")}
    assert "saliency" not in by_source[bad]["observations"][0]
    traj = by_source[good]
    for t, obs in enumerate(traj["observations"]):
        expected = Image.fromarray(maps[t, 0]).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        assert obs["saliency"].dtype == np.float32 and obs["saliency"].shape == (SIZE, SIZE, 1)
        np.testing.assert_array_equal(obs["saliency"][..., 0], np.asarray(expected))
    for t in range(len(traj["observations"]) - 1):  # one object per frame, as the original
        assert traj["next_observations"][t]["saliency"] is traj["observations"][t + 1]["saliency"]


def test_unexpected_errors_cost_one_trajectory(tmp_path: Path, monkeypatch, caplog) -> None:
    raw = _tree(tmp_path, trajs_per_date=3)
    broken = sorted(raw.rglob("traj_group0/traj*"))[1]
    real_read = convert_module.read_trajectory

    def flaky_read(traj_dir: Path, **kwargs):
        if traj_dir == broken:
            raise RuntimeError("bug in a reader")
        return real_read(traj_dir, **kwargs)

    monkeypatch.setattr(convert_module, "read_trajectory", flaky_read)
    with caplog.at_level(logging.WARNING):
        reports = _convert(raw, tmp_path / "out", train_proportion=1.0)
    assert reports[0].status == "converted" and reports[0].num_train == 2
    assert reports[0].skipped_trajectories == {"unexpected error": 1}
    assert "RuntimeError: bug in a reader" in caplog.text and "Traceback" in caplog.text
    future = Future()
    future.set_exception(BrokenProcessPool("worker killed"))
    report = convert_module._result(future, raw / "c", ConvertOptions(raw, tmp_path / "o"))
    assert report.status == "failed" and "worker killed" in report.error


def test_format_both_packs_the_out_npy_content(converted_tree: Path, raw_tree: Path) -> None:
    out_npys = sorted(converted_tree.rglob("out.npy"))
    assert len(out_npys) == 4  # 2 tasks x (train, val)
    for out_npy in out_npys:
        trajs, store = load_out_npy(out_npy), open_store(out_npy.parent / "packed")
        assert store.num_trajectories == len(trajs) == (8 if out_npy.parent.name == "train" else 2)
        for i, traj in enumerate(trajs):
            packed = store.trajectory(i)
            frames = [o["images0"] for o in traj["observations"]]
            frames.append(traj["next_observations"][-1]["images0"])
            np.testing.assert_array_equal(packed.frames["images0"], np.stack(frames))
            states = [o["state"] for o in traj["observations"]]
            states.append(traj["next_observations"][-1]["state"])
            np.testing.assert_array_equal(packed.proprio, np.stack(states).astype(np.float32))
            np.testing.assert_array_equal(packed.actions,
                                          np.stack(traj["actions"]).astype(np.float32))
            maps = [o["saliency"][..., 0] for o in traj["observations"]]
            maps.append(traj["next_observations"][-1]["saliency"][..., 0])
            np.testing.assert_allclose(packed.saliency, np.stack(maps), atol=1e-3)  # float16
            assert packed.language == traj["language"]
            source = Path(packed.source)  # the raw trajectory folder
            assert source.is_relative_to(raw_tree) and source.parent.name == "traj_group0"
            assert source.parents[4].name == out_npy.parents[2].name  # same task
        assert store.source["kind"] == "raw BridgeData"
        assert store.source["settings"]["im_size"] == 32 and store.source["split"] == \
            out_npy.parent.name
        assert all(Path(d).parent.name == "00" for d in store.source["dated_folders"])


def test_format_packed_only_with_two_cameras(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=3, cameras=2)
    shutil.rmtree(sorted(raw.rglob("traj_group0/traj*"))[0] / "images1")
    reports = _convert(raw, tmp_path / "out", train_proportion=1.0, format="packed",
                       cameras=("images0", "images1"))
    assert reports[0].skipped_trajectories == {"lacks a --cameras camera": 1}
    assert not list((tmp_path / "out").rglob("out.npy"))
    store = open_store(next((tmp_path / "out").rglob("packed")))
    assert store.cameras == ["images0", "images1"] and store.num_trajectories == 2
    assert not np.array_equal(store.frames("images0"), store.frames("images1"))


def test_failed_write_leaves_no_out_npy_and_rerun_finishes(tmp_path: Path, monkeypatch) -> None:
    raw = _tree(tmp_path, trajs_per_date=2)

    def disk_full(file, array, allow_pickle):
        file.write(b"\x93NUMPY partial")
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(np, "save", disk_full)
        reports = _convert(raw, tmp_path / "out", train_proportion=1.0)
    assert reports[0].status == "failed" and "No space left" in reports[0].error
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # nothing half-written
    task = next(raw.rglob("traj_group0")).parents[2].relative_to(raw)
    split_dir = tmp_path / "out" / task / "train"
    split_dir.mkdir(parents=True, exist_ok=True)  # as if killed mid-write: temp files remain
    (split_dir / dead_writer_temporary("out.npy")).write_bytes(b"partial")
    (split_dir / dead_writer_temporary("packed")).mkdir()
    reports = _convert(raw, tmp_path / "out", train_proportion=1.0)
    assert reports[0].status == "converted"
    assert sorted(p.name for p in split_dir.iterdir()) == ["out.npy"]
    assert len(load_out_npy(split_dir / "out.npy")) == 2


def test_rerun_skips_finished_and_overwrite_removes_stale_splits(tmp_path: Path, caplog) -> None:
    raw = _tree(tmp_path, trajs_per_date=3)
    _convert(raw, tmp_path / "out", train_proportion=0.5, format="both")
    task = next((tmp_path / "out").rglob("conversion.json")).parent
    assert sorted(p.name for p in (task / "val").iterdir()) == ["out.npy", "packed"]
    with caplog.at_level(logging.WARNING):
        reports = _convert(raw, tmp_path / "out", train_proportion=1.0)
    assert reports[0].status == "already converted" and "other settings" in caplog.text
    reports = _convert(raw, tmp_path / "out", train_proportion=1.0, overwrite=True)
    assert reports[0].status == "converted" and reports[0].num_train == 3
    assert sorted(p.name for p in task.iterdir()) == ["conversion.json", "train"]
    assert sorted(p.name for p in (task / "train").iterdir()) == ["out.npy"]  # old packed gone
    (task / "conversion.json").unlink()  # unfinished: converted again without --overwrite
    assert _convert(raw, tmp_path / "out", train_proportion=1.0)[0].status == "converted"


@pytest.mark.slow
def test_parallel_workers_give_identical_output(tmp_path: Path) -> None:
    raw = _tree(tmp_path, num_tasks=2, trajs_per_date=3, min_len=3, max_len=5)
    serial = _convert(raw, tmp_path / "serial", num_workers=1, format="both")
    parallel = _convert(raw, tmp_path / "parallel", num_workers=2, format="both")
    assert [(r.status, r.num_train, r.num_val) for r in parallel] == \
        [(r.status, r.num_train, r.num_val) for r in serial]
    files = sorted(p.relative_to(tmp_path / "serial") for p in
                   (tmp_path / "serial").rglob("*.npy"))
    assert len(files) == 2 * (2 + 2 * 8)  # 2 tasks x 2 splits x (out.npy + 8 store arrays)
    for rel in files:
        assert (tmp_path / "serial" / rel).read_bytes() == \
            (tmp_path / "parallel" / rel).read_bytes(), rel


@pytest.mark.slow
def test_cli_subprocess(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=2)
    run = subprocess.run([sys.executable, "-m", "bridge_torch.data.sources.convert", "--input-path",
                          str(raw), "--output-path", str(tmp_path / "out"), "--im-size", "16",
                          "--num-workers", "1", "--format", "packed"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "trajectories written: train 1, val 1" in run.stdout
    assert len(list((tmp_path / "out").rglob("packed/meta.json"))) == 2
    assert not list((tmp_path / "out").rglob("out.npy"))


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for args, message in [(["--input_path", str(tmp_path / "missing")], "is not a directory"),
                          (["--input_path", str(tmp_path), "--train_proportion", "1.5"],
                           "train_proportion must be in"),
                          (["--input_path", str(tmp_path), "--cameras", "depth0"],
                           "cameras must be names like images0")]:
        with pytest.raises(SystemExit) as info:
            main([*args, "--output_path", str(tmp_path / "out")])
        assert info.value.code == 2 and message in capsys.readouterr().err
