"""``geokd report``: one self-contained HTML page from a saved analysis."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="a self-contained HTML report (figures embedded) of a `geokd analyze` output",
        description="Tell, layer by layer, how close each student method is to its teacher and where it "
                    "diverges, from DIR/metrics.json written by `geokd analyze`.",
    )
    parser.add_argument("directories", nargs="+", metavar="DIR",
                        help="output directory of `geokd analyze` (several merge: same teacher and node set)")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from geokd.report import write_report

    print(write_report(args.directories, args.out))
    return 0
