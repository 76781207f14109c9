"""GKD loss forward+backward on the paper's shapes, against a straightforward implementation.

Shapes (CIFAR-10, batch 128): teacher WRN-28-1 sensing points 16x32x32, 32x16x16, 64 (pooled);
student WRN-28-0.5 half the channels. Cases: the full graph and k = 16. The baseline is the
textbook code: dense diagonal matrices for D^-1/2 and a per-row Python loop for the k-NN mask.
Both compute the same loss (checked). geokd is timed twice: as it runs by default (on a CPU,
its compiled graph kernels, ``geokd/native/graphs.c``) and inside ``native_disabled()``
(its ATen path, the one off the CPU). With ``--step`` it also times one training step of
the student (forward+backward) with the teacher's forward, to put GKD's cost in context.

Run: ``python -m benchmarks.bench_gkd_loss [--repeat 5] [--step]``
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import format_table, time_best_of, write_json
from geokd.losses import gkd_loss
from geokd.native import native_disabled

TEACHER_SHAPES = [(16, 32, 32), (32, 16, 16), (64,)]
STUDENT_SHAPES = [(8, 32, 32), (16, 16, 16), (32,)]


def straightforward_graph(x: torch.Tensor, k: int | None = None, mask: torch.Tensor | None = None):
    b = x.shape[0]
    z = x.reshape(b, -1)
    z = z / z.norm(dim=1, keepdim=True)
    a = z @ z.t()
    a = a - torch.diag(torch.diag(a))
    d_inv_sqrt = torch.diag(a.sum(dim=1).pow(-0.5))
    a = d_inv_sqrt @ a @ d_inv_sqrt
    if k is not None and mask is None:
        mask = torch.zeros_like(a)
        for i in range(b):
            row = a[i].detach().clone()
            row[i] = float("-inf")
            mask[i, row.topk(k).indices] = 1.0
        mask = ((mask + mask.t()) > 0).to(a.dtype)
    if mask is not None:
        a = a * mask
    return a, mask


def straightforward_loss(student, teacher, k=None):
    total = 0.0
    for s, t in zip(student, teacher):
        with torch.no_grad():
            a_t, mask = straightforward_graph(t, k=k)
        a_s, _ = straightforward_graph(s, mask=mask)
        total = total + ((a_t - a_s) ** 2).sum()
    return total / len(student)


def make_features(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    teacher = [torch.relu(torch.randn(batch, *s, generator=gen)) for s in TEACHER_SHAPES]
    student = [torch.relu(torch.randn(batch, *s, generator=gen)).requires_grad_() for s in STUDENT_SHAPES]
    return student, teacher


def forward_backward(loss_fn, student, teacher, k):
    def run():
        for s in student:
            s.grad = None
        loss = loss_fn(student, teacher, k)
        loss.backward()
        return loss
    return run


def training_step_seconds(batch: int, repeat: int) -> float:
    from geokd.models import build_model
    from geokd.models.taps import forward_with_features

    teacher = build_model("wrn", depth=28, widen_factor=1, num_classes=10).eval()
    student = build_model("wrn", depth=28, widen_factor=0.5, num_classes=10).train()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def step():
        with torch.no_grad():
            forward_with_features(teacher, x)
        out = forward_with_features(student, x)
        torch.nn.functional.cross_entropy(out.logits, y).backward()
    return time_best_of(step, repeat=repeat, warmup=1)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step", action="store_true", help="also time a WRN training step for context")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    student, teacher = make_features(args.batch)
    ours_fn = lambda s, t, k: gkd_loss(s, t, k=k)  # noqa: E731
    rows = []
    for k in (None, 16):
        ours = ours_fn(student, teacher, k)
        theirs = straightforward_loss(student, teacher, k)
        agree = bool(torch.allclose(ours, theirs, rtol=1e-4))
        t_ours, _ = time_best_of(forward_backward(ours_fn, student, teacher, k), repeat=args.repeat)
        with native_disabled():
            t_aten, _ = time_best_of(forward_backward(ours_fn, student, teacher, k), repeat=args.repeat)
        t_base, _ = time_best_of(forward_backward(straightforward_loss, student, teacher, k), repeat=args.repeat)
        rows.append({"case": "full" if k is None else f"k={k}", "geokd_ms": 1e3 * t_ours,
                     "geokd_aten_ms": 1e3 * t_aten, "kernels_speedup": t_aten / t_ours,
                     "straightforward_ms": 1e3 * t_base, "speedup": t_base / t_ours, "same_loss": agree})
    columns = ["case", "geokd_ms", "geokd_aten_ms", "kernels_speedup", "straightforward_ms", "speedup", "same_loss"]
    payload = {"batch": args.batch, "teacher_shapes": TEACHER_SHAPES, "student_shapes": STUDENT_SHAPES, "rows": rows}
    if args.step:
        step = training_step_seconds(args.batch, max(1, args.repeat // 2))
        for row in rows:
            row["step_ms"] = 1e3 * step
            row["gkd_over_step"] = row["geokd_ms"] / (1e3 * step)
        columns += ["step_ms", "gkd_over_step"]
        payload["training_step_ms"] = 1e3 * step
    print(f"GKD loss forward+backward, batch {args.batch}, {torch.get_num_threads()} threads (best of {args.repeat})")
    print(format_table(rows, columns))
    print("wrote", write_json("bench_gkd_loss", payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
