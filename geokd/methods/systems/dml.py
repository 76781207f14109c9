"""``system = "dml"``: Deep Mutual Learning, two copies of the study's student, no teacher.

Runs :func:`geokd.train.mutual.train_mutual` with the study's run config (data, student,
SGD settings, schedule, seed); the peer is the same architecture, initialized
independently. The row is **student 1** (its weights are copied to the run's
``model.pt``); student 2's error goes to the row's note. The training time covers both
students. Parameter: ``temperature`` of the two KL terms (paper: 1).
"""

from __future__ import annotations

from geokd.methods.systems import System, median_sd, register_system
from geokd.methods.systems._runs import fresh_run_dir


def run(config, params: dict, *, run_dir, device, resume, on_epoch_end=None, progress=None) -> None:
    from geokd.checkpoints import save_checkpoint
    from geokd.models import model_config
    from geokd.train.mutual import train_mutual

    run = fresh_run_dir(run_dir)  # train_mutual keeps no resumable state
    # The CLI prints record["test_error"]: the row's network is student 1.
    callback = None if on_epoch_end is None else (lambda r: on_epoch_end({**r, "test_error": r["test_error_1"]}))
    result = train_mutual(config, run_dir=run.path, temperature=params["temperature"], device=device,
                          on_epoch_end=callback, progress=progress)
    run.write_json(run.config_path, {**run.read_json(run.config_path), "system": "dml", "params": params})
    first, second = result.final_test_errors
    run.update_meta(final_test_error=first, system_results={"student": 1, "peer_test_error": second})
    # Written last: model.pt is what marks the row's run as finished.
    student = result.models[0]
    save_checkpoint(run.model_path, student, model_config=model_config(student),
                    extra={"run_dir": str(run.path), "system": "dml", "student": 1})


def describe(method: str, results: list[dict]) -> tuple[str, list[str]]:
    peers = [r["peer_test_error"] for r in results]
    return f"student 1 of 2 trained together (no teacher); student 2: {median_sd(peers)}", []


register_system(System(name="dml", run=run, describe=describe, defaults={"temperature": 1.0}))
