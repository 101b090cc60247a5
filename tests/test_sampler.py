"""Tests of data/sampler.py, data/goals.py, data/training_data.py and data/saliency_targets.py.

Stores are real packed stores (write_store into tmp_path) whose frames encode their own index:
pixel channel 0 = frame index within the trajectory, channel 1 = trajectory id, and raw action
column 0 = action index + 1000 * trajectory id, so every gathered value can be checked exactly.
"""

from dataclasses import fields
from typing import NamedTuple

import numpy as np
import pytest
import torch

from bridge_torch.batch import (
    ACTIONS,
    GOALS,
    IMAGE,
    OBSERVATIONS,
    PROPRIO,
    SALIENCY,
    SALIENCY_MASK,
)
from bridge_torch.data import training_data
from bridge_torch.data.config import LoadConfig
from bridge_torch.data.sampler import (
    SampleConfig,
    TrainingData,
    TransitionSampler,
    iterate_validation,
)
from bridge_torch.data.store import Trajectory, open_store, write_store
from bridge_torch.data.training_data import DEVICE_MEMORY_FRACTION, FrameSource

SIZE = 4  # frame side in pixels: tiny, the pixel values carry the information


def make_trajectory(length, traj_id, *, saliency=None, seed=0):
    """A trajectory whose frames, proprio and actions encode (traj_id, index)."""
    rng = np.random.default_rng(seed + traj_id)
    frames = np.zeros((length + 1, SIZE, SIZE, 3), np.uint8)
    frames[..., 0] = np.arange(length + 1)[:, None, None]
    frames[..., 1] = traj_id
    proprio = rng.normal(size=(length + 1, 7)).astype(np.float32)
    proprio[:, 0] = np.arange(length + 1) + 1000 * traj_id
    actions = rng.uniform(size=(length, 7)).astype(np.float32)
    actions[:, 0] = np.arange(length) + 1000 * traj_id
    return Trajectory(frames={"images0": frames}, proprio=proprio, actions=actions, language=[],
                      saliency=saliency, source=f"traj{traj_id}")


def build_store(path, lengths, first_id=0, saliency=None):
    saliency = saliency or {}
    trajectories = [make_trajectory(n, first_id + i, saliency=saliency.get(first_id + i))
                    for i, n in enumerate(lengths)]
    return open_store(write_store(path, trajectories, progress=False))


class Settings(NamedTuple):
    """What the data is opened with and how it is sampled (the run config's data.load/sample)."""

    load: LoadConfig
    sample: SampleConfig


LOAD_KEYS = {f.name for f in fields(LoadConfig)}


def settings(**kwargs):
    """``Settings`` from keyword arguments of either part."""
    return Settings(LoadConfig(**{k: v for k, v in kwargs.items() if k in LOAD_KEYS}),
                    SampleConfig(**{k: v for k, v in kwargs.items() if k not in LOAD_KEYS}))


def raw_config(**kwargs):
    """Raw actions, no normalisation: batch values equal the encoded indices."""
    return settings(relabel_actions=False, normalization_type="none", **kwargs)


def build_data(stores, cfg, device="cpu"):
    return TrainingData.from_stores(stores, {}, *cfg, device)


def frame_of(images):
    """(..., H, W, 3) uint8 -> (...,) frame index encoded in channel 0."""
    return images[..., 0, 0, 0].long()


def traj_of(images):
    return images[..., 0, 0, 1].long()


