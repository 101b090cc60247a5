"""RLDS conversion benchmark: episodes/s and input MB/s of ``bridge-torch-convert --input_format
rlds`` on CPU, for each number of worker processes.

Run:  python bench/rlds_convert.py [--shards 16] [--episodes-per-shard 8] [--workers 1 2]
                                  [--im-size 128] [--cameras image_0] [--json results.json]

Builds a RAIL-format release (``bridge_dataset`` 1.0.0) in a temporary directory by repeating
the records of the checked-in test fixture (256x256 JPEGs, 5-12 steps per episode) over
``--shards`` shards, then times the whole ``bridge-torch-convert`` command as a user runs it (a
process of its own: start-up, shard decoding in workers, resume bookkeeping, packing the final
stores) once per entry of ``--workers``, each into a fresh output directory, so ``--workers 1 2
1 2`` times four full conversions alternately. Also times the pieces in this process: CRC32C
over every shard byte, framing + Example parsing, decoding + resizing the selected cameras'
JPEGs, and the final merge of the per-shard stores (``--merge-rounds`` times, alternately:
concatenating them as the converter does, and feeding every trajectory through ``write_store``
again as it did before). Prints a table; the last line is the results as one JSON object.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bridge_torch.data.sources import rlds
from bridge_torch.data.sources.convert_output import DONE_MARKER, PACKED_DIR
from bridge_torch.data.sources.crc32c import crc32c
from bridge_torch.data.sources.rlds_convert import ShardJob, convert_shard
from bridge_torch.data.sources.tfds import open_tfds
from bridge_torch.data.sources.tfrecord import iter_records, parse_example, write_records
from bridge_torch.data.store import open_store, write_store
from bridge_torch.data.store_concat import concat_stores
from common import emit

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "rlds" / \
    "bridge_dataset" / "1.0.0"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--episodes-per-shard", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--im-size", type=int, default=128)
    parser.add_argument("--cameras", default="image_0", help="comma-separated")
    parser.add_argument("--merge-rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def build_release(root: Path, shards: int, per_shard: int) -> Path:
    """A one-split release of ``shards`` x ``per_shard`` episodes copied from the fixture."""
    records = [data for shard in sorted(FIXTURE.glob("*.tfrecord-*"))
               for _, _, data in iter_records(shard)]
    release = root / "bridge_dataset" / "1.0.0"
    release.mkdir(parents=True)
    (release / "features.json").write_text((FIXTURE / "features.json").read_text())
    info = json.loads((FIXTURE / "dataset_info.json").read_text())
    info["splits"] = [{**info["splits"][0], "shardLengths": [str(per_shard)] * shards}]
    (release / "dataset_info.json").write_text(json.dumps(info))
    for i in range(shards):
        write_records(release / f"bridge_dataset-train.tfrecord-{i:05d}-of-{shards:05d}",
                      [records[(i * per_shard + k) % len(records)] for k in range(per_shard)])
    return release


def time_pieces(release: Path, cameras: tuple[str, ...], im_size: int) -> dict[str, float]:
    """Seconds for CRC alone, reading + parsing, and reading + parsing + decoding (1 process)."""
    shards = sorted(release.glob("*.tfrecord-*"))
    start = time.perf_counter()
    for shard in shards:
        crc32c(shard.read_bytes())
    crc = time.perf_counter() - start
    start = time.perf_counter()
    for shard in shards:
        for index, _, data in iter_records(shard):
            parse_example(data, shard, index)
    parse = time.perf_counter() - start
    dataset = open_tfds(release)
    variant = rlds.detect_variant(dataset)
    stores = rlds.resolve_cameras(variant, cameras)
    start = time.perf_counter()
    for shard in dataset.splits["train"]:
        for index, _, features in rlds.shard_examples(shard):
            rlds.to_trajectory(dataset, variant, features, shard, index, cameras=stores,
                               im_size=im_size)
    return {"crc_s": crc, "read_parse_s": parse, "read_parse_decode_s":
            time.perf_counter() - start}


def time_merge(release: Path, cameras: tuple[str, ...], im_size: int, work: Path,
               rounds: int) -> dict[str, list[float]]:
    """Seconds of merging the per-shard stores into one, by concatenation (``concat_s``) and by
    re-writing every trajectory (``rewrite_s``, the earlier route), alternately."""
    dataset = open_tfds(release)
    variant = rlds.detect_variant(dataset)
    stores = rlds.resolve_cameras(variant, cameras)
    parts = []
    for shard in dataset.splits["train"]:
        job = ShardJob(dataset, variant, shard, stores, im_size, None, 5, work / shard.path.name)
        report = convert_shard(job)
        if report.error:
            raise RuntimeError(report.error)
        parts += [job.work_dir / PACKED_DIR] if report.written else []
    times: dict[str, list[float]] = {"concat_s": [], "rewrite_s": []}
    for _ in range(rounds):
        for key, times_of_route in times.items():
            start = time.perf_counter()
            if key == "concat_s":
                concat_stores(work / "merged", parts, progress=False)
            else:
                opened = [open_store(p) for p in parts]
                write_store(work / "merged", (s.trajectory(i) for s in opened
                                              for i in range(s.num_trajectories)),
                            cameras=stores, progress=False)
            times_of_route.append(time.perf_counter() - start)
            shutil.rmtree(work / "merged")
    return times


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cameras = tuple(c for c in args.cameras.split(",") if c)
    with tempfile.TemporaryDirectory() as tmp:
        release = build_release(Path(tmp), args.shards, args.episodes_per_shard)
        megabytes = sum(p.stat().st_size for p in release.glob("*.tfrecord-*")) / 1e6
        episodes = args.shards * args.episodes_per_shard
        pieces = time_pieces(release, cameras, args.im_size)
        merge = time_merge(release, cameras, args.im_size, Path(tmp) / "merge",
                           args.merge_rounds)
        print(f"release: {episodes} episodes in {args.shards} shards, {megabytes:.1f} MB; "
              f"cameras {list(cameras)} -> {args.im_size}x{args.im_size}")
        print(f"in-process pieces: CRC32C {megabytes / pieces['crc_s']:.0f} MB/s, read+parse "
              f"{megabytes / pieces['read_parse_s']:.0f} MB/s, read+parse+decode "
              f"{episodes / pieces['read_parse_decode_s']:.1f} episodes/s")
        print("merge of the per-shard stores: concatenation "
              + ", ".join(f"{s:.3f}" for s in merge["concat_s"]) + " s; every trajectory "
              "re-written (before) " + ", ".join(f"{s:.3f}" for s in merge["rewrite_s"]) + " s")
        rows = []
        for run, workers in enumerate(args.workers):
            # a fresh directory per run: a repeated worker count must not find the last
            # run's finished output (it would report "already converted" in no time)
            output = Path(tmp) / f"out-{run}"
            command = [sys.executable, "-m", "bridge_torch.data.sources.convert",
                       "--input_format", "rlds", "--input_path", str(release), "--output_path",
                       str(output), "--im_size", str(args.im_size), "--cameras", ",".join(cameras),
                       "--num_workers", str(workers)]
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            status = "converted" if result.returncode == 0 and (output / DONE_MARKER).is_file() \
                else f"failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"
            shutil.rmtree(output, ignore_errors=True)
            rows.append({"workers": workers, "status": status, "seconds": seconds,
                         "episodes_per_s": episodes / seconds, "mb_per_s": megabytes / seconds})
            print(f"workers {workers}: {seconds:6.2f} s  {episodes / seconds:7.1f} episodes/s  "
                  f"{megabytes / seconds:6.1f} MB/s", flush=True)
    return emit({"benchmark": "rlds_convert", "episodes": episodes, "shards": args.shards,
                 "megabytes": megabytes, "cameras": list(cameras), "im_size": args.im_size,
                 **pieces, "merge": merge, "results": rows}, args.json)


if __name__ == "__main__":
    main()
