"""Datasets from the user's code: ``MODULE:CALLABLE[?KEY=VALUE&...]``.

The callable (a function or a class, e.g. ``torchvision.datasets:CIFAR10?root='/data'``)
must return a map-style dataset (``__len__`` and ``__getitem__``) of ``(image, label)``
pairs. The split is passed as ``split="train"``/``"test"`` if the callable takes a
``split`` parameter, else as ``train=True``/``False`` if it takes ``train``; otherwise it is
called once and its data serves both splits. Keyword values are Python literals, else
strings (:func:`geokd.models.specs.parse_keywords`).

Images may be uint8 tensors ``(C, H, W)`` or ``(H, W)``, float tensors in [0, 1] holding
exactly ``k/255`` (what ``ToTensor`` gives; converted losslessly), integer tensors in
0..255, or PIL images. geokd stores 8-bit pixels and normalizes them itself, so
normalized inputs are refused rather than silently quantized.

Examples
--------
>>> is_user_spec("mypackage.data:make_set?n=10"), is_user_spec("cifar10")
(True, False)
>>> to_uint8(torch.tensor([[0.0, 1.0]]), index=0, where="demo").tolist()
[[[0, 255]]]
>>> to_uint8(torch.tensor([[0.5]]), index=3, where="demo")
Traceback (most recent call last):
...
ValueError: demo: item 3 holds float pixels in [0.5, 0.5] that are not multiples of 1/255; geokd stores 8-bit pixels and normalizes them itself (with mean/std), so return unnormalized images: uint8, PIL, or floats k/255 as ToTensor gives (drop any Normalize transform)
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import torch

from geokd.data.fetch import progress_bar

_SPEC = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)(?:\?(?P<query>.*))?$")
# Float pixels further than this (in units of one 8-bit level) from k/255 are refused;
# float32 k/255 lands within ~1e-5 of a level, so this loses nothing and admits no rounding.
_LEVEL_TOLERANCE = 1e-3
_PIL_TO_RGB = ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def is_user_spec(text) -> bool:
    """Whether ``text`` has the form ``MODULE:CALLABLE[?k=v&...]`` (nothing is imported)."""
    return isinstance(text, str) and bool(_SPEC.match(text))


def parse_user_spec(text: str) -> tuple[str, str, dict]:
    """``"pkg.mod:make?n=3"`` to ``("pkg.mod", "make", {"n": 3})``.

    Examples
    --------
    >>> parse_user_spec("pkg.mod:make?n=3&kind=small")
    ('pkg.mod', 'make', {'n': 3, 'kind': 'small'})
    """
    # Imported here: the same keyword syntax as network specs, without loading the models at import.
    from geokd.models.specs import parse_keywords

    match = _SPEC.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected a dataset spec 'MODULE:CALLABLE[?KEY=VALUE&...]', got {text!r}")
    return match.group("module"), match.group("attr"), parse_keywords(match.group("query") or "", where=text)


def _split_keywords(factory, split: str, spec: str, kwargs: dict) -> tuple[dict, bool]:
    """The keyword that tells ``factory`` the split, and whether it takes one at all."""
    for reserved in ("split", "train"):
        if reserved in kwargs:
            raise ValueError(f"{spec}: do not pass {reserved!r} in the spec; geokd passes the split itself")
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature: call once
        return {}, False
    if "split" in parameters:
        return {"split": split}, True
    if "train" in parameters:
        return {"train": split == "train"}, True
    return {}, False


def to_uint8(image, *, index: int, where: str) -> torch.Tensor:
    """One item's image as a uint8 ``(C, H, W)`` tensor, losslessly, or a clear error."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode in ("1", "LA"):
            image = image.convert("L")
        elif image.mode in _PIL_TO_RGB:
            image = image.convert("RGB")
        elif image.mode not in ("L", "RGB"):
            raise ValueError(f"{where}: item {index} is a PIL image of mode {image.mode!r}; "
                             "expected 8-bit pixels (modes L, RGB, P, RGBA...)")
        array = np.array(image, dtype=np.uint8)  # a copy: PIL's buffer is read-only
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))
    if not isinstance(image, torch.Tensor):
        hint = " (convert with torch.from_numpy, channels first)" if isinstance(image, np.ndarray) else ""
        raise ValueError(f"{where}: item {index} has an image of type {type(image).__name__}; "
                         f"expected a torch tensor or a PIL image{hint}")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3:
        raise ValueError(f"{where}: item {index} has an image of shape {tuple(image.shape)}; expected (C, H, W) or (H, W)")
    if image.dtype == torch.uint8:
        return image.contiguous()
    if image.dtype == torch.bool or image.is_complex():
        raise ValueError(f"{where}: item {index} has {image.dtype} pixels; expected uint8 or floats in [0, 1]")
    values = image.detach().to(torch.float64)
    low, high = float(values.min()), float(values.max())
    if image.is_floating_point():
        levels = values * 255.0
        rounded = levels.round()
        if low < 0 or high > 1 or float((levels - rounded).abs().max()) > _LEVEL_TOLERANCE:
            raise ValueError(
                f"{where}: item {index} holds float pixels in [{low:.4g}, {high:.4g}] that are not "
                "multiples of 1/255; geokd stores 8-bit pixels and normalizes them itself (with "
                "mean/std), so return unnormalized images: uint8, PIL, or floats k/255 as ToTensor "
                "gives (drop any Normalize transform)"
            )
        return rounded.to(torch.uint8)
    if low < 0 or high > 255:
        raise ValueError(f"{where}: item {index} holds {image.dtype} pixels in {low:.0f}..{high:.0f}; "
                         "expected 8-bit values in 0..255")
    return image.to(torch.uint8)


