"""The training loop on hand-built parts: real digits, small nets, no geokd data/model code.

The end-to-end path through configs, the registry's losses and geokd models is tested
in tests/test_train_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geokd.errors import CheckpointError, ConfigError
from geokd.models.outputs import ModelOutputs
from geokd.train import NonFiniteLossError, RunDir, RunLockedError, Term, TrainingParts, config_from_dict, fit
from geokd.train.state import read_state

# The parts, as source, so subprocesses (kill/resume) build exactly the same thing.
PARTS_SOURCE = textwrap.dedent(
    '''
    import numpy as np, torch, torch.nn.functional as F
    from torch import nn
    from sklearn.datasets import load_digits
    from geokd.models.outputs import ModelOutputs
    from geokd.train import Term, TrainingParts


    class Batches:
        """Shuffled, randomly flipped digits batches drawing only from `generator`."""

        def __init__(self, x, y, *, batch_size, generator=None, hook=None):
            self.x, self.y, self.batch_size, self.generator, self.hook = x, y, batch_size, generator, hook
            self.epoch = 0

        def __iter__(self):
            self.epoch += 1
            n = len(self.y)
            order = torch.randperm(n, generator=self.generator) if self.generator is not None else torch.arange(n)
            for step, start in enumerate(range(0, n, self.batch_size)):
                idx = order[start:start + self.batch_size]
                x = self.x[idx]
                if self.generator is not None:
                    flip = torch.rand(len(idx), generator=self.generator) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                if self.hook is not None:
                    self.hook(self.epoch, step + 1)
                yield x, self.y[idx]


    class TinyNet(nn.Module):
        def __init__(self, width=8, dropout=0.1):
            super().__init__()
            self.conv1 = nn.Conv2d(1, width, 3, padding=1)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
            self.drop = nn.Dropout(dropout)
            self.fc = nn.Linear(2 * width * 16, 10)

        def outputs(self, x):
            h1 = F.relu(self.conv1(x))
            h2 = F.relu(self.conv2(h1))
            pooled = self.drop(h2.flatten(1))
            return ModelOutputs(self.fc(pooled), [h1, pooled])

        def forward(self, x):
            return self.outputs(x).logits


    class GramLoss(nn.Module):
        """Squared difference of cosine Gram matrices, summed over entries, mean over layers."""

        def forward(self, student, teacher, labels):
            total = 0
            for s, t in zip(student.features, teacher.features):
                zs = F.normalize(s.flatten(1), dim=1)
                zt = F.normalize(t.flatten(1), dim=1)
                total = total + ((zs @ zs.T - zt @ zt.T) ** 2).sum()
            return total / len(student.features)


    class HintLoss(nn.Module):
        """A loss with its own trainable regressor, FitNet-like, with an init stage."""

        init_epochs = 1

        def __init__(self):
            super().__init__()
            self.regressor = nn.Linear(256, 512)

        def forward(self, student, teacher, labels):
            return ((self.regressor(student.features[1]) - teacher.features[1]) ** 2).mean()


    class FitProbe(nn.Module):
        """A term with a teacher-fitting stage: a linear probe of the teacher's pooled
        features fitted to the teacher's logits (through dropout, so the fit draws random
        numbers), then frozen; the term pulls the student's logits toward the probe's."""

        fit_epochs = 2

        def __init__(self):
            super().__init__()
            self.probe = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 10))
            self.fit_calls = 0

        def fit_teacher(self, teacher_taps, batches, *, epochs, device):
            self.fit_calls += 1
            optimizer = torch.optim.SGD(self.probe.parameters(), lr=0.01)
            self.train()
            history = []
            for _ in range(epochs):
                losses = []
                for x, _ in batches:
                    with torch.no_grad():
                        teacher = teacher_taps(x)
                    loss = ((self.probe(teacher.features[1]) - teacher.logits) ** 2).mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                history.append(sum(losses) / len(losses))
            return history

        def forward(self, student, teacher, labels):
            return ((student.logits - self.probe(teacher.features[1])) ** 2).mean()


    def digits(split):
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
        x = (x - 0.3) / 0.4
        y = torch.tensor(d.target, dtype=torch.long)
        cut = 1400
        return (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])


    def make_parts(seed, *, teacher=None, terms=(), hook=None, width=8, dropout=0.1, batch_size=64, n_train=512):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        student = TinyNet(width=width, dropout=dropout)
        xtr, ytr = digits("train")
        xtr, ytr = xtr[:n_train], ytr[:n_train]
        xte, yte = digits("test")
        return TrainingParts(
            student=student, student_taps=student.outputs,
            train_batches=Batches(xtr, ytr, batch_size=batch_size, generator=generator, hook=hook),
            test_batches=Batches(xte, yte, batch_size=500),
            generator=generator, student_points=("conv1", "fc"),
            teacher=teacher, teacher_taps=teacher.outputs if teacher is not None else None,
            terms=list(terms), model_config={"name": "tiny_test_net", "width": width},
        )
    '''
)
_namespace: dict = {}
exec(compile(PARTS_SOURCE, "train_parts", "exec"), _namespace)
make_parts, TinyNet, GramLoss, HintLoss, FitProbe = (
    _namespace[k] for k in ("make_parts", "TinyNet", "GramLoss", "HintLoss", "FitProbe"))

QUICK = {"data": {"batch_size": 64}, "optim": {"lr": 0.05}, "schedule": {"epochs": 3, "milestones": [2], "gamma": 0.1}}


def quick_config(**sections):
    table = json.loads(json.dumps(QUICK))
    for key, value in sections.items():
        table.setdefault(key, {}).update(value) if isinstance(value, dict) else table.__setitem__(key, value)
    return config_from_dict(table)


def frozen_teacher(seed=123):
    torch.manual_seed(seed)
    teacher = TinyNet(width=16, dropout=0.0)
    teacher.eval()
    return teacher


def test_run_directory_records_config_meta_metrics_and_weights(tmp_path):
    seen = []
    result = fit(make_parts(0), quick_config(), run_dir=tmp_path / "run", on_epoch_end=seen.append, progress=False)
    run = RunDir(tmp_path / "run")
    assert json.loads(run.config_path.read_text())["optim"]["lr"] == 0.05
    meta = run.read_meta()
    assert meta["status"] == "finished" and meta["seed"] == 0
    assert meta["environment"]["torch"] == torch.__version__
    assert {"python", "numpy", "geokd", "git_revision"} <= set(meta["environment"])
    assert meta["environment"]["geokd_native"] == {"batchnorm": True, "graphs": True, "reason": None}  # this CI machine builds them
    metrics = run.read_metrics()
    assert [m["epoch"] for m in metrics] == [1, 2, 3] == [m["epoch"] for m in seen]
    # The multistep schedule (torch's MultiStepLR meaning): milestone 2 = after 2 epochs, lr x 0.1.
    assert [m["lr"] for m in metrics] == pytest.approx([0.05, 0.05, 0.005])
    assert metrics[-1]["test_error"] == result.final_test_error
    # The recorded test error is the model's error, recomputed independently.
    xte, yte = _namespace["digits"]("test")
    result.model.eval()
    with torch.no_grad():
        err = 100.0 * (result.model(xte).argmax(1) != yte).float().mean().item()
    assert err == pytest.approx(result.final_test_error, rel=1e-6)
    assert result.final_test_error < 60.0  # it learned something in 3 short epochs (chance: 90 %)
    from geokd.checkpoints.store import _torch_load_plain

    saved = _torch_load_plain(str(run.model_path), "cpu")["state_dict"]
    for key, value in result.model.state_dict().items():
        assert torch.equal(saved[key], value)


@pytest.mark.slow
def test_same_seed_same_weights_and_other_seed_differs(tmp_path):
    a = fit(make_parts(1), quick_config(), run_dir=tmp_path / "a", progress=False)
    b = fit(make_parts(1), quick_config(), run_dir=tmp_path / "b", progress=False)
    c = fit(make_parts(2), quick_config(), run_dir=tmp_path / "c", progress=False)
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    assert not torch.equal(a.model.fc.weight, c.model.fc.weight)


def test_teacher_stays_frozen_in_eval_mode_and_terms_are_logged(tmp_path):
    teacher = frozen_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()  # the loop must put it in eval mode itself
    term = Term("gram", 0.005, GramLoss())
    result = fit(make_parts(0, teacher=teacher, terms=[term]), quick_config(), run_dir=tmp_path / "r", progress=False)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(m["train_terms"]["gram"] > 0 for m in result.metrics)
    assert all(m["train_cross_entropy"] > 0 for m in result.metrics)


def _one_batch_run(parts):
    """Train on the first 64 digits only (one step per epoch); returns a copy of the
    student and the step's batch ``(x, y)``, drawn as ``Batches`` draws it for seed 0."""
    xtr, ytr = _namespace["digits"]("train")
    parts.train_batches.x, parts.train_batches.y = xtr[:64], ytr[:64]
    reference = TinyNet(width=8, dropout=0.0)
    reference.load_state_dict(parts.student.state_dict())
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(64, generator=gen)
    flip = torch.rand(64, generator=gen) < 0.5
    x = xtr[:64][order]
    return reference, torch.where(flip[:, None, None, None], x.flip(-1), x), ytr[:64][order]


