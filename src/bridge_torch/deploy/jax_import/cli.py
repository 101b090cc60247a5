"""``bridge-torch-import-jax``: a released BridgeData V2 JAX checkpoint -> a bridge-torch run.

    bridge-torch-import-jax checkpoint_300000/ --config gcbc_256_config.json \\
        --output_path runs/gcbc_256

The run directory it writes loads with ``Policy.from_run`` like a trained run.
"""

import argparse
import logging
import sys
from pathlib import Path

from bridge_torch.cli_errors import CliParser, debug_requested, user_errors
from bridge_torch.deploy.jax_import.errors import JaxImportError
from bridge_torch.deploy.jax_import.importer import import_checkpoint

log = logging.getLogger(__name__)


def build_parser() -> CliParser:
    """The options of ``bridge-torch-import-jax``."""
    parser = CliParser(prog="bridge-torch-import-jax", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path,
                        help="checkpoint_<step>/ directory, its 'checkpoint' file, or a bare "
                             "checkpoint_<step> file (flax before orbax)")
    parser.add_argument("--config", type=Path, required=True,
                        help="the <name>_config.json released with the checkpoint")
    parser.add_argument("--output_path", "--out", type=Path, required=True, metavar="DIR",
                        help="run directory to create (must not exist)")
    parser.add_argument("--im_size", type=int, default=None,
                        help="image size the policy was trained at (default: the number in "
                             "the config's name, e.g. 256 in gcbc_256_config.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Import; on a refusal print the reason and exit 1 with nothing written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors(parser.prog, debug=debug_requested(args)):
        try:
            run_dir = import_checkpoint(args.checkpoint, args.config, args.output_path,
                                        args.im_size)
        except JaxImportError as err:
            print(f"{parser.prog}: error: {err}", file=sys.stderr)
            return 1
    print(f"run_dir: {run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
