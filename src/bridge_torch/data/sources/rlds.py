"""BridgeData V2 episodes of a TFDS/RLDS release -> :class:`Trajectory` (see ``docs/rlds.md``).

Two releases are recognised from ``features.json``: the RAIL one (``bridge_dataset`` 1.0.0: four
256x256 JPEG cameras ``image_0..3``, a 7-D ``steps/action``, ``episode_metadata``) and the Open
X-Embodiment copy (``bridge`` 0.1.0: one 480x640 camera ``image``, the action split into
``world_vector`` / ``rotation_delta`` / ``open_gripper``). Both become what the raw converter
produces: cameras ``images<k>``, 7-D state, 7-D action ``[dx, dy, dz, droll, dpitch, dyaw,
gripper]`` with the Open-X gripper bool as 0.0/1.0.

Step pairing: RLDS step t holds frame t and the action taken from it, so an episode of T steps
holds T frames and T actions; the action of the last step has no recorded outcome frame and is
dropped, giving T-1 transitions over the T frames (action t moves frame t to t+1), exactly the
pairing of ``next_observations[t] = observations[t + 1]`` in the raw converter. Episodes with
fewer than 2 steps, a requested camera the episode did not record (``has_image_k`` false: the
release stores black frames there), an undecodable image, inconsistent value counts or NaN/inf
are skipped with a reason; a record that is not a valid Example is an error (corrupt file).
"""

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from bridge_torch.data.sources.bridge_raw import (
    BAD_IMAGE,
    LENGTH_MISMATCH,
    NON_FINITE,
    TOO_SHORT,
    Skip,
    squash_frame,
)
from bridge_torch.data.sources.tfds import FeatureSpec, Shard, TfdsDataset
from bridge_torch.data.sources.tfrecord import (
    EMPTY,
    Feature,
    TFRecordError,
    iter_records,
    parse_example,
    records_at,
)
from bridge_torch.data.store import Trajectory, validate_trajectory

MISSING_CAMERA = "lacks a --cameras camera"  # the raw converter's summary key for the same skip
BAD_TEXT = "instruction is not UTF-8"
NO_TASK = "no episode_metadata/file_path"
STORE_CAMERA = "images{}"  # store camera names, as the raw converter's images<k> folders
SPLIT_DIRS = ("train", "val")  # numpy-release directories that sit below the task directory


class SkipEpisode(Skip):
    """An episode the converter leaves out (``reason`` keys the summary)."""


@dataclass(frozen=True)
class Variant:
    """Where one release keeps what a Trajectory needs (flat Example keys)."""

    name: str
    cameras: dict[str, str]  # store camera name -> image key
    state: str
    language: str
    action_parts: tuple[str, ...]  # concatenated per step into the 7-D action
    camera_flags: dict[str, str] = field(default_factory=dict)  # camera -> "recorded" flag key
    file_path: str = ""  # episode key naming the source file ("" when the release has none)
    episode_id: str = ""
    steps_key: str = "steps/is_first"  # a per-step scalar: its length is the episode length


RAIL = Variant(
    "rail", {STORE_CAMERA.format(k): f"steps/observation/image_{k}" for k in range(4)},
    "steps/observation/state", "steps/language_instruction", ("steps/action",),
    {STORE_CAMERA.format(k): f"episode_metadata/has_image_{k}" for k in range(4)},
    "episode_metadata/file_path", "episode_metadata/episode_id")
OPEN_X = Variant(
    "open_x", {STORE_CAMERA.format(0): "steps/observation/image"}, "steps/observation/state",
    "steps/observation/natural_language_instruction",
    ("steps/action/world_vector", "steps/action/rotation_delta", "steps/action/open_gripper"))
VARIANTS = (RAIL, OPEN_X)
ACTION_DIM = STATE_DIM = 7


