"""Training throughput: geokd's trainer vs a plain PyTorch loop written the usual way.

geokd: :func:`geokd.train.fit` on parts from :func:`geokd.train.build_parts` (CIFAR-10,
batch 128, crop + flip by ``BatchLoader`` on whole batches, WRN-28-0.5, SGD lr 0.1 momentum
0.9 wd 5e-4, cross-entropy only), once as configured by default (``run.channels_last``
unset: channels-last on a CPU, with geokd's batch norm for it) and once with the other
layout; as context, the default with :mod:`geokd.native`'s compiled batch norm disabled (ATen
operations instead). Throughput is the trainer's own per-epoch ``seconds`` (training only: evaluation
and checkpointing are outside it).

Baseline: the usual loop: a map-style dataset of PIL images with torchvision's
``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``,
``DataLoader(batch_size=128, shuffle=True, num_workers=2)``, the same model class and
initial weights, the same optimizer, ``zero_grad / forward / cross_entropy / backward /
step`` and the customary ``loss.item()`` and accuracy ``.item()`` per step.

Both train the same class-balanced subset of CIFAR-10 (``--steps`` batches per epoch) for
``--epochs`` epochs; the first epoch is warm-up (oneDNN primitive creation), the median of
the others is reported, as images/s, with the ratio and the fraction of the CPU's measured
float32 matmul peak (FLOPs of forward+backward counted by ``torch.utils.flop_counter``).
All systems run ``--rounds`` times, the order reversed every other round; images/s
is the median over rounds and the ratio the median of the per-round ratios (on a VM whose
speed drifts by 30-50% within minutes, one pass per system measured 1.12x-1.39x for the
same code).

Run: ``python -m benchmarks.bench_throughput [--quick] [--steps 20] [--epochs 3] [--rounds 5]``
(prints a table, writes ``benchmarks/results/bench_throughput.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from benchmarks._common import format_table, write_json
from benchmarks.bench_matmul_peak import measure_matmul_peak
from geokd.data import load_dataset
from geokd.graphs.dataset_knn import search_dtype
from geokd.native import native_disabled, native_status
from geokd.train import DataConfig, ModelConfig, RunConfig, ScheduleConfig, TrainConfig, build_parts, fit
from geokd.train.config import resolve_channels_last
from geokd.train.distributed import DistributedContext

TARGET_RATIO = 1.3
AMP_NAME = "geokd fit (run.amp = bf16)"
NO_NATIVE_NAME = "geokd fit (default config, geokd.native disabled)"
BATCH = 128


class PILImages(torch.utils.data.Dataset):
    """What ``torchvision.datasets.CIFAR10`` does per item: a PIL image, then the transforms."""

    def __init__(self, images_hwc, labels, transform):
        self.images_hwc, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images_hwc[i])), int(self.labels[i])


def config_for(*, depth: int, fraction: float, epochs: int, channels_last: bool | None,
               amp: str | None = None) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(name="wrn", params={"depth": depth, "widen_factor": 0.5}),
        data=DataConfig(name="cifar10", batch_size=BATCH, fraction=fraction, augment=True),
        schedule=ScheduleConfig(epochs=epochs, milestones=(60, 120, 160)),
        run=RunConfig(seed=0, channels_last=channels_last, amp=amp),
    )


def geokd_epochs(config: TrainConfig, *, device: torch.device) -> tuple[list[float], int, torch.nn.Module]:
    """Seconds of each training epoch as geokd's trainer reports them, images per epoch, the model."""
    parts, config = build_parts(config, device=device, ctx=DistributedContext())
    # Evaluation is not part of the throughput; one small test batch keeps it negligible.
    x_test, y_test = next(iter(parts.test_batches))
    parts.test_batches = [(x_test[:BATCH], y_test[:BATCH])]
    initial = copy.deepcopy(parts.student)
    with tempfile.TemporaryDirectory(prefix="geokd_bench_") as run_dir:
        result = fit(parts, config, run_dir=run_dir, device=device, progress=False)
    n_images = len(parts.train_batches.dataset)
    return [m["seconds"] for m in result.metrics], n_images, initial


