"""Fashion-MNIST on the real data (fetched from the Debian package if missing, ~31 MB)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from geokd.data import load_dataset

pytestmark = pytest.mark.slow

# Uncompressed MD5s of the official IDX files (zalandoresearch/fashion-mnist release).
OFFICIAL_RAW_MD5 = {
    ("train", "images"): "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ("train", "labels"): "9018921c3c673c538a1fc5bad174d6f9",
    ("test", "images"): "8181f5470baa50b63fa0f6fddb340f0a",
    ("test", "labels"): "15d484375f8d13e6eb1aabb0c3f46965",
}


def _idx_bytes(array, magic_dims):
    header = bytes([0, 0, 8, magic_dims]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_rebuilds_the_official_idx_files(split):
    ds = load_dataset("fashion-mnist", split=split)
    n = 60000 if split == "train" else 10000
    assert ds.images.shape == (n, 1, 28, 28) and ds.labels.bincount().tolist() == [n // 10] * 10
    images = _idx_bytes(ds.images[:, 0].numpy(), 3)
    labels = _idx_bytes(ds.labels.numpy(), 1)
    assert hashlib.md5(images).hexdigest() == OFFICIAL_RAW_MD5[(split, "images")]
    assert hashlib.md5(labels).hexdigest() == OFFICIAL_RAW_MD5[(split, "labels")]


def test_fashion_mnist_normalization_is_its_train_statistics():
    train, test = load_dataset("fashion-mnist"), load_dataset("fashion-mnist", split="test")
    x = train.images.to(torch.float64) / 255
    assert train.mean[0] == pytest.approx(x.mean().item(), abs=1e-9)
    assert train.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-9)
    assert round(train.mean[0], 4) == 0.2860 and round(train.std[0], 4) == 0.3530
    assert test.mean == train.mean


def test_torchvision_raw_folder_is_imported(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("fashion-mnist", split=split)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(ds.images[:, 0].numpy(), 3))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(ds.labels.numpy(), 1))
    imported = load_dataset("fashion-mnist", split="test", root=tmp_path, download=False)
    assert torch.equal(imported.images, load_dataset("fashion-mnist", split="test").images)
    assert "torchvision folder" in imported.source and (tmp_path / "fashion-mnist" / "manifest.json").is_file()
