"""Trust at every boundary: data, statistics, run directories, checkpoints, Policy inputs/outputs
and the converter refuse what would let a non-finite number or pickled code reach an action.
Where code execution is the risk, the file carries a pickle payload that creates a marker file
when unpickled; the tests assert the marker never appears.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bridge_torch.agents import AgentShapes
from bridge_torch.batch import BatchInputs
from bridge_torch.data.datasets import open_split
from bridge_torch.data.sources import bridge_raw as raw_format
from bridge_torch.data.sources.convert import ConvertOptions, convert
from bridge_torch.data.sources.legacy_numpy import load_out_npy
from bridge_torch.data.sources.pickle_guard import NO_PICKLE_ENV, PickleRefused
from bridge_torch.data.sources.synthetic import generate_raw_dataset
from bridge_torch.data.store import Trajectory, open_store, write_store
from bridge_torch.deploy.policy import BatchedPolicy, NonFiniteAction, Policy
from bridge_torch.deploy.restore import restore_agent
from bridge_torch.offline_eval import evaluate_run
from bridge_torch.train import checkpoint
from bridge_torch.train.config import compose_config
from bridge_torch.train.loop import train
from bridge_torch.train.run_data import load_run_data
from helpers import make_run, plant_out_npy

CPU = torch.device("cpu")


def packed_task(root: Path, *, size: int = 32, action_dim: int = 7) -> Path:
    """``root/task/{train,val}/packed`` with 3 random trajectories each; returns ``root``."""
    rng = np.random.default_rng(size + action_dim)
    for split in ("train", "val"):
        trajectories = [Trajectory(
            frames={"images0": rng.integers(0, 256, (6, size, size, 3), dtype=np.uint8)},
            proprio=rng.normal(size=(6, 7)).astype(np.float32),
            actions=rng.normal(size=(5, action_dim)).astype(np.float32), language=[],
            source=f"{split}{i}") for i in range(3)]
        write_store(root / "task" / split / "packed", trajectories, progress=False)
    return root


def set_run_data_path(run_dir: Path, data_path: Path, **saved_data: object) -> None:
    """Point a run's config.yaml and checkpoint at ``data_path`` (as a downloaded run could)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data_path"] = str(data_path)
    config["data"].update(saved_data)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    state = checkpoint.load(run_dir / "ckpt_5.pt")
    state["config"]["data_path"] = str(data_path)
    checkpoint.save(run_dir / "ckpt_5.pt", state)


@pytest.fixture
def store(converted_tree: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(next(converted_tree.rglob("train/packed")), tmp_path / "s"))


# ---- 1. values and statistics of a packed store ---------------------------------------------

@pytest.mark.parametrize("key", ["actions", "actions_relabeled", "proprio"])
def test_non_finite_store_values_are_refused_naming_file_trajectory_and_column(
        key: str, store: Path) -> None:
    array = np.load(store / f"{key}.npy")
    array[9, 2] = np.nan if key != "proprio" else np.inf
    np.save(store / f"{key}.npy", array)
    traj = int(np.searchsorted(np.load(store / ("traj_frame_start.npy" if key == "proprio" else
                                                "traj_action_start.npy")), 9, side="right")) - 1
    with pytest.raises(ValueError) as info:
        open_store(store)
    assert str(info.value).startswith(f"{store / key}.npy: row 9 column 2 is ")
    assert f"trajectory {traj} (" in str(info.value) and "NaN or inf" in str(info.value)


def edit_stats(store: Path, key: str, field: str, value: object) -> None:
    meta = json.loads((store / "meta.json").read_text())
    meta["stats"][key][field] = value
    (store / "meta.json").write_text(json.dumps(meta))


BAD_STATS = {  # id: (key, field, new value given the old, expected substring)
    "NaN std": ("actions_relabeled", "std", lambda old: [*old[:3], float("nan"), *old[4:]],
                "stats.actions_relabeled.std: column 3 is nan (must be finite)"),
    "mean of 1e6": ("actions", "mean", lambda old: [1e6, *old[1:]],
                    "stats.actions: column 0 has mean 1000000.0 outside [min, max]"),
    "negative count": ("proprio", "count", lambda old: -old,
                       "stats.proprio.count must be an integer >= 1, found -"),
    "wrong count": ("proprio", "count", lambda old: old + 1, "but proprio.npy has"),
    "shifted mean": ("actions", "mean", lambda old: [old[0] + 1e-3, *old[1:]],
                     "stats.actions.mean: column 0 is"),
    "short list": ("actions", "std", lambda old: old[:5],
                   "stats.actions.std must be a list of 7 numbers (one per column), found"),
    "strings": ("proprio", "min", lambda old: ["a"] * 7,
                "stats.proprio.min must be a list of 7 numbers"),
}


