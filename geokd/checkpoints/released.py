"""Read the GKD authors' released pickles without trusting them.

The released files are ``torch.save({'net': DataParallel(model)})``: a pickle of whole
modules whose classes (``models.preact_resnet.PreActWideResNet``…) are not importable
here. ``torch.load(weights_only=False)`` would import and call whatever the pickle names,
so this module reads the pickle with an unpickler that

* resolves no global by import: a short allow-list maps the names a module pickle needs
  (``collections.OrderedDict``, the tensor/parameter rebuild functions, the ``torch.*Storage``
  dtype markers, ``torch.device``) to local, inert replacements, and module classes
  (``torch.nn.*`` and the authors' ``models.*``) to stand-ins that only record their state;
* refuses every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``…)
  with :class:`~geokd.errors.CheckpointError` before anything is called;
* allows ``BUILD`` (``__setstate__``) on stand-ins only, so no real object's state hook runs;
* creates no tensor while unpickling: storages and tensors are recorded as references and
  materialised afterwards from raw bytes, with every offset, size and stride bounds-checked.

Both torch serialisation formats are read: the legacy stream format of the released files
(torch < 1.6) and the zip format of newer ``torch.save``.

Where the released files are is one setting, read by :func:`released_dir`: the environment
variable ``GEOKD_RELEASED_DIR`` (``geokd --released-dir DIR`` sets it for one command), else
``../shared/graph_kd`` beside the repository checkout when that folder exists.

Examples
--------
>>> import io, pickle
>>> hostile = b"cos\\nsystem\\n(S'echo owned'\\ntR."
>>> try:
...     restricted_loads(hostile)
... except CheckpointError as exc:
...     print(str(exc)[:60])
refused global 'os.system': this pickle tries to import or c
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from geokd.errors import CheckpointError, ConfigError

__all__ = ["ModuleStandIn", "load_released_state_dict", "restricted_loads", "extract_state_dict",
           "released_dir", "released_dir_problem"]

# ----------------------------------------------------------------------------- where they are

#: The environment variable naming the folder of the GKD authors' released networks.
RELEASED_DIR_ENV = "GEOKD_RELEASED_DIR"
#: The command-line option that sets :data:`RELEASED_DIR_ENV` for one ``geokd`` command.
RELEASED_DIR_OPTION = "--released-dir"
#: Set to 1 (as ``.ci/run`` does) to make a missing folder a test failure instead of a skip.
REQUIRE_RELEASED_ENV = "GEOKD_REQUIRE_RELEASED"
#: The fallback, used only when it exists: ``../shared/graph_kd`` beside the repository checkout.
DEFAULT_RELEASED_DIR = Path(__file__).resolve().parents[3] / "shared" / "graph_kd"
#: What the folder holds and where it comes from (for error messages and skip reasons).
RELEASED_ORIGIN = (
    "the 21 networks published with the GKD paper by its authors (github.com/cadurosar/graph_kd, "
    "MIT licence): WideResNet28-1_0.pth, GKD_*.pth and RKD_*.pth, with the SHA256SUMS that pins them"
)


def _env_released_dir() -> Path | None:
    value = os.environ.get(RELEASED_DIR_ENV, "").strip()
    return Path(os.path.abspath(os.path.expanduser(value))) if value else None


def released_dir_problem() -> str | None:
    """Why :func:`released_dir` has no existing folder to give, or None when it has one.

    The message names the setting (``GEOKD_RELEASED_DIR``, ``geokd --released-dir``), the
    folder looked at and where the files come from; tests skip with it.
    """
    folder = _env_released_dir()
    if folder is not None:
        if folder.is_dir():
            return None
        state = "is not a folder" if folder.exists() else "does not exist"
        where = f"{RELEASED_DIR_ENV} names {folder}, which {state}"
    elif DEFAULT_RELEASED_DIR.is_dir():
        return None
    else:
        where = (f"{RELEASED_DIR_ENV} is not set and the default folder {DEFAULT_RELEASED_DIR} "
                 "(../shared/graph_kd beside the checkout) does not exist")
    return (f"the GKD authors' released networks are not available: {where}. Set {RELEASED_DIR_ENV}=DIR "
            f"(or pass geokd {RELEASED_DIR_OPTION} DIR) to a folder holding {RELEASED_ORIGIN}")


def released_dir() -> Path:
    """The folder of the GKD authors' released networks (``WideResNet28-1_0.pth``, ``GKD_*.pth``…).

    The one place this location is decided: ``$GEOKD_RELEASED_DIR`` when set (as given,
    made absolute; ``geokd --released-dir DIR`` sets it for the process), else
    :data:`DEFAULT_RELEASED_DIR` (``../shared/graph_kd`` beside the repository checkout),
    only if that folder exists.

    Raises
    ------
    FileNotFoundError
        When the variable is unset and the default folder does not exist; the message
        names the variable, the option and where the files come from.

    Examples
    --------
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"GEOKD_RELEASED_DIR": "/data/graph_kd"}):
    ...     print(released_dir())
    /data/graph_kd
    >>> with mock.patch.dict(os.environ, {"GEOKD_RELEASED_DIR": ""}), mock.patch(
    ...         "geokd.checkpoints.released.DEFAULT_RELEASED_DIR", Path("/nowhere/shared/graph_kd")):
    ...     released_dir()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: the GKD authors' released networks are not available: GEOKD_RELEASED_DIR is not set and the default folder /nowhere/shared/graph_kd (...) does not exist. Set GEOKD_RELEASED_DIR=DIR (or pass geokd --released-dir DIR) to a folder holding ...
    """
    folder = _env_released_dir()
    if folder is not None:
        return folder
    if DEFAULT_RELEASED_DIR.is_dir():
        return DEFAULT_RELEASED_DIR
    raise FileNotFoundError(released_dir_problem())


_RELEASED_VAR = re.compile(r"\$(?:\{%s\}|%s(?!\w))" % (RELEASED_DIR_ENV, RELEASED_DIR_ENV))
_ANY_VAR = re.compile(r"\$(?:\{([^}]*)\}|(\w+))")
GLOB_CHARS = re.compile(r"[*?[]")


def fill_released_dir(text: str) -> str:
    """``text`` with ``$GEOKD_RELEASED_DIR`` / ``${GEOKD_RELEASED_DIR}`` replaced by :func:`released_dir`.

    Only needed while the variable is unset (then the default folder stands in for it, or
    :func:`released_dir` raises its explanation); a set variable is left for
    :func:`os.path.expandvars`.

    >>> import tempfile
    >>> from unittest import mock
    >>> with tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, {"GEOKD_RELEASED_DIR": ""}), \\
    ...         mock.patch("geokd.checkpoints.released.DEFAULT_RELEASED_DIR", Path(folder)):
    ...     fill_released_dir("$GEOKD_RELEASED_DIR/GKD_*.pth") == f"{folder}/GKD_*.pth"
    True
    """
    if _env_released_dir() is not None or not _RELEASED_VAR.search(text):
        return text
    folder = str(released_dir())
    return _RELEASED_VAR.sub(lambda _: folder, text)  # a function's result is not escape-processed


def unset_variables(text: str) -> list[str]:
    """Names of the ``$VAR`` / ``${VAR}`` left in ``text`` after :func:`os.path.expandvars`.

    >>> unset_variables("$GEOKD_SURELY_UNSET_VARIABLE/x/${ALSO_NOT_SET_HERE}")
    ['GEOKD_SURELY_UNSET_VARIABLE', 'ALSO_NOT_SET_HERE']
    """
    return [m.group(1) or m.group(2) for m in _ANY_VAR.finditer(text) if (m.group(1) or m.group(2))]


def unset_variable_message(text: str, names) -> str:
    """Error wording for ``text`` whose variables ``names`` are not set."""
    names = list(names)
    listed = ", ".join(f"${n}" for n in names)
    message = f"{text!r} uses {listed}, which {'is' if len(names) == 1 else 'are'} not set"
    if RELEASED_DIR_ENV in names:
        message += f" (set {RELEASED_DIR_ENV}=DIR or pass geokd {RELEASED_DIR_OPTION} DIR)"
    return message


def expand_variables(text: str) -> str:
    """``text`` with its ``$VARS`` expanded, ``$GEOKD_RELEASED_DIR`` with its default folder.

    The one expansion of every path a user writes (command-line globs, study files); an
    unset variable is a :class:`~geokd.errors.ConfigError` naming it (left as a literal
    ``$NAME`` path it would fail later, far from here), and an unset
    ``$GEOKD_RELEASED_DIR`` without its default folder the ``FileNotFoundError`` of
    :func:`released_dir`.

    >>> expand_variables("$GEOKD_SURELY_UNSET_VARIABLE/x.pt")
    Traceback (most recent call last):
    ...
    geokd.errors.ConfigError: '$GEOKD_SURELY_UNSET_VARIABLE/x.pt' uses $GEOKD_SURELY_UNSET_VARIABLE, which is not set
    """
    expanded = os.path.expandvars(fill_released_dir(text))
    unset = unset_variables(expanded)
    if unset:
        raise ConfigError(unset_variable_message(text, unset))
    return expanded


def glob_matches(pattern: str, expanded: str) -> list[str]:
    """The files the glob ``expanded`` (``pattern`` with its variables and folder applied)
    matches, in natural order (``seed2`` before ``seed10``); none is a ``ConfigError``
    saying why (:func:`no_match_message`).

    >>> glob_matches("/nowhere/runs/*.pt", "/nowhere/runs/*.pt")
    Traceback (most recent call last):
    ...
    geokd.errors.ConfigError: no file matches '*.pt' in /nowhere/runs (that folder does not exist)
    """
    import glob

    matches = glob.glob(expanded)
    if not matches:
        raise ConfigError(no_match_message(pattern, expanded))
    return sorted(matches, key=_natural_key)


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _looks_released(pattern: str, folder: str, rest: str) -> bool:
    if RELEASED_DIR_ENV in pattern or os.path.basename(folder) == "graph_kd":
        return True
    if rest.startswith(("GKD_", "RKD_", "WideResNet28")):
        return True
    candidates = [DEFAULT_RELEASED_DIR] + ([_env_released_dir()] if _env_released_dir() else [])
    return any(os.path.normpath(folder) == os.path.normpath(c) for c in candidates)


def no_match_message(pattern: str, expanded: str | None = None) -> str:
    """Why the path or glob ``pattern`` (``expanded``: with variables and base folder applied)
    matched nothing: the folder looked in, whether it exists, and the released networks'
    setting when the pattern looks like their folder.

    >>> no_match_message("/nowhere/shared/graph_kd/GKD_*.pth")
    "no file matches 'GKD_*.pth' in /nowhere/shared/graph_kd (that folder does not exist; set GEOKD_RELEASED_DIR or --released-dir)"
    >>> no_match_message("/nowhere/runs/*/seed*")
    "no file matches '*/seed*' in /nowhere/runs (that folder does not exist)"
    """
    expanded = os.path.abspath(expanded if expanded is not None else pattern)
    parts = Path(expanded).parts
    cut = len(parts) - 1
    for i, part in enumerate(parts[:-1]):
        if GLOB_CHARS.search(part):
            cut = i
            break
    folder = os.path.join(*parts[:cut]) if cut else os.sep
    rest = "/".join(parts[cut:])
    state = "that folder exists" if os.path.isdir(folder) else "that folder does not exist"
    if _looks_released(pattern, folder, rest):
        state += f"; set {RELEASED_DIR_ENV} or {RELEASED_DIR_OPTION}"
    return f"no file matches {rest!r} in {folder} ({state})"

# torch.save's legacy stream format starts with this pickled int.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}

# Module paths whose classes become inert stand-ins. The authors' code lives in "models.".
DEFAULT_CLASS_PREFIXES = ("torch.nn.", "models.")
_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class _StorageType:
    """Marker for a ``torch.<X>Storage`` global: only its dtype is used."""

    name: str
    dtype: torch.dtype


@dataclass
class _StorageRef:
    key: str
    dtype: torch.dtype
    numel: int
    location: str
    view: tuple | None = None  # (view_key, offset, numel) of a legacy storage view


@dataclass
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple
    is_parameter: bool = False


class ModuleStandIn:
    """Inert replacement for a pickled ``nn.Module`` class: it only keeps its state dict.

    ``qualified_name`` names the class the pickle referred to. Instances are created empty
    (``NEWOBJ`` with no arguments) and filled by ``__setstate__``; calling the class with
    arguments, as a hostile ``REDUCE`` would, is refused.
    """

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        if args or kwargs:
            raise CheckpointError(
                f"refused call of class {self.qualified_name!r} with arguments: "
                "a module pickle only creates modules empty and sets their state"
            )
        self.state: dict = {}

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            raise CheckpointError(
                f"refused call of class {cls.qualified_name!r} with arguments: "
                "a module pickle only creates modules empty and sets their state"
            )
        instance = object.__new__(cls)
        instance.state = {}
        return instance

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
            state = state[0]
        if not isinstance(state, dict):
            raise CheckpointError(
                f"module {self.qualified_name!r}: expected its pickled state to be a dict, got {type(state).__name__}"
            )
        self.state = dict(state)

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualified_name}>"


def _device_stand_in(*args):
    # torch.device('cuda', 0) in the pickle: keep a string, never build a device.
    if not all(isinstance(a, (str, int)) for a in args) or len(args) > 2:
        raise CheckpointError(f"refused torch.device arguments {args!r}")
    return ":".join(str(a) for a in args)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"tensor rebuild expected a storage, got {type(storage).__name__}")
    for name, value in (("size", size), ("stride", stride)):
        if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise CheckpointError(f"tensor rebuild: {name} must be a tuple of ints, got {value!r}")
    if not isinstance(storage_offset, int) or len(size) != len(stride):
        raise CheckpointError(f"tensor rebuild: bad offset/size/stride {storage_offset!r}, {size!r}, {stride!r}")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise CheckpointError(f"parameter rebuild expected a tensor, got {type(data).__name__}")
    data.is_parameter = True
    return data


def _safe_set(items=()):
    # Newer modules pickle `_non_persistent_buffers_set` as set([...]) of names.
    items = list(items)
    if not all(isinstance(i, str) for i in items):
        raise CheckpointError("refused set() of non-string items")
    return set(items)


_ALLOWED_FUNCTIONS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "device"): _device_stand_in,
    ("builtins", "set"): _safe_set,
    ("__builtin__", "set"): _safe_set,
}


class _RestrictedUnpickler(pickle._Unpickler):  # the Python implementation: its dispatch can be narrowed
    """Unpickler that imports nothing and calls only the allow-listed replacements."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, class_prefixes=DEFAULT_CLASS_PREFIXES, storages=None):
        super().__init__(file, encoding="latin1")
        self._class_prefixes = tuple(class_prefixes)
        self._stand_ins: dict[tuple[str, str], type] = {}
        self.storages: dict[str, _StorageRef] = {} if storages is None else storages
        self.classes_seen: set[str] = set()

    def find_class(self, module, name):
        key = (module, name)
        if key in _ALLOWED_FUNCTIONS:
            return _ALLOWED_FUNCTIONS[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if _CLASS_NAME.match(name) and any(module.startswith(p) for p in self._class_prefixes):
            qualified = f"{module}.{name}"
            self.classes_seen.add(qualified)
            if key not in self._stand_ins:
                self._stand_ins[key] = type(name, (ModuleStandIn,), {"qualified_name": qualified})
            return self._stand_ins[key]
        if self._class_prefixes:
            classes = "classes under " + ", ".join(repr(p) for p in self._class_prefixes)
        else:  # e.g. a legacy file's header and storage list, which hold no modules
            classes = "no classes (no module class prefix is admitted in this part of the file)"
        raise CheckpointError(
            f"refused global '{module}.{name}': this pickle tries to import or call something other "
            "than module state and tensors (allowed: collections.OrderedDict, torch tensor/parameter "
            f"rebuilds, torch.*Storage, torch.device, and {classes}); "
            "nothing from the file was run"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"unexpected persistent id {pid!r} in checkpoint pickle")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            # Legacy format: ('module', class, source_file, source); the class was already
            # resolved (to a stand-in) by find_class.
            return pid[1]
        if kind != "storage":
            raise CheckpointError(f"unexpected persistent id kind {kind!r} in checkpoint pickle")
        if len(pid) == 6:  # legacy: storage_type, root_key, location, numel, view_metadata
            storage_type, key, location, numel, view = pid[1:]
        elif len(pid) == 5:  # zip: storage_type, key, location, numel
            storage_type, key, location, numel = pid[1:]
            view = None
        else:
            raise CheckpointError(f"malformed storage record {pid!r}")
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"storage record names {storage_type!r}, not a torch storage type")
        if not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"storage {key!r}: bad element count {numel!r}")
        key = str(key)
        root = self.storages.get(key)
        if root is None:
            root = _StorageRef(key, storage_type.dtype, numel, str(location))
            self.storages[key] = root
        elif root.dtype != storage_type.dtype:
            raise CheckpointError(f"storage {key!r} is used with two dtypes ({root.dtype}, {storage_type.dtype})")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, (int, str)) for v in view)):
            raise CheckpointError(f"malformed storage view {view!r}")
        return _StorageRef(key, root.dtype, root.numel, root.location, view=(str(view[0]), int(view[1]), int(view[2])))

    def _load_build_stand_ins_only(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, ModuleStandIn):
            raise CheckpointError(
                f"refused to set the state of a {type(inst).__name__}: only module stand-ins accept pickled state"
            )
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = _load_build_stand_ins_only