ONE_STEP = {"optim": {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}, "schedule": {"epochs": 1, "milestones": []}}


@pytest.mark.parametrize("ce_weight", [1.0, 0.25])
def test_one_step_gradient_equals_hand_computed_ce_plus_lambda_term(tmp_path, ce_weight):
    """One SGD step (no momentum, no decay) moves the weights by -lr * grad(w_CE CE + lambda * term)."""
    teacher = frozen_teacher()
    lam, lr = 3.0, 0.1
    parts = make_parts(0, teacher=teacher, terms=[Term("gram", lam, GramLoss())], dropout=0.0)
    reference, x, y = _one_batch_run(parts)
    out = reference.outputs(x)
    with torch.no_grad():
        t_out = teacher.outputs(x)
    loss = ce_weight * F.cross_entropy(out.logits, y) + lam * GramLoss()(out, t_out, y)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    expected = [p.detach() - lr * g for p, g in zip(reference.parameters(), grads)]
    config = quick_config(**ONE_STEP, ce_weight=ce_weight)
    result = fit(parts, config, run_dir=tmp_path / "r", progress=False)
    for p, e in zip(result.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


def test_loss_parameters_are_trained_and_init_stage_skips_cross_entropy(tmp_path):
    teacher = frozen_teacher()
    hint = HintLoss()
    start = hint.regressor.weight.detach().clone()
    parts = make_parts(0, teacher=teacher, terms=[Term("hint", 1.0, hint)])
    result = fit(parts, quick_config(), run_dir=tmp_path / "r", progress=False)
    assert not torch.equal(hint.regressor.weight.detach(), start)
    first, second = result.metrics[0], result.metrics[1]
    assert first["train_cross_entropy"] is None and second["train_cross_entropy"] is not None
    # The regressor is part of the resumable state.
    state = read_state(RunDir(tmp_path / "r").state_path)
    assert torch.equal(state["terms"][0]["regressor.weight"], hint.regressor.weight.detach())


def test_init_only_term_leaves_after_its_initialization_stage(tmp_path):
    # FitNet's hint / AB / FSP initialization: the term alone first, then plain training without it.
    hint = HintLoss()
    hint.init_epochs, hint.init_only = 1, True
    parts = make_parts(0, teacher=frozen_teacher(), terms=[Term("hint", 1.0, hint)])
    result = fit(parts, quick_config(), run_dir=tmp_path / "r", progress=False)
    first, later = result.metrics[0], result.metrics[1:]
    assert first["train_cross_entropy"] is None and first["train_terms"]["hint"] is not None
    assert all(m["train_cross_entropy"] is not None and m["train_terms"].get("hint") is None for m in later)


def test_negative_ce_weight_is_rejected():
    with pytest.raises(ConfigError, match="ce_weight"):
        quick_config(ce_weight=-0.5)


def test_clip_to_task_gradient_scales_the_distillation_gradient(tmp_path):
    """With a huge weight, a clipped term's gradient norm is capped at the CE gradient's norm."""
    teacher = frozen_teacher()

    class ClippedGram(GramLoss):
        clip_to_task_gradient = True

    lr = 0.1
    parts = make_parts(0, teacher=teacher, terms=[Term("gram", 1e6, ClippedGram())], dropout=0.0)
    reference, x, y = _one_batch_run(parts)
    out = reference.outputs(x)
    with torch.no_grad():
        t_out = teacher.outputs(x)
    params = list(reference.parameters())
    g_ce = torch.autograd.grad(F.cross_entropy(out.logits, y), params, retain_graph=True)
    g_d = torch.autograd.grad(1e6 * GramLoss()(out, t_out, y), params, allow_unused=True)
    g_d = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_d)]  # fc.bias: no graph term
    norm = lambda gs: torch.sqrt(sum((g.double() ** 2).sum() for g in gs))  # noqa: E731
    scale = min(1.0, float(norm(g_ce) / norm(g_d)))
    assert scale < 1e-3  # the clip really acts
    expected = [p.detach() - lr * (a + scale * b) for p, a, b in zip(params, g_ce, g_d)]
    result = fit(parts, quick_config(**ONE_STEP), run_dir=tmp_path / "r", progress=False)
    for p, e in zip(result.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-4, atol=1e-6)


