"""Run-directory chores shared by the system runners (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

from geokd.train.runs import RunDir, environment_info, utc_now


def fresh_run_dir(run_dir: Path) -> RunDir:
    """A run directory ready for a run that cannot resume: the leftovers of an interrupted
    run are moved aside to ``<dir>.interrupted-<n>`` (kept, not deleted)."""
    run = RunDir(run_dir)
    if run.path.is_dir() and any(p.name != "lock" for p in run.path.iterdir()):
        with run.lock():  # refuses if a live process is still writing it
            pass
        n = 1
        while run.path.with_name(f"{run.path.name}.interrupted-{n}").exists():
            n += 1
        run.path.rename(run.path.with_name(f"{run.path.name}.interrupted-{n}"))
    return run


def start_run(run: RunDir, config_table: dict, *, seed: int, device) -> None:
    """``config.json`` and a ``meta.json`` with status ``running``, as the trainer writes them."""
    run.write_json(run.config_path, config_table)
    run.write_json(run.meta_path, {"seed": seed, "device": str(device), "environment": environment_info(),
                                   "start_time": utc_now(), "status": "running"})


def write_metrics(run: RunDir, records: list[dict]) -> None:
    from geokd.train.state import atomic_write_bytes

    atomic_write_bytes(run.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def lr_at(config, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under the config's multi-step schedule."""
    passed = sum(1 for m in config.schedule.milestones if m <= epoch)
    return config.optim.lr * config.schedule.gamma ** passed


def require_sgd(config, system: str) -> None:
    from geokd.errors import ConfigError

    if config.optim.name != "sgd":
        raise ConfigError(f"system {system!r}: its training loop uses SGD (optim.lr, momentum, weight_decay); "
                          f"got optim.name={config.optim.name!r}")
