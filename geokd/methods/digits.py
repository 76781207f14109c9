"""Embedded-default runs of BYOT, selective KD, IEP and MHGD on scikit-learn's digits.

Each ``run_*`` function trains on the digits split of :func:`geokd.data.load_dataset`
(1,257 train / 540 test images, 8×8, offline) and returns a list of result rows (dicts)
for a table; nothing is printed (``geokd methods`` prints them). The networks are geokd's
WRNs with one input channel: teacher WRN-16-1; IEP and MHGD compare graphs of equal width
at every sensing point, so their student is the shallower WRN-10-1 (same widths 16/32/64);
selective KD distils into WRN-16-0.5 as the GKD study does. The optimiser is the paper's
(SGD 0.1, momentum 0.9, weight decay 5e-4, lr × 0.2 at 55 % and 80 % of the epochs).
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from geokd.models.outputs import ModelOutputs

__all__ = ["digits_data", "train_network", "train_teacher", "accuracy", "run_byot", "run_selective", "run_graph_method", "sensing_maps",
           "iep_codes_by_stage"]

STAGES = ("layer1", "layer2", "layer3")


def digits_data(*, seed: int = 0, device="cpu", batch_size: int = 64):
    """(train dataset, a re-iterable of shuffled train batches, x_test, y_test)."""
    from geokd.data import BatchLoader, load_dataset

    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    generator = torch.Generator().manual_seed(seed)
    batches = BatchLoader(train, batch_size=batch_size, shuffle=True, augment=False, device=device,
                          generator=generator)
    x_test, y_test = next(iter(BatchLoader(test, batch_size=len(test), shuffle=False, augment=False,
                                           device=device)))
    return train, batches, x_test, y_test


def sensing_maps(model: nn.Module, x: torch.Tensor, names=STAGES) -> ModelOutputs:
    """Logits and the outputs of the named modules (forward hooks; the model is unchanged)."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: captured.__setitem__(n, out)) for n in names]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return ModelOutputs(logits, [captured[n] for n in names])