def draw(sampler, total, batch_size=4096):
    """Concatenated (traj id, t, goal frame) over enough batches for ``total`` samples."""
    ids, ts, goals = [], [], []
    for _ in range(max(1, total // batch_size)):
        batch = sampler.sample(batch_size)
        ids.append(traj_of(batch[OBSERVATIONS][IMAGE][:, -1]))
        ts.append(frame_of(batch[OBSERVATIONS][IMAGE][:, -1]))
        goals.append(frame_of(batch[GOALS][IMAGE]))
    return torch.cat(ids), torch.cat(ts), torch.cat(goals)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store") / "s", [5, 12, 3])


def test_batch_layout_matches_batch_module(tmp_path):
    maps = {0: np.random.default_rng(0).uniform(size=(7, SIZE, SIZE)).astype(np.float32)}
    store = build_store(tmp_path / "s", [6, 4], saliency=maps)
    cfg = settings(obs_horizon=2, act_pred_horizon=3, load_saliency=True)
    data = TrainingData.from_stores([[store]], {"actions": store.stats["actions_relabeled"],
                                                "proprio": store.stats["proprio"]}, *cfg, "cpu")
    batch = TransitionSampler(data, cfg.sample, seed=0).sample(5)
    obs = batch[OBSERVATIONS]
    assert obs[IMAGE].shape == (5, 2, SIZE, SIZE, 3) and obs[IMAGE].dtype == torch.uint8
    assert obs[PROPRIO].shape == (5, 2, 7) and obs[PROPRIO].dtype == torch.float32
    assert obs[SALIENCY].shape == (5, SIZE, SIZE) and obs[SALIENCY].dtype == torch.float32
    assert obs[SALIENCY_MASK].shape == (5,) and obs[SALIENCY_MASK].dtype == torch.bool
    assert batch[GOALS][IMAGE].shape == (5, SIZE, SIZE, 3)
    assert batch[GOALS][PROPRIO].shape == (5, 7)
    assert batch[ACTIONS].shape == (5, 3, 7) and batch[ACTIONS].dtype == torch.float32
    assert (data.image_size, data.action_dim, data.proprio_dim) == ((SIZE, SIZE), 7, 7)
    assert data.num_transitions == 10


def test_windows_pad_first_frame_and_last_action(store):
    """Every transition once (validation order): obs t-2..t clamped at 0, actions t..t+3 at L-1."""
    cfg = raw_config(obs_horizon=3, act_pred_horizon=4)
    data = build_data([[store]], cfg)
    batches = list(iterate_validation(data, cfg.sample, 7, seed=0))
    images = torch.cat([b[OBSERVATIONS][IMAGE] for b in batches])
    proprio = torch.cat([b[OBSERVATIONS][PROPRIO] for b in batches])
    actions = torch.cat([b[ACTIONS] for b in batches])
    expected_t = [(i, t) for i, n in enumerate([5, 12, 3]) for t in range(n)]
    assert images.shape[0] == len(expected_t)
    for row, (traj, t) in enumerate(expected_t):
        length = [5, 12, 3][traj]
        window = [max(t - d, 0) for d in (2, 1, 0)]
        assert frame_of(images[row]).tolist() == window
        assert traj_of(images[row]).tolist() == [traj] * 3
        assert proprio[row, :, 0].tolist() == [w + 1000 * traj for w in window]
        chunk = [min(t + h, length - 1) + 1000 * traj for h in range(4)]
        assert actions[row, :, 0].tolist() == chunk


def test_uniform_goals_without_reaching(store):
    cfg = raw_config(reached_proportion=0.0)
    ids, t, goal = draw(TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=1), 40_000)
    length = torch.tensor([5, 12, 3])[ids]
    last = t == length - 1
    assert torch.all(goal[last] == length[last])  # last transition: goal = final frame
    assert torch.all(goal[~last] >= t[~last] + 2)  # never the current or the next frame
    assert torch.all(goal <= length)
    # t = 0 of the 12-step trajectory: goal frames 2..12 uniform (11 values)
    pick = (ids == 1) & (t == 0)
    counts = torch.bincount(goal[pick], minlength=13)[2:].double()
    assert counts.sum() > 1500
    assert torch.all((counts / counts.mean() - 1).abs() < 0.3)


def test_reached_proportion_one_gives_next_frame(store):
    cfg = raw_config(reached_proportion=1.0)
    _, t, goal = draw(TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=0), 4096)
    assert torch.equal(goal, t + 1)


def test_reached_proportion_fraction(store):
    cfg = raw_config(reached_proportion=0.3)
    ids, t, goal = draw(TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=0), 40_000)
    not_last = t < torch.tensor([5, 12, 3])[ids] - 1
    fraction = (goal[not_last] == t[not_last] + 1).double().mean().item()
    assert abs(fraction - 0.3) < 0.02


