r"""Hinton knowledge distillation: match the teacher's softened class distribution.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network" (NIPS 2014
workshop). With temperature :math:`T` and :math:`p^T = \mathrm{softmax}(z_T/T)`,
:math:`p^S = \mathrm{softmax}(z_S/T)`, the student is trained with

.. math:: (1-\alpha)\,\mathrm{CE}(z_S, y) + \alpha\,T^2\,\mathrm{KL}(p^T \,\|\, p^S).

The :math:`T^2` keeps the soft-target gradients on the scale of the hard-target ones
when :math:`T` changes. The registered term ``"kd"`` returns only
:math:`T^2\,\mathrm{KL}(p^T\|p^S)` (averaged over the batch, summed over classes); the
trainer adds the cross-entropy itself. So Hinton's :math:`\alpha` maps onto a study as
**term weight** :math:`\alpha` and **cross-entropy weight** :math:`1-\alpha`, e.g.
``α = 0.9``: ``weight = 0.9`` for ``"kd"`` and ``ce_weight = 0.1``. (The GKD authors
wrote :math:`\lambda\,\mathrm{KL}` without :math:`T^2` and passed :math:`\lambda = 16 = T^2`
with the full cross-entropy: that is ``weight = 1``, ``ce_weight = 1``, ``T = 4``.)
Adding other terms (``"gkd"``, ``"attention"``…) beside ``"kd"`` gives the combinations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geokd.losses._util import DistillationTerm, check_logits, check_outputs, check_positive
from geokd.losses.registry import register_loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 4.0) -> torch.Tensor:
    r"""Soft-target term :math:`T^2\,\mathrm{KL}(\mathrm{softmax}(z_T/T)\,\|\,\mathrm{softmax}(z_S/T))`.

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        ``(B, num_classes)`` scores. The teacher's carry no gradient.
    temperature : float
        Softening temperature :math:`T > 0` (4 is common; Hinton used up to 20).

    Returns
    -------
    torch.Tensor
        Scalar: the KL divergence summed over classes, averaged over the batch, times
        :math:`T^2`. Zero exactly when the two softened distributions agree.

    Examples
    --------
    >>> z = torch.tensor([[2.0, 0.0, -1.0]])
    >>> float(kd_loss(z, z))
    0.0
    >>> round(float(kd_loss(torch.zeros(1, 2), torch.tensor([[4.0, 0.0]]), temperature=4.0)), 4)
    1.7751
    """
    t = check_positive("temperature", temperature)
    check_logits("kd", student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    # log_target keeps the teacher side in log space: no 0·log 0 for confident teachers.
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (t * t)


@register_loss("kd")
class HintonKD(DistillationTerm):
    r"""Registered ``"kd"`` term: :math:`T^2\,\mathrm{KL}(p^T\|p^S)` on the logits.

    Use ``weight = α`` and ``ce_weight = 1 − α`` in the study to get Hinton's
    :math:`(1-\alpha)\mathrm{CE} + \alpha T^2 \mathrm{KL}` (see the module docstring).

    Parameters
    ----------
    temperature : float
        Softening temperature :math:`T` (default 4).

    Examples
    --------
    >>> from geokd.models.outputs import ModelOutputs
    >>> loss = HintonKD(temperature=4.0)
    >>> s = ModelOutputs(torch.zeros(2, 3), [])
    >>> float(loss(s, s, torch.tensor([0, 1])))
    0.0
    """

    uses_features = False  # logits only: runs with networks that name no sensing points

    def __init__(self, *, temperature: float = 4.0):
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        check_outputs("kd", student, teacher, labels)
        return kd_loss(student.logits, teacher.logits, temperature=self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