def _grad_norm(grads) -> torch.Tensor:
    return torch.sqrt(sum((g.detach() ** 2).sum() for g in grads if g is not None))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    acc = float((model(x).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def train_network(model: nn.Module, batches, *, epochs: int, term: Callable | None = None, weight: float = 1.0,
                  clip_to_task_gradient: bool = False, teacher: nn.Module | None = None, lr: float = 0.1,
                  device="cpu") -> nn.Module:
    """SGD on CE (+ ``weight·term(student_outputs, teacher_outputs, labels)``).

    With ``clip_to_task_gradient`` the term's gradient is rescaled to at most the CE
    gradient's norm (IEP, KD-SVD), as geokd's trainer does. ``batches`` is re-iterable
    over ``(x, y)``; selective KD passes a loader over its kept subset.
    """
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    milestones = [max(1, int(epochs * 0.55)), max(1, int(epochs * 0.8))]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.2)
    if teacher is not None:
        teacher.eval()
    for _ in range(epochs):
        for x, y in batches:
            student = sensing_maps(model, x)
            ce = F.cross_entropy(student.logits, y)
            optimizer.zero_grad(set_to_none=True)
            if term is None:
                ce.backward()
            else:
                with torch.no_grad():
                    t_out = sensing_maps(teacher, x) if teacher is not None else None
                dist = weight * term(student, t_out, y)
                if clip_to_task_gradient:
                    g_task = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
                    g_dist = torch.autograd.grad(dist, params, allow_unused=True)
                    scale = torch.clamp(_grad_norm(g_task) / (_grad_norm(g_dist) + 1e-12), max=1.0)
                    for p, a, b in zip(params, g_task, g_dist):
                        if a is not None or b is not None:
                            p.grad = (a if a is not None else 0) + (b * scale if b is not None else 0)
                else:
                    (ce + dist).backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


def _wrn(depth: int, widen: float, seed: int):
    from geokd.models import build_model

    torch.manual_seed(seed)
    return build_model("wrn", depth=depth, widen_factor=widen, num_classes=10, in_channels=1)


def train_teacher(*, epochs: int = 15, seed: int = 0, device="cpu"):
    _, batches, x_test, y_test = digits_data(seed=seed, device=device)
    teacher = train_network(_wrn(16, 1.0, seed), batches, epochs=epochs, device=device)
    return teacher, accuracy(teacher, x_test, y_test)


def run_byot(*, epochs: int = 15, seed: int = 0, device="cpu") -> list[dict]:
    """BYOT on WRN-16-1: accuracy and measured time of every exit and of the ensemble."""
    from geokd.methods.byot import SelfDistillationNetwork, evaluate_exits, exit_smoothness, train_self_distillation

    train, batches, x_test, y_test = digits_data(seed=seed, device=device)
    baseline = train_network(_wrn(16, 1.0, seed), batches, epochs=epochs, device=device)
    net = SelfDistillationNetwork(_wrn(16, 1.0, seed), example_input=x_test[:2])
    milestones = [max(1, int(epochs * 0.55)), max(1, int(epochs * 0.8))]
    train_self_distillation(net, batches, epochs=epochs, milestones=milestones, gamma=0.2, device=device)
    reports = evaluate_exits(net, (x_test, y_test), device=device)
    smooth = exit_smoothness(net, x_test, y_test, k=10, device=device)
    rows = [{"method": "byot", "exit": "baseline (no exits)", "accuracy": accuracy(baseline, x_test, y_test)}]
    for i, r in enumerate(reports):
        row = {"method": "byot", "exit": r.name, "accuracy": r.accuracy,
               "ms_per_batch": 1000 * r.seconds_per_batch, "batch": r.batch_size}
        if i < len(smooth):
            row["label_smoothness"] = smooth[i]
        rows.append(row)
    return rows


def run_selective(*, epochs: int = 15, seed: int = 0, k: int = 10, label_trust: float = 0.2,
                  temperature: float = 4.0, device="cpu") -> list[dict]:
    """Selective KD: teacher graph → min-cut → KD (CE + T²·KL, T = 4) on the kept inputs vs all."""
    from geokd.data import BatchLoader
    from geokd.losses.kd import kd_loss
    from geokd.methods.selective import select_well_embedded, teacher_embeddings

    train, batches, x_test, y_test = digits_data(seed=seed, device=device)
    teacher = train_network(_wrn(16, 1.0, seed), batches, epochs=epochs, device=device)
    x_train = next(iter(BatchLoader(train, batch_size=len(train), shuffle=False, augment=False, device=device)))[0]
    emb = teacher_embeddings(teacher, x_train, layer="pool", device=device)
    selection = select_well_embedded(emb, train.labels, k=k, label_trust=label_trust, device=device)

    def kd_term(student, t_out, labels):
        # CE + T²·KL: the GKD authors' KD (λ = T² on the plain KL, full cross-entropy).
        return kd_loss(student.logits, t_out.logits, temperature=temperature)

    rows = [{"method": "selective", "variant": "teacher", "accuracy": accuracy(teacher, x_test, y_test)}]
    for name, dataset in (("kd on all", train), ("kd on kept", train.subset(selection.kept))):
        loader = BatchLoader(dataset, batch_size=64, shuffle=True, augment=False, device=device,
                             generator=torch.Generator().manual_seed(seed))
        student = train_network(_wrn(16, 0.5, seed), loader, epochs=epochs, term=kd_term, teacher=teacher,
                                device=device)
        rows.append({"method": "selective", "variant": name, "accuracy": accuracy(student, x_test, y_test),
                     "train_inputs": len(dataset)})
    rows[-1].update({"dropped": int(len(selection.dropped)), "dropped_per_class": selection.dropped_per_class})
    return rows


def iep_codes_by_stage(teacher: nn.Module, fit_batches, x: torch.Tensor, *, device="cpu",
                       pca: str = "incremental"):
    """IEP's compressed teacher vectors of ``x`` per stage, the IPCA fitted over ``fit_batches``.

    Returns ``(codes, iep)``: one ``(N, C_l // 2)`` array per stage and the fitted module.
    """
    from geokd.methods.iep import IEP

    iep = IEP(channels=(16, 32, 64), pca=pca)
    teacher.eval().to(device)
    with torch.no_grad():
        for xb, _ in fit_batches:
            iep.teacher_codes(sensing_maps(teacher, xb.to(device)).features, update=True)
        _, zs = iep.teacher_codes(sensing_maps(teacher, x.to(device)).features, update=False)
    return [z.cpu().numpy() for z in zs], iep


def run_graph_method(method: str, *, epochs: int = 15, fit_epochs: int = 3, seed: int = 0, weight: float = 1.0,
                     device="cpu", teacher: nn.Module | None = None) -> list[dict]:
    """IEP or MHGD: WRN-16-1 teacher → WRN-10-1 student, vs the same student without KD."""
    from geokd.methods.iep import IEPLoss
    from geokd.methods.mhgd import MHGDLoss

    if method not in ("iep", "mhgd"):
        raise ValueError(f"method: expected 'iep' or 'mhgd', got {method!r}")
    _, batches, x_test, y_test = digits_data(seed=seed, device=device)
    if teacher is None:
        teacher = train_network(_wrn(16, 1.0, seed), batches, epochs=epochs, device=device)
    term = (IEPLoss if method == "iep" else MHGDLoss)(channels=(16, 32, 64)).to(device)
    core = term.iep if method == "iep" else term.mhgd
    teacher.eval()
    with torch.no_grad():
        feature_batches = [[f.detach() for f in sensing_maps(teacher, x).features] for x, _ in batches]
    start = time.perf_counter()
    core.fit_teacher(feature_batches, epochs=fit_epochs, lr=0.01)
    fit_seconds = time.perf_counter() - start
    term.eval()  # frozen graphs (and IPCA) while the student trains
    baseline = train_network(_wrn(10, 1.0, seed), batches, epochs=epochs, device=device)
    student = train_network(_wrn(10, 1.0, seed), batches, epochs=epochs, term=term, weight=weight,
                            clip_to_task_gradient=True, teacher=teacher, device=device)
    return [
        {"method": method, "variant": "teacher WRN-16-1", "accuracy": accuracy(teacher, x_test, y_test)},
        {"method": method, "variant": "student WRN-10-1, no KD", "accuracy": accuracy(baseline, x_test, y_test)},
        {"method": method, "variant": f"student WRN-10-1, {method}", "accuracy": accuracy(student, x_test, y_test),
         "teacher_fit_seconds": fit_seconds},
    ]