def test_geometric_goal_offsets_follow_discount(tmp_path):
    store = build_store(tmp_path / "s", [40])
    cfg = raw_config(goal_relabeling_strategy="geometric", discount=0.6)
    _, t, goal = draw(TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=0), 80_000)
    offset = goal - 1 - t  # k >= 1 steps ahead in next_observations
    early = t < 20  # far from the end: truncation of the geometric tail is negligible
    assert torch.all(offset[t < 39] >= 1)
    counts = torch.bincount(offset[early], minlength=6)[1:5].double()
    ratios = counts[1:] / counts[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, 0.6), atol=0.05)
    assert torch.all(goal[t == 39] == 40)


def test_geometric_discount_one_is_uniform_over_future(tmp_path):
    store = build_store(tmp_path / "s", [10])
    cfg = raw_config(goal_relabeling_strategy="geometric", discount=1.0)
    _, t, goal = draw(TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=0), 40_000)
    counts = torch.bincount(goal[t == 0], minlength=11)[2:].double()
    assert torch.all((counts / counts.mean() - 1).abs() < 0.25)


def test_last_state_upweighted(tmp_path):
    store = build_store(tmp_path / "s", [10])
    cfg = raw_config(goal_relabeling_strategy="last_state_upweighted")
    _, t, goal = draw(TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=0), 60_000)
    # t = 7: offset uniform over 1..9, index min(7 + o, 9): P(goal frame 10) = 8/9, frame 9: 1/9
    late = goal[t == 7]
    assert set(late.tolist()) == {9, 10}
    assert abs((late == 10).double().mean().item() - 8 / 9) < 0.03
    # t = 0: uniform over frames 2..10
    counts = torch.bincount(goal[t == 0], minlength=11)[2:].double()
    assert torch.all((counts / counts.mean() - 1).abs() < 0.3)


def test_delta_goals_truncates_and_bounds(tmp_path):
    store = build_store(tmp_path / "s", [10, 2])
    cfg = raw_config(goal_relabeling_strategy="delta_goals", goal_delta=[2, 5], act_pred_horizon=3)
    data = build_data([[store]], cfg)
    ids, t, goal = draw(TransitionSampler(data, cfg.sample, seed=0), 20_000)
    assert torch.all(ids == 0)  # the 2-step trajectory has no transition left
    assert t.max().item() == 7  # transitions 0 .. L-lo-1
    assert torch.all(goal >= t + 2) and torch.all(goal < torch.clamp(t + 5, max=11))
    assert set(goal[t == 7].tolist()) == {9, 10}  # [9, min(11, 12)) -> frames 9, 10
    batches = list(iterate_validation(data, cfg.sample, 100, seed=0))
    assert frame_of(batches[0][OBSERVATIONS][IMAGE][:, -1]).tolist() == list(range(8))
    # action chunks still see the whole trajectory
    assert batches[0][ACTIONS][7, :, 0].tolist() == [7.0, 8.0, 9.0]


def test_sample_weights_mix_sub_datasets(tmp_path):
    first = build_store(tmp_path / "a", [5, 5], first_id=0)
    second = build_store(tmp_path / "b", [40], first_id=10)
    cfg = raw_config()
    data = build_data([[first], [second]], cfg)
    ids, _, _ = draw(TransitionSampler(data, cfg.sample, sample_weights=[0.8, 0.2], seed=0), 40_000)
    assert abs((ids < 10).double().mean().item() - 0.8) < 0.015
    ids, _, _ = draw(TransitionSampler(data, cfg.sample, seed=0), 40_000)  # None: uniform over subs
    assert abs((ids < 10).double().mean().item() - 0.5) < 0.015


def test_transitions_uniform_not_trajectories(tmp_path):
    store = build_store(tmp_path / "s", [2, 18])
    cfg = raw_config()
    ids, t, _ = draw(TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=0), 40_000)
    assert abs((ids == 1).double().mean().item() - 0.9) < 0.01
    counts = torch.bincount(t[ids == 1], minlength=18).double()
    assert torch.all((counts / counts.mean() - 1).abs() < 0.15)


def test_bad_sample_weights(store):
    cfg = raw_config()
    data = build_data([[store], [store]], cfg)
    for weights in ([0.5, 0.6], [1.0], [1.2, -0.2]):
        with pytest.raises(ValueError, match="sample_weights"):
            TransitionSampler(data, cfg.sample, sample_weights=weights, seed=0)


