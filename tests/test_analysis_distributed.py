"""``geokd analyze`` across processes (torchrun, gloo on CPU) against one process, on digits.

What must be equal: a 2-process run gives the same metrics (the same rows in the same
order, byte for byte in metrics.csv) and the same heat maps as one process on the same
node set, whether rank 0 shares the teacher through the cache or every rank computes it.
The students are chosen so that the merge has work to do: [gkd-0, gkd-1, rkd-0] puts
gkd-0 and rkd-0 on rank 0 and gkd-1 on rank 1, so the ranks' rows interleave in student
order, and rank 1 holds the heat maps of its first gkd student, which one process does
not keep (gkd-0 is the first gkd).
What must fail: a rank whose student cannot be loaded, or that is killed, fails the run
(non-zero exit, rank 1 named) and rank 0 writes no table.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from geokd.analysis.distributed_analysis import (RankGroup, RankOutcome, analyze_across_ranks, merge_outcomes,
                                                 shown_students)
from geokd.analysis.pipeline import Network, analyze_networks
from geokd.checkpoints import save_checkpoint
from geokd.cli import build_parser, main
from geokd.models import model_config
from tests.test_analysis_pipeline import small_cnn

# The students, in order: run directories <method>/seed<k>/model.pt (names gkd-0, gkd-1, rkd-0).
STUDENTS = (("gkd", 0, 1), ("gkd", 1, 2), ("rkd", 0, 3))   # method, seed, torch seed of the weights
OPTIONS = ["--dataset", "digits", "--per-class", "12", "--k", "5", "--output-on", "nodes", "--batch-size", "64"]



@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Checkpoints of a teacher and three students (run directories), and a corrupt file."""
    root = tmp_path_factory.mktemp("nets")
    teacher = root / "teacher.pt"
    save_checkpoint(teacher, small_cnn(0), model_config=model_config(small_cnn(0)))
    students = []
    for method, seed, weights_seed in STUDENTS:
        run = root / method / f"seed{seed}"
        run.mkdir(parents=True)
        net = small_cnn(weights_seed)
        save_checkpoint(run / "model.pt", net, model_config=model_config(net))
        students.append(str(run))
    corrupt = root / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint" * 8)
    return {"teacher": str(teacher), "students": students, "corrupt": str(corrupt), "root": root}


def child_env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}   # two ranks on 2 cores, not 2 x 2 threads
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
            str(free_port()), "-m", "geokd", *args]


def run(command, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or child_env())


def analyze_args(nets, out, *extra, students=None):
    return ["analyze", *(students or nets["students"]), "--teacher", nets["teacher"], *OPTIONS, "--out", str(out),
            *extra]


def heatmaps(out) -> dict[str, np.ndarray]:
    with np.load(out / "heatmaps.npz") as saved:
        return {key: saved[key] for key in saved.files}


