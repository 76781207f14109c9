"""Hostile and broken files: refused with a clear error, nothing executed, nothing overwritten.

Covers geokd checkpoints (``save_checkpoint``/``load_checkpoint``/``load_any``), the
authors' whole-module pickles (``load_released_state_dict``), the trainer's resumable
state (``read_state``) and the dataset cache (``write_arrays``/``load_arrays``), each fed
code-executing pickles, truncated archives, flipped bytes and the wrong architecture.
"""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from geokd.checkpoints import load_any, load_checkpoint, load_released_state_dict, save_checkpoint
from geokd.data import load_dataset
from geokd.data.cache import load_arrays, write_arrays
from geokd.errors import CheckpointError, DataIntegrityError
from geokd.models import build_model, model_config
from geokd.train.state import read_state, write_state
from tests._fault_helpers import count_case, flush_counts


@pytest.fixture(scope="module", autouse=True)
def _record_counts(request):
    yield
    flush_counts(request.config)


def _write_marker(path):  # pragma: no cover - must never run
    with open(path, "w") as fh:
        fh.write("pwned")
    return {}


class _WritesMarker:
    """Unpickling this calls ``_write_marker(path)``: the classic pickle payload."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_write_marker, (self.path,))


class _RunsShell:
    """Unpickling this calls ``os.system("touch <path>")``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Eval:
    """Unpickling this calls ``builtins.eval`` on code that writes the marker."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (eval, (f"open({self.path!r}, 'w').write('pwned')",))


def _small_net(**kw):
    return build_model("small_cnn", in_channels=1, widths=kw.get("widths", (4, 8, 8)))


def _snapshot(folder):
    """Every file's bytes under ``folder``: proves a refusal overwrote nothing."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


_PAYLOADS = [_WritesMarker, _RunsShell, _Eval]
_LOADERS = {
    "load_checkpoint": lambda p: load_checkpoint(p),
    "load_any": lambda p: load_any(p),
    "load_released_state_dict": lambda p: load_released_state_dict(p),
    "read_state": lambda p: read_state(p),
}


