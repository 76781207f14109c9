"""geokd.checkpoints: the authors' pickles read safely, our checkpoints saved atomically."""

import hashlib
import os
import pickle
import shutil
import sys
import types
from collections import OrderedDict

import pytest
import torch
from torch import nn

from geokd.checkpoints import (
    file_sha256,
    infer_wrn_config,
    load_any,
    load_checkpoint,
    load_released_state_dict,
    save_checkpoint,
)
from geokd.checkpoints.released import restricted_loads
from geokd.errors import CheckpointError
from geokd.models import build_model, model_config

TEACHER = "WideResNet28-1_0.pth"
GKD0 = "GKD_28-1_teaches_28-0.5_0.0_0.0_25.0_1_128_False_False_False_0.pth"


def test_released_files_match_their_sha256sums(graph_kd_dir):
    with open(os.path.join(graph_kd_dir, "SHA256SUMS")) as f:
        entries = [line.split() for line in f if line.strip()]
    assert len(entries) == 21
    for digest, name in entries:
        assert file_sha256(os.path.join(graph_kd_dir, name)) == digest, name


@pytest.fixture
def fake_authors_module(monkeypatch):
    """The authors' classes as plain nn.Module subclasses, for torch's own (unsafe) loader."""
    package = types.ModuleType("models")
    module = types.ModuleType("models.preact_resnet")

    class PreActWideResNet(nn.Module):
        pass

    class PreActBlock(nn.Module):
        pass

    for cls in (PreActWideResNet, PreActBlock):
        cls.__module__ = "models.preact_resnet"
        setattr(module, cls.__name__, cls)
    package.preact_resnet = module
    monkeypatch.setitem(sys.modules, "models", package)
    monkeypatch.setitem(sys.modules, "models.preact_resnet", module)
    return module


@pytest.mark.parametrize("name, widen", [(TEACHER, 1.0), (GKD0, 0.5)])
def test_released_state_dict_equals_torchs_own_unpickling(graph_kd_dir, fake_authors_module, name, widen):
    path = os.path.join(graph_kd_dir, name)
    state, info = load_released_state_dict(path)
    assert info["format"] == "legacy"
    assert "models.preact_resnet.PreActWideResNet" in info["classes"]
    # Oracle: torch's unrestricted loader on this trusted (hash-pinned) file with stub classes.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = torch.load(path, map_location="cpu", weights_only=False)["net"].module.state_dict()
    assert list(state) == list(oracle)
    for key in oracle:
        assert torch.equal(state[key], oracle[key]), key
    assert infer_wrn_config(state) == {"name": "wrn", "depth": 28, "widen_factor": widen, "num_classes": 10, "in_channels": 3}
    net = build_model("wrn", depth=28, widen_factor=widen)
    net.load_state_dict(state, strict=True)
    # load_any gives the same network.
    loaded = load_any(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))


def _install_module(monkeypatch, name):
    """An importable (in-memory) module ``models.<x>`` so pickle can save references to it."""
    package = types.ModuleType("models")
    package.__path__ = []
    module = types.ModuleType(name)
    setattr(package, name.split(".")[1], module)
    monkeypatch.setitem(sys.modules, "models", package)
    monkeypatch.setitem(sys.modules, name, module)
    return module


