"""``bridge-torch-convert``: raw BridgeData -> ``<task>/{train,val}/out.npy`` and/or packed stores.

Same flags, output layout and out.npy bytes as the original ``bridgedata_raw_to_numpy.py``
(docs/semantics.md, 'Data format and latency shift'), with these differences:

* ``--seed`` (default 0): each dated folder's train/val shuffle uses a generator keyed by the seed
  and the folder's output-relative path, so the split is reproducible and independent of worker
  scheduling (the original shuffled unseeded).
* Bad trajectories and folders (see the reasons in ``raw.py`` and below) are skipped, each
  logged with what was expected vs found and counted per reason in the summary printed at the
  end; unexpected errors are logged with a traceback and counted too. Nothing crashes the pool.
* No empty split directories: a collection without val trajectories gets only
  ``train/`` (logged) where the original wrote nothing at all.
* Every output is written under a temporary name and renamed; ``conversion.json`` (settings and
  counts) is written last, so a collection without it is unfinished: a re-run without
  ``--overwrite`` skips finished collections and converts unfinished ones again.
* Workers get all their inputs as arguments and start with ``spawn`` (the original's
  workers read a module global, which only works with fork);
  ``--num_workers <= 1`` converts in-process.
* ``--format packed|both`` writes ``<split>/packed/`` (``data/store.py``) from the same
  trajectories; trajectories lacking one of ``--cameras`` are then skipped from both outputs.
* ``--input_format rlds`` reads a TFDS/RLDS release instead (``data/sources/rlds_convert.py``,
  ``docs/rlds.md``); the raw layout stays the default.

Usage::

    bridge-torch-convert --input_path raw/ --output_path data/ --depth 5 --format both
"""

import contextlib
import functools
import hashlib
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bridge_torch.cli_errors import CliParser, debug_requested, user_errors
from bridge_torch.data.sources.bridge_raw import (
    CAMERA_DIR,
    SkipFolder,
    SkipTrajectory,
    find_collections,
    needs_latency_shift,
    read_dated_folder,
    read_trajectory,
)
from bridge_torch.data.sources.convert_output import (
    DONE_MARKER,
    LOG_FORMAT,
    OUT_FILE,
    PACKED_DIR,
    SPLITS,
    check_output_path,
    is_finished,
    prune_empty,
    reason_lines,
    remove_stale,
)
from bridge_torch.data.sources.legacy_numpy import save_out_npy
from bridge_torch.data.sources.pickle_guard import NO_PICKLE_ENV, PickleRefused, pickle_forbidden
from bridge_torch.data.sources.raw_trajectory import RawTrajectory
from bridge_torch.data.sources.worker_pool import results_as_completed
from bridge_torch.data.store import write_json_atomic, write_store

log = logging.getLogger(__name__)
FORMATS = ("numpy", "packed", "both")
# statuses of a collection
CONVERTED, ALREADY_DONE, EMPTY, FAILED = "converted", "already converted", "no output", "failed"
# summary keys of skips found here (raw.py has those of the raw format)
FOLDER_ERROR = "unexpected error in folder"
UNEXPECTED = "unexpected error"
MISSING_CAMERA = "lacks a --cameras camera"


