"""One CIFAR-10 training epoch of augmented batches: geokd BatchLoader vs torchvision.

geokd: ``BatchLoader(train, batch_size=128, shuffle=True, augment=True)`` — gather,
crop + flip and normalization on whole batches in the main process.

Baseline: the usual per-image pipeline, ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)`` applied to PIL
images (made from the same uint8 arrays, as ``torchvision.datasets.CIFAR10`` does in
``__getitem__``) through ``torch.utils.data.DataLoader(batch_size=128, shuffle=True,
num_workers=2)``.

Both epochs are timed from loader construction to the last batch (worker start-up
included, as it recurs every epoch without persistent workers). Prints both times and
the ratio; writes JSON to ``benchmarks/results/bench_input_pipeline.json``.

    python -m benchmarks.bench_input_pipeline [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image

from geokd.data import BatchLoader, load_dataset

BATCH_SIZE = 128
RESULTS = Path(__file__).resolve().parent / "results" / "bench_input_pipeline.json"


class PILImages(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 yields: a PIL image per index, then transforms."""

    def __init__(self, images_hwc, labels, transform):
        self.images_hwc, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images_hwc[i])), int(self.labels[i])


def time_geokd_epoch(train, seed: int) -> tuple[float, int]:
    start = time.perf_counter()
    loader = BatchLoader(train, batch_size=BATCH_SIZE, shuffle=True, augment=True,
                         device="cpu", generator=torch.Generator().manual_seed(seed))
    n = 0
    for x, y in loader:
        n += x.shape[0]
    return time.perf_counter() - start, n


def time_torchvision_epoch(train, images_hwc, seed: int, workers: int) -> tuple[float, int]:
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(train.mean, train.std)])
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        PILImages(images_hwc, train.labels.numpy(), transform), batch_size=BATCH_SIZE, shuffle=True,
        num_workers=workers, generator=torch.Generator().manual_seed(seed))
    n = 0
    for x, y in loader:
        n += x.shape[0]
    return time.perf_counter() - start, n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="epochs timed per pipeline (median reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in the main process (baseline workers use 1 each)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train = load_dataset("cifar10", split="train")
    images_hwc = train.images.permute(0, 2, 3, 1).contiguous().numpy()

    geokd_times, baseline_times = [], []
    for r in range(args.repeats):
        t, n = time_geokd_epoch(train, seed=r)
        geokd_times.append(t)
        assert n == len(train)
        t, n = time_torchvision_epoch(train, images_hwc, seed=r, workers=args.workers)
        baseline_times.append(t)
        assert n == len(train)
        print(f"epoch {r + 1}/{args.repeats}: geokd {geokd_times[-1]:.2f} s, torchvision {baseline_times[-1]:.2f} s")

    geokd_s, baseline_s = statistics.median(geokd_times), statistics.median(baseline_times)
    ratio = baseline_s / geokd_s
    print(f"geokd BatchLoader (crop+flip+normalize, batch {BATCH_SIZE}, {args.threads} thread(s)): {geokd_s:.2f} s/epoch")
    print(f"torchvision per-image transforms, DataLoader {args.workers} workers: {baseline_s:.2f} s/epoch")
    print(f"speed-up: {ratio:.1f}x (target >= 5x)")

    record = {
        "benchmark": "input_pipeline",
        "dataset": "cifar10 train (50000 images)",
        "batch_size": BATCH_SIZE,
        "geokd_seconds_per_epoch": geokd_s,
        "torchvision_seconds_per_epoch": baseline_s,
        "speedup": ratio,
        "geokd_epochs_s": geokd_times,
        "torchvision_epochs_s": baseline_times,
        "geokd_threads": args.threads,
        "torchvision_workers": args.workers,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