class _CallsFunction:
    """Pickles as a call of ``func(*args)``: the classic hostile payload."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("legacy", [True, False])
def test_hostile_pickle_calling_os_system_is_refused_and_not_run(tmp_path, legacy):
    marker = tmp_path / "owned"
    path = tmp_path / "evil.pth"
    payload = {"net": _CallsFunction(os.system, (f"touch {marker}",))}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    for loader in (load_released_state_dict, load_any):
        with pytest.raises(CheckpointError, match=r"refused global '(posix|os)\.system'.*nothing from the file was run"):
            loader(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_hostile_calls_are_refused_before_running(monkeypatch):
    probe = _install_module(monkeypatch, "models.probe")
    fired = []

    def fire(*args):
        fired.append(args)

    fire.__module__, fire.__qualname__ = "models.probe", "fire"
    probe.fire = fire
    # A lower-case function under an admitted prefix is still not a class: refused.
    data = pickle.dumps(_CallsFunction(probe.fire, ("x",)), protocol=2)
    with pytest.raises(CheckpointError, match="refused global 'models.probe.fire'"):
        restricted_loads(data)
    assert fired == []
    # A stand-in class called with arguments (REDUCE) is refused.
    evil_class = type("Evil", (), {"__module__": "models.probe"})
    probe.Evil = evil_class
    with pytest.raises(CheckpointError, match="refused call of class 'models.probe.Evil' with arguments"):
        restricted_loads(pickle.dumps(_CallsFunction(evil_class, ("rm -rf",)), protocol=2))
    # BUILD (__setstate__) on anything but a module stand-in is refused.
    crafted = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01}q\x02X\x01\x00\x00\x00aK\x01sb."
    with pytest.raises(CheckpointError, match="refused to set the state of a OrderedDict"):
        restricted_loads(crafted)
    for module, name in (("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load"), ("torch.nn.modules.module", "_addindent")):
        with pytest.raises(CheckpointError, match=f"refused global '{module}.{name}'"):
            restricted_loads(f"c{module}\n{name}\n.".encode())


def test_truncated_released_file_is_a_clear_error(graph_kd_dir, tmp_path):
    source = os.path.join(graph_kd_dir, GKD0)
    data = open(source, "rb").read()
    for cut in (100, 20_000, len(data) - 1000):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            load_released_state_dict(path)
        with pytest.raises(CheckpointError):
            load_any(path)


def test_zip_format_whole_module_pickle_from_current_torch(tmp_path, monkeypatch):
    module = _install_module(monkeypatch, "models.tiny")

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

    Tiny.__module__, Tiny.__qualname__ = "models.tiny", "Tiny"
    module.Tiny = Tiny
    net = Tiny()
    net.bn.running_mean.uniform_()
    path = tmp_path / "whole.pth"
    torch.save({"net": nn.DataParallel(net), "acc": 93.3, "epoch": 199}, path)
    state, info = load_released_state_dict(path)
    assert info["format"] == "zip" and info["extras"] == {"acc": 93.3, "epoch": 199}
    # Non-persistent buffers are pickled with the module but are not state: nn.Module's own rule.
    expected = net.state_dict()
    assert set(state) - set(expected) == {"scratch"}
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_model("wrn", depth=10, widen_factor=0.5, num_classes=3)
    path = tmp_path / "run" / "ckpt.pt"
    digest = save_checkpoint(path, net, model_config=model_config(net), extra={"epoch": 3, "error": 12.5})
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "run" / "ckpt.pt.sha256").read_text() == f"{digest}  ckpt.pt\n"
    assert sorted(os.listdir(tmp_path / "run")) == ["ckpt.pt", "ckpt.pt.sha256"]  # no temp files left
    plain = torch.load(path, weights_only=True)
    assert plain["model_config"] == model_config(net)
    again, info = load_checkpoint(path)
    assert info["extra"] == {"epoch": 3, "error": 12.5} and info["sha256"] == digest
    for key, value in net.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    assert not again.training
    assert type(load_any(path)) is type(net)


def test_tampered_truncated_and_foreign_checkpoints(tmp_path):
    net = build_model("small_cnn", in_channels=1, widths=(4, 4, 8))
    path = tmp_path / "c.pt"
    save_checkpoint(path, net, model_config=model_config(net))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(path)
    # Truncated, without a checksum beside it: still a clear error.
    os.remove(str(path) + ".sha256")
    path.write_bytes(bytes(data[:500]))
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a geokd checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_wrong_architecture_lists_missing_unexpected_misshaped(tmp_path):
    student = build_model("wrn", depth=16, widen_factor=0.5)
    path = tmp_path / "s.pt"
    # Claim the wider, deeper teacher's architecture for the student's weights.
    save_checkpoint(path, student, model_config={"name": "wrn", "depth": 22, "widen_factor": 1.0, "num_classes": 10, "in_channels": 3})
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(path)
    message = str(excinfo.value)
    assert "missing: layer1.2.conv1.weight" in message
    assert "mis-shaped: layer1.0.conv1.weight (checkpoint (8, 16, 3, 3), model (16, 16, 3, 3))" in message
    assert "unexpected: layer1.0.shortcut.0.weight" in message


def test_save_refuses_non_plain_extra_and_writes_nothing(tmp_path):
    net = build_model("mlp", in_features=4, hidden_sizes=(3,))
    with pytest.raises(ValueError, match=r"extra\['opt'\]: expected plain values"):
        save_checkpoint(tmp_path / "x.pt", net, model_config=model_config(net), extra={"opt": object()})
    with pytest.raises(ValueError, match="model_config must be a dict with a 'name'"):
        save_checkpoint(tmp_path / "x.pt", net, model_config={"depth": 3})
    assert os.listdir(tmp_path) == []


def test_overwrite_is_atomic_replace(tmp_path):
    a = build_model("mlp", in_features=4, hidden_sizes=(3,))
    b = build_model("mlp", in_features=4, hidden_sizes=(3,))
    path = tmp_path / "m.pt"
    save_checkpoint(path, a, model_config=model_config(a))
    save_checkpoint(path, b, model_config=model_config(b))
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.fc1.weight, b.fc1.weight)
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "m.pt.sha256"]


class _StorageToken:
    pass


class _TensorRecord:
    def __init__(self, storage, size, stride):
        self.storage, self.size, self.stride = storage, size, stride

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.size, self.stride, False, OrderedDict())


def _crafted_zip(path, obj, storage_bytes):
    """A torch zip file whose data.pkl is ``obj`` with _StorageToken as storage '0' (4 floats)."""
    import io
    import zipfile

    class Pickler(pickle.Pickler):
        def persistent_id(self, item):
            if isinstance(item, _StorageToken):
                return ("storage", torch.FloatStorage, "0", "cpu", 4)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", storage_bytes)


def test_tensor_records_are_bounds_checked(tmp_path):
    token = _StorageToken()
    good = tmp_path / "good.pth"
    _crafted_zip(good, {"state_dict": OrderedDict(w=_TensorRecord(token, (2, 2), (2, 1)))}, torch.arange(4.0).numpy().tobytes())
    state, _ = load_released_state_dict(good)
    assert torch.equal(state["w"], torch.arange(4.0).view(2, 2))
    # A tensor that would read past its 4-element storage.
    bad = tmp_path / "bad.pth"
    _crafted_zip(bad, {"state_dict": OrderedDict(w=_TensorRecord(token, (100,), (1,)))}, torch.arange(4.0).numpy().tobytes())
    with pytest.raises(CheckpointError, match=r"w: tensor of size \(100,\) .* reads past its storage of 4 elements"):
        load_released_state_dict(bad)
    # Storage bytes that do not match the declared element count.
    short = tmp_path / "short.pth"
    _crafted_zip(short, {"state_dict": OrderedDict(w=_TensorRecord(token, (4,), (1,)))}, b"\0" * 8)
    with pytest.raises(CheckpointError, match="storage '0' has 8 bytes, expected 16"):
        load_released_state_dict(short)


@pytest.mark.parametrize("content", [b"hello\n", b"j\x00\x00", b"\x80\x02}q\x00(X", b""])
def test_load_checkpoint_refuses_non_torch_bytes_with_checkpoint_error(tmp_path, content):
    # Regression (reliability B9): a text file starting with a pickle memo opcode made
    # torch's weights-only loader raise KeyError instead of a CheckpointError.
    from geokd.errors import CheckpointError

    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_checkpoint(path)
