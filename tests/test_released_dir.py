"""Where the GKD authors' released networks are (one setting), and what is said when they are not.

``geokd.checkpoints.released.released_dir()`` reads ``GEOKD_RELEASED_DIR`` (set for one
process by ``geokd --released-dir DIR``), else ``../shared/graph_kd`` beside the checkout
when that folder exists. These tests never need the real files: the default is pointed at
temporary folders.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import geokd.checkpoints.released as released
from conftest import released_dir_or_skip
from geokd.analysis.sources import expand_networks, expand_paths
from geokd.analysis.study import load_study
from geokd.checkpoints.released import load_released_state_dict, released_dir, restricted_loads
from geokd.cli import main
from geokd.errors import CheckpointError, ConfigError
from geokd.evaluate import expand_checkpoints

ROOT = Path(__file__).resolve().parents[1]
ENV, REQUIRE = "GEOKD_RELEASED_DIR", "GEOKD_REQUIRE_RELEASED"


@pytest.fixture
def no_released(monkeypatch, tmp_path):
    """Neither the variable nor the default folder: a fresh clone outside the project's tree."""
    missing = tmp_path / "clone" / ".." / "shared" / "graph_kd"
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(REQUIRE, raising=False)
    monkeypatch.setattr(released, "DEFAULT_RELEASED_DIR", Path(os.path.normpath(missing)))
    return Path(os.path.normpath(missing))


def _released_folder(tmp_path) -> Path:
    folder = tmp_path / "my_release"
    folder.mkdir()
    for name in ("WideResNet28-1_0.pth", "GKD_x_0.pth", "GKD_x_1.pth", "RKD_x_0.pth"):
        (folder / name).write_bytes(b"")
    return folder


# ----------------------------------------------------------------------------- the setting


def test_released_dir_is_the_environment_variable_when_set(monkeypatch, tmp_path, no_released):
    monkeypatch.setenv(ENV, str(tmp_path / "elsewhere"))
    assert released_dir() == tmp_path / "elsewhere"  # as given, even before it exists
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV, "rel/graph_kd")
    assert released_dir() == tmp_path / "rel" / "graph_kd"  # made absolute


def test_released_dir_falls_back_to_the_default_only_when_it_exists(monkeypatch, tmp_path, no_released):
    with pytest.raises(FileNotFoundError) as info:
        released_dir()
    message = str(info.value)
    assert f"GEOKD_RELEASED_DIR is not set and the default folder {no_released}" in message
    assert "does not exist" in message and "geokd --released-dir DIR" in message
    assert "cadurosar/graph_kd" in message
    default = tmp_path / "shared" / "graph_kd"
    default.mkdir(parents=True)
    monkeypatch.setattr(released, "DEFAULT_RELEASED_DIR", default)
    assert released_dir() == default
    monkeypatch.setenv(ENV, "")  # empty counts as unset
    assert released_dir() == default


def test_the_default_is_shared_graph_kd_beside_the_checkout():
    assert released.DEFAULT_RELEASED_DIR == ROOT.parent / "shared" / "graph_kd"


def test_cli_option_sets_the_variable_for_the_whole_process(monkeypatch, tmp_path, capsys, no_released):
    monkeypatch.setenv(ENV, "placeholder")  # so that monkeypatch removes what main() sets
    folder = tmp_path / "empty_release"
    folder.mkdir()
    study = tmp_path / "study.toml"
    study.write_text('[networks]\nteacher = "$GEOKD_RELEASED_DIR/WideResNet28-1_0.pth"\n'
                     'students = ["$GEOKD_RELEASED_DIR/GKD_*.pth"]\n')
    code = main(["--released-dir", str(folder), "analyze", "--config", str(study), "--out", str(tmp_path / "out")])
    assert code == 2
    assert os.environ[ENV] == str(folder)
    assert released_dir() == folder
    err = capsys.readouterr().err
    # The study file's variable became the option's folder.
    assert f"no file matches 'GKD_*.pth' in {folder} (that folder exists; set GEOKD_RELEASED_DIR" in err
    assert not (tmp_path / "out").exists()


