"""``bridge-torch-convert``: raw BridgeData -> ``<task>/{train,val}/out.npy`` and/or packed stores.

Same flags and output as the original ``bridgedata_raw_to_numpy.py`` (spec §2-§3), plus:
``--seed`` makes the per-dated-folder split reproducible; bad trajectories and folders are skipped
with the reason logged and counted in a summary (nothing crashes the pool); no empty split
directories; every output is written under a temporary name and renamed, and a collection is
marked done only when all its outputs exist, so an interrupted run is simply re-run;
``--format numpy|packed|both``.

Usage::

    bridge-torch-convert --input_path raw/ --output_path data/ --depth 5 --format both
"""

import argparse
import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import shutil
from collections import Counter
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bridge_torch.data.legacy import legacy_to_trajectories, save_out_npy
from bridge_torch.data.raw import BadTrajectory, read_trajectory
from bridge_torch.data.store import write_store

log = logging.getLogger(__name__)
LATENCY_CUTOFF = dt.datetime(2021, 7, 23)
DONE_MARKER = ".convert_done.json"
FORMATS = ("numpy", "packed", "both")


@dataclass(frozen=True)
class ConvertOptions:
    """Everything a worker needs, passed explicitly (no fork-only globals, bug 12)."""

    input_path: Path
    output_path: Path
    depth: int = 5
    train_proportion: float = 0.9
    im_size: int = 128
    saliency: bool = False
    seed: int = 0
    format: str = "numpy"
    cameras: tuple[str, ...] = ("images0",)


def collection_dirs(input_path: Path, depth: int) -> list[Path]:
    """Directories ``depth-1`` levels below ``input_path`` (``input_path`` itself for depth 1)."""
    if depth <= 1:
        return [input_path]
    pattern = str(input_path / Path(*(["*"] * (depth - 1))))
    return sorted(Path(p) for p in glob(pattern) if Path(p).is_dir())


def output_dir(collection: Path, options: ConvertOptions) -> Path:
    keep = max(options.depth - 1, 1)
    return options.output_path / Path(*collection.parts[-keep:])


def _split_rng(options: ConvertOptions, dated: Path) -> np.random.Generator:
    """A generator keyed by (seed, dated folder path relative to the input): worker-independent."""
    key = f"{options.seed}:{dated.relative_to(options.input_path).as_posix()}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def process_dated_folder(dated: Path, options: ConvertOptions,
                         skipped: Counter) -> tuple[list[dict], list[dict]]:
    """Convert one ``YYYY-MM-DD_HH-MM-SS`` folder; returns (train, val) trajectory lists."""
    if "lmdb" in str(dated):
        log.warning("skipping %s: lmdb data is not supported", dated)
        skipped["lmdb folder"] += 1
        return [], []
    try:
        date = dt.datetime.strptime(dated.name, "%Y-%m-%d_%H-%M-%S")
    except ValueError:
        log.warning("skipping %s: folder name is not a date YYYY-MM-DD_HH-MM-SS", dated)
        skipped["non-date folder"] += 1
        return [], []
    trajs = sorted(Path(p) for p in glob(str(dated / "raw" / "traj_group*" / "traj*")))
    if not trajs:
        log.warning("no trajectories found in %s", dated)
        skipped["folder without trajectories"] += 1
        return [], []
    order = _split_rng(options, dated).permutation(len(trajs))
    num_train = int(len(trajs) * options.train_proportion)
    train, val = [], []
    for i, index in enumerate(order):
        try:
            traj = read_trajectory(trajs[index], im_size=options.im_size,
                                   latency_shift=date < LATENCY_CUTOFF, saliency=options.saliency)
        except BadTrajectory as err:
            log.warning("skipping trajectory %s (%s)", trajs[index], err)
            skipped[err.reason] += 1
            continue
        (train if i < num_train else val).append(traj)
    return train, val


