"""The benchmark studies of issue 25: analysis/cifar100_crd.toml (the CRD benchmark's
CIFAR-100 pairs) and analysis/imagenet_r34_r18.toml (torchvision ResNet-34 -> ResNet-18).

Real CIFAR-100 cannot be downloaded on the machines these tests run on, and ImageNet
nowhere here: wherever a test needs CIFAR-100 inputs it uses a *generated stand-in of
CIFAR-100's shapes* (`cifar100_standin`: 32x32x3 uint8 images, 100 classes, random pixels
from a fixed seed), and the ImageNet study runs on a tiny generated image folder (2
classes of PNGs). They check that every pair and method of the studies builds and takes
finite, differentiable steps through geokd's trainer, not any accuracy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from geokd.errors import ConfigError
from geokd.models import build_model, forward_with_features
from geokd.studies import load_study
from geokd.train.config import validate_config

ROOT = Path(__file__).resolve().parent.parent
CRD_STUDY = ROOT / "analysis" / "cifar100_crd.toml"
IMAGENET_STUDY = ROOT / "analysis" / "imagenet_r34_r18.toml"
STANDIN = "test_crd_studies:cifar100_standin"   # this module, imported by name (tests/ on sys.path)

# CRD's Table 1 and Table 2 (teacher -> student), in the paper's order.
CRD_PAIRS = [
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
    ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"),
    ("vgg13", "mobilenetv2"), ("ResNet50", "mobilenetv2"), ("ResNet50", "vgg8"), ("resnet32x4", "shufflenetv1"),
    ("resnet32x4", "shufflenetv2"), ("wrn_40_2", "shufflenetv1"),
]
METHODS = ["baseline", "kd", "fitnet", "attention", "fsp", "rkd", "gkd", "gkd-inter", "kd+gkd"]


class _StandIn:
    """CIFAR-100's shapes without its pixels: ``n_per_class`` random 3x32x32 uint8 images per class."""

    classes = [f"class{k:02d}" for k in range(100)]

    def __init__(self, split: str, n_per_class: int):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        self.labels = torch.arange(100).repeat(n_per_class)
        self.images = torch.randint(0, 256, (len(self.labels), 3, 32, 32), dtype=torch.uint8, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def cifar100_standin(split="train"):
    """The stand-in's split (``MODULE:CALLABLE`` dataset form): 2 images per class to train, 1 to test."""
    return _StandIn(split, 2 if split == "train" else 1)


@pytest.fixture(autouse=True)
def _standin_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.fixture(scope="module")
def crd():
    return load_study(str(CRD_STUDY))


def _shapes(name: str) -> tuple[list[str], list[tuple]]:
    net = build_model(name, num_classes=100).eval()
    with torch.no_grad():
        out = forward_with_features(net, torch.zeros(2, 3, 32, 32))
    return list(net.sensing_points), [tuple(f.shape[1:]) for f in out.features]


# ----------------------------------------------------------------------------- networks

@pytest.mark.parametrize("depth", [20, 32, 56, 110])
def test_plain_resnets_have_the_benchmark_feature_list_at_100_classes(depth):
    net = build_model(f"resnet{depth}", num_classes=100)
    out = forward_with_features(net, torch.randn(3, 3, 32, 32))
    assert out.logits.shape == (3, 100)
    # CRD's forward(is_feat=True) of its plain ResNets: stem, three stages, pooled vector.
    assert net.sensing_points == ("relu", "layer1", "layer2", "layer3", "pool")
    assert [tuple(f.shape[1:]) for f in out.features] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)]
    assert torch.equal(out.features[-1], net.pool(net.layer3(net.layer2(net.layer1(out.features[0])))))


@pytest.mark.parametrize("teacher, student", CRD_PAIRS)
def test_every_pair_pairs_sensing_points_one_to_one(teacher, student):
    (tp, ts), (sp, ss) = _shapes(teacher), _shapes(student)
    assert len(tp) == len(sp) in (5, 6)
    # maps first, the pooled (B, C) vector the head reads last
    assert len(ts[-1]) == len(ss[-1]) == 1 and all(len(s) == 3 for s in ts[:-1] + ss[:-1])
    for name, shapes in ((teacher, ts), (student, ss)):
        head = [m for m in build_model(name, num_classes=100).modules() if isinstance(m, torch.nn.Linear)][-1]
        assert shapes[-1] == (head.in_features,)
    # resolution never grows along either network
    for shapes in (ts[:-1], ss[:-1]):
        assert [s[1] for s in shapes] == sorted((s[1] for s in shapes), reverse=True)


