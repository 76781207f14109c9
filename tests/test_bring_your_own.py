"""A new user's networks and data, end to end: torchvision networks, an ImageFolder of real
CIFAR-10 test images (PNG), state-dict files from other trainers, the analysis and its report."""

import csv
import math
import shutil

import pytest
import torch
import torchvision

from geokd.cli import main
from geokd.data import load_dataset, write_image_folder
from geokd.data.imagefolder import CIFAR10_CLASSES
from tests._browser import open_page

pytestmark = pytest.mark.slow

TEACHER_LAYERS = ["layer1", "layer2", "layer3", "layer4"]
STUDENT_LAYERS = ["features.3", "features.6", "features.13", "features.18"]   # MobileNetV2's stage ends
PER_CLASS = 10


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """What a user brings: an image folder and two networks' weights saved by another trainer."""
    root = tmp_path_factory.mktemp("user")
    test = load_dataset("cifar10", split="test")
    picked = torch.cat([torch.nonzero(test.labels == c).ravel()[:30] for c in range(10)])
    write_image_folder(test.subset(picked), root / "images", split="test", class_names=CIFAR10_CLASSES)
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=10)
    torch.save(teacher.state_dict(), root / "teacher.pt")
    shutil.copy(root / "teacher.pt", root / "teacher_again.pt")
    torch.manual_seed(1)
    student = torchvision.models.mobilenet_v2(num_classes=10)
    # As a DDP run saves it: every key under "module.", inside a training-state dict.
    torch.save({"epoch": 240, "model": {"module." + k: v for k, v in student.state_dict().items()}},
               root / "student_ddp.pth")
    return {
        "root": root,
        "dataset": f"imagefolder:{root / 'images'}",
        "teacher": f"torchvision:resnet18?num_classes=10@{root / 'teacher.pt'}",
        "teacher_again": f"torchvision:resnet18?num_classes=10@{root / 'teacher_again.pt'}",
        "student": f"torchvision:mobilenet_v2?num_classes=10@{root / 'student_ddp.pth'}",
    }


def _analyze(files, out, student, *extra) -> dict:
    code = main(["analyze", "--teacher", files["teacher"], "--dataset", files["dataset"], "--split", "test",
                 "--per-class", str(PER_CLASS), "--output-on", "nodes", "--layers", *TEACHER_LAYERS,
                 *extra, "--out", str(out), student])
    assert code == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {(r["network"], r["layer"], r["metric"]): float(r["value"]) for r in rows if r["value"] != ""}


@pytest.fixture(scope="module")
def cross_architecture(user_files):
    out = user_files["root"] / "analysis_mnv2"
    return out, _analyze(user_files, out, user_files["student"], "--student-layers", *STUDENT_LAYERS)


def test_resnet18_teacher_and_mobilenet_student_at_four_sensing_points(cross_architecture):
    _, values = cross_architecture
    student = "student_ddp"
    for layer in TEACHER_LAYERS:
        for metric in ("aligned_distance", "lambda_distance", "heat_trace_distance", "cross_graph_variation",
                       "knn_agreement_teacher_block", "smoothness_ratio"):
            value = values[(student, layer, metric)]
            assert math.isfinite(value), (layer, metric)
        # Two networks of different architectures and seeds do not have the same graphs.
        assert values[(student, layer, "aligned_distance")] > 1e-3
        assert 0.0 <= values[(student, layer, "knn_agreement_teacher_block")] <= 1.0
    assert values[("student_ddp", "output", "test_error")] > 0


def test_the_teacher_against_itself_is_at_distance_zero_everywhere(user_files, tmp_path):
    values = _analyze(user_files, tmp_path, user_files["teacher_again"])
    for layer in TEACHER_LAYERS:
        assert values[("teacher_again", layer, "aligned_distance")] == pytest.approx(0, abs=1e-6)
        assert values[("teacher_again", layer, "lambda_distance")] == pytest.approx(0, abs=1e-9)
        assert values[("teacher_again", layer, "heat_trace_distance")] == pytest.approx(0, abs=1e-9)
        assert values[("teacher_again", layer, "knn_agreement_teacher_block")] == 1.0
        assert values[("teacher_again", layer, "smoothness_ratio")] == values[("teacher", layer, "smoothness_ratio")]


def test_layer_lists_of_other_lengths_are_an_error(user_files, tmp_path, capsys):
    code = main(["analyze", "--teacher", user_files["teacher"], "--dataset", user_files["dataset"],
                 "--per-class", "2", "--output-on", "nodes", "--layers", *TEACHER_LAYERS,
                 "--student-layers", *STUDENT_LAYERS[:3], "--out", str(tmp_path), user_files["student"]])
    assert code == 2
    assert "expected as many student layers as teacher layers (compared by position), got 3 " \
           "(features.3, features.6, features.13) for 4" in capsys.readouterr().err


def test_a_wrong_student_layer_says_did_you_mean(user_files, tmp_path, capsys):
    code = main(["analyze", "--teacher", user_files["teacher"], "--dataset", user_files["dataset"],
                 "--per-class", "2", "--output-on", "nodes", "--layers", *TEACHER_LAYERS,
                 "--student-layers", "features.3", "features.6", "features.13", "feature.18",
                 "--out", str(tmp_path), user_files["student"]])
    assert code == 2
    assert "did you mean 'features.18'" in capsys.readouterr().err


def test_evaluate_takes_specs_and_image_folders(user_files, tmp_path, capsys):
    assert main(["evaluate", user_files["teacher"], user_files["student"], "--dataset", user_files["dataset"],
                 "--json", str(tmp_path / "errors.json")]) == 0
    out = capsys.readouterr().out
    assert "300 images" in out
    # The same networks built by hand and run on the same pixels give the same error.
    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(torch.load(user_files["root"] / "teacher.pt", weights_only=True))
    data = load_dataset(user_files["dataset"], split="test")
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        wrong = (net.eval()((data.images.float() / 255 - mean) / std).argmax(1) != data.labels).sum().item()
    assert f"({wrong}/300)" in out.splitlines()[1]


def test_report_of_a_cross_architecture_analysis_is_one_self_contained_page(cross_architecture, tmp_path):
    out, _ = cross_architecture
    html = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(html)]) == 0
    view = open_page(html.as_uri(), screenshot=str(tmp_path / "report.png"))
    assert view.requests == [html.as_uri()]   # nothing fetched besides the page itself
    assert view.errors == []
    assert len(view.images) >= 3 and all(complete and width > 0 for complete, width in view.images)
    for teacher_layer, student_layer in zip(TEACHER_LAYERS, STUDENT_LAYERS):
        assert f"{teacher_layer} ↔ students' {student_layer}" in view.text
    assert "student_ddp" in view.text
