"""Bad and hostile input (issue 7): every kind gives a clear error or a counted, logged skip.

Converter cases assert the skip is counted under its reason (report and conversion.json), names
the trajectory and logs what was expected vs found, and that the output has no temp files, no
empty directories and only complete splits. Loader cases (legacy out.npy, packed store, configs,
checkpoints, statistics, data paths) assert the error type and that the message names the file
or key and what was expected; where a loader writes (packing out.npy) nothing half-written stays.
Hostile files carry a pickle payload that would create a file: it must never run.
"""

import json
import logging
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.errors import ConfigCompositionException
from PIL import Image

from bridge_torch.atomic import is_temporary
from bridge_torch.data.datasets import open_split, open_sub_datasets
from bridge_torch.data.sources import bridge_raw as raw_format
from bridge_torch.data.sources.convert import (
    SPLITS,
    CollectionReport,
    ConvertOptions,
    convert,
)
from bridge_torch.data.sources.legacy_numpy import load_out_npy, save_out_npy
from bridge_torch.data.sources.synthetic import generate_raw_dataset
from bridge_torch.data.store import open_store
from bridge_torch.deploy import restore
from bridge_torch.offline_eval import evaluate_run
from bridge_torch.train import checkpoint
from bridge_torch.train.config import compose_config, load_config, to_yaml
from bridge_torch.train.distributed import DistInfo
from bridge_torch.train.state import prepare_run_dir
from helpers import make_run

SIZE = 16  # converted frame side of the converter cases
TRAJS = 3  # trajectories of the converter cases' one dated folder


class PlantedPayload:
    """A pickle whose loading creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


# ---- converter: bad raw trajectories are skipped, counted and logged -------------------------

@pytest.fixture(scope="module")
def raw_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One task, one dated folder, 3 trajectories of 5-6 frames from two cameras (read-only)."""
    return generate_raw_dataset(tmp_path_factory.mktemp("raw"), seed=3, num_tasks=1,
                                dates_per_task=1, trajs_per_date=TRAJS, min_len=5, max_len=6,
                                cameras=2, image_hw=(24, 32))


@pytest.fixture
def raw(raw_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(raw_template, tmp_path / "raw"))


def traj_dirs(raw: Path) -> list[Path]:
    return sorted(raw.rglob("traj_group0/traj*"))


def convert_one(raw: Path, out: Path, train_proportion: float = 1.0) -> list[CollectionReport]:
    return convert(ConvertOptions(raw, out, im_size=SIZE, train_proportion=train_proportion,
                                  format="both"), num_workers=1, progress=False)


def assert_complete_output(out: Path) -> list[Path]:
    """No temp files, no empty dirs, every split complete; returns the split directories."""
    leftovers = [p for p in out.rglob("*") if is_temporary(p.name)
                 or (p.is_dir() and not any(p.iterdir()))]
    assert leftovers == []
    split_dirs = sorted(p for p in out.rglob("*") if p.is_dir() and p.name in SPLITS)
    for split_dir in split_dirs:
        assert sorted(p.name for p in split_dir.iterdir()) == ["out.npy", "packed"]
        assert open_store(split_dir / "packed").num_trajectories == \
            len(load_out_npy(split_dir / "out.npy"))
        assert (split_dir.parent / "conversion.json").is_file()
    return split_dirs


def frames(traj: Path, camera: str = "images0") -> int:
    return len(list((traj / camera).glob("im_*.jpg")))


def rewrite(path: Path, change: Callable) -> None:
    path.write_bytes(pickle.dumps(change(pickle.loads(path.read_bytes()))))


def keep_frames(traj: Path, count: int) -> None:
    """Cut a trajectory to its first ``count`` frames, pickles included (a consistent one)."""
    for camera in ("images0", "images1"):
        for frame in (traj / camera).glob("im_*.jpg"):
            if int(frame.stem[3:]) >= count:
                frame.unlink()
    rewrite(traj / "obs_dict.pkl", lambda obs: {**obs, "full_state": obs["full_state"][:count],
                                                "time_stamp": obs["time_stamp"][:count]})
    rewrite(traj / "policy_out.pkl", lambda policy: policy[:count - 1])


def set_state(traj: Path, key: str, value: Callable) -> None:
    rewrite(traj / "obs_dict.pkl", lambda obs: {**obs, key: value(obs[key])})