def plain_epochs(model: torch.nn.Module, train_set, *, epochs: int, workers: int) -> list[float]:
    """The usual PyTorch loop; seconds per epoch (DataLoader start-up included, as every epoch)."""
    images_hwc = train_set.images.permute(0, 2, 3, 1).contiguous().numpy()
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(train_set.mean, train_set.std)])
    dataset = PILImages(images_hwc, train_set.labels.numpy(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[60, 120, 160], gamma=0.2)
    seconds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        running_loss, correct, seen = 0.0, 0, 0
        for x, y in loader:
            optimizer.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * y.shape[0]
            correct += (out.argmax(1) == y).sum().item()
            seen += y.shape[0]
        scheduler.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def flops_per_image(model: torch.nn.Module, *, channels: int = 3, size: int = 32) -> float:
    """Forward+backward FLOPs per image of a cross-entropy step (counted at batch 128)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).train()
    x = torch.randn(BATCH, channels, size, size)
    y = torch.zeros(BATCH, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / BATCH


def results_ratio(rows: list[dict], name: str) -> float:
    return next(r["ratio_vs_plain"] for r in rows if r["system"] == name)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="images/s of geokd's trainer vs a plain PyTorch loop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="batches of 128 per epoch (class-balanced subset)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per system; the first is warm-up")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="also time run.amp='bf16' (auto: where bfloat16 products are native)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of all systems (order reversed every other round); ratios paired per round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="smoke test: WRN-10-0.5, 3 steps, 2 epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    depth, steps, epochs = (10, 3, 2) if args.quick else (28, args.steps, args.epochs)
    if args.quick:
        args.rounds = 1
    if args.rounds < 1:
        raise ValueError(f"--rounds: expected at least 1, got {args.rounds}")
    if epochs < 2:
        raise ValueError(f"--epochs: expected at least 2 (the first is warm-up), got {epochs}")
    fraction = steps * BATCH / 50_000

    peak = measure_matmul_peak(size=512 if args.quick else 2048, repeat=3 if args.quick else 5,
                               threads=args.threads)
    baseline_name = f"plain PyTorch (torchvision, {args.workers} workers)"
    train_set = load_dataset("cifar10", split="train", fraction=fraction, seed=0)
    initial = None

    def run_geokd(channels_last: bool | None, amp: str | None = None, *, native: bool = True):
        nonlocal initial
        torch.manual_seed(0)
        cfg = config_for(depth=depth, fraction=fraction, epochs=epochs, channels_last=channels_last, amp=amp)
        with contextlib.nullcontext() if native else native_disabled():
            seconds, n_images, model = geokd_epochs(cfg, device=device)
        if initial is None:
            initial = model
        return seconds, n_images

    def run_plain():
        return plain_epochs(copy.deepcopy(initial), train_set, epochs=epochs, workers=args.workers), len(train_set)

    layout = {True: "channels-last", False: "channels-first"}
    default_layout = resolve_channels_last(RunConfig(), device)
    default_name = f"geokd fit (default config: {layout[default_layout]})"
    systems = {default_name: lambda: run_geokd(None),
               f"geokd fit ({layout[not default_layout]})": lambda: run_geokd(not default_layout),
               baseline_name: run_plain}
    native = native_status()
    if default_layout and native["batchnorm"]:
        # Context: what geokd's compiled batch norm (geokd.native) adds to the default.
        systems[NO_NATIVE_NAME] = lambda: run_geokd(None, native=False)
    if args.bf16 == "on" or (args.bf16 == "auto" and search_dtype("auto", device) == torch.bfloat16):
        # Context, not the target: other numerics than the float32 baseline.
        systems[AMP_NAME] = lambda: run_geokd(None, "bf16")
    # Whole rounds of every system, the order reversed every other round: this VM's speed
    # drifts by 30-50% within minutes, which one pass per system cannot tell from a ratio.
    per_round: list[dict] = []
    for r in range(args.rounds):
        names = list(systems) if r % 2 == 0 else list(systems)[::-1]
        if initial is None:  # the baseline starts from geokd's initial weights
            names = [n for n in names if n != baseline_name] + [baseline_name]
        measured = {}
        for name in names:
            secs, n = systems[name]()
            measured[name] = {"images_per_s": n / statistics.median(secs[1:]), "epoch_seconds": secs,
                              "images_per_epoch": n}
        per_round.append(measured)
    per_image = flops_per_image(initial)

    rows = []
    results = {}
    for name in systems:
        ips = [rnd[name]["images_per_s"] for rnd in per_round]
        ratios = [rnd[name]["images_per_s"] / rnd[baseline_name]["images_per_s"] for rnd in per_round]
        results[name] = {"images_per_s": statistics.median(ips), "images_per_s_per_round": ips,
                         "ratio_per_round": ratios, "rounds": [rnd[name] for rnd in per_round]}
    for name, r in results.items():
        gflops = r["images_per_s"] * per_image / 1e9
        ratio = statistics.median(r["ratio_per_round"])
        row = {"system": name, "images_per_s": r["images_per_s"], "ratio_vs_plain": ratio,
               "ratio_range": f"{min(r['ratio_per_round']):.2f}-{max(r['ratio_per_round']):.2f}",
               "gflop_per_s": gflops, "fraction_of_peak": gflops / peak["peak_gflops"]}
        if name == AMP_NAME:
            row["target"] = "context (bfloat16 numerics)"
        elif name == default_name:
            row["target"] = f">= {TARGET_RATIO}x: " + ("met" if ratio >= TARGET_RATIO else "MISSED")
        elif name == NO_NATIVE_NAME:
            row["target"] = "context (ATen batch norm operations)"
        elif name != baseline_name:
            row["target"] = "context (the other layout)"
        rows.append(row)
    best = max((r for r in rows if r["system"] not in (baseline_name, AMP_NAME, NO_NATIVE_NAME)),
               key=lambda r: r["images_per_s"])
    setting = "quick smoke test (WRN-10-0.5)" if args.quick else "WRN-28-0.5, CIFAR-10, batch 128"
    print(f"training throughput, {setting}, {steps} steps/epoch, median of epochs 2..{epochs}, "
          f"median over {args.rounds} rounds (ratio: median of per-round ratios); "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")
    print(f"measured float32 matmul peak {peak['peak_gflops']:.1f} GFLOP/s; step {per_image / 1e6:.1f} MFLOP/image "
          "(forward+backward)")
    print(format_table(rows, ["system", "images_per_s", "ratio_vs_plain", "ratio_range", "gflop_per_s",
                              "fraction_of_peak",
                              "target"]))
    print(f"default configuration: {default_name} at {results_ratio(rows, default_name):.2f}x the plain loop; "
          f"best: {best['system']} at {best['ratio_vs_plain']:.2f}x")
    payload = {"quick": args.quick, "setting": setting, "threads": torch.get_num_threads(), "steps_per_epoch": steps,
               "epochs": epochs, "rounds": args.rounds, "default_system": default_name, "native": native, "load_average": os.getloadavg(), "matmul_peak": peak,
               "flops_per_image": per_image, "rows": rows, "systems": results}
    path = write_json("bench_throughput_quick" if args.quick else "bench_throughput", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
