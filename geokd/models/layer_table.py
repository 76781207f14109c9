"""Which module names of a network can be tapped, and what each one gives on an input.

:func:`layer_table` runs one forward pass with a hook on every sub-module and reports,
per module, its output shape, its input shape (the ``NAME:input`` tap, e.g. the
pre-activation a ReLU receives) and whether it can be tapped at all: a module that runs
twice in one pass (torchvision's ResNet blocks call one ``relu`` twice) or returns no
single tensor cannot; the table says why, so a user picks sensing points without
reading the model's code.

Examples
--------
>>> import torch
>>> from geokd.models import build_model
>>> rows = layer_table(build_model("resnet8"), torch.zeros(1, 3, 32, 32))
>>> [(r.name, r.output_shape) for r in rows if r.name in ("layer1", "layer3", "pool")]
[('layer1', (16, 32, 32)), ('layer3', (64, 8, 8)), ('pool', (64,))]
>>> from geokd.models.specs import build_from_source
>>> relu = next(r for r in layer_table(build_from_source("torchvision:resnet18"), torch.zeros(1, 3, 64, 64))
...             if r.name == "layer1.0.relu")
>>> relu.tappable, relu.note
(False, 'runs 2 times per forward pass')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LayerInfo", "layer_table", "format_layer_table"]


@dataclass(frozen=True)
class LayerInfo:
    """One sub-module: its name, class, shapes (without the batch axis) and tap status."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    input_shape: tuple[int, ...] | None
    calls: int
    note: str = ""

    @property
    def tappable(self) -> bool:
        return self.calls == 1 and self.output_shape is not None


def _shape(value) -> tuple[int, ...] | None:
    return tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else None


@torch.no_grad()
def layer_table(model: nn.Module, example: torch.Tensor) -> list[LayerInfo]:
    """Every named sub-module of ``model`` with what it gives on ``example`` (module order).

    ``model`` runs in eval mode on ``example`` (a batch, e.g. ``torch.zeros(1, 3, 32, 32)``)
    and is left in the mode it had.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"layer_table: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise ValueError(f"layer_table: expected an input batch tensor (B, ...), got {getattr(example, 'shape', example)!r}")
    modules = [(name, module) for name, module in model.named_modules() if name]
    seen: dict[str, dict] = {name: {"calls": 0, "out": None, "in": None} for name, _ in modules}
    handles = []

    def record(name):
        def hook(module, args, output):
            entry = seen[name]
            entry["calls"] += 1
            entry["out"] = output
            entry["in"] = args[0] if args else None
        return hook

    was_training = model.training
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(record(name)))
        model.eval()
        try:
            model(example)
        except Exception as exc:  # noqa: BLE001 - say which input failed, keep the cause
            raise ValueError(f"{type(model).__name__} cannot take an input of shape {tuple(example.shape[1:])}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
                             "(set --input-shape C H W)") from exc
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    rows = []
    for name, module in modules:
        entry = seen[name]
        out = _shape(entry["out"])
        if entry["calls"] == 0:
            note = "does not run in the forward pass"
        elif entry["calls"] > 1:
            note = f"runs {entry['calls']} times per forward pass"
        elif out is None:
            note = f"returns a {type(entry['out']).__name__}, not a tensor"
        else:
            note = ""
        rows.append(LayerInfo(name=name, kind=type(module).__name__, output_shape=out,
                              input_shape=_shape(entry["in"]), calls=entry["calls"], note=note))
    return rows


def format_layer_table(rows: list[LayerInfo]) -> str:
    """The table as aligned text: name, class, output shape, ``:input`` shape, note.

    Examples
    --------
    >>> print(format_layer_table([LayerInfo("fc", "Linear", (10,), (512,), 1)]))
    name  module  output  name:input  note
    fc    Linear  10      512
    """
    def text(shape):
        return "-" if shape is None else " x ".join(map(str, shape))

    table = [("name", "module", "output", "name:input", "note")]
    table += [(r.name, r.kind, text(r.output_shape), text(r.input_shape), r.note) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 4 else cell for i, cell in enumerate(row)).rstrip()
             for row in table]
    return "\n".join(lines)