def nan_action(policy: list) -> list:
    policy[1]["actions"] = np.where(np.arange(7) == 2, np.nan, policy[1]["actions"])
    return policy


def inf_state(state: np.ndarray) -> np.ndarray:
    state = state.copy()
    state[3, 0] = np.inf
    return state


def missing_file(name: str) -> Callable[[Path], str]:
    def breaker(traj: Path) -> str:
        (traj / name).unlink()
        return f"expected {traj / name}, not found"
    return breaker


def no_camera_dirs(traj: Path) -> str:
    for camera in ("images0", "images1"):
        shutil.rmtree(traj / camera)
    return f"expected an images<N>/ directory in {traj}"


def empty_camera(traj: Path) -> str:
    for frame in (traj / "images0").iterdir():
        frame.unlink()
    return f"expected im_<t>.jpg frames in {traj / 'images0'}, found none"


def truncated_jpeg(traj: Path) -> str:
    jpeg = traj / "images0" / "im_1.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    return f"cannot decode {jpeg}"


def corrupt_jpeg(traj: Path) -> str:
    jpeg = traj / "images1" / "im_0.jpg"
    jpeg.write_bytes(b"\xff\xd8 not a jpeg" * 30)
    return f"cannot decode {jpeg}"


def camera_with_fewer_frames(traj: Path) -> str:
    count = frames(traj)
    (traj / "images1" / f"im_{count - 1}.jpg").unlink()
    return f"expected im_0..im_{count - 1}.jpg (the {count} frames of images0) in " \
           f"{traj / 'images1'}, found {count - 1} frames, missing e.g. [{count - 1}]"