def test_clipping_norms_and_scales_the_students_gradient_only_not_the_loss_modules_own(tmp_path):
    """Oracle by hand: scale = min(1, |g_CE| / |g_term|), both norms over the student's
    parameters; the term's own regressor gets its unscaled gradient. (The old loop took the
    norms over every optimized parameter, the regressor's too, and scaled the regressor's
    gradient as well.)"""
    teacher = frozen_teacher()
    lam, lr = 50.0, 0.1

    class ClippedHint(HintLoss):
        clip_to_task_gradient = True
        init_epochs = 0

    torch.manual_seed(3)
    hint = ClippedHint()
    regressor_start = [p.detach().clone() for p in hint.parameters()]
    parts = make_parts(0, teacher=teacher, terms=[Term("hint", lam, hint)], dropout=0.0)
    reference, x, y = _one_batch_run(parts)
    ref_hint = ClippedHint()
    ref_hint.load_state_dict(hint.state_dict())
    out = reference.outputs(x)
    with torch.no_grad():
        t_out = teacher.outputs(x)
    student = list(reference.parameters())
    own = list(ref_hint.parameters())
    g_ce = torch.autograd.grad(F.cross_entropy(out.logits, y), student, retain_graph=True)
    g_d = torch.autograd.grad(lam * ref_hint(out, t_out, y), student + own, allow_unused=True)
    g_ds = [torch.zeros_like(p) if g is None else g for p, g in zip(student, g_d[: len(student)])]
    g_own = g_d[len(student):]
    norm = lambda gs: torch.sqrt(sum((g.double() ** 2).sum() for g in gs))  # noqa: E731
    scale = min(1.0, float(norm(g_ce) / norm(g_ds)))
    expected = [start.detach() - lr * (a + scale * b) for start, a, b in zip(student, g_ce, g_ds)]
    # What the old loop did, to show this oracle tells the two apart: norms over student +
    # regressor, and the regressor's gradient scaled too.
    old_scale = min(1.0, float(norm(g_ce) / torch.sqrt(norm(g_ds) ** 2 + norm(g_own) ** 2)))
    old = [start.detach() - lr * (a + old_scale * b) for start, a, b in zip(student, g_ce, g_ds)]
    assert scale < 0.5 and old_scale < 0.9 * scale
    assert max(float((e - o).abs().max()) for e, o in zip(expected, old)) > 1e-4
    result = fit(parts, quick_config(**ONE_STEP), run_dir=tmp_path / "r", progress=False)
    for p, e in zip(result.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-4, atol=1e-6)
    for p, start, g in zip(hint.parameters(), regressor_start, g_own):
        torch.testing.assert_close(p.detach(), start - lr * g, rtol=1e-4, atol=1e-6)


