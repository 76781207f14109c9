"""``geokd data``: fetch datasets into the cache and describe them."""

from __future__ import annotations

import argparse
import time

from geokd.data import available_datasets, dataset_defaults, dataset_folder, fetch_dataset, load_dataset


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="fetch and inspect datasets",
                                   description="Fetch datasets into the cache and describe them.")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    fetch = actions.add_parser("fetch", help="download, verify and cache a dataset")
    fetch.add_argument("name", choices=available_datasets())
    fetch.add_argument("--root", default=None,
                       help="cache folder (default: $GEOKD_CACHE or ~/.cache/geokd)")
    fetch.set_defaults(handler=_fetch)

    info = actions.add_parser("info", help="describe a cached dataset (never downloads)")
    info.add_argument("name", choices=available_datasets())
    info.add_argument("--root", default=None,
                      help="cache folder (default: $GEOKD_CACHE or ~/.cache/geokd)")
    info.set_defaults(handler=_info)


def _fetch(args: argparse.Namespace) -> int:
    if args.name == "digits":
        print("digits: bundled with scikit-learn, nothing to fetch")
        return 0
    start = time.perf_counter()
    existed = dataset_folder(args.name, args.root).exists()
    folder = fetch_dataset(args.name, root=args.root, progress=None)
    status = "already cached, re-verified" if existed else "fetched, verified and cached"
    print(f"{args.name}: {status} in {folder} ({time.perf_counter() - start:.1f} s)")
    return 0


def _info(args: argparse.Namespace) -> int:
    lines = [f"dataset:   {args.name}"]
    for split in ("train", "test"):
        ds = load_dataset(args.name, split=split, root=args.root, download=False)
        counts = ds.labels.bincount(minlength=ds.num_classes).tolist()
        lines.append(f"{split + ':':<10} {len(ds)} images of {tuple(ds.image_shape)}, per class {counts}")
    lines += [
        f"classes:   {ds.num_classes}",
        f"mean:      {tuple(round(v, 4) for v in ds.mean)}",
        f"std:       {tuple(round(v, 4) for v in ds.std)}",
        f"augment:   {dataset_defaults(args.name)}",
        f"source:    {ds.source}",
    ]
    if args.name != "digits":
        lines.append(f"folder:    {dataset_folder(args.name, args.root)}")
    print("\n".join(lines))
    return 0