def _reference_gkd(student_feats, teacher_feats) -> torch.Tensor:
    """REFERENCE.md §1-2 written out in float64: cosine graph, zero diagonal, D^-1/2 A D^-1/2,
    squared differences summed over the N x N entries, averaged over the sensing points."""
    total = 0.0
    for s, t in zip(student_feats, teacher_feats):
        graphs = []
        for x in (s, t):
            z = torch.nn.functional.normalize(x.flatten(1).double(), dim=1)
            a = z @ z.T
            a.fill_diagonal_(0)
            d = a.sum(1).rsqrt()
            graphs.append(d[:, None] * a * d[None, :])
        total = total + ((graphs[1] - graphs[0]) ** 2).sum()
    return total / len(student_feats)


def test_gkd_from_resnet32x4_to_shufflenetv2_is_finite_differentiable_and_the_reference_value():
    from geokd.data import BatchLoader, load_dataset
    from geokd.losses import gkd_loss

    data = load_dataset(STANDIN, split="train")
    x, y = next(iter(BatchLoader(data, batch_size=8, shuffle=False)))
    torch.manual_seed(0)
    teacher = build_model("resnet32x4", num_classes=100).eval()
    student = build_model("shufflenetv2", num_classes=100).train()
    with torch.no_grad():
        t_feats = forward_with_features(teacher, x).features
    s_out = forward_with_features(student, x)
    # different widths and resolutions at every point: 32 vs 24 channels at 32x32, ... 256 vs 1024 pooled
    assert [tuple(f.shape[1:]) for f in t_feats] != [tuple(f.shape[1:]) for f in s_out.features]
    loss = gkd_loss(s_out.features, t_feats)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    expected = _reference_gkd([f.detach() for f in s_out.features], t_feats)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    loss.backward()
    grads = {name: p.grad for name, p in student.named_parameters()}
    for name, grad in grads.items():
        if name.startswith("linear."):
            assert grad is None   # the head is past the last sensing point
        else:
            assert grad is not None and torch.isfinite(grad).all(), name
    assert grads["conv1.weight"].abs().sum() > 0   # reaches the first layer
    assert all(p.grad is None for p in teacher.parameters())


# ------------------------------------------------------------------------- the CRD study

def test_the_crd_study_is_the_benchmark_recipe(crd):
    assert crd.name == "cifar100-crd" and crd.seeds == (0, 1, 2, 3, 4) and crd.estimate
    assert [m.name for m in crd.methods] == METHODS
    assert [(p.table["teacher"]["model"]["name"], p.table["student"]["model"]["name"]) for p in crd.pairs] == CRD_PAIRS
    for pair in crd.pairs:
        teacher = pair.teacher_config()
        for config in [teacher] + [pair.student_config(m.name, seed=3) for m in pair.methods]:
            d, o, s = config.data, config.optim, config.schedule
            assert (d.name, d.batch_size, d.augment) == ("cifar100", 64, True)
            assert (o.name, o.momentum, o.weight_decay) == ("sgd", 0.9, 5e-4)
            assert s.gamma == 0.1
        low = pair.table["student"]["model"]["name"] in ("mobilenetv2", "shufflenetv1", "shufflenetv2")
        assert teacher.optim.lr == 0.05 and (teacher.schedule.epochs, teacher.schedule.milestones) == (240, (150, 180, 210))
        for m in pair.methods:
            config = pair.student_config(m.name, seed=0)
            assert config.optim.lr == (0.01 if low else 0.05), (pair.pair, m.name)
            if m.name == "fsp":   # 30 init epochs first, then CRD's 240 with the same milestones
                assert (config.schedule.epochs, config.schedule.milestones) == (270, (180, 210, 240))
            else:
                assert (config.schedule.epochs, config.schedule.milestones) == (240, (150, 180, 210))
        # shared teachers: one run directory per teacher network
        assert pair.teacher_dir == f"cifar100-crd/teachers/{pair.table['teacher']['model']['name']}"


