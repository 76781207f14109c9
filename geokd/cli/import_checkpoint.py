"""``geokd import-checkpoint``: convert the GKD authors' pickles into geokd checkpoints."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import-checkpoint",
        help="convert released whole-module pickles into geokd checkpoints (safely)",
        description=(
            "Read the GKD authors' released networks (whole-module pickles) without running any "
            "code from them, and write geokd checkpoints (plain state dict + model config, with a "
            ".sha256 beside each)."
        ),
    )
    parser.add_argument("sources", nargs="+", metavar="SRC", help="released .pth files")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the geokd checkpoints")
    parser.add_argument("--sha256sums", metavar="FILE",
                        help="refuse any SRC whose sha256 is not the one listed in FILE (sha256sum format)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from geokd.checkpoints import import_released_checkpoint, read_sha256sums

    sums = read_sha256sums(args.sha256sums) if args.sha256sums else None
    if sums is not None:
        unlisted = [s for s in args.sources if os.path.basename(s) not in sums]
        if unlisted:
            raise ValueError(f"not listed in {args.sha256sums}: {', '.join(unlisted)}")
    for source in args.sources:
        name = os.path.basename(source)
        stem = name[: -len(".pth")] if name.endswith(".pth") else os.path.splitext(name)[0]
        record = import_released_checkpoint(
            source,
            os.path.join(args.out, stem + ".pt"),
            expected_sha256=sums[name] if sums is not None else None,
        )
        config = record["model_config"]
        checked = " (sha256 verified)" if sums is not None else ""
        print(
            f"{source} -> {record['destination']}: {config['name']}-{config['depth']}-{config['widen_factor']:g}, "
            f"{config['num_classes']} classes{checked}"
        )
    return 0
