r"""IEP knowledge transfer (Lee & Song, AAAI 2021): stacked PCA + an MPNN over batch graphs.

Per sensing point ℓ of the teacher (a ``(B, C, H, W)`` map read as a ``(HW × C)`` matrix per
input, or a ``(B, C)`` vector as a ``1 × C`` matrix):

1. **first principal direction**: the top singular pair (u, v) of the map, v ∈ S^{C−1},
   signed so that ``max(v) + min(v) ≥ 0`` (the released sign rule; uncentered, as released);
2. **stereographic map to a plane**: with c = 1/√C·**1**, v is projected from the pole −c
   onto the hyperplane through the origin orthogonal to c,
   y = 2(v + c)/(1 + ⟨v, c⟩) − 2c (so v = c ↦ 0 and v ⊥ c ↦ 2v);
3. **incremental PCA** over batches (:class:`IncrementalPCA`), keeping ⌊C/2⌋ components, with
   an EMA mean (rate 0.9 on the new batch) — or, for the paper's ablation, a plain PCA of
   each batch (``mode="batch"``), or the exact streaming PCA (``mean_update="cumulative"``,
   identical to scikit-learn's ``IncrementalPCA``);
4. the batch graph of layer ℓ: cosine affinity G_ℓ of the compressed vectors z = (y − μ)P.

The student's direction at ℓ is its own map projected on the *teacher's* left singular vector,
v_S = normalize(S_ℓᵀ u_T) (so student and teacher need equal C and HW at each sensing point),
then mapped and compressed with the teacher's μ and P.

An MPNN (:class:`GraphMPNN`) between consecutive points reads the previous layer's vectors as
edges and the current layer's pairwise differences as node input, passes 2 rounds of gated
messages and reads the graph out as the mean over edge features. Two stages, as in the paper:

1. **teacher fitting** (:meth:`IEP.fit_teacher`): on teacher features alone, the IPCA
   statistics are accumulated and the MPNNs trained to predict G_ℓ with
   Σ_rows KL(softmax G_ℓ ‖ softmax R_ℓ); then both are frozen;
2. **distillation**: the student is distilled with L1 on the messages (Σ over features, mean
   over pairs) plus Σ_rows KL(softmax R_T ‖ softmax R_S), summed over layer pairs, through
   the frozen MPNNs (eval mode). The method clips the distillation gradient to the task
   gradient's norm: :class:`IEPLoss` declares ``clip_to_task_gradient = True``.

:class:`IEPLoss` is the registered ``"iep"`` term: the trainer runs its fitting stage
(:class:`TeacherFittedTerm`, shared with MHGD) before the student's first step.

Examples
--------
>>> import torch
>>> _ = torch.manual_seed(0)
>>> iep = IEP(channels=(8, 16))
>>> teacher = [torch.relu(torch.randn(10, 8, 4, 4)), torch.relu(torch.randn(10, 16, 2, 2))]
>>> student = [torch.relu(torch.randn(10, 8, 4, 4)), torch.relu(torch.randn(10, 16, 2, 2))]
>>> fit_losses = iep.fit_teacher([teacher] * 3, epochs=2, lr=0.01)
>>> loss = iep.distillation_loss(student, teacher)
>>> bool(loss > 0), bool(iep.distillation_loss(teacher, teacher) < 1e-4)
(True, True)
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geokd.models.outputs import ModelOutputs

__all__ = [
    "first_singular_pair",
    "student_direction",
    "stereographic_map",
    "IncrementalPCA",
    "cosine_affinity",
    "GraphMPNN",
    "graph_kl",
    "IEP",
    "IEPLoss",
    "TeacherFeatures",
    "TeacherFittedTerm",
    "fit_estimator",
    "check_sensing_points",
]


def _as_matrices(fmap: torch.Tensor, *, name: str) -> torch.Tensor:
    """(B, C, H, W) → (B, HW, C); (B, C) → (B, 1, C)."""
    if fmap.dim() == 4:
        b, c, h, w = fmap.shape
        return fmap.reshape(b, c, h * w).transpose(1, 2)
    if fmap.dim() == 2:
        return fmap.unsqueeze(1)
    raise ValueError(f"{name}: expected a (B, C, H, W) map or (B, C) vectors, got shape {tuple(fmap.shape)}")


@torch.no_grad()
def first_singular_pair(fmap: torch.Tensor, *, name: str = "teacher map") -> tuple[torch.Tensor, torch.Tensor]:
    """Top singular pair of each input's ``(HW × C)`` map: ``u`` ``(B, HW)``, ``v`` ``(B, C)``.

    Both are unit vectors, signed so that ``max(v) + min(v) >= 0``. Computed in float64.

    Examples
    --------
    >>> m = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]]).reshape(1, 2, 1, 2)  # rows HW, cols C
    >>> u, v = first_singular_pair(m)
    >>> v.tolist(), u.tolist()
    ([[1.0, 0.0]], [[1.0, 0.0]])
    """
    x = _as_matrices(fmap, name=name).double()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, got NaN/Inf")
    norms = x.flatten(1).norm(dim=1)
    if (norms == 0).any():
        bad = int(torch.nonzero(norms == 0)[0])
        raise ValueError(f"{name}: input {bad} has an all-zero map, its principal direction is undefined")
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    u, v = u[:, :, 0], vh[:, 0, :]
    sign = torch.where(v.max(1).values + v.min(1).values >= 0, 1.0, -1.0).to(v.dtype).unsqueeze(1)
    return (u * sign).to(fmap.dtype), (v * sign).to(fmap.dtype)


def student_direction(fmap: torch.Tensor, teacher_u: torch.Tensor, *, name: str = "student map") -> torch.Tensor:
    """The student's map projected on the teacher's left singular vector, L2-normalized (differentiable)."""
    x = _as_matrices(fmap, name=name)
    if x.shape[:2] != teacher_u.shape:
        raise ValueError(
            f"{name}: expected {teacher_u.shape[1]} spatial positions for {teacher_u.shape[0]} inputs like "
            f"the teacher, got a map of shape {tuple(fmap.shape)}"
        )
    return F.normalize(torch.einsum("bnc,bn->bc", x, teacher_u.to(x.dtype)), dim=1, eps=1e-12)


def stereographic_map(v: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Project unit vectors from the pole −c onto the hyperplane ⟂ c through 0 (c = **1**/√C).

    Points near the pole (⟨v, c⟩ → −1) are clamped at ``eps`` from it rather than sent to
    infinity (they cannot occur for non-negative maps, whose first direction has ⟨v, c⟩ > 0).

    Examples
    --------
    >>> c = torch.ones(1, 4) / 2
    >>> stereographic_map(c).abs().max().item()
    0.0
    >>> stereographic_map(torch.tensor([[0.5, -0.5, 0.5, -0.5]])).tolist()   # v ⟂ c ↦ 2v
    [[1.0, -1.0, 1.0, -1.0]]
    """
    if v.dim() != 2:
        raise ValueError(f"expected (B, C) unit vectors, got shape {tuple(v.shape)}")
    c = torch.full((1, v.shape[1]), 1.0 / math.sqrt(v.shape[1]), dtype=v.dtype, device=v.device)
    cos = (v * c).sum(1, keepdim=True)
    return (v + c) * (2.0 / (1.0 + cos).clamp_min(eps)) - 2.0 * c


