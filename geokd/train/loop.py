"""The one training loop: cross-entropy plus weighted distillation terms.

:func:`fit` trains already-built parts (:class:`TrainingParts`) under a
:class:`~geokd.train.config.TrainConfig`; :func:`geokd.train.train` builds those parts
from the config and calls it. A teacher run is the same loop with no terms.

Per step: the student's sensing points are read through taps; the teacher (frozen, eval
mode, ``no_grad``) likewise; the loss is ``CE + sum(weight * term)``. Loss modules may
carry trainable parameters (added to the optimizer), ``init_epochs`` (train with that
term alone first), ``clip_to_task_gradient`` (its gradient on the student's parameters is
scaled down to the CE gradient's norm there), ``student_taps`` / ``teacher_taps`` (other
layers than the model's sensing points) and ``needs_teacher``.

Teacher-fitting stage: a loss module with ``fit_epochs > 0`` and a method
``fit_teacher(teacher_taps, train_batches, *, epochs, device) -> list[float]`` (IEP's MPNNs,
MHGD's attention) is fitted on the teacher once, after the parts are built and before the
student's first step, with its own optimizer; the losses per fitting epoch go into the
first epoch's metrics record (``"teacher_fit"``). The module is then frozen while the
student trains: outside the student's optimizer, ``requires_grad`` off, eval mode. Its
fitted state is saved with the other terms' state, so a resumed run skips the stage. The
stage's time counts in the run's ``train_seconds``.

Every epoch ends with an evaluation on the test set, one line in ``metrics.jsonl`` and an
atomically written resumable state holding the model, optimizer, scheduler, loss
modules and every RNG state, so a resumed run is bit-identical on CPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from geokd.errors import ConfigError
from geokd.models.outputs import ModelOutputs
from geokd.models.layout import batch_in_layout
from geokd.train.config import TrainConfig, config_to_dict, with_resolved_layout
from geokd.train.distributed import DistributedContext
from geokd.train.runs import RunDir, environment_info, utc_now
from geokd.train.state import capture_rng, read_state, restore_rng, write_state

__all__ = ["Term", "TrainingParts", "RunResult", "NonFiniteLossError", "fit", "evaluate", "term_names"]


class NonFiniteLossError(FloatingPointError, ValueError):
    """A loss term or gradient became NaN/Inf; the last good checkpoint is kept."""


@dataclass
class Term:
    """A built distillation term: ``weight * module(student, teacher, labels)``."""

    name: str
    weight: float
    module: nn.Module

    @property
    def init_epochs(self) -> int:
        return int(getattr(self.module, "init_epochs", 0) or 0)

    @property
    def clip_to_task_gradient(self) -> bool:
        return bool(getattr(self.module, "clip_to_task_gradient", False))

    @property
    def needs_teacher(self) -> bool:
        return bool(getattr(self.module, "needs_teacher", True))

    @property
    def fit_epochs(self) -> int:
        """Epochs of the module's teacher-fitting stage (0: it has none)."""
        if not callable(getattr(self.module, "fit_teacher", None)):
            return 0
        return int(getattr(self.module, "fit_epochs", 0) or 0)


@dataclass
class TrainingParts:
    """Everything :func:`fit` trains with, already built.

    ``train_batches`` is re-iterated each epoch and must draw all its randomness from
    ``generator`` (saved and restored with the state); ``student_taps`` / ``teacher_taps``
    are callables ``x -> ModelOutputs`` whose features follow ``student_points`` /
    ``teacher_points``; a term whose module names other taps gets them by name from
    ``extra_taps(model, names)``.
    """

    student: nn.Module
    student_taps: Callable[[torch.Tensor], ModelOutputs]
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    generator: torch.Generator
    student_points: tuple[str, ...] = ()
    teacher: nn.Module | None = None
    teacher_taps: Callable[[torch.Tensor], ModelOutputs] | None = None
    teacher_points: tuple[str, ...] = ()
    terms: list[Term] = field(default_factory=list)
    term_taps: dict[str, tuple[Callable | None, Callable | None]] = field(default_factory=dict)
    model_config: dict = field(default_factory=dict)

    def teacher_taps_for(self, term: Term) -> Callable[[torch.Tensor], ModelOutputs] | None:
        """The teacher taps ``term`` reads: its own if its module names some, else the model's."""
        _, t_extra = self.term_taps.get(term.name, (None, None))
        return t_extra or self.teacher_taps


