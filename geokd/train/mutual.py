r"""Deep Mutual Learning: two students trained together, each taught by the other.

Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning" (CVPR 2018). No pre-trained
teacher: student :math:`k` minimizes its cross-entropy plus the KL divergence from its
peer's prediction to its own,

.. math:: L_{\Theta_1} = \mathrm{CE}(z_1, y) + \mathrm{KL}(p_2 \,\|\, p_1), \qquad
          L_{\Theta_2} = \mathrm{CE}(z_2, y) + \mathrm{KL}(p_1 \,\|\, p_2),

the peer's prediction acting as a fixed target. As in the paper's Algorithm 1 the updates
alternate on each batch: update :math:`\Theta_1`, *recompute* :math:`p_1` with the updated
network, then update :math:`\Theta_2`. (The recomputation is a forward pass in training
mode whose batch-norm running statistics are restored, so each network's statistics
see each batch once.) With ``temperature`` :math:`T \ne 1` both KL terms are computed on
softened predictions and scaled by :math:`T^2`, as in Hinton KD; the paper uses :math:`T=1`.

The data, model, optimizer and schedule come from an ordinary
:class:`~geokd.train.config.TrainConfig` (its ``model`` is the first student); the peer is
the same architecture with its own initialization unless ``peer=`` names another.
Both students train in the layout of ``run.channels_last`` (unset: channels-last on a CPU,
channels-first elsewhere, as in :func:`~geokd.train.loop.fit`), and ``config.json`` records
the layout used.
The run directory holds ``config.json``, ``meta.json``, ``metrics.jsonl`` (one record per
epoch with both students' numbers) and one finished sub-run per student
(``student_1/``, ``student_2/``, each with ``model.pt`` and ``meta.json``), usable as a
teacher or for analysis like any other run.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from geokd.errors import ConfigError
from geokd.losses.kd import kd_loss
from geokd.train.build import build_parts
from geokd.models.layout import batch_in_layout
from geokd.train.config import TrainConfig, config_to_dict, with_resolved_layout
from geokd.train.distributed import DistributedContext
from geokd.train.loop import _optimizer, evaluate
from geokd.train.runs import RunDir, environment_info, utc_now

__all__ = ["MutualResult", "mutual_losses", "mutual_step", "train_mutual"]


@dataclass
class MutualResult:
    """What :func:`train_mutual` returns (everything is also on disk in ``run_dir``)."""

    run_dir: Path
    models: tuple[nn.Module, nn.Module]
    metrics: list[dict]
    final_test_errors: tuple[float, float]
    train_seconds: float


def mutual_losses(
    logits: torch.Tensor, peer_logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One student's DML terms: ``(CE(z, y), T²·KL(p_peer ‖ p))``; the peer carries no gradient.

    Examples
    --------
    >>> z = torch.tensor([[2.0, 0.0]])
    >>> ce, kl = mutual_losses(z, z, torch.tensor([0]))
    >>> round(float(ce), 4), float(kl)
    (0.1269, 0.0)
    """
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"dml: expected one label per input, {logits.shape[0]} labels of shape ({logits.shape[0]},), "
            f"got shape {tuple(labels.shape)}"
        )
    return F.cross_entropy(logits, labels), kd_loss(logits, peer_logits, temperature=temperature)


