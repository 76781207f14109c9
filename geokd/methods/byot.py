"""BYOT self-distillation: "Be Your Own Teacher" (Zhang et al., ICCV 2019).

A network is cut into sections (its stages). After every section but the last, a
*bottleneck* (strided residual bottleneck blocks) brings the section's feature map to the
shape of the deepest section's map, and a global-average-pool + FC classifier answers from
it. The deepest classifier is the network's own head. Every classifier i trains with

    (1 − α)·CE(q_i, y) + α·T²·KL(q_deepest^T ‖ q_i^T) + β·‖F_i − F_deepest‖²

where q^T are temperature-T softmaxes, F_i the bottleneck output of exit i and F_deepest
the deepest section's map. The deepest exit plays the teacher: its probabilities and map
are detached in the KL and hint terms (it learns from the labels only), as in the paper's
release. Because every shallow classifier can answer alone, the network supports *anytime
inference*: :meth:`SelfDistillationNetwork.forward_exit` runs only the sections an exit
needs, and :func:`evaluate_exits` measures accuracy and wall time per exit and of the
ensemble (mean of the exits' softmax probabilities).

Examples
--------
>>> import torch
>>> from torchvision.models import resnet18
>>> _ = torch.manual_seed(0)
>>> backbone = resnet18(num_classes=10)
>>> net = SelfDistillationNetwork(backbone, example_input=torch.zeros(2, 3, 32, 32))
>>> net.sections
('layer1', 'layer2', 'layer3', 'layer4')
>>> out = net(torch.randn(4, 3, 32, 32))
>>> [tuple(z.shape) for z in out.logits]
[(4, 10), (4, 10), (4, 10), (4, 10)]
>>> loss = SelfDistillationLoss()(out, torch.tensor([0, 1, 2, 3]))
>>> bool(torch.isfinite(loss))
True
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geokd.models.batchnorm import BatchNorm2d
from geokd.models.layout import batch_in_layout

__all__ = [
    "ExitOutputs",
    "SelfDistillationNetwork",
    "SelfDistillationLoss",
    "ExitReport",
    "evaluate_exits",
    "exit_features",
    "exit_smoothness",
    "train_self_distillation",
]


class ExitOutputs(NamedTuple):
    """All exits of one forward pass, ordered shallow → deep (the deepest last).

    Attributes
    ----------
    logits : list[torch.Tensor]
        ``(B, num_classes)`` per exit.
    features : list[torch.Tensor]
        Per exit, the map its classifier pools: the bottleneck output for shallow exits,
        the deepest section's output for the last one; all of the deepest map's shape.
    """

    logits: list[torch.Tensor]
    features: list[torch.Tensor]


class _EarlyExit(Exception):
    """Raised by a forward hook to stop the backbone once the needed section has run."""


class _BottleneckBlock(nn.Module):
    """Residual bottleneck (1×1 reduce, 3×3 strided, 1×1 expand) with a projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int):
        super().__init__()
        mid = max(1, out_channels // 4)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False),
            BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False),
            BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _bottleneck(in_shape: torch.Size, out_shape: torch.Size, *, name: str) -> nn.Sequential:
    """Blocks taking a (C, H, W) map to the deepest (C', H', W'), one stride-2 block per halving."""
    (c_in, h_in, w_in), (c_out, h_out, w_out) = in_shape, out_shape
    if h_in % h_out or w_in % w_out or h_in // h_out != w_in // w_out:
        raise ValueError(
            f"section {name!r}: its map {h_in}x{w_in} must be the deepest map {h_out}x{w_out} "
            "scaled by a power of 2"
        )
    factor = h_in // h_out
    halvings = int(round(math.log2(factor)))
    if 2**halvings != factor:
        raise ValueError(f"section {name!r}: spatial ratio {factor} to the deepest map is not a power of 2")
    blocks: list[nn.Module] = []
    channels = c_in
    for step in range(max(1, halvings)):
        # Widen progressively so the last block lands on the deepest width.
        target = c_out if step == max(1, halvings) - 1 else max(channels, c_out // 2 ** (halvings - step - 1))
        blocks.append(_BottleneckBlock(channels, target, stride=2 if step < halvings else 1))
        channels = target
    return nn.Sequential(*blocks)


def _default_sections(model: nn.Module) -> tuple[str, ...]:
    names = dict(model.named_children())
    sections = []
    index = 1
    while f"layer{index}" in names:
        sections.append(f"layer{index}")
        index += 1
    if len(sections) < 2:
        raise ValueError(
            "could not find the model's stages layer1, layer2, ...: pass sections=(names of "
            f"its stage modules); top-level children are {sorted(names)}"
        )
    return tuple(sections)


class SelfDistillationNetwork(nn.Module):
    """A backbone with a bottleneck + FC classifier after each of its sections.

    Parameters
    ----------
    backbone : nn.Module
        Any classifier whose ``forward(x)`` returns logits and whose sections are named
        sub-modules (e.g. geokd's WRN or a torchvision ResNet).
    example_input : torch.Tensor
        A batch (≥ 2 inputs, on the backbone's device) used once to read the sections' shapes.
    sections : sequence of str, optional
        Module names of the sections, shallow → deep; default ``layer1, layer2, ...``.

    Notes
    -----
    The sections are read with forward hooks, so the backbone is used unmodified; its
    parameters are shared (``self.backbone``).
    """

    def __init__(self, backbone: nn.Module, *, example_input: torch.Tensor, sections: Sequence[str] | None = None):
        super().__init__()
        self.backbone = backbone
        self.sections = tuple(sections) if sections is not None else _default_sections(backbone)
        if len(self.sections) < 2:
            raise ValueError(f"expected at least 2 sections, got {self.sections!r}")
        modules = dict(backbone.named_modules())
        missing = [name for name in self.sections if name not in modules]
        if missing:
            raise ValueError(f"sections {missing} are not modules of the backbone (e.g. {sorted(modules)[:8]}...)")
        if example_input.dim() < 2 or example_input.shape[0] < 2:
            raise ValueError(f"example_input: expected a batch of at least 2 inputs, got shape {tuple(example_input.shape)}")
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            logits, maps = self._run_backbone(example_input)
        backbone.train(was_training)
        for name, fmap in zip(self.sections, maps):
            if fmap.dim() != 4:
                raise ValueError(f"section {name!r}: expected a (B, C, H, W) map, got shape {tuple(fmap.shape)}")
        self.num_classes = logits.shape[1]
        deepest = maps[-1].shape[1:]
        device = example_input.device
        self.bottlenecks = nn.ModuleList(
            _bottleneck(fmap.shape[1:], deepest, name=name).to(device)
            for name, fmap in zip(self.sections[:-1], maps[:-1])
        )
        self.classifiers = nn.ModuleList(
            nn.Linear(deepest[0], self.num_classes).to(device) for _ in self.sections[:-1]
        )

    def _run_backbone(self, x: torch.Tensor, *, stop_after: int | None = None):
        maps: list[torch.Tensor] = []
        modules = dict(self.backbone.named_modules())
        handles = []

        def make_hook(index: int):
            def hook(_module, _inputs, output):
                maps.append(output)
                if stop_after is not None and index == stop_after:
                    raise _EarlyExit

            return hook

        for index, name in enumerate(self.sections):
            handles.append(modules[name].register_forward_hook(make_hook(index)))
        try:
            logits = self.backbone(x)
        except _EarlyExit:
            logits = None
        finally:
            for handle in handles:
                handle.remove()
        if len(maps) < (len(self.sections) if stop_after is None else stop_after + 1):
            raise ValueError(
                f"sections {self.sections} did not all run once in order during the forward pass "
                f"({len(maps)} outputs captured)"
            )
        return logits, maps

    def _shallow_exit(self, index: int, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.bottlenecks[index](fmap)
        return self.classifiers[index](feature.mean(dim=(2, 3))), feature

    def forward(self, x: torch.Tensor) -> ExitOutputs:
        """Every exit's logits and features, shallow → deep."""
        logits, maps = self._run_backbone(x)
        outs, feats = [], []
        for index in range(len(self.sections) - 1):
            z, f = self._shallow_exit(index, maps[index])
            outs.append(z)
            feats.append(f)
        outs.append(logits)
        feats.append(maps[-1])
        return ExitOutputs(outs, feats)

    def forward_exit(self, x: torch.Tensor, exit_index: int) -> torch.Tensor:
        """Logits of one exit, running the backbone only as far as that exit needs."""
        last = len(self.sections) - 1
        if not -len(self.sections) <= exit_index <= last:
            raise ValueError(f"exit_index: expected 0..{last}, got {exit_index}")
        exit_index %= len(self.sections)
        if exit_index == last:
            return self.backbone(x)
        _, maps = self._run_backbone(x, stop_after=exit_index)
        return self._shallow_exit(exit_index, maps[exit_index])[0]


class SelfDistillationLoss(nn.Module):
    """The BYOT objective summed over all exits.

    Parameters
    ----------
    alpha : float
        Weight of the KL term (CE gets 1 − α). Paper: 0.1.
    temperature : float
        Softening temperature T (the KL is multiplied by T²). Paper: 3.
    beta : float
        Weight of the feature hint ‖F_i − F_deepest‖² (squared L2 norm per input, averaged
        over the batch). Paper: 1e-6.

    Examples
    --------
    >>> import torch
    >>> out = ExitOutputs([torch.zeros(2, 3), torch.zeros(2, 3)], [torch.ones(2, 4, 1, 1)] * 2)
    >>> round(float(SelfDistillationLoss()(out, torch.tensor([0, 1]))), 4)  # 2 exits × 0.9·ln 3
    1.9775
    """

    def __init__(self, *, alpha: float = 0.1, temperature: float = 3.0, beta: float = 1e-6):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
        if not temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        if not beta >= 0:
            raise ValueError(f"beta: expected >= 0, got {beta}")
        self.alpha, self.temperature, self.beta = float(alpha), float(temperature), float(beta)

    def terms(self, outputs: ExitOutputs, labels: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per exit, the unweighted ``ce``, ``kl`` (already × T²) and ``hint`` terms."""
        logits, feats = outputs
        if len(logits) != len(feats) or len(logits) < 2:
            raise ValueError(f"expected matching logits/features for >= 2 exits, got {len(logits)} and {len(feats)}")
        batch = logits[0].shape[0]
        if labels.dim() != 1 or labels.shape[0] != batch:
            raise ValueError(f"labels: expected shape ({batch},), got {tuple(labels.shape)}")
        t = self.temperature
        teacher_logp = F.log_softmax(logits[-1].detach() / t, dim=1)
        teacher_map = feats[-1].detach()
        out = []
        for index, (z, f) in enumerate(zip(logits, feats)):
            if z.shape != logits[-1].shape:
                raise ValueError(f"exit {index}: logits shape {tuple(z.shape)} != deepest {tuple(logits[-1].shape)}")
            if f.shape != teacher_map.shape:
                raise ValueError(f"exit {index}: feature shape {tuple(f.shape)} != deepest {tuple(teacher_map.shape)}")
            student_logp = F.log_softmax(z / t, dim=1)
            kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean") * t * t
            hint = (f - teacher_map).pow(2).flatten(1).sum(1).mean()
            out.append({"ce": F.cross_entropy(z, labels), "kl": kl, "hint": hint})
        return out

    def forward(self, outputs: ExitOutputs, labels: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for term in self.terms(outputs, labels):
            total = total + (1 - self.alpha) * term["ce"] + self.alpha * term["kl"] + self.beta * term["hint"]
        return total


@dataclass
class ExitReport:
    """Accuracy and inference time of one exit (``name`` = its section) or of the ensemble."""

    name: str
    accuracy: float
    seconds_per_batch: float | None = None
    batch_size: int | None = None
    extra: dict = field(default_factory=dict)


def _batches(data) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return [data]
    return data


@torch.no_grad()
def evaluate_exits(
    network: SelfDistillationNetwork,
    data,
    *,
    device: torch.device | str = "cpu",
    timing_batch: torch.Tensor | None = None,
    repeats: int = 5,
) -> list[ExitReport]:
    """Accuracy of every exit and of their ensemble; measured inference time per exit.

    Parameters
    ----------
    network : SelfDistillationNetwork
    data : iterable of (x, y) batches, or one ``(x, y)`` pair
    device : torch device
    timing_batch : torch.Tensor, optional
        The batch timed per exit (default: the first batch of ``data``). Each exit runs only
        the sections it needs (anytime inference); the median of ``repeats`` runs is reported.
    repeats : int

    Returns
    -------
    list[ExitReport]
        One per exit (shallow → deep), then ``"ensemble"`` (mean of the exits' softmax
        probabilities; its time is the full forward of all exits).
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {repeats}")
    was_training = network.training
    network.eval()
    network.to(device)
    n_exits = len(network.sections)
    correct = [0] * (n_exits + 1)
    total = 0
    first = None
    for x, y in _batches(data):
        x, y = x.to(device), y.to(device)
        if first is None:
            first = x
        out = network(x)
        for index, z in enumerate(out.logits):
            correct[index] += int((z.argmax(1) == y).sum())
        probs = torch.stack([F.softmax(z, dim=1) for z in out.logits]).mean(0)
        correct[-1] += int((probs.argmax(1) == y).sum())
        total += y.shape[0]
    if total == 0:
        raise ValueError("data: expected at least one (x, y) batch, got none")
    timed = (timing_batch if timing_batch is not None else first).to(device)

    def median_time(fn) -> float:
        fn()  # warm-up (allocations, lazy init)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    reports = []
    for index, name in enumerate(network.sections):
        seconds = median_time(lambda: network.forward_exit(timed, index))
        reports.append(ExitReport(name, correct[index] / total, seconds, timed.shape[0]))
    seconds = median_time(lambda: network(timed))
    reports.append(ExitReport("ensemble", correct[-1] / total, seconds, timed.shape[0]))
    network.train(was_training)
    return reports


@torch.no_grad()
def exit_features(network: SelfDistillationNetwork, x: torch.Tensor, *, device="cpu", batch_size: int = 256):
    """Per exit, the pooled ``(N, C)`` representation its classifier reads."""
    network.eval().to(device)
    chunks: list[list[torch.Tensor]] = [[] for _ in network.sections]
    for start in range(0, x.shape[0], batch_size):
        out = network(x[start : start + batch_size].to(device))
        for index, f in enumerate(out.features):
            chunks[index].append(f.mean(dim=(2, 3)).cpu())
    return [torch.cat(c) for c in chunks]


def exit_smoothness(network: SelfDistillationNetwork, x: torch.Tensor, labels: torch.Tensor, *, k: int = 10, device="cpu"):
    """GSP label smoothness of every exit's representation (small = classes separated).

    Uses :func:`geokd.analysis.label_smoothness` on each exit's pooled features of the same
    node set. Returns a list of floats, shallow → deep.
    """
    try:
        from geokd.analysis import label_smoothness
    except ImportError:  # the package may not re-export it
        from geokd.analysis.smoothness import label_smoothness

    feats = exit_features(network, x, device=device)
    return [
        label_smoothness(f, labels, k=k, device=device, name=f"exit {i} ({name})")
        for i, (f, name) in enumerate(zip(feats, network.sections))
    ]


def train_self_distillation(
    network: SelfDistillationNetwork,
    batches,
    *,
    epochs: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    loss: SelfDistillationLoss | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> list[float]:
    """A small self-contained SGD loop for BYOT (all exits trained jointly).

    ``batches`` is re-iterable over ``(x, y)`` (e.g. a :class:`geokd.data.BatchLoader`).
    With ``channels_last`` the network and each batch are put in that memory layout (faster
    on a CPU, see :func:`geokd.train.config.resolve_channels_last`). Returns the mean loss
    of each epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    loss = loss if loss is not None else SelfDistillationLoss()
    network.to(device).train()
    if channels_last:
        network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(network.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    history = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            x = batch_in_layout(x, channels_last=channels_last)
            value = loss(network(x), y)
            if not torch.isfinite(value):
                raise ValueError(f"BYOT loss became {float(value)}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            total += float(value.detach()) * y.shape[0]
            count += y.shape[0]
        scheduler.step()
        history.append(total / max(count, 1))
    return history
