"""Networks from anywhere: specs, state-dict files from other trainers, ``geokd layers``."""

import os
import pickle
import textwrap

import pytest
import torch
import torchvision

from geokd.checkpoints import load_checkpoint, load_network, load_weights, read_weights, save_checkpoint
from geokd.cli import main
from geokd.errors import CheckpointError
from geokd.models import build_model, model_config
from geokd.models.layer_table import layer_table
from geokd.models.specs import build_network, is_network_spec, parse_network_spec
from geokd.models.taps import FeatureTaps


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def resnet18_file(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_spec_parts_and_paths_are_told_apart():
    spec = parse_network_spec("torchvision:mobilenet_v2?num_classes=10&width_mult=0.5@w/student.pth")
    assert (spec.source, spec.kwargs, spec.weights, spec.name) == (
        "torchvision:mobilenet_v2", {"num_classes": 10, "width_mult": 0.5}, "w/student.pth", "student")
    assert not is_network_spec("runs/gkd/seed0") and not is_network_spec("../shared/graph_kd/GKD_1.pth")
    with pytest.raises(ValueError, match="expected a weights file after '@'"):
        parse_network_spec("torchvision:resnet18@")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_network_spec("torchvision:resnet18?num_classes")


def test_torchvision_spec_builds_the_builders_network():
    net = build_network("torchvision:mobilenet_v2?num_classes=10&width_mult=0.5")
    reference = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
    assert [p.shape for p in net.parameters()] == [p.shape for p in reference.parameters()]
    with pytest.raises(ValueError, match="did you mean 'mobilenet_v2'"):
        build_network("torchvision:mobilenet_v22")
    with pytest.raises(ValueError, match="does not take"):
        build_network("torchvision:resnet18?widht=2")
    with pytest.raises(ValueError, match="not a classification builder"):
        build_network("torchvision:fasterrcnn_resnet50_fpn")


def test_user_factory_spec(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        import torch
        def student(width=4, num_classes=10):
            return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(width, num_classes))
        not_a_factory = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build_model("my_nets:student?width=6")
    assert net[0].out_channels == 6 and net(torch.zeros(2, 3, 8, 8)).shape == (2, 10)
    assert model_config(net) == {"name": "my_nets:student", "width": 6}
    with pytest.raises(ValueError, match="did you mean 'student'"):
        build_model("my_nets:studnet")
    with pytest.raises(ValueError, match="expected a callable"):
        build_model("my_nets:not_a_factory")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.nets'"):
        build_model("no_such_pkg.nets:student")


def test_ddp_and_wrapped_state_dicts_load_the_same_weights(resnet18_file, tmp_path):
    net, plain = resnet18_file
    state = net.state_dict()
    ddp = tmp_path / "ddp.pth"
    torch.save({"epoch": 90, "model": {"module." + k: v for k, v in state.items()}}, ddp)
    compiled = tmp_path / "compiled.pt"
    torch.save({"state_dict": {"_orig_mod." + k: v for k, v in state.items()}}, compiled)
    from safetensors.torch import save_file

    safe = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safe))
    for path in (plain, ddp, compiled, safe):
        loaded = load_network(f"torchvision:resnet18?num_classes=10@{path}")
        assert _same_weights(loaded, net), path
        assert not loaded.training
    assert read_weights(ddp).keys() == state.keys()


def test_bad_weights_files_are_clear_errors(resnet18_file, tmp_path):
    net, plain = resnet18_file
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        read_weights(truncated)

    # Another architecture's weights: missing and unexpected keys are listed, nothing is loaded.
    student = torchvision.models.mobilenet_v2(num_classes=10)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"(?s)missing.*features\.0\.0\.weight.*unexpected.*conv1\.weight"):
        load_weights(student, plain)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())

    # Same names, other shapes (num_classes 10 vs 100) are not loaded either.
    with pytest.raises(CheckpointError, match="fc.weight"):
        load_network(f"torchvision:resnet18?num_classes=100@{plain}")

    # A pickle that would run code when loaded (a whole module here, os.system in general).
    whole = tmp_path / "whole_module.pt"
    torch.save(net, whole)
    with pytest.raises(CheckpointError, match="whole_module.pt: refused: .* import torchvision.models.resnet.ResNet"):
        read_weights(whole)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    hostile = tmp_path / "hostile.pt"
    with open(hostile, "wb") as handle:
        pickle.dump({"state_dict": Exploit()}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="hostile.pt: refused: .* import (os|posix).system"):
        read_weights(hostile)
    assert not (tmp_path / "pwned").exists()

    with pytest.raises(CheckpointError, match="not a state dict|expected a state dict"):
        torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
        read_weights(tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="weights file not found: .*nothing.pt"):
        load_network(f"torchvision:resnet18@{tmp_path / 'nothing.pt'}")