@pytest.mark.parametrize("kind", ["normal", "bounds"])
def test_normalisation_applied(store, kind):
    stats = {name: {"mean": np.linspace(1, 2, 7).tolist(), "std": np.linspace(2, 3, 7).tolist(),
                    "min": np.linspace(-5, 0, 7).tolist(), "max": np.linspace(10, 3000, 7).tolist()}
             for name in ("actions", "proprio")}
    cfg = settings(normalization_type=kind, relabel_actions=True)
    data = TrainingData.from_stores([[store]], stats, *cfg, "cpu")

    def expected(x, entry):
        if kind == "normal":
            return (x - np.array(entry["mean"])) / np.array(entry["std"])
        lo, hi = np.array(entry["min"]), np.array(entry["max"])
        return np.clip((x - lo) / (hi - lo), 0, 1)

    np.testing.assert_allclose(data.actions.numpy(),
                               expected(np.asarray(store.actions_relabeled), stats["actions"]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.proprio.numpy(),
                               expected(np.asarray(store.proprio), stats["proprio"]),
                               rtol=1e-5, atol=1e-6)
    batch = next(iterate_validation(data, cfg.sample, 4, seed=0))
    np.testing.assert_allclose(batch[OBSERVATIONS][PROPRIO][:, 0].numpy(),
                               data.proprio[:4].numpy())


def test_stats_must_match_dimensions(store):
    cfg = settings()
    with pytest.raises(ValueError, match="stats"):
        TrainingData.from_stores([[store]], {"actions": {"mean": [0.0], "std": [1.0]},
                                             "proprio": store.stats["proprio"]}, *cfg, "cpu")


def test_saliency_aggregation_and_mask(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(5, SIZE, SIZE)).astype(np.float32)
    maps[2] = 0.0  # a frame without detections
    zeros = np.zeros((4, SIZE, SIZE), np.float32)
    store = build_store(tmp_path / "s", [4, 3, 3], saliency={0: maps, 2: zeros})
    cfg = raw_config(obs_horizon=2, load_saliency=True, saliency_alpha=0.5)
    data = build_data([[store]], cfg)
    batch = next(iterate_validation(data, cfg.sample, 100, seed=0))
    target, mask = batch[OBSERVATIONS][SALIENCY], batch[OBSERVATIONS][SALIENCY_MASK]
    stored = torch.from_numpy(maps.astype(np.float16).astype(np.float32))
    for t in range(4):
        raw = stored[t] + (0.5 * stored[t - 1] if t > 0 else 0.0)  # t = 0: padding not counted
        expected = (raw - raw.min()) / (raw.max() - raw.min())
        torch.testing.assert_close(target[t], expected, rtol=1e-5, atol=1e-6)
        assert target[t].min() == 0 and target[t].max() == 1
    assert mask[:4].tolist() == [True, True, True, True]  # t=2: frame 2 is zero, frame 1 is not
    assert mask[4:].tolist() == [False] * 6  # no saliency / all-zero saliency
    assert torch.all(target[4:] == 0)
    single = raw_config(obs_horizon=1, load_saliency=True)
    batch = next(iterate_validation(build_data([[store]], single), single.sample, 4, seed=0))
    assert batch[OBSERVATIONS][SALIENCY_MASK].tolist() == [True, True, False, True]


def test_validation_covers_every_transition_once_in_order(store):
    cfg = raw_config()
    data = build_data([[store], [store]], cfg)
    first = list(iterate_validation(data, cfg.sample, 8, seed=3))
    assert [b[ACTIONS].shape[0] for b in first] == [8] * 5
    sizes = [b[ACTIONS].shape[0] for b in iterate_validation(data, cfg.sample, 12, seed=3)]
    assert sizes == [12, 12, 12, 4]
    rows = torch.cat([b[ACTIONS][:, 0, 0] for b in first])
    assert rows.tolist() == 2 * (list(range(5)) + [1000 + t for t in range(12)] +
                                 [2000 + t for t in range(3)])
    again = list(iterate_validation(data, cfg.sample, 8, seed=3))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a[GOALS][IMAGE], b[GOALS][IMAGE])
    other = list(iterate_validation(data, cfg.sample, 8, seed=4))
    pairs = zip(first, other, strict=True)
    assert not all(torch.equal(a[GOALS][IMAGE], b[GOALS][IMAGE]) for a, b in pairs)
    assert len(list(iterate_validation(data, cfg.sample, 8, seed=3, max_batches=2))) == 2
    shards = [list(iterate_validation(data, cfg.sample, 8, seed=3, rank=r, world_size=2))
              for r in (0, 1)]
    assert [len(s) for s in shards] == [3, 2]
    for number, batch in enumerate(first):
        shard = shards[number % 2][number // 2]
        assert torch.equal(shard[GOALS][IMAGE], batch[GOALS][IMAGE])
        assert torch.equal(shard[ACTIONS], batch[ACTIONS])


def test_seeded_determinism(store):
    cfg = raw_config(obs_horizon=2)
    data = build_data([[store]], cfg)
    a = TransitionSampler(data, cfg.sample, seed=5).sample(64)
    b = TransitionSampler(data, cfg.sample, seed=5).sample(64)
    c = TransitionSampler(data, cfg.sample, seed=6).sample(64)
    assert torch.equal(a[OBSERVATIONS][IMAGE], b[OBSERVATIONS][IMAGE])
    assert torch.equal(a[GOALS][IMAGE], b[GOALS][IMAGE])
    assert not torch.equal(a[OBSERVATIONS][IMAGE], c[OBSERVATIONS][IMAGE])


def test_state_dict_resume(store, tmp_path):
    cfg = raw_config()
    data = build_data([[store]], cfg)
    sampler = TransitionSampler(data, cfg.sample, seed=0)
    for _ in range(3):
        sampler.sample(16)
    torch.save(sampler.state_dict(), tmp_path / "state.pt")
    expected = [sampler.sample(16) for _ in range(2)]
    resumed = TransitionSampler(data, cfg.sample, seed=0)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for batch in expected:
        again = resumed.sample(16)
        assert torch.equal(batch[OBSERVATIONS][IMAGE], again[OBSERVATIONS][IMAGE])
        assert torch.equal(batch[GOALS][IMAGE], again[GOALS][IMAGE])


def test_host_storage_matches_device_storage(tmp_path):
    maps = {1: np.random.default_rng(1).uniform(size=(4, SIZE, SIZE)).astype(np.float32)}
    stores = [[build_store(tmp_path / "a", [5, 3], saliency=maps)],
              [build_store(tmp_path / "b", [6], first_id=5)]]
    results = []
    for storage in ("device", "host"):
        cfg = raw_config(obs_horizon=2, load_saliency=True, frame_storage=storage)
        data = build_data(stores, cfg)
        assert data.frames.on_device == data.saliency.on_device == (storage == "device")
        results.append(TransitionSampler(data, cfg.sample, seed=0).sample(128))
    for key in (IMAGE, SALIENCY, SALIENCY_MASK):
        assert torch.equal(results[0][OBSERVATIONS][key], results[1][OBSERVATIONS][key])
    assert torch.equal(results[0][GOALS][IMAGE], results[1][GOALS][IMAGE])


def test_host_gather_from_several_stores(tmp_path):
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (10, 2, 3), np.uint8)
    last = rng.integers(0, 256, (7, 2, 3), np.uint8)
    np.save(tmp_path / "last.npy", last)
    parts = [first, None, np.load(tmp_path / "last.npy", mmap_mode="r")]  # None: 5 zero rows
    source = FrameSource(parts, [10, 5, 7], (2, 3), np.dtype(np.uint8))
    everything = np.concatenate([first, np.zeros((5, 2, 3), np.uint8), last])
    for wanted in (rng.integers(0, 22, (5, 40)),  # every store
                   rng.integers(17, 22, 30),  # one store
                   rng.integers(10, 15, 10),  # the store without rows: zeros
                   np.zeros(0, np.int64)):  # an empty batch
        got = source.gather(torch.from_numpy(wanted))
        assert got.shape == (*wanted.shape, 2, 3)
        assert np.array_equal(got.numpy(), everything[wanted])