@pytest.fixture(scope="module")
def single(nets, tmp_path_factory):
    """The reference: one process (`python -m geokd analyze`, the same thread count), no cache."""
    out = tmp_path_factory.mktemp("single") / "out"
    proc = run([sys.executable, "-m", "geokd", *analyze_args(nets, out, "--no-teacher-cache")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def assert_same_analysis(out, reference):
    rows, expected = (json.loads((d / "metrics.json").read_text()) for d in (out, reference))
    assert [r["network"] for r in expected][-1] == "rkd-0"   # student order: gkd-0, gkd-1, rkd-0
    assert rows == expected                                   # every row, in the same order
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    got, want = heatmaps(out), heatmaps(reference)
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # One process keeps the teacher's and the first of each method's; rank 1 also had gkd-1's.
    assert {k.split("__")[0] for k in got} == {"labels", "teacher", "gkd-0", "rkd-0"}


def assert_nothing_written(out):
    """No table, heat map or settings file (the ranks' scratch feature stores may be there)."""
    written = {p.name for p in out.iterdir()} & {"metrics.csv", "metrics.json", "heatmaps.npz", "analysis.json"}
    assert written == set(), f"a failed run left {sorted(written)} in {out}"


def test_two_processes_give_the_same_analysis_as_one_teacher_shared_through_the_cache(nets, single, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = run(torchrun(*analyze_args(nets, out, "--cache-dir", str(cache))))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_same_analysis(out, single)
    # The students were really split, and rank 1 read rank 0's teacher instead of computing it.
    assert "[rank 0/2] 2 of 3 students on this rank: gkd-0, rkd-0" in proc.stderr
    assert "[rank 1/2] 1 of 3 students on this rank: gkd-1" in proc.stderr
    assert "[rank 1/2] teacher: cached" in proc.stderr
    assert "[rank 1/2] teacher stage1" not in proc.stderr
    assert len(list(cache.glob("teacher-*"))) == 1
    settings = json.loads((out / "analysis.json").read_text())
    reference = json.loads((single / "analysis.json").read_text())
    assert (settings["world_size"], reference["world_size"]) == (2, 1)
    assert settings["teacher_cached"] is False          # computed in this job (by rank 0)
    assert settings["node_indices"] == reference["node_indices"]
    assert len(settings["stage_seconds_per_rank"]) == 2
    assert settings["stage_seconds"]["features"] == pytest.approx(
        sum(r.get("features", 0.0) for r in settings["stage_seconds_per_rank"]), abs=2e-3)
    assert proc.stdout.count("wrote ") == 1             # rank 0 alone writes and prints


def test_launcher_torchrun_relaunches_itself_and_every_rank_computes_the_teacher(nets, single, tmp_path):
    out = tmp_path / "out"
    proc = run([sys.executable, "-m", "geokd",
                *analyze_args(nets, out, "--no-teacher-cache", "--launcher", "torchrun", "--nproc-per-node", "2")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_same_analysis(out, single)
    assert "[rank 1/2] teacher stage1" in proc.stderr and "teacher: cached" not in proc.stderr
    assert json.loads((out / "analysis.json").read_text())["world_size"] == 2


def test_a_rank_that_fails_fails_the_run_naming_it_and_nothing_is_written(nets, tmp_path):
    out = tmp_path / "out"
    students = [nets["students"][0], nets["corrupt"], nets["students"][2]]   # position 1: rank 1 alone
    proc = run(torchrun(*analyze_args(nets, out, "--cache-dir", str(tmp_path / "cache"), students=students)))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    # Rank 0's own report (rank 1's error reached it), besides rank 1's and torchrun's.
    assert f"geokd analyze: error: the analysis failed on 1 of 2 ranks: rank 1: CheckpointError: {nets['corrupt']}" \
        in output
    assert re.search(r"\[rank 0/2\] \[\d/\d\] rkd-0 done", output)   # rank 0 did its share, then wrote nothing
    assert_nothing_written(out)


def test_a_killed_rank_fails_the_run_with_torchruns_report_and_nothing_is_written(nets, tmp_path):
    # A user's network factory that kills its own process (SIGKILL: no Python cleanup at all),
    # given as the second student so that only rank 1 builds it.
    (tmp_path / "dying_net.py").write_text("import os, signal\n\n\ndef make():\n"
                                           "    os.kill(os.getpid(), signal.SIGKILL)\n")
    out = tmp_path / "out"
    students = [nets["students"][0], "dying_net:make", nets["students"][2]]
    proc = run([sys.executable, "-m", "geokd",
                *analyze_args(nets, out, "--no-teacher-cache", "--launcher", "torchrun", "--nproc-per-node", "2",
                              students=students)],
               env=child_env(PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "rank      : 1 (local_rank: 1)" in output and "SIGKILL" in output   # torchrun's report reaches the user
    assert_nothing_written(out)


# -- in one process: the split and the merge, the command line -----------------------------------


@pytest.fixture(scope="module")
def digits():
    from geokd.data import load_dataset

    return load_dataset("digits", split="test")


def test_two_ranks_shares_merge_to_the_one_process_result(digits):
    """Each rank's share computed here in turn (no process group), merged as rank 0 merges."""
    from geokd.analysis.distributed_analysis import _analyze_share
    from geokd.analysis.progress import ProgressReporter

    teacher = Network("t", "teacher", None, small_cnn(0))
    students = [Network(f"{m}-{s}", m, s, small_cnn(w)) for m, s, w in STUDENTS]
    labels = digits.labels.numpy()
    options = dict(node_indices=np.arange(150), mean=digits.mean, std=digits.std, k=5, num_eigenvectors=4,
                   heatmap_per_class=2)
    one = analyze_networks(teacher, students, digits.images, labels, **options)
    shares = [_analyze_share(teacher, students, digits.images, labels, ranks=RankGroup(rank=r, world_size=2),
                             positions=[0, 2] if r == 0 else [1], shown=shown_students([s.method for s in students]),
                             progress=ProgressReporter(), cache_dir=None, options=options) for r in (0, 1)]
    # Rank 1's analysis kept gkd-1's heat maps (its first gkd) and the teacher's: neither is sent.
    assert shares[1].heatmaps == {} and shares[1].teacher_rows == []
    merged = merge_outcomes(shares, num_students=3).result
    assert merged.rows == one.rows
    assert list(merged.heatmaps) == list(one.heatmaps)
    for key, value in one.heatmaps.items():
        np.testing.assert_array_equal(merged.heatmaps[key], value)
    np.testing.assert_array_equal(merged.heatmap_labels, one.heatmap_labels)
    # One process is a group of one: the same result through analyze_across_ranks.
    alone = analyze_across_ranks(teacher, students, digits.images, labels, ranks=RankGroup(), **options)
    assert alone.result.rows == one.rows and alone.world_size == 1


def test_merge_names_every_failed_rank_and_refuses_a_missing_student():
    ok = RankOutcome(0, positions=[0], teacher_rows=[{"network": "t"}], student_rows=[[{"network": "a"}]])
    with pytest.raises(RuntimeError, match=r"failed on 2 of 3 ranks: rank 1: ValueError: x; rank 2: OSError: y"):
        merge_outcomes([ok, RankOutcome(1, error="ValueError: x"), RankOutcome(2, error="OSError: y")], num_students=3)
    with pytest.raises(RuntimeError, match=r"expected the rows of 2 students, got none for students \[2\]"):
        merge_outcomes([ok, RankOutcome(1)], num_students=2)


def test_duplicate_names_are_refused_before_any_work(digits):
    net = Network("gkd-0", "gkd", 0, small_cnn(1))
    with pytest.raises(ValueError, match=r"distinct network names.*'gkd-0' for student 1 and student 2"):
        analyze_across_ranks(Network("t", "teacher", None, small_cnn(0)), [net, net], digits.images,
                             digits.labels.numpy(), ranks=RankGroup(), node_indices=np.arange(50),
                             mean=digits.mean, std=digits.std)


def test_launcher_command_line_reparses_to_the_same_options(nets):
    from geokd.cli.analyze import _arguments

    argv = analyze_args(nets, "out dir", "--mean", "-0.5", "--std", "2", "--no-teacher-cache", "--layers",
                        "stage1", "pool", "--launch", "torchrun", "--nproc", "2")   # abbreviations too
    args = build_parser().parse_args(argv)
    rebuilt = _arguments(args.analyze_parser, args, drop={"launcher", "nproc_per_node"})
    assert "--launcher" not in rebuilt and "--nproc-per-node" not in rebuilt
    again = build_parser().parse_args(["analyze", *rebuilt])
    expected = {**vars(args), "launcher": None, "nproc_per_node": None}
    assert {k: v for k, v in vars(again).items() if k != "analyze_parser"} == \
        {k: v for k, v in expected.items() if k != "analyze_parser"}


def test_launcher_needs_both_options_and_is_refused_inside_torchrun(nets, tmp_path, capsys, monkeypatch):
    assert main(analyze_args(nets, tmp_path / "out", "--launcher", "torchrun")) == 2
    assert "expected --launcher torchrun and --nproc-per-node G together" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(analyze_args(nets, tmp_path / "out", "--launcher", "torchrun", "--nproc-per-node", "2")) == 2
    assert "expected --launcher outside torchrun, got it inside a job of WORLD_SIZE=2" in capsys.readouterr().err