@pytest.mark.parametrize("payload", _PAYLOADS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("container", ["torch_zip", "torch_legacy", "raw_pickle", "inside_state_dict"])
@pytest.mark.parametrize("loader", sorted(_LOADERS))
def test_code_executing_pickles_are_refused_and_never_run(tmp_path, payload, container, loader):
    marker = tmp_path / "marker"
    evil = payload(str(marker))
    path = tmp_path / "evil.pt"
    if container == "torch_zip":
        torch.save({"state_dict": evil}, path)
    elif container == "torch_legacy":
        torch.save(evil, path, _use_new_zipfile_serialization=False)
    elif container == "raw_pickle":
        with open(path, "wb") as fh:
            pickle.dump(evil, fh, protocol=2)
    else:
        # Disguised as a geokd checkpoint: the right format tag, a booby-trapped entry.
        torch.save({"format": "geokd.checkpoint", "version": 1, "model_config": {"name": "small_cnn"},
                    "state_dict": {"conv.weight": evil}, "extra": {}}, path)
    before = _snapshot(tmp_path)
    count_case("files.hostile_pickle")
    with pytest.raises(ValueError) as info:
        _LOADERS[loader](path)
    assert str(info.value)
    assert not marker.exists(), f"{loader} executed code from a {container} pickle"
    assert _snapshot(tmp_path) == before


def test_hostile_pickle_marker_would_be_created_by_plain_pickle(tmp_path):
    # The oracle for the test above: the payloads really do execute under pickle.load.
    for cls in _PAYLOADS:
        marker = tmp_path / f"marker-{cls.__name__}"
        pickle.loads(pickle.dumps(cls(str(marker))))
        assert marker.exists()


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    net = _small_net()
    path = tmp_path / "net.pt"
    digest = save_checkpoint(path, net, model_config=model_config(net), extra={"epoch": 3})
    return net, path, digest


def test_roundtrip_is_bitwise(saved):
    net, path, digest = saved
    again, info = load_checkpoint(path)
    assert info["sha256"] == digest
    for (k, a), (k2, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("keep_sidecar", [True, False])
def test_truncated_checkpoint_is_refused(saved, fraction, keep_sidecar):
    _, path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    if not keep_sidecar:
        os.remove(str(path) + ".sha256")
    before = _snapshot(path.parent)
    for name in ("load_checkpoint", "load_any"):
        count_case("files.truncated_checkpoint")
        with pytest.raises(CheckpointError) as info:
            _LOADERS[name](path)
        if keep_sidecar and name == "load_checkpoint":
            assert "sha256 mismatch" in str(info.value)
    assert _snapshot(path.parent) == before


def test_every_single_flipped_byte_is_caught_by_the_checksum(saved):
    _, path, digest = saved
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    positions = sorted(set(rng.integers(0, len(data), 40).tolist()) | {0, len(data) // 2, len(data) - 1})
    for pos in positions:
        tampered = bytearray(data)
        tampered[pos] ^= 0x01
        path.write_bytes(bytes(tampered))
        count_case("files.flipped_byte_checkpoint")
        with pytest.raises(CheckpointError, match="sha256 mismatch") as info:
            load_checkpoint(path)
        assert digest in str(info.value)
        assert path.read_bytes() == bytes(tampered)  # refused, not "repaired"
    path.write_bytes(bytes(data))
    load_checkpoint(path)  # the original still loads


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    count_case("files.wrong_architecture")
    net = _small_net(widths=(4, 8, 8))
    other = _small_net(widths=(4, 8, 16))
    path = tmp_path / "mislabelled.pt"
    # Weights of one network recorded with the config of another.
    save_checkpoint(path, net, model_config=model_config(other))
    with pytest.raises(CheckpointError, match="mis-shaped") as info:
        load_checkpoint(path)
    assert "does not fit" in str(info.value)


def test_checkpoint_of_a_different_model_family_is_refused(tmp_path):
    count_case("files.wrong_architecture")
    net = build_model("resnet8", num_classes=10)
    path = tmp_path / "family.pt"
    save_checkpoint(path, net, model_config=model_config(_small_net()))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "missing" in msg or "unexpected" in msg


def test_not_a_torch_file_at_all_is_refused(tmp_path):
    # (A text file starting with a pickle memo opcode, e.g. "hello": B9, covered in
    # tests/test_checkpoints.py.)
    for name, blob in {"empty": b"", "zip_garbage": b"PK\x03\x04" + b"\0" * 64, "json": b'{"a": 1}\n',
                       "numpy": None}.items():
        path = tmp_path / f"{name}.pt"
        if blob is None:
            np.save(path, np.arange(5))
            path = tmp_path / f"{name}.pt.npy"
        else:
            path.write_bytes(blob)
        for loader in ("load_checkpoint", "load_any", "read_state"):
            count_case("files.not_a_checkpoint")
            with pytest.raises(ValueError):
                _LOADERS[loader](path)


def test_training_state_truncated_or_flipped_is_refused(tmp_path):
    path = tmp_path / "state.pt"
    write_state(path, {"epoch": 2, "weights": torch.arange(100.0)})
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        path.write_bytes(data[:cut])
        count_case("files.train_state")
        with pytest.raises(CheckpointError):
            read_state(path)
    # A flipped byte in the payload (past the zip header) is caught by the checksum or the zip CRC.
    for pos in np.random.default_rng(1).integers(len(data) // 4, len(data) - 100, 20).tolist():
        tampered = bytearray(data)
        tampered[pos] ^= 0x10
        path.write_bytes(bytes(tampered))
        count_case("files.train_state")
        try:
            state = read_state(path)
        except CheckpointError:
            continue
        # Some bytes (zip padding/metadata) do not carry data: then the content must be intact.
        assert state["epoch"] == 2 and torch.equal(state["weights"], torch.arange(100.0))


# --------------------------------------------------------------------------- dataset cache

@pytest.fixture()
def digits_cache(tmp_path, monkeypatch):
    """A cache folder of the real digits arrays under a private GEOKD_CACHE."""
    monkeypatch.setenv("GEOKD_CACHE", str(tmp_path))
    ds = load_dataset("digits", split="train")
    arrays = {"train_images": ds.images.numpy(), "train_labels": ds.labels.numpy()}
    folder = write_arrays(tmp_path / "digits", "digits", arrays, info={"source": "sklearn"})
    return folder, arrays


def test_cache_roundtrip(digits_cache):
    folder, arrays = digits_cache
    loaded, _ = load_arrays(folder, "digits", ("train_images", "train_labels"))
    for key in arrays:
        np.testing.assert_array_equal(loaded[key], arrays[key])


@pytest.mark.parametrize("key", ["train_images", "train_labels"])
def test_flipped_byte_in_cache_is_refused(digits_cache, key):
    folder, _ = digits_cache
    target = folder / f"{key}.npy"
    data = target.read_bytes()
    for pos in (len(data) - 1, len(data) // 2, 200):
        tampered = bytearray(data)
        tampered[pos] ^= 0x01
        target.write_bytes(bytes(tampered))
        before = _snapshot(folder)
        count_case("files.tampered_cache")
        with pytest.raises(DataIntegrityError, match="sha256|manifest|modified") as info:
            load_arrays(folder, "digits", ("train_images", "train_labels"))
        assert "geokd data fetch" in str(info.value)  # tells the user how to recover
        assert _snapshot(folder) == before


def test_truncated_or_missing_cache_pieces_are_refused(digits_cache):
    folder, _ = digits_cache
    pristine = folder.parent / "pristine"
    shutil.copytree(folder, pristine)
    cases = {
        "truncated": lambda f: (f / "train_images.npy").write_bytes((f / "train_images.npy").read_bytes()[:-7]),
        "appended": lambda f: (f / "train_labels.npy").write_bytes((f / "train_labels.npy").read_bytes() + b"\0"),
        "no_manifest": lambda f: os.remove(f / "manifest.json"),
        "manifest_garbage": lambda f: (f / "manifest.json").write_text("{not json"),
        "array_missing": lambda f: os.remove(f / "train_labels.npy"),
    }
    for name, damage in cases.items():
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        damage(folder)
        count_case("files.tampered_cache")
        with pytest.raises(DataIntegrityError):
            load_arrays(folder, "digits", ("train_images", "train_labels"))


def test_cache_npy_with_pickled_object_is_never_unpickled(digits_cache, tmp_path):
    # An object array in .npy would need allow_pickle: the manifest check must fail first,
    # and even a matching manifest must not unpickle it.
    folder, _ = digits_cache
    marker = tmp_path / "marker"
    evil = np.empty(1, dtype=object)
    evil[0] = _WritesMarker(str(marker))
    np.save(folder / "train_labels.npy", evil, allow_pickle=True)
    count_case("files.tampered_cache")
    with pytest.raises(ValueError):
        load_arrays(folder, "digits", ("train_images", "train_labels"))
    assert not marker.exists()