@dataclass
class RunResult:
    """What a finished run returns (everything is also on disk in ``run_dir``)."""

    run_dir: Path
    model: nn.Module
    metrics: list[dict]
    final_test_error: float
    train_seconds: float
    resumed_from_epoch: int = 0


def term_names(terms: list[Term]) -> list[str]:
    return [t.name for t in terms]


def _progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, *, device: torch.device | str = "cpu",
             amp: str | None = None, channels_last: bool = False) -> float:
    """Top-1 error in percent of ``model`` over ``(x, y)`` batches (eval mode, restored after)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    wrong = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    try:
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            x = batch_in_layout(x, channels_last=channels_last)
            with _autocast(device, amp):
                out = model(x)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            wrong += (logits.argmax(dim=1) != y).sum()
            total += y.shape[0]
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: expected at least one test batch, got none")
    return 100.0 * wrong.item() / total


def _optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    o = config.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov)
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)


def _select(outputs: ModelOutputs, indices: list[int] | None) -> ModelOutputs:
    if indices is None:
        return outputs
    return ModelOutputs(outputs.logits, [outputs.features[i] for i in indices])


def _grad_norm(grads: list[torch.Tensor | None]) -> torch.Tensor:
    present = [g for g in grads if g is not None]
    if not present:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(present)))


class _Stepper:
    """One optimisation step; kept apart from the epoch bookkeeping.

    ``params`` are all the optimized parameters, the student's first: the first
    ``n_student`` of them (default all; the rest belong to loss modules, e.g. FitNet's
    regressor).
    """

    def __init__(self, parts: TrainingParts, config: TrainConfig, ctx: DistributedContext,
                 device: torch.device, params: list[nn.Parameter], optimizer, scaler, *, n_student: int | None = None):
        self.parts, self.config, self.ctx, self.device = parts, config, ctx, device
        self.params, self.optimizer, self.scaler = params, optimizer, scaler
        self.student_params = params if n_student is None else params[:n_student]
        self.sync_each_step = device.type == "cpu" or config.run.skip_nonfinite_steps
        self.teacher_needed = parts.teacher is not None and any(t.needs_teacher for t in parts.terms)

    def losses(self, x: torch.Tensor, y: torch.Tensor, epoch: int):
        """(CE or None, [term values], active terms) for this batch at this epoch (0-based)."""
        parts, ctx = self.parts, self.ctx
        init_terms = [t for t in parts.terms if t.init_epochs > epoch]
        active = init_terms or [t for t in parts.terms if not getattr(t.module, "init_only", False)]
        with _autocast(self.device, self.config.run.amp):
            # The teacher's forwards go first: their transient buffers are then freed before
            # the student's forward and reused by it. Run after it, with the student's saved
            # activations still held, they were fresh memory on every step (CPU, WRN-28-1
            # teacher, batch 128: ~19k page faults and 65 ms of kernel time per step, more
            # than the GKD term itself). The teacher uses no randomness: results are unchanged.
            teacher = None
            teacher_outs = {}
            with torch.no_grad():
                if self.teacher_needed and any(t.needs_teacher for t in active):
                    teacher = parts.teacher_taps(x)
                for term in active:
                    _, t_extra = parts.term_taps.get(term.name, (None, None))
                    if t_extra is not None and term.needs_teacher:
                        teacher_outs[term.name] = t_extra(x)
            student = parts.student_taps(x)
            ce = None if init_terms else F.cross_entropy(student.logits, y)
            values = []
            for term in active:
                s_extra, _ = parts.term_taps.get(term.name, (None, None))
                s_out = student if s_extra is None else s_extra(x)
                t_out = teacher_outs.get(term.name, teacher)
                labels = y
                if ctx.enabled and self.config.run.global_batch_graph:
                    s_out = ctx.gather_outputs(s_out, with_grad=True)
                    t_out = ctx.gather_outputs(t_out, with_grad=False) if t_out is not None else None
                    labels = ctx.gather(y)
                values.append(term.module(s_out, t_out, labels).float())
        return ce, values, active, student.logits

    def step(self, x, y, *, epoch: int, step: int):
        """Forward, backward, step; returns (ce, values, active, logits, skipped)."""
        self.optimizer.zero_grad(set_to_none=True)
        ce, values, active, logits = self.losses(x, y, epoch)
        weights = [t.weight for t in active]
        plain = [w * v for w, v, t in zip(weights, values, active) if not t.clip_to_task_gradient]
        clipped = [w * v for w, v, t in zip(weights, values, active) if t.clip_to_task_gradient]
        ce_f = ce.float() if ce is not None else None
        if self.sync_each_step:
            self._check_finite(ce_f, values, active, epoch=epoch, step=step)
        task = None if ce_f is None else (ce_f if self.config.ce_weight == 1 else self.config.ce_weight * ce_f)
        total = sum(plain, task if task is not None else torch.zeros((), device=self.device))
        if clipped and task is not None:
            # The distillation gradient may not outweigh the task gradient (KD-SVD, IEP): both
            # norms are taken over the student's parameters only, and only the student's part
            # is scaled (a loss module's own parameters get their gradient as is). Gradients
            # are taken of the scaler-scaled losses, as backward() gets them (fp16).
            g_task = torch.autograd.grad(self.scaler.scale(task), self.student_params, retain_graph=True,
                                         allow_unused=True)
            g_dist = torch.autograd.grad(self.scaler.scale(sum(clipped)), self.params, retain_graph=True,
                                         allow_unused=True)
            g_student = g_dist[: len(self.student_params)]
            scale = torch.clamp(_grad_norm(g_task) / (_grad_norm(g_student) + 1e-12), max=1.0)
            self.scaler.scale(total).backward()
            for i, (p, g) in enumerate(zip(self.params, g_dist)):
                if g is None:
                    continue
                g = g * scale if i < len(self.student_params) else g
                p.grad = g if p.grad is None else p.grad.add_(g)
        elif clipped:
            total = total + sum(clipped)
            self.scaler.scale(total).backward()
        else:
            self.scaler.scale(total).backward()
        self.ctx.average_gradients(self.params)
        self.scaler.unscale_(self.optimizer)
        skipped = False
        if self.sync_each_step:
            grads = [p.grad for p in self.params if p.grad is not None]
            if grads and not bool(torch.isfinite(_grad_norm(grads))):
                if self.config.run.skip_nonfinite_steps:
                    skipped = True
                else:
                    raise NonFiniteLossError(
                        f"epoch {epoch + 1}, step {step}: the gradient became NaN/Inf (losses were finite: "
                        + ", ".join(f"{t.name}={v.item():.4g}" for t, v in zip(active, values))
                        + "); the last good checkpoint is kept"
                    )
        if self.config.run.skip_nonfinite_steps and getattr(self, "_skip_now", False):
            skipped = True
            self._skip_now = False
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        # Every rank leaves the step with the same state: parameters by construction,
        # buffers (BatchNorm statistics of each rank's share) made rank 0's.
        self.ctx.broadcast_buffers(self.parts.student, *(t.module for t in self.parts.terms))
        return ce_f, values, active, logits, skipped

    def _check_finite(self, ce, values, active, *, epoch: int, step: int) -> None:
        named = ([("cross_entropy", ce)] if ce is not None else []) + [
            (t.name, v) for t, v in zip(active, values)
        ]
        ok = torch.isfinite(torch.stack([v.detach() for _, v in named])).all()
        if bool(ok):
            return
        if self.config.run.skip_nonfinite_steps:
            self._skip_now = True
            return
        bad = [name for name, v in named if not bool(torch.isfinite(v.detach()))]
        raise NonFiniteLossError(
            f"epoch {epoch + 1}, step {step}: loss term {', '.join(bad)} is NaN/Inf; "
            "training stopped and the last good checkpoint is kept "
            "(set run.skip_nonfinite_steps=true to skip such steps instead)"
        )


def fit(parts: TrainingParts, config: TrainConfig, *, run_dir: str | Path, device: str | torch.device = "cpu",
        resume: bool = False, on_epoch_end: Callable[[dict], None] | None = None,
        progress: bool | None = None, ctx: DistributedContext | None = None) -> RunResult:
    """Train ``parts.student`` under ``config``, writing the run directory.

    Parameters
    ----------
    parts : TrainingParts
        Built models, taps, terms and batch iterables.
    config : TrainConfig
        The resolved config (saved as ``config.json``).
    run_dir : path
        Run directory; refused if another process holds its lock, or if it holds a
        finished or started run and ``resume`` is false.
    device : str or torch.device
        Where to train.
    resume : bool
        Continue from ``state.pt`` (the last finished epoch); a finished run is returned as is.
    on_epoch_end : callable, optional
        Called with each epoch's metrics record (for printing in the CLI).
    progress : bool, optional
        Show a tqdm bar; default: when stderr is a terminal and ``CI`` is unset.
    ctx : DistributedContext, optional
        The data-parallel context (default: single process).
    """
    device = torch.device(device)
    ctx = ctx or DistributedContext()
    run = RunDir(run_dir)
    progress = _progress_enabled() if progress is None else progress
    r = config.run
    if r.amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"run.amp: fp16 autocast needs a CUDA device, got {device}; use 'bf16' or none")
    lock = run.lock() if ctx.is_main else contextlib.nullcontext()
    with lock:
        return _fit_locked(parts, config, run, device, resume, on_epoch_end, progress and ctx.is_main, ctx)


def _fit_locked(parts, config, run, device, resume, on_epoch_end, progress, ctx) -> RunResult:
    config = with_resolved_layout(config, device)  # recorded in config.json as used
    r = config.run
    channels_last = r.channels_last
    student = parts.student
    if channels_last:
        student.to(memory_format=torch.channels_last)
    params = [p for p in student.parameters() if p.requires_grad]
    n_student = len(params)
    fitted = [t for t in parts.terms if t.fit_epochs > 0]
    for term in parts.terms:
        if term.fit_epochs == 0:  # a teacher-fitted module is frozen while the student trains
            params += [p for p in term.module.parameters() if p.requires_grad]
    optimizer = _optimizer(config, params)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.schedule.milestones), gamma=config.schedule.gamma
    )
    scaler = torch.amp.GradScaler(device.type, enabled=(r.amp == "fp16"))
    generators = {"data": parts.generator}

    start_epoch, elapsed = 0, 0.0
    if run.is_finished() and resume:
        return _finished_result(run, student, device)
    # Only rank 0 judges the directory: the others would see the files it is writing.
    if ctx.is_main and (run.state_path.is_file() or run.metrics_path.is_file()):
        if not resume:
            raise ConfigError(
                f"run directory {run.path} already holds a run; pass resume=True (--resume) to continue it "
                "or choose another directory"
            )
    if resume and run.state_path.is_file():
        state = read_state(run.state_path)
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        for term, sd in zip(parts.terms, state["terms"]):
            term.module.load_state_dict(sd)
        restore_rng(state["rng"], generators)
        start_epoch, elapsed = int(state["epoch"]), float(state["train_seconds"])
        if ctx.is_main:
            run.truncate_metrics(last_epoch=start_epoch)
    elif ctx.is_main and run.metrics_path.is_file():
        run.truncate_metrics(last_epoch=0)  # metrics of a run killed before its first checkpoint
    ctx.broadcast_module(student)
    for term in parts.terms:
        ctx.broadcast_module(term.module)

    if ctx.is_main:
        run.write_json(run.config_path, config_to_dict(config))
        meta = run.read_meta()
        run.write_json(run.meta_path, {
            **meta,
            "seed": r.seed,
            "device": str(device),
            "world_size": ctx.world_size,
            "environment": environment_info(),
            "start_time": meta.get("start_time", utc_now()),
            "resumed_at_epoch": ([*meta.get("resumed_at_epoch", []), start_epoch] if start_epoch else
                                 meta.get("resumed_at_epoch", [])),
            "status": "running",
        })
    writer = _tensorboard(run) if (r.tensorboard and ctx.is_main) else None

    if parts.teacher is not None:
        parts.teacher.eval()
        parts.teacher.requires_grad_(False)
    stepper = _Stepper(parts, config, ctx, device, params, optimizer, scaler, n_student=n_student)
    names = term_names(parts.terms)
    epochs = config.schedule.epochs
    try:
        # On resume the fitted state came back with the terms' state: no second fit.
        teacher_fit = _fit_teacher_stage(parts, fitted, device) if start_epoch == 0 and fitted else {}
        elapsed += sum(fit["seconds"] for fit in teacher_fit.values())  # the stage is part of the method's cost
        for term in fitted:
            term.module.requires_grad_(False)
            term.module.zero_grad(set_to_none=True)  # no gradient left over from the fit
            term.module.eval()
            ctx.broadcast_module(term.module)
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            student.train()
            for term in parts.terms:
                term.module.train(term.fit_epochs == 0)  # fitted estimators stay in eval mode
            sums = torch.zeros(2 + len(names), dtype=torch.float64, device=device)  # ce, correct, terms
            seen, steps, skipped = 0, 0, 0
            ran = set()  # names of the terms active this epoch (init-only terms leave after their stage)
            batches = parts.train_batches
            if progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
            local = getattr(parts.train_batches, "yields_local_shards", False)  # streams read their share only
            for x, y in batches:
                if not local:
                    x, y = ctx.shard(x), ctx.shard(y)
                x = batch_in_layout(x, channels_last=channels_last)
                steps += 1
                ce, values, active, logits, was_skipped = stepper.step(x, y, epoch=epoch, step=steps)
                if was_skipped:
                    skipped += 1
                    continue
                with torch.no_grad():
                    n = y.shape[0]
                    seen += n
                    if ce is not None:
                        sums[0] += ce.detach().double() * n
                    sums[1] += (logits.argmax(1) == y).sum()
                    for term, v in zip(active, values):
                        sums[2 + names.index(term.name)] += v.detach().double() * n
                        ran.add(term.name)
                if progress and steps % 10 == 0:
                    batches.set_postfix(loss=f"{sums[0].item() / max(seen, 1):.3f}",
                                        acc=f"{100 * sums[1].item() / max(seen, 1):.1f}")
            scheduler.step()
            sums = ctx.all_sum(sums)
            seen_all = int(ctx.all_sum(torch.tensor(seen, device=device)).item())
            totals = (sums / max(seen_all, 1)).tolist()
            if not all(math.isfinite(v) for v in totals):
                raise NonFiniteLossError(
                    f"epoch {epoch + 1}: a loss became NaN/Inf during the epoch "
                    f"({dict(zip(['cross_entropy', 'accuracy', *names], totals))}); the last good checkpoint is kept"
                )
            train_seconds = time.perf_counter() - t0
            test_error = evaluate(student, parts.test_batches, device=device, amp=r.amp,
                                  channels_last=channels_last)
            elapsed += train_seconds
            record = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_cross_entropy": totals[0] if epoch >= max([t.init_epochs for t in parts.terms] or [0]) else None,
                "train_terms": {n: (v if n in ran else None) for n, v in zip(names, totals[2:])},
                "train_accuracy": 100.0 * totals[1],
                "test_error": test_error,
                "seconds": train_seconds,
                "skipped_steps": skipped,
            }
            if teacher_fit and epoch == 0:
                record["teacher_fit"] = teacher_fit
            if ctx.is_main:
                run.append_metrics(record)
                if (epoch + 1) % r.checkpoint_every == 0 or epoch + 1 == epochs:
                    write_state(run.state_path, {
                        "epoch": epoch + 1,
                        "train_seconds": elapsed,
                        "model": student.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "terms": [t.module.state_dict() for t in parts.terms],
                        "rng": capture_rng(generators),
                    })
                if writer is not None:
                    _log_tensorboard(writer, record)
            if on_epoch_end is not None and ctx.is_main:
                on_epoch_end(record)
    except BaseException as exc:
        if ctx.is_main:
            run.update_meta(status="failed", error=f"{type(exc).__name__}: {exc}", end_time=utc_now())
        raise
    finally:
        if writer is not None:
            writer.close()

    metrics = run.read_metrics() if ctx.is_main else []
    if ctx.is_main:
        _save_final_model(run, student, parts.model_config)
        run.update_meta(status="finished", end_time=utc_now(), train_seconds=elapsed,
                        final_test_error=metrics[-1]["test_error"] if metrics else None)
    ctx.barrier()
    final = metrics[-1]["test_error"] if metrics else float("nan")
    return RunResult(run.path, student, metrics, final, elapsed, resumed_from_epoch=start_epoch)


def _fit_teacher_stage(parts: TrainingParts, fitted: list[Term], device: torch.device) -> dict:
    """Run each teacher-fitted term's fitting stage; ``{term: {"epochs", "loss", "seconds"}}``.

    Every process fits on the full (unsharded) batches, so all hold the same result; the
    caller broadcasts rank 0's anyway.
    """
    if parts.teacher is None:
        raise ConfigError(f"terms {', '.join(t.name for t in fitted)}: a teacher-fitting stage needs a teacher")
    log = {}
    for term in fitted:
        t0 = time.perf_counter()
        losses = term.module.fit_teacher(parts.teacher_taps_for(term), parts.train_batches, epochs=term.fit_epochs,
                                         device=device)
        losses = [float(v) for v in losses]
        if len(losses) != term.fit_epochs or not all(math.isfinite(v) for v in losses):
            raise NonFiniteLossError(
                f"term {term.name}: its teacher-fitting stage returned {losses}; expected {term.fit_epochs} finite "
                "losses, one per fitting epoch"
            )
        log[term.name] = {"epochs": term.fit_epochs, "loss": losses, "seconds": time.perf_counter() - t0}
    return log


def _save_final_model(run: RunDir, model: nn.Module, model_config: dict) -> None:
    from geokd.checkpoints import save_checkpoint

    save_checkpoint(run.model_path, model, model_config=model_config, extra={"run_dir": str(run.path)})


def _finished_result(run: RunDir, model: nn.Module, device: torch.device) -> RunResult:
    state = read_state(run.state_path)
    model.load_state_dict(state["model"])
    model.to(device)
    metrics = run.read_metrics()
    return RunResult(run.path, model, metrics, metrics[-1]["test_error"], float(state["train_seconds"]),
                     resumed_from_epoch=int(state["epoch"]))


def _tensorboard(run: RunDir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"run.tensorboard=true needs the tensorboard package ({exc}); "
                          "pip install tensorboard or turn it off") from None
    return SummaryWriter(log_dir=str(run.path / "tensorboard"))


def _log_tensorboard(writer, record: dict[str, Any]) -> None:
    step = record["epoch"]
    for key in ("lr", "train_cross_entropy", "train_accuracy", "test_error", "seconds"):
        if record.get(key) is not None:
            writer.add_scalar(key, record[key], step)
    for name, value in record["train_terms"].items():
        if value is not None:
            writer.add_scalar(f"terms/{name}", value, step)
    for name, fit in record.get("teacher_fit", {}).items():
        for fit_epoch, value in enumerate(fit["loss"], start=1):
            writer.add_scalar(f"teacher_fit/{name}", value, fit_epoch)
