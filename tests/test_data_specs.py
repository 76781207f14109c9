"""Data from anywhere: ``imagefolder:PATH``, ``cifar100`` and ``MODULE:CALLABLE`` datasets (real data)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from geokd.data import balanced_indices, dataset_defaults, load_dataset, write_image_folder
from geokd.data import cifar100
from geokd.data.fetch import host_reachable
from geokd.data.imagefolder import CIFAR10_CLASSES
from geokd.data.registry import train_mean_std
from geokd.errors import DataIntegrityError, DatasetNotFoundError

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _factories_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))  # `data_factories:...` specs import tests/data_factories.py


def _balanced(dataset, per_class, seed):
    m = int(np.bincount(dataset.labels.numpy()).min())
    index = balanced_indices(dataset.labels.numpy(), fraction=per_class / m, num_classes=10, seed=seed)
    return dataset.subset(index)


@pytest.fixture(scope="module")
def cifar_parts():
    """Two disjoint-by-seed balanced subsets of the CIFAR-10 test split (20 per class)."""
    source = load_dataset("cifar10", split="test")  # fetched via npm if the cache is missing
    return _balanced(source, 20, seed=1), _balanced(source, 20, seed=0)


@pytest.fixture(scope="module")
def exported(cifar_parts, tmp_path_factory):
    train, test = cifar_parts
    folder = tmp_path_factory.mktemp("cifar_png")
    write_image_folder(train, folder, split="train", class_names=CIFAR10_CLASSES)
    assert write_image_folder(test, folder, split="test") == folder  # cifar10's names by default
    return folder


def _in_folder_order(dataset):
    """The order ImageFolder reads a written folder in: class by class, then by index."""
    return dataset.subset(np.argsort(dataset.labels.numpy(), kind="stable"))


# ---------------------------------------------------------------- imagefolder:PATH


def test_exported_cifar10_reads_back_bit_exact(cifar_parts, exported):
    train, test = cifar_parts
    back = load_dataset(f"imagefolder:{exported}", split="test")
    expected = _in_folder_order(test)
    assert back.images.dtype == torch.uint8 and back.num_classes == 10
    assert torch.equal(back.images, expected.images) and torch.equal(back.labels, expected.labels)
    # Normalization of the *train* folder (a different subset), exactly as train_mean_std measures it.
    assert (back.mean, back.std) == train_mean_std(train.images.numpy())
    assert (back.mean, back.std) != train_mean_std(test.images.numpy())
    assert str(exported / "test") in back.source
    assert sorted(p.name for p in (exported / "test").iterdir()) == list(CIFAR10_CLASSES)


def test_train_split_and_fraction(cifar_parts, exported):
    train, _ = cifar_parts
    full = load_dataset(f"imagefolder:{exported}", split="train")
    assert torch.equal(full.images, _in_folder_order(train).images)
    assert (full.mean, full.std) == train_mean_std(train.images.numpy())
    half = load_dataset(f"imagefolder:{exported}", split="train", fraction=0.5, seed=3)
    index = balanced_indices(full.labels.numpy(), fraction=0.5, num_classes=10, seed=3)
    assert len(half) == 100 and np.bincount(half.labels.numpy()).tolist() == [10] * 10
    assert torch.equal(half.images, full.images[torch.from_numpy(index)])
    assert (half.mean, half.std) == (full.mean, full.std)  # of the whole train split


def test_given_mean_std_are_used(exported):
    ds = load_dataset(f"imagefolder:{exported}", split="test", mean=(0.1, 0.2, 0.3), std=(1, 2, 3))
    assert ds.mean == (0.1, 0.2, 0.3) and ds.std == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="both mean and std"):
        load_dataset(f"imagefolder:{exported}", mean=(0.1, 0.2, 0.3))


def test_flat_folder_serves_both_splits(cifar_parts, tmp_path):
    _, test = cifar_parts
    write_image_folder(test, tmp_path, split="flat")
    a = load_dataset(f"imagefolder:{tmp_path / 'flat'}", split="train")
    b = load_dataset(f"imagefolder:{tmp_path / 'flat'}", split="test")
    assert torch.equal(a.images, b.images) and torch.equal(a.images, _in_folder_order(test).images)
    assert "flat" in b.source and "every split" in b.source
    assert (b.mean, b.std) == train_mean_std(test.images.numpy())


def test_val_is_accepted_as_the_test_folder(cifar_parts, tmp_path):
    train, test = cifar_parts
    write_image_folder(train, tmp_path, split="train")
    write_image_folder(test, tmp_path, split="val")
    back = load_dataset(f"imagefolder:{tmp_path}", split="test")
    assert torch.equal(back.images, _in_folder_order(test).images)
    assert str(tmp_path / "val") in back.source


def _mixed_folder(cifar_parts, root: Path) -> list[Path]:
    """Class folders of 32x32 PNGs plus a few 48x36 (non-square) upscaled ones."""
    _, test = cifar_parts
    write_image_folder(_balanced(test, 2, seed=0), root, split="train")
    bigger = []
    for file in sorted((root / "train" / "cat").glob("*.png"))[:2]:
        target = file.with_name("big_" + file.name)
        Image.open(file).resize((48, 36), Image.NEAREST).save(target)
        bigger.append(target)
    return bigger


def test_image_size_equals_torchvision_resize_center_crop(cifar_parts, tmp_path):
    _mixed_folder(cifar_parts, tmp_path)
    ds = load_dataset(f"imagefolder:{tmp_path}", split="train", image_size=16)
    assert ds.image_shape == (3, 16, 16) and "16x16" in ds.source
    oracle = T.Compose([T.Resize(16), T.CenterCrop(16), T.PILToTensor()])
    files = [f for c in sorted(p.name for p in (tmp_path / "train").iterdir())
             for f in sorted((tmp_path / "train" / c).iterdir())]
    expected = torch.stack([oracle(Image.open(f).convert("RGB")) for f in files])
    assert len(files) == len(ds) == 22
    assert torch.equal(ds.images, expected)
    assert dataset_defaults(f"imagefolder:{tmp_path}", image_size=16) == {"padding": 2, "flip": True}
    assert dataset_defaults(f"imagefolder:{tmp_path}") == {"padding": 4, "flip": True}


def test_mixed_sizes_without_image_size_is_a_clear_error(cifar_parts, tmp_path):
    bigger = _mixed_folder(cifar_parts, tmp_path)
    with pytest.raises(ValueError) as info:
        load_dataset(f"imagefolder:{tmp_path}", split="train")
    message = str(info.value)
    assert "differ in size" in message and str(bigger[0]) in message and "48x36" in message
    assert "image_size" in message and "--image-size" in message


def test_remembered_train_statistics_follow_the_files(cifar_parts, tmp_path):
    train, test = cifar_parts
    write_image_folder(train, tmp_path, split="train")
    write_image_folder(test, tmp_path, split="test")
    before = load_dataset(f"imagefolder:{tmp_path}", split="test")
    assert (before.mean, before.std) == train_mean_std(train.images.numpy())
    # Rewrite one train image (all white): the test split's normalization must follow.
    file = sorted((tmp_path / "train" / "airplane").glob("*.png"))[0]
    Image.new("RGB", (32, 32), (255, 255, 255)).save(file)
    changed = load_dataset(f"imagefolder:{tmp_path}", split="test")
    expected = load_dataset(f"imagefolder:{tmp_path}", split="train")
    assert (changed.mean, changed.std) == train_mean_std(expected.images.numpy()) != (before.mean, before.std)


def test_missing_path_names_it_and_its_parent(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"nope does not exist \(its parent .* exists\)"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(DatasetNotFoundError, match="does not exist either"):
        load_dataset(f"imagefolder:{tmp_path / 'a' / 'b'}")


def test_folder_without_class_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no class folders in"):
        load_dataset(f"imagefolder:{tmp_path}")
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(DatasetNotFoundError, match="loose.png.*one folder per class"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_class_folder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=f"no image files: {tmp_path / 'b'}"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_undecodable_image_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "good.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=f"cannot decode the image file {tmp_path / 'a' / 'broken.png'}"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_train_and_test_must_name_the_same_classes(tmp_path):
    for split, names in (("train", ("cat", "dog")), ("test", ("cat", "cow"))):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "0.png")
    with pytest.raises(ValueError, match=r"only in train: \['dog'\], only in test: \['cow'\]"):
        load_dataset(f"imagefolder:{tmp_path}", split="test")


def test_test_folder_alone_is_normalized_by_its_own_statistics(cifar_parts, tmp_path):
    _, test = cifar_parts
    part = _balanced(test, 2, seed=0)
    write_image_folder(part, tmp_path, split="test", class_names=CIFAR10_CLASSES)
    ds = load_dataset(f"imagefolder:{tmp_path}", split="test")
    assert (ds.mean, ds.std) == train_mean_std(part.images.numpy())
    assert "no train split, so normalized by this test split's own mean/std" in ds.source
    ds = load_dataset(f"imagefolder:{tmp_path}", split="test", mean=(0.5,) * 3, std=(0.25,) * 3)
    assert len(ds) == 20 and ds.mean == (0.5,) * 3


def test_write_image_folder_refuses_unsorted_names_and_full_folders(cifar_parts, tmp_path):
    _, test = cifar_parts
    with pytest.raises(ValueError, match="sorted order"):
        write_image_folder(test, tmp_path, class_names=list(reversed(CIFAR10_CLASSES)))
    write_image_folder(test.subset(range(10)), tmp_path)
    with pytest.raises(FileExistsError, match="already holds files"):
        write_image_folder(test.subset(range(10)), tmp_path)


def test_one_channel_digits_round_trip_as_rgb(tmp_path):
    digits = load_dataset("digits", split="test")
    write_image_folder(digits, tmp_path)
    back = load_dataset(f"imagefolder:{tmp_path}", split="test", mean=(0.5,) * 3, std=(0.5,) * 3)
    expected = _in_folder_order(digits).images.expand(-1, 3, -1, -1)
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == [str(k) for k in range(10)]
    assert torch.equal(back.images, expected)


# ---------------------------------------------------------------- cifar100


def test_cifar100_is_named_with_its_defaults():
    from geokd.data import available_datasets

    assert "cifar100" in available_datasets()
    assert dataset_defaults("cifar100") == {"padding": 4, "flip": True}
    # The values torchvision.datasets.CIFAR100 itself checks.
    from torchvision.datasets import CIFAR100

    assert CIFAR100.tgz_md5 == cifar100.OFFICIAL_TGZ_MD5 and CIFAR100.url == cifar100.OFFICIAL_URL
    assert dict(CIFAR100.train_list + CIFAR100.test_list) == {k: cifar100.FILE_MD5[k] for k in ("train", "test")}
    assert CIFAR100.meta["md5"] == cifar100.FILE_MD5["meta"]


def _assert_manual_instructions(message: str, root: Path) -> None:
    assert cifar100.OFFICIAL_URL in message and cifar100.OFFICIAL_TGZ_MD5 in message
    assert f"put the folder cifar-100-python in {root}" in message


def test_cifar100_unreachable_host_says_how_to_install_by_hand(tmp_path, monkeypatch):
    # An offline machine on every machine, CI included: the real reachability probe runs
    # against a reserved name that never resolves (RFC 2606), so this never skips.
    monkeypatch.setattr(cifar100, "OFFICIAL_HOST", "cifar.invalid")
    assert not host_reachable(cifar100.OFFICIAL_HOST, timeout=1.0)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", split="test", root=tmp_path)
    assert "not reachable" in str(info.value)
    _assert_manual_instructions(str(info.value), tmp_path)
    assert not (tmp_path / "cifar100").exists()


def test_cifar100_without_download_says_how_to_install_by_hand(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar100", split="train", root=tmp_path, download=False)
    _assert_manual_instructions(str(info.value), tmp_path)


def test_cifar100_folder_with_wrong_contents_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(f"not the real {name}".encode())
    with pytest.raises(DataIntegrityError) as info:
        load_dataset("cifar100", split="train", root=tmp_path, download=False)
    message = str(info.value)
    got = hashlib.md5(b"not the real train").hexdigest()
    assert f"{folder / 'train'} (MD5 {got}, expected {cifar100.FILE_MD5['train']})" in message
    assert str(folder / "meta") in message
    assert not (tmp_path / "cifar100").exists()  # nothing cached


def test_cifar100_incomplete_folder_is_refused(tmp_path):
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"x")
    with pytest.raises(DataIntegrityError, match="lacks test, meta"):
        load_dataset("cifar100", root=tmp_path, download=False)


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_cifar100_hostile_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    payload = pickle.dumps({"data": _Touch(marker)}, protocol=2)
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(payload)
    with pytest.raises(DataIntegrityError, match="MD5"):  # refused before unpickling
        load_dataset("cifar100", root=tmp_path, download=False)
    with pytest.raises(DataIntegrityError, match="not a readable CIFAR-100"):  # and the unpickler refuses too
        cifar100.read_split_file(folder / "test", split="test")
    assert not marker.exists()


def test_cifar100_split_file_parser(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(10_000, 3072), dtype=np.uint8)
    fine = rng.integers(0, 100, size=10_000).tolist()
    path = tmp_path / "test"
    # The official files are Python 2 pickles; bytes keys are what a Python 3 reader may meet.
    path.write_bytes(pickle.dumps({b"data": data, b"fine_labels": fine, b"coarse_labels": fine}, protocol=2))
    images, labels = cifar100.read_split_file(path, split="test")
    assert images.shape == (10_000, 3, 32, 32)
    assert np.array_equal(images.reshape(10_000, -1), data) and labels.tolist() == fine


# ---------------------------------------------------------------- MODULE:CALLABLE


def test_callable_with_split_gives_the_source_pixels():
    for split in ("train", "test"):
        source = load_dataset("digits", split=split)
        ds = load_dataset("data_factories:digits_2d", split=split)
        assert torch.equal(ds.images, source.images) and torch.equal(ds.labels, source.labels)
        assert ds.num_classes == 10 and f"split={split!r}" in ds.source
        assert (ds.mean, ds.std) == (source.mean, source.std)  # both measured on the train split
    assert dataset_defaults("data_factories:digits_2d") == {"padding": 4, "flip": True}


def test_callable_with_train_flag_and_float_pixels():
    source = load_dataset("digits", split="test")
    ds = load_dataset("data_factories:digits_float", split="test")
    assert torch.equal(ds.images, source.images) and "train=False" in ds.source
    assert ds.num_classes == 10  # no `classes`: max label + 1


def test_callable_without_split_is_called_once_and_keywords_parse():
    source = load_dataset("digits", split="train")
    ds = load_dataset("data_factories:digits_pil_once", split="test")
    assert torch.equal(ds.images, source.images) and torch.equal(ds.labels, source.labels)
    assert "called once" in ds.source
    few = load_dataset("data_factories:digits_2d?limit=30", split="test")
    assert few.num_classes == 10 and len(few) == 30
    assert torch.equal(few.images, load_dataset("digits", split="test").images[:30])


def test_callable_of_pil_rgb_cifar10():
    source = load_dataset("cifar10", split="test", download=False)
    ds = load_dataset("data_factories:cifar10_pil?per_class=3", split="test")
    index = np.concatenate([np.flatnonzero(source.labels.numpy() == c)[:3] for c in range(10)])
    assert ds.image_shape == (3, 32, 32)
    assert torch.equal(ds.images, source.images[index]) and torch.equal(ds.labels, source.labels[index])


def test_a_torchvision_dataset_class_is_a_callable_too():
    ds = load_dataset("torchvision.datasets:FakeData?size=12&image_size=(3,16,12)&num_classes=4",
                      split="test", image_size=8)
    assert ds.image_shape == (3, 8, 8) and len(ds) == 12 and ds.num_classes == int(ds.labels.max()) + 1
    assert "called once" in ds.source


def test_callable_errors():
    cases = {
        "no_such_module_xyz:make": "cannot import module 'no_such_module_xyz'",
        "data_factories:digits_2": "has no attribute 'digits_2'; did you mean 'digits_2d'",
        "data_factories:NOT_CALLABLE": "expected a callable returning a dataset, got a int",
        "data_factories:not_map_style": "returned a generator, expected a map-style dataset",
        "data_factories:empty": "the train dataset is empty",
        "data_factories:mixed_shapes": r"item 2 has an image of shape \(1, 6, 6\) but item 0 has \(1, 8, 8\).*--image-size",
        "data_factories:digits_2d?split='test'": "geokd passes the split itself",
    }
    for spec, message in cases.items():
        with pytest.raises(ValueError, match=message):
            load_dataset(spec, split="train")


def test_callable_normalized_floats_are_refused_with_the_range_seen():
    with pytest.raises(ValueError) as info:
        load_dataset("data_factories:digits_normalized", split="train")
    message = str(info.value)
    high = (float(load_dataset("digits").images[0].max()) / 255 - 0.5) / 0.25
    assert f"item 0 holds float pixels in [-2, {high:.4g}]" in message and "8-bit" in message and "normalizes" in message


def test_callable_image_size_resizes():
    ds = load_dataset("data_factories:mixed_shapes", split="train", image_size=4)
    assert ds.image_shape == (1, 4, 4) and len(ds) == 3


def test_unknown_name_lists_the_forms():
    with pytest.raises(ValueError, match="imagefolder:PATH.*MODULE:CALLABLE"):
        load_dataset("cifar11")
    with pytest.raises(ValueError, match="fixed image size"):
        load_dataset("digits", image_size=16)
