"""One training loop for teachers and distilled students.

``train(config, run_dir=..., device=...)`` runs a :class:`TrainConfig` (TOML-loadable,
validated before any step) into a run directory that records the resolved config,
versions, per-epoch metrics, a resumable state and the final model.

Examples
--------
>>> cfg = load_config_text('''
... [data]
... name = "digits"
... batch_size = 64
... [schedule]
... epochs = 2
... milestones = [1]
... ''')
>>> cfg.data.name, cfg.schedule.epochs, cfg.optim.lr
('digits', 2, 0.1)
"""

from geokd.train.build import build_parts, load_teacher, seed_everything, train
from geokd.train.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TermConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    load_config_text,
)
from geokd.train.loop import NonFiniteLossError, RunResult, Term, TrainingParts, evaluate, fit
from geokd.train.runs import RunDir, RunLockedError

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "RunConfig", "ScheduleConfig", "TermConfig", "TrainConfig",
    "apply_overrides", "config_from_dict", "config_to_dict", "load_config", "load_config_text",
    "NonFiniteLossError", "RunResult", "Term", "TrainingParts", "evaluate", "fit",
    "RunDir", "RunLockedError", "build_parts", "load_teacher", "seed_everything", "train",
]
