"""Meta-World benchmark: action adapters, expert replay, determinism, collect -> train -> eval.

Needs the ``sim`` extra (installed by ``make setup``); skipped without it so the core suite still
runs on a bare install.
"""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge_torch.data.actions import relabel_actions
from bridge_torch.data.store import open_store
from bridge_torch.sim.actions import ACTION_SCALE_M, bridge_to_metaworld, metaworld_to_bridge
from bridge_torch.sim.env import CameraConfig, Episode, import_metaworld
from bridge_torch.train.config import compose_config

try:
    import_metaworld()
except ImportError as error:
    pytest.skip(f"sim extra not installed: {error}", allow_module_level=True)

from bridge_torch.sim import cli
from bridge_torch.sim.collect import recorded_camera, run_expert, to_trajectory
from bridge_torch.sim.env import SimEnv, expert_policy
from bridge_torch.sim.training import sim_eval_settings

TEST_CAMERA = CameraConfig(image_size=64)  # rendering cost barely depends on size; 64 is enough
TASKS = ("reach-v3", "push-v3")


def test_adapters_round_trip() -> None:
    rng = np.random.default_rng(0)
    mw = np.c_[rng.uniform(-1, 1, (50, 3)), rng.choice([-1.0, 1.0], 50)]
    np.testing.assert_allclose(bridge_to_metaworld(metaworld_to_bridge(mw)), mw, atol=1e-12)
    bridge = np.zeros((50, 7))
    bridge[:, :3] = rng.uniform(-ACTION_SCALE_M, ACTION_SCALE_M, (50, 3))
    bridge[:, 6] = rng.choice([0.0, 1.0], 50)
    np.testing.assert_allclose(metaworld_to_bridge(bridge_to_metaworld(bridge)), bridge,
                               atol=1e-12)


def test_adapter_conventions() -> None:
    # +x one unit = 1 cm of end-effector motion; any closing effort = Bridge "closed" (0)
    out = metaworld_to_bridge(np.array([1.0, -0.5, 3.0, 0.6]))
    np.testing.assert_allclose(out, [0.01, -0.005, 0.01, 0, 0, 0, 0.0])
    assert metaworld_to_bridge(np.array([0, 0, 0, 0.0]))[6] == 1.0  # no effort = open
    back = bridge_to_metaworld(np.array([0.05, 0, -0.002, 0.3, 0.3, 0.3, 1.0]))
    np.testing.assert_allclose(back, [1.0, 0.0, -0.2, -1.0])  # clipped, rotation dropped, open
    with pytest.raises(ValueError, match="last dimension 7"):
        bridge_to_metaworld(np.zeros(4))


def _replay(task: str, variation: int, adapt: bool) -> tuple[bool, int]:
    """The expert's actions, optionally sent through 4-D -> 7-D -> 4-D, until success."""
    env, expert = SimEnv(task, seed=0, camera=TEST_CAMERA), expert_policy(task)
    try:
        obs = env.reset(variation)
        for step in range(1, 301):
            action = expert.get_action(obs)
            if adapt:
                action = bridge_to_metaworld(metaworld_to_bridge(action))
            obs, success, _ = env.step(action)
            if success:
                return True, step
        return False, 300
    finally:
        env.close()


@pytest.mark.parametrize("task", TASKS)
def test_expert_through_adapter_still_succeeds(task: str) -> None:
    for variation in (0, 1):
        success, steps = _replay(task, variation, adapt=True)
        assert success, f"{task} variation {variation} failed through the adapter"
        assert steps < 150


