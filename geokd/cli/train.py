"""``geokd train CONFIG.toml [--set key=value ...] --run-dir DIR [--resume]``."""

from __future__ import annotations

import argparse
import os
import sys

_EPILOG = """examples:
  geokd train analysis/digits_teacher.toml --run-dir runs/teacher
  geokd train my.toml --run-dir runs/gkd --set optim.lr=0.05 --set 'terms=[{loss="gkd", weight=25.0}]'
  torchrun --nproc_per_node=2 -m geokd train my.toml --run-dir runs/ddp   (data-parallel, gloo on CPU)
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train one network (teacher or distilled student) from a TOML config",
        description="Train one run: cross-entropy plus the config's weighted distillation terms.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="TOML config file (sections data, model, optim, schedule, terms, run)")
    parser.add_argument("--run-dir", required=True, help="run directory (config, metrics, checkpoints)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. optim.lr=0.05 (value read as TOML); repeatable")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last epoch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1… (default: cpu)")
    parser.add_argument("--teacher", help="teacher run directory or checkpoint (overrides the config's)")
    parser.set_defaults(handler=run)


def _print_epoch(record: dict) -> None:
    terms = " ".join(f"{k}={v:.4g}" for k, v in record["train_terms"].items() if v is not None)
    ce = record["train_cross_entropy"]
    print(f"epoch {record['epoch']:>3}  lr {record['lr']:.4g}  ce {ce if ce is None else format(ce, '.4f')}  "
          f"{terms}  train acc {record['train_accuracy']:.2f}%  test error {record['test_error']:.2f}%  "
          f"{record['seconds']:.1f}s", flush=True)


def run(args) -> int:
    from geokd.train import load_config, train

    overrides = list(args.overrides)
    if args.teacher:
        overrides.append(f'teacher="{args.teacher}"')
    config = load_config(args.config, overrides=overrides)
    rank = int(os.environ.get("RANK", "0"))
    # The bar shows progress on a terminal; elsewhere (CI, logs) one plain line per epoch.
    plain = not sys.stderr.isatty() or bool(os.environ.get("CI"))
    result = train(config, run_dir=args.run_dir, device=args.device, resume=args.resume,
                   on_epoch_end=_print_epoch if plain else None)
    if rank == 0:
        print(f"finished: test error {result.final_test_error:.2f}% after {len(result.metrics)} epochs, "
              f"{result.train_seconds:.1f}s of training; run in {result.run_dir}")
    return 0
