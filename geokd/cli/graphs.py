"""``geokd graphs``: draw networks' graphs at each sensing point under each graph variant."""

from __future__ import annotations

import sys

from geokd.cli.data import add_dataset_options, dataset_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "graphs",
        help="heat maps of networks' graphs of a node set, per sensing point and graph variant (PNG, PDF, NPZ)",
        description="Build each NETWORK's graph of a class-balanced node set at every sensing point under "
                    "every graph variant, exactly as the GKD loss builds it, and draw it as a heat map with "
                    "the nodes sorted by class and the class boundaries marked. With --teacher, the teacher "
                    "is drawn too and the other networks' graphs take its k-NN masks, as a student's do in "
                    "the loss. Writes OUT/graphs.npz (the matrices) and OUT/<network>.png/.pdf/.csv.",
    )
    parser.add_argument("networks", nargs="*", metavar="NETWORK",
                        help="run directories, checkpoints or network specs (anything `geokd analyze` takes)")
    parser.add_argument("--teacher", help="a teacher drawn first, whose k-NN masks the other networks take")
    parser.add_argument("--graphs", nargs="+", metavar="NAME", default=["cos-sym-full-all-p1"],
                        help="graph variants (GraphSpec names, e.g. cos-sym-full-all-p1 cos-sym-k10-inter-p1 "
                             "cos-sym-full-all-p2; default: the paper's cos-sym-full-all-p1)")
    parser.add_argument("--layers", nargs="+", help="sensing points (default: a geokd model's own)")
    parser.add_argument("--student-layers", nargs="+",
                        help="the other networks' sensing points when their names differ from the teacher's")
    parser.add_argument("--dataset", default="cifar10", help="dataset name or spec (default cifar10)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-class", type=int, default=10,
                        help="nodes per class (default 10: 100 nodes on CIFAR-10, readable heat maps)")
    parser.add_argument("--node-seed", type=int, default=0)
    add_dataset_options(parser)
    parser.add_argument("--data-root", default=None, help="dataset cache folder (default: ~/.cache/geokd)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", required=True, help="output folder")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from geokd.analysis.graph_views import network_graphs, write_graph_views
    from geokd.analysis.nodes import balanced_node_set
    from geokd.analysis.sources import expand_networks, network_from_path
    from geokd.data import load_dataset
    from geokd.graphs.spec_names import parse_graph_names

    parse_graph_names(args.graphs, where="--graphs")   # a wrong name fails before any loading
    if not args.networks and not args.teacher:
        raise ValueError("expected at least one NETWORK (or --teacher), got none")
    if args.per_class < 1:
        raise ValueError(f"--per-class: expected a positive number of nodes per class, got {args.per_class}")
    networks = [network_from_path(p) for p in expand_networks(args.networks)]
    teacher = network_from_path(args.teacher, method="teacher") if args.teacher else None
    data = load_dataset(args.dataset, split=args.split, root=args.data_root, **dataset_options(args))
    labels = data.labels.numpy()
    nodes = balanced_node_set(labels, per_class=args.per_class, seed=args.node_seed)
    print(f"graphs of {len(networks) + (teacher is not None)} networks on {nodes.size} nodes under "
          f"{len(args.graphs)} variants", file=sys.stderr)
    views = network_graphs(networks, data.images, labels, graphs=args.graphs, node_indices=nodes,
                           mean=list(data.mean), std=list(data.std), teacher=teacher, layers=args.layers,
                           student_layers=args.student_layers, device=args.device, batch_size=args.batch_size)
    for path in write_graph_views(views, args.out):
        print(path)
    return 0