def test_relabelled_actions_are_the_commands() -> None:
    """Proprio is the end-effector target, so relabelling (proprio deltas) recovers the commanded
    motion (as the target moved: clipped at the workspace floor); replayed open loop through the
    adapter, the relabelled actions redo the demonstration, so a policy trained on them
    outputs what the adapter must send back."""
    episode = Episode("push-v3", 3, 0)
    env = SimEnv("push-v3", seed=0, camera=TEST_CAMERA)
    try:
        demo = run_expert(env, episode)
        low, high = env.env.unwrapped.mocap_low, env.env.unwrapped.mocap_high
        relabelled = relabel_actions(demo.proprio, demo.actions)
        env.reset(episode.variation)
        replayed = [env.step(a)[1] for a in bridge_to_metaworld(relabelled)]
    finally:
        env.close()
    assert demo.success and replayed[-1] and not any(replayed[:-1])
    target = demo.proprio[:-1, :3]
    commanded = np.clip(target + demo.actions[:, :3], low, high) - target
    np.testing.assert_allclose(relabelled[:, :3], commanded, atol=1e-9)
    assert np.mean(np.isclose(commanded, demo.actions[:, :3])) > 0.8  # mostly unclipped
    np.testing.assert_array_equal(relabelled[:, 3:6], 0.0)
    np.testing.assert_array_equal(relabelled[:, 6], demo.actions[:, 6])
    assert demo.actions[:, 6].min() == 0.0 and demo.actions[0, 6] == 1.0  # opens, then grasps
    assert demo.proprio[0, 6] > 0.9 > demo.proprio[-1, 6]  # proprio gripper: 1 open


