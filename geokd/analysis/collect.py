"""Activations of a network over an evaluation set, read at its sensing points.

One forward pass over the evaluation images gives every network's final decisions (for
the output agreement, on the whole set) and, for the inputs of the node set only, the
flattened features of each sensing point (for the graphs). Features are kept as float32
``(N_nodes, D)`` arrays (1,000 nodes of the teacher's ``layer1``, 16·32·32 values, take
65 MB), or, given a ``store``, written batch by batch to an on-disk activation store
(:mod:`geokd.analysis.activation_store`) and read back in blocks: a whole split's features
(3.3 GB for that layer on CIFAR-10's training set) never sit in memory.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Activations:
    """What the analysis needs from one network.

    Attributes
    ----------
    layers : tuple of str
        Sensing-point names, in order.
    features : dict[str, numpy.ndarray or StoredRows]
        Per layer, ``(N_nodes, D)`` float32 features of the node set (rows in node order), or
        the same rows in an activation store
        (:class:`geokd.analysis.activation_store.StoredRows`).
    node_indices : numpy.ndarray
        Positions of the node set in the evaluation set.
    predictions : numpy.ndarray
        ``(N,)`` predicted class of every input of the evaluation set.
    """

    layers: tuple[str, ...]
    features: dict[str, np.ndarray]
    node_indices: np.ndarray
    predictions: np.ndarray

    @property
    def node_predictions(self) -> np.ndarray:
        return self.predictions[self.node_indices]


def _progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def normalize_images(images: torch.Tensor, *, mean, std, device) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` pixels to ``((x / 255) - mean) / std`` float32 on ``device``.

    Examples
    --------
    >>> normalize_images(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8), mean=(0.5,), std=(0.25,),
    ...                  device="cpu").item()
    2.0
    """
    x = images.to(device=device, dtype=torch.float32) / 255.0
    shape = (1, -1, 1, 1)
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(shape)
    return (x - m) / s


@torch.no_grad()
def collect_activations(model: nn.Module, images: torch.Tensor, *, node_indices, layers=None,
                        mean, std, batch_size: int = 500, device="cpu", progress: bool | None = None,
                        description: str = "network", on_batch=None, store=None) -> Activations:
    """Run ``model`` (in eval mode) over ``images``; keep node-set features and all decisions.

    Parameters
    ----------
    model : torch.nn.Module
        A geokd model (``sensing_points``) or any module whose layer names are given.
    images : torch.Tensor
        ``(N, C, H, W)`` uint8 evaluation images.
    node_indices : array-like of int
        The node set: positions in ``images`` whose features are kept.
    layers : sequence of str, optional
        Sensing points to read; default ``model.sensing_points``.
    mean, std : sequence of float
        Per-channel normalization of pixels scaled to [0, 1] (the network's training one).
    batch_size : int
    device : str or torch.device
    progress : bool, optional
        Show a tqdm bar; default only on a terminal outside CI.
    on_batch : callable, optional
        Called as ``on_batch(n)`` after each batch of ``n`` images (e.g. a
        :class:`geokd.analysis.progress.Stage`'s ``advance``).
    store : geokd.analysis.activation_store.ActivationStore, optional
        Write the node features there, batch by batch, instead of holding them: each
        layer's ``features`` entry is then a
        :class:`~geokd.analysis.activation_store.StoredRows` (read back in blocks), and
        memory holds one batch whatever the node set's size.

    Examples
    --------
    >>> from geokd.models import build_model
    >>> net = build_model("wrn", depth=10, widen_factor=0.5, num_classes=3)
    >>> images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    >>> acts = collect_activations(net, images, node_indices=[4, 1], mean=(0.5,) * 3, std=(0.25,) * 3)
    >>> acts.features["layer1"].shape, acts.features["pool"].shape, acts.predictions.shape
    ((2, 512), (2, 32), (6,))
    """
    from tqdm import tqdm

    from geokd.models.taps import FeatureTaps

    if layers is None:
        layers = getattr(model, "sensing_points", None)
        if not layers:
            raise ValueError(f"{description}: expected layer names or a model with sensing_points, got neither")
    layers = tuple(layers)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"{description}: expected (N, C, H, W) uint8 images, got {getattr(images, 'dtype', type(images))}")
    n = images.shape[0]
    nodes = np.asarray(node_indices, dtype=np.int64)
    if nodes.ndim != 1 or nodes.size < 2 or nodes.min() < 0 or nodes.max() >= n:
        raise ValueError(f"{description}: expected at least 2 node indices in 0..{n - 1}, got {nodes.size} "
                         f"in range {nodes.min() if nodes.size else None}..{nodes.max() if nodes.size else None}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{description}: expected a positive integer batch_size, got {batch_size!r}")
    was_training = model.training
    model.eval().to(device)
    # Channels-last convolutions run about 1.4x faster on CPU (oneDNN's native layout); the
    # features are flattened in channel-major order all the same (reshape copies logically).
    was_channels_last = any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters())
    model.to(memory_format=torch.channels_last)
    taps = FeatureTaps(model, layers)
    # For every batch, which node-set rows it holds and where they go.
    order = np.argsort(nodes, kind="stable")
    sorted_nodes = nodes[order]
    features: dict[str, object] = {name: None for name in layers}
    predictions = np.empty(n, dtype=np.int64)
    show = _progress_enabled() if progress is None else progress
    try:
        for start in tqdm(range(0, n, batch_size), desc=description, disable=not show, leave=False):
            stop = min(start + batch_size, n)
            batch = normalize_images(images[start:stop], mean=mean, std=std, device=device)
            outputs = taps(batch.contiguous(memory_format=torch.channels_last))
            predictions[start:stop] = outputs.logits.argmax(dim=1).cpu().numpy()
            lo, hi = np.searchsorted(sorted_nodes, [start, stop])
            if lo == hi:
                if on_batch is not None:
                    on_batch(stop - start)
                continue
            rows = torch.as_tensor(sorted_nodes[lo:hi] - start, device=outputs.logits.device)
            for name, value in zip(layers, outputs.features):
                flat = value.index_select(0, rows).reshape(hi - lo, -1).float().cpu().numpy()
                if features[name] is None:
                    features[name] = (np.empty((nodes.size, flat.shape[1]), dtype=np.float32) if store is None else
                                      store.writer(name, num_rows=nodes.size, width=flat.shape[1],
                                                   label=f"{description} {name}"))
                if store is None:
                    features[name][order[lo:hi]] = flat
                else:
                    features[name].write(order[lo:hi], flat)
            if on_batch is not None:
                on_batch(stop - start)
        if store is not None:
            from geokd.analysis.memory_budget import release_freed_memory

            features = {name: writer.finish() for name, writer in features.items()}
            release_freed_memory()   # the forward pass's freed buffers, before the graphs' blocks are sized
    finally:
        close = getattr(taps, "close", None) or getattr(taps, "remove", None)
        if callable(close):
            close()
        model.train(was_training)
        if not was_channels_last:
            model.to(memory_format=torch.contiguous_format)
    return Activations(layers=layers, features=features, node_indices=nodes, predictions=predictions)
