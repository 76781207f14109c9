"""Test error of trained networks, and median ± sd over groups of runs.

``evaluate_model`` gives one network's error on a dataset; ``evaluate_checkpoints`` loads
files (geokd checkpoints or the GKD authors' pickles, through the safe importer) and
evaluates them; ``group_by_prefix`` / ``summarize_groups`` turn runs that differ only by a
trailing seed (``…_0.pth``, ``…_1.pth``) into median ± sd.

Speed on the CPU: inference runs under ``torch.inference_mode`` on a copy of the network
whose batch-norms are folded into the preceding convolutions (checked against the unfolded
network on the first batch; unfolded if they disagree), in channels-last layout. Several
networks are evaluated at once, one per thread with one intra-op thread each, which uses
small CPUs better than intra-op parallelism on thin layers.

Examples
--------
>>> from geokd.data import load_dataset
>>> from geokd.models import build_model
>>> test = load_dataset("digits", split="test")
>>> result = evaluate_model(build_model("small_cnn", in_channels=1, widths=(4, 8, 8)), test)
>>> result.total == len(test), 0.0 <= result.error <= 100.0
(True, True)
>>> group_by_prefix(["runs/gkd_0.pt", "runs/gkd_1.pt", "teacher.pt"])
{'gkd': ['runs/gkd_0.pt', 'runs/gkd_1.pt'], 'teacher': ['teacher.pt']}
>>> summarize([9.8, 9.6, 9.4]).median
9.6
"""

from __future__ import annotations

import copy
import fnmatch
import os
import re
import statistics
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "EvalResult",
    "GroupSummary",
    "evaluate_checkpoints",
    "evaluate_model",
    "group_by_patterns",
    "group_by_prefix",
    "prepare_for_inference",
    "summarize",
    "summarize_groups",
]


@dataclass(frozen=True)
class EvalResult:
    """Errors of one network on one dataset."""

    name: str
    wrong: int
    total: int

    @property
    def error(self) -> float:
        """Test error in percent."""
        return 100.0 * self.wrong / self.total


@dataclass(frozen=True)
class GroupSummary:
    """Median ± sample standard deviation (ddof = 1) of a group's errors, in percent."""

    members: tuple[str, ...]
    errors: tuple[float, ...]
    median: float
    sd: float | None  # None for a single run
    mean: float
    minimum: float
    maximum: float

    @property
    def n(self) -> int:
        return len(self.errors)

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "median": self.median,
            "sd": self.sd,
            "mean": self.mean,
            "min": self.minimum,
            "max": self.maximum,
            "members": list(self.members),
            "errors": list(self.errors),
        }


# ----------------------------------------------------------------------------- inference


