"""``bridge-torch-convert --input_format rlds``: a TFDS/RLDS BridgeData release -> packed stores.

Shards are decoded in parallel worker processes, each into small per-shard stores under
``<output>/.rlds-work/`` and marked finished with a ``done.json``; an interrupted conversion run
again redoes only the unfinished shards. The workers write through :func:`write_store`, which
computes the relabelled actions and statistics as for every other source. Once every shard is
done, the per-shard stores are concatenated (:func:`concat_stores`: array payloads copied, index
shifted, statistics merged exactly), in split / shard / record order (independent of worker
scheduling), into ``<output>/<split>/packed`` (or ``<output>/<task>/<split>/packed`` with
``group_by="task"``); ``conversion.json`` is written last and the work directory removed. A
corrupt shard (truncated, CRC mismatch, a record that is not an Example, fewer or more records
than the metadata states) fails the conversion naming shard and record; no final store is
written then.

TFDS split names map to our split directories: ``train`` -> ``train``; ``val`` and ``test`` (the
Open X-Embodiment copy's held-out split) -> ``val``.
"""

import argparse
import itertools
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bridge_torch.data.sources import rlds
from bridge_torch.data.sources.convert_output import (
    DONE_MARKER,
    PACKED_DIR,
    check_output_path,
    is_finished,
    reason_lines,
)
from bridge_torch.data.sources.tfds import Shard, TfdsDataset, open_tfds
from bridge_torch.data.sources.tfrecord import TFRecordError
from bridge_torch.data.sources.worker_pool import results_as_completed
from bridge_torch.data.store import Trajectory, open_store, write_json_atomic, write_store
from bridge_torch.data.store_concat import concat_stores

log = logging.getLogger(__name__)
WORK_DIR, SETTINGS_FILE, SHARD_DONE = ".rlds-work", "settings.json", "done.json"
SPLIT_MAP = {"train": "train", "val": "val", "test": "val"}
GROUP_BY = ("task",)


class RldsConversionError(RuntimeError):
    """Some shards could not be read; finished shards are kept for the next run."""


