"""Data-parallel training with torchrun: 2 CPU processes (gloo) against one process.

What must be equal: with no batch-dependent layer (no BatchNorm, no dropout), a
2-process run whose graph term sees the all-gathered global batch takes exactly the
single-process steps on the same global batch (same data order, CE averaged over the
global batch, gradients averaged): the weights agree up to float summation order.
What must differ: the default per-rank graphs see half the batch, so the GKD-like term,
and hence the weights, are not the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from geokd.train.state import read_state

SCRIPT = textwrap.dedent(
    '''
    import sys, torch
    import numpy as np
    import torch.nn.functional as F
    from torch import nn
    from sklearn.datasets import load_digits
    from geokd.models.outputs import ModelOutputs
    from geokd.train import Term, TrainingParts, config_from_dict, fit
    from geokd.train.distributed import DistributedContext

    torch.set_num_threads(1)
    run_dir, global_graph = sys.argv[1], sys.argv[2] == "global"


    class Batches:
        def __init__(self, x, y, batch_size, generator=None):
            self.x, self.y, self.batch_size, self.generator = x, y, batch_size, generator

        def __iter__(self):
            n = len(self.y)
            order = torch.randperm(n, generator=self.generator) if self.generator is not None else torch.arange(n)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                yield self.x[idx], self.y[idx]


    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.fc = nn.Linear(width * 64, 10)

        def outputs(self, x):
            h = F.relu(self.conv(x))
            return ModelOutputs(self.fc(h.flatten(1)), [h])

        def forward(self, x):
            return self.outputs(x).logits


    class Gram(nn.Module):
        def forward(self, s, t, labels):
            zs = F.normalize(s.features[0].flatten(1), dim=1)
            zt = F.normalize(t.features[0].flatten(1), dim=1)
            return ((zs @ zs.T - zt @ zt.T) ** 2).sum()


    d = load_digits()
    x = (torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0 - 0.3) / 0.4
    y = torch.tensor(d.target, dtype=torch.long)
    ctx = DistributedContext.from_env(device="cpu")
    torch.manual_seed(5)
    teacher = Net(12).eval()
    torch.manual_seed(0)
    student = Net(6)
    generator = torch.Generator().manual_seed(0)
    parts = TrainingParts(
        student=student, student_taps=student.outputs,
        train_batches=Batches(x[:512], y[:512], 64, generator), test_batches=Batches(x[1400:], y[1400:], 400),
        generator=generator, teacher=teacher, teacher_taps=teacher.outputs,
        terms=[Term("gram", 0.01, Gram())], model_config={"name": "ddp_test_net"},
    )
    config = config_from_dict({"data": {"batch_size": 64}, "optim": {"lr": 0.05},
                               "schedule": {"epochs": 2, "milestones": [1]},
                               "run": {"global_batch_graph": global_graph}})
    fit(parts, config, run_dir=run_dir, progress=False, ctx=ctx)
    '''
)


def _run(args, env):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_two_cpu_processes_equal_one_process_on_the_same_global_batch(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run([sys.executable, str(script), str(tmp_path / "single"), "global"], env)
    _run(torchrun + [str(script), str(tmp_path / "ddp_global"), "global"], env)
    _run(torchrun + [str(script), str(tmp_path / "ddp_local"), "local"], env)

    single = read_state(tmp_path / "single" / "state.pt")
    ddp_global = read_state(tmp_path / "ddp_global" / "state.pt")
    ddp_local = read_state(tmp_path / "ddp_local" / "state.pt")
    assert single["epoch"] == ddp_global["epoch"] == 2
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp_global["model"][key], value, rtol=1e-4, atol=1e-6)
    differs = max((ddp_local["model"][k] - v).abs().max().item() for k, v in single["model"].items())
    assert differs > 1e-3  # per-rank graphs (32 inputs each) are a different loss

    import json

    lines = [json.loads(s) for s in (tmp_path / "ddp_global" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(s) for s in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    # Epoch statistics are summed over ranks: the same global numbers.
    for a, b in zip(lines, ref):
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=1e-9)
        assert a["train_terms"]["gram"] == pytest.approx(b["train_terms"]["gram"], rel=1e-4)
        assert a["test_error"] == pytest.approx(b["test_error"], abs=1e-9)
    meta = json.loads((tmp_path / "ddp_global" / "meta.json").read_text())
    assert meta["world_size"] == 2
