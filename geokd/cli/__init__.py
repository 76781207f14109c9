"""The ``geokd`` command line.

Thin by design: each subcommand lives in its own module of this package, which
exposes ``register(subparsers)``; the module parses arguments, calls the library and
prints. Subcommand modules are discovered automatically, so adding a command means
adding one file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from geokd import __version__
from geokd.errors import DirectoryLockedError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geokd",
        description="Geometric knowledge distillation: graphs, losses, training and analysis.",
    )
    parser.add_argument("--version", action="version", version=f"geokd {__version__}")
    parser.add_argument(
        "--released-dir", metavar="DIR", default=None,
        help="folder of the GKD authors' released networks (github.com/cadurosar/graph_kd: "
             "WideResNet28-1_0.pth, GKD_*.pth, RKD_*.pth); give it before the command. Sets "
             "$GEOKD_RELEASED_DIR for this process, so every command and study file sees it "
             "(read by geokd.checkpoints.released.released_dir(); default: $GEOKD_RELEASED_DIR, else "
             "../shared/graph_kd beside the checkout when that folder exists)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.released_dir is not None:
        # One setting for the whole process: studies' $GEOKD_RELEASED_DIR and released_dir() read it.
        os.environ["GEOKD_RELEASED_DIR"] = os.path.abspath(os.path.expanduser(args.released_dir))
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, DirectoryLockedError) as exc:
        # Library errors already say what was expected and what came: show them plainly.
        print(f"geokd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
