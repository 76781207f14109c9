"""``geokd methods``: run BYOT, selective KD, IEP or MHGD on digits and print their rows.

Examples::

    geokd methods byot --epochs 15
    geokd methods selective
    geokd methods iep --figure figures/iep/digits_teacher_embedding

The study rows of the same systems (over seeds, beside every other method) are
``geokd reproduce digits-methods``.
"""

from __future__ import annotations

import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "methods",
        help="whole distillation systems on digits: BYOT, selective KD, IEP, MHGD",
        description="Train one of the whole-system methods on the embedded digits data (one seed, each method's "
                    "own small recipe) and print a table. To compare them with every other method over seeds, "
                    "on one student and recipe, run `geokd reproduce digits-methods`.",
    )
    parser.add_argument("method", choices=("byot", "selective", "iep", "mhgd"))
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of every network (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small nets: 1 is fastest)")
    parser.add_argument("--figure", default=None,
                        help="iep only: also write the 3-D embedding figure to this path stem (.png/.pdf/.csv)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    import torch

    from geokd.methods import digits

    if args.epochs < 1:
        raise ValueError(f"--epochs: expected >= 1, got {args.epochs}")
    torch.set_num_threads(max(1, args.threads))
    if args.method == "byot":
        rows = digits.run_byot(epochs=args.epochs, seed=args.seed, device=args.device)
    elif args.method == "selective":
        rows = digits.run_selective(epochs=args.epochs, seed=args.seed, device=args.device)
    else:
        teacher, _ = digits.train_teacher(epochs=args.epochs, seed=args.seed, device=args.device)
        rows = digits.run_graph_method(args.method, epochs=args.epochs, seed=args.seed, device=args.device,
                                       teacher=teacher)
        if args.method == "iep" and args.figure:
            from geokd.methods.iep_figure import plot_stage_embeddings

            _, batches, x_test, y_test = digits.digits_data(seed=args.seed, device=args.device)
            codes, _ = digits.iep_codes_by_stage(teacher, batches, x_test, device=args.device)
            paths = plot_stage_embeddings(codes, y_test.cpu().numpy(), path_stem=args.figure,
                                          titles=("layer1", "layer2", "layer3"))
            print("wrote " + ", ".join(paths))
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    print("\t".join(keys))
    for row in rows:
        print("\t".join(_fmt(row.get(k, "")) for k in keys))
    return 0


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
