"""The teacher's work is computed once per node set, kept on disk, and never used when it is stale or corrupt."""

import json

import numpy as np
import torch

from geokd.analysis.pipeline import Network, analyze_networks
from geokd.analysis.teacher_cache import weights_digest
from tests.test_analysis_pipeline import digits, saved_small_cnns, small_cnn  # noqa: F401 (digits is a fixture)


def batches(dataset, batch_size=100):
    return -(-len(dataset) // batch_size)


class Counted:
    """A network whose forward calls are counted by a hook."""

    def __init__(self, seed):
        self.model = small_cnn(seed)
        self.calls = 0
        self.model.register_forward_hook(self._count)

    def _count(self, module, inputs, output):
        self.calls += 1


def run(digits, teacher, students, cache_dir, *, linear_probe=False, lines=None):
    from geokd.analysis.progress import ProgressReporter

    progress = ProgressReporter(write=None if lines is None else lines.append, heartbeat=False)
    return analyze_networks(Network("t", "teacher", None, teacher), [Network(f"s{i}", "gkd", i, s)
                                                                    for i, s in enumerate(students)],
                            digits.images, digits.labels.numpy(), node_indices=np.arange(300), mean=digits.mean,
                            std=digits.std, k=5, num_eigenvectors=4, heatmap_per_class=2, batch_size=100,
                            linear_probe=linear_probe, cache_dir=cache_dir, progress=progress)


def test_teacher_work_is_done_once_per_run_for_every_student(digits, tmp_path):
    teacher = Counted(0)
    run(digits, teacher.model, [small_cnn(1), small_cnn(2), small_cnn(3)], None)
    # One forward pass over the images in batches of 100, for three students.
    assert teacher.calls == batches(digits)


def test_second_run_reads_the_teacher_from_the_cache_with_identical_numbers(digits, tmp_path):
    teacher = Counted(0)
    first = run(digits, teacher.model, [small_cnn(1)], tmp_path, linear_probe=True)
    assert teacher.calls == batches(digits) and not first.teacher_cached
    assert len(list(tmp_path.glob("teacher-*/manifest.json"))) == 1
    lines = []
    second = run(digits, teacher.model, [small_cnn(1)], tmp_path, linear_probe=True, lines=lines)
    assert teacher.calls == batches(digits), "the teacher was run again"
    assert second.teacher_cached
    assert any(line.startswith("t: cached (features, k-NN graphs, spectra and rows read from ") for line in lines)
    assert second.rows == first.rows
    assert set(second.heatmaps) == set(first.heatmaps)
    for name in first.heatmaps:
        np.testing.assert_array_equal(second.heatmaps[name], first.heatmaps[name])
    # A new student against the same teacher: still not run, same teacher rows.
    third = run(digits, teacher.model, [small_cnn(7)], tmp_path, linear_probe=True)
    assert teacher.calls == batches(digits) and third.teacher_cached
    assert [r for r in third.rows if r["network"] == "t"] == [r for r in first.rows if r["network"] == "t"]


def test_a_changed_teacher_weight_or_setting_is_another_entry(digits, tmp_path):
    teacher = Counted(0)
    run(digits, teacher.model, [small_cnn(1)], tmp_path)
    with torch.no_grad():
        next(teacher.model.parameters()).view(-1)[0] += 1e-3     # one parameter changed
    changed = run(digits, teacher.model, [small_cnn(1)], tmp_path)
    assert teacher.calls == 2 * batches(digits) and not changed.teacher_cached
    assert len(list(tmp_path.glob("teacher-*/manifest.json"))) == 2
    # A setting that changes the teacher's work (here the probe) is a third entry.
    run(digits, teacher.model, [small_cnn(1)], tmp_path, linear_probe=True)
    assert teacher.calls == 3 * batches(digits)
    assert len(list(tmp_path.glob("teacher-*/manifest.json"))) == 3


def test_a_corrupt_cache_file_is_recomputed_with_a_warning(digits, tmp_path):
    teacher = Counted(0)
    first = run(digits, teacher.model, [small_cnn(1)], tmp_path)
    (entry,) = tmp_path.glob("teacher-*")
    target = entry / "l1_adjacency.npy"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF                                    # one flipped byte, same size
    target.write_bytes(bytes(data))
    lines = []
    second = run(digits, teacher.model, [small_cnn(1)], tmp_path, lines=lines)
    assert teacher.calls == 2 * batches(digits) and not second.teacher_cached
    warning = [line for line in lines if line.startswith("warning: teacher cache entry")]
    assert len(warning) == 1 and "l1_adjacency.npy has sha256" in warning[0] and "checksum mismatch" in warning[0]
    assert "computing the teacher's work again" in warning[0]
    assert second.rows == first.rows
    # The entry was rewritten: the next run reads it again.
    third = run(digits, teacher.model, [small_cnn(1)], tmp_path)
    assert teacher.calls == 2 * batches(digits) and third.teacher_cached and third.rows == first.rows
    # A manifest that is not JSON is refused the same way.
    (entry / "manifest.json").write_text("{")
    lines.clear()
    run(digits, teacher.model, [small_cnn(1)], tmp_path, lines=lines)
    assert teacher.calls == 3 * batches(digits) and any("is not valid JSON" in line for line in lines)


def test_weights_digest_sees_names_dtypes_and_values():
    base = {"a": torch.ones(2), "b": torch.zeros(1, dtype=torch.int64)}
    assert weights_digest(base) == weights_digest({"a": torch.ones(2), "b": torch.zeros(1, dtype=torch.int64)})
    assert weights_digest(base) != weights_digest({"c": torch.ones(2), "b": torch.zeros(1, dtype=torch.int64)})
    assert weights_digest(base) != weights_digest({"a": torch.ones(2, dtype=torch.float64),
                                                   "b": torch.zeros(1, dtype=torch.int64)})
    assert weights_digest({"x": torch.ones(2, dtype=torch.bfloat16)}) != weights_digest({"x": torch.zeros(2, dtype=torch.bfloat16)})


def test_cli_second_run_says_teacher_cached_and_writes_the_same_metrics(tmp_path):
    from geokd.cli import main

    paths = saved_small_cnns(tmp_path, (("teacher", 0), ("gkd_0", 1), ("gkd_1", 2)))
    common = ["--teacher", paths["teacher"], "--dataset", "digits", "--per-class", "20", "--k", "5",
              "--output-on", "nodes", "--cache-dir", str(tmp_path / "cache")]
    assert main(["analyze", paths["gkd_0"], "--out", str(tmp_path / "a"), *common]) == 0
    assert not json.loads((tmp_path / "a" / "analysis.json").read_text())["teacher_cached"]
    assert main(["analyze", paths["gkd_1"], "--out", str(tmp_path / "b"), *common]) == 0
    assert json.loads((tmp_path / "b" / "analysis.json").read_text())["teacher_cached"]
    a = [r for r in json.loads((tmp_path / "a" / "metrics.json").read_text()) if r["network"] == "teacher"]
    b = [r for r in json.loads((tmp_path / "b" / "metrics.json").read_text()) if r["network"] == "teacher"]
    assert a == b and a
    assert main(["analyze", paths["gkd_1"], "--out", str(tmp_path / "c"), "--no-teacher-cache", *common]) == 0
    assert not json.loads((tmp_path / "c" / "analysis.json").read_text())["teacher_cached"]
