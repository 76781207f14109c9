"""Distil in your own loop: :class:`Distiller` taps a teacher and a student by module name.

geokd's trainer (:mod:`geokd.train`) owns the whole loop. :class:`Distiller` is the
opposite: a small object added to *any* PyTorch loop (or a Lightning module) that returns
the weighted distillation terms of a batch, for any loss of the registry
(:func:`geokd.losses.available_losses`) with its hyper-parameters. The student keeps its
ordinary forward; the Distiller listens to it through persistent forward hooks and runs the
frozen teacher itself, in eval mode under ``torch.no_grad()``.

Examples
--------
>>> import torch
>>> import torch.nn.functional as F
>>> from geokd.models import build_model
>>> teacher = build_model("wrn", depth=10, widen_factor=1.0)
>>> student = build_model("wrn", depth=10, widen_factor=0.5)
>>> x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
>>> with Distiller(teacher, student, losses={"gkd": 25.0, "kd": {"weight": 0.9, "temperature": 4}},
...                teacher_layers=["layer1", "layer2"], student_layers=["layer1", "layer2"]) as distill:
...     logits = student(x)                    # the student's taps fill during its forward
...     terms = distill(x, y)                  # the teacher runs under no_grad, in eval mode
...     loss = F.cross_entropy(logits, y) + terms.total
...     loss.backward()
...     teacher_was_evaluating = not teacher.training
>>> sorted(terms), terms.total.ndim, teacher_was_evaluating
(['gkd', 'kd'], 0, True)
>>> len(student._forward_hooks), len(student.layer1._forward_hooks), teacher.training   # hooks gone, mode back
(0, 0, True)
>>> Distiller(teacher, student, losses={"gdk": 1.0})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: Distiller: losses['gdk']: unknown loss 'gdk'; did you mean 'gkd', 'mhgd'? (registered: ...)
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from geokd.graphs._validation import check_labels
from geokd.losses.registry import build_loss, get_loss_class
from geokd.models.outputs import ModelOutputs
from geokd.models.taps import FeatureTaps, LogitsOnly, TapRecorder, _logits_of

__all__ = ["Distiller", "DistillTerms"]

# The student's capture, from one forward of the student to the next.
_NONE, _RUNNING, _READY, _USED = "none", "running", "ready", "used"


class DistillTerms(Mapping):
    """The distillation terms of one batch: ``name -> weight * loss`` (scalar tensors).

    Attributes
    ----------
    total : torch.Tensor
        Sum of the weighted terms (what to add to the task loss).
    unweighted : dict[str, torch.Tensor]
        Each loss without its weight (for logging).
    weights : dict[str, float]
        The weights used for this batch.

    Examples
    --------
    >>> terms = DistillTerms({"gkd": torch.tensor(0.5)}, {"gkd": 2.0})
    >>> float(terms["gkd"]), float(terms.total), list(terms)
    (1.0, 1.0, ['gkd'])
    """

    def __init__(self, unweighted: Mapping[str, torch.Tensor], weights: Mapping[str, float]):
        self.unweighted = dict(unweighted)
        self.weights = {name: float(weights[name]) for name in self.unweighted}
        self._weighted = {name: self.weights[name] * value for name, value in self.unweighted.items()}
        values = list(self._weighted.values())
        total = values[0]
        for value in values[1:]:
            total = total + value
        self.total: torch.Tensor = total

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._weighted[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._weighted)

    def __len__(self) -> int:
        return len(self._weighted)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={float(value.detach()):.6g}" for name, value in self._weighted.items())
        return f"DistillTerms({shown}, total={float(self.total.detach()):.6g})"


class Distiller(nn.Module):
    """Weighted distillation terms for a batch, from hooks on the student and a frozen teacher.

    Parameters
    ----------
    teacher, student : nn.Module
        Any two networks (torchvision, timm, geokd's, your own). The teacher is put in
        eval mode (its mode is restored on :meth:`close`) and always runs under
        ``torch.no_grad()``. Neither network becomes a sub-module of the Distiller: its
        :meth:`parameters` are the losses' own only.
    losses : mapping
        ``name -> weight`` or ``name -> {"weight": w, **hyper_parameters}`` for any
        registered loss (:func:`geokd.losses.available_losses`: ``"gkd"``,
        ``"rkd_distance"``, ``"kd"``, ``"fitnet"``, ``"attention"``…), e.g.
        ``{"gkd": 25.0, "kd": {"weight": 0.9, "temperature": 4}}``. A ``"loss"`` entry
        picks the family when the name is only a label (two GKD variants:
        ``{"gkd_inter": {"loss": "gkd", "task": "inter"}, "gkd": 1.0}``) and may also be an
        ``nn.Module`` of your own, called as ``loss(student, teacher, labels)`` on
        :class:`~geokd.models.outputs.ModelOutputs`. The weight defaults to 1; change it
        between steps through :attr:`weights` (warm-ups, schedules).
    teacher_layers, student_layers : sequence of str, optional
        Module names of the sensing points, paired in order (``model.named_modules()``
        names; ``"name:input"`` taps a module's input, e.g. a pre-ReLU response).
        Default: the models' ``sensing_points`` (geokd's networks have them), else none
        (enough for logit losses such as ``"kd"``). A loss whose ``student_taps`` /
        ``teacher_taps`` are set reads those layers instead.
    example_inputs : torch.Tensor, optional
        A small batch (two inputs suffice) to build, now, the parameters of the losses that
        size them from the layers (FitNet's regressor, AB's connectors), so that
        :meth:`parameters` can go to the optimizer before the first step. Without it they
        are built on the first call and :meth:`parameters` refuses to run before that.

    Attributes
    ----------
    weights : dict[str, float]
        The weight of each term; may be changed between calls.
    teacher_layers, student_layers : tuple of str

    Notes
    -----
    * One call per student forward: the call reads the features of the student's latest
      forward and its output as logits (or the ``logits`` it is given), then forgets them; a
      second call before the next forward raises instead of reusing stale features.
    * Tensors decide the device: the teacher's inputs go to the teacher's device, its
      outputs to the student's; no ``.cuda()`` anywhere.
    * The loop's recipe stays yours: stages (``init_epochs``: FitNet's hint stage, use
      ``terms["fitnet"]`` alone first) and KD-SVD's gradient clipping
      (:func:`geokd.losses.kdsvd.clip_to_task_gradient`) are not applied here; teacher-fitted
      terms (``"iep"``, ``"mhgd"``) need :meth:`fit_teacher` once before the first call.
    * Hooks hold the latest forward's features until the next call; :meth:`close` (or
      leaving the ``with`` block, even on an exception) removes every hook it added.

    Examples
    --------
    See the module docstring; in a Lightning module, create it in ``__init__``
    (``self.distill = Distiller(...)``: its loss parameters then follow the module's device,
    optimizer and checkpoints) and call ``self.distill(x, y)`` after ``self.student(x)``.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, losses: Mapping,
                 teacher_layers: Sequence[str] | None = None, student_layers: Sequence[str] | None = None,
                 example_inputs: torch.Tensor | None = None) -> None:
        super().__init__()
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, nn.Module):
                raise ValueError(f"Distiller: expected the {role} to be an nn.Module, got {type(model).__name__}")
        if teacher is student:
            raise ValueError("Distiller: expected two different networks, got the same module as teacher and student "
                             "(the teacher is put in eval mode)")
        # Plain attributes, not sub-modules: parameters(), state_dict() and .to() are the losses' own.
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "student", student)
        self.teacher_layers, self.student_layers = _layer_pair(teacher, student, teacher_layers, student_layers)
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for name, spec in _loss_items(losses):
            module, weight = _build_term(name, spec)
            self.terms[name] = module
            self.weights[name] = weight

        # Which names each term reads, then every name once (student hooks, teacher taps).
        self._term_layers: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for name, module in self.terms.items():
            s_names = tuple(getattr(module, "student_taps", None) or self.student_layers)
            t_names = tuple(getattr(module, "teacher_taps", None) or self.teacher_layers)
            self._term_layers[name] = (s_names, t_names)
        reading = [name for name, module in self.terms.items() if getattr(module, "uses_features", True)
                   and not (self._term_layers[name][0]
                            and (self._term_layers[name][1] or not getattr(module, "needs_teacher", True)))]
        if reading:
            raise ValueError(
                f"Distiller: the losses {', '.join(map(repr, reading))} compare sensing points, but no layers are "
                f"named and {type(teacher).__name__} / {type(student).__name__} declare none; expected "
                "teacher_layers=[...] and student_layers=[...] (module names; `geokd layers NETWORK` lists them)")
        s_all = _unique([self.student_layers] + [s for s, _ in self._term_layers.values()])
        t_all = _unique([self.teacher_layers] + [t for _, t in self._term_layers.values()])
        _validate_names(student, self.student_layers, where="student_layers")
        _validate_names(teacher, self.teacher_layers, where="teacher_layers")
        for name, module in self.terms.items():
            _validate_names(student, getattr(module, "student_taps", None) or (), where=f"losses[{name!r}].student_taps")
            _validate_names(teacher, getattr(module, "teacher_taps", None) or (), where=f"losses[{name!r}].teacher_taps")
        self._student_names = s_all
        self._teacher_names = t_all
        self._needs_teacher = any(bool(getattr(m, "needs_teacher", True)) for m in self.terms.values())
        self._teacher_taps = FeatureTaps(teacher, list(t_all)) if t_all else LogitsOnly(teacher)

        device = _device_of(student)
        if device is not None:
            self.terms.to(device)
        self._pending_setup = [n for n, m in self.terms.items() if callable(getattr(m, "setup", None))]
        self._teacher_was_training = teacher.training
        teacher.eval()

        self._state = _NONE
        self._output = None
        self._teacher_running = False
        # FeatureTaps' own hooks, left attached: they keep what the student's latest forward
        # gave (not the teacher's runs through shared modules, nor modules run outside a forward).
        def accept() -> bool:
            return not self._teacher_running and self._state == _RUNNING

        self._recorder = (FeatureTaps(student, list(s_all)).recorder(accept=accept) if s_all
                          else TapRecorder([], has_inplace=False, accept=accept))
        self._handles: list = []
        self._closed = False
        try:
            self._register_student_hooks()
            if example_inputs is not None:
                self.setup(example_inputs)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ hooks on the student
    def _register_student_hooks(self) -> None:
        self._recorder.register()

        def start(mod, args):
            if self._teacher_running:
                return
            self._state = _RUNNING
            self._recorder.reset()
            self._output = None

        def finish(mod, args, output):
            if self._teacher_running or self._state != _RUNNING:
                return
            self._output = output
            self._state = _READY

        self._handles.append(self.student.register_forward_pre_hook(start))
        self._handles.append(self.student.register_forward_hook(finish))

    def _student_capture(self) -> dict[str, torch.Tensor]:
        if self._state == _NONE:
            raise ValueError("Distiller: expected a student forward before the call (its hooks read the features "
                             "then), got none yet: run logits = student(x) first")
        if self._state == _RUNNING:
            raise ValueError("Distiller: the student's latest forward did not finish (it raised, or the call came "
                             "from inside it); expected a completed forward")
        if self._state == _USED:
            raise ValueError("Distiller: the student's latest features were already used by a previous call; "
                             "expected one call per student forward (run the student on the batch again)")
        try:
            features = self._recorder.features()
        except ValueError as exc:
            raise ValueError(f"Distiller: student: {exc}") from None
        return dict(zip(self._student_names, features))

    # ------------------------------------------------------------------ the call
    def forward(self, inputs, labels: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> DistillTerms:
        """The weighted terms of the batch the student just saw.

        Parameters
        ----------
        inputs : torch.Tensor
            The teacher's inputs: the batch of the student's latest forward (same size).
        labels : torch.Tensor, optional
            ``(B,)`` class indices, checked against the student's number of classes; needed
            by the label-aware losses (``gkd`` with ``task="intra"/"inter"``…).
        logits : torch.Tensor, optional
            The student's logits; default: the output of its latest forward (its first
            element if a tuple).

        Returns
        -------
        DistillTerms
            ``name -> weight * loss`` and ``.total``.
        """
        if self._closed:
            raise ValueError("Distiller: expected an open Distiller, got one already closed (its hooks are removed)")
        captured = self._student_capture()
        if logits is None:
            logits = _logits_of(self._output)
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"Distiller: expected the student's logits as a tensor, got {type(logits).__name__}")
        s_feats = {name: captured[name] for name in self._student_names}
        batch = int(logits.shape[0]) if logits.ndim else None
        for name, f in s_feats.items():
            if batch is None:
                batch = int(f.shape[0])
            elif f.ndim and f.shape[0] != batch:
                raise ValueError(f"Distiller: student layer {name!r} has a batch of {f.shape[0]} but the student's "
                                 f"logits have {batch}; expected one batch through the whole forward")
        if isinstance(inputs, torch.Tensor) and inputs.ndim and batch is not None and inputs.shape[0] != batch:
            raise ValueError(f"Distiller: the teacher's inputs have a batch of {inputs.shape[0]} but the student's "
                             f"latest forward had {batch}; expected the batch the student just saw")
        if labels is not None:
            num_classes = int(logits.shape[-1]) if logits.ndim == 2 else None
            labels = check_labels(labels, batch, num_classes=num_classes, device=logits.device,
                                  where="Distiller: labels")

        teacher = self._run_teacher(inputs, device=logits.device) if self._needs_teacher else None
        if teacher is not None:
            t_batch = int(teacher.logits.shape[0])
            if t_batch != batch:
                raise ValueError(f"Distiller: the teacher's output has a batch of {t_batch} but the student's has "
                                 f"{batch}; expected one batch for both")
        if self._pending_setup:
            self._setup_terms(ModelOutputs(logits, [s_feats[n] for n in self._student_names]), teacher,
                              first_call=True)

        values = {}
        for name, module in self.terms.items():
            s_names, t_names = self._term_layers[name]
            s_out = ModelOutputs(logits, [s_feats[n] for n in s_names])
            t_out = None
            if teacher is not None:
                t_out = ModelOutputs(teacher.logits, [teacher.features[self._teacher_names.index(n)] for n in t_names])
            try:
                value = module(s_out, t_out, labels)
            except ValueError as exc:
                raise ValueError(self._term_error(name, exc, batch, s_names, t_names)) from None
            if not isinstance(value, torch.Tensor) or value.ndim != 0:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"Distiller: loss {name!r}: expected a scalar tensor, got {got}")
            values[name] = value
        self._state = _USED
        self._recorder.reset()
        self._output = None
        return DistillTerms(values, self.weights)

    def _run_teacher(self, inputs, *, device: torch.device) -> ModelOutputs:
        teacher = self.teacher
        if teacher.training:
            teacher.eval()  # a parent's .train() (Lightning) reaches a teacher held as an attribute
        t_device = _device_of(teacher)
        if t_device is not None and isinstance(inputs, torch.Tensor) and inputs.device != t_device:
            inputs = inputs.to(t_device, non_blocking=True)
        self._teacher_running = True
        try:
            with torch.no_grad():
                out = self._teacher_taps(inputs)
        except ValueError as exc:
            raise ValueError(f"Distiller: teacher: {exc}") from None
        finally:
            self._teacher_running = False
        if out.logits.device != device or any(f.device != device for f in out.features):
            out = ModelOutputs(out.logits.to(device), [f.to(device) for f in out.features])
        return out

    def _term_error(self, name: str, exc: Exception, batch, s_names, t_names) -> str:
        message = f"Distiller: loss {name!r}: {exc}"
        indices = sorted({int(i) for i in re.findall(r"\blayer (\d+)\b", str(exc)) if int(i) < len(s_names)})
        if indices:
            pairs = "; ".join(f"layer {i} = student {s_names[i]!r} / teacher {t_names[i]!r}"
                              for i in indices if i < len(t_names))
            message += f" [{pairs}]" if pairs else ""
        if batch is not None and batch < 2:
            message += (" (graph and relational losses compare the inputs of a batch with each other: expected "
                        "batches of at least 2 inputs; DataLoader(drop_last=True) avoids a last batch of one)")
        return message

    # ------------------------------------------------------------------ losses' own parameters
    def setup(self, example_inputs: torch.Tensor) -> None:
        """Build the losses' layer-sized parameters (FitNet's regressor…) from one forward of both networks.

        Runs both networks in eval mode on ``example_inputs`` without gradients (modes are
        restored) and leaves no features behind. Called by the constructor when given
        ``example_inputs``.
        """
        if self._closed:
            raise ValueError("Distiller: expected an open Distiller, got one already closed")
        if not self._pending_setup:
            return
        student = self.student
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                output = student(example_inputs)
                captured = self._student_capture()
                logits = _logits_of(output)
                s_out = ModelOutputs(logits, [captured[n] for n in self._student_names])
                teacher = self._run_teacher(example_inputs, device=logits.device) if self._needs_teacher else None
                self._setup_terms(s_out, teacher, first_call=False)
        finally:
            student.train(was_training)
            self._state = _NONE
            self._recorder.reset()
            self._output = None

    def _setup_terms(self, student: ModelOutputs, teacher: ModelOutputs | None, *, first_call: bool) -> None:
        for name in self._pending_setup:
            module = self.terms[name]
            s_names, t_names = self._term_layers[name]
            s_out = ModelOutputs(student.logits, [student.features[self._student_names.index(n)] for n in s_names])
            t_out = None if teacher is None else ModelOutputs(
                teacher.logits, [teacher.features[self._teacher_names.index(n)] for n in t_names])
            before = [id(p) for p in module.parameters()]
            try:
                with torch.no_grad():
                    module.setup(s_out, t_out)
            except ValueError as exc:
                raise ValueError(f"Distiller: loss {name!r}: {exc}") from None
            if first_call and before and [id(p) for p in module.parameters()] != before:
                raise ValueError(
                    f"Distiller: loss {name!r}: the parameters it was built with do not fit the tapped layers, and "
                    "an optimizer may already hold them; expected channel arguments that match the layers "
                    "(or pass example_inputs= to Distiller to size them before building the optimizer)")
        self._pending_setup = []

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The losses' trainable parameters (FitNet regressors, AB connectors…), for the optimizer.

        Never the teacher's or the student's. Raises ``ValueError`` while a loss still has to
        size its parameters from the layers (pass ``example_inputs=`` to the constructor).
        """
        if self._pending_setup and any(next(self.terms[n].parameters(), None) is None for n in self._pending_setup):
            names = ", ".join(repr(n) for n in self._pending_setup)
            raise ValueError(
                f"Distiller: the losses {names} build their parameters from the layers' shapes, which are not known "
                "yet; expected Distiller(..., example_inputs=x[:2]) (or distill.setup(x)) before collecting parameters()")
        return super().parameters(recurse)

    def fit_teacher(self, batches: Iterable, *, device: torch.device | str | None = None) -> dict[str, list[float]]:
        """Run the teacher-fitting stage of the terms that have one (``"iep"``, ``"mhgd"``).

        ``batches`` yields ``(x, y)`` training batches; returns each term's loss per fitting
        epoch. The fitted networks are then frozen (no gradients, eval mode).
        """
        if device is None:
            device = _device_of(self.teacher) or torch.device("cpu")
        log = {}
        for name, module in self.terms.items():
            epochs = int(getattr(module, "fit_epochs", 0) or 0)
            if not callable(getattr(module, "fit_teacher", None)) or epochs <= 0:
                continue
            _, t_names = self._term_layers[name]
            taps = FeatureTaps(self.teacher, list(t_names))
            self.teacher.eval()

            def read(x, _taps=taps):
                with torch.no_grad():
                    return _taps(x)

            log[name] = [float(v) for v in module.fit_teacher(read, batches, epochs=epochs, device=device)]
            module.requires_grad_(False)
            module.eval()
        return log

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        for module in self.terms.values():  # fitted teacher-side networks stay frozen
            if int(getattr(module, "fit_epochs", 0) or 0) > 0 and callable(getattr(module, "fit_teacher", None)):
                module.eval()
        return self

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Remove every hook added to the student and restore the teacher's mode (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._recorder.remove()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._recorder.reset()
        self._output = None
        self._closed = True
        self.teacher.train(self._teacher_was_training)

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def extra_repr(self) -> str:
        terms = ", ".join(f"{n}×{w:g}" for n, w in self.weights.items())
        state = "closed" if self._closed else "open"
        return (f"teacher={type(self.teacher).__name__}{list(self.teacher_layers)}, "
                f"student={type(self.student).__name__}{list(self.student_layers)}, terms=[{terms}], {state}")


# ---------------------------------------------------------------------- construction helpers
def _layer_pair(teacher, student, teacher_layers, student_layers) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if (teacher_layers is None) != (student_layers is None):
        given = "teacher_layers" if teacher_layers is not None else "student_layers"
        raise ValueError(f"Distiller: expected both teacher_layers and student_layers, or neither; got only {given}")
    if teacher_layers is None:
        t_default = tuple(getattr(teacher, "sensing_points", None) or ())
        s_default = tuple(getattr(student, "sensing_points", None) or ())
        teacher_layers, student_layers = (t_default, s_default) if t_default and s_default else ((), ())
    layers = []
    for role, names in (("teacher_layers", teacher_layers), ("student_layers", student_layers)):
        if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"Distiller: expected {role} as a list of module names, got {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"Distiller: expected distinct {role}, got repeats in {list(names)}")
        layers.append(tuple(names))
    if len(layers[0]) != len(layers[1]):
        raise ValueError(
            f"Distiller: expected as many teacher_layers as student_layers (paired in order), got "
            f"{len(layers[0])} teacher layers {list(layers[0])} and {len(layers[1])} student layers {list(layers[1])}")
    return layers[0], layers[1]


def _validate_names(model: nn.Module, names, *, where: str) -> None:
    if names:
        try:
            FeatureTaps(model, list(names))
        except ValueError as exc:
            raise ValueError(f"Distiller: {where}: {exc}") from None


def _loss_items(losses) -> list[tuple[str, object]]:
    if not isinstance(losses, Mapping):
        raise ValueError(f"Distiller: expected losses as a mapping name -> weight or {{'weight': w, **params}}, "
                         f"got {type(losses).__name__}")
    if not losses:
        raise ValueError("Distiller: expected at least one loss, got an empty mapping")
    for name in losses:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Distiller: expected loss names as non-empty strings, got {name!r}")
    return list(losses.items())


def _check_weight(name: str, weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"Distiller: losses[{name!r}]: expected a finite weight >= 0, got {weight!r}")
    return float(weight)


def _build_term(name: str, spec) -> tuple[nn.Module, float]:
    where = f"Distiller: losses[{name!r}]"
    if isinstance(spec, nn.Module):
        return spec, 1.0
    if not isinstance(spec, Mapping):
        if isinstance(spec, bool) or not isinstance(spec, (int, float)):
            raise ValueError(f"{where}: expected a weight or a mapping {{'weight': w, **params}}, got {spec!r}")
        spec = {"weight": spec}
    params = dict(spec)
    weight = _check_weight(name, params.pop("weight", 1.0))
    loss = params.pop("loss", name)
    if isinstance(loss, nn.Module):
        if params:
            raise ValueError(f"{where}: a ready-made loss module takes no hyper-parameters, got {sorted(params)}")
        return loss, weight
    if not isinstance(loss, str):
        raise ValueError(f"{where}: expected 'loss' to be a registered name or an nn.Module, got {loss!r}")
    try:
        cls = get_loss_class(loss)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    signature = inspect.signature(cls.__init__)
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        known = [n for n in signature.parameters if n != "self"]
        for key in params:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" ({loss!r} takes: {', '.join(known) or 'nothing'})"
                raise ValueError(f"{where}: unknown parameter {key!r}{hint}")
    try:
        module = build_loss(loss, **params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return module, weight


def _unique(groups) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for group in groups:
        for name in group:
            seen.setdefault(name, None)
    return tuple(seen)


def _device_of(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None
