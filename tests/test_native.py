"""geokd.native: the compiled kernels are built, cached, checked and refused with reasons.

The results of the batch-norm kernels themselves are tested against ``nn.BatchNorm2d``
in float64 in ``test_models_batchnorm.py`` (every test there runs with and without them).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from geokd.native import batchnorm_kernels, native_status
from geokd.native.build import NativeUnavailable, library_path, load_library, omp_runtimes


def test_kernels_run_here_on_torchs_own_openmp_runtime():
    # The CI machine has a C compiler and torch on GNU OpenMP: the fast path must be on.
    assert native_status() == {"batchnorm": True, "graphs": True, "reason": None}
    # Loading the library must not bring an OpenMP runtime of its own (whose threads would
    # fight ATen's for the cores): in a fresh process, the mapped runtimes are the same
    # before and after. (scikit-learn's own bundled libgomp may be there too; that is its.)
    script = (
        "import json, torch\n"
        "from geokd.native.build import load_library, omp_runtimes\n"
        "before = omp_runtimes()\n"
        "load_library('batchnorm'); load_library('graphs')\n"
        "print(json.dumps([before, omp_runtimes()]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == after and any("libgomp" in path for path in before), (before, after)


def test_a_corrupt_library_in_the_cache_is_rebuilt(tmp_path):
    target = library_path("batchnorm", cache=tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a shared object")  # a truncated or foreign file at the cached name
    library = load_library("batchnorm", cache=tmp_path)
    assert hasattr(library, "geokd_bn_forward_f32")
    assert target.read_bytes()[:4] == b"\x7fELF"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left


def test_the_build_key_follows_the_source(tmp_path, monkeypatch):
    import geokd.native.build as build

    before = library_path("batchnorm", cache=tmp_path)
    changed = tmp_path / "src"
    changed.mkdir()
    (changed / "batchnorm.c").write_text((build._SOURCES / "batchnorm.c").read_text() + "\n/* edited */\n")
    monkeypatch.setattr(build, "_SOURCES", changed)
    assert library_path("batchnorm", cache=tmp_path) != before


def test_a_failed_build_says_what_the_compiler_said(tmp_path, monkeypatch):
    import geokd.native.build as build

    broken = tmp_path / "src"
    broken.mkdir()
    (broken / "broken.c").write_text("int f(void) { return undeclared_name; }\n")
    monkeypatch.setattr(build, "_SOURCES", broken)
    with pytest.raises(NativeUnavailable, match="(?s)failed to build broken.c.*undeclared_name"):
        load_library("broken", cache=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "native").iterdir())  # no half-written library left


def test_an_unwritable_cache_is_named_not_raised_as_an_os_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    with pytest.raises(NativeUnavailable, match="cannot write the build to"):
        load_library("batchnorm", cache=blocker)


def test_no_compiler_and_disabling_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(NativeUnavailable, match="no C compiler found.*no-such-cc"):
        load_library("batchnorm", cache=tmp_path)
    monkeypatch.setenv("GEOKD_NATIVE", "0")
    with pytest.raises(NativeUnavailable, match="disabled by GEOKD_NATIVE=0"):
        load_library("batchnorm", cache=tmp_path)


@pytest.mark.parametrize("case", ["channels_first", "bfloat16", "weight_of_another_size", "rows"])
def test_the_kernels_refuse_what_would_take_them_out_of_bounds(case):
    kernels = batchnorm_kernels()
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    weight, rows = torch.ones(4), 9
    if case == "channels_first":
        x = x.contiguous()
    elif case == "bfloat16":
        x = x.bfloat16()
    elif case == "weight_of_another_size":
        weight = torch.ones(5)
    else:
        rows = 7
    with pytest.raises(ValueError, match="batch norm kernel: expected|do not divide"):
        kernels.forward(x, rows=rows, weight=weight, bias=None, running_mean=None, running_var=None,
                        momentum=0.1, eps=1e-5)