def restricted_loads(data: bytes, *, class_prefixes=DEFAULT_CLASS_PREFIXES):
    """Unpickle ``data`` with the restricted unpickler (no storages resolved).

    Returns the object tree with modules as :class:`ModuleStandIn` and tensors as
    unresolved references; mainly for tests and for inspecting a pickle safely.
    """
    return _unpickle(io.BytesIO(data), class_prefixes=class_prefixes)[0]


def _unpickle(stream, *, class_prefixes, storages=None):
    unpickler = _RestrictedUnpickler(stream, class_prefixes=class_prefixes, storages=storages)
    try:
        obj = unpickler.load()
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"cannot read the pickle: {type(exc).__name__}: {exc} (truncated or not a torch file?)") from None
    return obj, unpickler


# ----------------------------------------------------------------------------- formats


def _read_legacy(path: str, *, class_prefixes) -> tuple[object, dict[str, torch.Tensor], set[str]]:
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = []
        for what in ("magic number", "protocol version", "system info"):
            header.append(_unpickle(f, class_prefixes=())[0])
        if header[0] != _LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a torch legacy file (bad magic number)")
        if header[1] != 1001:
            raise CheckpointError(f"{path}: unsupported legacy protocol version {header[1]!r} (expected 1001)")
        sys_info = header[2] if isinstance(header[2], dict) else {}
        if sys_info.get("little_endian", True) is not True:
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        obj, unpickler = _unpickle(f, class_prefixes=class_prefixes)
        keys = _unpickle(f, class_prefixes=())[0]
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError(f"{path}: malformed storage key list")
        raw: dict[str, torch.Tensor] = {}
        for key in keys:
            ref = unpickler.storages.get(key)
            if ref is None:
                raise CheckpointError(f"{path}: storage {key!r} is listed but never used")
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: truncated file: storage {key!r} is missing")
            (numel,) = struct.unpack("<q", head)
            if numel != ref.numel:
                raise CheckpointError(f"{path}: storage {key!r} holds {numel} elements, the pickle says {ref.numel}")
            nbytes = numel * torch.empty((), dtype=ref.dtype).element_size()
            remaining = file_size - f.tell()
            if nbytes > remaining:  # checked before reading, so a forged count cannot exhaust memory
                raise CheckpointError(
                    f"{path}: truncated file: storage {key!r} needs {nbytes} bytes, only {remaining} remain"
                )
            payload = f.read(nbytes)
            if len(payload) != nbytes:
                raise CheckpointError(
                    f"{path}: truncated file: storage {key!r} needs {nbytes} bytes, only {len(payload)} remain"
                )
            raw[key] = _bytes_to_tensor(payload, ref.dtype)
        missing = set(unpickler.storages) - set(raw)
        if missing:
            raise CheckpointError(f"{path}: truncated file: storages {sorted(missing)[:5]} have no data")
    return obj, raw, unpickler.classes_seen


