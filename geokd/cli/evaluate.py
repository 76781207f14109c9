"""``geokd evaluate``: test error of checkpoints, with median ± sd over groups of runs."""

from __future__ import annotations

import argparse
import json
import os

from geokd.cli.data import add_dataset_options, dataset_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="test error of networks (run directories, checkpoints, the authors' pickles, network specs)",
        description=(
            "Print the test error of each checkpoint and, for each group (files that differ only "
            "by a trailing _<seed>, or --group), the median ± sd (sample sd, n-1)."
        ),
    )
    parser.add_argument("checkpoints", nargs="+", metavar="NETWORK",
                        help="run directories, checkpoint files (globs and $VARS allowed, e.g. "
                             "'$GEOKD_RELEASED_DIR/GKD_*.pth') or network specs such as "
                             "'torchvision:resnet18?num_classes=10@weights.pt'")
    parser.add_argument("--dataset", required=True,
                        help="dataset name (cifar10, cifar100, digits, mnist, fashion-mnist), "
                             "imagefolder:PATH or MODULE:CALLABLE[?k=v&...]")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--data-root", default=None, help="dataset cache folder (default: ~/.cache/geokd)")
    add_dataset_options(parser)
    parser.add_argument("--group", action="append", default=[], metavar="NAME=GLOB",
                        help="a group of checkpoints by file-name glob (repeatable); replaces the prefix groups")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None,
                        help="networks evaluated at once on the CPU (default: number of torch threads)")
    parser.set_defaults(handler=_run)


def _parse_groups(specs: list[str]) -> dict[str, str]:
    groups = {}
    for spec in specs:
        name, sep, pattern = spec.partition("=")
        if not sep or not name or not pattern:
            raise ValueError(f"--group: expected NAME=GLOB, got {spec!r}")
        groups[name] = pattern
    return groups


def _run(args: argparse.Namespace) -> int:
    from geokd.data import load_dataset
    from geokd.evaluate import evaluate_checkpoints, expand_checkpoints, group_by_patterns, summarize_groups

    patterns = _parse_groups(args.group)
    checkpoints = expand_checkpoints(args.checkpoints)  # before the dataset: a glob that matches nothing fails fast
    dataset = load_dataset(args.dataset, split=args.split, root=args.data_root, **dataset_options(args))
    results = evaluate_checkpoints(checkpoints, dataset, batch_size=args.batch_size, device=args.device,
                                   workers=args.workers)
    groups = group_by_patterns([r.name for r in results], patterns) if patterns else None
    summaries = summarize_groups(results, groups)

    width = max(len(r.name) for r in results)
    print(f"{args.dataset} {args.split}: {len(dataset)} images")
    for r in results:
        print(f"{r.name:<{width}}  error {r.error:6.2f} %  ({r.wrong}/{r.total})")
    shown = {g: s for g, s in summaries.items() if s.n > 1 or patterns}
    if shown:
        print()
        gwidth = max(len(g) for g in shown)
        for group, s in shown.items():
            sd = f"{s.sd:.2f}" if s.sd is not None else "n/a"
            print(f"{group:<{gwidth}}  n={s.n:<3} median {s.median:.2f} % ± {sd}  (mean {s.mean:.2f}, "
                  f"min {s.minimum:.2f}, max {s.maximum:.2f})")
    if args.json:
        payload = {
            "dataset": args.dataset,
            "split": args.split,
            "results": [{"checkpoint": r.name, "error": r.error, "wrong": r.wrong, "total": r.total} for r in results],
            "groups": {g: s.as_dict() for g, s in summaries.items()},
        }
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
    return 0