def test_auto_storage_places_frames_and_saliency_together(tmp_path, monkeypatch):
    maps = {0: np.ones((6, SIZE, SIZE), np.float32)}
    stores = [[build_store(tmp_path / "a", [5], saliency=maps)],
              [build_store(tmp_path / "b", [6], first_id=5)]]
    cfg = raw_config(load_saliency=True, frame_storage="auto")
    frames_bytes = 13 * SIZE * SIZE * 3
    # room for the frames alone but not for frames + saliency: both stay in the memory maps
    monkeypatch.setattr(training_data, "_free_memory_bytes",
                        lambda device: int(frames_bytes * 1.5 / DEVICE_MEMORY_FRACTION))
    data = build_data(stores, cfg)
    assert not data.frames.on_device and not data.saliency.on_device
    monkeypatch.setattr(training_data, "_free_memory_bytes",
                        lambda device: int(frames_bytes * 2 / DEVICE_MEMORY_FRACTION))
    data = build_data(stores, cfg)
    assert data.frames.on_device and data.saliency.on_device


def test_a_state_of_another_generator_kind_is_refused(store):
    cfg = raw_config()
    sampler = TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=0)
    cuda_like = {"generator": torch.zeros(16, dtype=torch.uint8), "seed": 0}
    with pytest.raises(ValueError, match="CPU generator state"):
        sampler.load_state_dict(cuda_like)