def _wanted(variant: Variant) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Per-step key -> (dtype family, shape) the variant needs."""
    wanted = {variant.state: ("float", (STATE_DIM,)), variant.language: ("string", ()),
              variant.steps_key: ("int", ())}
    dims = [ACTION_DIM] if len(variant.action_parts) == 1 else [3, 3, 1]
    for key, dim in zip(variant.action_parts, dims, strict=True):
        wanted[key] = ("int", ()) if dim == 1 else ("float", (dim,))
    return wanted


def _matches(spec: FeatureSpec | None, family: str, shape: tuple[int, ...]) -> bool:
    if spec is None or not spec.per_step or spec.image or spec.shape != shape:
        return False
    return {"float": spec.dtype == "float32", "string": spec.dtype == "string",
            "int": spec.kind == "int64_list"}[family]


def detect_variant(dataset: TfdsDataset) -> Variant:
    """The release ``dataset`` is, from its feature keys, shapes and dtypes.

    Raises:
        ValueError: neither release matches (names what is missing for each).
    """
    problems = []
    for variant in VARIANTS:
        missing = [f"{key} ({family} {shape})" for key, (family, shape) in _wanted(variant).items()
                   if not _matches(dataset.features.get(key), family, shape)]
        missing += [f"{key} (image)" for key in variant.cameras.values()
                    if not getattr(dataset.features.get(key), "image", False)]
        if not missing:
            return variant
        problems.append(f"{variant.name}: lacks {', '.join(missing)}")
    raise ValueError(f"{dataset.path}: unknown RLDS variant ({dataset.name} {dataset.version}); "
                     f"this reader knows the RAIL BridgeData release and its Open X-Embodiment "
                     f"copy ({'; '.join(problems)})")


def resolve_cameras(variant: Variant, names: Sequence[str]) -> tuple[str, ...]:
    """Store camera names for ``names``, which may be store names (``images0``) or the
    release's image feature names (``image_0``, or ``image`` in the Open-X copy)."""
    by_name = {key.rsplit("/", 1)[-1]: camera for camera, key in variant.cameras.items()}
    by_name.update({camera: camera for camera in variant.cameras})
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"cameras {unknown} are not in the {variant.name} release; it has "
                         f"{sorted(by_name)}")
    return tuple(dict.fromkeys(by_name[n] for n in names))


def shard_examples(shard: Shard, positions: Sequence[tuple[int, int]] | None = None
                   ) -> Iterator[tuple[int, int, dict[str, Feature]]]:
    """``(record index, byte offset, features)`` of a shard's records in file order, or of the
    given ``(index, offset)`` positions; a full pass checks the count against the metadata."""
    if positions is not None:
        offsets = dict(positions)
        for index, data in records_at(shard.path, positions):
            yield index, offsets[index], parse_example(data, shard.path, index)
        return
    count = 0
    for index, offset, data in iter_records(shard.path):
        count += 1
        yield index, offset, parse_example(data, shard.path, index)
    if count != shard.num_records:
        raise TFRecordError(shard.path, count, f"the shard holds {count} records, but "
                            f"dataset_info.json says {shard.num_records}")


def _column(features: dict[str, Feature], spec: FeatureSpec, count: int, where: str
            ) -> np.ndarray | list[bytes]:
    """The values of ``spec``: (count, size) float32 / int64 array, or ``count`` bytes values."""
    feature = features.get(spec.key, Feature(EMPTY, []))
    wanted = count * spec.size
    if len(feature) != wanted or (wanted and feature.kind != spec.kind):
        raise SkipEpisode(LENGTH_MISMATCH, f"{where}: expected {wanted} {spec.kind} values of "
                          f"{spec.key} ({count} x {spec.size}), found {len(feature)} "
                          f"{feature.kind}")
    if spec.kind == "bytes_list":
        return list(feature.values)
    return np.asarray(feature.values).reshape(count, spec.size)


def episode_length(features: dict[str, Feature], variant: Variant, where: str) -> int:
    steps = len(features.get(variant.steps_key, ()))
    if steps < 2:
        raise SkipEpisode(TOO_SHORT, f"{where}: {steps} steps give no transition")
    return steps


