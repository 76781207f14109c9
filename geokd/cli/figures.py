"""``geokd figures``: draw the paper's figures from a saved analysis (no recomputation)."""

from __future__ import annotations

import os


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "figures",
        help="draw figures (PNG, PDF, CSV) and the error table from a `geokd analyze` output",
        description="Read DIR/metrics.json (and DIR/heatmaps.npz) written by `geokd analyze` and draw "
                    "smoothness, consistency, distance and heat-map figures plus the error table.",
    )
    parser.add_argument("directories", nargs="+", metavar="DIR",
                        help="output directory of `geokd analyze` (several merge: same teacher and node set)")
    parser.add_argument("--out", help="where to write the figures (default DIR/figures of the first DIR)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    out = args.out or os.path.join(args.directories[0], "figures")
    from geokd.plots import draw_saved_analysis

    written = draw_saved_analysis(args.directories, out)
    for path in written:
        print(path)
    return 0