class _WatchedProbe(FitProbe):
    """FitProbe recording what the trainer did around its fitting stage."""

    def __init__(self, student):
        super().__init__()
        self.student_at_fit, self.after_fit, self.modes = None, None, []
        self.read_student = lambda: student.state_dict()  # not a submodule: the trainer freezes this module

    def fit_teacher(self, teacher_taps, batches, *, epochs, device):
        self.student_at_fit = {k: v.clone() for k, v in self.read_student().items()}
        self.fit_epochs_given = epochs
        history = super().fit_teacher(teacher_taps, batches, epochs=epochs, device=device)
        self.after_fit = {k: v.clone() for k, v in self.state_dict().items()}
        return history

    def forward(self, student, teacher, labels):
        self.modes.append((self.training, any(p.requires_grad for p in self.parameters())))
        return super().forward(student, teacher, labels)


def test_teacher_fitting_stage_runs_once_before_the_first_step_then_the_term_stays_frozen(tmp_path):
    teacher = frozen_teacher()
    parts = make_parts(0, teacher=teacher)
    initial = {k: v.clone() for k, v in parts.student.state_dict().items()}
    probe = _WatchedProbe(parts.student)
    parts.terms = [Term("probe", 0.5, probe), Term("gram", 0.005, GramLoss())]
    assert parts.terms[0].fit_epochs == 2 and parts.terms[1].fit_epochs == 0
    result = fit(parts, quick_config(), run_dir=tmp_path / "r", progress=False)
    assert probe.fit_calls == 1 and probe.fit_epochs_given == 2
    assert all(torch.equal(v, initial[k]) for k, v in probe.student_at_fit.items())  # before any student step
    # While the student trained: eval mode, no gradient, unchanged (not in the optimizer: no decay either).
    assert probe.modes and set(probe.modes) == {(False, False)}
    assert all(p.grad is None for p in probe.parameters())
    assert all(torch.equal(v, probe.after_fit[k]) for k, v in probe.state_dict().items())
    state = read_state(RunDir(tmp_path / "r").state_path)
    n_student = len(list(parts.student.parameters()))
    assert len(state["optimizer"]["param_groups"][0]["params"]) == n_student
    assert all(torch.equal(state["terms"][0][k], v) for k, v in probe.after_fit.items())
    # The fitting losses, one per fitting epoch, in the first epoch's record only.
    first, later = result.metrics[0], result.metrics[1:]
    fit_log = first["teacher_fit"]["probe"]
    assert fit_log["epochs"] == 2 and len(fit_log["loss"]) == 2 and fit_log["loss"][1] < fit_log["loss"][0]
    assert set(first["teacher_fit"]) == {"probe"} and all("teacher_fit" not in m for m in later)
    assert result.train_seconds >= fit_log["seconds"] + sum(m["seconds"] for m in result.metrics) - 1e-6


