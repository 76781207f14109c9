"""Turn a :class:`~geokd.train.config.TrainConfig` into trained weights.

:func:`train` seeds every RNG, loads the data, builds the student (and loads the frozen
teacher), builds each distillation term from the loss registry, checks everything that
can be checked before the first step (sensing point names, term parameters, a dry
forward pass), then runs :func:`geokd.train.loop.fit`.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from geokd.errors import ConfigError
from geokd.train.config import TrainConfig
from geokd.train.distributed import DistributedContext
from geokd.train.loop import RunResult, Term, TrainingParts, fit
from geokd.train.runs import RunDir

__all__ = ["train", "build_parts", "load_teacher", "seed_everything", "build_terms"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch, NumPy and ``random``; return the data-order generator seeded likewise."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_teacher(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The frozen teacher: a run directory, a checkpoint, a released network or a network spec
    (``torchvision:resnet18?num_classes=10@teacher.pt``, :func:`geokd.checkpoints.load_network`)."""
    from geokd.checkpoints import load_network
    from geokd.errors import CheckpointError

    if Path(path).is_dir():
        run = RunDir(path)
        if not run.is_finished():
            raise ConfigError(f"teacher: run directory {path} holds no finished run (no model.pt / status)")
        path = run.model_path
    try:
        teacher = load_network(path, device=device)
    except CheckpointError as exc:
        raise ConfigError(f"teacher: {exc}") from None
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _check_points(model: nn.Module, points: tuple[str, ...], *, role: str) -> None:
    modules = dict(model.named_modules())
    for name in points:
        base = name[: -len(":input")] if name.endswith(":input") else name
        if base not in modules:
            close = difflib.get_close_matches(base, [m for m in modules if m], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"{role} sensing point {name!r} does not exist in {type(model).__name__}{hint}"
            )


