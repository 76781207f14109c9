"""Deep Mutual Learning: the alternating update of Algorithm 1, batch-norm bookkeeping, a real run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geokd.errors import ConfigError
from geokd.train import config_from_dict
from geokd.train.mutual import mutual_losses, mutual_step, train_mutual


def _mlp(seed, *, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 6)] + ([nn.BatchNorm1d(6)] if bn else []) + [nn.ReLU(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


def _sgd_step(model, loss, lr):
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p -= lr * g


def test_step_follows_algorithm_1():
    torch.manual_seed(0)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    net1, net2 = _mlp(1), _mlp(2)
    ref1, ref2 = copy.deepcopy(net1), copy.deepcopy(net2)
    lr = 0.5
    opts = tuple(torch.optim.SGD(m.parameters(), lr=lr) for m in (net1, net2))
    mutual_step((net1, net2), opts, x, y)

    # Reference written out: CE + Σ_c p_peer log(p_peer / p_self), mean over the batch.
    def objective(z, z_peer):
        p_peer = torch.softmax(z_peer, 1)
        kl = (p_peer * (torch.log(p_peer) - torch.log_softmax(z, 1))).sum(1).mean()
        return F.cross_entropy(z, y) + kl

    old2 = ref2(x).detach()
    _sgd_step(ref1, objective(ref1(x), old2), lr)
    new1 = ref1(x).detach()  # student 2 learns from student 1 *after* its update
    simultaneous = copy.deepcopy(ref2)
    _sgd_step(ref2, objective(ref2(x), new1), lr)
    for a, b in zip(list(net1.parameters()) + list(net2.parameters()), list(ref1.parameters()) + list(ref2.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and that differs from updating both from the same first-pass predictions
    _sgd_step(simultaneous, objective(simultaneous(x), _mlp(1)(x).detach()), lr)
    assert not torch.allclose(simultaneous[2].weight, net2[2].weight)


def test_batchnorm_statistics_see_each_batch_once():
    torch.manual_seed(1)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    net1, net2 = _mlp(3, bn=True), _mlp(4, bn=True)
    once = copy.deepcopy(net1)
    once(x)  # one training-mode forward: the statistics the step should leave
    opts = tuple(torch.optim.SGD(m.parameters(), lr=0.1) for m in (net1, net2))
    mutual_step((net1, net2), opts, x, y)
    torch.testing.assert_close(net1[1].running_mean, once[1].running_mean)
    torch.testing.assert_close(net1[1].running_var, once[1].running_var)
    assert int(net1[1].num_batches_tracked) == 1 and int(net2[1].num_batches_tracked) == 1


def test_mutual_losses_values_and_errors():
    z = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.float64)
    peer = torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)
    ce, kl = mutual_losses(z, peer, torch.tensor([1]))
    assert float(ce) == pytest.approx(-float(torch.log_softmax(z, 1)[0, 1]))
    p = torch.softmax(peer, 1)
    assert float(kl) == pytest.approx(float((p * (p.log() - torch.log_softmax(z, 1))).sum()))
    _, kl_t = mutual_losses(z, peer, torch.tensor([1]), temperature=2.0)
    p2 = torch.softmax(peer / 2, 1)
    assert float(kl_t) == pytest.approx(4 * float((p2 * (p2.log() - torch.log_softmax(z / 2, 1))).sum()))
    with pytest.raises(ValueError, match="expected one label per input"):
        mutual_losses(z, peer, torch.tensor([0, 1]))


def test_peer_gets_no_gradient_from_the_other_students_loss():
    z = torch.randn(4, 3, requires_grad=True)
    peer = torch.randn(4, 3, requires_grad=True)
    ce, kl = mutual_losses(z, peer, torch.tensor([0, 1, 2, 0]))
    (ce + kl).backward()
    assert peer.grad is None


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"teacher": "runs/teacher"}, "expected no teacher and no terms"),
        ({"terms": [{"loss": "kd"}]}, "expected no teacher and no terms"),
    ],
)
def test_refuses_teacher_and_terms(tmp_path, changes, match):
    cfg = config_from_dict({"data": {"name": "digits"}, **changes})
    with pytest.raises(ConfigError, match=match):
        train_mutual(cfg, run_dir=tmp_path / "run")


def test_refuses_bad_temperature(tmp_path):
    with pytest.raises(ConfigError, match="temperature"):
        train_mutual(config_from_dict({"data": {"name": "digits"}}), run_dir=tmp_path / "run", temperature=0.0)


@pytest.mark.slow
def test_two_students_learn_digits_together(tmp_path):
    cfg = config_from_dict({
        "data": {"name": "digits", "batch_size": 64, "augment": False},
        "model": {"name": "small_cnn", "params": {"in_channels": 1, "widths": [8, 16, 32]}},
        "optim": {"lr": 0.05},
        "schedule": {"epochs": 3, "milestones": [2]},
        "run": {"seed": 0},
    })
    result = train_mutual(cfg, run_dir=tmp_path / "dml", peer={"name": "small_cnn", "in_channels": 1, "widths": [16, 16, 16]})
    m = result.metrics
    assert len(m) == 3
    for k in (1, 2):
        assert m[-1][f"train_cross_entropy_{k}"] < m[0][f"train_cross_entropy_{k}"]
        assert m[-1][f"test_error_{k}"] < 50.0  # chance is 90 %
        assert m[-1][f"train_kl_{k}"] > 0
    for k in (1, 2):
        sub = result.run_dir / f"student_{k}"
        assert (sub / "model.pt").is_file()
    from geokd.train import load_teacher
    from geokd.train.loop import evaluate
    from geokd.data import BatchLoader, load_dataset

    reloaded = load_teacher(result.run_dir / "student_2")
    test = BatchLoader(load_dataset("digits", split="test"), batch_size=500, shuffle=False, augment=False, device="cpu")
    assert evaluate(reloaded, test) == pytest.approx(result.final_test_errors[1])
    with pytest.raises(ConfigError, match="already holds a run"):
        train_mutual(cfg, run_dir=tmp_path / "dml")


def test_students_train_channels_last_on_a_cpu_and_match_channels_first(tmp_path):
    """Unset, both students train channels-last on a CPU; config.json says so, and the run
    is the channels-first run up to rounding."""
    import json

    def config(**run):
        return config_from_dict({
            "data": {"name": "digits", "batch_size": 128, "augment": False},
            "model": {"name": "small_cnn", "params": {"in_channels": 1, "widths": [8, 8, 8]}},
            "optim": {"lr": 0.05},
            "schedule": {"epochs": 1},
            "run": {"seed": 0, **run},
        })

    default = train_mutual(config(), run_dir=tmp_path / "default", progress=False)
    first = train_mutual(config(channels_last=False), run_dir=tmp_path / "first", progress=False)
    recorded = {name: json.loads((tmp_path / name / "config.json").read_text())["run"]["channels_last"]
                for name in ("default", "first")}
    assert recorded == {"default": True, "first": False}
    for net in default.models:
        convs = [p for p in net.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for k in (1, 2):
        for key in (f"train_cross_entropy_{k}", f"train_kl_{k}"):
            assert default.metrics[0][key] == pytest.approx(first.metrics[0][key], rel=1e-4)
