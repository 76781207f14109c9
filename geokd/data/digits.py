"""scikit-learn's bundled handwritten digits: the offline default dataset.

``sklearn.datasets.load_digits()`` holds 1,797 8×8 images with integer values 0..16 and
no official train/test split. Pixels are stored as uint8 by the exact integer rule
``(v * 255 + 8) // 16`` (``v * 255 / 16`` rounded half up: 0 → 0, 8 → 128, 16 → 255).
The split is fixed: ``train_test_split(arange(1797), test_size=0.3, stratify=y,
random_state=0)`` with indices kept in increasing order, giving 1,257 training and 540
test images, the same in every run.
"""

from __future__ import annotations

import functools

import numpy as np

TEST_SIZE = 0.3
SPLIT_SEED = 0


def digits_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map digit intensities 0..16 to 0..255 by ``(v * 255 + 8) // 16``.

    Examples
    --------
    >>> import numpy as np
    >>> digits_to_uint8(np.array([0, 1, 8, 15, 16])).tolist()
    [0, 16, 128, 239, 255]
    """
    v = np.asarray(values)
    if v.size and (v.min() < 0 or v.max() > 16 or not np.all(v == np.round(v))):
        raise ValueError(f"digits pixels must be integers in 0..16, got range {v.min()}..{v.max()}")
    return ((v.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified (train, test) index arrays into ``load_digits()``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    train, test = train_test_split(
        np.arange(y.size), test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    return np.sort(train), np.sort(test)


def load_digits_arrays() -> dict[str, np.ndarray]:
    """``{train,test}_{images,labels}`` arrays: images (N, 1, 8, 8) uint8, labels int64.

    Fresh copies on every call (callers may modify them); the parsing is done once.
    """
    return {key: array.copy() for key, array in _digits_arrays().items()}


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = digits_to_uint8(bunch.images)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    train, test = split_indices()
    return {
        "train_images": images[train],
        "train_labels": labels[train],
        "test_images": images[test],
        "test_labels": labels[test],
    }
