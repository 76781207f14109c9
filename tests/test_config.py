"""Config loading, overrides and validation: every bad input is a ConfigError naming the key."""

from __future__ import annotations

import pytest

from geokd.errors import ConfigError
from geokd.studies import available_studies, load_study
from geokd.train import apply_overrides, config_from_dict, config_to_dict, load_config, load_config_text
from geokd.train.config import TrainConfig, parse_override


def test_defaults_are_the_papers_cifar10_recipe():
    cfg = TrainConfig()
    assert (cfg.data.name, cfg.data.batch_size, cfg.data.augment) == ("cifar10", 128, True)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert (cfg.schedule.epochs, cfg.schedule.milestones, cfg.schedule.gamma) == (200, (60, 120, 160), 0.2)
    assert cfg.model.params == {"depth": 28, "widen_factor": 1.0}


def test_toml_file_and_overrides_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[data]\nname = "digits"\nbatch_size = 32\n'
        '[[terms]]\nloss = "gkd"\nweight = 25\nparams = { k = 8, task = "inter" }\n'
    )
    cfg = load_config(path, overrides=["optim.lr=0.05", "schedule.milestones=[5, 9]", "terms.0.weight=10"])
    assert cfg.optim.lr == 0.05 and isinstance(cfg.terms[0].weight, float)
    assert cfg.schedule.milestones == (5, 9)
    assert cfg.terms[0].weight == 10.0 and cfg.terms[0].params == {"k": 8, "task": "inter"}
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg
    assert apply_overrides(cfg, ["run.seed=4"]).run.seed == 4


def test_override_values_are_parsed_as_toml():
    assert parse_override("optim.lr=1e-2") == ("optim.lr", 0.01)
    assert parse_override("run.amp='bf16'") == ("run.amp", "bf16")
    assert parse_override("data.augment=false") == ("data.augment", False)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optim.lr")


@pytest.mark.parametrize(
    "table, message",
    [
        ({"optim": {"momentun": 0.9}}, r"optim: unknown key 'momentun'; did you mean 'momentum'\?"),
        ({"shedule": {}}, r"unknown key 'shedule'; did you mean 'schedule'\?"),
        ({"optim": {"lr": "fast"}}, r"optim.lr: expected a number, got str 'fast'"),
        ({"schedule": {"epochs": 2.5}}, r"schedule.epochs: expected an integer, got float 2.5"),
        ({"data": {"augment": 1}}, r"data.augment: expected true or false"),
        ({"terms": [{"loss": "gkd", "weight": -1.0}]}, r"terms\[0\] \(gkd\).weight: expected a non-negative weight"),
        ({"terms": [{"loss": "gkd", "params": {"k": 128}}]}, r"k=128"),
        ({"data": {"batch_size": 64}, "terms": [{"loss": "gkd", "params": {"k": 64}}]}, r"fewer neighbours than the batch size 64"),
        ({"terms": [{"loss": "gkd", "params": {"power": 0}}]}, r"params.power: expected an integer p >= 1, got 0"),
        ({"terms": [{"loss": "gkd", "params": {"power": 1.5}}]}, r"params.power: expected an integer p >= 1"),
        ({"optim": {"lr": 0}}, r"optim.lr: expected a positive learning rate"),
        ({"optim": {"name": "sdg"}}, r"did you mean 'sgd'"),
        ({"schedule": {"milestones": [10, 5]}}, r"schedule.milestones: expected increasing"),
        ({"run": {"amp": "fp8"}}, r"run.amp"),
        ({"data": {"fraction": 1.5}}, r"data.fraction: expected a value in \(0, 1\]"),
        ({"data": {"batch_size": 1}}, r"data.batch_size: expected at least 2"),
    ],
)
def test_bad_values_are_rejected_before_training(table, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(table)


def test_invalid_toml_names_the_source():
    with pytest.raises(ConfigError, match="cfg.toml: not valid TOML"):
        load_config_text("[data\n", source="cfg.toml")


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_shipped_studies_load_and_build_every_run_config():
    assert {"digits", "digits-reduced"} <= set(available_studies())
    study = load_study("digits")
    assert [m.name for m in study.methods] == [
        "baseline", "rkd-d", "gkd", "gkd-inter", "gkd-intra", "gkd-knn16", "gkd-p2"]
    assert len(study.seeds) >= 3
    t = study.teacher_config()
    s = study.student_config("gkd-inter", seed=2, teacher="runs/t")
    assert t.terms == () and t.teacher is None and t.run.seed == study.teacher_seed
    assert s.teacher == "runs/t" and s.run.seed == 2 and s.terms[0].params == {"task": "inter"}
    assert s.terms[0].weight == 25.0 and study.student_config("rkd-d", seed=0).terms[0].weight == 25.0
    reduced = load_study("digits-reduced")
    assert reduced.student_config("gkd", seed=0).data.fraction == 0.1
    assert reduced.teacher_config().data.fraction is None  # the teacher sees all the data
    assert [m.name for m in reduced.methods] == [m.name for m in study.methods]


def test_study_typos_are_caught_with_suggestions(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        '[study]\nname = "s"\nextends = "digits"\n'
        '[[methods]]\nname = "gkd"\nterms = [{ loss = "gkd", weight = 25.0, params = { k = 64 } }]\n'
    )
    with pytest.raises(ConfigError, match="method 'gkd'.*fewer neighbours than the batch size 64"):
        load_study(str(path))
    path.write_text('[study]\nname = "s"\nseeds = [0]\nextends = "digits"\n[studnet]\n')
    with pytest.raises(ConfigError, match="did you mean 'student'"):
        load_study(str(path))
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        load_study("digts")


def test_cifar10_paper_study_is_the_papers_recipe():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analysis" / "cifar10_paper.toml"
    study = load_study(str(path))
    assert len(study.seeds) == 10 and study.estimate
    t, s = study.teacher_config(), study.student_config("gkd", seed=0, teacher="t")
    assert (t.model.params["depth"], t.model.params["widen_factor"]) == (28, 1.0)
    assert (s.model.params["depth"], s.model.params["widen_factor"]) == (28, 0.5)
    assert s.schedule.epochs == 200 and s.schedule.milestones == (60, 120, 160) and s.schedule.gamma == 0.2
    assert s.data.batch_size == 128 and s.data.augment
    assert s.terms[0].weight == 25.0
    assert {m.name for m in study.methods} >= {"baseline", "rkd-d", "gkd", "gkd-inter"}