def convert_collection(collection: Path, options: ConvertOptions, overwrite: bool
                       ) -> dict[str, Any]:
    """Convert one collection directory; returns a summary (counts of written and skipped)."""
    out = output_dir(collection, options)
    summary: dict[str, Any] = {"collection": str(collection), "train": 0, "val": 0,
                               "skipped": Counter(), "status": "done"}
    if (out / DONE_MARKER).is_file() and not overwrite:
        log.info("skipping %s: already converted (use --overwrite)", out)
        summary["status"] = "already converted"
        return summary
    if out.exists():  # a previous run was interrupted, or --overwrite
        shutil.rmtree(out)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for dated in sorted(p for p in collection.iterdir() if p.is_dir()):
        train, val = process_dated_folder(dated, options, summary["skipped"])
        splits["train"] += train
        splits["val"] += val
    for split, trajs in splits.items():
        summary[split] = len(trajs)
        if trajs:
            _write_split(out / split, trajs, options)
        else:
            log.warning("%s: no %s trajectories; writing no %s/ split", collection, split, split)
    if splits["train"] or splits["val"]:
        (out / DONE_MARKER).write_text(json.dumps({k: summary[k] for k in ("train", "val")}))
    else:
        summary["status"] = "empty"
    return summary


def _write_split(split_dir: Path, trajs: list[dict], options: ConvertOptions) -> None:
    split_dir.mkdir(parents=True, exist_ok=True)
    if options.format in ("numpy", "both"):
        save_out_npy(split_dir / "out.npy", trajs)
    if options.format in ("packed", "both"):
        source = {"converted_from": str(split_dir), "im_size": options.im_size}
        write_store(split_dir / "packed", legacy_to_trajectories(trajs, split_dir),
                    cameras=options.cameras, source=source, progress=False)


def _worker(job: tuple[Path, ConvertOptions, bool]) -> dict[str, Any]:
    collection, options, overwrite = job
    try:
        return convert_collection(collection, options, overwrite)
    except Exception as err:  # report, never crash the pool
        log.error("failed to convert %s: %s", collection, err)
        return {"collection": str(collection), "train": 0, "val": 0, "status": "failed",
                "skipped": Counter({f"collection error: {type(err).__name__}": 1})}


def convert(options: ConvertOptions, *, num_workers: int = 8, overwrite: bool = False,
            progress: bool = True) -> list[dict[str, Any]]:
    """Convert every collection under ``options.input_path``; returns per-collection summaries."""
    if not options.input_path.is_dir():
        raise FileNotFoundError(f"--input_path {options.input_path} is not a directory")
    collections = collection_dirs(options.input_path, options.depth)
    if not collections:
        raise ValueError(f"no collection directories {options.depth - 1} levels below "
                         f"{options.input_path} (check --depth)")
    jobs = [(c, options, overwrite) for c in collections]
    bar = tqdm(total=len(jobs), desc="converting", unit="collection", disable=not progress)
    results = []
    if num_workers <= 1:
        for job in jobs:
            results.append(_worker(job))
            bar.update()
    else:
        with multiprocessing.get_context().Pool(num_workers) as pool:
            for result in pool.imap_unordered(_worker, jobs):
                results.append(result)
                bar.update()
    bar.close()
    return sorted(results, key=lambda r: r["collection"])


def format_summary(results: list[dict[str, Any]]) -> str:
    skipped: Counter = Counter()
    for r in results:
        skipped.update(r["skipped"])
    lines = [f"collections: {len(results)} "
             f"({Counter(r['status'] for r in results).most_common()})",
             f"trajectories written: train {sum(r['train'] for r in results)}, "
             f"val {sum(r['val'] for r in results)}",
             f"skipped: {sum(skipped.values())}"]
    lines += [f"  {count:5d}  {reason}" for reason, count in skipped.most_common()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--input_path", "--input-path", type=Path, required=True)
    add("--output_path", "--output-path", type=Path, required=True)
    add("--depth", type=int, default=5, help="levels from input_path to the dated folders")
    add("--train_proportion", "--train-proportion", type=float, default=0.9)
    add("--num_workers", "--num-workers", type=int, default=8)
    add("--im_size", "--im-size", type=int, default=128)
    add("--overwrite", action="store_true")
    add("--saliency", action="store_true", help="attach saliency_map.pkl as obs 'saliency'")
    add("--seed", type=int, default=0, help="seed of the per-dated-folder train/val split")
    add("--format", choices=FORMATS, default="numpy")
    add("--cameras", nargs="+", default=["images0"], help="cameras kept in packed stores")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not 0.0 < args.train_proportion <= 1.0:
        parser.error("--train_proportion must be in (0, 1]")
    options = ConvertOptions(args.input_path, args.output_path, args.depth, args.train_proportion,
                             args.im_size, args.saliency, args.seed, args.format,
                             tuple(args.cameras))
    results = convert(options, num_workers=args.num_workers, overwrite=args.overwrite)
    print(format_summary(results))


if __name__ == "__main__":
    main()
