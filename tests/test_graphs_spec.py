"""GraphSpec: names, round trips and validation of every field."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geokd.errors import ConfigError
from geokd.graphs import GraphSpec


def test_defaults_are_the_paper_graph():
    spec = GraphSpec()
    assert (spec.kernel, spec.normalization, spec.k, spec.task, spec.power, spec.renormalize,
            spec.sigma, spec.clamp_negative) == ("cosine", "sym", None, "all", 1, False, None, False)
    assert spec.name == "cos-sym-full-all-p1"


def test_names():
    assert GraphSpec(k=16, task="inter", power=2).name == "cos-sym-k16-inter-p2"
    assert GraphSpec(kernel="gaussian", sigma=0.5, normalization="rw").name == "gauss-rw-full-all-p1-s0.5"
    assert GraphSpec(kernel="dot", normalization="none", renormalize=True, clamp_negative=True).name \
        == "dot-none-full-all-p1-renorm-relu"


specs = st.builds(
    GraphSpec,
    kernel=st.sampled_from(["cosine", "gaussian", "dot"]),
    normalization=st.sampled_from(["sym", "rw", "none"]),
    k=st.none() | st.integers(1, 512),
    task=st.sampled_from(["all", "intra", "inter"]),
    power=st.integers(1, 4),
    renormalize=st.booleans(),
    clamp_negative=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(spec=specs, sigma=st.none() | st.sampled_from([0.25, 1.0, 3.5, 1e-3]))
def test_name_and_dict_round_trip(spec, sigma):
    if spec.kernel == "gaussian":
        spec = GraphSpec.from_dict({**spec.to_dict(), "sigma": sigma})
    assert GraphSpec.from_name(spec.name) == spec
    assert GraphSpec.from_dict(spec.to_dict()) == spec
    assert hash(spec) == hash(GraphSpec.from_name(spec.name))  # frozen: usable as a dict key


@pytest.mark.parametrize("field, value, expected", [
    ("kernel", "euclid", "kernel: expected one of"),
    ("normalization", "lap", "normalization: expected one of"),
    ("task", "between", "task: expected one of"),
    ("k", 0, "k: expected None"),
    ("k", 2.0, "k: expected None"),
    ("k", True, "k: expected None"),
    ("power", 0, "power: expected an int >= 1"),
    ("power", 1.5, "power: expected an int >= 1"),
    ("renormalize", 1, "renormalize: expected a bool"),
    ("clamp_negative", "yes", "clamp_negative: expected a bool"),
])
def test_every_field_is_validated(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        GraphSpec(**{field: value})


def test_sigma_validation():
    with pytest.raises(ConfigError, match="sigma: expected None unless kernel='gaussian'"):
        GraphSpec(sigma=1.0)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="sigma"):
            GraphSpec(kernel="gaussian", sigma=bad)
    assert GraphSpec(kernel="gaussian", sigma=2).sigma == 2.0


def test_from_dict_and_from_name_errors():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['kk'\]"):
        GraphSpec.from_dict({"kk": 3})
    with pytest.raises(ConfigError, match="expected a dict"):
        GraphSpec.from_dict([("k", 3)])
    for bad in ("cos-sym", "l2-sym-full-all-p1", "cos-sym-k0-all-p1", "cos-sym-full-all-p1-junk", None):
        with pytest.raises(ConfigError):
            GraphSpec.from_name(bad)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        GraphSpec(task="none")
