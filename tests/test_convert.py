"""bridge-torch-convert: original out.npy semantics, reproducible split, counted skips, packing."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge_torch.data.convert import ConvertOptions, convert, format_summary, main
from bridge_torch.data.legacy import load_out_npy
from bridge_torch.data.store import open_store
from bridge_torch.data.synthetic import SyntheticSpec, generate_raw_dataset

SIZE = 16


def _tree(tmp_path: Path, **kwargs) -> Path:
    spec = dict(seed=5, num_tasks=1, dates_per_task=1, trajs_per_date=4, min_frames=5,
                max_frames=7, image_hw=(48, 64))
    spec.update(kwargs)
    return generate_raw_dataset(tmp_path / "raw", SyntheticSpec(**spec))


def _convert(raw: Path, out: Path, **kwargs) -> list[dict]:
    workers = kwargs.pop("num_workers", 1)
    options = ConvertOptions(raw, out, im_size=SIZE, **kwargs)
    return convert(options, num_workers=workers, progress=False)


def _all_trajs(out: Path) -> dict[str, list[dict]]:
    return {split: [t for p in sorted(out.rglob(f"{split}/out.npy")) for t in load_out_npy(p)]
            for split in ("train", "val")}


def _traj_dirs(raw: Path) -> list[Path]:
    return sorted(raw.rglob("traj_group0/traj*"))


def test_values_match_the_raw_files(tmp_path: Path) -> None:
    raw = _tree(tmp_path)
    _convert(raw, tmp_path / "out", train_proportion=1.0)
    trajs = _all_trajs(tmp_path / "out")["train"]
    assert len(trajs) == 4
    by_actions = {}
    for d in _traj_dirs(raw):
        acts = [s["actions"] for s in pickle.loads((d / "policy_out.pkl").read_bytes())]
        by_actions[round(float(acts[0][0]), 9)] = d
    for traj in trajs:
        d = by_actions[round(float(traj["actions"][0][0]), 9)]
        state = pickle.loads((d / "obs_dict.pkl").read_bytes())["full_state"]
        frames = len(list((d / "images0").glob("*.jpg")))
        assert len(traj["observations"]) == len(traj["actions"]) == frames - 1
        assert set(traj["observations"][0]) == {"images0", "state", "time_stamp"}
        with Image.open(d / "images0" / "im_1.jpg") as img:
            expected = np.asarray(img.convert("RGB").resize((SIZE, SIZE), Image.LANCZOS))
        np.testing.assert_array_equal(traj["next_observations"][0]["images0"], expected)
        np.testing.assert_array_equal(traj["observations"][2]["state"], state[2])
        assert traj["terminals"] == [0] * (frames - 1)
        assert traj["language"][0].startswith(("put", "reach"))
        assert not any("confidence" in line for line in traj["language"])


def test_latency_shift_before_cutoff_only(tmp_path: Path) -> None:
    for before in (False, True):
        raw = _tree(tmp_path / str(before), before_cutoff=before, trajs_per_date=1)
        _convert(raw, tmp_path / str(before) / "out", train_proportion=1.0)
        traj = _all_trajs(tmp_path / str(before) / "out")["train"][0]
        d = _traj_dirs(raw)[0]
        state = pickle.loads((d / "obs_dict.pkl").read_bytes())["full_state"]
        acts = [s["actions"] for s in pickle.loads((d / "policy_out.pkl").read_bytes())]
        shift = int(before)
        assert len(traj["actions"]) == len(acts) - shift
        np.testing.assert_array_equal(traj["observations"][0]["state"], state[shift])
        np.testing.assert_array_equal(traj["actions"][-1], acts[-1 - shift])


def test_language_default_cameras_depth_and_array_policy_out(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=1, cameras=2, with_depth=True, with_lang=False)
    d = _traj_dirs(raw)[0]
    acts = [s["actions"] for s in pickle.loads((d / "policy_out.pkl").read_bytes())]
    (d / "policy_out.pkl").write_bytes(pickle.dumps(np.stack(acts)))  # array form
    (d / "images0_saliency.gif").write_bytes(b"not a camera")
    _convert(raw, tmp_path / "out", train_proportion=1.0)
    traj = _all_trajs(tmp_path / "out")["train"][0]
    assert traj["language"] == [""]
    assert set(traj["observations"][0]) == {"images0", "images1", "state", "time_stamp"}
    np.testing.assert_allclose(np.stack(traj["actions"]), np.stack(acts))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth_selects_collections_and_output_paths(tmp_path: Path, depth: int) -> None:
    raw = _tree(tmp_path, trajs_per_date=1)
    dated = _traj_dirs(raw)[0].parents[2]  # raw/lab/env/task/00/<date>
    collection, start = dated.parent, dated.parents[depth - 1]
    results = _convert(start, tmp_path / "out", depth=depth, train_proportion=1.0)
    assert [r["train"] for r in results] == [1]
    written = next((tmp_path / "out").rglob("out.npy")).parent.parent
    keep = max(depth - 1, 1)
    assert written.relative_to(tmp_path / "out") == Path(*collection.parts[-keep:])


def test_split_is_reproducible_by_seed(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=10)

    def val_actions(seed: int, name: str) -> list[float]:
        _convert(raw, tmp_path / name, seed=seed, train_proportion=0.7)
        return sorted(float(t["actions"][0][0]) for t in _all_trajs(tmp_path / name)["val"])

    first, again = val_actions(0, "a"), val_actions(0, "b")
    assert len(first) == 3 and first == again
    assert any(val_actions(seed, f"s{seed}") != first for seed in (1, 2, 3))


def test_no_empty_split_dirs(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=2)
    _convert(raw, tmp_path / "out", train_proportion=1.0)
    assert not list((tmp_path / "out").rglob("val"))
    assert list((tmp_path / "out").rglob("train/out.npy"))


def test_bad_inputs_are_counted_skips(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=8, cameras=2)
    dirs = _traj_dirs(raw)
    (dirs[0] / "obs_dict.pkl").unlink()
    for f in (dirs[1] / "images0").iterdir():
        f.unlink()
    (dirs[1] / "images0").rmdir()
    (dirs[1] / "images1").rename(dirs[1] / "images_x")
    jpeg = dirs[2] / "images0" / "im_1.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated JPEG
    (dirs[3] / "images1" / "im_2.jpg").unlink()  # second camera has fewer frames
    policy = pickle.loads((dirs[4] / "policy_out.pkl").read_bytes())
    policy[1]["actions"] = np.full(7, np.nan)
    (dirs[4] / "policy_out.pkl").write_bytes(pickle.dumps(policy))
    short = pickle.loads((dirs[5] / "policy_out.pkl").read_bytes())[:-2]
    (dirs[5] / "policy_out.pkl").write_bytes(pickle.dumps(short))  # inconsistent lengths
    (dirs[6] / "obs_dict.pkl").write_bytes(b"\x80\x04garbage")
    dated = dirs[0].parents[2]
    (dated.parent / "not_a_date").mkdir()
    results = _convert(raw, tmp_path / "out", train_proportion=1.0)
    skipped = results[0]["skipped"]
    assert results[0]["train"] == 1
    assert skipped == {"missing obs_dict.pkl": 1, "no image folder": 1, "corrupt image": 1,
                       "camera with fewer frames": 1, "non-finite actions": 1,
                       "inconsistent lengths": 1, "unreadable obs_dict.pkl": 1,
                       "non-date folder": 1}
    summary = format_summary(results)
    assert "skipped: 8" in summary and "non-date folder" in summary


def test_saliency_resized_bilinear_float32(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=1, with_saliency=True)
    _convert(raw, tmp_path / "out", train_proportion=1.0, saliency=True)
    traj = _all_trajs(tmp_path / "out")["train"][0]
    maps = pickle.loads((_traj_dirs(raw)[0] / "saliency_map.pkl").read_bytes())
    expected = np.asarray(Image.fromarray(maps[0, 0], mode="F").resize((SIZE, SIZE),
                                                                         Image.BILINEAR))
    got = traj["observations"][0]["saliency"]
    assert got.dtype == np.float32 and got.shape == (SIZE, SIZE, 1)
    np.testing.assert_array_equal(got[..., 0], expected)


def test_format_both_packs_the_same_data(converted_tree: Path) -> None:
    for out_npy in converted_tree.rglob("out.npy"):
        trajs = load_out_npy(out_npy)
        store = open_store(out_npy.parent / "packed")
        assert store.num_trajectories == len(trajs)
        first, length = store.traj_frame_start[-1], store.traj_length[-1]
        last = trajs[-1]
        np.testing.assert_array_equal(store.frames()[first], last["observations"][0]["images0"])
        np.testing.assert_array_equal(store.frames()[first + length],
                                      last["next_observations"][-1]["images0"])
        np.testing.assert_allclose(store.actions[-length:], np.stack(last["actions"]), rtol=1e-6)
        assert store.saliency is not None and store.traj_has_saliency.all()


def test_parallel_equals_serial_and_rerun_is_idempotent(tmp_path: Path) -> None:
    raw = _tree(tmp_path, num_tasks=3, trajs_per_date=2)
    _convert(raw, tmp_path / "serial", num_workers=1)
    _convert(raw, tmp_path / "parallel", num_workers=2)
    for a in sorted((tmp_path / "serial").rglob("out.npy")):
        b = tmp_path / "parallel" / a.relative_to(tmp_path / "serial")
        assert a.read_bytes() == b.read_bytes()
    results = _convert(raw, tmp_path / "serial")
    assert {r["status"] for r in results} == {"already converted"}


def test_interrupted_collection_is_redone(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=2)
    _convert(raw, tmp_path / "out", train_proportion=1.0)
    marker = next((tmp_path / "out").rglob(".convert_done.json"))
    out_npy = next((tmp_path / "out").rglob("out.npy"))
    good = out_npy.read_bytes()
    marker.unlink()  # as if the run died after writing
    out_npy.write_bytes(good[: len(good) // 2])
    (out_npy.parent / ".out.npy.tmp-stale").write_bytes(b"partial")
    _convert(raw, tmp_path / "out", train_proportion=1.0)
    assert out_npy.read_bytes() == good
    assert not list(out_npy.parent.glob(".out.npy.tmp-*"))


def test_cli_subprocess_and_missing_input(tmp_path: Path) -> None:
    raw = _tree(tmp_path, trajs_per_date=2)
    run = subprocess.run([sys.executable, "-m", "bridge_torch.data.convert", "--input-path",
                          str(raw), "--output-path", str(tmp_path / "out"), "--im_size", "16",
                          "--num_workers", "1", "--format", "packed"],
                         capture_output=True, text=True, check=True)
    assert "trajectories written: train 1, val 1" in run.stdout
    assert list((tmp_path / "out").rglob("packed/meta.json"))
    assert not list((tmp_path / "out").rglob("out.npy"))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        main(["--input_path", str(tmp_path / "nope"), "--output_path", str(tmp_path / "o")])
