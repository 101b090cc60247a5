"""``bridge-torch-sim``: closed-loop benchmark on Meta-World (needs the ``sim`` extra).

    bridge-torch-sim collect --tasks reach-v3,push-v3 --episodes 50 --output_path sim/ --im_size 64
    bridge-torch-train data_path=sim/data algo=gc_bc ...
    bridge-torch-sim eval runs/bridgedata_torch/gc_bc_<...> --tasks reach-v3,push-v3 --episodes 20

``collect`` writes scripted-expert demonstrations straight into packed stores under
``<out>/data`` (one task directory per task, train and val splits) and lists each episode's
(task, variation, seed) in ``<out>/episodes.json``. ``eval`` rolls the run's policy out on
held-out episodes (seeds from ``--seed``, disjoint from collection's) with the camera its training
data was collected with (flags override it) and writes ``report.json`` and GIFs
(goal | observation) to ``--output_path`` (default ``<run dir>/sim_eval``).
"""

import argparse
import json
import logging
from pathlib import Path

import torch

from bridge_torch.atomic import write_text_atomic
from bridge_torch.cli_errors import CliParser, debug_requested, fail, user_errors
from bridge_torch.sim.env import DEFAULT_CAMERA, CameraConfig


def _tasks(text: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tasks:
        raise argparse.ArgumentTypeError(f"expected comma-separated task names, got {text!r}")
    return tasks


def _position(text: str) -> tuple[float, float, float] | None:
    if text.lower() == "default":
        return None
    try:
        x, y, z = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x,y,z in metres or 'default', got {text!r}"
                                         ) from None
    return x, y, z


def _add_camera(parser: argparse.ArgumentParser, *, from_dataset: bool = False) -> None:
    """Camera flags; with ``from_dataset`` a flag left out keeps the dataset's value."""
    default = DEFAULT_CAMERA

    def initial(value: object) -> object:
        return argparse.SUPPRESS if from_dataset else value

    parser.add_argument("--camera", default=initial(default.name), help="Meta-World camera name")
    parser.add_argument("--camera_pos", type=_position, default=initial(default.position),
                        help="camera position x,y,z (metres) or 'default' (scene's own)")
    parser.add_argument("--render_size", type=int, default=initial(default.image_size),
                        help="rendered frame side in pixels")


def _camera(args: argparse.Namespace, base: CameraConfig = DEFAULT_CAMERA) -> CameraConfig:
    """The camera flags given, the others from ``base``."""
    return CameraConfig(getattr(args, "camera", base.name),
                        getattr(args, "camera_pos", base.position),
                        getattr(args, "render_size", base.image_size))


def _run_camera(run_dir: Path) -> CameraConfig:
    """The camera of the run's training data when ``collect`` wrote it, else the default."""
    from bridge_torch.sim.collect import recorded_camera

    config = run_dir / "config.json"
    data_path = json.loads(config.read_text())["data_path"] if config.is_file() else None
    camera = recorded_camera(data_path) if data_path else None
    if camera is None:
        logging.getLogger(__name__).warning(
            "%s: no bridge-torch-sim collect manifest found for its data_path; using the default "
            "camera unless --camera/--camera_pos/--render_size say otherwise", run_dir)
        return DEFAULT_CAMERA
    return camera


def build_parser() -> CliParser:
    """The ``collect`` and ``eval`` sub-commands and their options."""
    from bridge_torch.sim.closed_loop import DEFAULT_EVAL_SEED, SimEvalSettings

    parser = CliParser(prog="bridge-torch-sim", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    collect = commands.add_parser("collect", help="expert demonstrations -> BridgeData dataset")
    collect.add_argument("--tasks", type=_tasks, required=True, help="e.g. reach-v3,push-v3")
    collect.add_argument("--episodes", type=int, required=True, help="train demos per task")
    collect.add_argument("--val_episodes", type=int, default=5, help="val demos per task")
    collect.add_argument("--output_path", "--out", type=Path, required=True, metavar="DIR",
                         help="data/ and episodes.json go here")
    collect.add_argument("--seed", type=int, default=0, help="first episode seed")
    collect.add_argument("--im_size", type=int, default=128,
                         help="side of the stored training frames")
    _add_camera(collect)
    evaluate = commands.add_parser("eval", help="closed-loop success of a trained run")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--tasks", type=_tasks, required=True)
    evaluate.add_argument("--episodes", type=int, default=SimEvalSettings.episodes,
                          help="held-out episodes per task")
    evaluate.add_argument("--seed", type=int, default=DEFAULT_EVAL_SEED,
                          help="first held-out episode seed")
    evaluate.add_argument("--max_steps", type=int, default=SimEvalSettings.max_steps)
    evaluate.add_argument("--videos", type=int, default=SimEvalSettings.videos_per_task,
                          help="GIFs per task")
    evaluate.add_argument("--checkpoint", default=None, help="step or path; default: latest")
    evaluate.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    evaluate.add_argument("--output_path", "--out", type=Path, default=None, metavar="DIR",
                          help="report.json and GIFs (default <run_dir>/sim_eval)")
    _add_camera(evaluate, from_dataset=True)
    return parser


def _collect(args: argparse.Namespace) -> None:
    from bridge_torch.sim.collect import collect

    data = collect(list(args.tasks), args.episodes, args.output_path,
                   val_episodes=args.val_episodes, seed=args.seed, camera=_camera(args),
                   im_size=args.im_size)
    print(f"data_path: {data}")


def _evaluate(args: argparse.Namespace) -> None:
    from bridge_torch.deploy.policy import BatchedPolicy
    from bridge_torch.sim.closed_loop import SimEvalSettings, evaluate_policy, format_table

    checkpoint = int(args.checkpoint) if args.checkpoint and args.checkpoint.isdigit() \
        else args.checkpoint
    policy = BatchedPolicy.from_run(args.run_dir, checkpoint, device=args.device)
    settings = SimEvalSettings(args.tasks, args.episodes, args.seed, args.max_steps,
                               _camera(args, _run_camera(args.run_dir)), args.videos)
    out = args.output_path if args.output_path is not None else args.run_dir / "sim_eval"
    report = evaluate_policy(policy, settings, video_dir=out)
    report["run_dir"], report["checkpoint"] = str(args.run_dir), args.checkpoint
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1))
    print(format_table(report))
    print(f"report: {out / 'report.json'}")


def main(argv: list[str] | None = None) -> None:
    """``bridge-torch-sim``: run the sub-command; user errors end it with one ``error:`` line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.command == "eval" and not args.run_dir.is_dir():
        parser.error(f"run directory {args.run_dir} does not exist")
    try:
        with user_errors(parser.prog, debug=debug_requested(args)):
            if args.command == "collect":
                _collect(args)
            else:
                _evaluate(args)
    except ImportError as error:  # the sim extra is missing: say how to install it
        fail(parser.prog, error)


if __name__ == "__main__":
    main()
