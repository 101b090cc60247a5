"""``bridge-torch-inspect``: a summary of a dataset and an optional preview image grid.

The path may be a raw BridgeData tree, a tree of converted ``out.npy`` files, a packed store, a
tree of packed stores (a split with both an out.npy and a packed store is read from the store), or
a TFDS/RLDS release directory (``bridge_dataset/1.0.0``; read as the converter would, see
``data/sources/rlds_inspect.py``).
Packed stores are summarised from their metadata and memory maps (frames are never loaded as a
whole); out.npy files are parsed one at a time (pickle: only inspect your own data); raw trees are
summarised from file names, lang.txt and a single JPEG header (no statistics: convert first);
their transition counts are what the converter produces (latency shift included).

Usage::

    bridge-torch-inspect data/ [--json] [--preview grid.png] [--preview-trajectories 4]
    python -m bridge_torch.data.inspect data/
"""

import argparse
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bridge_torch.cli_errors import CliParser, debug_requested, user_errors
from bridge_torch.data.actions import compute_statistics, merge_statistics, relabel_actions
from bridge_torch.data.preview import PreviewPicker, PreviewRow, write_preview
from bridge_torch.data.sources import legacy_numpy as legacy
from bridge_torch.data.sources.bridge_raw import (
    SALIENCY_FILE,
    SkipTrajectory,
    count_frames,
    needs_latency_shift,
    parse_folder_date,
    read_language,
)
from bridge_torch.data.sources.rlds_inspect import scan_rlds
from bridge_torch.data.sources.tfds import is_tfds_dir, open_tfds
from bridge_torch.data.store import META_FILE, STATS_KEYS, open_store

RAW_PREVIEW_SIZE = 128  # raw JPEGs are squashed to this square size in the preview
HISTOGRAM_BINS = 10
SALIENCY_CHUNK_BYTES = 64 << 20  # saliency is scanned in chunks of this size
log = logging.getLogger(__name__)


@dataclass
class Source:
    """One unit of data: a packed store, an out.npy file, or a raw trajectory folder."""

    kind: str  # "packed" | "out.npy" | "raw"
    path: Path
    task: str  # task directory relative to the inspected path
    split: str  # "train", "val", ... ("raw" for raw trajectories)