def _probe_parts(seed_offset=0):
    teacher = frozen_teacher()
    torch.manual_seed(11)
    probe = FitProbe()
    parts = make_parts(0, teacher=teacher, terms=[Term("probe", 0.5, probe), Term("gram", 0.005, GramLoss())])
    return parts, probe


class _Interrupt(RuntimeError):
    pass


def test_resume_after_the_fitting_stage_skips_it_and_is_bit_exact(tmp_path):
    config = quick_config(schedule={"epochs": 4, "milestones": [2]})
    straight_parts, _ = _probe_parts()
    fit(straight_parts, config, run_dir=tmp_path / "straight", progress=False)

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise _Interrupt("stopped after epoch 2")

    parts, _ = _probe_parts()
    with pytest.raises(_Interrupt):
        fit(parts, config, run_dir=tmp_path / "cut", on_epoch_end=stop_after_two, progress=False)
    assert read_state(RunDir(tmp_path / "cut").state_path)["epoch"] == 2
    parts, probe = _probe_parts()
    resumed = fit(parts, config, run_dir=tmp_path / "cut", resume=True, progress=False)
    assert resumed.resumed_from_epoch == 2 and probe.fit_calls == 0  # the fitted probe came from state.pt
    a, b = read_state(RunDir(tmp_path / "straight").state_path), read_state(RunDir(tmp_path / "cut").state_path)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["terms"][0]:
        assert torch.equal(a["terms"][0][key], b["terms"][0][key]), key
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("seconds", "teacher_fit")} for m in ms]  # noqa: E731
    ma, mb = RunDir(tmp_path / "straight").read_metrics(), RunDir(tmp_path / "cut").read_metrics()
    assert strip(ma) == strip(mb)
    assert ma[0]["teacher_fit"]["probe"]["loss"] == mb[0]["teacher_fit"]["probe"]["loss"]