def test_the_crd_study_quotes_the_published_tables(crd):
    # CRD, ICLR 2020, Tables 1 and 2 (and the RepDistiller README): teacher, student, KD per pair
    expected = {
        "wrn_40_2-wrn_16_2": (75.61, 73.26, 74.92), "resnet32x4-resnet8x4": (79.42, 72.50, 73.33),
        "vgg13-mobilenetv2": (74.64, 64.60, 67.37), "wrn_40_2-shufflenetv1": (75.61, 70.50, 74.83),
    }
    for name, (teacher, student, kd) in expected.items():
        pub = crd.pair_study(name).published
        assert (pub["teacher"], pub["baseline"], pub["kd"]) == (teacher, student, kd)
    for pair in crd.pairs:
        assert {"teacher", "baseline", "kd", "fitnet", "attention", "rkd"} <= set(pair.published)
        assert ("fsp" in pair.published) == ("fsp" not in pair.skipped)   # CRD ran FSP where we do
        assert not {"gkd", "gkd-inter", "kd+gkd"} & set(pair.published)   # no published GKD numbers


@pytest.mark.parametrize("teacher, student", CRD_PAIRS)
def test_each_pairs_rows_follow_crd_for_its_shapes(crd, teacher, student):
    pair = crd.pair_study(f"{teacher}-{student}")
    (tp, ts), (sp, ss) = _shapes(teacher), _shapes(student)
    n = len(tp)
    terms = {m.name: list(m.terms) for m in pair.methods}
    # FSP only where every compared layer has the same channels (CRD: n/a elsewhere); one
    # term per consecutive pair of feature maps, weight 1 / (C1 C2) (CRD averages each matrix)
    same_channels = [a[0] for a in ts[:-1]] == [b[0] for b in ss[:-1]]
    assert ("fsp" in terms) == same_channels
    if same_channels:
        channels = [a[0] for a in ts[:-1]]
        assert [t["params"]["layers"] for t in terms["fsp"]] == [[i, i + 1] for i in range(n - 2)]
        assert [t["weight"] for t in terms["fsp"]] == [1.0 / (a * b) for a, b in zip(channels, channels[1:])]
        assert all(t["params"]["init_epochs"] == 30 and t["params"]["init_only"] for t in terms["fsp"])
    # AT over the stage outputs: CRD's feature list without the stem and the pooled vector
    (at,) = terms["attention"]
    assert at["params"]["layers"] == list(range(1, n - 1)) and at["weight"] == 1.0
    # FitNet: CRD's hint layer 2 of both, or the teacher's point at the student's resolution;
    # weight 200 / (C H W) of the teacher's hint (CRD: 100 x a mean over the hint's entries)
    (fit,) = terms["fitnet"]
    if "teacher_taps" in fit["params"]:
        hint = tp.index(fit["params"]["teacher_taps"][0])
        assert fit["params"]["student_taps"] == [sp[2]] and hint == 3 and ts[2][1] == 2 * ss[2][1]
    else:
        hint = 2
        assert fit["params"]["hint_layer"] == 2
    assert ts[hint][1:] == ss[2][1:]
    assert fit["weight"] == 200.0 / math.prod(ts[hint])
    assert terms["kd"] == [{"loss": "kd", "weight": 0.9, "params": {"temperature": 4.0}}]
    assert terms["rkd"] == [{"loss": "rkd", "weight": 1.0}]


def _standin_config(config, **data):
    config = dataclasses.replace(config, data=dataclasses.replace(
        config.data, name=STANDIN, batch_size=4, eval_batch_size=4, **data))
    validate_config(config)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("teacher, student", CRD_PAIRS)