def _fold_conv_bn(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm2d into the Conv2d registered just before it (in place)."""
    folded = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_var is None or conv.out_channels != bn.num_features:
                continue
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
            fused = nn.Conv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
            ).to(conv.weight.device)
            fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            bias = conv.bias * scale if conv.bias is not None else 0.0
            fused.bias.copy_(shift + bias)
            setattr(parent, conv_name, fused)
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded


def prepare_for_inference(model: nn.Module, example: torch.Tensor, *, fuse: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` for fast inference (BN folded, channels-last).

    The folded copy is checked against the plain eval-mode copy on ``example``: if the
    predictions differ or the logits move by more than 1e-3 of their scale (a model whose
    BN does not directly follow its conv), the plain copy is returned instead.
    """
    plain = copy.deepcopy(model).to(example.device).eval()
    if example.dim() == 4:
        plain = plain.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    if not fuse:
        return plain
    with torch.inference_mode():
        fast = copy.deepcopy(plain)
        if _fold_conv_bn(fast) == 0:
            return plain
        if example.dim() == 4:
            fast = fast.to(memory_format=torch.channels_last)
        reference, candidate = plain(example), fast(example)
        scale = reference.abs().max().clamp_min(1e-6)
        same = torch.equal(reference.argmax(1), candidate.argmax(1)) and (reference - candidate).abs().max() <= 1e-3 * scale
    return fast if same else plain


def _normalized_batches(dataset, *, batch_size: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from geokd.data import BatchLoader

    loader = BatchLoader(dataset, batch_size=batch_size, shuffle=False, augment=False, device=device)
    batches = []
    for x, y in loader:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        batches.append((x, y))
    return batches


def _prepare(model: nn.Module, example: torch.Tensor, *, fuse: bool, name: str) -> nn.Module:
    try:
        return prepare_for_inference(model, example, fuse=fuse)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"{name}: the network cannot take inputs of shape {tuple(example.shape[1:])}: {str(exc).splitlines()[0]}"
        ) from None


def _count_wrong(model: nn.Module, batches, *, name: str, num_classes: int) -> EvalResult:
    wrong = total = 0
    with torch.inference_mode():
        for x, y in batches:
            try:
                logits = model(x)
            except RuntimeError as exc:
                raise ValueError(
                    f"{name}: the network cannot take inputs of shape {tuple(x.shape[1:])}: {str(exc).splitlines()[0]}"
                ) from None
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            if logits.dim() != 2 or logits.shape[1] != num_classes:
                raise ValueError(
                    f"{name}: expected logits of shape (B, {num_classes}) for a {num_classes}-class dataset, "
                    f"got {tuple(logits.shape)}"
                )
            wrong += int((logits.argmax(dim=1) != y).sum())
            total += int(y.numel())
    return EvalResult(name=name, wrong=wrong, total=total)


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def evaluate_model(model: nn.Module, dataset, *, batch_size: int = 100, device="cpu", fuse: bool = True,
                   name: str = "model") -> EvalResult:
    """Top-1 error of ``model`` on a :class:`geokd.data.TensorDataset` (normalized by its mean/std).

    ``model`` itself is not modified (a copy is put in eval mode and on ``device``).
    """
    _check_batch_size(batch_size)
    batches = _normalized_batches(dataset, batch_size=batch_size, device=device)
    fast = _prepare(model, batches[0][0], fuse=fuse, name=name)
    return _count_wrong(fast, batches, name=name, num_classes=dataset.num_classes)


def expand_checkpoints(patterns) -> list[str]:
    """The networks named by ``geokd evaluate NETWORK...``: globs expanded (in natural order).

    Existing paths and network specs are kept as given; ``$VARS`` and ``~`` are expanded,
    ``$GEOKD_RELEASED_DIR`` being the released networks' folder
    (:func:`geokd.checkpoints.released.released_dir`, default included). A glob that matches
    nothing (e.g. one the shell passed on unexpanded) is an error naming the folder it looked
    in and whether that exists; so is a variable that is not set.

    Examples
    --------
    >>> expand_checkpoints(["torchvision:resnet18?num_classes=10"])
    ['torchvision:resnet18?num_classes=10']
    >>> expand_checkpoints(["/nowhere/runs/*.pt"])
    Traceback (most recent call last):
    ...
    geokd.errors.ConfigError: no file matches '*.pt' in /nowhere/runs (that folder does not exist)
    """
    from geokd.checkpoints.released import GLOB_CHARS, expand_variables, glob_matches
    from geokd.models.specs import is_network_spec

    found = []
    for pattern in map(os.fspath, patterns):
        if os.path.exists(pattern) or is_network_spec(pattern):
            found.append(pattern)
            continue
        expanded = os.path.expanduser(expand_variables(pattern))
        if not GLOB_CHARS.search(expanded):
            found.append(expanded)  # a plain path: load_network says what is missing
            continue
        found += glob_matches(pattern, expanded)
    return found


def evaluate_checkpoints(paths, dataset, *, batch_size: int = 100, device="cpu", workers: int | None = None,
                         fuse: bool = True, progress: bool | None = None) -> list[EvalResult]:
    """Evaluate networks on ``dataset``: checkpoint files (geokd's or the authors' pickles), run
    directories or network specs (``torchvision:resnet18?num_classes=10@weights.pt``).

    Parameters
    ----------
    paths : sequence of path-like
    dataset : geokd.data.TensorDataset
    batch_size : int
    device : str or torch.device
    workers : int, optional
        Networks evaluated at once on the CPU (default: the number of intra-op threads);
        each worker uses one intra-op thread. Ignored (1) on other devices.
    progress : bool, optional
        Show a progress bar; default: only on a terminal and when ``CI`` is not set.

    Returns
    -------
    list of EvalResult
        In the order of ``paths``; ``name`` is the path as given.
    """
    from geokd.checkpoints import load_network

    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("evaluate_checkpoints: expected at least one checkpoint path, got none")
    _check_batch_size(batch_size)
    device = torch.device(device)
    batches = _normalized_batches(dataset, batch_size=batch_size, device=device)
    if workers is None:
        workers = torch.get_num_threads()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    workers = min(workers, len(paths)) if device.type == "cpu" else 1

    bar = _progress_bar(len(paths), progress)
    lock = threading.Lock()

    def run(path: str) -> EvalResult:
        model = load_network(path, device=device)
        fast = _prepare(model, batches[0][0], fuse=fuse, name=path)
        result = _count_wrong(fast, batches, name=path, num_classes=dataset.num_classes)
        with lock:
            bar.update(1)
        return result

    threads_before = torch.get_num_threads()
    try:
        if workers > 1:
            torch.set_num_threads(1)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(run, paths))
        return [run(path) for path in paths]
    finally:
        torch.set_num_threads(threads_before)
        bar.close()


