r"""MHGD: graph-based distillation by multi-head attention (Lee & Song, BMVC 2019).

Each sensing point is compressed to one vector per input: the teacher's top right-singular
vector of its ``(HW × C)`` map (:func:`geokd.losses.kdsvd.top_singular_vectors`, largest
entry positive); the student's is the closest of its top 4 to the teacher's by |cos|,
sign-matched (:func:`geokd.losses.kdsvd.align_to_teacher`, as the release does). Between consecutive points
ℓ−1 → ℓ an attention module builds ``heads`` (8) graphs over the batch,

    G_h[i, j] = ⟨BN(FC_s(v_ℓ,i))_h, BN(FC_r(v_{ℓ−1},j))_h⟩,

and an estimator uses them to predict layer ℓ's vectors from layer ℓ−1's:
v̂_ℓ = normalize(FC(concat_h softmax(G_h)·ReLU(BN(FC(v_{ℓ−1}))))), with random head
dropout during fitting. Two stages, as in the paper:

1. **teacher fitting** (:meth:`MHGD.fit_teacher`): the attention is trained on teacher
   features alone with Σ_ℓ mean(1 − cos(v̂_ℓ, v_ℓ)), then frozen (eval mode, no gradient);
2. **distillation**: the student is distilled through the frozen attention with

    Σ_ℓ Σ_{h,i} KL(softmax(tanh(G_S − m_T))_{h,i} ‖ softmax(tanh(G_T − m_T))_{h,i})

where m_T is the teacher graph's row mean (the release centres both graphs with it).
:class:`MHGDLoss` is the registered ``"mhgd"`` term: the trainer runs its fitting stage
(:class:`geokd.methods.iep.TeacherFittedTerm`, shared with IEP) before the student's first
step.

Examples
--------
>>> import torch
>>> _ = torch.manual_seed(0)
>>> mhgd = MHGD(channels=(8, 16))
>>> t = [torch.relu(torch.randn(10, 8, 4, 4)), torch.relu(torch.randn(10, 16, 2, 2))]
>>> s = [torch.relu(torch.randn(10, 8, 4, 4)), torch.relu(torch.randn(10, 16, 2, 2))]
>>> _ = mhgd.fit_teacher([t] * 2, epochs=2)
>>> bool(mhgd.distillation_loss(s, t) > 0), float(mhgd.distillation_loss(t, t)) < 1e-5
(True, True)
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geokd.methods.iep import TeacherFittedTerm, check_fitted, check_sensing_points, fit_estimator

__all__ = ["singular_embedding", "AttentionGraphs", "MHGD", "MHGDLoss"]


def singular_embedding(fmap: torch.Tensor, *, reference: torch.Tensor | None = None, candidates: int = 1,
                       name: str = "map") -> torch.Tensor:
    """``(B, C)`` one right-singular vector of each map.

    Without ``reference``: the top one. With a ``(B, C)`` ``reference`` (the teacher's
    vectors): of the top ``candidates`` ones, the closest to the reference by ``|cos|``,
    sign-matched (the release gives the student 4 candidates, as KD-SVD does).

    Examples
    --------
    >>> x = torch.zeros(1, 2, 1, 3)   # HW=3, C=2: singular vectors e1 (σ=3), e2 (σ=1)
    >>> x[0, 0, 0, 0], x[0, 1, 0, 1] = 3.0, 1.0
    >>> ref = torch.tensor([[0.0, -1.0]])
    >>> singular_embedding(x).tolist(), singular_embedding(x, reference=ref, candidates=2).tolist()
    ([[1.0, 0.0]], [[-0.0, -1.0]])
    """
    # Imported here: geokd.losses registers MHGDLoss from this module (no import cycle).
    from geokd.losses.kdsvd import align_to_teacher, top_singular_vectors

    if fmap.dim() not in (2, 4):
        raise ValueError(f"{name}: expected a (B, C, H, W) map or (B, C) vectors, got shape {tuple(fmap.shape)}")
    if not torch.isfinite(fmap).all():
        raise ValueError(f"{name}: expected finite values, got NaN/Inf")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"{name}: expected candidates to be an integer >= 1, got {candidates!r}")
    _, v = top_singular_vectors(fmap, candidates if reference is not None else 1)
    if reference is not None:
        v = align_to_teacher(v, reference.unsqueeze(1))
    return v[:, 0, :]


class AttentionGraphs(nn.Module):
    """``heads`` attention graphs from layer ℓ−1 to ℓ and the estimator of layer ℓ."""

    def __init__(self, current_dim: int, previous_dim: int, *, heads: int = 8):
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads: expected >= 1, got {heads}")
        d = (current_dim + previous_dim) // 2
        self.heads, self.dim = heads, d
        self.sender = nn.Sequential(nn.Linear(current_dim, d * heads), nn.BatchNorm1d(d * heads))
        self.receiver = nn.Sequential(nn.Linear(previous_dim, d * heads), nn.BatchNorm1d(d * heads))
        self.value = nn.Sequential(nn.Linear(previous_dim, d), nn.BatchNorm1d(d), nn.ReLU())
        self.out = nn.Linear(d * heads, current_dim)
        nn.init.zeros_(self.out.bias)

    def forward(self, current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """``(heads, B, B)`` graphs G_h[i, j] (i: layer ℓ input, j: layer ℓ−1 input)."""
        b = current.shape[0]
        s = self.sender(current).reshape(b, self.heads, self.dim).transpose(0, 1)
        r = self.receiver(previous).reshape(b, self.heads, self.dim).transpose(0, 1)
        return s @ r.transpose(1, 2)

    def estimate(self, previous: torch.Tensor, graphs: torch.Tensor) -> torch.Tensor:
        """Layer ℓ's unit vectors predicted from layer ℓ−1's through the graphs."""
        weights = F.softmax(graphs, dim=-1)
        if self.training:
            # Random head dropout per input (about half the heads), gradient doubled as released.
            noise = torch.randn(self.heads, weights.shape[1], 1, device=weights.device, dtype=weights.dtype)
            masked = weights * (noise > noise.mean(0, keepdim=True)).to(weights.dtype)
            weights = masked * 2 - masked.detach()
        mixed = weights @ self.value(previous)  # (heads, B, d)
        return F.normalize(self.out(mixed.transpose(0, 1).reshape(previous.shape[0], -1)), dim=1, eps=1e-12)


def _tanh_centred(graphs: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return torch.tanh(graphs - mean)


def _kl_rows(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(p_logits, dim=-1)
    return (log_p.exp() * (log_p - F.log_softmax(q_logits, dim=-1))).sum()


class MHGD(nn.Module):
    """Attention graphs per consecutive pair of sensing points, fitted on the teacher.

    Parameters
    ----------
    channels : sequence of int
        Channel count of each sensing point (teacher = student: the graphs compare
        vectors of the same size).
    heads : int
        Attention heads per pair (8).
    student_candidates : int
        The student's vector at each point is the one of its top ``student_candidates``
        right-singular vectors closest to the teacher's (4, as released).
    """

    def __init__(self, *, channels: Sequence[int], heads: int = 8, student_candidates: int = 4):
        super().__init__()
        if isinstance(student_candidates, bool) or not isinstance(student_candidates, int) or student_candidates < 1:
            raise ValueError(f"student_candidates: expected an integer >= 1, got {student_candidates!r}")
        self.student_candidates = student_candidates
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels: expected at least 2 sensing points, got {channels}")
        self.channels = channels
        self.attention = nn.ModuleList(
            AttentionGraphs(channels[i], channels[i - 1], heads=heads) for i in range(1, len(channels))
        )
        # Epochs of teacher fitting done (a buffer: saved and restored with the state).
        self.register_buffer("fitted_epochs", torch.zeros((), dtype=torch.long))

    def teacher_embeddings(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        check_sensing_points(feats, self.channels, role="teacher")
        with torch.no_grad():
            return [singular_embedding(f, name=f"teacher layer {i}") for i, f in enumerate(feats)]

    def student_embeddings(self, feats: Sequence[torch.Tensor], teacher_vectors: Sequence[torch.Tensor]) -> list:
        check_sensing_points(feats, self.channels, role="student")
        return [
            singular_embedding(f, reference=t, candidates=self.student_candidates, name=f"student layer {i}")
            for i, (f, t) in enumerate(zip(feats, teacher_vectors))
        ]

    def teacher_fit_loss(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Σ_ℓ mean(1 − cos(v̂_ℓ, v_ℓ)): how well the graphs explain layer ℓ from ℓ−1."""
        v = self.teacher_embeddings(feats)
        total = 0.0
        for i, att in enumerate(self.attention, start=1):
            estimate = att.estimate(v[i - 1], att(v[i], v[i - 1]))
            total = total + (1 - (estimate * v[i]).sum(1)).mean()
        return total

    def fit_teacher(self, batches: Iterable[Sequence[torch.Tensor]], *, epochs: int = 1, lr: float = 0.01,
                    momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0) -> list[float]:
        """Fit the attention on teacher features alone; returns the mean loss per epoch.

        The attention ends frozen: eval mode (no head dropout, BN running statistics) and
        no gradient.
        """
        history = fit_estimator(self.attention, self.teacher_fit_loss, batches, epochs=epochs, lr=lr,
                                momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                name="MHGD teacher fit")
        self.fitted_epochs += epochs
        return history

    def distillation_loss(self, student_feats: Sequence[torch.Tensor],
                          teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Σ_ℓ KL(softmax tanh(G_S − m_T) ‖ softmax tanh(G_T − m_T)); attention frozen, eval mode."""
        check_fitted(self.fitted_epochs, method="MHGD")
        vt = self.teacher_embeddings(teacher_feats)
        vs = self.student_embeddings(student_feats, vt)
        for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
            if s.shape[0] != t.shape[0]:
                raise ValueError(f"layer {i}: student batch {s.shape[0]} != teacher batch {t.shape[0]}")
        was_training = self.attention.training
        self.attention.eval()
        total = 0.0
        try:
            for i, att in enumerate(self.attention, start=1):
                frozen = {n: p.detach() for n, p in att.named_parameters()}
                frozen.update(dict(att.named_buffers()))
                with torch.no_grad():
                    g_t = att(vt[i], vt[i - 1])
                    mean = g_t.mean(-1, keepdim=True)
                g_s = torch.func.functional_call(att, frozen, (vs[i], vs[i - 1]))
                total = total + _kl_rows(_tanh_centred(g_s, mean), _tanh_centred(g_t, mean))
        finally:
            self.attention.train(was_training)
        return total


class MHGDLoss(TeacherFittedTerm):
    """MHGD as the registered ``"mhgd"`` term ``loss(student, teacher, labels)`` on ModelOutputs.

    The trainer first runs the teacher-fitting stage (:meth:`fit_teacher`: the attention on
    the teacher alone, ``fit_epochs`` epochs of SGD at ``fit_lr``, Nesterov momentum 0.9,
    weight decay 5e-4), then freezes the term; its value is the student's KL alone, whose
    gradient the trainer clips to the task gradient's norm (``clip_to_task_gradient``), as
    the released experiments do (they clip each tensor's gradient to its cross-entropy
    gradient's norm, with a warm-up factor; the trainer clips the whole student's
    gradient at once, as for KD-SVD and IEP).

    Parameters
    ----------
    channels : sequence of int
        Channels of each sensing point (teacher = student).
    heads : int
        Attention heads per pair of layers (8).
    student_candidates : int
        As :class:`MHGD` (4).
    fit_epochs : int
        Default 40: the released experiments fit the attention 40 epochs before 100
        epochs of student training.
    fit_lr, student_taps, teacher_taps
        As :class:`geokd.methods.iep.TeacherFittedTerm` (``fit_lr`` 0.1, as released).

    Examples
    --------
    >>> from geokd.models.outputs import ModelOutputs
    >>> _ = torch.manual_seed(0)
    >>> term = MHGDLoss(channels=(8, 16), fit_epochs=2)
    >>> maps = [torch.relu(torch.randn(10, 8, 4, 4)), torch.relu(torch.randn(10, 16, 2, 2))]
    >>> history = term.fit_teacher(lambda x: ModelOutputs(None, maps), [(None, None)] * 3, epochs=2)
    >>> len(history), term.mhgd.attention.training, any(p.requires_grad for p in term.parameters())
    (2, False, False)
    """

    clip_to_task_gradient = True
    method = "MHGD"

    def __init__(self, *, channels: Sequence[int], heads: int = 8, student_candidates: int = 4, fit_epochs: int = 40,
                 fit_lr: float = 0.1, student_taps: Sequence[str] | None = None,
                 teacher_taps: Sequence[str] | None = None):
        super().__init__()
        self.mhgd = MHGD(channels=channels, heads=heads, student_candidates=student_candidates)
        self._set_fit_attributes(fit_epochs=fit_epochs, fit_lr=fit_lr, student_taps=student_taps,
                                 teacher_taps=teacher_taps)

    @property
    def core(self) -> MHGD:
        return self.mhgd