def test_geokd_checkpoint_of_a_spec_network_round_trips(tmp_path, monkeypatch):
    net = build_network("torchvision:resnet18?num_classes=10")
    path = tmp_path / "r18.pt"
    save_checkpoint(path, net, model_config=model_config(net))
    loaded, info = load_checkpoint(path)
    assert info["model_config"] == {"name": "torchvision:resnet18", "num_classes": 10}
    assert _same_weights(loaded, net)

    # A checkpoint naming user code is not imported unless that code is trusted.
    (tmp_path / "evil_nets.py").write_text("import torch\ndef net():\n    return torch.nn.Linear(2, 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    user = build_model("evil_nets:net")
    user_path = tmp_path / "user.pt"
    save_checkpoint(user_path, user, model_config=model_config(user))
    with pytest.raises(CheckpointError, match="GEOKD_TRUSTED_MODULES=evil_nets"):
        load_checkpoint(user_path)
    monkeypatch.setenv("GEOKD_TRUSTED_MODULES", "numpy, evil_nets")
    assert _same_weights(load_checkpoint(user_path)[0], user)


def test_missing_network_names_its_folder(tmp_path):
    with pytest.raises(CheckpointError, match=f"its folder {tmp_path} exists: True"):
        load_network(tmp_path / "teacher.pt")


def test_layer_table_lists_tappable_names_with_the_shapes_hooks_see():
    net = torchvision.models.resnet18(num_classes=10).eval()
    rows = {r.name: r for r in layer_table(net, torch.zeros(1, 3, 32, 32))}
    assert rows["layer1"].output_shape == (64, 8, 8) and rows["layer4"].output_shape == (512, 1, 1)
    assert rows["fc"].output_shape == (10,) and rows["fc"].input_shape == (512,)
    # The table's names are exactly what the taps accept, with the same shapes.
    layer2, conv = FeatureTaps(net, ["layer2", "layer3.1.conv2"])(torch.zeros(1, 3, 32, 32)).features
    assert tuple(layer2.shape[1:]) == rows["layer2"].output_shape
    assert tuple(conv.shape[1:]) == rows["layer3.1.conv2"].output_shape
    # torchvision's ResNet reuses its ReLU within a block: called more than once, not tappable.
    assert not rows["layer1.0.relu"].tappable and rows["layer1.0.relu"].calls == 2


def test_layers_cli_prints_names_and_shapes(capsys):
    assert main(["layers", "torchvision:mobilenet_v2?num_classes=10", "--input-shape", "3", "32", "32"]) == 0
    out = capsys.readouterr().out
    assert "MobileNetV2, input 3 x 32 x 32" in out
    line = next(l for l in out.splitlines() if l.split() and l.split()[0] == "features.18")
    assert "1280 x 1 x 1" in line
    assert main(["layers", "torchvision:mobilenet_v3"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_wrong_layer_name_says_did_you_mean():
    net = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(ValueError, match=r"did you mean 'layer4'.*geokd layers"):
        FeatureTaps(net, ["layer5"])


def test_a_study_names_its_teacher_and_students_by_spec(tmp_path, resnet18_file):
    # [networks] takes specs: the builder stays as written, only the weights part is a path,
    # resolved against the study's folder; the network it names loads with those weights.
    from geokd.analysis.study import load_study

    net, weights = resnet18_file
    study_file = tmp_path / "study" / "mine.toml"
    study_file.parent.mkdir()
    study_file.write_text(textwrap.dedent("""
        [networks]
        teacher = "torchvision:resnet18?num_classes=10@../resnet18.pt"
        students = ["torchvision:mobilenet_v2?num_classes=10&width_mult=0.5"]
        [data]
        dataset = "imagefolder:folder"
        image_size = 32
        [graph]
        layers = ["layer2", "layer4"]
        student_layers = ["features.6", "features.18"]
    """))
    study = load_study(study_file)
    assert study.teacher == f"torchvision:resnet18?num_classes=10@{weights}"
    assert study.students == ["torchvision:mobilenet_v2?num_classes=10&width_mult=0.5"]
    assert (study.layers, study.student_layers, study.image_size) == (
        ["layer2", "layer4"], ["features.6", "features.18"], 32)
    assert study.dataset == f"imagefolder:{study_file.parent / 'folder'}"  # relative to the study too
    assert _same_weights(load_network(study.teacher), net)