def _flip_signs(components: torch.Tensor) -> torch.Tensor:
    # Rows signed so their largest-magnitude entry is positive: a deterministic basis.
    idx = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(components.shape[0]), idx])
    signs[signs == 0] = 1
    return components * signs.unsqueeze(1)


class IncrementalPCA(nn.Module):
    """Streaming PCA over batches, as IEP compresses each layer.

    Parameters
    ----------
    n_features : int
    n_components : int, optional
        Components kept (default ``n_features // 2``, as IEP).
    mode : {"incremental", "batch"}
        ``"incremental"`` merges each batch into the kept components (Ross et al.);
        ``"batch"`` recomputes a plain PCA of every batch (the paper's PCA ablation).
    mean_update : {"ema", "cumulative"}
        ``"ema"`` (IEP): μ ← (1 − rate)·μ + rate·mean(batch), and the merge stacks
        ``[S·V; X − mean(batch); μ − mean(batch)]``. ``"cumulative"``: the exact running mean
        with the correction row ``√(n·m/(n+m))·(μ − mean(batch))`` (scikit-learn's algorithm).
    rate : float
        EMA weight of the new batch (IEP: 0.9).

    Examples
    --------
    >>> x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    >>> pca = IncrementalPCA(6)
    >>> pca.update(x[:25]); pca.update(x[25:])
    >>> pca.transform(x).shape
    torch.Size([50, 3])
    """

    def __init__(self, n_features: int, *, n_components: int | None = None, mode: str = "incremental",
                 mean_update: str = "ema", rate: float = 0.9):
        super().__init__()
        if not isinstance(n_features, int) or n_features < 2:
            raise ValueError(f"n_features: expected an int >= 2, got {n_features!r}")
        n_components = n_features // 2 if n_components is None else n_components
        if not isinstance(n_components, int) or not 1 <= n_components <= n_features:
            raise ValueError(f"n_components: expected an int in 1..{n_features}, got {n_components!r}")
        if mode not in ("incremental", "batch"):
            raise ValueError(f"mode: expected 'incremental' or 'batch', got {mode!r}")
        if mean_update not in ("ema", "cumulative"):
            raise ValueError(f"mean_update: expected 'ema' or 'cumulative', got {mean_update!r}")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate: expected a value in (0, 1], got {rate}")
        self.n_features, self.n_components = n_features, n_components
        self.mode, self.mean_update, self.rate = mode, mean_update, float(rate)
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("singular_values", torch.zeros(n_components, dtype=torch.float64))
        self.register_buffer("components", torch.zeros(n_components, n_features, dtype=torch.float64))
        self.register_buffer("n_samples_seen", torch.zeros((), dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return bool(self.n_samples_seen > 0)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge one batch ``(m, n_features)`` into the statistics (float64, no gradient)."""
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected a batch of shape (m, {self.n_features}), got {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"expected a batch of at least 2 rows, got {x.shape[0]}")
        if not torch.isfinite(x).all():
            raise ValueError("expected finite values, got NaN/Inf")
        x = x.detach().to(self.mean.device, torch.float64)
        m = x.shape[0]
        batch_mean = x.mean(0)
        centered = x - batch_mean
        if self.mode == "batch" or not self.fitted:
            stacked, new_mean = centered, batch_mean
        else:
            n = int(self.n_samples_seen)
            if self.mean_update == "ema":
                correction = self.mean - batch_mean
                new_mean = (1 - self.rate) * self.mean + self.rate * batch_mean
            else:
                correction = math.sqrt(n * m / (n + m)) * (self.mean - batch_mean)
                new_mean = (n * self.mean + m * batch_mean) / (n + m)
            stacked = torch.cat([self.singular_values.unsqueeze(1) * self.components, centered,
                                 correction.unsqueeze(0)])
        k = self.n_components
        if stacked.shape[0] < k:
            raise ValueError(
                f"expected a batch of at least {k} rows to keep {k} components from it, got {m}"
            )
        _, s, vh = torch.linalg.svd(stacked, full_matrices=False)
        self.singular_values.copy_(s[:k])
        self.components.copy_(_flip_signs(vh[:k]))
        self.mean.copy_(new_mean)
        self.n_samples_seen += m

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − μ) Pᵀ`` in ``x``'s dtype; differentiable in ``x``."""
        if not self.fitted:
            raise ValueError("IncrementalPCA: call update() with at least one batch before transform()")
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected (m, {self.n_features}) rows, got {tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) @ self.components.to(x.dtype).T


def cosine_affinity(z: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` cosine similarities of the rows of ``z`` (diagonal 1, as IEP's graphs)."""
    zn = F.normalize(z, dim=1, eps=1e-12)
    return zn @ zn.T


def graph_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Σ over rows of KL(softmax p_i ‖ softmax q_i) (IEP's graph KL; a sum, as released).

    Examples
    --------
    >>> g = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> float(graph_kl(g, g))
    0.0
    """
    if p_logits.shape != q_logits.shape:
        raise ValueError(f"graph_kl: shapes differ: {tuple(p_logits.shape)} vs {tuple(q_logits.shape)}")
    log_p = F.log_softmax(p_logits, dim=-1)
    return (log_p.exp() * (log_p - F.log_softmax(q_logits, dim=-1))).sum()


class GraphMPNN(nn.Module):
    """Gated message passing from layer ℓ−1's vectors (edges) and layer ℓ's (nodes).

    Edges start as e_ij = D·(a_i ⊙ a_j) with a = normalize(BN(FC(z_{ℓ−1}))) ∈ R^D; node input
    h_ij = z_ℓ,i − z_ℓ,j. Each of ``iterations`` rounds (shared weights) computes
    m_ij = BN(FC([h_ij, mean(e_ij)])) ⊙ σ(BN(FC'([h_ij, mean(e_ij)]))) and e_ij ← e_ij + m_ij.
    Readout: R_ij = mean(e_ij). Returns ``(R, messages)`` with messages ``(N, N, iterations·D)``.
    """

    def __init__(self, previous_dim: int, node_dim: int, *, iterations: int = 2):
        super().__init__()
        if iterations < 1:
            raise ValueError(f"iterations: expected >= 1, got {iterations}")
        d = node_dim
        self.dim, self.iterations = d, iterations
        self.edge = nn.Linear(previous_dim, d)
        self.edge_bn = nn.BatchNorm1d(d)
        self.message = nn.Linear(node_dim + 1, d)
        self.message_bn = nn.BatchNorm1d(d)
        self.gate = nn.Linear(node_dim + 1, d)
        self.gate_bn = nn.BatchNorm1d(d)

    def forward(self, current: torch.Tensor, previous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = current.shape[0]
        if previous.shape[0] != n or n < 2:
            raise ValueError(f"expected the same batch (>= 2) at both layers, got {n} and {previous.shape[0]}")
        a = F.normalize(self.edge_bn(self.edge(previous)), dim=1, eps=1e-12)
        e = a.unsqueeze(1) * a.unsqueeze(0) * self.dim
        h = current.unsqueeze(1) - current.unsqueeze(0)
        messages = []
        for _ in range(self.iterations):
            inp = torch.cat([h, e.mean(-1, keepdim=True)], dim=-1).reshape(n * n, -1)
            m = self.message_bn(self.message(inp)) * torch.sigmoid(self.gate_bn(self.gate(inp)))
            m = m.reshape(n, n, self.dim)
            e = e + m
            messages.append(m)
        return e.mean(-1), torch.cat(messages, dim=-1)


# --------------------------------------------------------------- teacher-fitting stage
# Shared with MHGD (geokd.methods.mhgd): both fit a network on the teacher alone, freeze
# it, then distil the student through it.

#: The released IEP and MHGD recipe for the fitting stage: SGD, Nesterov momentum 0.9,
#: weight decay 5e-4 on the fitted network (learning rate 0.1, like the student's).
FIT_MOMENTUM = 0.9
FIT_WEIGHT_DECAY = 5e-4


def check_sensing_points(feats: Sequence[torch.Tensor], channels: Sequence[int], *, role: str) -> None:
    """``feats`` has one ``(B, C_ℓ, H, W)`` or ``(B, C_ℓ)`` tensor per expected channel count, B >= 2."""
    if len(feats) != len(channels):
        raise ValueError(f"{role}: expected {len(channels)} sensing points, got {len(feats)}")
    for i, (f, c) in enumerate(zip(feats, channels)):
        if f.dim() not in (2, 4) or f.shape[1] != c:
            raise ValueError(f"{role} layer {i}: expected (B, {c}, H, W) or (B, {c}), got {tuple(f.shape)}")
        if f.shape[0] < 2:
            raise ValueError(f"{role} layer {i}: expected a batch of at least 2 inputs, got {f.shape[0]}")


class TeacherFeatures:
    """Re-iterable teacher sensing-point features of ``(x, y)`` batches, computed without gradient.

    Each pass re-iterates ``batches`` (so a shuffling, augmenting loader gives new batches
    every fitting epoch) and yields the list of ``teacher_taps(x).features``.

    Examples
    --------
    >>> from geokd.models.outputs import ModelOutputs
    >>> taps = lambda x: ModelOutputs(x.sum(1), [x, 2 * x])
    >>> feats = TeacherFeatures(taps, [(torch.ones(3, 2), None)])
    >>> [f.tolist() for f in next(iter(feats))]
    [[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]]
    """

    def __init__(self, teacher_taps, batches, *, device: torch.device | str | None = None):
        self.teacher_taps, self.batches, self.device = teacher_taps, batches, device

    def __iter__(self):
        for x, _ in self.batches:
            with torch.no_grad():
                feats = [f.detach() for f in self.teacher_taps(x).features]
            if self.device is not None:
                feats = [f.to(self.device) for f in feats]
            # Yielded outside no_grad: a generator suspended inside the block would turn
            # gradients off in the caller's fitting loop too.
            yield feats


def fit_estimator(module: nn.Module, loss_fn, batches: Iterable, *, epochs: int, lr: float, momentum: float = 0.9,
                  nesterov: bool = False, weight_decay: float = 0.0, name: str = "teacher fit") -> list[float]:
    """SGD on ``loss_fn(features)`` over ``epochs`` passes of ``batches``, then freeze ``module``.

    Only ``module``'s parameters are trained (their own optimizer, in training mode); at the
    end they are frozen: ``requires_grad`` off, no ``.grad``, eval mode. Returns the mean loss
    per epoch.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> lin = nn.Linear(2, 1)
    >>> x = torch.randn(16, 2)
    >>> history = fit_estimator(lin, lambda b: (lin(b) - b.sum(1, keepdim=True)).pow(2).mean(), [x], epochs=20, lr=0.1)
    >>> history[-1] < 0.1 * history[0], lin.weight.requires_grad, lin.weight.grad, lin.training
    (True, False, None, False)
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"{name}: expected epochs to be an integer >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"{name}: expected a finite learning rate > 0, got {lr!r}")
    params = list(module.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    module.train()
    history = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for feats in batches:
            loss = loss_fn(feats)
            if not bool(torch.isfinite(loss)):
                raise ValueError(f"{name}: the loss became {float(loss)} at epoch {epoch + 1}, batch {count + 1}; "
                                 f"lower the fitting learning rate (got {lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            count += 1
        if count == 0:
            raise ValueError(f"{name}: expected at least one batch of teacher features, got none")
        history.append(total / count)
    optimizer.zero_grad(set_to_none=True)  # no stale gradient is left on the frozen network
    module.requires_grad_(False)
    module.eval()
    return history


class TeacherFittedTerm(nn.Module):
    """Base of the registered terms whose network is fitted on the teacher before the student trains.

    A subclass sets ``self.core`` to a module with ``fit_teacher(feature_batches, *, epochs,
    lr, momentum, nesterov, weight_decay) -> list[float]`` and ``distillation_loss(student_feats,
    teacher_feats)`` (:class:`IEP`, :class:`geokd.methods.mhgd.MHGD`).

    The trainer (:mod:`geokd.train.loop`) reads ``fit_epochs`` and calls :meth:`fit_teacher`
    once, after building the parts and before the student's first step (not when resuming
    from a saved state: the fitted network is part of the term's ``state_dict``, hence of
    the run's ``state.pt``). While the student trains, the term is frozen: outside the
    student's optimizer, ``requires_grad`` off, eval mode. The term's value is the
    distillation loss alone; calling it before the fit raises ``ValueError``.

    Parameters shared by the subclasses
    -----------------------------------
    fit_epochs : int
        Epochs of the teacher-fitting stage (>= 1).
    fit_lr : float
        Learning rate of the fitting stage: SGD with Nesterov momentum 0.9 and weight
        decay 5e-4, as released (0.1 there).
    student_taps, teacher_taps : sequence of str, optional
        Module names overriding the models' sensing points; the papers use every stage's
        output map, e.g. ``("layer1", "layer2", "layer3")`` for a WRN.
    """

    clip_to_task_gradient = False
    init_epochs = 0
    init_only = False
    needs_teacher = True
    method = "term"  # how messages name it

    def _set_fit_attributes(self, *, fit_epochs, fit_lr, student_taps, teacher_taps) -> None:
        # Imported here: geokd.losses registers the subclasses from geokd.methods (no import cycle).
        from geokd.losses._util import check_taps

        if isinstance(fit_epochs, bool) or not isinstance(fit_epochs, int) or fit_epochs < 1:
            raise ValueError(f"{self.method}: expected fit_epochs to be an integer >= 1 (the teacher-fitting "
                             f"stage), got {fit_epochs!r}")
        if isinstance(fit_lr, bool) or not isinstance(fit_lr, (int, float)) or not (fit_lr > 0 and math.isfinite(fit_lr)):
            raise ValueError(f"{self.method}: expected fit_lr to be a finite number > 0, got {fit_lr!r}")
        self.fit_epochs, self.fit_lr = fit_epochs, float(fit_lr)
        self.student_taps = check_taps("student_taps", student_taps)
        self.teacher_taps = check_taps("teacher_taps", teacher_taps)

    def fit_teacher(self, teacher_taps, batches: Iterable, *, epochs: int, device: torch.device | str = "cpu") -> list[float]:
        """The teacher-fitting stage: ``epochs`` passes over ``(x, y)`` ``batches`` read through
        ``teacher_taps`` (``x -> ModelOutputs``); returns the mean fit loss per epoch."""
        return self.core.fit_teacher(TeacherFeatures(teacher_taps, batches, device=device), epochs=epochs,
                                     lr=self.fit_lr, momentum=FIT_MOMENTUM, nesterov=True,
                                     weight_decay=FIT_WEIGHT_DECAY)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, labels=None) -> torch.Tensor:
        if teacher is None:
            raise ValueError(f"{self.method}: needs the teacher's outputs, got None")
        return self.core.distillation_loss(list(student.features), [t.detach() for t in teacher.features])


def check_fitted(fitted_epochs: torch.Tensor, *, method: str) -> None:
    """Refuse to distil through a network that was never fitted on the teacher."""
    if int(fitted_epochs) == 0:
        raise ValueError(
            f"{method}: the teacher-side network is not fitted; call fit_teacher first "
            "(the trainer runs the fitting stage before the student's first step)"
        )


class IEP(nn.Module):
    """Stacked PCA per sensing point and an MPNN per consecutive pair (the IEP teacher side).

    Parameters
    ----------
    channels : sequence of int
        Channel count C of each sensing point (teacher = student).
    pca : {"incremental", "batch"}
        Stacked-PCA variant (the paper's IPCA vs PCA ablation).
    mean_update : {"ema", "cumulative"}
    rate : float
        EMA rate of the mean (0.9).
    iterations : int
        Message-passing rounds (2).
    """

    def __init__(self, *, channels: Sequence[int], pca: str = "incremental", mean_update: str = "ema",
                 rate: float = 0.9, iterations: int = 2):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels: expected at least 2 sensing points, got {channels}")
        self.channels = channels
        self.pcas = nn.ModuleList(
            IncrementalPCA(c, mode=pca, mean_update=mean_update, rate=rate) for c in channels
        )
        self.mpnns = nn.ModuleList(
            GraphMPNN(channels[i - 1] // 2, channels[i] // 2, iterations=iterations) for i in range(1, len(channels))
        )
        # Epochs of teacher fitting done (a buffer: saved and restored with the state).
        self.register_buffer("fitted_epochs", torch.zeros((), dtype=torch.long))

    def teacher_codes(self, feats: Sequence[torch.Tensor], *, update: bool) -> tuple[list, list]:
        """Per layer the teacher's left singular vectors and compressed vectors z_T."""
        check_sensing_points(feats, self.channels, role="teacher")
        us, zs = [], []
        for i, (f, pca) in enumerate(zip(feats, self.pcas)):
            u, v = first_singular_pair(f.detach(), name=f"teacher layer {i}")
            y = stereographic_map(v)
            if update or not pca.fitted:
                pca.update(y)
            us.append(u)
            zs.append(pca.transform(y))
        return us, zs

    def student_codes(self, feats: Sequence[torch.Tensor], teacher_us: Sequence[torch.Tensor]) -> list:
        check_sensing_points(feats, self.channels, role="student")
        for i, f in enumerate(feats):
            if not torch.isfinite(f).all():
                raise ValueError(f"student layer {i}: expected finite values, got NaN/Inf")
        return [
            self.pcas[i].transform(stereographic_map(student_direction(f, u, name=f"student layer {i}")))
            for i, (f, u) in enumerate(zip(feats, teacher_us))
        ]

    def teacher_fit_loss(self, feats: Sequence[torch.Tensor], *, update_pca: bool = True) -> torch.Tensor:
        """Σ_ℓ KL(softmax G_ℓ ‖ softmax R_ℓ): how well the MPNN predicts each teacher graph."""
        _, zs = self.teacher_codes(feats, update=update_pca)
        total = 0.0
        for i, mpnn in enumerate(self.mpnns, start=1):
            readout, _ = mpnn(zs[i], zs[i - 1])
            total = total + graph_kl(cosine_affinity(zs[i]), readout)
        return total

    def fit_teacher(self, batches: Iterable[Sequence[torch.Tensor]], *, epochs: int = 1, lr: float = 0.01,
                    momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0) -> list[float]:
        """IEP's teacher-fitting stage: IPCA statistics and the MPNNs from teacher features only.

        ``batches`` is re-iterable over lists of teacher sensing-point tensors. Returns the
        mean fit loss per epoch; the MPNNs end frozen (eval mode, no gradient) and the IPCA
        statistics stop updating (:meth:`distillation_loss` only reads them).
        """
        history = fit_estimator(self.mpnns, self.teacher_fit_loss, batches, epochs=epochs, lr=lr, momentum=momentum,
                                nesterov=nesterov, weight_decay=weight_decay, name="IEP teacher fit")
        self.fitted_epochs += epochs
        return history

    def distillation_loss(self, student_feats: Sequence[torch.Tensor],
                          teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Σ_ℓ [mean_ij Σ_d |M_S − M_T| + KL(softmax R_T ‖ softmax R_S)], MPNNs frozen (eval mode)."""
        check_fitted(self.fitted_epochs, method="IEP")
        us, zt = self.teacher_codes(teacher_feats, update=False)
        zs = self.student_codes(student_feats, us)
        for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
            if s.shape[0] != t.shape[0]:
                raise ValueError(f"layer {i}: student batch {s.shape[0]} != teacher batch {t.shape[0]}")
        total = 0.0
        was_training = self.mpnns.training
        self.mpnns.eval()
        try:
            for i, mpnn in enumerate(self.mpnns, start=1):
                frozen = {name: p.detach() for name, p in mpnn.named_parameters()}
                frozen.update(dict(mpnn.named_buffers()))
                with torch.no_grad():
                    r_t, m_t = mpnn(zt[i], zt[i - 1])
                r_s, m_s = torch.func.functional_call(mpnn, frozen, (zs[i], zs[i - 1]))
                total = total + (m_s - m_t).abs().sum(-1).mean() + graph_kl(r_t, r_s)
        finally:
            self.mpnns.train(was_training)
        return total


class IEPLoss(TeacherFittedTerm):
    """IEP as the registered ``"iep"`` term ``loss(student, teacher, labels)`` on ModelOutputs.

    The trainer first runs the teacher-fitting stage (:meth:`fit_teacher`: IPCA and MPNNs
    on the teacher alone, ``fit_epochs`` epochs of SGD at ``fit_lr``, Nesterov momentum 0.9,
    weight decay 5e-4), then freezes the term; its value is the student's distillation loss
    alone, whose gradient the trainer clips to the task gradient's norm.

    Parameters
    ----------
    channels : sequence of int
        Channels of each sensing point (teacher = student).
    pca, mean_update, rate, iterations
        As :class:`IEP`.
    fit_epochs : int
        Default 20: the released experiments fit 20 epochs before 100 epochs of student
        training.
    fit_lr, student_taps, teacher_taps
        As :class:`TeacherFittedTerm` (``fit_lr`` 0.1, as released).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> term = IEPLoss(channels=(8, 16), fit_epochs=2)
    >>> maps = [torch.relu(torch.randn(10, 8, 4, 4)), torch.relu(torch.randn(10, 16, 2, 2))]
    >>> taps = lambda x: ModelOutputs(None, [m * x for m in maps])
    >>> history = term.fit_teacher(taps, [(1.0, None), (2.0, None)], epochs=term.fit_epochs)
    >>> len(history), any(p.requires_grad for p in term.parameters())
    (2, False)
    >>> out = ModelOutputs(None, maps)
    >>> float(term(out, out)) < 1e-4
    True
    """

    clip_to_task_gradient = True
    method = "IEP"

    def __init__(self, *, channels: Sequence[int], pca: str = "incremental", mean_update: str = "ema",
                 rate: float = 0.9, iterations: int = 2, fit_epochs: int = 20, fit_lr: float = 0.1,
                 student_taps: Sequence[str] | None = None, teacher_taps: Sequence[str] | None = None):
        super().__init__()
        self.iep = IEP(channels=channels, pca=pca, mean_update=mean_update, rate=rate, iterations=iterations)
        self._set_fit_attributes(fit_epochs=fit_epochs, fit_lr=fit_lr, student_taps=student_taps,
                                 teacher_taps=teacher_taps)

    @property
    def core(self) -> IEP:
        return self.iep
