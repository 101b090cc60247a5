"""TFDS/RLDS BridgeData -> packed stores, checked against the decoded ground truth of the
checked-in fixture (both releases), plus training and evaluation on the converted data."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge_torch.data.actions import relabel_actions
from bridge_torch.data.inspect import summarize
from bridge_torch.data.sources import rlds, rlds_convert
from bridge_torch.data.sources.bridge_raw import squash_frame
from bridge_torch.data.sources.convert import main as convert_main
from bridge_torch.data.sources.rlds_convert import RldsOptions, convert_rlds
from bridge_torch.data.sources.tfds import open_tfds
from bridge_torch.data.store import open_store, write_store
from bridge_torch.data.store_concat import concat_stores
from bridge_torch.train.config import compose_config
from bridge_torch.train.loop import train
from rlds_helpers import OPEN_X_DIR, RAIL_DIR, episodes, expected, f32, same_bits
from test_store_concat import assert_same_store

TINY = ["batch_size=8", "val_batch_size=8", "encoder.name=resnetv1-mini-bridge",
        "encoder.num_filters=8", "model.hidden_dims=[16]", "scheduler.warmup_steps=1",
        "scheduler.decay_steps=4", "device=cpu"]


def _convert(src: Path, out: Path, num_workers: int = 1, **kwargs):
    return convert_rlds(RldsOptions(src, out, **kwargs), num_workers=num_workers,
                        progress=False)


def _md5(array: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def rail_full(tmp_path_factory) -> Path:
    """The RAIL release, main camera at its stored 256x256 (no resampling)."""
    out = tmp_path_factory.mktemp("rail_full")
    report = _convert(RAIL_DIR, out, im_size=256)
    assert report.episodes == {"train": 2, "val": 2} and not report.skipped
    return out


@pytest.fixture(scope="module")
def rail_small(tmp_path_factory) -> Path:
    """The RAIL release at 32x32, converted by 2 worker processes (what the training test uses)."""
    out = tmp_path_factory.mktemp("rail_small")
    _convert(RAIL_DIR, out, num_workers=2, im_size=32)
    return out


def test_every_image_decodes_to_the_accurate_idct_pixels() -> None:
    for name, root in (("bridge_dataset", RAIL_DIR), ("bridge", OPEN_X_DIR)):
        dataset, truth = open_tfds(root), expected(name)
        variant = rlds.detect_variant(dataset)
        assert variant.name == ("rail" if name == "bridge_dataset" else "open_x")
        checked = 0
        for split, shards in dataset.splits.items():
            wanted = iter(episodes(truth, split))
            for shard in shards:
                for index, _, features in rlds.shard_examples(shard):
                    episode = next(wanted)
                    for camera, images in episode["images"].items():
                        spec = dataset.features[f"steps/observation/{camera}"]
                        stored = features[spec.key].values
                        assert [hashlib.md5(v).hexdigest() for v in stored] == images["jpeg_md5"]
                        pixels = [np.asarray(rlds.decode_image(v, spec, "")) for v in stored]
                        assert [p.shape for p in pixels] == [tuple(images["shape"])] * len(stored)
                        assert [_md5(p) for p in pixels] == images["pixel_md5"], (shard, index)
                        checked += len(stored)
        assert checked == sum(len(i["jpeg_md5"]) for s in truth["splits"]
                              for e in episodes(truth, s) for i in e["images"].values())


def test_rail_store_matches_the_ground_truth_bit_for_bit(rail_full: Path) -> None:
    truth = expected("bridge_dataset")
    for split in ("train", "val"):
        store = open_store(rail_full / split / "packed")
        wanted = episodes(truth, split)
        assert store.num_trajectories == truth["splits"][split]["num_episodes"] == len(wanted)
        assert store.cameras == ["images0"] and store.image_size == (256, 256)
        for i, episode in enumerate(wanted):
            traj, steps = store.trajectory(i), episode["num_steps"]
            assert traj.num_transitions == steps - 1  # the last action has no outcome frame
            assert same_bits(traj.proprio, f32(episode["state"]))
            assert same_bits(traj.actions, f32(episode["action"])[:-1])
            assert same_bits(store.actions_relabeled[store.traj_action_start[i]:][:steps - 1],
                             relabel_actions(f32(episode["state"]), f32(episode["action"])[:-1]))
            text = episode["language_instruction"][0]
            assert traj.language == ([text] if text else [])
            meta = episode["episode_metadata"]
            assert traj.source == f"{meta['file_path']}#{meta['episode_id']}"
            assert [_md5(f) for f in traj.frames["images0"]] == \
                episode["images"]["image_0"]["pixel_md5"]
        actions = np.concatenate([f32(e["action"])[:-1] for e in wanted])
        assert store.stats["actions"]["count"] == len(actions)
        np.testing.assert_allclose(store.stats["actions"]["mean"], actions.mean(0, np.float64),
                                   rtol=1e-6)
        assert store.source["dataset"] == "bridge_dataset 1.0.0"
        assert store.source["variant"] == "rail"


def test_two_workers_give_the_same_store_as_one(rail_full: Path, rail_small: Path) -> None:
    for split in ("train", "val"):
        full, small = (open_store(p / split / "packed") for p in (rail_full, rail_small))
        assert small.trajectory_sources == full.trajectory_sources
        assert same_bits(small.proprio, full.proprio) and same_bits(small.actions, full.actions)
        assert small.stats == full.stats and small.language == full.language
        expected_frames = [squash_frame(Image.fromarray(f), 32) for f in full.frames("images0")]
        assert np.array_equal(small.frames("images0"), np.stack(expected_frames))


def test_final_stores_equal_rewriting_every_shard_trajectory(tmp_path: Path, monkeypatch) -> None:
    """The merge concatenates the per-shard stores; the earlier merge fed their trajectories
    through write_store again. Both are built here from the same per-shard stores."""
    pairs = []

    def concat_and_rewrite(out_dir: Path, paths: list[Path], **kwargs) -> Path:
        opened = [open_store(p) for p in paths]
        reference = write_store(tmp_path / "rewritten" / str(len(pairs)),
                                (s.trajectory(i) for s in opened
                                 for i in range(s.num_trajectories)),
                                cameras=opened[0].cameras, source=kwargs["source"],
                                progress=False)
        pairs.append((concat_stores(out_dir, paths, **kwargs), reference, len(paths)))
        return out_dir

    monkeypatch.setattr(rlds_convert, "concat_stores", concat_and_rewrite)
    report = _convert(RAIL_DIR, tmp_path / "out", im_size=32, cameras=("image_0", "image_1"))
    assert report.stores == ["train/packed", "val/packed"]
    assert [(ours, parts) for ours, _, parts in pairs] == \
        [(tmp_path / "out" / "train" / "packed", 2), (tmp_path / "out" / "val" / "packed", 1)]
    for ours, reference, _ in pairs:
        assert_same_store(ours, reference)
        assert open_store(ours).cameras == ["images0", "images1"]


def test_open_x_actions_map_to_bridge_7d(tmp_path: Path) -> None:
    report = _convert(OPEN_X_DIR, tmp_path, im_size=48)
    truth = expected("bridge")
    assert report.variant == "open_x" and report.stores == ["train/packed", "val/packed"]
    assert report.episodes == {"train": 2, "val": 1}  # TFDS "test" is our val split
    for split, ours in (("train", "train"), ("test", "val")):
        store = open_store(tmp_path / ours / "packed")
        for i, episode in enumerate(episodes(truth, split)):
            traj = store.trajectory(i)
            mapped = np.concatenate([f32(episode["world_vector"]), f32(episode["rotation_delta"]),
                                     f32(episode["open_gripper"])[:, None]], axis=1)
            assert same_bits(mapped, f32(episode["action_7d"]))
            assert set(np.unique(mapped[:, 6])) <= {0.0, 1.0}
            assert same_bits(traj.actions, mapped[:-1])
            assert same_bits(traj.proprio, f32(episode["state"]))
            assert traj.language == [episode["language_instruction"][0]]
            assert traj.source == f"bridge-{split}.tfrecord-00000-of-00001#{i}"
            assert traj.frames["images0"].shape == (episode["num_steps"], 48, 48, 3)


def test_cameras_and_group_by_task(tmp_path: Path) -> None:
    report = _convert(RAIL_DIR, tmp_path, cameras=("image_0", "images1"), im_size=24,
                      group_by="task")
    assert dict(report.skipped) == {rlds.MISSING_CAMERA: 1}  # val record lacking image_1
    assert report.episodes == {"train": 2, "val": 1}
    base = "bridge_data_v2/toy{}/synthetic_{}/{}"
    assert report.stores == [f"{base.format('kitchen2', 'yellow', '01')}/train/packed",
                             f"{base.format('sink3', 'orange', '03')}/val/packed",
                             f"{base.format('sink3', 'purple', '00')}/train/packed"]
    for relative in report.stores:
        store = open_store(tmp_path / relative)
        assert store.cameras == ["images0", "images1"] and store.num_trajectories == 1
        assert store.source["task"] == relative.rsplit("/", 2)[0]
        assert all(s.rsplit("/", 2)[0].endswith(store.source["task"])
                   for s in store.trajectory_sources)
    with pytest.raises(ValueError, match="group_by task needs episode_metadata/file_path"):
        _convert(OPEN_X_DIR, tmp_path / "x", group_by="task")
    with pytest.raises(ValueError, match=r"cameras \['image_7'\] are not in the rail release"):
        _convert(RAIL_DIR, tmp_path / "y", cameras=("image_7",))


def test_cli_splits_resume_and_overwrite(tmp_path: Path, capsys) -> None:
    args = ["--input_format", "rlds", "--input_path", str(RAIL_DIR), "--output_path",
            str(tmp_path), "--im_size", "16", "--num_workers", "1", "--cameras", "image_0"]
    assert convert_main([*args, "--splits", "val"]) == 0
    assert "episodes written: val 2" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conversion.json", "val"]
    assert convert_main([*args, "--splits", "val"]) == 0
    assert "already converted" in capsys.readouterr().out
    assert convert_main([*args, "--splits", "train", "--overwrite"]) == 0  # val/ is stale now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conversion.json", "train"]
    marker = json.loads((tmp_path / "conversion.json").read_text())
    assert marker["episodes"] == {"train": 2} and marker["stores"] == ["train/packed"]
    with pytest.raises(SystemExit):
        convert_main([*args, "--splits", "test"])
    with pytest.raises(SystemExit):
        convert_main([*args, "--format", "numpy"])


def test_inspect_reads_a_release() -> None:
    summary, rows = summarize(RAIL_DIR, preview_trajectories=2)
    truth = expected("bridge_dataset")
    steps = {s: [e["num_steps"] for e in episodes(truth, s)] for s in ("train", "val")}
    assert summary["format"] == ["rlds"]
    assert summary["splits"] == {s: {"trajectories": len(n), "transitions": sum(n) - len(n)}
                                 for s, n in steps.items()}
    flags = [e["episode_metadata"] for s in steps for e in episodes(truth, s)]
    assert summary["cameras"] == {f"image_{k}": sum(m[f"has_image_{k}"] for m in flags)
                                  for k in range(4)}
    assert summary["language"]["labelled_trajectories"] == sum(m["has_language"] for m in flags)
    assert summary["image_sizes"] == [[256, 256, 4]]
    assert len(rows) == 2 and rows[0][0].shape == (256, 256, 3)


@pytest.mark.slow
def test_train_gc_bc_and_evaluate_on_converted_rail(rail_small: Path, tmp_path: Path) -> None:
    run_dir = train(compose_config([f"data_path={rail_small}", f"save_dir={tmp_path}",
                                    "algo=gc_bc", "num_steps=2", "log_interval=1",
                                    "eval_interval=2", "save_interval=2", *TINY]))
    out = subprocess.run([str(Path(sys.executable).parent / "bridge-torch-eval"), str(run_dir),
                          "--device", "cpu", "--json", str(tmp_path / "metrics.json")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["algo"] == "gc_bc" and metrics["step"] == 2
    assert metrics["transitions"] == 8 + 4  # val: episodes of 9 and 5 steps
    assert np.isfinite(metrics["mse"]) and metrics["baseline_mse"] > 0


@pytest.mark.slow
def test_reader_never_imports_tensorflow(tmp_path: Path) -> None:
    """A planted ``tensorflow`` / ``google.protobuf`` that fails on import proves no attempt."""
    for name in ("tensorflow", "google/protobuf"):
        (tmp_path / "fake" / name).mkdir(parents=True)
        (tmp_path / "fake" / name / "__init__.py").write_text(
            f"raise ImportError('{name} must not be imported')\n")
    (tmp_path / "fake" / "google" / "__init__.py").write_text("")
    code = (f"import sys\nfrom bridge_torch.data.sources.rlds_convert import RldsOptions, "
            f"convert_rlds\nconvert_rlds(RldsOptions({str(OPEN_X_DIR)!r}, {str(tmp_path)!r} + "
            f"'/out', im_size=16), num_workers=1, progress=False)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"('tensorflow', 'tensorflow_datasets', 'google')))\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "train" / "packed" / "meta.json").is_file()


def test_converter_workers_never_import_torch() -> None:
    """Spawned conversion workers import only the sources: torch would cost each a second."""
    code = ("import sys\nimport bridge_torch.data.sources.convert, "
            "bridge_torch.data.sources.rlds_convert, bridge_torch.data.sources.synthetic\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_convert_benchmark_reports_rates() -> None:
    bench = Path(__file__).resolve().parents[1] / "bench" / "rlds_convert.py"
    out = subprocess.run([sys.executable, str(bench), "--shards", "2", "--episodes-per-shard",
                          "2", "--workers", "1", "--im-size", "16"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["episodes"] == 4 and [r["workers"] for r in report["results"]] == [1]
    row = report["results"][0]
    assert row["episodes_per_s"] == pytest.approx(4 / row["seconds"])
    assert [len(report["merge"][route]) for route in ("concat_s", "rewrite_s")] == [2, 2]
    assert all(s > 0 for route in report["merge"].values() for s in route)
    assert row["mb_per_s"] == pytest.approx(report["megabytes"] / row["seconds"])


@pytest.mark.slow
def test_convert_benchmark_times_a_repeated_worker_count_afresh() -> None:
    bench = Path(__file__).resolve().parents[1] / "bench" / "rlds_convert.py"
    out = subprocess.run([sys.executable, str(bench), "--shards", "2", "--episodes-per-shard",
                          "1", "--workers", "1", "1", "--im-size", "8"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])["results"]
    assert [(r["workers"], r["status"]) for r in rows] == [(1, "converted"), (1, "converted")]
