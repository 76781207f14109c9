"""Fast tests of geokd.data on the bundled digits and on small synthetic inputs."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from fractions import Fraction

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from geokd.cli import main as cli_main
from geokd.data import (
    BatchLoader,
    TensorDataset,
    available_datasets,
    balanced_indices,
    dataset_defaults,
    load_dataset,
    normalize,
    random_crop_flip,
)
from geokd.data import cifar10, mnist
from geokd.data.cache import cache_root, load_arrays, write_arrays
from geokd.data.digits import digits_to_uint8
from geokd.data.fetch import host_reachable
from geokd.errors import DataIntegrityError, DatasetNotFoundError


# ---------------------------------------------------------------- digits


def test_digits_shapes_and_types():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1257, 540)
    for ds in (train, test):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (1, 8, 8)
        assert ds.labels.dtype == torch.int64 and ds.num_classes == 10
        assert set(ds.labels.tolist()) == set(range(10))
    assert train.name == "digits" and train.split == "train" and test.split == "test"


def test_digits_scaling_is_round_half_up_of_v_times_255_over_16():
    values = np.arange(17)
    expected = [int(Fraction(v * 255, 16) + Fraction(1, 2)) for v in values]  # floor(x + 1/2)
    assert digits_to_uint8(values).tolist() == expected
    assert expected[8] == 128 and expected[16] == 255
    with pytest.raises(ValueError, match="0..16"):
        digits_to_uint8(np.array([17]))


def test_digits_split_is_the_documented_stratified_split():
    bunch = load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(bunch.target)), test_size=0.3, stratify=bunch.target, random_state=0
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    assert not set(train_idx) & set(test_idx) and len(train_idx) + len(test_idx) == 1797
    test = load_dataset("digits", split="test")
    train = load_dataset("digits", split="train")
    expected = np.floor(bunch.images[test_idx] * 255 / 16 + 0.5).astype(np.uint8)
    assert np.array_equal(test.images[:, 0].numpy(), expected)
    assert np.array_equal(test.labels.numpy(), bunch.target[test_idx])
    assert np.array_equal(train.labels.numpy(), bunch.target[train_idx])
    # Stratified: per-class proportions of the test set within one sample of 30 %.
    full = np.bincount(bunch.target)
    assert np.all(np.abs(np.bincount(test.labels.numpy()) - 0.3 * full) <= 1)
    # Same in every call.
    assert torch.equal(load_dataset("digits", split="test").images, test.images)


def test_digits_mean_std_are_those_of_the_train_split_for_both_splits():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    pixels = train.images.numpy().astype(np.float64).ravel() / 255
    assert train.mean == pytest.approx((pixels.mean(),), abs=1e-12)
    assert train.std == pytest.approx((np.sqrt(((pixels - pixels.mean()) ** 2).mean()),), abs=1e-12)
    assert test.mean == train.mean and test.std == train.std


def test_available_and_defaults():
    assert available_datasets() == ["cifar10", "cifar100", "digits", "fashion-mnist", "mnist"]
    assert dataset_defaults("cifar10") == {"padding": 4, "flip": True}
    assert dataset_defaults("digits") == {"padding": 1, "flip": False}
    with pytest.raises(ValueError, match="unknown dataset 'cifar1'.*cifar10"):
        dataset_defaults("cifar1")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="svhn"), "unknown dataset 'svhn'"),
        (dict(name="digits", split="valid"), "unknown split 'valid'"),
        (dict(name="digits", fraction=0), r"fraction must be a number in \(0, 1\], got 0"),
        (dict(name="digits", fraction=1.5), "got 1.5"),
        (dict(name="digits", fraction=True), "got True"),
        (dict(name="digits", fraction=0.001), "keeps no sample"),
        # Invalid fraction refused before any download is attempted.
        (dict(name="cifar10", fraction=-0.1, root="/nonexistent/geokd"), "got -0.1"),
    ],
)
def test_load_dataset_rejects_bad_arguments(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        load_dataset(name, **kwargs)


# ---------------------------------------------------------------- balanced subsets


def test_fraction_gives_exact_equal_class_counts_and_is_seeded():
    full = load_dataset("digits")
    smallest = int(np.bincount(full.labels.numpy()).min())
    sub = load_dataset("digits", fraction=0.1, seed=3)
    counts = np.bincount(sub.labels.numpy(), minlength=10)
    assert np.all(counts == int(0.1 * smallest))
    again = load_dataset("digits", fraction=0.1, seed=3)
    other = load_dataset("digits", fraction=0.1, seed=4)
    assert torch.equal(sub.images, again.images) and torch.equal(sub.labels, again.labels)
    assert not torch.equal(sub.images, other.images)
    assert sub.mean == full.mean  # normalization stays that of the full train split


def test_balanced_indices_exact_fraction_on_balanced_labels_and_nested():
    labels = np.repeat(np.arange(10), 500)
    np.random.default_rng(0).shuffle(labels)
    tenth = balanced_indices(labels, fraction=0.1, num_classes=10, seed=7)
    assert len(tenth) == 500 and np.all(np.bincount(labels[tenth]) == 50)
    assert np.all(np.diff(tenth) > 0)  # dataset order, no duplicates
    half = balanced_indices(labels, fraction=0.5, num_classes=10, seed=7)
    assert set(tenth) <= set(half)


def test_subset_keeps_order_and_checks_range():
    ds = load_dataset("digits", split="test")
    sub = ds.subset([5, 2, 5])
    assert torch.equal(sub.images, ds.images[[5, 2, 5]]) and sub.labels.tolist() == ds.labels[[5, 2, 5]].tolist()
    with pytest.raises(ValueError, match=r"indices must lie in 0..539, got range 0..540"):
        ds.subset([0, 540])
    with pytest.raises(ValueError, match="integer indices"):
        ds.subset([0.5])


def test_tensor_dataset_validates():
    good = dict(images=torch.zeros(2, 1, 2, 2, dtype=torch.uint8), labels=torch.tensor([0, 1]),
                num_classes=2, mean=(0.5,), std=(0.5,), name="toy", split="train")
    TensorDataset(**good)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) torch.uint8 tensor, got torch.float32"):
        TensorDataset(**{**good, "images": torch.zeros(2, 1, 2, 2)})
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        TensorDataset(**{**good, "labels": torch.tensor([0, 1, 1])})
    with pytest.raises(ValueError, match=r"labels must lie in 0..1, got range 0..2"):
        TensorDataset(**{**good, "labels": torch.tensor([0, 2])})
    with pytest.raises(ValueError, match="1 mean and std values"):
        TensorDataset(**{**good, "mean": (0.5, 0.5)})


# ---------------------------------------------------------------- augmentation


def _distinct_images(b, c, h, w, seed=0):
    # Strictly positive, all different: a window (or its mirror) can match only one offset.
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g) + 1.0


def test_crop_with_padding_zero_and_no_flip_is_identity():
    x = _distinct_images(5, 3, 6, 7)
    assert torch.equal(random_crop_flip(x, padding=0, flip=False), x)


def test_flip_twice_with_same_seed_is_identity_and_flip_is_mirror_or_nothing():
    x = _distinct_images(64, 2, 5, 6)
    once = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(11))
    twice = random_crop_flip(once, padding=0, generator=torch.Generator().manual_seed(11))
    assert torch.equal(twice, x)
    mirrored = torch.tensor([torch.equal(o, TF.hflip(i)) for o, i in zip(once, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(once, x)])
    assert torch.all(mirrored ^ kept) and mirrored.any() and kept.any()


@pytest.mark.parametrize("flip", [False, True])
def test_every_crop_is_a_window_of_the_zero_padded_image(flip):
    padding, b, c, h, w = 2, 300, 3, 5, 4
    x = _distinct_images(b, c, h, w, seed=1)
    out = random_crop_flip(x, padding=padding, flip=flip, generator=torch.Generator().manual_seed(5))
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    seen = set()
    for i in range(b):
        matches = [
            (top, left, mirror)
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            for mirror in ((False, True) if flip else (False,))
            if np.array_equal(
                out[i].numpy(),
                (lambda win: win[..., ::-1] if mirror else win)(padded[i, :, top : top + h, left : left + w]),
            )
        ]
        assert len(matches) == 1, f"sample {i}: {len(matches)} matching windows"
        seen.add(matches[0])
    # Every offset (and flip) occurs: the draw covers the whole range.
    assert len(seen) == (2 * padding + 1) ** 2 * (2 if flip else 1)


def test_crop_matches_torchvision_functional_pad_crop_hflip():
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = random_crop_flip(x, padding=3, generator=torch.Generator().manual_seed(9))
    for i in range(len(x)):
        padded = TF.pad(x[i], [3])
        candidates = [TF.crop(padded, t, l, 8, 8) for t in range(7) for l in range(7)]
        candidates += [TF.hflip(cand) for cand in candidates]
        assert any(torch.equal(out[i], cand) for cand in candidates)
    assert out.dtype == torch.uint8


def test_augmentation_is_seeded_and_keeps_dtype_device():
    x = _distinct_images(16, 3, 8, 8)
    a = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(1))
    b = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(1))
    c = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == x.dtype and a.device == x.device and a.shape == x.shape
    meta = random_crop_flip(torch.empty(4, 3, 8, 8, device="meta"), padding=2)
    assert meta.device.type == "meta" and meta.shape == (4, 3, 8, 8)


def test_augmentation_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) tensor of images, got shape \(3, 8, 8\)"):
        random_crop_flip(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="padding must be a non-negative int, got -1"):
        random_crop_flip(torch.zeros(1, 3, 8, 8), padding=-1)


# ---------------------------------------------------------------- BatchLoader


def test_loader_normalization_matches_torchvision_to_tensor_normalize():
    ds = load_dataset("digits", split="test")
    x, y = next(iter(BatchLoader(ds, batch_size=64, shuffle=False)))
    for i in range(64):
        hwc = ds.images[i].permute(1, 2, 0).numpy()
        expected = TF.normalize(TF.to_tensor(hwc), list(ds.mean), list(ds.std))
        torch.testing.assert_close(x[i], expected, atol=1e-5, rtol=0)
    assert torch.equal(y, ds.labels[:64]) and x.dtype == torch.float32
    assert torch.allclose(normalize(ds.images[:64], mean=ds.mean, std=ds.std), x, atol=1e-5)


def _indexed_dataset(n):
    # Label = index, so every batch says which samples it holds.
    g = torch.Generator().manual_seed(0)
    return TensorDataset(images=torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=g),
                         labels=torch.arange(n), num_classes=n, mean=(0.4, 0.5, 0.6),
                         std=(0.2, 0.25, 0.3), name="indexed", split="train")


@pytest.mark.parametrize("drop_last, expected_len", [(False, 4), (True, 3)])
def test_loader_epoch_covers_each_sample_once(drop_last, expected_len):
    ds = _indexed_dataset(103)
    loader = BatchLoader(ds, batch_size=30, shuffle=True, drop_last=drop_last,
                         generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(loader) == len(batches) == expected_len
    seen = torch.cat([y for _, y in batches])
    assert len(seen) == (90 if drop_last else 103) and len(set(seen.tolist())) == len(seen)
    assert not torch.equal(seen, torch.arange(len(seen)))  # actually shuffled
    for x, y in batches:
        torch.testing.assert_close(x, normalize(ds.images[y], mean=ds.mean, std=ds.std), atol=1e-5, rtol=0)


def test_loader_is_reproducible_per_seed_and_differs_across_epochs():
    ds = load_dataset("digits")

    def epochs(seed):
        loader = BatchLoader(ds, batch_size=100, shuffle=True, augment=True,
                             generator=torch.Generator().manual_seed(seed))
        return [torch.cat([x for x, _ in loader]) for _ in range(2)]

    a, b, c = epochs(0), epochs(0), epochs(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])


def test_loader_uses_dataset_default_augmentation():
    digits = BatchLoader(load_dataset("digits"), batch_size=8, shuffle=False, augment=True)
    assert (digits.padding, digits.flip) == (1, False)
    explicit = BatchLoader(load_dataset("digits"), batch_size=8, shuffle=False, augment=True, padding=4, flip=True)
    assert (explicit.padding, explicit.flip) == (4, True)


def test_loader_respects_device():
    ds = load_dataset("digits", split="test")
    x, y = next(iter(BatchLoader(ds, batch_size=16, shuffle=True, device=torch.device("cpu"))))
    assert x.device.type == "cpu" and y.device.type == "cpu"
    meta = BatchLoader(ds, batch_size=16, shuffle=True, augment=True, device="meta")
    x, y = next(iter(meta))
    assert x.device.type == "meta" and y.device.type == "meta" and x.shape == (16, 1, 8, 8)


def test_loader_rejects_bad_arguments():
    ds = load_dataset("digits", split="test")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        BatchLoader(ds, batch_size=0, shuffle=False)
    with pytest.raises(ValueError, match="expected a geokd TensorDataset, got list"):
        BatchLoader([1, 2], batch_size=1, shuffle=False)
    with pytest.raises(ValueError, match="is empty"):
        BatchLoader(ds.subset([]), batch_size=1, shuffle=False)


# ---------------------------------------------------------------- cache and integrity


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("GEOKD_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("GEOKD_CACHE")
    assert cache_root() == cache_root(os.path.expanduser("~/.cache/geokd"))


def _write_small_cache(tmp_path):
    arrays = {"train_images": np.arange(96, dtype=np.uint8).reshape(2, 3, 4, 4),
              "train_labels": np.array([0, 1])}
    return write_arrays(tmp_path / "toy", "toy", arrays, info={"source": "test"}), arrays


def test_cache_roundtrip_and_manifest_hashes(tmp_path):
    folder, arrays = _write_small_cache(tmp_path)
    loaded, manifest = load_arrays(folder, "toy", ("train_images", "train_labels"))
    for key in arrays:
        assert np.array_equal(loaded[key], arrays[key])
        digest = hashlib.sha256((folder / f"{key}.npy").read_bytes()).hexdigest()
        assert manifest["files"][f"{key}.npy"]["sha256"] == digest
    assert manifest["source"] == "test"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging removed


def test_cache_refuses_tampered_truncated_or_unmanifested_files(tmp_path):
    folder, _ = _write_small_cache(tmp_path)
    path = folder / "train_images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataIntegrityError, match=r"sha256 of .*train_images.npy.*delete the folder .*toy.*geokd data fetch toy"):
        load_arrays(folder, "toy", ("train_images",))
    path.write_bytes(bytes(data[:-5]))
    with pytest.raises(DataIntegrityError, match="truncated or modified"):
        load_arrays(folder, "toy", ("train_images",))
    (folder / "manifest.json").unlink()
    with pytest.raises(DataIntegrityError, match="has no manifest.json"):
        load_arrays(folder, "toy", ("train_labels",))


def test_missing_dataset_without_download_names_the_fetch_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", root=tmp_path, download=False)
    message = str(info.value)
    assert "geokd data fetch cifar10" in message and str(tmp_path / "cifar10") in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert isinstance(info.value, FileNotFoundError)


def test_corrupted_cache_is_an_error_not_a_silent_refetch(tmp_path):
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(DataIntegrityError, match="geokd data fetch cifar10"):
        load_dataset("cifar10", root=tmp_path, download=True)


def test_host_probe_fails_fast_offline():
    import time

    start = time.perf_counter()
    assert host_reachable("host.invalid", timeout=1.0) is False
    assert time.perf_counter() - start < 3


# ---------------------------------------------------------------- CIFAR-10 readers (synthetic)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_pickle_reader_refuses_arbitrary_globals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in (*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH):
        (folder / name).write_bytes(pickle.dumps({"data": _Exploit(), "labels": []}, protocol=2))
    with pytest.raises(DataIntegrityError, match="posix.system is not allowed|os.system is not allowed"):
        load_dataset("cifar10", root=tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


def test_binary_batch_md5_layout_is_label_then_chw_bytes():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    labels = np.array([4, 0, 9])
    blob = b"".join(bytes([int(l)]) + im.tobytes(order="C") for l, im in zip(labels, images))
    assert cifar10.binary_batch_md5(images, labels) == hashlib.md5(blob).hexdigest()


# ---------------------------------------------------------------- IDX and .deb readers (synthetic)


def _idx(array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_roundtrip_and_errors():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    assert np.array_equal(mnist.parse_idx(_idx(images), what="images"), images)
    with pytest.raises(DataIntegrityError, match="header announces"):
        mnist.parse_idx(_idx(images)[:-1], what="images")
    with pytest.raises(DataIntegrityError, match="not an unsigned-byte IDX"):
        mnist.parse_idx(b"\x00\x00\x0d\x01" + bytes(8), what="images")


def test_idx_folder_with_wrong_md5_is_refused(tmp_path):
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for filename in mnist.FILES.values():
        (folder / f"{filename}.gz").write_bytes(gzip.compress(_idx(np.zeros((2, 28, 28) if "images" in filename else (2,)))))
    with pytest.raises(DataIntegrityError, match="fashion-mnist from .* differs from the official release"):
        load_dataset("fashion-mnist", root=tmp_path, download=False)


def test_deb_reader_extracts_idx_files_from_an_ar_archive():
    members = {f"./{mnist.DEB_DATA_DIR}/{f}.gz": gzip.compress(f.encode()) for f in mnist.FILES.values()}
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    def ar_member(name, data):
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{644:<8}{len(data):<10}`\n".encode()
        return header + data + (b"\n" if len(data) % 2 else b"")

    deb = b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("data.tar.xz", tar_buf.getvalue())
    raw = mnist.raw_from_deb(deb)
    assert raw == {f: f.encode() for f in mnist.FILES.values()}
    with pytest.raises(DataIntegrityError, match="ar archive signature"):
        mnist.raw_from_deb(b"not a deb")


# ---------------------------------------------------------------- CLI


def test_cli_info_digits(capsys):
    assert cli_main(["data", "info", "digits"]) == 0
    out = capsys.readouterr().out
    assert "train:     1257 images" in out and "test:      540 images" in out and "'flip': False" in out


def test_cli_info_missing_dataset_says_how_to_fetch(tmp_path, capsys):
    assert cli_main(["data", "info", "cifar10", "--root", str(tmp_path)]) == 2
    assert f"geokd data fetch cifar10 --root {tmp_path}" in capsys.readouterr().err


def test_cli_fetch_digits_and_corrupted_cache(tmp_path, capsys):
    assert cli_main(["data", "fetch", "digits"]) == 0
    assert "bundled with scikit-learn" in capsys.readouterr().out
    (tmp_path / "cifar10").mkdir()
    assert cli_main(["data", "fetch", "cifar10", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no manifest.json" in err and "geokd data fetch cifar10" in err


@pytest.mark.parametrize("module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_cifar_pickle_reader_accepts_python2_and_python3_numpy_pickles(tmp_path, module):
    data = np.arange(10000 * 3072, dtype=np.uint64).astype(np.uint8).reshape(10000, 3072)
    blob = pickle.dumps({"data": data, "labels": list(range(10)) * 1000}, protocol=2)
    # Pickles written by Python 2 / numpy 1 name the old module path.
    blob = blob.replace(b"numpy._core.multiarray", module).replace(b"numpy.core.multiarray", module)
    assert module in blob
    (tmp_path / "batch").write_bytes(blob)
    images, labels = cifar10._read_pickled_batch(tmp_path / "batch")
    assert np.array_equal(images.reshape(10000, 3072), data) and labels[:3].tolist() == [0, 1, 2]