def _label(label, *, index: int, where: str) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
        return int(label.item())
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label)
    raise ValueError(f"{where}: item {index} has a label of type {type(label).__name__} ({label!r}); expected an int")


def read_split(spec: str, *, split: str, image_size: int | None = None, progress: bool | None = None) -> dict:
    """Build the user's dataset for ``split`` and materialise it as uint8 tensors.

    Parameters
    ----------
    spec : str
        ``MODULE:CALLABLE[?KEY=VALUE&...]``.
    split : {"train", "test"}
    image_size : int, optional
        Resize each image's shorter side to ``image_size`` and centre-crop it square;
        without it all items must have the same shape.
    progress : bool, optional
        A tqdm bar while materialising (default: only on an interactive terminal).

    Returns
    -------
    dict
        ``images`` (uint8), ``labels`` (int64), ``num_classes``, ``source`` and
        ``all_splits`` (True when the callable takes no split and serves both).
    """
    from torchvision.transforms.v2 import functional as F

    from geokd.models.specs import import_callable

    module_name, attr, kwargs = parse_user_spec(spec)
    factory = import_callable(module_name, attr, where=spec, returns="a dataset")
    split_kwargs, takes_split = _split_keywords(factory, split, spec, kwargs)
    dataset = factory(**kwargs, **split_kwargs)
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise ValueError(f"{spec}: returned a {type(dataset).__name__}, expected a map-style dataset "
                         "(with __len__ and __getitem__; an iterable-only dataset cannot be indexed)")
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{spec}: the {split} dataset is empty")
    images, labels, first_shape = None, np.empty(n, dtype=np.int64), None
    with progress_bar(total=n, desc=f"{spec}: materialising {split}", progress=progress) as bar:
        for i in range(n):
            item = dataset[i]
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"{spec}: item {i} is a {type(item).__name__}, expected an (image, label) pair")
            image = to_uint8(item[0], index=i, where=spec)
            if image_size is not None:
                image = F.center_crop(F.resize(image, [image_size]), [image_size, image_size])
            if images is None:
                first_shape = tuple(image.shape)
                images = torch.empty((n, *first_shape), dtype=torch.uint8)
            elif tuple(image.shape) != first_shape:
                raise ValueError(f"{spec}: item {i} has an image of shape {tuple(image.shape)} but item 0 "
                                 f"has {first_shape}; pass image_size=N (CLI: --image-size N) to resize the "
                                 "shorter side to N and centre-crop N x N")
            images[i] = image
            labels[i] = _label(item[1], index=i, where=spec)
            bar.update(1)
    classes = getattr(dataset, "classes", None)
    num_classes = len(classes) if classes is not None else int(labels.max()) + 1
    how = (f"called with {next(iter(split_kwargs))}={next(iter(split_kwargs.values()))!r}" if takes_split
           else "called once: it takes no split or train parameter, so the same data serves both splits")
    return {"images": images, "labels": torch.from_numpy(labels), "num_classes": num_classes,
            "source": f"{spec} ({how})", "all_splits": not takes_split}
