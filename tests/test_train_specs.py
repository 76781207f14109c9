"""The trainer with a user's networks and data: torchvision teacher and student by spec, an
ImageFolder of real CIFAR-10 images, GKD at named sensing points."""

import json

import pytest
import torch
import torchvision

from geokd.checkpoints import load_checkpoint
from geokd.data import load_dataset, write_image_folder
from geokd.data.imagefolder import CIFAR10_CLASSES
from geokd.errors import ConfigError
from geokd.train import config_from_dict, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_folder")
    for split, per_class in (("train", 16), ("test", 8)):
        data = load_dataset("cifar10", split=split)
        picked = torch.cat([torch.nonzero(data.labels == c).ravel()[:per_class] for c in range(10)])
        write_image_folder(data.subset(picked), root, split=split, class_names=CIFAR10_CLASSES)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "teacher.pt")
    return root


def _config(folder, **extra):
    table = {
        "data": {"name": f"imagefolder:{folder}", "batch_size": 32, "eval_batch_size": 80},
        "model": {"name": "torchvision:mobilenet_v2", "params": {"width_mult": 0.5},
                  "sensing_points": ["features.6", "features.13", "features.18"]},
        "teacher": f"torchvision:resnet18?num_classes=10@{folder / 'teacher.pt'}",
        "teacher_sensing_points": ["layer2", "layer3", "layer4"],
        "terms": [{"loss": "gkd", "weight": 25.0, "params": {"k": 8}}],
        "schedule": {"epochs": 1, "milestones": []},
        "optim": {"lr": 0.01},
        "run": {"threads": 1},
    }
    table.update(extra)
    return config_from_dict(table)


def test_torchvision_student_distils_from_a_torchvision_teacher_on_an_image_folder(folder, tmp_path):
    result = train(_config(folder), run_dir=tmp_path / "run", progress=False)
    terms = result.metrics[-1]["train_terms"]
    assert set(terms) == {"gkd"} and terms["gkd"] > 0
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["model"]["params"]["num_classes"] == 10   # inferred from the folder's classes
    # The run's checkpoint rebuilds the torchvision student from its recorded spec.
    model, info = load_checkpoint(tmp_path / "run" / "model.pt")
    assert info["model_config"] == {"name": "torchvision:mobilenet_v2", "width_mult": 0.5, "num_classes": 10}
    assert type(model) is torchvision.models.MobileNetV2
    for key, value in result.model.state_dict().items():
        assert torch.equal(value.cpu(), model.state_dict()[key]), key


def test_a_teacher_without_sensing_points_names_the_setting(folder, tmp_path):
    with pytest.raises(ConfigError, match="teacher_sensing_points"):
        train(_config(folder, teacher_sensing_points=None), run_dir=tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"teacher sensing point 'layer5' does not exist in ResNet; did you mean"):
        train(_config(folder, teacher_sensing_points=["layer2", "layer3", "layer5"]), run_dir=tmp_path / "r2",
              progress=False)


def test_a_torchvision_student_without_sensing_points_trains_with_cross_entropy_and_kd(folder, tmp_path):
    # Logit-only objectives need no sensing points; a feature term without them names the setting.
    model = {"name": "torchvision:mobilenet_v2", "params": {"width_mult": 0.5}}
    result = train(_config(folder, model=model, teacher_sensing_points=None,
                           terms=[{"loss": "kd", "weight": 0.9, "params": {"temperature": 4.0}}]),
                   run_dir=tmp_path / "kd", progress=False)
    assert result.metrics[-1]["train_terms"]["kd"] > 0
    with pytest.raises(ConfigError, match=r"model.sensing_points: the terms gkd compare the student's sensing "
                                          r"points, but the student \(MobileNetV2\) declares none"):
        train(_config(folder, model=model), run_dir=tmp_path / "gkd", progress=False)