def obs_of_wrong_type(traj: Path) -> str:
    (traj / "obs_dict.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    return f"{traj / 'obs_dict.pkl'}: expected a dict with 'full_state' and 'time_stamp', " \
           "found list"


def state_of_wrong_shape(traj: Path) -> str:
    set_state(traj, "full_state", lambda state: state[:, :5])
    return f"full_state ({frames(traj)} frames): expected shape ({frames(traj)}, 7), found " \
           f"({frames(traj)}, 5)"


def policy_of_wrong_type(traj: Path) -> str:
    (traj / "policy_out.pkl").write_bytes(pickle.dumps({"actions": np.zeros((4, 7))}))
    return f"{traj / 'policy_out.pkl'}: expected a non-empty list of dicts or of 7-D actions, " \
           "found dict"


def corrupt_pickle(traj: Path) -> str:
    (traj / "policy_out.pkl").write_bytes(b"\x80\x04\x95 truncated")
    return f"cannot unpickle {traj / 'policy_out.pkl'}"


def too_few_actions(traj: Path) -> str:
    rewrite(traj / "policy_out.pkl", lambda policy: policy[:-2])
    count = frames(traj)
    return f"expected shape ({count - 1}, 7), found ({count - 3}, 7)"


def nan_in_actions(traj: Path) -> str:
    rewrite(traj / "policy_out.pkl", nan_action)
    return f"{traj / 'policy_out.pkl'} actions ({frames(traj)} frames -> {frames(traj) - 1} " \
           "actions): NaN or inf at index [1, 2]"


def inf_in_states(traj: Path) -> str:
    set_state(traj, "full_state", inf_state)
    return f"{traj / 'obs_dict.pkl'} full_state ({frames(traj)} frames): NaN or inf at index [3, 0]"


def zero_steps(traj: Path) -> str:
    keep_frames(traj, 1)
    return f"{traj}: 1 frames give no transition"


SKIPPED = {  # id: (breaker -> expected detail, reason counted in the summary)
    "missing obs_dict.pkl": (missing_file("obs_dict.pkl"), raw_format.MISSING_PICKLE),
    "missing policy_out.pkl": (missing_file("policy_out.pkl"), raw_format.MISSING_PICKLE),
    "missing image folders": (no_camera_dirs, raw_format.NO_IMAGES),
    "empty image folder": (empty_camera, raw_format.NO_IMAGES),
    "truncated jpeg": (truncated_jpeg, raw_format.BAD_IMAGE),
    "corrupt jpeg": (corrupt_jpeg, raw_format.BAD_IMAGE),
    "camera with fewer frames": (camera_with_fewer_frames, raw_format.FRAME_MISMATCH),
    "obs_dict.pkl of the wrong type": (obs_of_wrong_type, raw_format.BAD_PICKLE),
    "full_state of the wrong shape": (state_of_wrong_shape, raw_format.BAD_PICKLE),
    "policy_out.pkl of the wrong type": (policy_of_wrong_type, raw_format.BAD_PICKLE),
    "corrupt pickle": (corrupt_pickle, raw_format.BAD_PICKLE),
    "inconsistent lengths": (too_few_actions, raw_format.LENGTH_MISMATCH),
    "NaN in actions": (nan_in_actions, raw_format.NON_FINITE),
    "inf in states": (inf_in_states, raw_format.NON_FINITE),
    "zero-step trajectory": (zero_steps, raw_format.TOO_SHORT),
}


@pytest.mark.parametrize("case", SKIPPED)
def test_bad_trajectory_is_skipped_counted_and_logged(case: str, raw: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    breaker, reason = SKIPPED[case]
    bad = traj_dirs(raw)[1]
    detail = breaker(bad)
    with caplog.at_level(logging.WARNING, logger="bridge_torch.data.sources.convert"):
        (report,) = convert_one(raw, tmp_path / "out")
    assert report.status == "converted" and report.num_train == TRAJS - 1
    assert report.skipped_trajectories == {reason: 1}
    assert report.examples == {reason: str(bad)}
    assert f"skipping {bad} ({reason}): " in caplog.text and detail in caplog.text
    (split_dir,) = assert_complete_output(tmp_path / "out")
    record = json.loads((split_dir.parent / "conversion.json").read_text())
    assert record["skipped_trajectories"] == {reason: 1} and record["num_train"] == TRAJS - 1


def test_trajectory_with_no_step_after_the_latency_shift_is_skipped(raw: Path,
                                                                    tmp_path: Path) -> None:
    bad = traj_dirs(raw)[0]
    keep_frames(bad, 2)  # one transition, which the pre-2021-07-23 one-frame shift consumes
    dated = bad.parents[2]
    dated.rename(dated.with_name("2021-01-01_00-00-00"))
    (report,) = convert_one(raw, tmp_path / "out")
    assert report.skipped_trajectories == {raw_format.TOO_SHORT: 1}
    assert report.examples[raw_format.TOO_SHORT].endswith("traj0") and report.num_train == 2
    assert_complete_output(tmp_path / "out")


def test_one_step_trajectory_and_mixed_image_sizes_are_kept(raw: Path, tmp_path: Path) -> None:
    short, mixed, _ = traj_dirs(raw)
    keep_frames(short, 2)
    Image.new("RGB", (50, 20), (200, 10, 10)).save(mixed / "images0" / "im_1.jpg")
    (report,) = convert_one(raw, tmp_path / "out")
    assert report.num_train == TRAJS and not report.skipped_trajectories
    (split_dir,) = assert_complete_output(tmp_path / "out")
    store = open_store(split_dir / "packed")
    assert sorted(store.traj_length.tolist())[0] == 1
    assert store.frames("images0").shape[1:] == (SIZE, SIZE, 3)  # all squashed to one size


@pytest.mark.parametrize(("entry", "reason", "detail"), [
    ("not_a_date", raw_format.NOT_DATED, "found directory 'not_a_date'"),
    ("notes.txt", raw_format.NOT_DATED, "found file 'notes.txt'"),
    ("2022-01-01_00-00-00", raw_format.NO_TRAJECTORIES, "expected trajectories in raw/"),
])
def test_bad_dated_folder_is_skipped_counted_and_logged(entry: str, reason: str, detail: str,
                                                        raw: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    collection = traj_dirs(raw)[0].parents[3]
    (collection / entry).mkdir() if "." not in entry else (collection / entry).write_text("x")
    with caplog.at_level(logging.WARNING, logger="bridge_torch.data.sources.convert"):
        (report,) = convert_one(raw, tmp_path / "out")
    assert report.skipped_folders == {reason: 1} and report.num_train == TRAJS
    assert report.examples == {reason: str(collection / entry)} and detail in caplog.text
    assert_complete_output(tmp_path / "out")


def test_empty_task_writes_nothing(raw: Path, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    collection = traj_dirs(raw)[0].parents[3]
    empty = collection.parent.parent / "empty_task" / "00"
    empty.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="bridge_torch.data.sources.convert"):
        reports = convert_one(raw, tmp_path / "out")
    assert [(Path(r.collection).parent.name, r.status) for r in reports] == [
        ("empty_task", "no output"), (collection.parent.name, "converted")]
    assert f"{empty}: no usable trajectories; nothing written" in caplog.text
    assert not (tmp_path / "out" / empty.relative_to(raw).parent).exists()
    assert len(assert_complete_output(tmp_path / "out")) == 1


def test_split_without_val_trajectories_writes_train_only(raw: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    (report,) = convert_one(raw, tmp_path / "first", train_proportion=0.5)
    assert (report.num_train, report.num_val) == (1, 2)
    val_store = open_store(next((tmp_path / "first").rglob("val/packed")))
    for source in val_store.trajectory_sources:  # break both val trajectories
        (Path(source) / "obs_dict.pkl").unlink()
    with caplog.at_level(logging.WARNING, logger="bridge_torch.data.sources.convert"):
        (report,) = convert_one(raw, tmp_path / "out", train_proportion=0.5)
    assert (report.num_train, report.num_val) == (1, 0)
    assert report.skipped_trajectories == {raw_format.MISSING_PICKLE: 2}
    assert "no val trajectories; writing only train/" in caplog.text
    assert [d.name for d in assert_complete_output(tmp_path / "out")] == ["train"]


# ---- loaders: legacy out.npy, packed store, config, checkpoint, statistics, data path ----------

def legacy_task(tmp_path: Path, converted_tree: Path, change: Callable[[list], object]) -> Path:
    """A task whose train/out.npy is the fixture's, changed by ``change`` (a list -> np.save)."""
    source = next(converted_tree.rglob("train/out.npy"))
    task = tmp_path / "data" / "task"
    (task / "train").mkdir(parents=True)
    payload = change(load_out_npy(source))
    if isinstance(payload, list):
        save_out_npy(task / "train" / "out.npy", payload)
    else:
        np.save(task / "train" / "out.npy", payload, allow_pickle=True)
    return task


def zero_step_trajectory(trajs: list) -> list:
    trajs[1] = {**trajs[1], "observations": [], "next_observations": [], "actions": []}
    return trajs


def shrink(step: dict) -> dict:
    """One step with 24x24 frames (and no saliency, which keeps the old size)."""
    return {**{k: v for k, v in step.items() if k != "saliency"},
            "images0": step["images0"][:24, :24]}


def mixed_sizes_in_trajectory(trajs: list) -> list:
    observations = list(trajs[0]["observations"])
    observations[2] = shrink(observations[2])
    trajs[0] = {**trajs[0], "observations": observations}
    return trajs


def mixed_sizes_between_trajectories(trajs: list) -> list:
    trajs[1] = {**trajs[1], **{key: [shrink(step) for step in trajs[1][key]]
                               for key in ("observations", "next_observations")}}
    return trajs


LEGACY = {  # id: (change to the out.npy content, substrings of the error)
    "out.npy not an object array": (
        lambda trajs: np.zeros((4, 7), np.float32),
        ["out.npy: expected a 1-D object array", "float32"]),
    "out.npy of non-dicts": (lambda trajs: ["a", "b"],
                             ["out.npy trajectory 0: expected a trajectory dict, found str"]),
    "out.npy with a zero-step trajectory": (
        zero_step_trajectory,
        ["out.npy trajectory 1: expected observations, next_observations and actions of one "
         "non-zero length, found {'observations': 0"]),
    "out.npy with mixed image sizes in a trajectory": (
        mixed_sizes_in_trajectory,
        ["out.npy trajectory 0 observations[2]: expected images0 uint8 (32, 32, 3), found "
         "(dtype('uint8'), (24, 24, 3))"]),
    "out.npy with mixed image sizes between trajectories": (
        mixed_sizes_between_trajectories,
        ["out.npy#1: image_size is [24, 24], but earlier trajectories of this store have "
         "[32, 32]"]),
}


@pytest.mark.parametrize("case", LEGACY)
def test_bad_out_npy_is_refused_and_nothing_is_packed(case: str, converted_tree: Path,
                                                      tmp_path: Path) -> None:
    change, says = LEGACY[case]
    task = legacy_task(tmp_path, converted_tree, change)
    with pytest.raises(ValueError) as info:
        open_sub_datasets(task.parent, [["**"]], [])
    assert all(text in str(info.value) for text in says), str(info.value)
    assert [p.name for p in (task / "train").iterdir()] == ["out.npy"]  # no (partial) store


def test_truncated_out_npy_is_refused(converted_tree: Path, tmp_path: Path) -> None:
    task = legacy_task(tmp_path, converted_tree, lambda trajs: trajs)
    out_npy = task / "train" / "out.npy"
    out_npy.write_bytes(out_npy.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"out\.npy: not a readable out\.npy \(\w+Error"):
        open_split(task, "train")
    assert [p.name for p in (task / "train").iterdir()] == ["out.npy"]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def set_meta(store: Path, **changes: object) -> None:
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps({**meta, **changes}))


STORES = {  # id: (damage to a packed store, substrings of the error)
    "store with a missing file": (lambda s: (s / "actions.npy").unlink(),
                                  ["missing file actions.npy"]),
    "store with a truncated file": (lambda s: truncate(s / "frames_images0.npy"),
                                    ["cannot read frames_images0.npy: it is truncated"]),
    "store of an unknown schema version": (
        lambda s: set_meta(s, schema_version=2),
        ["meta.json: schema_version 2 is not supported", "reads version 1"]),
    "store without meta.json": (lambda s: (s / "meta.json").unlink(), ["meta.json is missing"]),
    "store file of the wrong dtype": (
        lambda s: np.save(s / "proprio.npy", np.load(s / "proprio.npy").astype(np.float64)),
        ["proprio.npy is float64", "expected float32"]),
}


@pytest.mark.parametrize("case", STORES)
def test_damaged_packed_store_is_refused(case: str, converted_tree: Path, tmp_path: Path) -> None:
    damage, says = STORES[case]
    store = Path(shutil.copytree(next(converted_tree.rglob("train/packed")), tmp_path / "s"))
    damage(store)
    with pytest.raises(ValueError) as info:
        open_store(store)
    assert str(store) in str(info.value)
    assert all(text in str(info.value) for text in says), str(info.value)


@pytest.mark.parametrize(("override", "says"), [
    ("optimizer.lrr=1", ["optimizer.lrr", "Key 'lrr' not in 'OptimizerConfig'"]),
    ("ema.rate=fast", ["ema.rate", "Value 'fast' of type 'str' could not be converted to Float"]),
])
def test_config_with_an_unknown_key_or_wrong_type(override: str, says: list[str]) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(["data_path=/d", override])
    message = f"{info.value} {info.value.__cause__}"
    assert all(text in message for text in says), message


@pytest.mark.parametrize(("section", "key", "value", "says"), [
    ("optimizer", "lrr", 1.0, "Key 'lrr' not in 'OptimizerConfig'"),
    ("ema", "rate", "fast", "Value 'fast' of type 'str' could not be converted to Float"),
])
def test_saved_config_with_an_unknown_key_or_wrong_type(section: str, key: str, value: object,
                                                        says: str, tmp_path: Path) -> None:
    """A run's config.yaml edited by hand: evaluation and resume name the file and the key."""
    saved = yaml.safe_load(to_yaml(compose_config(["data_path=/d"])))
    saved[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    for load in (lambda: load_config(path), lambda: compose_config([f"resume={tmp_path}"])):
        with pytest.raises(ValueError, match="not a valid bridge-torch config") as info:
            load()
        assert str(path) in str(info.value) and says in str(info.value)


def test_checkpoint_of_another_algorithm_or_action_dimension(tmp_path: Path) -> None:
    bc7, gc7, gc6 = (make_run(tmp_path, algo, dim) for algo, dim in
                     (("bc", 7), ("gc_bc", 7), ("gc_bc", 6)))
    with pytest.raises(ValueError) as info:
        restore.restore_agent(bc7, gc7 / "ckpt_5.pt", device="cpu")
    assert str(info.value) == f"{gc7 / 'ckpt_5.pt'} was trained with algo 'gc_bc' but {bc7} is " \
                              "a 'bc' run"
    with pytest.raises(ValueError) as info:
        restore.restore_agent(gc7, gc6 / "ckpt_5.pt", device="cpu")
    assert str(info.value) == f"{gc6 / 'ckpt_5.pt'} has action_dim 6 but the run {gc7} was " \
                              "trained on 7-dimensional actions (stats.json)"


def test_truncated_checkpoint_and_resume_without_checkpoint(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bc")
    path = run_dir / "ckpt_5.pt"
    truncate(path)
    with pytest.raises(ValueError, match=re.escape(f"cannot read checkpoint {path}: truncated")):
        checkpoint.load(path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"no ckpt_<step>\.pt to resume from"):
        prepare_run_dir(compose_config([f"resume={run_dir}"]), DistInfo())


def test_statistics_that_do_not_match_the_dataset(converted_tree: Path, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bc")  # statistics mean 0, std 1: not those of converted_tree
    with pytest.raises(ValueError) as info:
        evaluate_run(run_dir, data_path=str(converted_tree))
    assert str(info.value).startswith(f"{run_dir / 'ckpt_5.pt'}: the dataset's statistics differ "
                                      "from the checkpoint's (actions.mean, actions.std, "
                                      "proprio.mean, proprio.std)")


def test_data_path_that_does_not_exist_or_matches_nothing(converted_tree: Path,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(f"data_path {tmp_path / 'nowhere'} does not")):
        open_sub_datasets(tmp_path / "nowhere", [["**"]], [])
    with pytest.raises(ValueError) as info:
        open_sub_datasets(converted_tree, [["**"], ["kitchen/*"]], [])
    assert str(info.value).startswith(f"include[1] = ['kitchen/*'] matches no task directory "
                                      f"under {converted_tree}")


# ---- hostile files: a planted pickle payload never runs -----------------------------------------

def test_planted_pickle_in_a_packed_store_is_rejected_and_never_runs(converted_tree: Path,
                                                                     tmp_path: Path) -> None:
    task = Path(shutil.copytree(next(converted_tree.rglob("train")).parent, tmp_path / "task"))
    (task / "train" / "out.npy").unlink()  # the store alone: the one training would read
    marker = tmp_path / "payload_ran"
    payload = np.array([PlantedPayload(marker)] * 3 + [None], dtype=object)[:-1]
    np.save(task / "train" / "packed" / "actions.npy", payload, allow_pickle=True)
    with pytest.raises(ValueError, match=r"cannot read actions\.npy: it is truncated or not a "
                                         r"plain \.npy array \(Array can't be memory-mapped"):
        open_split(task, "train")
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bc")
    marker = tmp_path / "payload_ran"
    state = checkpoint.load(run_dir / "ckpt_5.pt")
    torch.save({**state, "step": 6, "model": PlantedPayload(marker)}, run_dir / "ckpt_6.pt")
    for load in (lambda: checkpoint.load(run_dir / "ckpt_6.pt"),
                 lambda: restore.restore_agent(run_dir, device="cpu")):  # picks the latest
        with pytest.raises(ValueError, match=re.escape(f"refusing to load {run_dir / 'ckpt_6.pt'}"
                                                       ": it holds pickled objects other than")):
            load()
    assert not marker.exists()


def test_out_npy_from_outside_the_data_path_is_refused_and_never_runs(
        converted_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "payload_ran"
    elsewhere = tmp_path / "downloads" / "out.npy"
    elsewhere.parent.mkdir()
    np.save(elsewhere, np.array([PlantedPayload(marker), None], dtype=object)[:1],
            allow_pickle=True)
    split_dir = tmp_path / "data" / "task" / "train"
    split_dir.mkdir(parents=True)
    (split_dir / "out.npy").symlink_to(elsewhere)  # planted inside the data path
    with pytest.raises(ValueError) as info:
        open_sub_datasets(tmp_path / "data", [["**"]], [])
    assert str(info.value) == (
        f"refusing to unpickle {split_dir / 'out.npy'}: it resolves to {elsewhere}, outside the "
        f"data path {tmp_path / 'data'}; out.npy is pickle and runs code when loaded, so it is "
        "only read from the data path you configured")
    assert not marker.exists() and [p.name for p in split_dir.iterdir()] == ["out.npy"]
    (split_dir / "out.npy").unlink()  # a real file inside the data path (given with ~) loads
    shutil.copy(next(converted_tree.rglob("train/out.npy")), split_dir / "out.npy")
    monkeypatch.setenv("HOME", str(tmp_path))
    (stores,) = open_sub_datasets(Path("~/data"), [["**"]], [])
    assert stores[0].num_trajectories == 8