def test_a_failing_fitting_stage_marks_the_run_failed(tmp_path):
    class Diverging(FitProbe):
        def fit_teacher(self, teacher_taps, batches, *, epochs, device):
            return [1.0, float("nan")]

    parts = make_parts(0, teacher=frozen_teacher(), terms=[Term("probe", 1.0, Diverging())])
    with pytest.raises(NonFiniteLossError, match=r"term probe: its teacher-fitting stage returned \[1.0, nan\]"):
        fit(parts, quick_config(), run_dir=tmp_path / "r", progress=False)
    assert RunDir(tmp_path / "r").read_meta()["status"] == "failed"


class _NaNAfter(nn.Module):
    def __init__(self, step):
        super().__init__()
        self.step, self.calls = step, 0

    def forward(self, student, teacher, labels):
        self.calls += 1
        value = student.features[1].pow(2).mean()
        return value * float("nan") if self.calls >= self.step else value


def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(tmp_path):
    steps_per_epoch = 8  # 512 / 64
    parts = make_parts(0, teacher=frozen_teacher(), terms=[Term("fragile", 1.0, _NaNAfter(steps_per_epoch + 5))])
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 5: loss term fragile is NaN/Inf"):
        fit(parts, quick_config(), run_dir=tmp_path / "r", progress=False)
    run = RunDir(tmp_path / "r")
    state = read_state(run.state_path)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert run.read_meta()["status"] == "failed"


