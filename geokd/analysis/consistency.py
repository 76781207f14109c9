"""Classification consistency of a student with its teacher.

- At the output (the GKD authors' measure): the share of inputs on which student and
  teacher predict the same class, overall and split on the inputs the teacher gets right
  and wrong.
- Per block (the paper's per-block classifier is not recoverable): a graph-native
  classifier, the leave-one-out k-NN vote on the block's graph (each node takes the class
  with the largest total edge weight among its neighbours; the zero diagonal leaves the
  node itself out), compared with the teacher's vote at the same depth and with the
  teacher's final decision. A cross-validated linear probe is the standard alternative.
"""

from __future__ import annotations

import numpy as np

from geokd.analysis._validate import as_features, as_labels, as_weight_matrix, where


def output_agreement(student_predictions, teacher_predictions, labels, *, name: str | None = None) -> dict[str, float]:
    """Agreement of two classifiers' decisions, split on the teacher's correctness.

    Parameters
    ----------
    student_predictions, teacher_predictions, labels : array-like of int, shape (N,)

    Returns
    -------
    dict
        ``agreement`` (fraction of all inputs), ``agreement_teacher_right`` and
        ``agreement_teacher_wrong`` (fractions within each group; NaN-free: a group with
        no input raises), ``student_accuracy``, ``teacher_accuracy``,
        ``teacher_wrong_count``.

    Examples
    --------
    >>> out = output_agreement([0, 1, 2, 0], [0, 1, 1, 1], [0, 1, 2, 1])
    >>> out["agreement"], out["agreement_teacher_right"], out["agreement_teacher_wrong"]
    (0.5, 0.6666666666666666, 0.0)
    """
    y = as_labels(labels, np.asarray(labels).shape[0], name=name)
    student = as_labels(student_predictions, y.shape[0], name=name)
    teacher = as_labels(teacher_predictions, y.shape[0], name=name)
    same = student == teacher
    right = teacher == y
    if right.all() or not right.any():
        group = "wrong" if right.all() else "right"
        raise ValueError(
            f"{where(name)}expected inputs the teacher gets right and wrong, got none it gets {group} "
            f"among {y.size}: the split agreement is undefined"
        )
    return {
        "agreement": float(same.mean()),
        "agreement_teacher_right": float(same[right].mean()),
        "agreement_teacher_wrong": float(same[~right].mean()),
        "student_accuracy": float((student == y).mean()),
        "teacher_accuracy": float(right.mean()),
        "teacher_wrong_count": float((~right).sum()),
    }


def knn_vote(w, labels, *, num_classes: int | None = None, name: str | None = None) -> np.ndarray:
    """Leave-one-out weighted k-NN vote of every node on the graph ``w``.

    Node ``i`` predicts ``argmax_c sum_j W_ij 1[y_j = c]``; ties go to the smallest class
    index; a node without any positive-weight neighbour predicts ``-1`` (counted as a
    disagreement and an error by the callers).

    Examples
    --------
    >>> w = np.array([[0, 1, 0], [1, 0, 2], [0, 2, 0]], dtype=float)
    >>> knn_vote(w, [0, 1, 1])
    array([1, 1, 1])
    """
    csr = as_weight_matrix(w, name=name)
    y = as_labels(labels, csr.shape[0], name=name)
    classes = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if y.max() >= classes:
        raise ValueError(f"{where(name)}expected labels < num_classes = {classes}, got {y.max()}")
    one_hot = np.zeros((y.size, classes))
    one_hot[np.arange(y.size), y] = 1.0
    scores = np.asarray(csr @ one_hot)
    votes = scores.argmax(axis=1)
    votes[scores.max(axis=1) <= 0] = -1
    return votes


def block_consistency(student_w, teacher_w, labels, teacher_final_predictions, *,
                      num_classes: int | None = None, name: str | None = None) -> dict[str, float]:
    """k-NN consistency of a student's block with the teacher's block and final decision.

    Returns ``knn_accuracy_student``, ``knn_accuracy_teacher``, ``agreement_teacher_block``
    (student's vote == teacher's vote at the same depth) and ``agreement_teacher_output``
    (student's vote == teacher's final prediction), all fractions of the node set.

    Examples
    --------
    >>> w = np.array([[0, 1, 0], [1, 0, 2], [0, 2, 0]], dtype=float)
    >>> block_consistency(w, w, [0, 1, 1], [0, 1, 1])["agreement_teacher_block"]
    1.0
    """
    y = np.asarray(labels)
    student = knn_vote(student_w, y, num_classes=num_classes, name=name)
    teacher = knn_vote(teacher_w, y, num_classes=num_classes, name=name)
    final = as_labels(teacher_final_predictions, student.size, name=name)
    return {
        "knn_accuracy_student": float((student == y).mean()),
        "knn_accuracy_teacher": float((teacher == y).mean()),
        "agreement_teacher_block": float((student == teacher).mean()),
        "agreement_teacher_output": float((student == final).mean()),
    }


def linear_probe_predictions(features, labels, *, folds: int = 5, seed: int = 0,
                             name: str | None = None) -> np.ndarray:
    """Cross-validated predictions of a logistic-regression probe on a layer's features.

    Every node is predicted by a probe trained on the other folds (stratified), on
    standardized features. Slower than :func:`knn_vote`; an option for the per-block
    consistency.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = np.vstack([rng.normal(0, 1, (20, 3)), rng.normal(6, 1, (20, 3))])
    >>> y = np.repeat([0, 1], 20)
    >>> float((linear_probe_predictions(x, y, folds=4) == y).mean())
    1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = as_features(features, name=name)
    y = as_labels(labels, x.shape[0], name=name)
    smallest_class = np.bincount(y)[np.bincount(y) > 0].min()
    if smallest_class < folds:
        raise ValueError(f"{where(name)}expected at least {folds} inputs per class for {folds}-fold probing, got {smallest_class}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(probe, x, y, cv=splitter)