def _progress_bar(total: int, progress: bool | None):
    import sys

    from tqdm.auto import tqdm

    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(total=total, desc="evaluating", unit="net", disable=not progress)


# ----------------------------------------------------------------------------- groups

_SEED_SUFFIX = re.compile(r"[_-]\d+$")


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".pth.tar", ".pth", ".pt", ".ckpt", ".bin"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return os.path.splitext(base)[0]


def group_by_prefix(names) -> dict[str, list[str]]:
    """Group files whose names differ only by a trailing ``_<n>`` / ``-<n>`` (the run seed)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        prefix = _SEED_SUFFIX.sub("", _stem(os.fspath(name))) or _stem(os.fspath(name))
        groups.setdefault(prefix, []).append(name)
    return groups


def group_by_patterns(names, patterns: dict[str, str]) -> dict[str, list[str]]:
    """Groups from ``{group: glob}``; a glob matches the file name (or the whole path)."""
    groups = {}
    for group, pattern in patterns.items():
        members = [n for n in names if fnmatch.fnmatch(os.path.basename(n), pattern) or fnmatch.fnmatch(n, pattern)]
        if not members:
            raise ValueError(f"group {group!r}: pattern {pattern!r} matches none of the {len(names)} checkpoints")
        groups[group] = members
    return groups


def summarize(errors, members=None) -> GroupSummary:
    """Median, sample sd (ddof = 1; None for one value), mean, min and max of ``errors``."""
    errors = tuple(float(e) for e in errors)
    if not errors:
        raise ValueError("summarize: expected at least one error value, got none")
    members = tuple(members) if members is not None else tuple(str(i) for i in range(len(errors)))
    return GroupSummary(
        members=members,
        errors=errors,
        median=float(statistics.median(errors)),
        sd=float(statistics.stdev(errors)) if len(errors) > 1 else None,
        mean=float(statistics.fmean(errors)),
        minimum=min(errors),
        maximum=max(errors),
    )


def summarize_groups(results, groups: dict[str, list[str]] | None = None) -> dict[str, GroupSummary]:
    """Per group (default: :func:`group_by_prefix` of the result names), the error summary."""
    by_name = {r.name: r for r in results}
    groups = group_by_prefix(list(by_name)) if groups is None else groups
    return {
        group: summarize([by_name[m].error for m in members], members)
        for group, members in groups.items()
    }