@pytest.mark.parametrize("case", BAD_STATS)
def test_statistics_in_meta_json_are_checked_against_the_arrays(case: str, store: Path) -> None:
    key, field, change, says = BAD_STATS[case]
    old = json.loads((store / "meta.json").read_text())["stats"][key][field]
    edit_stats(store, key, field, change(old))
    with pytest.raises(ValueError) as info:
        open_store(store)
    assert str(info.value).startswith(f"{store / 'meta.json'}: ") and says in str(info.value)


@pytest.mark.parametrize("camera", ["../images0", "/tmp/images0", ".hidden", "a/b"])
def test_camera_names_must_be_plain_names_inside_the_store(camera: str, store: Path) -> None:
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps({**meta, "cameras": [camera]}))
    with pytest.raises(ValueError, match="is not a plain name") as info:
        open_store(store)
    assert str(store / "meta.json") in str(info.value) and repr(camera) in str(info.value)


# ---- 2. pickle: opt-in, never from a run directory by default, global switch -----------------

@pytest.fixture
def planted_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run directory whose data_path is its own folder holding malicious out.npy files (in
    the train split, which training reads first, and the val split, the only one evaluation
    opens)."""
    run_dir = make_run(tmp_path, "bc")
    marker = tmp_path / "payload_ran"
    for split in ("train", "val"):
        plant_out_npy(run_dir / "data" / "task" / split / "out.npy", marker)
    set_run_data_path(run_dir, run_dir / "data")
    return run_dir, marker


def test_resume_never_unpickles_the_run_directorys_out_npy(planted_run: tuple[Path, Path]
                                                           ) -> None:
    run_dir, marker = planted_run
    with pytest.raises(PickleRefused, match="unpickling is off here"):
        train(compose_config([f"resume={run_dir}", "device=cpu"]))
    assert not marker.exists()


def test_an_opt_in_saved_in_the_run_directory_is_not_inherited(planted_run: tuple[Path, Path]
                                                               ) -> None:
    run_dir, marker = planted_run
    set_run_data_path(run_dir, run_dir / "data", allow_pickle=True, allow_image_mismatch=True)
    config = compose_config([f"resume={run_dir}"])
    assert config.data.load.allow_pickle is None and config.data.load.allow_image_mismatch is False
    with pytest.raises(PickleRefused):
        load_run_data(config, CPU)
    assert not marker.exists()


def test_eval_unpickles_the_runs_data_only_with_allow_pickle(planted_run: tuple[Path, Path]
                                                              ) -> None:
    run_dir, marker = planted_run
    with pytest.raises(PickleRefused, match="--allow-pickle"):
        evaluate_run(run_dir)
    assert not marker.exists()
    with pytest.raises(ValueError, match="expected a trajectory dict"):  # opted in: it loads
        evaluate_run(run_dir, allow_pickle=True)
    assert marker.exists()


def test_global_switch_forbids_every_unpickling(tmp_path: Path, raw_tree: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NO_PICKLE_ENV, "1")
    marker = tmp_path / "payload_ran"
    out_npy = tmp_path / "data" / "task" / "train" / "out.npy"
    plant_out_npy(out_npy, marker)
    for load in (lambda: open_split(out_npy.parents[1], "train", allow_pickle=True),
                 lambda: load_out_npy(out_npy),
                 lambda: load_run_data(compose_config([f"data_path={tmp_path / 'data'}",
                                                       "data.allow_pickle=true"]), CPU),
                 lambda: convert(ConvertOptions(raw_tree, tmp_path / "out"), num_workers=1)):
        with pytest.raises(PickleRefused, match=NO_PICKLE_ENV):
            load()
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_packed_store_is_not_replaced_from_a_newer_out_npy(converted_tree: Path,
                                                             tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    task = Path(shutil.copytree(next(converted_tree.rglob("train")).parent, tmp_path / "d" / "t"))
    marker = tmp_path / "payload_ran"
    out_npy = task / "train" / "out.npy"
    plant_out_npy(out_npy, marker)
    later = (task / "train" / "packed" / "meta.json").stat().st_mtime_ns + 10**9
    os.utime(out_npy, ns=(later, later))
    config = compose_config([f"data_path={tmp_path / 'd'}", "algo=bc"])
    with caplog.at_level(logging.WARNING, logger="bridge_torch.data.datasets"):
        data = load_run_data(config, CPU)
    assert not marker.exists() and data.train.num_trajectories == 8
    assert f"{out_npy} is newer than its packed store {task / 'train' / 'packed'}" in caplog.text


def test_a_fresh_run_still_packs_an_out_npy_without_packed_store(converted_tree: Path,
                                                                 tmp_path: Path) -> None:
    split = tmp_path / "d" / "t" / "train"
    split.mkdir(parents=True)
    shutil.copy(next(converted_tree.rglob("train/out.npy")), split / "out.npy")
    data = load_run_data(compose_config([f"data_path={tmp_path / 'd'}", "algo=bc"]), CPU)
    assert data.train.num_trajectories == 8 and (split / "packed" / "meta.json").is_file()


# ---- 3. data of another layout than the checkpoint's -----------------------------------------

def test_eval_refuses_data_of_another_image_size_unless_allowed(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bc")  # trained at 32x32
    data = packed_task(tmp_path / "small", size=16)
    with pytest.raises(ValueError) as info:  # the statistics differ too: that alone is allowed
        evaluate_run(run_dir, data_path=str(data), allow_stats_mismatch=True)
    assert str(info.value).startswith(f"{data / 'task' / 'train' / 'packed'} does not match "
                                      f"{run_dir / 'ckpt_5.pt'}: image size [16, 16] (trained on "
                                      "[32, 32]); is this the data the model was trained on? "
                                      "Pass --allow-image-mismatch")
    result = evaluate_run(run_dir, data_path=str(data), allow_image_mismatch=True,
                          allow_stats_mismatch=True)
    assert np.isfinite(result["mse"])


def test_resume_refuses_data_of_another_image_size_unless_allowed(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bc")
    set_run_data_path(run_dir, packed_task(tmp_path / "small", size=16))
    with pytest.raises(ValueError, match=r"image size \[16, 16\] \(trained on \[32, 32\]\).*"
                                         r"Pass data\.load\.allow_image_mismatch=true"):
        load_run_data(compose_config([f"resume={run_dir}"]), CPU)
    config = compose_config([f"resume={run_dir}", "data.allow_image_mismatch=true"])
    assert load_run_data(config, CPU).agent_shapes.image_size == 16


def test_another_camera_or_action_dimension_is_refused(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bc")
    set_run_data_path(run_dir, packed_task(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"camera images1 \(trained on images0\)"):
        load_run_data(compose_config([f"resume={run_dir}", "data.camera=images1"]), CPU)
    six = make_run(tmp_path, "bc", action_dim=6)
    with pytest.raises(ValueError, match=r"action_dim 7 \(trained on 6\); the network and its "
                                         "statistics have the checkpoint's dimensions"):
        evaluate_run(six, data_path=str(tmp_path / "d"), allow_image_mismatch=True)


# ---- 4. Policy inputs and outputs, checkpoint weights and statistics -------------------------

class ConstantAgent(torch.nn.Module):
    """Predicts ``value`` (normalised) in every dimension; proprio-conditioned."""

    def __init__(self, value: list[float]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.inputs = BatchInputs(proprio=True)
        self.shapes = AgentShapes(action_dim=7, proprio_dim=7, obs_horizon=1,
                                  act_pred_horizon=1, image_size=8)
        self.value = torch.tensor(value)

    def sample_actions(self, observations, goals=None, *, argmax=False, generator=None):
        return self.value.expand(observations["image"].shape[0], 1, 7).clone()


STATS = {key: {"mean": [0.0] * 7, "std": [1.0] * 7, "min": [-1.0] * 7, "max": [1.0] * 7}
         for key in ("actions", "proprio")}


def policy(value: float = 0.5, gripper: float = 0.5, stats: dict = STATS) -> Policy:
    return Policy(BatchedPolicy(ConstantAgent([value] * 6 + [gripper]), stats=stats,
                                normalization_type="normal", sticky_gripper_num_steps=1))


FRAME = np.zeros((8, 8, 3), np.uint8)


@pytest.mark.parametrize(("proprio", "says"), [
    (np.array([0, 0, 0, np.nan, 0, 0, 0]), "proprio of environment 0 has nan in dimension 3"),
    (np.array([np.inf] + [0] * 6), "proprio of environment 0 has inf in dimension 0"),
    (np.zeros(6), r"expected proprio of shape \(1, 7\) \(the trained proprio_dim\), got \(1, 6\)"),
])
def test_policy_refuses_non_finite_or_wrongly_sized_proprio(proprio: np.ndarray,
                                                            says: str) -> None:
    with pytest.raises(ValueError, match=says):
        policy().act(FRAME, proprio=proprio)


@pytest.mark.parametrize("frame", [np.zeros((0, 0, 3), np.uint8), np.zeros((4, 0, 3), np.uint8),
                                   np.zeros((8, 8, 4), np.uint8)])
def test_policy_refuses_empty_or_non_rgb_frames(frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) camera frame with H, W >= 1"):
        policy().act(frame, proprio=np.zeros(7))


def test_policy_never_returns_a_non_finite_action() -> None:
    with pytest.raises(NonFiniteAction, match=r"predicted nan for action dimension 6 \(gripper\)"):
        policy(gripper=float("nan")).act(FRAME, proprio=np.zeros(7))  # sticky: NaN read as open
    with pytest.raises(NonFiniteAction, match=r"dimension 0 \(dx\) of environment 0"):
        policy(value=float("inf")).act(FRAME, proprio=np.zeros(7))
    nan_std = {**STATS, "actions": {**STATS["actions"], "std": [1.0] * 6 + [float("nan")]}}
    with pytest.raises(ValueError, match=r"policy stats.actions.std: column 6 is nan"):
        policy(stats=nan_std)


@pytest.mark.parametrize("damage", ["weights", "stats"])
def test_checkpoint_with_non_finite_weights_or_statistics_is_refused(damage: str,
                                                                     tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bc")
    state = checkpoint.load(run_dir / "ckpt_5.pt")
    if damage == "weights":
        name = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][name] = state["model"][name].clone().fill_(float("nan"))
        says = f"[model]: {name} contains NaN or inf"
    else:
        state["stats"]["proprio"]["mean"][2] = float("inf")
        says = "stats.proprio.mean: column 2 is inf (must be finite)"
    state.pop("tensor_sha256", None)  # a checkpoint written elsewhere: our save refuses NaN
    torch.save(state, run_dir / "ckpt_5.pt")
    with pytest.raises(ValueError) as info:
        restore_agent(run_dir, device="cpu")
    assert str(info.value).startswith(str(run_dir / "ckpt_5.pt")) and says in str(info.value)


def test_resumed_statistics_are_checked_naming_the_checkpoint(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "bc")
    set_run_data_path(run_dir, packed_task(tmp_path / "d"))
    state = checkpoint.load(run_dir / "ckpt_5.pt")
    state["stats"]["actions"]["std"] = [1.0] * 5  # a malformed list: no bare numpy error
    with pytest.raises(ValueError) as info:
        load_run_data(compose_config([f"resume={run_dir}"]), CPU, stats=state["stats"])
    assert str(info.value).startswith(f"{run_dir / 'ckpt_5.pt'} stats.actions.std must be a "
                                      "list of 7 numbers")


# ---- 5. the converter on single corruptions ---------------------------------------------------

@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return generate_raw_dataset(tmp_path / "raw", seed=3, num_tasks=1, dates_per_task=1,
                                trajs_per_date=3, min_len=4, max_len=5, cameras=2,
                                image_hw=(24, 32))


def convert_raw(raw: Path, out: Path) -> list:
    return convert(ConvertOptions(raw, out, im_size=16, train_proportion=1.0), num_workers=1)


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_output_path_that_is_a_file_is_one_clear_error(where: str, raw: Path,
                                                       tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a directory")
    out = tmp_path / "out" if where == "file" else tmp_path / "out" / "sub"
    with pytest.raises(ValueError) as info:
        convert_raw(raw, out)
    assert str(info.value).startswith(f"--output_path {out} ") and \
        f"{tmp_path / 'out'}" in str(info.value) and "not a directory" in str(info.value)


def break_traj(traj: Path, how: str) -> str:
    """Damage one raw trajectory folder; returns the skip reason expected."""
    if how == "images0 missing":
        shutil.rmtree(traj / "images0")
        return raw_format.NO_IMAGES
    if how == "images0 a symlink loop":
        shutil.rmtree(traj / "images0")
        (traj / "images0").symlink_to(traj / "images0")
    elif how == "stray symlink loop":
        (traj / "loop").symlink_to(traj / "loop")
    else:  # the trajectory folder itself
        shutil.rmtree(traj)
        traj.symlink_to(traj)
    return raw_format.BROKEN_LINK


@pytest.mark.parametrize("how", ["images0 missing", "images0 a symlink loop",
                                 "stray symlink loop", "trajectory a symlink loop"])
def test_damaged_trajectory_is_skipped_counted_and_logged(how: str, raw: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    bad = sorted(raw.rglob("traj_group0/traj*"))[1]
    reason = break_traj(bad, how)
    with caplog.at_level(logging.WARNING, logger="bridge_torch.data.sources.convert"):
        (report,) = convert_raw(raw, tmp_path / "out")
    assert report.skipped_trajectories == {reason: 1} and report.num_train == 2
    assert f"skipping {bad} ({reason}): " in caplog.text
    (out_npy,) = (tmp_path / "out").rglob("out.npy")  # every written trajectory is readable
    assert all("images0" in traj["observations"][0] for traj in load_out_npy(out_npy))