def test_cli_option_in_a_subprocess_reaches_geokd_evaluate(tmp_path):
    folder = tmp_path / "nowhere" / "graph_kd"
    env = {k: v for k, v in os.environ.items() if k != ENV}
    done = subprocess.run(
        [sys.executable, "-m", "geokd", "--released-dir", str(folder), "evaluate", "$GEOKD_RELEASED_DIR/GKD_*.pth",
         "--dataset", "digits"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert (f"geokd evaluate: error: no file matches 'GKD_*.pth' in {folder} "
            "(that folder does not exist; set GEOKD_RELEASED_DIR or --released-dir)") in done.stderr


def test_help_names_the_option_the_variable_and_the_function(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--released-dir DIR" in out and "$GEOKD_RELEASED_DIR" in out
    assert "geokd.checkpoints.released.released_dir()" in out


# ----------------------------------------------------------------------------- the tests' fixture


def test_fixture_helper_skips_with_the_reason_when_the_folder_is_missing(no_released):
    with pytest.raises(pytest.skip.Exception) as info:
        released_dir_or_skip()
    reason = str(info.value)
    assert "GEOKD_RELEASED_DIR" in reason and "--released-dir" in reason
    assert str(no_released) in reason and "does not exist" in reason
    assert "cadurosar/graph_kd" in reason and "WideResNet28-1_0.pth" in reason
    assert "GEOKD_REQUIRE_RELEASED=1" in reason


def test_fixture_helper_fails_instead_when_required(monkeypatch, no_released):
    monkeypatch.setenv(REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception) as info:
        released_dir_or_skip()
    reason = str(info.value)
    assert "GEOKD_RELEASED_DIR" in reason and "--released-dir" in reason and "cadurosar/graph_kd" in reason
    assert "a failure here, not a skip" in reason
    monkeypatch.setenv(REQUIRE, "0")  # 0 is "not required"
    with pytest.raises(pytest.skip.Exception):
        released_dir_or_skip()


def test_fixture_helper_names_a_variable_that_points_nowhere(monkeypatch, tmp_path, no_released):
    monkeypatch.setenv(ENV, str(tmp_path / "typo"))
    with pytest.raises(pytest.skip.Exception) as info:
        released_dir_or_skip()
    assert f"GEOKD_RELEASED_DIR names {tmp_path / 'typo'}, which does not exist" in str(info.value)


def test_fixture_helper_gives_the_folder_when_present(monkeypatch, tmp_path, no_released):
    folder = _released_folder(tmp_path)
    monkeypatch.setenv(ENV, str(folder))
    monkeypatch.setenv(REQUIRE, "1")
    assert released_dir_or_skip() == str(folder)


def test_ci_runs_the_readme_command_with_the_released_networks_required():
    readme_command = ".venv/bin/python -m pytest -n 2"
    assert readme_command in (ROOT / "README.md").read_text()
    last = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert last.endswith(f"&& GEOKD_REQUIRE_RELEASED=1 {readme_command}")


def test_no_test_reads_the_shared_folder_except_through_the_fixture():
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name in ("conftest.py", Path(__file__).name):
            continue
        text = path.read_text()
        for needle in ("/work/shared", '"shared"', "GEOKD_SHARED"):
            assert needle not in text, f"{path.name} reads the released networks by path ({needle}); use graph_kd_dir"
        if "WideResNet28-1_0.pth" in text or "GKD_28-1_teaches" in text:
            assert "graph_kd_dir" in text, path.name


# ----------------------------------------------------------------------------- globs that match nothing


def test_expand_paths_names_the_released_folder_and_the_setting(no_released, tmp_path):
    pattern = str(tmp_path / "x" / "shared" / "graph_kd" / "GKD_*.pth")
    with pytest.raises(ConfigError) as info:
        expand_paths([pattern])
    assert str(info.value) == (f"expected networks at {pattern!r}: no file matches 'GKD_*.pth' in "
                               f"{tmp_path / 'x' / 'shared' / 'graph_kd'} (that folder does not exist; "
                               "set GEOKD_RELEASED_DIR or --released-dir)")


def test_expand_paths_elsewhere_says_folder_and_existence_only(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError) as info:
        expand_paths(["runs/*/seed*"], base_dir=str(tmp_path))
    message = str(info.value)
    assert message.endswith(f"no file matches '*/seed*' in {tmp_path / 'runs'} (that folder exists)")
    assert "GEOKD_RELEASED_DIR" not in message
    with pytest.raises(ConfigError, match=r"in .*/missing \(that folder does not exist\)$"):
        expand_paths([str(tmp_path / "missing" / "*.pt")])


def test_expand_paths_reads_the_released_variable_with_its_default(monkeypatch, tmp_path, no_released):
    folder = _released_folder(tmp_path)
    monkeypatch.setattr(released, "DEFAULT_RELEASED_DIR", folder)  # unset variable: the default stands in
    assert expand_paths(["$GEOKD_RELEASED_DIR/GKD_*.pth"]) == [str(folder / "GKD_x_0.pth"), str(folder / "GKD_x_1.pth")]
    monkeypatch.setattr(released, "DEFAULT_RELEASED_DIR", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="GEOKD_RELEASED_DIR is not set.*--released-dir"):
        expand_paths(["$GEOKD_RELEASED_DIR/GKD_*.pth"])
    with pytest.raises(ConfigError, match=r"'\$NO_SUCH_GEOKD_VAR/\*\.pt' uses \$NO_SUCH_GEOKD_VAR, which is not set$"):
        expand_paths(["$NO_SUCH_GEOKD_VAR/*.pt"])


def test_expand_networks_keeps_specs_and_explains_empty_globs(tmp_path):
    spec = "torchvision:resnet18?num_classes=10"
    assert expand_networks([spec]) == [spec]
    with pytest.raises(ConfigError, match=r"no file matches 'RKD_\*\.pth' in .*graph_kd \(that folder does not exist; set GEOKD_RELEASED_DIR"):
        expand_networks([spec, str(tmp_path / "graph_kd" / "RKD_*.pth")])


def test_geokd_evaluate_names_the_folder_not_the_unexpanded_glob(tmp_path, capsys, no_released):
    # What the README's example does when the shell finds nothing: the glob arrives as given.
    pattern = str(tmp_path / "shared" / "graph_kd" / "*.pth")
    assert main(["evaluate", pattern, "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert (f"no file matches '*.pth' in {tmp_path / 'shared' / 'graph_kd'} (that folder does not exist; "
            "set GEOKD_RELEASED_DIR or --released-dir)") in err
    assert "network not found" not in err


def test_expand_checkpoints_expands_in_natural_order_and_keeps_specs(tmp_path):
    for seed in (10, 2, 1):
        (tmp_path / f"GKD_x_{seed}.pth").write_bytes(b"")
    spec = "geokd:wrn?depth=10"
    got = expand_checkpoints([str(tmp_path / "GKD_*.pth"), spec, str(tmp_path / "GKD_x_2.pth")])
    assert got == [str(tmp_path / f"GKD_x_{s}.pth") for s in (1, 2, 10)] + [spec, str(tmp_path / "GKD_x_2.pth")]
    with pytest.raises(ConfigError, match=r"no file matches 'RKD_\*\.pth' in .* \(that folder exists; set GEOKD_RELEASED_DIR"):
        expand_checkpoints([str(tmp_path / "RKD_*.pth")])


# ----------------------------------------------------------------------------- study files


def test_study_with_an_unset_released_variable_is_a_clear_error(tmp_path, no_released):
    study = tmp_path / "study.toml"
    study.write_text('[networks]\nteacher = "$GEOKD_RELEASED_DIR/WideResNet28-1_0.pth"\n')
    with pytest.raises(ConfigError) as info:
        load_study(str(study))
    message = str(info.value)
    assert message.startswith(f"{study}: '$GEOKD_RELEASED_DIR/WideResNet28-1_0.pth' needs $GEOKD_RELEASED_DIR: ")
    assert "GEOKD_RELEASED_DIR is not set" in message and "geokd --released-dir DIR" in message
    assert "cadurosar/graph_kd" in message


def test_study_with_another_unset_variable_names_it(tmp_path, no_released):
    study = tmp_path / "study.toml"
    study.write_text('[networks]\nstudents = ["${NO_SUCH_GEOKD_VAR}/GKD_*.pth"]\n')
    with pytest.raises(ConfigError) as info:
        load_study(str(study))
    assert str(info.value) == f"{study}: '${{NO_SUCH_GEOKD_VAR}}/GKD_*.pth' uses $NO_SUCH_GEOKD_VAR, which is not set"


def test_study_resolves_the_released_variable_and_keeps_spec_weights(monkeypatch, tmp_path, no_released):
    folder = _released_folder(tmp_path)
    monkeypatch.setenv(ENV, str(folder))
    study = tmp_path / "study.toml"
    study.write_text('[networks]\nteacher = "$GEOKD_RELEASED_DIR/WideResNet28-1_0.pth"\n'
                     'students = ["torchvision:resnet18?num_classes=10@$GEOKD_RELEASED_DIR/w.pt", "rel/*.pt"]\n')
    loaded = load_study(str(study))
    assert loaded.teacher == str(folder / "WideResNet28-1_0.pth")
    assert loaded.students == [f"torchvision:resnet18?num_classes=10@{folder / 'w.pt'}", str(tmp_path / "rel" / "*.pt")]


@pytest.mark.parametrize("name", ["released_checkpoints.toml", "released_full_test.toml"])
def test_shipped_studies_name_the_released_networks_by_the_setting(monkeypatch, tmp_path, name, no_released):
    folder = _released_folder(tmp_path)
    monkeypatch.setenv(ENV, str(folder))
    study = load_study(str(ROOT / "analysis" / name))
    assert study.teacher == str(folder / "WideResNet28-1_0.pth")
    assert study.students == [str(folder / "GKD_*.pth"), str(folder / "RKD_*.pth")]
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError, match="needs \\$GEOKD_RELEASED_DIR.*--released-dir"):
        load_study(str(ROOT / "analysis" / name))


# ----------------------------------------------------------------------------- the pickle refusal


_OS_SYSTEM = b"cos\nsystem\n(S'echo owned'\ntR."


def test_refusal_lists_the_class_prefixes_actually_allowed():
    with pytest.raises(CheckpointError) as info:
        restricted_loads(_OS_SYSTEM)
    assert "and classes under 'torch.nn.', 'models.');" in str(info.value)
    with pytest.raises(CheckpointError) as info:
        restricted_loads(b"cevilpkg.mod\nThing\n.", class_prefixes=("mypkg.models.",))
    message = str(info.value)
    assert message.startswith("refused global 'evilpkg.mod.Thing'")
    assert "and classes under 'mypkg.models.');" in message and "'models.'" not in message


def test_refusal_with_no_prefixes_says_so_instead_of_an_empty_list(tmp_path):
    with pytest.raises(CheckpointError) as info:
        restricted_loads(_OS_SYSTEM, class_prefixes=())
    assert "classes under )" not in str(info.value) and "classes under" not in str(info.value)
    assert "and no classes (no module class prefix is admitted" in str(info.value)
    # A legacy file's header is read with no prefixes: a hostile one there says the same.
    class Calls:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'owned'}",)

    path = tmp_path / "evil_header.pth"
    path.write_bytes(pickle.dumps(Calls(), protocol=2))
    with pytest.raises(CheckpointError, match=r"refused global '(posix|os)\.system'.*and no classes"):
        load_released_state_dict(path)
    assert not (tmp_path / "owned").exists()