def test_every_method_of_the_pair_takes_a_finite_differentiable_step(crd, teacher, student, tmp_path):
    """For each row of the pair: the trainer's parts from the study's config (stand-in data,
    batch 4: its data, networks, taps, terms, dry run and term setup), then one step of the
    trainer's own step: finite positive terms, finite gradients, the student (and FitNet's
    regressor) moved, the teacher untouched."""
    from geokd.checkpoints import save_checkpoint
    from geokd.models import model_config
    from geokd.train.build import build_parts
    from geokd.train.distributed import DistributedContext
    from geokd.train.loop import _optimizer, _Stepper

    pair = crd.pair_study(f"{teacher}-{student}")
    torch.manual_seed(1)
    t_net = build_model(teacher, num_classes=100)
    save_checkpoint(tmp_path / "teacher.pt", t_net, model_config=model_config(t_net))
    t_state = {k: v.clone() for k, v in t_net.state_dict().items()}
    ctx, device = DistributedContext(), torch.device("cpu")
    seen_points = None
    for method in pair.methods:
        config = _standin_config(pair.student_config(method.name, seed=0, teacher=str(tmp_path / "teacher.pt")))
        parts, resolved = build_parts(config, device=device, ctx=ctx)
        params = [p for p in parts.student.parameters() if p.requires_grad]
        n_student = len(params)
        for term in parts.terms:   # as the trainer does: FitNet's regressor is trained too
            params += [p for p in term.module.parameters() if p.requires_grad]
        stepper = _Stepper(parts, resolved, ctx, device, params, _optimizer(resolved, params),
                           torch.amp.GradScaler("cpu", enabled=False), n_student=n_student)
        x, y = next(iter(parts.train_batches))
        assert x.shape == (4, 3, 32, 32) and int(y.max()) < 100
        before = [p.detach().clone() for p in params]
        ce, values, active, logits, skipped = stepper.step(x, y, epoch=0, step=1)
        assert not skipped and logits.shape == (4, 100) and torch.isfinite(logits).all()
        if method.name == "fsp":   # the init stage: the FSP terms alone
            assert ce is None and [t.name for t in active] == [t.name for t in parts.terms]
        else:
            assert torch.isfinite(ce) and ce > 0 and len(active) == len(parts.terms)
        assert len(values) == len(method.terms) and all(torch.isfinite(v) and v > 0 for v in values), \
            (method.name, [float(v) for v in values])
        grads = [p.grad for p in params[:n_student] if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        moved = [not torch.equal(a, p) for a, p in zip(before, params)]
        assert all(torch.isfinite(p).all() for p in params)
        # FSP's init stage trains the feature layers, not the head; every other row trains both
        head = [i for i, (name, _) in enumerate(parts.student.named_parameters())
                if name.startswith(("linear.", "fc.", "classifier."))]
        assert any(moved[i] for i in range(n_student) if i not in head)
        assert any(moved[i] for i in head) == (method.name != "fsp")
        if len(params) > n_student:   # FitNet's regressor is optimised with the student
            assert method.name == "fitnet" and all(moved[n_student:])
        if parts.teacher is not None:   # frozen: no gradient, unchanged
            assert all(p.grad is None for p in parts.teacher.parameters())
            assert all(torch.equal(v, t_state[k]) for k, v in parts.teacher.state_dict().items())
        if method.terms:
            points = (parts.student_points, parts.teacher_points)
            assert seen_points in (None, points)
            seen_points = points
    assert seen_points == (tuple(build_model(student).sensing_points), tuple(build_model(teacher).sensing_points))


def test_the_crd_study_plans_six_shared_teachers_and_every_pair_row(crd, tmp_path):
    from geokd.reproduce import plan_study

    planned = plan_study(crd, out=tmp_path)
    teachers = [p for p in planned if p.method == "teacher"]
    assert sorted(p.run_dir.parent.name for p in teachers) == sorted(
        ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"])
    assert all(p.run_dir == tmp_path / "cifar100-crd" / "teachers" / p.run_dir.parent.name / "seed0" for p in teachers)
    students = [p for p in planned if p.method != "teacher"]
    # 6 pairs have FSP (same channels), 7 do not: (6 x 9 + 7 x 8) rows x 5 seeds
    assert len(students) == (6 * 9 + 7 * 8) * 5 and len(planned) == len(students) + 6
    first = next(p for p in students if p.pair == "resnet56-resnet20" and p.method == "kd+gkd" and p.seed == 4)
    assert first.run_dir == tmp_path / "cifar100-crd" / "resnet56-resnet20" / "kd+gkd" / "seed4"
    assert first.config.teacher == str(tmp_path / "cifar100-crd" / "teachers" / "resnet56" / "seed0")
    # every student's teacher is planned before it
    order = [p.run_dir for p in planned]
    for p in students:
        assert order.index(Path(p.config.teacher)) < order.index(p.run_dir)


# ------------------------------------------------------------------- the study format

PAIRS_STUDY = """
[study]
name = "two-pairs"
description = "digits, two pairs sharing a teacher"
seeds = [0]

[base.data]
name = "digits"
batch_size = 64
eval_batch_size = 540

[base.run]
threads = 1

[base.schedule]
epochs = 1
milestones = [1]

[[methods]]
name = "baseline"
terms = []

[[methods]]
name = "gkd"
terms = [{ loss = "gkd", weight = 25.0 }]

[[pairs]]
name = "wide-narrow"
teacher = { model = { name = "wrn", params = { depth = 10, widen_factor = 1.0, in_channels = 1 } } }
student = { model = { name = "wrn", params = { depth = 10, widen_factor = 0.5, in_channels = 1 } } }
published = { teacher = 90.5, baseline = 80.25 }

[[pairs]]
name = "wide-small"
teacher = { model = { name = "wrn", params = { depth = 10, widen_factor = 1.0, in_channels = 1 } } }
student = { model = { name = "wrn", params = { depth = 10, widen_factor = 0.25, in_channels = 1 } }, overrides = { optim = { lr = 0.02 } } }
skip = ["baseline"]
methods.gkd.terms = [{ loss = "gkd", weight = 5.0, params = { task = "inter" } }]
"""


def _write(tmp_path, text: str, name: str = "study.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_pairs_expand_into_single_pair_studies(tmp_path):
    study = load_study(_write(tmp_path, PAIRS_STUDY))
    assert [p.pair for p in study.pairs] == ["wide-narrow", "wide-small"]
    a, b = study.pairs
    assert (a.name, a.teacher_dir, b.teacher_dir) == ("two-pairs/wide-narrow", "two-pairs/teachers/wrn",
                                                      "two-pairs/teachers/wrn")
    assert [m.name for m in a.methods] == ["baseline", "gkd"] and [m.name for m in b.methods] == ["gkd"]
    assert b.skipped == ("baseline",) and a.published == {"teacher": 90.5, "baseline": 80.25}
    assert b.student_config("gkd", seed=0).terms[0].params == {"task": "inter"}
    assert b.student_config("gkd", seed=0).terms[0].weight == 5.0 and b.student_config("gkd", seed=0).optim.lr == 0.02
    assert a.student_config("gkd", seed=0).terms[0].weight == 25.0 and a.student_config("gkd", seed=0).optim.lr == 0.1
    assert b.student_config("gkd", seed=0).model.params["widen_factor"] == 0.25
    with pytest.raises(ConfigError, match="has 2 pairs; a teacher config belongs to one of them"):
        study.teacher_config()
    with pytest.raises(ConfigError, match=r"no pair 'wide-smal'; did you mean 'wide-small'\?"):
        study.pair_study("wide-smal")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('skip = ["baseline"]', 'skip = ["basline"]'),
     r"pairs\[1\] \(wide-small\)\.skip: unknown method 'basline'; did you mean 'baseline'\?"),
    (lambda t: t.replace('name = "wide-small"', 'name = "wide-narrow"'), "pair name 'wide-narrow' appears twice"),
    (lambda t: t.replace('name = "wide-small"', 'name = "teachers"'), "other than 'teachers'"),
    (lambda t: t.replace("baseline = 80.25", "baseline = 180.25"), r"published\.baseline: expected an accuracy in %"),
    (lambda t: t.replace("teacher = 90.5", "teachr = 90.5"), r"published: unknown method 'teachr'"),
    (lambda t: t.replace('skip = ["baseline"]', 'skip = ["baseline", "gkd"]'), "every method is skipped"),
    (lambda t: t.replace("methods.gkd.terms", "methods.baseline.terms"),
     r"methods\.baseline: the method is skipped for this pair"),
    (lambda t: t.replace("methods.gkd.terms", "methods.gkd.term"), r"unknown key 'term'; did you mean 'terms'\?"),
    (lambda t: t.replace('skip = ["baseline"]', 'skip = ["baseline"]\nseeds = [1]'), r"unknown key 'seeds'"),
    (lambda t: t.replace("depth = 10, widen_factor = 1.0, in_channels = 1 } } }\nstudent = { model = { name = \"wrn\", "
                         "params = { depth = 10, widen_factor = 0.25",
                         "depth = 16, widen_factor = 1.0, in_channels = 1 } } }\nstudent = { model = { name = \"wrn\", "
                         "params = { depth = 10, widen_factor = 0.25"),
     "both name the teacher 'wrn' but with different settings"),
    (lambda t: t + '\n[teacher.model]\nname = "wrn"\n', "names the teacher in each pair"),
    (lambda t: t.replace("epochs = 1\n", "epochs = 0\n"), r"pairs\[0\] \(wide-narrow\) \[teacher\]: schedule\.epochs"),
    (lambda t: t.replace('teacher = { model = { name = "wrn", params = { depth = 10, widen_factor = 1.0, in_channels = 1 } } }\n'
                         'student = { model = { name = "wrn", params = { depth = 10, widen_factor = 0.5',
                         'teacher = { model = { name = "wrn" }, path = "x" }\n'
                         'student = { model = { name = "wrn", params = { depth = 10, widen_factor = 0.5'),
     r"pairs\[0\] \(wide-narrow\) \[teacher\]: expected exactly one of model"),
])
def test_a_bad_pairs_study_is_refused_naming_the_entry(tmp_path, edit, message):
    text = edit(PAIRS_STUDY)
    assert text != PAIRS_STUDY
    with pytest.raises(ConfigError, match=message):
        load_study(_write(tmp_path, text))


