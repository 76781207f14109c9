"""The digits runs of the whole-system methods, the IEP figure and the ``geokd methods`` CLI."""

import csv
import os

import numpy as np
import pytest
import torch

from geokd.methods.iep_figure import plot_stage_embeddings


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_figure_writes_png_pdf_and_the_plotted_points(tmp_path):
    rng = np.random.default_rng(0)
    codes = [rng.normal(size=(12, 3)), rng.normal(size=(12, 5))]
    labels = np.arange(12) % 4
    paths = plot_stage_embeddings(codes, labels, path_stem=str(tmp_path / "f"), titles=("a", "b"))
    assert all(os.path.getsize(p) > 0 for p in paths)
    with open(paths[2]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24
    assert float(rows[13]["z2"]) == pytest.approx(codes[1][1, 1], rel=1e-5)
    assert int(rows[13]["label"]) == 1


def test_figure_refuses_codes_it_cannot_draw(tmp_path):
    with pytest.raises(ValueError, match=r"stage 0: expected codes of shape \(4, >=3\)"):
        plot_stage_embeddings([np.zeros((4, 2))], [0, 1, 0, 1], path_stem=str(tmp_path / "f"))


def test_cli_rejects_bad_epochs(capsys):
    from geokd.cli import main

    assert main(["methods", "byot", "--epochs", "0"]) == 2
    assert "--epochs: expected >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_iep_codes_of_a_trained_teacher_separate_classes_with_depth(tmp_path):
    from geokd.analysis.smoothness import label_smoothness
    from geokd.methods import digits

    torch.manual_seed(0)
    teacher, acc = digits.train_teacher(epochs=4)
    assert acc > 0.9
    _, batches, x_test, y_test = digits.digits_data()
    codes, iep = digits.iep_codes_by_stage(teacher, batches, x_test)
    assert [c.shape[1] for c in codes] == [8, 16, 32]
    assert all(int(p.n_samples_seen) == 1257 for p in iep.pcas)
    labels = y_test.numpy()
    # Scale-free smoothness (cross-class edge weight / all): deeper stages separate classes.
    smooth = [label_smoothness(c, labels, k=10, laplacian="ratio") for c in codes]
    assert smooth[2] < smooth[0], smooth
    paths = plot_stage_embeddings(codes, labels, path_stem=str(tmp_path / "emb"))
    assert all(os.path.getsize(p) > 0 for p in paths)