def test_skip_nonfinite_steps_counts_and_continues(tmp_path):
    class NaNOnOddCalls(nn.Module):
        calls = 0

        def forward(self, student, teacher, labels):
            self.calls += 1
            value = student.features[1].pow(2).mean()
            return value * float("inf") if self.calls % 7 == 0 else value

    parts = make_parts(0, teacher=frozen_teacher(), terms=[Term("sometimes", 1.0, NaNOnOddCalls())])
    result = fit(parts, quick_config(run={"skip_nonfinite_steps": True}), run_dir=tmp_path / "r", progress=False)
    assert sum(m["skipped_steps"] for m in result.metrics) == 24 // 7
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_existing_run_needs_resume_and_finished_run_is_reused(tmp_path):
    fit(make_parts(0), quick_config(), run_dir=tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(make_parts(0), quick_config(), run_dir=tmp_path / "r", progress=False)
    again = fit(make_parts(5), quick_config(), run_dir=tmp_path / "r", resume=True, progress=False)
    assert again.resumed_from_epoch == 3 and len(again.metrics) == 3


@pytest.mark.slow
def test_second_process_cannot_write_a_locked_run(tmp_path):
    run = RunDir(tmp_path / "r")
    with run.lock():
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            fit(make_parts(0), quick_config(), run_dir=tmp_path / "r", progress=False)
        probe = subprocess.run(
            [sys.executable, "-c",
             "import sys; from geokd.train.runs import RunDir, RunLockedError\n"
             f"try:\n    RunDir({str(tmp_path / 'r')!r}).lock().__enter__()\n"
             "except RunLockedError as e:\n    print(e); sys.exit(3)\n"],
            capture_output=True, text=True, timeout=120,
        )
        assert probe.returncode == 3, probe.stderr
        assert "being written by" in probe.stdout


def test_corrupted_state_is_refused(tmp_path):
    fit(make_parts(0), quick_config(schedule={"epochs": 1, "milestones": []}), run_dir=tmp_path / "r", progress=False)
    path = RunDir(tmp_path / "r").state_path
    data = bytearray(path.read_bytes())
    # Flip one byte inside the payload (well past the zip header of the outer file).
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        read_state(path)


KILL_SCRIPT = PARTS_SOURCE + textwrap.dedent(
    '''
    import os, signal, sys
    from geokd.train import Term, config_from_dict, fit
    torch.set_num_threads(1)
    run_dir, mode = sys.argv[1], sys.argv[2]

    def hook(epoch, step):
        # The batches' own pass count: the probe's fitting stage makes the first passes.
        if mode == "kill" and epoch == FitProbe.fit_epochs + 3 and step == 5:
            os.kill(os.getpid(), signal.SIGKILL)

    torch.manual_seed(77)
    teacher = TinyNet(width=16, dropout=0.0).eval()
    hint = HintLoss()
    probe = FitProbe()
    torch.manual_seed(0)
    parts = make_parts(0, teacher=teacher, terms=[Term("gram", 0.05, GramLoss()), Term("hint", 0.1, hint),
                                                  Term("probe", 0.1, probe)], hook=hook)
    config = config_from_dict({"data": {"batch_size": 64}, "optim": {"lr": 0.02},
                               "schedule": {"epochs": 5, "milestones": [2, 4], "gamma": 0.2}})
    fit(parts, config, run_dir=run_dir, resume=(mode == "resume"), progress=False)
    '''
)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run_bit_exactly(tmp_path):
    script = tmp_path / "kill_script.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(run_dir, mode):
        return subprocess.run([sys.executable, str(script), str(run_dir), mode], capture_output=True, text=True,
                              timeout=300, env=env)

    straight = run(tmp_path / "straight", "plain")
    assert straight.returncode == 0, straight.stderr
    killed = run(tmp_path / "killed", "kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    interrupted = RunDir(tmp_path / "killed")
    assert [m["epoch"] for m in interrupted.read_metrics()] == [1, 2]
    assert read_state(interrupted.state_path)["epoch"] == 2
    resumed = run(tmp_path / "killed", "resume")
    assert resumed.returncode == 0, resumed.stderr

    a = read_state(RunDir(tmp_path / "straight").state_path)
    b = read_state(interrupted.state_path)
    assert a["epoch"] == b["epoch"] == 5
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for i in (1, 2):
        for key in a["terms"][i]:
            assert torch.equal(a["terms"][i][key], b["terms"][i][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("seconds", "teacher_fit")} for m in ms]  # noqa: E731
    assert strip(RunDir(tmp_path / "straight").read_metrics()) == strip(interrupted.read_metrics())
    fits = [RunDir(d).read_metrics()[0]["teacher_fit"]["probe"]["loss"] for d in (tmp_path / "straight", tmp_path / "killed")]
    assert fits[0] == fits[1]
    assert interrupted.read_meta()["resumed_at_epoch"] == [2]


def test_failed_state_write_leaves_no_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    # Regression (reliability B10): on ENOSPC the partial temporary used to stay on disk.
    import errno

    from geokd.train import state as state_module

    target = tmp_path / "state.pt"
    state_module.atomic_write_bytes(target, b"old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        state_module.atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