def test_a_model_without_params_takes_its_own_defaults_not_the_wrns():
    from geokd.train.config import config_from_dict

    assert config_from_dict({"model": {"name": "resnet56"}}).model.params == {}
    assert config_from_dict({}).model.params == {"depth": 28, "widen_factor": 1.0}   # the paper's WRN-28-1


@pytest.mark.slow
def test_a_pairs_study_trains_a_shared_teacher_once_and_tables_every_pair(tmp_path, capsys):
    from geokd.reproduce import BenchmarkTable, estimate_study_seconds, plan_study, run_study

    study = load_study(_write(tmp_path, PAIRS_STUDY))
    out = tmp_path / "runs"
    est = estimate_study_seconds(study, out=out, steps=1)
    assert est["missing_runs"] == 4 and set(est["pairs"]) == {"wide-narrow", "wide-small"}
    assert est["pairs"]["wide-narrow"]["missing_runs"] == 3 and est["pairs"]["wide-small"]["missing_runs"] == 1
    per = est["pairs"]["wide-small"]
    assert set(per["seconds_per_step"]) == {"student"}   # the shared teacher is counted with the first pair
    assert per["total_seconds"] == pytest.approx(per["seconds_per_step"]["student"] * math.ceil(1257 / 64))
    started = []
    bench = run_study(study, out=out, jobs=1, on_run_start=lambda run, i, n: started.append((run.pair, run.method)))
    assert started == [("wide-narrow", "teacher"), ("wide-narrow", "baseline"), ("wide-narrow", "gkd"),
                       ("wide-small", "gkd")]
    assert isinstance(bench, BenchmarkTable)
    assert all(p.status == "finished" for p in plan_study(study, out=out))
    assert (out / "two-pairs" / "teachers" / "wrn" / "seed0" / "model.pt").is_file()
    assert not (out / "two-pairs" / "wide-small" / "teacher").exists()
    for pair in ("wide-narrow", "wide-small"):
        assert (out / "two-pairs" / pair / "table.md").is_file()
    text = (out / "two-pairs" / "table.md").read_text()
    acc = 100 - bench.tables["wide-narrow"].rows[0].median_error
    assert f"| baseline | {acc:.2f} (80.25) | n/a |" in text
    teacher_acc = 100 - bench.tables["wide-narrow"].teacher_error
    assert f"| teacher | {teacher_acc:.2f} (90.50) | {teacher_acc:.2f} (–) |" in text   # one teacher, two pairs
    rows = (out / "two-pairs" / "table.csv").read_text().splitlines()
    assert rows[0] == "pair,method,runs,median_test_accuracy,sd_test_accuracy,published_accuracy"
    assert len(rows) == 1 + 3 + 2   # teacher, baseline, gkd; teacher, gkd
    # a second run reuses everything; so does the command, which prints the summary last
    started.clear()
    run_study(study, out=out, jobs=1, on_run_start=lambda run, i, n: started.append(run))
    assert started == []
    from geokd.cli import main

    capsys.readouterr()
    assert main(["reproduce", study.source, "--out", str(out), "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "4 runs, 4 finished, 0 to train" in printed and "[1/" not in printed
    assert printed.count("## two-pairs/") == 2 and f"| baseline | {acc:.2f} (80.25) | n/a |" in printed
    assert main(["reproduce", study.source, "--out", str(out), "--pair", "wide-small", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "(1 of 2 pairs)" in printed and "2 runs, 2 finished" in printed   # its gkd run and the shared teacher
    assert "the summary table" in printed and "## two-pairs:" not in printed


def test_a_saved_run_without_a_setting_added_since_is_still_the_studys(tmp_path):
    from geokd.reproduce import plan_study
    from geokd.train.config import config_to_dict
    from geokd.train.runs import RunDir

    study = load_study(_write(tmp_path, PAIRS_STUDY)).pair_study("wide-small")
    run = next(p for p in plan_study(study, out=tmp_path) if p.method == "gkd")
    saved = json.loads(json.dumps(config_to_dict(run.config)))
    for key in ("stream", "workers", "mean", "std"):   # a run made before these existed
        del saved["data"][key]
    run_dir = RunDir(run.run_dir)
    run.run_dir.mkdir(parents=True)
    run_dir.write_json(run_dir.config_path, saved)
    (run.run_dir / "state.pt").write_bytes(b"")
    assert next(p for p in plan_study(study, out=tmp_path) if p.method == "gkd").status == "partial"
    saved["data"]["batch_size"] = 32
    run_dir.write_json(run_dir.config_path, saved)
    changed = next(p for p in plan_study(study, out=tmp_path) if p.method == "gkd")
    assert changed.status == "changed" and changed.differences == ["data.batch_size: 32 on disk, 64 in the study"]


# ------------------------------------------------------------------ the ImageNet study

def test_the_imagenet_study_needs_its_two_settings(monkeypatch):
    monkeypatch.delenv("GEOKD_IMAGENET_DIR", raising=False)
    monkeypatch.setenv("GEOKD_RESNET34_WEIGHTS", "/w/resnet34.pth")
    with pytest.raises(ConfigError) as info:
        load_study(str(IMAGENET_STUDY))
    assert str(info.value) == (f"{IMAGENET_STUDY} base.data.name: 'imagefolder:$GEOKD_IMAGENET_DIR' uses "
                               "$GEOKD_IMAGENET_DIR, which is not set")
    monkeypatch.setenv("GEOKD_IMAGENET_DIR", "/data/imagenet")
    monkeypatch.delenv("GEOKD_RESNET34_WEIGHTS")
    with pytest.raises(ConfigError, match=r"teacher\.path: 'torchvision:resnet34@\$GEOKD_RESNET34_WEIGHTS' uses "
                                          r"\$GEOKD_RESNET34_WEIGHTS, which is not set"):
        load_study(str(IMAGENET_STUDY))


def test_the_imagenet_study_is_torchvisions_recipe(monkeypatch):
    monkeypatch.setenv("GEOKD_IMAGENET_DIR", "~/imagenet")
    monkeypatch.setenv("GEOKD_RESNET34_WEIGHTS", "/w/resnet34.pth")
    study = load_study(str(IMAGENET_STUDY))
    assert study.teacher_path == "torchvision:resnet34@/w/resnet34.pth"
    assert study.train_size == 1281167 and study.estimate
    for method in study.methods:
        c = study.student_config(method.name, seed=0)
        assert c.data.name == "imagefolder:" + os.path.expanduser("~/imagenet")
        assert (c.data.stream, c.data.image_size, c.data.batch_size, c.data.drop_last) == (True, 224, 256, True)
        assert (c.data.mean, c.data.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        assert (c.optim.lr, c.optim.momentum, c.optim.weight_decay) == (0.1, 0.9, 1e-4)
        assert (c.schedule.epochs, c.schedule.milestones, c.schedule.gamma) == (90, (30, 60), 0.1)
        assert c.model.name == "torchvision:resnet18" and c.teacher == study.teacher_path
        assert c.model.sensing_points == c.teacher_sensing_points == ("layer1", "layer2", "layer3", "layer4", "avgpool")


def _image_folder(root: Path, *, train: int, test: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", test)):
        for c in ("n01440764", "n01443537"):
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = rng.integers(36, 60, size=2)   # sizes differ, as in ImageNet
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_a_streamed_folder_splits_each_global_batch_as_the_trainer_shards(tmp_path):
    from geokd.data.stream import IMAGENET_MEAN, IMAGENET_STD, StreamingImageFolder
    from geokd.train.distributed import DistributedContext

    root = _image_folder(tmp_path / "folder", train=6, test=1)

    def stream(rank, world, seed=3, workers=0):
        return StreamingImageFolder(root, split="train", image_size=32, batch_size=4, shuffle=True, augment=True,
                                    mean=IMAGENET_MEAN, std=IMAGENET_STD, generator=torch.Generator().manual_seed(seed),
                                    workers=workers, rank=rank, world_size=world)

    whole = stream(0, 1)
    assert (len(whole), whole.num_classes, len(whole.labels)) == (3, 2, 12)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    labels = [y for _, y in whole]
    assert torch.equal(torch.cat(labels), whole.labels[order])   # the permutation the generator draws
    halves = [list(stream(r, 2)) for r in (0, 1)]
    ctx = [DistributedContext(rank=r, world_size=2) for r in (0, 1)]
    for i, y in enumerate(labels):
        for r in (0, 1):
            assert torch.equal(halves[r][i][1], ctx[r].shard(y))   # the share ctx.shard would take
            assert halves[r][i][0].shape == (len(ctx[r].shard(y)), 3, 32, 32)
    # augmentation in worker processes is reproducible from the seed, and differs with it
    a, b, c = ([x for x, _ in stream(0, 1, seed=s, workers=2)] for s in (5, 5, 6))
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and not all(torch.equal(p, q) for p, q in zip(a, c))
    test = StreamingImageFolder(root, split="test", image_size=32, batch_size=4, shuffle=False, mean=IMAGENET_MEAN,
                                std=IMAGENET_STD, workers=0)
    (x, y), = list(test)
    assert y.tolist() == [0, 1] and x.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("data, message", [
    ({"name": "cifar100", "stream": True}, r"data\.stream: streams read image folders"),
    ({"name": "imagefolder:/x", "stream": True, "image_size": 224}, r"data\.stream: expected data\.image_size"),
    ({"mean": [0.5, 0.5, 0.5]}, "data.mean, data.std: expected both or neither"),
    ({"mean": [0.5, 0.5], "std": [0.2, 0.0]}, "std > 0"),
    ({"workers": -1}, "data.workers: expected a number of decoding processes >= 0"),
])
def test_bad_data_settings_are_refused(data, message):
    from geokd.train.config import config_from_dict

    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data": data})


DDP_SCRIPT = textwrap.dedent('''
    import hashlib, os, sys, torch
    from geokd.train import loop

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    log = open(os.path.join(sys.argv[2], f"rank{rank}.txt"), "w")
    original = loop._Stepper.step

    def step(self, x, y, *, epoch, step):
        out = original(self, x, y, epoch=epoch, step=step)
        digest = hashlib.sha256()   # every parameter and buffer of the student, in key order
        for key, value in sorted(self.parts.student.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().contiguous().numpy().tobytes())
        log.write(f"{epoch} {step} {x.shape[0]} {len(self.parts.student.state_dict())} {digest.hexdigest()}\\n")
        log.flush()
        return out

    loop._Stepper.step = step
    from geokd.cli import main
    sys.exit(main(["reproduce", sys.argv[1], "--out", sys.argv[3], "--device", "cpu"]))
''')


@pytest.mark.slow
def test_the_imagenet_study_trains_data_parallel_under_torchrun_with_equal_ranks(tmp_path):
    """`geokd reproduce` of the ImageNet study under a two-process torchrun (gloo, CPU), on a
    tiny image folder (2 classes x 4 PNGs to train): the study's file with its recipe cut to
    one epoch of 2 steps (global batch 4, 32 px crops, no decoding workers) and a 2-class
    teacher. After every step both ranks hold the same weights and BatchNorm statistics."""
    import torchvision

    root = _image_folder(tmp_path / "imagenet", train=4, test=2)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet34(num_classes=2).state_dict(), tmp_path / "resnet34.pt")
    study = _write(tmp_path, textwrap.dedent(f'''
        [study]
        name = "imagenet-tiny"
        extends = "{IMAGENET_STUDY}"

        [base.data]
        image_size = 32
        batch_size = 4
        eval_batch_size = 4
        workers = 0

        [base.schedule]
        epochs = 1
        milestones = []

        [teacher]
        path = "torchvision:resnet34?num_classes=2@$GEOKD_RESNET34_WEIGHTS"

        [[methods]]
        name = "kd+gkd"
        ce_weight = 0.5
        terms = [{{ loss = "kd", weight = 0.5, params = {{ temperature = 1.0 }} }}, {{ loss = "gkd", weight = 25.0 }}]
    '''), name="tiny.toml")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    logs, out = tmp_path / "logs", tmp_path / "runs"
    logs.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEOKD_IMAGENET_DIR": str(root),
           "GEOKD_RESNET34_WEIGHTS": str(tmp_path / "resnet34.pt")}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                           "--nproc-per-node", "2", str(script), study, str(logs), str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [(logs / f"rank{r}.txt").read_text().split("\n")[:-1] for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2   # 8 images / global batch 4
    for line0, line1 in zip(*ranks):
        epoch, step, local, entries, digest = line0.split()
        assert line1 == line0   # same step, same state on both ranks
        assert local == "2" and int(entries) > 100   # each rank its half; parameters and BN buffers
    assert ranks[0][0].split()[-1] != ranks[0][1].split()[-1]   # the weights did move
    run = out / "imagenet-tiny" / "kd+gkd" / "seed0"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["status"] == "finished"
    assert (run / "model.pt").is_file() and (out / "imagenet-tiny" / "table.md").is_file()
    # only rank 0 printed: one estimate, one table
    assert proc.stdout.count("estimated time for the 1 missing runs on cpu, per device of 2 data-parallel") == 1
    assert proc.stdout.count("## imagenet-tiny") == 1
    assert "graph distance to teacher (layer1 / layer2 / layer3 / layer4 / avgpool)" in proc.stdout
