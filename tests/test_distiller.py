"""Distil in your own loop: :class:`geokd.distill.Distiller` on torchvision networks and real
CIFAR-10 images, against the registry's losses computed directly on the same features."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from geokd.data import BatchLoader, load_dataset
from geokd.distill import Distiller
from geokd.losses import build_loss
from geokd.losses.gkd import gkd_loss
from geokd.models.taps import FeatureTaps

TEACHER_LAYERS = ["layer2", "layer3", "layer4"]
STUDENT_LAYERS = ["features.6", "features.13", "features.18"]


def _networks(seed=0):
    torch.manual_seed(seed)
    teacher = torchvision.models.resnet18(num_classes=10)
    student = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
    return teacher, student


@pytest.fixture(scope="module")
def batch():
    """16 real CIFAR-10 test images, normalized, two per class of the first eight classes."""
    data = load_dataset("cifar10", split="test")
    picked = torch.cat([torch.nonzero(data.labels == c).ravel()[:2] for c in range(8)])
    return next(iter(BatchLoader(data.subset(picked), batch_size=len(picked), shuffle=False)))


def test_the_gkd_term_equals_gkd_loss_on_the_same_features(batch):
    x, y = batch
    teacher, student = _networks()
    teacher.eval()
    with torch.no_grad():
        t_feats = FeatureTaps(teacher, TEACHER_LAYERS)(x).features
    with Distiller(teacher, student, losses={"gkd": 25.0, "kd": {"weight": 0.9, "temperature": 4.0}},
                   teacher_layers=TEACHER_LAYERS, student_layers=STUDENT_LAYERS) as distill:
        s_out = FeatureTaps(student, STUDENT_LAYERS)(x)  # the same forward the Distiller listens to
        terms = distill(x, y)
    expected_gkd = gkd_loss(list(s_out.features), list(t_feats))
    assert torch.allclose(terms.unweighted["gkd"], expected_gkd, rtol=1e-6, atol=1e-9)
    assert torch.allclose(terms["gkd"], 25.0 * expected_gkd, rtol=1e-6)
    with torch.no_grad():
        t_logits = teacher(x)
    expected_kd = build_loss("kd", temperature=4.0)(s_out, type(s_out)(t_logits, []), y)
    assert torch.allclose(terms.unweighted["kd"], expected_kd, rtol=1e-6)
    assert torch.allclose(terms.total, terms["gkd"] + terms["kd"])
    assert terms.weights == {"gkd": 25.0, "kd": 0.9}


def test_the_term_is_invariant_to_permuting_the_batch(batch):
    x, y = batch
    teacher, student = _networks()
    student.eval()  # batch norm in eval mode: each input's features do not depend on the others
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    with Distiller(teacher, student, losses={"gkd": 1.0},
                   teacher_layers=TEACHER_LAYERS, student_layers=STUDENT_LAYERS) as distill:
        student(x)
        plain = distill(x, y)["gkd"]
        student(x[perm])
        permuted = distill(x[perm], y[perm])["gkd"]
    assert torch.allclose(plain, permuted, rtol=1e-5)


def test_a_few_sgd_steps_lower_the_loss_and_the_teacher_stays_frozen(batch):
    x, y = batch
    teacher, student = _networks()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    losses = []
    with Distiller(teacher, student, losses={"gkd": 25.0},
                   teacher_layers=TEACHER_LAYERS, student_layers=STUDENT_LAYERS) as distill:
        for _ in range(8):
            logits = student(x)
            loss = F.cross_entropy(logits, y) + distill(x, y).total
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            assert not teacher.training
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.training  # its mode is restored on close
    for key, value in teacher.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, teacher_before[key]), key  # no running-stat updates either


def test_hooks_are_removed_even_when_the_loop_raises(batch):
    x, y = batch
    teacher, student = _networks()
    hooked = [m for name, m in student.named_modules() if name in STUDENT_LAYERS] + [student]
    with pytest.raises(RuntimeError, match="the user's loop failed"):
        with Distiller(teacher, student, losses={"gkd": 1.0},
                       teacher_layers=TEACHER_LAYERS, student_layers=STUDENT_LAYERS) as distill:
            assert all(m._forward_hooks for m in hooked)
            student(x)
            raise RuntimeError("the user's loop failed")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in hooked)
    with pytest.raises(ValueError, match="already closed"):
        distill(x, y)


def test_networks_without_sensing_points_take_logit_losses():
    teacher, student = _networks()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with Distiller(teacher, student, losses={"kd": 1.0}) as distill:
        student(x)
        assert distill(x, y)["kd"].item() > 0
    with pytest.raises(ValueError, match=r"the losses 'gkd' compare sensing points, but no layers are named and "
                                         r"ResNet / MobileNetV2 declare none; expected teacher_layers="):
        Distiller(teacher, student, losses={"gkd": 1.0})
    assert not student._forward_hooks


@pytest.mark.parametrize("kwargs, message", [
    ({"losses": {"gdk": 1.0}}, r"unknown loss 'gdk'; did you mean 'gkd'"),
    ({"losses": {"gkd": {"weight": 1.0, "kk": 3}}}, r"unknown parameter 'kk'; did you mean 'k'"),
    ({"losses": {"gkd": -1.0}}, r"expected a finite weight >= 0, got -1.0"),
    ({"losses": {"gkd": 1.0}, "teacher_layers": ["layer2", "layer5"], "student_layers": STUDENT_LAYERS[:2]},
     r"teacher_layers: no module named 'layer5' in ResNet; did you mean"),
    ({"losses": {"gkd": 1.0}, "teacher_layers": TEACHER_LAYERS, "student_layers": STUDENT_LAYERS[:2]},
     r"expected as many teacher_layers as student_layers \(paired in order\), got 3 teacher layers"),
    ({"losses": {"gkd": 1.0}, "teacher_layers": TEACHER_LAYERS},
     r"expected both teacher_layers and student_layers, or neither; got only teacher_layers"),
])
def test_bad_construction_names_what_was_expected(kwargs, message):
    teacher, student = _networks()
    with pytest.raises(ValueError, match=message):
        Distiller(teacher, student, **kwargs)
    assert not student._forward_hooks and not student._forward_pre_hooks  # nothing left behind


def test_bad_calls_name_what_was_expected():
    teacher, student = _networks()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with Distiller(teacher, student, losses={"gkd": 1.0},
                   teacher_layers=TEACHER_LAYERS, student_layers=STUDENT_LAYERS) as distill:
        with pytest.raises(ValueError, match="expected a student forward before the call"):
            distill(x, y)
        student(x)
        distill(x, y)
        with pytest.raises(ValueError, match="already used by a previous call; expected one call per student forward"):
            distill(x, y)
        student(x)
        with pytest.raises(ValueError, match="the teacher's inputs have a batch of 3 but the student's latest forward "
                                             "had 4"):
            distill(x[:3], y[:3])
        student(x)
        with pytest.raises(ValueError, match=r"labels.*10"):
            distill(x, torch.tensor([0, 1, 2, 10]))
        student.eval()
        student(x[:1])
        with pytest.raises(ValueError, match="expected batches of at least 2 inputs"):
            distill(x[:1], y[:1])
        bad = x.clone()
        bad[1, 0, 0, 0] = float("nan")
        student(bad)
        with pytest.raises(ValueError, match=r"(?i)nan|finite"):
            distill(bad, y)