@contextlib.contextmanager
def _batchnorm_stats_restored(model: nn.Module) -> Iterator[None]:
    # The recomputed prediction must not count the batch twice in the running statistics.
    saved = [
        (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def mutual_step(
    models: tuple[nn.Module, nn.Module],
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """One DML step on a batch (Algorithm 1): update student 1, recompute its prediction, update student 2.

    Returns
    -------
    dict
        Detached ``ce_1, kl_1, ce_2, kl_2`` and the first-pass ``logits_1, logits_2``.
    """
    net1, net2 = models
    opt1, opt2 = optimizers
    logits1 = _logits(net1, x)
    logits2 = _logits(net2, x)
    ce1, kl1 = mutual_losses(logits1, logits2.detach(), y, temperature=temperature)
    opt1.zero_grad(set_to_none=True)
    (ce1 + kl1).backward()
    opt1.step()
    with torch.no_grad(), _batchnorm_stats_restored(net1):
        updated1 = _logits(net1, x)
    ce2, kl2 = mutual_losses(logits2, updated1, y, temperature=temperature)
    opt2.zero_grad(set_to_none=True)
    (ce2 + kl2).backward()
    opt2.step()
    values = {"ce_1": ce1, "kl_1": kl1, "ce_2": ce2, "kl_2": kl2, "logits_1": logits1, "logits_2": logits2}
    for name, v in values.items():
        if name.startswith(("ce", "kl")) and not torch.isfinite(v):
            raise FloatingPointError(f"dml: {name} became {float(v)}; stopping (lower the learning rate?)")
    return {k: v.detach() for k, v in values.items()}


def train_mutual(
    config: TrainConfig,
    *,
    run_dir: str | Path,
    peer: dict | None = None,
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
    on_epoch_end: Callable[[dict], None] | None = None,
    progress: bool | None = None,
) -> MutualResult:
    """Train two students together with Deep Mutual Learning.

    Parameters
    ----------
    config : TrainConfig
        Data, first student (``model``), optimizer, schedule and seed; both students use
        the same optimizer settings and schedule. ``teacher`` and ``terms`` must be empty.
    run_dir : path
        A new run directory (refused if it already holds a run).
    peer : dict, optional
        The second student as ``{"name": ..., **params}`` (registry name and keywords);
        default: the same architecture as ``config.model``, initialized independently.
    temperature : float
        Softening of both KL terms (1 in the paper; :math:`T^2`-scaled otherwise).
    device : str or torch.device
        Where to train.
    on_epoch_end : callable, optional
        Receives each epoch's metrics record.
    progress : bool, optional
        tqdm bar over epochs (default: on a terminal, off when ``CI`` is set).

    Returns
    -------
    MutualResult
    """
    if config.teacher is not None or config.terms:
        raise ConfigError(
            "dml: Deep Mutual Learning trains two students from the labels and each other; "
            f"expected no teacher and no terms, got teacher={config.teacher!r} and {len(config.terms)} terms"
        )
    if not temperature > 0 or temperature != temperature or temperature == float("inf"):
        raise ConfigError(f"dml: expected a finite temperature > 0, got {temperature!r}")
    device = torch.device(device)
    run = RunDir(run_dir)
    if run.metrics_path.is_file() or run.state_path.is_file() or (run.path / "student_1").exists():
        raise ConfigError(f"dml: run directory {run.path} already holds a run; choose another directory")
    parts, resolved = build_parts(config, device=device, ctx=DistributedContext())
    net1 = parts.student
    peer_config = _peer_config(parts.model_config, peer)
    from geokd.models import build_model

    try:
        net2 = build_model(**peer_config).to(device)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"dml: peer: {exc}") from None
    models = (net1, net2)
    resolved = with_resolved_layout(resolved, device)
    channels_last = resolved.run.channels_last
    if channels_last:
        for m in models:
            m.to(memory_format=torch.channels_last)
    optimizers = tuple(_optimizer(resolved, [p for p in m.parameters() if p.requires_grad]) for m in models)
    schedulers = [
        torch.optim.lr_scheduler.MultiStepLR(o, milestones=list(resolved.schedule.milestones), gamma=resolved.schedule.gamma)
        for o in optimizers
    ]
    show = (sys.stderr.isatty() and not os.environ.get("CI")) if progress is None else progress
    with run.lock():
        run.write_json(run.config_path, {
            **config_to_dict(resolved), "method": "dml", "peer": peer_config, "temperature": temperature,
        })
        run.write_json(run.meta_path, {
            "seed": resolved.run.seed, "device": str(device), "environment": environment_info(),
            "start_time": utc_now(), "status": "running",
        })
        elapsed = 0.0
        epochs = range(resolved.schedule.epochs)
        if show:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc="dml", dynamic_ncols=True)
        try:
            for epoch in epochs:
                t0 = time.perf_counter()
                lr = optimizers[0].param_groups[0]["lr"]
                record = _train_epoch(models, optimizers, parts.train_batches, temperature, device,
                                      channels_last=channels_last)
                for s in schedulers:
                    s.step()
                seconds = time.perf_counter() - t0
                elapsed += seconds
                record = {
                    "epoch": epoch + 1,
                    "lr": lr,
                    **record,
                    "test_error_1": evaluate(net1, parts.test_batches, device=device, channels_last=channels_last),
                    "test_error_2": evaluate(net2, parts.test_batches, device=device, channels_last=channels_last),
                    "seconds": seconds,
                }
                run.append_metrics(record)
                if on_epoch_end is not None:
                    on_epoch_end(record)
        except BaseException:
            run.update_meta(status="failed", end_time=utc_now())
            raise
        metrics = run.read_metrics()
        for index, (model, cfg) in enumerate(zip(models, (parts.model_config, peer_config)), start=1):
            _save_student(run.path / f"student_{index}", model, cfg, resolved, metrics, index, elapsed)
        run.update_meta(status="finished", end_time=utc_now(), train_seconds=elapsed)
    final = (metrics[-1]["test_error_1"], metrics[-1]["test_error_2"]) if metrics else (float("nan"),) * 2
    return MutualResult(run.path, models, metrics, final, elapsed)


def _peer_config(first: dict, peer: dict | None) -> dict:
    if peer is None:
        return copy.deepcopy(first)
    if not isinstance(peer, dict) or "name" not in peer:
        raise ConfigError(f"dml: expected peer as {{'name': ..., **params}}, got {peer!r}")
    cfg = dict(peer)
    cfg.setdefault("num_classes", first.get("num_classes"))
    return cfg


def _train_epoch(models, optimizers, batches, temperature, device, *, channels_last: bool) -> dict:
    for m in models:
        m.train()
    sums = torch.zeros(6, dtype=torch.float64, device=device)  # ce1, kl1, correct1, ce2, kl2, correct2
    seen = 0
    for x, y in batches:
        x = batch_in_layout(x, channels_last=channels_last)
        out = mutual_step(models, optimizers, x, y, temperature=temperature)
        n = y.shape[0]
        seen += n
        sums += torch.stack([
            out["ce_1"].double() * n, out["kl_1"].double() * n, (out["logits_1"].argmax(1) == y).sum().double(),
            out["ce_2"].double() * n, out["kl_2"].double() * n, (out["logits_2"].argmax(1) == y).sum().double(),
        ])
    if seen == 0:
        raise ValueError("dml: expected at least one training batch, got none")
    ce1, kl1, acc1, ce2, kl2, acc2 = (sums / seen).tolist()
    return {
        "train_cross_entropy_1": ce1, "train_kl_1": kl1, "train_accuracy_1": 100.0 * acc1,
        "train_cross_entropy_2": ce2, "train_kl_2": kl2, "train_accuracy_2": 100.0 * acc2,
    }


def _save_student(path: Path, model, model_cfg, config, metrics, index, elapsed) -> None:
    from geokd.checkpoints import save_checkpoint

    sub = RunDir(path)
    sub.path.mkdir(parents=True, exist_ok=True)
    save_checkpoint(sub.model_path, model, model_config=model_cfg, extra={"method": "dml", "student": index})
    final = metrics[-1][f"test_error_{index}"] if metrics else None
    sub.write_json(sub.meta_path, {
        "status": "finished", "method": "dml", "student": index, "seed": config.run.seed,
        "final_test_error": final, "train_seconds": elapsed, "end_time": utc_now(),
    })