@dataclass(frozen=True)
class RldsOptions:
    """Settings of one RLDS conversion."""

    input_path: Path  # the TFDS directory, e.g. <dir>/bridge_dataset/1.0.0
    output_path: Path
    im_size: int = 128
    cameras: tuple[str, ...] = ("images0",)  # store names or the release's image feature names
    splits: tuple[str, ...] | None = None  # TFDS split names; None: all
    group_by: str | None = None  # None: one store per split; "task": one per task directory
    depth: int = 5  # with group_by: tasks keep depth-1 path components, as raw conversions
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.im_size < 1 or self.depth < 1:
            raise ValueError(f"im_size and depth must be >= 1, got {self.im_size}, {self.depth}")
        if self.group_by is not None and self.group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {GROUP_BY} or None, got {self.group_by!r}")

    def settings(self) -> dict[str, Any]:
        """What determines the output (recorded in conversion.json and the work directory)."""
        return {"input_format": "rlds", "im_size": self.im_size, "cameras": list(self.cameras),
                "splits": list(self.splits) if self.splits else None,
                "group_by": self.group_by, "depth": self.depth}


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs for one shard (passed explicitly: workers are spawned)."""

    dataset: TfdsDataset
    variant: rlds.Variant
    shard: Shard
    cameras: tuple[str, ...]
    im_size: int
    group_by: str | None
    depth: int
    work_dir: Path  # this shard's per-group stores and done.json


@dataclass
class ShardReport:
    """What one shard produced."""

    shard: str
    split: str
    written: dict[str, int] = field(default_factory=dict)  # group -> episodes
    skipped: Counter = field(default_factory=Counter)  # reason -> episodes
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first record skipped
    error: str = ""

    def skip(self, skip: rlds.SkipEpisode) -> None:
        log.warning("skipping episode (%s): %s", skip.reason, skip.detail)
        self.skipped[skip.reason] += 1
        self.examples.setdefault(skip.reason, skip.detail.split(":", 1)[0])


@dataclass
class RldsReport:
    """The outcome of :func:`convert_rlds`."""

    dataset: str
    variant: str
    status: str = "converted"
    episodes: dict[str, int] = field(default_factory=dict)  # our split -> episodes written
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    stores: list[str] = field(default_factory=list)  # relative to output_path
    shards: int = 0
    resumed_shards: int = 0


def _positions(job: ShardJob, report: ShardReport) -> dict[str, list[tuple[int, int]] | None]:
    """Group -> ``(record index, byte offset)`` of its episodes; ``{"": None}`` (the whole shard
    in one pass) without grouping. Grouping reads the shard twice instead of holding it."""
    if job.group_by is None:
        return {"": None}
    groups: dict[str, list[tuple[int, int]]] = {}
    for index, offset, features in rlds.shard_examples(job.shard):
        try:
            task = rlds.task_of(job.variant, features, job.depth,
                                f"{job.shard.path.name} record {index}")
        except rlds.SkipEpisode as skip:
            report.skip(skip)
            continue
        groups.setdefault(task, []).append((index, offset))
    return dict(sorted(groups.items()))


def _trajectories(job: ShardJob, report: ShardReport, positions: list | None
                  ) -> Iterator[Trajectory]:
    for index, _, features in rlds.shard_examples(job.shard, positions):
        try:
            yield rlds.to_trajectory(job.dataset, job.variant, features, job.shard, index,
                                     cameras=job.cameras, im_size=job.im_size)
        except rlds.SkipEpisode as skip:
            report.skip(skip)


def convert_shard(job: ShardJob) -> ShardReport:
    """Decode one shard into ``job.work_dir``; never raises (the error is in the report)."""
    report = ShardReport(job.shard.path.name, job.shard.split)
    try:
        shutil.rmtree(job.work_dir, ignore_errors=True)  # leftovers of an interrupted run
        job.work_dir.mkdir(parents=True)
        for group, positions in _positions(job, report).items():
            trajectories = _trajectories(job, report, positions)
            first = next(trajectories, None)
            if first is None:
                continue
            store = write_store(job.work_dir / group / PACKED_DIR,
                                itertools.chain([first], trajectories), cameras=job.cameras,
                                progress=False)
            report.written[group] = open_store(store).num_trajectories
        write_json_atomic(job.work_dir / SHARD_DONE, {
            "written": report.written, "skipped": dict(report.skipped),
            "examples": report.examples})
    except TFRecordError as err:
        report.error = str(err)
    except Exception as err:  # a bug or I/O error: reported, the shard is redone next run
        log.exception("unexpected error converting %s", job.shard.path)
        report.error = f"{job.shard.path}: {type(err).__name__}: {err}"
    return report


def _done_report(job: ShardJob) -> ShardReport | None:
    """The report of a shard finished by an earlier run, or None."""
    try:
        done = json.loads((job.work_dir / SHARD_DONE).read_text())
        return ShardReport(job.shard.path.name, job.shard.split, dict(done["written"]),
                           Counter(done["skipped"]), dict(done["examples"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_shards(jobs: list[ShardJob], num_workers: int, progress: bool) -> list[ShardReport]:
    """Reports of the pending jobs, converted in worker processes (in-process for <= 1)."""
    bar = tqdm(total=sum(j.shard.num_records for j in jobs), desc="decoding shards",
               unit="episode", disable=not progress)
    reports = []
    with results_as_completed(convert_shard, jobs, num_workers) as results:
        for job, future in results:
            try:
                reports.append(future.result())
            except Exception as err:  # BrokenProcessPool: a killed worker
                reports.append(ShardReport(job.shard.path.name, job.shard.split,
                                           error=f"{job.shard.path}: worker died ({err})"))
            bar.update(job.shard.num_records)
    bar.close()
    return reports


def _plan(options: RldsOptions) -> tuple[TfdsDataset, rlds.Variant, tuple[str, ...], list[str]]:
    """Dataset, variant, store cameras and the TFDS splits to convert (checked up front)."""
    dataset = open_tfds(options.input_path)
    variant = rlds.detect_variant(dataset)
    cameras = rlds.resolve_cameras(variant, options.cameras)
    splits = list(options.splits or dataset.splits)
    unknown = [s for s in splits if s not in dataset.splits]
    unmapped = [s for s in splits if s not in SPLIT_MAP]
    if unknown or unmapped:
        raise ValueError(f"{dataset.path}: splits {unknown or unmapped} cannot be converted; it "
                         f"has {list(dataset.splits)}, and {list(SPLIT_MAP)} map to train/val")
    ours = Counter(SPLIT_MAP[s] for s in splits)
    if any(n > 1 for n in ours.values()):
        raise ValueError(f"splits {splits} would share one split directory ({SPLIT_MAP}); "
                         "choose them with --splits")
    if options.group_by == "task" and not variant.file_path:
        raise ValueError(f"{dataset.path}: group_by task needs episode_metadata/file_path, "
                         f"which the {variant.name} release does not have")
    return dataset, variant, cameras, splits


def _prepare_work_dir(options: RldsOptions) -> Path:
    """The work directory, emptied first when it holds shards of other settings."""
    work = Path(options.output_path) / WORK_DIR
    settings = {**options.settings(), "input_path": str(Path(options.input_path).absolute())}
    try:
        same = json.loads((work / SETTINGS_FILE).read_text()) == settings
    except (OSError, ValueError):
        same = False
    if not same or options.overwrite:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_json_atomic(work / SETTINGS_FILE, settings)
    return work


def _merge(options: RldsOptions, dataset: TfdsDataset, variant: rlds.Variant,
           jobs: list[ShardJob], reports: dict[str, ShardReport],
           progress: bool) -> tuple[list[str], dict[str, int]]:
    """Concatenate the per-shard stores into the final ones; returns their paths and split
    counts. The workers' stores already hold the relabelled actions and statistics (per
    trajectory, and mergeable), so no trajectory is read or written one by one again."""
    parts: dict[tuple[str, str], list[Path]] = {}
    episodes: Counter = Counter()
    for job in jobs:  # split, then shard index order
        for group, count in reports[job.shard.path.name].written.items():
            parts.setdefault((SPLIT_MAP[job.shard.split], group), []).append(
                job.work_dir / group / PACKED_DIR)
            episodes[SPLIT_MAP[job.shard.split]] += count
    stores = []
    for (split, group), paths in sorted(parts.items(), key=lambda item: item[0][::-1]):
        relative = Path(group) / split / PACKED_DIR
        source = {"kind": "RLDS BridgeData", "converter": "bridge-torch-convert",
                  "input_path": str(Path(options.input_path).absolute()),
                  "dataset": f"{dataset.name} {dataset.version}", "variant": variant.name,
                  "split": split, "task": group or None, "settings": options.settings()}
        concat_stores(Path(options.output_path) / relative, paths, source=source,
                      progress=progress)
        stores.append(relative.as_posix())
    return stores, dict(sorted(episodes.items()))


def _remove_stale(output: Path, old: list[str], new: list[str]) -> None:
    """Remove stores an earlier conversion wrote here that this one did not, and empty dirs."""
    for relative in sorted(set(old) - set(new)):
        store = output / relative
        if store.name == PACKED_DIR and (store / "meta.json").is_file():
            log.info("removing stale %s", store)
            shutil.rmtree(store)
            for parent in store.parents:
                if parent == output or any(parent.iterdir()):
                    break
                parent.rmdir()


def _previous_stores(output: Path) -> list[str]:
    try:
        return list(json.loads((output / DONE_MARKER).read_text()).get("stores", []))
    except (OSError, ValueError, AttributeError):
        return []


def convert_rlds(options: RldsOptions, *, num_workers: int = 8,
                 progress: bool = True) -> RldsReport:
    """Convert a TFDS/RLDS BridgeData directory into packed stores (module docstring).

    Raises:
        DatasetFormatError / ValueError: unusable metadata, unknown variant, camera or split.
        RldsConversionError: some shards are corrupt (each error names shard and record).
    """
    dataset, variant, cameras, splits = _plan(options)
    output = Path(options.output_path)
    check_output_path(output)
    report = RldsReport(f"{dataset.name} {dataset.version}", variant.name)
    old_stores = _previous_stores(output)
    if (output / DONE_MARKER).is_file() and is_finished(output, options):
        shutil.rmtree(output / WORK_DIR, ignore_errors=True)
        report.status, report.stores = "already converted", old_stores
        return report
    work = _prepare_work_dir(options)
    jobs = [ShardJob(dataset, variant, shard, cameras, options.im_size, options.group_by,
                     options.depth, work / shard.split / shard.path.name)
            for split in splits for shard in dataset.splits[split]]
    done = {job.shard.path.name: r for job in jobs if (r := _done_report(job)) is not None}
    pending = [job for job in jobs if job.shard.path.name not in done]
    report.shards, report.resumed_shards = len(jobs), len(done)
    if done:
        log.info("resuming: %d of %d shards were finished by an earlier run", len(done), len(jobs))
    fresh = _run_shards(pending, num_workers, progress)
    failed = [r.error for r in fresh if r.error]
    if failed:
        kept = len(jobs) - len(failed)
        raise RldsConversionError(f"{len(failed)} of {len(jobs)} shards failed ({kept} finished "
                                  "shards are kept; run again to resume):\n  "
                                  + "\n  ".join(sorted(failed)))
    reports = {**done, **{r.shard: r for r in fresh}}
    for r in reports.values():
        report.skipped.update(r.skipped)
        report.examples = {**r.examples, **report.examples}
    report.stores, report.episodes = _merge(options, dataset, variant, jobs, reports, progress)
    _remove_stale(output, old_stores, report.stores)
    write_json_atomic(output / DONE_MARKER, {
        "settings": options.settings(), "dataset": report.dataset, "variant": variant.name,
        "episodes": report.episodes, "skipped_episodes": dict(report.skipped),
        "stores": report.stores})
    shutil.rmtree(work, ignore_errors=True)
    return report


def format_report(report: RldsReport) -> str:
    """Human-readable summary: stores, episodes per split, skips per reason."""
    lines = [f"dataset: {report.dataset} ({report.variant}), {report.status}",
             f"shards: {report.shards} ({report.resumed_shards} finished by an earlier run)",
             "episodes written: " + (", ".join(f"{s} {n}" for s, n in report.episodes.items())
                                     or "-"),
             f"skipped episodes: {sum(report.skipped.values())}",
             *reason_lines(report.skipped, report.examples),
             "stores: " + (", ".join(report.stores) or "-")]
    return "\n".join(lines)


def run_cli(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``bridge-torch-convert --input_format rlds ...``; returns the exit status."""
    if args.saliency or args.format not in (None, "packed"):
        parser.error("--input_format rlds writes packed stores only (no --saliency, --format "
                     "numpy/both)")
    split_names = [s for arg in args.splits or [] for s in arg.split(",") if s]
    try:
        options = RldsOptions(args.input_path, args.output_path, im_size=args.im_size,
                              cameras=tuple(c for arg in args.cameras for c in arg.split(",")
                                            if c),
                              splits=tuple(split_names) or None, group_by=args.group_by,
                              depth=args.depth, overwrite=args.overwrite)
        report = convert_rlds(options, num_workers=args.num_workers)
    except RldsConversionError as err:
        log.error("%s", err)
        return 1
    except ValueError as err:
        parser.error(str(err))
    print(format_report(report))
    return 0
