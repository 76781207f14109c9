"""Small real dataset factories for the ``MODULE:CALLABLE`` dataset form (tests/test_data_specs.py).

They wrap scikit-learn's digits (through geokd's exact uint8 rule) and CIFAR-10 (through
geokd's verified cache), each returning a different kind of item, so the tests can check
that every kind comes back as the source's own pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from geokd.data import digits as geokd_digits


class Pairs:
    """A map-style dataset over two arrays, turning each image with ``convert``."""

    def __init__(self, images, labels, convert, classes=None):
        self.images, self.labels, self.convert = images, labels, convert
        if classes is not None:
            self.classes = classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.convert(self.images[i]), self.labels[i]


def _digits(split):
    arrays = geokd_digits.load_digits_arrays()
    return arrays[f"{split}_images"], arrays[f"{split}_labels"]


def digits_2d(split="train", limit=None):
    """(H, W) uint8 tensors and numpy-int labels, with a ``classes`` attribute."""
    images, labels = _digits(split)
    images, labels = images[:limit], labels[:limit]
    return Pairs(images, labels, lambda im: torch.from_numpy(im[0]), classes=[str(k) for k in range(10)])


def digits_float(train=True):
    """(1, H, W) float32 tensors k/255, as ``ToTensor`` gives; the split as ``train=``."""
    images, labels = _digits("train" if train else "test")
    return Pairs(images, labels, lambda im: torch.from_numpy(im).float() / 255)


def digits_pil_once():
    """PIL 'L' images and tensor labels; takes no split, so it serves both."""
    images, labels = _digits("train")
    return Pairs(images, torch.from_numpy(labels), lambda im: Image.fromarray(im[0]))


def digits_normalized(split="train"):
    """Normalized floats (as after ``Normalize``): must be refused."""
    images, labels = _digits(split)
    return Pairs(images, labels, lambda im: (torch.from_numpy(im).float() / 255 - 0.5) / 0.25)


def mixed_shapes(split="train"):
    """Two 8x8 digits and one 6x6 crop: must be refused without image_size."""
    images, labels = _digits(split)
    return Pairs([images[0], images[1], images[2][:, :6, :6]], labels[:3], torch.from_numpy)


def empty(split="train"):
    return []


def not_map_style(split="train"):
    images, labels = _digits(split)
    return ((torch.from_numpy(im), int(y)) for im, y in zip(images, labels))


NOT_CALLABLE = 3


def cifar10_pil(split="train", per_class=5):
    """A balanced CIFAR-10 subset (from geokd's verified cache) as PIL RGB images."""
    from geokd.data import load_dataset

    source = load_dataset("cifar10", split=split, download=False)
    index = np.concatenate([np.flatnonzero(source.labels.numpy() == c)[:per_class] for c in range(10)])
    images = source.images[index].permute(0, 2, 3, 1).numpy()
    return Pairs(images, source.labels[index].tolist(), Image.fromarray)