def actions_and_state(dataset: TfdsDataset, variant: Variant, features: dict[str, Feature],
                      steps: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 (T, 7) actions (all T, the last included) and (T, 7) states, finite."""
    parts = [_column(features, dataset.features[k], steps, where) for k in variant.action_parts]
    actions = np.concatenate([p.astype(np.float32) for p in parts], axis=1)
    state = _column(features, dataset.features[variant.state], steps, where).astype(np.float32)
    for name, values in (("action", actions), ("state", state)):
        if not np.all(np.isfinite(values)):
            bad = np.argwhere(~np.isfinite(values))[0].tolist()
            raise SkipEpisode(NON_FINITE, f"{where}: {name} has NaN or inf at {bad}")
    return actions, state


def language(dataset: TfdsDataset, variant: Variant, features: dict[str, Feature], steps: int,
             where: str) -> list[str]:
    """The distinct non-empty instructions of the episode's steps, in order of appearance."""
    values = _column(features, dataset.features[variant.language], steps, where)
    try:
        texts = [bytes(v).decode("utf-8") for v in values]
    except UnicodeDecodeError as err:
        raise SkipEpisode(BAD_TEXT, f"{where}: {err}") from err
    return list(dict.fromkeys(t for t in texts if t.strip()))


def decode_image(data: bytes, spec: FeatureSpec, where: str) -> Image.Image:
    """One stored image, fully decoded (accurate IDCT) and checked against its declared shape."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise SkipEpisode(BAD_IMAGE, f"{where}: cannot decode {spec.key}: {err}") from err
    found = (image.height, image.width, len(image.getbands()))
    if image.mode != "RGB" or found != spec.shape:
        raise SkipEpisode(BAD_IMAGE, f"{where}: {spec.key} should be RGB {spec.shape} as "
                          f"features.json declares, found {image.mode} {found}")
    return image


def recorded(features: dict[str, Feature], variant: Variant, camera: str) -> bool:
    """Whether the episode recorded ``camera`` (releases without the flag record them all)."""
    flag = features.get(variant.camera_flags.get(camera, ""))
    return flag is None or len(flag) == 0 or bool(flag.values[0])


def _frames(dataset: TfdsDataset, variant: Variant, features: dict[str, Feature], steps: int,
            cameras: Sequence[str], im_size: int, where: str) -> dict[str, np.ndarray]:
    missing = [c for c in cameras if not recorded(features, variant, c)]
    if missing:
        raise SkipEpisode(MISSING_CAMERA, f"{where}: the episode did not record {missing} "
                          f"(has_image false)")
    frames = {}
    for camera in cameras:
        spec = dataset.features[variant.cameras[camera]]
        frames[camera] = np.stack([squash_frame(decode_image(data, spec, where), im_size)
                                   for data in _column(features, spec, steps, where)])
    return frames


def episode_source(variant: Variant, features: dict[str, Feature], shard: Shard,
                   index: int) -> str:
    """``<source out.npy>#<episode id>`` where the release names it, else ``<shard>#<record>``."""
    paths = features.get(variant.file_path)
    if paths is not None and len(paths) == 1 and bytes(paths.values[0]).strip():
        ids = features.get(variant.episode_id)
        suffix = f"#{int(ids.values[0])}" if ids is not None and len(ids) == 1 else ""
        return bytes(paths.values[0]).decode("utf-8", "replace") + suffix
    return f"{shard.path.name}#{index}"


def task_of(variant: Variant, features: dict[str, Feature], depth: int, where: str) -> str:
    """The task directory of an episode's source file: the last ``depth - 1`` components of the
    directory above the split folder (``.../<task>/train/out.npy``), as the raw converter's
    output paths."""
    paths = features.get(variant.file_path)
    if paths is None or len(paths) != 1 or not bytes(paths.values[0]).strip():
        raise SkipEpisode(NO_TASK, f"{where}: grouping by task needs the source file path "
                          f"(episode_metadata/file_path), which this episode lacks")
    directory = PurePosixPath(bytes(paths.values[0]).decode("utf-8", "replace")).parent
    if directory.name in SPLIT_DIRS:
        directory = directory.parent
    parts = [p for p in directory.parts if p not in ("/", "..", ".")]
    return "/".join(parts[-max(depth - 1, 1):]) or "unknown"


def to_trajectory(dataset: TfdsDataset, variant: Variant, features: dict[str, Feature],
                  shard: Shard, index: int, *, cameras: Sequence[str], im_size: int
                  ) -> Trajectory:
    """One episode as a validated Trajectory (frames squashed to ``im_size``).

    Raises:
        SkipEpisode: the episode cannot be used (reason and detail name shard and record).
    """
    where = f"{shard.path.name} record {index}"
    steps = episode_length(features, variant, where)
    actions, state = actions_and_state(dataset, variant, features, steps, where)
    traj = Trajectory(
        frames=_frames(dataset, variant, features, steps, cameras, im_size, where),
        proprio=state, actions=actions[:-1],  # the last action has no outcome frame
        language=language(dataset, variant, features, steps, where),
        source=episode_source(variant, features, shard, index))
    try:
        validate_trajectory(traj, cameras)
    except ValueError as err:
        raise SkipEpisode(LENGTH_MISMATCH, f"{where}: {err}") from err
    return traj

