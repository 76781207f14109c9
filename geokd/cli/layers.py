"""``geokd layers NETWORK``: every tappable module name of a network, with its output shape."""

from __future__ import annotations

_DEFAULT_SHAPES = {"torchvision": (3, 224, 224)}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "layers",
        help="list a network's module names (sensing points for --layers) with their output shapes",
        description="Run NETWORK once on a zero input and print every module name that --layers accepts, "
                    "its output shape, and the shape of its input (the NAME:input pre-activation tap). "
                    "NETWORK is a run directory, a checkpoint, or a spec such as "
                    "'torchvision:resnet18?num_classes=10[@weights.pt]' or 'package.module:factory'.",
    )
    parser.add_argument("network", metavar="NETWORK")
    parser.add_argument("--input-shape", type=int, nargs="+", metavar="N",
                        help="one input's shape, e.g. 3 32 32 (default: 3 224 224 for torchvision "
                             "networks, else 3 32 32 or the geokd model's in_channels)")
    parser.add_argument("--all", action="store_true", help="also list modules that cannot be tapped")
    parser.set_defaults(handler=run)


def _input_shape(args, model) -> tuple[int, ...]:
    if args.input_shape:
        if any(n < 1 for n in args.input_shape):
            raise ValueError(f"--input-shape: expected positive sizes, got {args.input_shape}")
        return tuple(args.input_shape)
    if args.network.startswith("torchvision:"):
        return _DEFAULT_SHAPES["torchvision"]
    config = getattr(model, "config", None)
    channels = config().get("in_channels", 3) if callable(config) else 3
    return (channels, 32, 32)


def run(args) -> int:
    import torch

    from geokd.checkpoints import load_network
    from geokd.models.layer_table import format_layer_table, layer_table

    model = load_network(args.network)
    shape = _input_shape(args, model)
    rows = layer_table(model, torch.zeros(1, *shape))
    shown = rows if args.all else [r for r in rows if r.tappable]
    points = getattr(model, "sensing_points", None)
    print(f"{args.network}: {type(model).__name__}, input {' x '.join(map(str, shape))}, "
          f"{len(shown)} of {len(rows)} modules shown" + ("" if args.all else " (tappable; --all for every one)"))
    if points:
        print(f"default sensing points: {' '.join(points)}")
    print(format_layer_table(shown))
    return 0