def build_terms(config: TrainConfig, *, device: torch.device) -> list[Term]:
    """Each configured term as a built loss module, validated and named uniquely."""
    from geokd.losses import build_loss, get_loss_class

    terms, seen = [], {}
    for i, tc in enumerate(config.terms):
        where = f"terms[{i}] ({tc.loss})"
        try:
            cls = get_loss_class(tc.loss)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        signature = inspect.signature(cls.__init__)
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        known = [n for n in signature.parameters if n != "self"]
        for key in tc.params:
            if not accepts_any and key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (it takes: {', '.join(known) or 'nothing'})"
                raise ConfigError(f"{where}.params: unknown parameter {key!r}{hint}")
        try:
            module = build_loss(tc.loss, **tc.params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        seen[tc.loss] = seen.get(tc.loss, 0) + 1
        name = tc.loss if seen[tc.loss] == 1 else f"{tc.loss}_{seen[tc.loss]}"
        terms.append(Term(name=name, weight=tc.weight, module=module.to(device)))
    return terms


def _taps(model: nn.Module, names: tuple[str, ...]) -> Callable:
    from geokd.models.taps import FeatureTaps, LogitsOnly

    # No sensing points (a torchvision network trained with cross-entropy or KD alone):
    # the plain forward, with no hooks and no features.
    return FeatureTaps(model, list(names)) if names else LogitsOnly(model)


def _require_points(terms: list[Term], points: tuple[str, ...], *, role: str, setting: str, model: nn.Module) -> None:
    """A term that reads the sensing points' features needs some: say which setting names them."""
    reading = [t.name for t in terms if getattr(t.module, "uses_features", True)
               and not getattr(t.module, f"{role}_taps", None) and (role == "student" or t.needs_teacher)]
    if reading and not points:
        raise ConfigError(
            f"{setting}: the terms {', '.join(reading)} compare the {role}'s sensing points, but the {role} "
            f"({type(model).__name__}) declares none; expected {setting} = [module names, ...] "
            f"(`geokd layers NETWORK` lists them)")


def _batches(config: TrainConfig, *, generator: torch.Generator, device: torch.device,
             ctx: DistributedContext) -> tuple:
    """``(train_batches, test_batches, n_train, num_classes)`` for ``config.data``.

    In memory (:class:`~geokd.data.BatchLoader`: the whole split as one uint8 tensor), or
    streamed from an image folder (``data.stream``, :class:`~geokd.data.stream.StreamingImageFolder`:
    ImageNet's recipe, each rank decoding its share of every global batch).
    """
    from geokd.data import BatchLoader, load_dataset

    d = config.data
    stats = {} if d.mean is None else {"mean": d.mean, "std": d.std}
    if d.stream:
        from geokd.data.stream import StreamingImageFolder, folder_of

        common = dict(image_size=d.image_size, mean=d.mean, std=d.std, workers=d.workers, device=device)
        try:
            train_batches = StreamingImageFolder(folder_of(d.name), split="train", batch_size=d.batch_size,
                                                 shuffle=True, augment=d.augment, generator=generator,
                                                 drop_last=d.drop_last, rank=ctx.rank, world_size=ctx.world_size,
                                                 **common)
            # Every rank evaluates the whole test split, as with in-memory data.
            test_batches = StreamingImageFolder(folder_of(d.name), split="test", batch_size=d.eval_batch_size,
                                                shuffle=False, **common)
        except ValueError as exc:
            raise ConfigError(f"data: {exc}") from None
        if test_batches.num_classes != train_batches.num_classes:
            raise ConfigError(f"data: {d.name} has {train_batches.num_classes} train classes but "
                              f"{test_batches.num_classes} test classes")
        return train_batches, test_batches, len(train_batches.labels), train_batches.num_classes
    train_set = load_dataset(d.name, split="train", root=d.root, download=d.download, fraction=d.fraction,
                             seed=d.fraction_seed, image_size=d.image_size, **stats)
    test_set = load_dataset(d.name, split="test", root=d.root, download=d.download, image_size=d.image_size, **stats)
    train_batches = BatchLoader(train_set, batch_size=d.batch_size, shuffle=True, augment=d.augment,
                                device=device, generator=generator, drop_last=d.drop_last)
    test_batches = BatchLoader(test_set, batch_size=d.eval_batch_size, shuffle=False, augment=False,
                               device=device)
    return train_batches, test_batches, len(train_set.labels), int(train_set.num_classes)


def build_parts(config: TrainConfig, *, device: torch.device, ctx: DistributedContext) -> tuple[TrainingParts, TrainConfig]:
    """Data, models, taps and terms for ``config`` (and the config with inferred model sizes)."""
    from geokd.models import build_model, model_config

    d = config.data
    generator = seed_everything(config.run.seed)
    train_batches, test_batches, n_train, num_classes = _batches(config, generator=generator, device=device, ctx=ctx)
    if ctx.enabled:
        ctx.check_batch(d.batch_size, what="data.batch_size")
        last = 0 if d.drop_last else n_train % d.batch_size
        if last % ctx.world_size:
            raise ConfigError(
                f"data: the last batch of {last} inputs does not split over {ctx.world_size} processes; "
                "set data.drop_last=true or change data.batch_size"
            )
    if n_train < d.batch_size and d.drop_last:
        raise ConfigError(f"data.batch_size: {d.batch_size} is more than the {n_train} training inputs with drop_last")

    config = copy.deepcopy(config)
    params = dict(config.model.params)
    params.setdefault("num_classes", num_classes)
    try:
        student = build_model(config.model.name, **params)
    except ValueError as exc:
        raise ConfigError(f"model: {exc}") from None
    config.model.params = params
    student.to(device)
    points = tuple(config.model.sensing_points or getattr(student, "sensing_points", ()))
    _check_points(student, points, role="student")

    terms = build_terms(config, device=device)
    _require_points(terms, points, role="student", setting="model.sensing_points", model=student)
    local_batch = d.batch_size // ctx.world_size if not config.run.global_batch_graph else d.batch_size
    for term, tc in zip(terms, config.terms):
        k = tc.params.get("k")
        if k is not None and k >= local_batch:
            raise ConfigError(
                f"terms ({term.name}).params.k: expected fewer neighbours than the {local_batch} inputs each "
                f"graph sees, got k={k}"
            )
    teacher = teacher_taps = None
    teacher_points: tuple[str, ...] = ()
    if any(t.needs_teacher for t in terms):
        if config.teacher is None:
            raise ConfigError(
                f"teacher: the terms {', '.join(t.name for t in terms if t.needs_teacher)} need a teacher; "
                "set teacher = \"<run dir or checkpoint>\""
            )
        teacher = load_teacher(config.teacher, device=device)
        teacher_points = tuple(config.teacher_sensing_points or getattr(teacher, "sensing_points", ()))
        _check_points(teacher, teacher_points, role="teacher")
        _require_points(terms, teacher_points, role="teacher", setting="teacher_sensing_points", model=teacher)
        teacher_taps = _taps(teacher, teacher_points)
    term_taps = {}
    for term in terms:
        s_names = getattr(term.module, "student_taps", None)
        t_names = getattr(term.module, "teacher_taps", None)
        if s_names:
            _check_points(student, tuple(s_names), role=f"term {term.name}: student")
        if t_names and teacher is not None:
            _check_points(teacher, tuple(t_names), role=f"term {term.name}: teacher")
        if s_names or t_names:
            term_taps[term.name] = (
                _taps(student, tuple(s_names)) if s_names else None,
                _taps(teacher, tuple(t_names)) if (t_names and teacher is not None) else None,
            )

    student_taps = _taps(student, points)
    _dry_run([("student", student, student_taps), ("teacher", teacher, teacher_taps)], test_batches, config)
    _setup_terms(terms, student_taps, teacher_taps, term_taps, test_batches, models=(student, teacher))
    parts = TrainingParts(
        student=student, student_taps=student_taps, train_batches=train_batches, test_batches=test_batches,
        generator=generator, student_points=points, teacher=teacher, teacher_taps=teacher_taps,
        teacher_points=teacher_points, terms=terms, term_taps=term_taps, model_config=model_config(student),
    )
    return parts, config


@torch.no_grad()
def _setup_terms(terms: list[Term], student_taps, teacher_taps, term_taps: dict, test_batches, *, models) -> None:
    """Let terms whose parameters depend on the layers' shapes (FitNet's regressor, AB's
    connectors) build them from one forward pass, before the optimizer collects parameters."""
    pending = [t for t in terms if callable(getattr(t.module, "setup", None))]
    if not pending:
        return
    x, _ = next(iter(test_batches))
    x = x[:2]
    modes = [(m, m.training) for m in models if m is not None]
    for model, _ in modes:
        model.eval()
    try:
        for term in pending:
            s_extra, t_extra = term_taps.get(term.name, (None, None))
            student_out = (s_extra or student_taps)(x)
            taps = t_extra or teacher_taps
            teacher_out = taps(x) if (taps is not None and term.needs_teacher) else None
            term.module.setup(student_out, teacher_out)
    finally:
        for model, was_training in modes:
            model.train(was_training)


@torch.no_grad()
def _dry_run(roles, test_batches, config: TrainConfig) -> None:
    """One eval-mode forward on two test inputs so shape mismatches surface before training."""
    x, _ = next(iter(test_batches))
    x = x[:2]
    for role, model, taps in roles:
        if taps is None:
            continue
        was_training = model.training
        model.eval()
        try:
            taps(x)
        except RuntimeError as exc:
            name = config.model.name if role == "student" else config.teacher
            raise ConfigError(
                f"{role} network ({name}) cannot read {config.data.name} inputs of shape {tuple(x.shape)}: {exc}"
            ) from None
        finally:
            model.train(was_training)


def train(config: TrainConfig, *, run_dir: str | Path, device: str | torch.device = "cpu", resume: bool = False,
          on_epoch_end: Callable[[dict], None] | None = None, progress: bool | None = None) -> RunResult:
    """Train the run described by ``config`` into ``run_dir``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the processes join a gloo/NCCL group and
    train data-parallel; only rank 0 writes the run directory.

    Parameters
    ----------
    config : TrainConfig
        A validated config (see :func:`geokd.train.load_config`).
    run_dir : path
        Where the run lives (``config.json``, ``meta.json``, ``metrics.jsonl``, ``state.pt``,
        ``model.pt``).
    device : str or torch.device
        ``"cpu"``, ``"cuda"``…; AMP and channels-last come from ``config.run``.
    resume : bool
        Continue an interrupted run from its last finished epoch (bit-exact on CPU).
    on_epoch_end : callable, optional
        Receives each epoch's metrics record.
    progress : bool, optional
        tqdm bar (default: on a terminal, off when ``CI`` is set).
    """
    ctx = DistributedContext.from_env(device=device)
    device = ctx.device_for(device)
    threads = torch.get_num_threads()
    if config.run.threads is not None:
        # Small networks run faster on one thread, and far faster on a busy machine.
        torch.set_num_threads(config.run.threads)
    try:
        parts, resolved = build_parts(config, device=device, ctx=ctx)
        return fit(parts, resolved, run_dir=run_dir, device=device, resume=resume, on_epoch_end=on_epoch_end,
                   progress=progress, ctx=ctx)
    finally:
        torch.set_num_threads(threads)