def find_sources(path: Path) -> list[Source]:
    """Detect what ``path`` holds; converted data wins over raw trajectories in the same tree."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".npy":
            raise ValueError(f"{path}: expected a directory or an out.npy file")
        return [Source("out.npy", path, path.parent.parent.name, path.parent.name)]
    if not path.is_dir():
        raise ValueError(f"{path} does not exist")
    stores, npys, raws, releases = [], [], [], []
    for dirpath, dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if META_FILE in filenames:
            stores.append(here)
            dirnames[:] = []
        elif "obs_dict.pkl" in filenames:
            raws.append(here)
            dirnames[:] = []
        elif is_tfds_dir(here):
            releases.append(here)
            dirnames[:] = []
        elif "out.npy" in filenames and not (here / "packed" / META_FILE).is_file():
            npys.append(here / "out.npy")
    converted = [_converted_source("packed", s, path) for s in stores] + \
        [_converted_source("out.npy", f, path) for f in npys] + \
        [Source("rlds", d, _relative(d, path), s) for d in releases for s in open_tfds(d).splits]
    if converted:
        return sorted(converted, key=lambda s: (s.task, s.split))
    if raws:
        return [Source("raw", t, _raw_task(t, path), "raw") for t in raws]
    raise ValueError(f"{path}: found no packed store ({META_FILE}), out.npy or raw trajectory "
                     f"(obs_dict.pkl)")


def _converted_source(kind: str, path: Path, root: Path) -> Source:
    """``<task>/<split>/out.npy`` or ``<task>/<split>/packed``; any other store is its own task."""
    if kind == "out.npy" or path.name == "packed":
        return Source(kind, path, _relative(path.parent.parent, root), path.parent.name)
    return Source(kind, path, _relative(path, root), "-")


def _raw_task(traj_dir: Path, root: Path) -> str:
    """Raw layout <collection>/<date>/raw/traj_group*/traj*: the task is the collection."""
    parents = traj_dir.parents
    task = parents[3] if len(parents) > 3 and parents[1].name == "raw" else traj_dir.parent
    return _relative(task, root)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root and root in path.parents else "."


@dataclass
class Tally:
    """Running totals over all trajectories (numbers only; frames are never kept)."""

    tasks: set = field(default_factory=set)
    splits: dict = field(default_factory=dict)  # split -> [trajectories, transitions]
    lengths: list = field(default_factory=list)  # transitions per trajectory
    cameras: Counter = field(default_factory=Counter)  # camera -> trajectories having it
    image_sizes: Counter = field(default_factory=Counter)  # (H, W) -> trajectories
    stats: dict = field(default_factory=lambda: {key: [] for key in STATS_KEYS})
    saliency_trajectories: int = 0
    saliency_frames: int | None = 0  # frames with a non-zero map; None when unknown (raw)
    raw_image_size: tuple | None = None  # (H, W) of the one raw JPEG decoded
    skipped: int = 0  # raw trajectories the converter would skip
    language: Counter = field(default_factory=Counter)
    labelled: int = 0

    def add_trajectories(self, source: Source, lengths: list[int], languages: list[list[str]],
                         cameras: list[str], image_size: tuple[int, int]) -> None:
        self.tasks.add(source.task)
        counts = self.splits.setdefault(source.split, [0, 0])
        counts[0] += len(lengths)
        counts[1] += sum(lengths)
        self.lengths += lengths
        self.cameras.update({camera: len(lengths) for camera in cameras})
        self.image_sizes[tuple(int(s) for s in image_size)] += len(lengths)
        for lines in languages:
            self.language.update(lines)
            self.labelled += bool(lines)


def _nonzero_frames(saliency: np.ndarray) -> int:
    """Number of frames with a non-zero map, scanning a memory map chunk by chunk."""
    rows = max(1, SALIENCY_CHUNK_BYTES // max(1, saliency[0].nbytes))
    return sum(int(np.any(saliency[i:i + rows].reshape(-1, saliency[0].size) != 0, axis=1).sum())
               for i in range(0, saliency.shape[0], rows))


def _scan_packed(source: Source, k: int, tally: Tally, picker: PreviewPicker) -> None:
    store = open_store(source.path)
    tally.add_trajectories(source, store.traj_length.tolist(), store.language, store.cameras,
                           store.image_size)
    for key in STATS_KEYS:
        tally.stats[key].append(store.stats[key])
    tally.saliency_trajectories += int(store.traj_has_saliency.sum())
    if store.saliency is not None and tally.saliency_frames is not None:
        tally.saliency_frames += _nonzero_frames(store.saliency)
    for i in picker.indices(k, store.num_trajectories):
        picker.add(store.trajectory(i).frames[store.cameras[0]], store.language[i], source.task)


def _scan_legacy(source: Source, k: int, tally: Tally, picker: PreviewPicker) -> None:
    raw = legacy.load_out_npy(source.path)
    picks = set(picker.indices(k, len(raw)))
    for i, traj in enumerate(legacy.legacy_to_trajectories(raw, source.path)):
        first = traj.frames.get("images0", next(iter(traj.frames.values())))
        tally.add_trajectories(source, [traj.num_transitions], [traj.language],
                               sorted(traj.frames), first.shape[1:3])
        for key, values in (("actions", traj.actions), ("proprio", traj.proprio),
                            ("actions_relabeled", relabel_actions(traj.proprio, traj.actions))):
            tally.stats[key].append(compute_statistics(values))
        if traj.saliency is not None:
            tally.saliency_trajectories += 1
            tally.saliency_frames += _nonzero_frames(traj.saliency)
        if i in picks:
            picker.add(first, traj.language, source.task)


def _scan_raw(source: Source, k: int, tally: Tally, picker: PreviewPicker) -> None:
    """File names and lang.txt only (plus one JPEG header per tree); no pickle is read."""
    try:
        counts = count_frames(source.path)
        language = [line for line in read_language(source.path) if line]
    except SkipTrajectory as err:
        log.warning("%s (the converter skips this trajectory)", err)
        tally.skipped += 1
        return
    steps, first_camera = next(iter(counts.values())), source.path / next(iter(counts))
    parents = source.path.absolute().parents  # <date>/raw/traj_group*/traj*
    date = parse_folder_date(parents[2].name) if len(parents) > 2 else None
    transitions = steps - 1 - int(date is not None and needs_latency_shift(date))
    if transitions < 1:
        tally.skipped += 1
        return
    if tally.raw_image_size is None:  # one JPEG header for the whole tree
        with Image.open(first_camera / "im_0.jpg") as img:
            tally.raw_image_size = (img.height, img.width)
    tally.add_trajectories(source, [transitions], [language], list(counts), tally.raw_image_size)
    tally.saliency_frames = None  # would need every saliency_map.pkl unpickled
    tally.saliency_trajectories += (source.path / SALIENCY_FILE).is_file()
    if picker.indices(k, 1):
        last = steps - 1
        frames = [_read_jpeg(first_camera / f"im_{i}.jpg") for i in (0, last // 2, last)]
        picker.rows.append(PreviewRow(frames, language, source.task))


def _read_jpeg(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        size = (RAW_PREVIEW_SIZE, RAW_PREVIEW_SIZE)
        return np.asarray(img.convert("RGB").resize(size, Image.Resampling.LANCZOS))


SCANNERS = {"packed": _scan_packed, "out.npy": _scan_legacy, "raw": _scan_raw, "rlds": scan_rlds}


def summarize(path: Path, *, preview_trajectories: int = 0
              ) -> tuple[dict[str, Any], list[PreviewRow]]:
    """Summary of the dataset at ``path`` (JSON-ready) and up to ``preview_trajectories`` rows
    of [first, middle, last] uint8 frames for :func:`write_preview`."""
    sources = find_sources(Path(path))
    tally, picker = Tally(), PreviewPicker(preview_trajectories, len(sources))
    for k, source in enumerate(sources):
        SCANNERS[source.kind](source, k, tally, picker)
    return _summary_dict(Path(path), sources, tally), picker.rows


def _histogram(lengths: np.ndarray) -> dict[str, list[int]]:
    """Integer-width bins [edge_k, edge_k+1) covering min..max."""
    low, high = int(lengths.min()), int(lengths.max())
    width = max(1, math.ceil((high - low + 1) / HISTOGRAM_BINS))
    counts = np.bincount((lengths - low) // width)
    return {"bin_edges": [low + width * i for i in range(len(counts) + 1)],
            "counts": counts.tolist()}


def _summary_dict(path: Path, sources: list[Source], tally: Tally) -> dict[str, Any]:
    lengths = np.asarray(tally.lengths, dtype=np.int64)
    if lengths.size == 0:
        raise ValueError(f"{path}: no trajectories found")
    frames = int(lengths.sum() + lengths.size)
    stats = {key: merge_statistics(parts) for key, parts in tally.stats.items() if parts}
    return {
        "path": str(path),
        "format": sorted({s.kind for s in sources}),
        "num_sources": len(sources),
        "skipped_trajectories": tally.skipped,
        "num_tasks": len(tally.tasks),
        "splits": {name: {"trajectories": n, "transitions": m}
                   for name, (n, m) in sorted(tally.splits.items())},
        "num_trajectories": int(lengths.size),
        "num_transitions": int(lengths.sum()),
        "num_frames": frames,
        "length": {"min": int(lengths.min()), "mean": float(lengths.mean()),
                   "max": int(lengths.max()), "histogram": _histogram(lengths)},
        "image_sizes": [[*size, count] for size, count in tally.image_sizes.most_common()],
        "cameras": dict(sorted(tally.cameras.items())),
        "stats": stats or None,
        "saliency": {
            "trajectories": tally.saliency_trajectories,
            "trajectory_fraction": tally.saliency_trajectories / lengths.size,
            "nonzero_frames": tally.saliency_frames,
            "frame_fraction": None if tally.saliency_frames is None
            else tally.saliency_frames / frames,
        },
        "language": {"distinct": len(tally.language), "labelled_trajectories": tally.labelled,
                     "instructions": [[text, n] for text, n in tally.language.most_common()]},
    }


def _stats_lines(stats: dict[str, Any] | None) -> list[str]:
    if not stats:
        return ["statistics: not available for raw trees (convert first)"]
    lines = ["statistics per dimension:"]
    for key in ("actions", "actions_relabeled", "proprio"):
        lines.append(f"  {key} (count {stats[key]['count']})")
        for name in ("mean", "std", "min", "max"):
            lines.append(f"    {name:<4} " + " ".join(f"{v:+.4f}" for v in stats[key][name]))
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as readable text (histogram bars, statistics per dimension)."""
    splits = ", ".join(f"{name} {v['trajectories']} traj / {v['transitions']} transitions"
                       for name, v in summary["splits"].items())
    length, hist, sal = summary["length"], summary["length"]["histogram"], summary["saliency"]
    lines = [f"dataset: {summary['path']} ({', '.join(summary['format'])}, "
             f"{summary['num_sources']} sources)",
             f"tasks: {summary['num_tasks']}   splits: {splits}",
             f"trajectories: {summary['num_trajectories']}   transitions: "
             f"{summary['num_transitions']}   frames: {summary['num_frames']}",
             "image size: " + ", ".join(f"{h}x{w} ({n} traj)" for h, w, n in
                                        summary["image_sizes"]),
             "cameras: " + ", ".join(f"{c} ({n} traj)" for c, n in summary["cameras"].items()),
             f"trajectory length (transitions): min {length['min']}  mean "
             f"{length['mean']:.1f}  max {length['max']}"]
    top = max(hist["counts"])
    for lo, hi, count in zip(hist["bin_edges"], hist["bin_edges"][1:], hist["counts"],
                             strict=False):
        label = f"{lo}" if hi - 1 == lo else f"{lo}-{hi - 1}"
        lines.append(f"  {label:>11} | {'#' * round(40 * count / top)} {count}")
    frames = ("unknown (raw)" if sal["nonzero_frames"] is None
              else f"{sal['nonzero_frames']} frames non-zero ({sal['frame_fraction']:.1%})")
    lines.append(f"saliency: {sal['trajectories']} trajectories "
                 f"({sal['trajectory_fraction']:.1%}), {frames}")
    lang = summary["language"]
    lines.append(f"language: {lang['distinct']} distinct instructions, "
                 f"{lang['labelled_trajectories']} labelled trajectories")
    lines += [f"  {count:>6}  {text}" for text, count in lang["instructions"][:10]]
    return "\n".join(lines + _stats_lines(summary["stats"]))


def build_parser() -> CliParser:
    """The options of ``bridge-torch-inspect``."""
    parser = CliParser(prog="bridge-torch-inspect", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="raw tree, out.npy tree/file or packed store(s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--preview", type=Path, help="write a PNG grid of a few trajectories")
    parser.add_argument("--preview-trajectories", type=int, default=4, help="rows in the grid")
    parser.add_argument("--no-augment", action="store_true", help="leave augmented rows out")
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed of the preview")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``bridge-torch-inspect``: print the summary (and write the preview)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preview_trajectories < 1:
        parser.error("--preview-trajectories must be >= 1")
    if not args.path.exists():
        parser.error(f"{args.path} does not exist")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with user_errors(parser.prog, debug=debug_requested(args)):
        summary, rows = summarize(args.path, preview_trajectories=args.preview_trajectories
                                  if args.preview else 0)
        print(json.dumps(summary) if args.json else format_summary(summary))
        if args.preview:
            write_preview(rows, args.preview, augment=not args.no_augment, seed=args.seed,
                          title=f"{args.path}: {len(rows)} trajectories")
    if args.preview and not args.json:
        print(f"preview: {args.preview}")


if __name__ == "__main__":
    main()
