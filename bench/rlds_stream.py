"""First-run packing benchmark of training straight from a TFDS directory: seconds to pack every
shard of the train split into an empty cache, for each number of packing worker processes
(``rlds.num_workers``).

Run:  python bench/rlds_stream.py [--shards 16] [--episodes-per-shard 8] [--workers 1 2 1 2]
                                  [--im-size 128] [--json results.json]

Builds the RAIL-format release of ``bench/rlds_convert.py`` (the test fixture's records repeated
over ``--shards`` shards), then, once per entry of ``--workers`` (so ``1 2 1 2`` alternates, which
evens out other load on the machine), opens its train split as training does
(``open_tfds_split``, camera ``images0``) in a process of its own with a fresh, empty
``$BRIDGE_TORCH_CACHE``, and times that call: worker start-up included, interpreter start-up not.
Also reports the CPU seconds that process and its workers spent meanwhile: CPU / wall is how many
cores the packing got (less than the workers when other processes compete for them). Prints a
table; the last line is the results as one JSON object.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import emit
from rlds_convert import build_release

CHILD = """import json, resource, sys, time
from pathlib import Path
from bridge_torch.data.rlds_stream import open_tfds_split
def cpu():
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
start, cpu_start = time.perf_counter(), cpu()
(stores,) = open_tfds_split(Path(sys.argv[1]), [["**"]], [], "train", camera="images0",
                            im_size=int(sys.argv[2]), progress=False, num_workers=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - start, "cpu_s": cpu() - cpu_start,
                  "episodes": sum(s.num_trajectories for s in stores)}))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--episodes-per-shard", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 1, 2])
    parser.add_argument("--im-size", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    episodes = args.shards * args.episodes_per_shard
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        release = build_release(Path(tmp), args.shards, args.episodes_per_shard)
        print(f"release: {episodes} episodes in {args.shards} shards; images0 -> "
              f"{args.im_size}x{args.im_size}")
        for run, workers in enumerate(args.workers):
            env = {**os.environ, "BRIDGE_TORCH_CACHE": str(Path(tmp) / f"cache-{run}")}
            result = subprocess.run([sys.executable, "-c", CHILD, str(release),
                                     str(args.im_size), str(workers)],
                                    capture_output=True, text=True, env=env)
            if result.returncode != 0:
                raise SystemExit(f"packing with {workers} workers failed:\n{result.stderr}")
            timed = json.loads(result.stdout.splitlines()[-1])
            if timed["episodes"] != episodes:
                raise SystemExit(f"{workers} workers packed {timed['episodes']} episodes, "
                                 f"expected {episodes}")
            rows.append({"workers": workers, "seconds": timed["seconds"],
                         "cpu_s": timed["cpu_s"], "episodes_per_s": episodes / timed["seconds"]})
            print(f"workers {workers}: {timed['seconds']:6.2f} s  "
                  f"{episodes / timed['seconds']:7.1f} episodes/s  CPU {timed['cpu_s']:6.2f} s "
                  f"({timed['cpu_s'] / timed['seconds']:.2f} cores busy)", flush=True)
    return emit({"benchmark": "rlds_stream", "episodes": episodes, "shards": args.shards,
                 "im_size": args.im_size, "results": rows}, args.json)


if __name__ == "__main__":
    main()