def _read_zip(path: str, *, class_prefixes):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: cannot open the zip archive ({exc}); truncated file?") from None
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        try:
            obj, unpickler = _unpickle(io.BytesIO(archive.read(pickles[0])), class_prefixes=class_prefixes)
            raw = {}
            for key, ref in unpickler.storages.items():
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise CheckpointError(f"{path}: storage {key!r} is missing from the archive")
                payload = archive.read(member)
                nbytes = ref.numel * torch.empty((), dtype=ref.dtype).element_size()
                if len(payload) != nbytes:
                    raise CheckpointError(f"{path}: storage {key!r} has {len(payload)} bytes, expected {nbytes}")
                raw[key] = _bytes_to_tensor(payload, ref.dtype)
        except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
            raise CheckpointError(f"{path}: damaged archive ({exc}); truncated file?") from None
    return obj, raw, unpickler.classes_seen


def _bytes_to_tensor(payload: bytes, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.frombuffer(payload, dtype=np.int16).copy()).view(torch.bfloat16)
    numpy_dtype = torch.empty((), dtype=dtype).numpy().dtype
    return torch.from_numpy(np.frombuffer(payload, dtype=numpy_dtype).copy())


def _materialise(ref: _TensorRef, raw: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    storage = raw[ref.storage.key]
    base_offset, limit = 0, storage.numel()
    if ref.storage.view is not None:
        _, base_offset, view_numel = ref.storage.view
        if base_offset < 0 or base_offset + view_numel > storage.numel():
            raise CheckpointError(f"{name}: storage view out of bounds")
        limit = base_offset + view_numel
    if ref.offset < 0 or any(s < 0 for s in ref.size) or any(st < 0 for st in ref.stride):
        raise CheckpointError(f"{name}: negative offset, size or stride ({ref.offset}, {ref.size}, {ref.stride})")
    start = base_offset + ref.offset
    if all(s > 0 for s in ref.size):
        last = start + sum((s - 1) * st for s, st in zip(ref.size, ref.stride))
        if last >= limit:
            raise CheckpointError(
                f"{name}: tensor of size {ref.size} and stride {ref.stride} at offset {ref.offset} "
                f"reads past its storage of {limit - base_offset} elements"
            )
    return torch.as_strided(storage, ref.size, ref.stride, start).clone()


# ----------------------------------------------------------------------------- state dicts


def extract_state_dict(obj, raw: dict[str, torch.Tensor] | None = None) -> collections.OrderedDict:
    """Collect ``_parameters`` and ``_buffers`` of a stand-in module tree, by module path.

    A ``DataParallel``/``DistributedDataParallel`` wrapper's ``module.`` prefix is dropped.
    """
    raw = raw or {}
    state: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()

    def visit(module: ModuleStandIn, prefix: str) -> None:
        module_state = module.state
        for slot in ("_parameters", "_buffers"):
            entries = module_state.get(slot, {})
            if not isinstance(entries, dict):
                raise CheckpointError(f"module {prefix or '<root>'}: {slot} is a {type(entries).__name__}, not a dict")
            for name, value in entries.items():
                if value is None:
                    continue
                if not isinstance(value, _TensorRef):
                    raise CheckpointError(f"{prefix}{name}: expected a tensor, got {type(value).__name__}")
                state[prefix + str(name)] = _materialise(value, raw, prefix + str(name))
        children = module_state.get("_modules", {})
        if not isinstance(children, dict):
            raise CheckpointError(f"module {prefix or '<root>'}: _modules is not a dict")
        for name, child in children.items():
            if child is None:
                continue
            if not isinstance(child, ModuleStandIn):
                raise CheckpointError(f"{prefix}{name}: expected a module, got {type(child).__name__}")
            visit(child, f"{prefix}{name}.")

    root = obj
    while isinstance(root, ModuleStandIn) and root.qualified_name.endswith(("DataParallel", "DistributedDataParallel")):
        wrapped = root.state.get("_modules", {}).get("module")
        if not isinstance(wrapped, ModuleStandIn):
            break
        root = wrapped
    if isinstance(root, ModuleStandIn):
        visit(root, "")
    elif isinstance(root, dict) and all(isinstance(v, _TensorRef) for v in root.values()) and root:
        for name, value in root.items():
            key = str(name)
            key = key[len("module."):] if key.startswith("module.") else key
            state[key] = _materialise(value, raw, key)
    else:
        raise CheckpointError(f"expected a pickled module or a state dict, found {type(root).__name__}")
    return state


def _find_network(obj, path: str):
    """The network inside a released file: the 'net' entry, a 'state_dict', or the object itself."""
    if isinstance(obj, ModuleStandIn):
        return obj, {}
    if isinstance(obj, dict):
        extras = {k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool)) and isinstance(k, str)}
        for key in ("net", "model", "state_dict", "model_state_dict"):
            if key in obj:
                return obj[key], extras
        if obj and all(isinstance(v, _TensorRef) for v in obj.values()):
            return obj, {}
        raise CheckpointError(
            f"{path}: no network found: expected a module or a dict with 'net'/'state_dict', got keys {sorted(map(str, obj))[:10]}"
        )
    raise CheckpointError(f"{path}: expected a pickled module or dict at the top level, got {type(obj).__name__}")