@dataclass(frozen=True)
class ConvertOptions:
    """Settings of one conversion; passed to every worker explicitly (no fork-only globals)."""

    input_path: Path
    output_path: Path
    depth: int = 5  # directory levels from input_path down to the dated folders
    train_proportion: float = 0.9  # per dated folder: shuffled index i < int(n * p) -> train
    im_size: int = 128  # frames are squashed to im_size x im_size (LANCZOS)
    saliency: bool = False  # attach saliency_map.pkl as observation key "saliency"
    seed: int = 0  # seed of the per-dated-folder train/val shuffle
    format: str = "numpy"  # "numpy" (out.npy), "packed" (store) or "both"
    cameras: tuple[str, ...] = ("images0",)  # cameras of packed stores
    overwrite: bool = False  # convert collections again even when finished

    def __post_init__(self) -> None:
        checks = [(self.depth >= 1, f"depth must be >= 1, got {self.depth}"),
                  (0.0 <= self.train_proportion <= 1.0,
                   f"train_proportion must be in [0, 1], got {self.train_proportion}"),
                  (self.im_size >= 1, f"im_size must be >= 1, got {self.im_size}"),
                  (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
                  (self.format in FORMATS, f"format must be one of {FORMATS}, got {self.format!r}"),
                  (bool(self.cameras) and all(CAMERA_DIR.match(c) for c in self.cameras),
                   f"cameras must be names like images0, got {list(self.cameras)}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def settings(self) -> dict[str, Any]:
        """What determines the output (recorded in conversion.json)."""
        return {"im_size": self.im_size, "train_proportion": self.train_proportion,
                "seed": self.seed, "saliency": self.saliency, "format": self.format,
                "cameras": list(self.cameras)}


@dataclass
class CollectionReport:
    """What happened to one collection directory (returned by the workers)."""

    collection: str
    output_dir: str
    status: str = CONVERTED
    num_train: int = 0
    num_val: int = 0
    skipped_trajectories: Counter = field(default_factory=Counter)  # reason -> count
    skipped_folders: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first path skipped
    without_saliency: int = 0  # kept trajectories whose saliency_map.pkl was unusable
    error: str = ""

    def skip(self, counter: Counter, reason: str, path: Path, detail: str) -> None:
        log.warning("skipping %s (%s): %s", path, reason, detail)
        counter[reason] += 1
        self.examples.setdefault(reason, str(path))


def relative_output(collection: Path, depth: int) -> Path:
    """The last ``max(depth - 1, 1)`` components of a collection path."""
    return Path(*Path(collection).absolute().parts[-max(depth - 1, 1):])


def split_order(num_trajectories: int, seed: int, key: str) -> np.ndarray:
    """Shuffled trajectory order of one dated folder, a function of (seed, key) only."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest]).permutation(num_trajectories)


def _read_one(traj_dir: Path, latency_shift: bool, options: ConvertOptions,
              report: CollectionReport) -> RawTrajectory | None:
    """One trajectory as read, or None (skip logged and counted)."""
    try:
        traj = read_trajectory(traj_dir, im_size=options.im_size, latency_shift=latency_shift,
                               saliency=options.saliency)
    except SkipTrajectory as skip:
        report.skip(report.skipped_trajectories, skip.reason, traj_dir, skip.detail)
        return None
    except Exception as err:  # a bug or I/O error must cost one trajectory, not the run
        log.exception("unexpected error reading %s", traj_dir)
        report.skip(report.skipped_trajectories, UNEXPECTED, traj_dir,
                    f"{type(err).__name__}: {err}")
        return None
    missing = [c for c in options.cameras if c not in traj.frames]
    if options.format != "numpy" and missing:
        report.skip(report.skipped_trajectories, MISSING_CAMERA, traj_dir,
                    f"packed stores need cameras {list(options.cameras)}, missing {missing}")
        return None
    if options.saliency and traj.saliency is None:
        report.without_saliency += 1
    return traj


def _read_dated_folder(folder: Path, collection: Path, options: ConvertOptions,
                       report: CollectionReport) -> list[tuple[str, RawTrajectory]]:
    """(split, trajectory) of every usable trajectory of one dated folder."""
    try:
        date, trajs = read_dated_folder(folder, folder.relative_to(options.input_path).as_posix())
    except SkipFolder as skip:
        report.skip(report.skipped_folders, skip.reason, folder, skip.detail)
        return []
    key = (relative_output(collection, options.depth) / folder.name).as_posix()
    num_train = int(len(trajs) * options.train_proportion)  # the original's rule, same rounding
    found = []
    for rank, index in enumerate(split_order(len(trajs), options.seed, key)):
        traj = _read_one(trajs[index], needs_latency_shift(date), options, report)
        if traj is not None:
            found.append(("train" if rank < num_train else "val", traj))
    return found


def _read_collection(collection: Path, options: ConvertOptions,
                     report: CollectionReport) -> dict[str, list[RawTrajectory]]:
    """Trajectories of every dated folder, per split, in folder order then shuffled order."""
    splits: dict[str, list[RawTrajectory]] = {split: [] for split in SPLITS}
    for folder in sorted(collection.iterdir()):
        try:
            found = _read_dated_folder(folder, collection, options, report)
        except Exception as err:  # one broken folder must not lose the collection
            log.exception("unexpected error in %s", folder)
            report.skip(report.skipped_folders, FOLDER_ERROR, folder,
                        f"{type(err).__name__}: {err}")
            continue
        for split, traj in found:
            splits[split].append(traj)
    return splits


def _write_splits(out_dir: Path, splits: dict[str, list[RawTrajectory]],
                  options: ConvertOptions) -> dict[str, set[str]]:
    """Write each non-empty split (out.npy before packed/); returns the names written per split.

    The legacy per-step dicts are built only for out.npy; packed stores get stacked arrays.
    """
    written: dict[str, set[str]] = {}
    for split, items in splits.items():
        if not items:
            continue
        split_dir, names = out_dir / split, written.setdefault(split, set())
        if options.format in ("numpy", "both"):
            save_out_npy(split_dir / OUT_FILE, [traj.out_dict() for traj in items])
            names.add(OUT_FILE)
        if options.format in ("packed", "both"):
            source = {"kind": "raw BridgeData", "converter": "bridge-torch-convert",
                      "input_path": str(Path(options.input_path).absolute()), "split": split,
                      "dated_folders": sorted({str(Path(t.source).parents[2]) for t in items}),
                      "settings": options.settings()}
            write_store(split_dir / PACKED_DIR, (traj.trajectory() for traj in items),
                        cameras=options.cameras, source=source, progress=False)
            names.add(PACKED_DIR)
    return written


def convert_collection(collection: Path, options: ConvertOptions) -> CollectionReport:
    """Convert one collection directory; never raises (errors are logged and reported)."""
    out_dir = Path(options.output_path) / relative_output(collection, options.depth)
    report = CollectionReport(str(collection), str(out_dir))
    try:
        if is_finished(out_dir, options):
            report.status = ALREADY_DONE
            return report
        splits = _read_collection(collection, options, report)
        report.num_train, report.num_val = len(splits["train"]), len(splits["val"])
        written = _write_splits(out_dir, splits, options)
        remove_stale(out_dir, written)
        prune_empty(out_dir)
        if not written:
            log.warning("%s: no usable trajectories; nothing written", collection)
            report.status = EMPTY
            return report
        for split in set(SPLITS) - set(written):
            log.warning("%s: no %s trajectories; writing only %s", collection, split,
                        ", ".join(f"{s}/" for s in sorted(written)))
        write_json_atomic(out_dir / DONE_MARKER, {
            "settings": options.settings(), "collection": report.collection,
            "num_train": report.num_train, "num_val": report.num_val,
            "skipped_trajectories": dict(report.skipped_trajectories),
            "skipped_folders": dict(report.skipped_folders),
            "without_saliency": report.without_saliency})
    except Exception as err:  # report, never crash the pool
        log.exception("failed to convert %s", collection)
        report.status, report.error = FAILED, f"{type(err).__name__}: {err}"
        with contextlib.suppress(OSError):
            prune_empty(out_dir)
    return report


def convert(options: ConvertOptions, *, num_workers: int = 8,
            progress: bool = True) -> list[CollectionReport]:
    """Convert every collection under ``options.input_path``; reports sorted by collection.

    Raises:
        FileNotFoundError: input_path is not a directory.
        ValueError: no collection directory at ``depth - 1`` levels below it, an output path
            that cannot be a directory, or ``$BRIDGE_TORCH_NO_PICKLE`` set (PickleRefused).
    """
    if not Path(options.input_path).is_dir():
        raise FileNotFoundError(f"input_path {options.input_path} is not a directory")
    check_output_path(options.output_path)
    if pickle_forbidden():
        raise PickleRefused(f"{NO_PICKLE_ENV} is set: the raw format's obs_dict.pkl and "
                            "policy_out.pkl are pickles, which bridge-torch then never reads")
    collections = find_collections(options.input_path, options.depth)
    if not collections:
        raise ValueError(f"no collection directories {options.depth - 1} levels below "
                         f"{options.input_path} (check --depth)")
    log.info("converting %d collections; raw obs_dict.pkl/policy_out.pkl are pickles, so only "
             "convert data you trust", len(collections))
    bar = tqdm(total=len(collections), desc="converting", unit="collection",
               disable=not progress)
    reports = []
    convert_one = functools.partial(convert_collection, options=options)
    with results_as_completed(convert_one, collections, num_workers) as results:
        for collection, future in results:
            reports.append(_result(future, collection, options))
            bar.update()
    bar.close()
    return sorted(reports, key=lambda r: r.collection)


def _result(future, collection: Path, options: ConvertOptions) -> CollectionReport:
    """A worker's report, or a failed one when the worker process died."""
    try:
        return future.result()
    except Exception as err:  # BrokenProcessPool: killed (e.g. out of memory), not a raise
        log.error("worker converting %s died: %s", collection, err)
        out_dir = Path(options.output_path) / relative_output(collection, options.depth)
        return CollectionReport(str(collection), str(out_dir), status=FAILED,
                                error=f"{type(err).__name__}: {err}")


def format_summary(reports: list[CollectionReport]) -> str:
    """Human-readable totals: collections by status, trajectories per split, skips per reason."""
    statuses = Counter(r.status for r in reports)
    skipped_trajs, skipped_folders, examples = Counter(), Counter(), {}
    for r in reports:
        skipped_trajs.update(r.skipped_trajectories)
        skipped_folders.update(r.skipped_folders)
        examples = {**r.examples, **examples}
    lines = [f"collections: {len(reports)} (" + ", ".join(
                 f"{n} {status}" for status, n in sorted(statuses.items())) + ")",
             f"trajectories written: train {sum(r.num_train for r in reports)}, "
             f"val {sum(r.num_val for r in reports)}",
             f"skipped trajectories: {sum(skipped_trajs.values())}",
             *reason_lines(skipped_trajs, examples),
             f"skipped folders: {sum(skipped_folders.values())}",
             *reason_lines(skipped_folders, examples)]
    without = sum(r.without_saliency for r in reports)
    if without:
        lines.append(f"kept without saliency (unusable saliency_map.pkl): {without}")
    lines += [f"FAILED {r.collection}: {r.error}" for r in reports if r.status == FAILED]
    return "\n".join(lines)


def build_parser() -> CliParser:
    """The options of ``bridge-torch-convert`` (also read by ``rlds_convert.run_cli``)."""
    parser = CliParser(prog="bridge-torch-convert", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--input_format", choices=("raw", "rlds"), default="raw",
        help="raw BridgeData tree, or a TFDS/RLDS directory such as bridge_dataset/1.0.0")
    add("--input_path", type=Path, required=True, metavar="DIR", help="raw BridgeData root")
    add("--output_path", "--out", type=Path, required=True, metavar="DIR")
    add("--depth", type=int, default=5, help="directory levels from input_path to dated folders")
    add("--train_proportion", type=float, default=0.9)
    add("--num_workers", type=int, default=8, help="<= 1: in-process")
    add("--im_size", type=int, default=128)
    add("--overwrite", action="store_true", help="convert finished collections again")
    add("--saliency", action="store_true", help="attach saliency_map.pkl as obs 'saliency'")
    add("--seed", type=int, default=0, help="seed of the per-dated-folder train/val split")
    add("--format", choices=FORMATS, default=None, help="out.npy (default), packed store, or "
        "both; rlds input: packed only")
    add("--cameras", nargs="+", default=["images0"], help="cameras kept in packed stores "
        "(space- or comma-separated)")
    add("--splits", nargs="+", help="rlds: TFDS splits to convert (default all; test -> val)")
    add("--group_by", choices=("task",), help="rlds: one store per task directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (1 when a collection failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # a missing input or a bad setting is a usage error (2); a failure while writing is not (1)
    with user_errors(parser.prog, debug=debug_requested(args),
                     usage=(ValueError, FileNotFoundError)):
        if args.input_format == "rlds":
            from bridge_torch.data.sources.rlds_convert import run_cli  # imports this module

            return run_cli(args, parser)
        if args.splits or args.group_by:
            parser.error("--splits and --group_by apply to --input_format rlds only")
        options = ConvertOptions(
            args.input_path, args.output_path, depth=args.depth,
            train_proportion=args.train_proportion, im_size=args.im_size,
            saliency=args.saliency, seed=args.seed, format=args.format or "numpy",
            cameras=tuple(c for arg in args.cameras for c in arg.split(",") if c),
            overwrite=args.overwrite)
        reports = convert(options, num_workers=args.num_workers)
    print(format_summary(reports))
    return 1 if any(r.status == FAILED for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
