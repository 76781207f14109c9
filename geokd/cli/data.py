"""``geokd data``: fetch datasets into the cache and describe them."""

from __future__ import annotations

import argparse
import time

from geokd.data import (available_datasets, dataset_defaults, dataset_folder, fetch_dataset, load_dataset,
                        write_image_folder)


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

    export = actions.add_parser(
        "export", help="write a dataset's split as an ImageFolder of lossless PNGs",
        description="Write SPLIT of DATASET as OUT/SPLIT/<class>/<index>.png (torchvision ImageFolder "
                    "layout), readable back bit-exactly as --dataset imagefolder:OUT.")
    export.add_argument("name", metavar="DATASET")
    export.add_argument("--split", default="test", help="split to write (default: test)")
    export.add_argument("--out", required=True, help="the ImageFolder's root folder")
    export.add_argument("--root", default=None, help="cache folder (default: $GEOKD_CACHE or ~/.cache/geokd)")
    export.set_defaults(handler=_export)


def add_dataset_options(parser) -> None:
    """``--image-size``, ``--mean`` and ``--std``: how a dataset's images are prepared."""
    parser.add_argument("--image-size", type=int, default=None, metavar="N",
                        help="resize the shorter side to N and centre-crop N x N (imagefolder: and "
                             "MODULE:CALLABLE datasets; default: the images' own size, which must agree)")
    parser.add_argument("--mean", type=float, nargs="+", default=None,
                        help="input normalization mean per channel (default: the dataset's; measured on "
                             "the training images for imagefolder: and MODULE:CALLABLE)")
    parser.add_argument("--std", type=float, nargs="+", default=None,
                        help="input normalization std per channel (default: as for --mean)")


def dataset_options(args) -> dict:
    """The :func:`geokd.data.load_dataset` keywords of :func:`add_dataset_options`' flags."""
    if (args.mean is None) != (args.std is None):
        raise ValueError(f"expected --mean and --std together, got only --{'mean' if args.std is None else 'std'}")
    return {"image_size": args.image_size,
            "mean": None if args.mean is None else tuple(args.mean),
            "std": None if args.std is None else tuple(args.std)}


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


def _export(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.name, split=args.split, root=args.root)
    folder = write_image_folder(dataset, args.out, split=args.split, progress=None)
    print(f"{args.name} {args.split}: {len(dataset)} images as PNG in {folder / args.split}; "
          f"read them with --dataset imagefolder:{folder}")
    return 0