def load_released_state_dict(path, *, class_prefixes=DEFAULT_CLASS_PREFIXES):
    """Read a whole-module pickle (e.g. the GKD release) into a plain state dict, safely.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``torch.save`` (legacy or zip format) holding a module, a
        ``DataParallel`` module, a ``{'net': module, …}`` dict or a state dict.
    class_prefixes : tuple of str
        Module paths whose classes are replaced by inert stand-ins. Everything else
        named by the pickle is refused.

    Returns
    -------
    state_dict : collections.OrderedDict[str, torch.Tensor]
        Parameters and buffers by module path, ``module.`` prefix removed, on the CPU.
    info : dict
        ``format`` ("legacy" or "zip"), ``classes`` (the class names the pickle used),
        ``extras`` (scalar entries beside the network, e.g. accuracy or epoch).

    Raises
    ------
    geokd.errors.CheckpointError
        For a hostile pickle (a refused global), a truncated or damaged file, or
        inconsistent tensor records.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        obj, raw, classes, fmt = *_read_zip(path, class_prefixes=class_prefixes), "zip"
    elif head[:1] == b"\x80":
        obj, raw, classes, fmt = *_read_legacy(path, class_prefixes=class_prefixes), "legacy"
    else:
        raise CheckpointError(f"{path}: not a torch checkpoint (starts with {head!r})")
    network, extras = _find_network(obj, path)
    try:
        state = extract_state_dict(network, raw)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if not state:
        raise CheckpointError(f"{path}: the pickled network holds no parameters")
    return state, {"format": fmt, "classes": sorted(classes), "extras": extras}


def infer_wrn_config(state_dict) -> dict:
    """Depth, width, classes and input channels of a released WRN state dict.

    Raises CheckpointError if the parameter names are not those of the GKD release.
    """
    required = ("conv1.weight", "layer1.0.conv1.weight", "layer3.0.conv1.weight", "linear.weight")
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise CheckpointError(
            f"not a GKD wide ResNet state dict: missing {', '.join(missing)} "
            f"(found {', '.join(list(state_dict)[:6])}…)"
        )
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"layer1\.(\d+)\.", k))}
    width = state_dict["layer1.0.conv1.weight"].shape[0]
    return {
        "name": "wrn",
        "depth": 6 * (max(blocks) + 1) + 4,
        "widen_factor": width / 16,
        "num_classes": int(state_dict["linear.weight"].shape[0]),
        "in_channels": int(state_dict["conv1.weight"].shape[1]),
    }
