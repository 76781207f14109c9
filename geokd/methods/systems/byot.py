"""``system = "byot"``: BYOT self-distillation of the study's student, no teacher.

The student gets a bottleneck + FC exit after each of its stages except the last
(:class:`geokd.methods.byot.SelfDistillationNetwork`; a WRN's three stages give three
exits) and all exits train together with :func:`~geokd.methods.byot.train_self_distillation`
under the study's data, SGD settings, schedule and seed. The row's error is the deepest
exit's, which *is* the plain student (its ``model.pt``), so its parameter count, inference
time and graph distance are the student's; the per-exit errors, the ensemble of the exits
and each exit's anytime inference time go to an extra table. Parameters: ``alpha``,
``temperature``, ``beta`` of :class:`~geokd.methods.byot.SelfDistillationLoss` (paper: 0.1, 3, 1e-6).
"""

from __future__ import annotations

import time

from geokd.methods.systems import System, median_sd, register_system
from geokd.methods.systems._runs import fresh_run_dir, lr_at, require_sgd, start_run, write_metrics


def run(config, params: dict, *, run_dir, device, resume, on_epoch_end=None, progress=None) -> None:
    import io

    import torch

    from geokd.checkpoints import save_checkpoint
    from geokd.methods.byot import SelfDistillationLoss, SelfDistillationNetwork, evaluate_exits, train_self_distillation
    from geokd.train.build import build_parts
    from geokd.train.config import config_to_dict, with_resolved_layout
    from geokd.train.distributed import DistributedContext
    from geokd.train.runs import utc_now
    from geokd.train.state import atomic_write_bytes

    require_sgd(config, "byot")
    run = fresh_run_dir(run_dir)  # train_self_distillation keeps no resumable state
    parts, resolved = build_parts(config, device=device, ctx=DistributedContext())
    example = next(iter(parts.test_batches))[0][:2]
    network = SelfDistillationNetwork(parts.student, example_input=example)
    loss = SelfDistillationLoss(**params)
    resolved = with_resolved_layout(resolved, device)
    with run.lock():
        start_run(run, {**config_to_dict(resolved), "system": "byot", "params": params}, seed=resolved.run.seed,
                  device=device)
        t0 = time.perf_counter()
        history = train_self_distillation(
            network, parts.train_batches, epochs=resolved.schedule.epochs, lr=resolved.optim.lr,
            momentum=resolved.optim.momentum, weight_decay=resolved.optim.weight_decay,
            milestones=resolved.schedule.milestones, gamma=resolved.schedule.gamma, loss=loss, device=device,
            channels_last=resolved.run.channels_last)
        seconds = time.perf_counter() - t0
        reports = evaluate_exits(network, parts.test_batches, device=device)
        exits = {r.name: {"test_error": 100.0 * (1.0 - r.accuracy),
                          "us_per_image": 1e6 * r.seconds_per_batch / r.batch_size} for r in reports}
        deepest = 100.0 * (1.0 - reports[len(network.sections) - 1].accuracy)
        records = [{"epoch": i + 1, "lr": lr_at(resolved, i), "train_loss": value} for i, value in enumerate(history)]
        records[-1]["test_error"] = deepest
        write_metrics(run, records)
        heads = sum(p.numel() for m in (network.bottlenecks, network.classifiers) for p in m.parameters())
        buffer = io.BytesIO()
        torch.save(network.state_dict(), buffer)  # all exits, for anytime inference later
        atomic_write_bytes(run.path / "exits.pt", buffer.getvalue())
        save_checkpoint(run.model_path, parts.student, model_config=parts.model_config,
                        extra={"run_dir": str(run.path), "system": "byot", "exit": "deepest"})
        run.update_meta(status="finished", end_time=utc_now(), train_seconds=seconds, final_test_error=deepest,
                        system_results={"sections": list(network.sections), "exits": exits,
                                        "exit_head_parameters": heads})


def describe(method: str, results: list[dict]) -> tuple[str, list[str]]:
    """Row note and the per-exit table (median ± sd over seeds)."""
    sections = results[0]["sections"]
    lines = [f"**{method}** (BYOT self-distillation, no teacher): every exit of the same student; the row above "
             f"is the deepest exit ({sections[-1]}), the plain student. The exit heads add "
             f"{results[0]['exit_head_parameters']:,} parameters during training.", "",
             f"| {method} exit | test error % (median ± sd) | anytime inference / image (µs, median) |",
             "|---|---|---|"]
    for name in [*sections, "ensemble"]:
        errors = [r["exits"][name]["test_error"] for r in results]
        times = sorted(r["exits"][name]["us_per_image"] for r in results)
        label = f"{name} (deepest)" if name == sections[-1] else ("ensemble (mean of the exits' softmax)"
                                                                  if name == "ensemble" else name)
        lines.append(f"| {label} | {median_sd(errors)} | {times[len(times) // 2]:.1f} |")
    return f"deepest exit of {len(sections)}; all exits below", lines


register_system(System(name="byot", run=run, describe=describe,
                       defaults={"alpha": 0.1, "temperature": 3.0, "beta": 1e-6}))