def test_episodes_are_deterministic_and_pinned() -> None:
    frames = []
    for variation in (2, 2, 5):  # a fresh env each time, as separate processes would be
        env = SimEnv("push-v3", seed=7, camera=TEST_CAMERA)
        try:
            demo = run_expert(env, Episode("push-v3", variation, 7), max_steps=20)
            assert np.all(env.env.unwrapped.model.site_rgba[:, 3] == 0)  # goal marker hidden
        finally:
            env.close()
        frames.append(demo.frames)
    assert frames[0].shape == (21, 64, 64, 3) and frames[0].dtype == np.uint8
    np.testing.assert_array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[0][0], frames[2][0])  # another variation, another start


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 tasks x (3 train + 1 val) expert demos at 32 px, via the CLI; returns the out dir."""
    out = tmp_path_factory.mktemp("sim")
    cli.main(["collect", "--tasks", ",".join(TASKS), "--episodes", "3", "--val_episodes", "1",
              "--out", str(out), "--im_size", "32", "--render_size", "64"])
    return out


def test_collect_writes_a_converted_dataset(sim_data: Path) -> None:
    manifest = json.loads((sim_data / "episodes.json").read_text())
    assert set(manifest["tasks"]) == set(TASKS)
    for task, episodes in manifest["tasks"].items():
        assert [(e["variation"], e["seed"]) for e in episodes] == [(0, 0), (1, 0), (2, 0),
                                                                    (3, 0)]
        assert all(e["task"] == task and e["steps"] > 10 for e in episodes)
        task_dir = sim_data / "data" / "metaworld" / "sawyer" / task / "00"
        meta = json.loads((task_dir / "train" / "packed" / "meta.json").read_text())
        assert len(meta["language"]) == 3
        assert (task_dir / "val" / "packed" / "meta.json").is_file()


def test_collected_frames_are_the_renderers_pixels(sim_data: Path) -> None:
    """The collector writes stores directly: a stored frame is the rendered frame, resized like
    every source's, with no JPEG round trip; proprio and actions are the demo's."""
    task = TASKS[0]
    env = SimEnv(task, 0, TEST_CAMERA)
    try:
        demo = run_expert(env, Episode(task, 0, 0))
    finally:
        env.close()
    store = open_store(sim_data / "data" / "metaworld" / "sawyer" / task / "00" / "train" /
                       "packed")
    stored = store.trajectory(0)
    expected = to_trajectory(demo, 32)
    np.testing.assert_array_equal(stored.frames["images0"], expected.frames["images0"])
    np.testing.assert_array_equal(stored.proprio, demo.proprio.astype(np.float32))
    np.testing.assert_array_equal(stored.actions, demo.actions.astype(np.float32))
    assert stored.language == ["reach"]


def test_collect_records_its_camera(sim_data: Path, tmp_path: Path) -> None:
    assert recorded_camera(sim_data / "data") == TEST_CAMERA
    assert recorded_camera(tmp_path / "data") is None  # not written by collect


def test_sim_eval_camera_comes_from_the_data(sim_data: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    base = [f"data_path={sim_data / 'data'}", "sim_eval.interval=10", "sim_eval.tasks=[reach-v3]"]
    assert sim_eval_settings(compose_config(base[:1])) is None  # off
    settings = sim_eval_settings(compose_config(base))  # configured 128 px, data 64 px
    assert settings is not None and settings.camera == TEST_CAMERA and not caplog.records
    matching = sim_eval_settings(compose_config(
        [*base, "sim_eval.camera_from_data=false", "sim_eval.render_size=64"]))
    assert matching is not None and matching.camera == TEST_CAMERA and not caplog.records
    other = sim_eval_settings(compose_config([*base, "sim_eval.camera_from_data=false"]))
    assert other is not None and other.camera.image_size == 128
    assert "another view" in caplog.text and "image_size=64" in caplog.text


def _train(algo: str, data: Path, save: Path) -> Path:
    out = subprocess.run(
        [sys.executable, "-m", "bridge_torch.train", f"algo={algo}", f"data_path={data}",
         f"save_dir={save}", "num_steps=4", "batch_size=8", "val_batch_size=16", "device=cpu",
         "log_interval=2", "eval_interval=4", "save_interval=4", "scheduler.warmup_steps=1",
         "scheduler.decay_steps=4", "encoder.name=resnetv1-mini-bridge", "encoder.num_filters=8",
         "model.hidden_dims=[16]", "model.score_width=16", "sim_eval.interval=4",
         "sim_eval.tasks=[reach-v3]", "sim_eval.episodes=1", "sim_eval.max_steps=5"],
        capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["gc_bc", "gc_ddpm_bc"])
def test_collect_train_eval_loop(sim_data: Path, tmp_path: Path, algo: str,
                                 capsys: pytest.CaptureFixture) -> None:
    run_dir = _train(algo, sim_data / "data", tmp_path / "runs")
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sim = [row for row in logged if "sim/success_rate" in row]
    assert len(sim) == 1 and sim[0]["step"] == 4
    assert sim[0]["sim/reach-v3/success_rate"] in (0.0, 1.0)

    reports = []
    # "b" leaves the camera out: eval takes the one the run's data was collected with (64 px)
    for name, camera_flags in (("a", ["--render_size", "64"]), ("b", [])):
        cli.main(["eval", str(run_dir), "--tasks", ",".join(TASKS), "--episodes", "1",
                  "--max_steps", "6", "--videos", "1", "--device", "cpu", *camera_flags,
                  "--out", str(tmp_path / name)])
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    assert "overall" in capsys.readouterr().out  # the table
    first, second = reports
    assert first == second  # same seeds and camera -> identical episodes and outcomes
    assert first["settings"]["camera"] == json.loads(json.dumps(asdict(TEST_CAMERA)))
    assert set(first["tasks"]) == set(TASKS)
    for row in [*first["tasks"].values(), first["overall"]]:
        assert 0.0 <= row["success_rate"] <= 1.0
        assert row["success_rate"] == row["successes"] / row["episodes"]
    assert first["overall"]["episodes"] == 2 and len(first["episodes"]) == 2
    held_out = [(e["task"], e["variation"], e["seed"]) for e in first["episodes"]]
    assert held_out == [(t, 0, 1000) for t in TASKS]  # seeds disjoint from collect's (0)
    for episode in first["episodes"]:
        assert 1 <= episode["steps"] <= 6 and episode["expert_steps"] > 10
    gif = Image.open(tmp_path / "a" / "reach-v3_0.gif")
    assert gif.size == (128, 64)  # goal | observation
    assert 2 <= gif.n_frames <= first["episodes"][0]["steps"] + 1  # Pillow merges repeats
