"""Training epochs: the geokd trainer vs a plain PyTorch loop with torchvision + DataLoader.

Same network (WRN-16-0.5 on digits, the embedded study's student), same batch size (64),
same optimiser (SGD 0.1 / 0.9 / 5e-4), same augmentation (random crop with 1-pixel
padding), one thread, both evaluating on the test set after every epoch.

geokd: :func:`geokd.train.fit` with :class:`geokd.data.BatchLoader` (tensor-side
batches), which also writes metrics and an atomic, checksummed checkpoint every epoch.

Baseline: the usual loop: PIL images through ``RandomCrop(8, padding=1)``,
``ToTensor()``, ``Normalize`` in a ``torch.utils.data.DataLoader(num_workers=0)``,
``optimizer.zero_grad()``, ``loss.item()`` logged every step.

Prints the median seconds per epoch of each and the ratio; writes JSON to
``benchmarks/results/bench_training_step.json``.

    python -m benchmarks.bench_training_step [--epochs 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from geokd.data import BatchLoader, load_dataset
from geokd.models import build_model, model_config
from geokd.models.taps import FeatureTaps
from geokd.train import TrainingParts, config_from_dict, fit

RESULTS = Path(__file__).resolve().parent / "results" / "bench_training_step.json"
BATCH = 64
MODEL = {"depth": 16, "widen_factor": 0.5, "in_channels": 1, "num_classes": 10}


class PILDigits(torch.utils.data.Dataset):
    def __init__(self, dataset, transform):
        self.images = dataset.images[:, 0].numpy()
        self.labels = dataset.labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i], mode="L")), self.labels[i]


def plain_loop(train_set, test_set, *, epochs: int, workers: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model("wrn", **MODEL)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    norm = T.Normalize(train_set.mean, train_set.std)
    train_loader = torch.utils.data.DataLoader(
        PILDigits(train_set, T.Compose([T.RandomCrop(8, padding=1), T.ToTensor(), norm])),
        batch_size=BATCH, shuffle=True, num_workers=workers)
    test_loader = torch.utils.data.DataLoader(PILDigits(test_set, T.Compose([T.ToTensor(), norm])),
                                              batch_size=540, num_workers=workers)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        running = 0.0
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
        model.eval()
        with torch.no_grad():
            wrong = sum(int((model(x).argmax(1) != y).sum()) for x, y in test_loader)
        times.append(time.perf_counter() - t0)
    return times


def geokd_loop(train_set, test_set, *, epochs: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model("wrn", **MODEL)
    generator = torch.Generator().manual_seed(0)
    parts = TrainingParts(
        student=model, student_taps=FeatureTaps(model, list(model.sensing_points)),
        train_batches=BatchLoader(train_set, batch_size=BATCH, shuffle=True, augment=True, generator=generator),
        test_batches=BatchLoader(test_set, batch_size=540, shuffle=False),
        generator=generator, model_config=model_config(model),
    )
    config = config_from_dict({"data": {"batch_size": BATCH}, "schedule": {"epochs": epochs, "milestones": []}})
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(parts, config, run_dir=Path(tmp) / "run", progress=False)
    # Each epoch's wall time: training (recorded) plus evaluation and checkpoint, from the record times.
    return [m["seconds"] for m in result.metrics], result.train_seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_set, test_set = load_dataset("digits"), load_dataset("digits", split="test")

    plain = plain_loop(train_set, test_set, epochs=args.epochs, workers=args.workers)
    t0 = time.perf_counter()
    _, _ = geokd_loop(train_set, test_set, epochs=1)  # warm-up (imports, first allocation)
    t0 = time.perf_counter()
    geokd_train, _ = geokd_loop(train_set, test_set, epochs=args.epochs)
    geokd_total = (time.perf_counter() - t0) / args.epochs  # with evaluation + checkpoint + metrics
    plain_median = statistics.median(plain[1:] if len(plain) > 1 else plain)
    ratio = plain_median / geokd_total
    print(f"plain PyTorch loop (torchvision transforms + DataLoader): {plain_median:.3f} s/epoch")
    print(f"geokd trainer (incl. eval, metrics, checkpoint):          {geokd_total:.3f} s/epoch "
          f"(training part {statistics.median(geokd_train):.3f} s)")
    print(f"speed-up: {ratio:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "bench_training_step", "model": MODEL, "batch_size": BATCH, "epochs": args.epochs,
        "threads": args.threads, "workers": args.workers, "plain_seconds_per_epoch": plain,
        "geokd_seconds_per_epoch_total": geokd_total, "geokd_train_seconds_per_epoch": geokd_train,
        "speedup": ratio, "torch": torch.__version__, "platform": platform.platform(),
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
