"""A prepared TensorFlow-Datasets directory (``<name>/<version>/``): its metadata and shards.

``dataset_info.json`` gives the splits, each with its shard file-name template and the number of
records in every shard (the shard count is the length of that list); ``features.json`` gives the
feature tree, which TFDS stores flattened: nested names are joined with ``/`` and a ``Dataset``
node (the episode's steps) contributes one value per step to each of its leaves. Nothing is
assumed that the metadata states: not the shard count, the split names nor the episodes per
shard.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge_torch.data.sources.tfrecord import BYTES_LIST, FLOAT_LIST, INT64_LIST

INFO_FILE, FEATURES_FILE = "dataset_info.json", "features.json"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # older TFDS omit the field
INT_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")
PLACEHOLDER = re.compile(r"\{([A-Z_]+)\}")


class DatasetFormatError(ValueError):
    """The directory is not a readable TFDS dataset (missing or inconsistent metadata)."""


@dataclass(frozen=True)
class FeatureSpec:
    """One flat feature: how many values each step (or the episode) stores, and their type."""

    key: str  # flat name, e.g. "steps/observation/image_0"
    dtype: str  # "float32", "bool", "int32", "string", ... ("uint8" for images)
    shape: tuple[int, ...]  # of one step's (or the episode's) value; () for a scalar
    per_step: bool  # inside the steps Dataset: one value per step
    image: bool = False  # an encoded image: one bytes value per step

    @property
    def kind(self) -> str:
        """The Example value list TFDS encodes this dtype into."""
        if self.image or self.dtype == "string":
            return BYTES_LIST
        return INT64_LIST if self.dtype in INT_DTYPES else FLOAT_LIST

    @property
    def size(self) -> int:
        """Values per step (or per episode): 1 for images, strings and scalars."""
        return 1 if self.image else math.prod(self.shape)


@dataclass(frozen=True)
class Shard:
    """One TFRecord file of a split."""

    split: str
    index: int
    path: Path
    num_records: int  # from dataset_info.json; the file must hold exactly this many


@dataclass(frozen=True)
class TfdsDataset:
    """What a reader needs from a TFDS directory's metadata."""

    path: Path
    name: str
    version: str
    features: dict[str, FeatureSpec]
    splits: dict[str, list[Shard]]  # split name -> shards in index order

    def num_episodes(self, split: str) -> int:
        return sum(shard.num_records for shard in self.splits[split])


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetFormatError(f"{path.parent} is not a prepared TFDS dataset: {path.name} is "
                                 f"missing")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetFormatError(f"{path}: not readable JSON ({err})") from err


def _class(node: dict) -> str:
    """The feature class name without its module (``FeaturesDict``, ``Tensor``, ...)."""
    return str(node.get("pythonClassName", "")).rsplit(".", 1)[-1]


def _leaf(key: str, node: dict, per_step: bool) -> FeatureSpec | None:
    """The spec of a Tensor, Scalar, Text or Image node; None for a class we do not decode."""
    kind = _class(node)
    if kind == "Text":
        return FeatureSpec(key, "string", (), per_step)
    payload = node.get("image") if kind == "Image" else node.get("tensor")
    if kind not in ("Tensor", "Scalar", "Image") or not isinstance(payload, dict) \
            or payload.get("encoding", "none") != "none":
        return None
    try:
        shape = tuple(int(d) for d in payload.get("shape", {}).get("dimensions", []))
    except (TypeError, ValueError) as err:
        raise DatasetFormatError(f"{FEATURES_FILE}: bad shape of {key!r} ({err})") from err
    return FeatureSpec(key, str(payload.get("dtype", "")), shape, per_step, kind == "Image")


def flatten_features(node: dict, prefix: str = "", per_step: bool = False
                     ) -> dict[str, FeatureSpec]:
    """Flat key -> spec of every leaf we can decode; other leaf classes are left out."""
    kind = _class(node)
    if kind == "FeaturesDict":
        children = node.get("featuresDict", {}).get("features", {})
        found: dict[str, FeatureSpec] = {}
        for name, child in children.items():
            found.update(flatten_features(child, f"{prefix}{name}/", per_step))
        return found
    if kind == "Dataset":
        if per_step:
            raise DatasetFormatError(f"{FEATURES_FILE}: nested Dataset at {prefix!r} is not "
                                     "supported")
        return flatten_features(node.get("sequence", {}).get("feature", {}), prefix, True)
    spec = _leaf(prefix.rstrip("/"), node, per_step)
    return {spec.key: spec} if spec else {}


def shard_name(template: str, dataset: str, split: str, file_format: str, index: int,
               count: int) -> str:
    """Expand a TFDS file-path template (shard numbers are zero-padded to 5 digits)."""
    values = {"DATASET": dataset, "SPLIT": split, "FILEFORMAT": file_format,
              "SHARD_INDEX": f"{index:05d}", "NUM_SHARDS": f"{count:05d}",
              "SHARD_X_OF_Y": f"{index:05d}-of-{count:05d}"}
    unknown = set(PLACEHOLDER.findall(template)) - set(values)
    if unknown:
        raise DatasetFormatError(f"{INFO_FILE}: unknown placeholders {sorted(unknown)} in "
                                 f"filepathTemplate {template!r}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _split_shards(root: Path, name: str, file_format: str, split: dict) -> list[Shard]:
    try:
        lengths = [int(n) for n in split["shardLengths"]]
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetFormatError(f"{root / INFO_FILE}: split {split.get('name')!r} has no valid "
                                 f"shardLengths ({err!r})") from err
    template = split.get("filepathTemplate") or DEFAULT_TEMPLATE
    shards = [Shard(split["name"], i, root / shard_name(template, name, split["name"],
                                                       file_format, i, len(lengths)), n)
              for i, n in enumerate(lengths)]
    missing = [s.path.name for s in shards if not s.path.is_file()]
    if missing:
        raise DatasetFormatError(f"{root}: split {split['name']!r} lacks {len(missing)} of its "
                                 f"{len(shards)} shard files, e.g. {missing[0]}")
    return shards


def open_tfds(path: Path) -> TfdsDataset:
    """Read and check a TFDS directory's metadata (every shard file must exist).

    Raises:
        DatasetFormatError: a metadata file is missing or malformed, the files are not
            TFRecord, or a shard named by the metadata does not exist.
    """
    root = Path(path)
    info, tree = _read_json(root / INFO_FILE), _read_json(root / FEATURES_FILE)
    if not isinstance(info, dict) or not isinstance(tree, dict):
        raise DatasetFormatError(f"{root}: {INFO_FILE} and {FEATURES_FILE} must be JSON objects")
    file_format = info.get("fileFormat") or "tfrecord"
    if file_format != "tfrecord":
        raise DatasetFormatError(f"{root}: fileFormat {file_format!r} is not supported (only "
                                 "tfrecord)")
    name, splits = str(info.get("name", "")), info.get("splits")
    if not name or not isinstance(splits, list) or not splits:
        raise DatasetFormatError(f"{root / INFO_FILE}: needs a name and a list of splits")
    return TfdsDataset(root, name, str(info.get("version", "")), flatten_features(tree),
                       {s.get("name"): _split_shards(root, name, file_format, s) for s in splits})


def is_tfds_dir(path: Path) -> bool:
    """Whether ``path`` looks like a prepared TFDS dataset (both metadata files present)."""
    return (Path(path) / INFO_FILE).is_file() and (Path(path) / FEATURES_FILE).is_file()