def test_without_goals(store):
    cfg = raw_config(load_goals=False)
    batch = TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=0).sample(8)
    assert GOALS not in batch and batch[OBSERVATIONS][IMAGE].shape == (8, 1, SIZE, SIZE, 3)


@pytest.mark.parametrize(("key", "value"), [
    ("obs_horizon", 0), ("act_pred_horizon", -1), ("goal_relabeling_strategy", "last_state"),
    ("reached_proportion", 1.5), ("reached_proportion", -0.1), ("discount", 0.0),
    ("goal_delta", [3, 3]), ("goal_delta", [-1, 4]), ("normalization_type", "minmax"),
    ("saliency_alpha", -1.0), ("frame_storage", "gpu"),
])
def test_bad_config_names_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        settings(**{key: value})


def test_mismatched_stores_rejected(tmp_path):
    small = build_store(tmp_path / "a", [3])
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    other = open_store(write_store(tmp_path / "b", [Trajectory(
        frames={"images0": frames}, proprio=np.zeros((4, 7), np.float32),
        actions=np.zeros((3, 7), np.float32), language=[])], progress=False))
    with pytest.raises(ValueError, match="image_size"):
        build_data([[small], [other]], raw_config())
    with pytest.raises(ValueError, match="camera"):
        build_data([[small]], raw_config(camera="images1"))
    with pytest.raises(ValueError, match="sub-dataset 1"):
        build_data([[small], []], raw_config())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_matches_layout(store):
    cfg = raw_config(obs_horizon=2, act_pred_horizon=2)
    data = build_data([[store]], cfg, device="cuda")
    batch = TransitionSampler(data, cfg.sample, seed=0).sample(32)
    assert batch[OBSERVATIONS][IMAGE].device.type == "cuda"
    assert batch[OBSERVATIONS][IMAGE].shape == (32, 2, SIZE, SIZE, 3)
    t = frame_of(batch[OBSERVATIONS][IMAGE][:, -1])
    assert torch.all(frame_of(batch[GOALS][IMAGE]) > t)
    # frames in the memory maps: sampled on the CPU, the batch delivered on the GPU
    host = build_data([[store]], raw_config(obs_horizon=2, act_pred_horizon=2,
                                            frame_storage="host"), device="cuda")
    assert host.device.type == "cpu" and host.batch_device.type == "cuda"
    again = TransitionSampler(host, cfg.sample, seed=0).sample(32)
    on_cpu = TransitionSampler(build_data([[store]], cfg), cfg.sample, seed=0).sample(32)
    for other in (again, on_cpu):  # one CPU random stream: the same batch everywhere
        for key in (OBSERVATIONS, GOALS):
            for name, value in batch[key].items():
                assert torch.equal(value.cpu(), other[key][name].cpu()), (key, name)
        assert torch.allclose(batch[ACTIONS].cpu(), other[ACTIONS].cpu())
    assert all(value.device.type == "cuda" for value in again[OBSERVATIONS].values())
