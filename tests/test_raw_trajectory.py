"""The raw reader's two views of a trajectory, and the converter's bytes against reference routes.

``RawTrajectory.trajectory()`` must equal the legacy route ``out_dict_to_trajectory(out_dict())``
array for array; ``out.npy`` must have the bytes of ``np.save`` of the original converter's dicts,
built here from the raw files without bridge-torch's reader; packed stores must have the bytes
that route gives; and ``--format packed`` must never build an out.npy dict.
"""

import hashlib
import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridge_torch.data.sources.bridge_raw import (
    needs_latency_shift,
    parse_folder_date,
    read_trajectory,
)
from bridge_torch.data.sources.convert import ConvertOptions, convert, main
from bridge_torch.data.sources.legacy_numpy import out_dict_to_trajectory
from bridge_torch.data.sources.raw_trajectory import RawTrajectory
from bridge_torch.data.sources.synthetic import generate_raw_dataset
from bridge_torch.data.store import META_FILE, open_store, write_store

SIZE = 16
CAMERAS = ("images0", "images1")


def _load(path: Path):
    return pickle.loads(path.read_bytes())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _traj_dirs(raw: Path) -> list[Path]:
    return sorted(raw.rglob("traj_group0/traj*"))


def _squash(path: Path, resample: Image.Resampling) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.resize((SIZE, SIZE), resample))


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 cameras, saliency maps, one dated folder before the latency cut-off, and the variants
    the reader must keep: no lang.txt, an unusable saliency map, an array policy_out.pkl, a
    list full_state, a trajectory without images2 and one without images1."""
    root = generate_raw_dataset(tmp_path_factory.mktemp("raw"), seed=3, num_tasks=1,
                                dates_per_task=2, trajs_per_date=5, min_len=4, max_len=7,
                                cameras=3, image_hw=(48, 64), with_saliency=True,
                                dates_before_cutoff=1)
    trajs = _traj_dirs(root)
    (trajs[0] / "lang.txt").unlink()
    maps = _load(trajs[1] / "saliency_map.pkl")
    (trajs[1] / "saliency_map.pkl").write_bytes(pickle.dumps(maps[:-1]))
    policy = _load(trajs[2] / "policy_out.pkl")
    (trajs[2] / "policy_out.pkl").write_bytes(pickle.dumps(np.stack([s["actions"]
                                                                     for s in policy])))
    obs = _load(trajs[3] / "obs_dict.pkl")
    obs["full_state"], obs["time_stamp"] = list(obs["full_state"]), list(obs["time_stamp"])
    (trajs[3] / "obs_dict.pkl").write_bytes(pickle.dumps(obs))
    shutil.rmtree(trajs[5] / "images2")
    shutil.rmtree(trajs[6] / "images1")  # lacks a --cameras camera: skipped from both outputs
    (trajs[7] / "lang.txt").write_text("open the drawer\n\nclose it\nconfidence: 0.9\n")
    return root


def _shift(traj_dir: Path) -> bool:
    return needs_latency_shift(parse_folder_date(traj_dir.parents[2].name))


def _read(traj_dir: Path, saliency: bool) -> RawTrajectory:
    return read_trajectory(traj_dir, im_size=SIZE, latency_shift=_shift(traj_dir),
                           saliency=saliency)


@pytest.mark.parametrize("saliency", [True, False])
def test_trajectory_equals_the_legacy_route(raw: Path, saliency: bool) -> None:
    kinds = set()
    for traj_dir in _traj_dirs(raw):
        read = _read(traj_dir, saliency)
        direct, legacy = read.trajectory(), out_dict_to_trajectory(read.out_dict(), read.source)
        assert list(direct.frames) == list(legacy.frames)
        pairs = [(direct.frames[c], legacy.frames[c]) for c in legacy.frames]
        pairs += [(direct.proprio, legacy.proprio), (direct.actions, legacy.actions)]
        if legacy.saliency is not None:
            pairs.append((direct.saliency, legacy.saliency))
        for mine, theirs in pairs:
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
            np.testing.assert_array_equal(mine, theirs)
        assert (direct.saliency is None) == (legacy.saliency is None)
        assert direct.language == legacy.language and direct.source == str(traj_dir)
        kinds.add((read.latency_shift, direct.saliency is None, len(direct.frames)))
    shifted, without_saliency = {k[0] for k in kinds}, {k[1] for k in kinds}
    assert shifted == {True, False}
    assert without_saliency == ({True, False} if saliency else {True})


def _reference_out_dict(traj_dir: Path, saliency: bool) -> dict:
    """The original converter's dict, built from the raw files without bridge-torch's reader:
    per-step dicts zipped from the stored columns, so observations[t+1] and
    next_observations[t] share their frame objects."""
    obs, policy = _load(traj_dir / "obs_dict.pkl"), _load(traj_dir / "policy_out.pkl")
    actions = [s["actions"] for s in policy] if isinstance(policy[0], dict) else list(policy)
    steps, cameras = len(obs["full_state"]), sorted(p.name for p in traj_dir.glob("images?"))
    columns = {camera: [_squash(traj_dir / camera / f"im_{t}.jpg", Image.Resampling.LANCZOS)
                        for t in range(steps)] for camera in cameras}
    columns["state"], columns["time_stamp"] = obs["full_state"], obs["time_stamp"]
    maps = _load(traj_dir / "saliency_map.pkl")
    if saliency and len(maps) == steps:
        columns["saliency"] = [np.array(Image.fromarray(m).resize(
            (SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32)[..., None]
            for m in maps[:, 0].astype(np.float32)]
    lang = traj_dir / "lang.txt"
    language = [line.strip() for line in lang.read_text().splitlines(keepends=True)
                if "confidence" not in line] if lang.is_file() else [""]
    shift = int(_shift(traj_dir))
    obs_steps, next_steps = ([dict(zip(columns, values, strict=True)) for values in
                              zip(*(c[window] for c in columns.values()), strict=True)]
                             for window in (slice(None, -1), slice(1, None)))
    return {"observations": obs_steps[shift:], "next_observations": next_steps[shift:],
            "actions": actions[:len(actions) - shift],
            "terminals": [0] * (len(actions) - shift), "language": language}


def _np_save(trajs: list[dict]) -> bytes:
    array = np.empty(len(trajs), dtype=object)
    array[:] = trajs
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _file_hashes(directory: Path) -> dict[str, str]:
    return {p.name: _sha256(p.read_bytes()) for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("saliency", [True, False])
def test_converted_bytes_match_the_reference_routes(raw: Path, tmp_path: Path,
                                                   saliency: bool) -> None:
    out = tmp_path / "out"
    assert main(["--input_path", str(raw), "--output_path", str(out), "--im_size", str(SIZE),
                 "--num_workers", "1", "--train_proportion", "0.6", "--format", "both",
                 "--cameras", ",".join(CAMERAS), *(["--saliency"] if saliency else [])]) == 0
    split_dirs = sorted(p.parent for p in out.rglob("out.npy"))
    assert [p.name for p in split_dirs] == ["train", "val"]
    for split_dir in split_dirs:
        store = open_store(split_dir / "packed")
        sources = [Path(s) for s in store.trajectory_sources]  # the converter's order
        reference = [_reference_out_dict(d, saliency) for d in sources]
        assert _sha256((split_dir / "out.npy").read_bytes()) == _sha256(_np_save(reference))
        legacy = (out_dict_to_trajectory(t, str(d)) for t, d in zip(reference, sources,
                                                                   strict=True))
        written = write_store(tmp_path / "legacy" / split_dir.name, legacy, cameras=CAMERAS,
                              source=store.source, progress=False)
        assert _file_hashes(split_dir / "packed") == _file_hashes(written)
    kept = {s for d in split_dirs for s in open_store(d / "packed").trajectory_sources}
    assert str(_traj_dirs(raw)[6]) not in kept and len(kept) == 9


def test_format_packed_builds_no_out_dict(raw: Path, tmp_path: Path, monkeypatch) -> None:
    def refuse(self: RawTrajectory) -> dict:
        raise AssertionError(f"out_dict() built for {self.source} in --format packed")

    options = {"train_proportion": 0.6, "im_size": SIZE, "saliency": True, "cameras": CAMERAS}
    both = convert(ConvertOptions(raw, tmp_path / "both", format="both", **options),
                   num_workers=1, progress=False)
    monkeypatch.setattr(RawTrajectory, "out_dict", refuse)
    packed = convert(ConvertOptions(raw, tmp_path / "packed", format="packed", **options),
                     num_workers=1, progress=False)
    assert [r.skipped_trajectories for r in packed] == [r.skipped_trajectories for r in both]
    assert packed[0].skipped_trajectories == {"lacks a --cameras camera": 1}
    assert packed[0].without_saliency == 1 and packed[0].num_train + packed[0].num_val == 9
    stores = {name: sorted((tmp_path / name).rglob("packed")) for name in ("both", "packed")}
    assert len(stores["packed"]) == len(stores["both"]) == 2
    for a, b in zip(stores["both"], stores["packed"], strict=True):
        hashes_a, hashes_b = _file_hashes(a), _file_hashes(b)
        assert hashes_a.pop(META_FILE) != hashes_b.pop(META_FILE)  # settings name the format
        assert hashes_a == hashes_b
