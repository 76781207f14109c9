"""``system = "selective"``: selective KD, the row's terms on the inputs the teacher embeds well.

Before training, the study's teacher embeds the whole (un-augmented) training set at
module ``layer`` (default ``"pool"``, its penultimate features); a per-class minimum cut
on the cosine k-NN graph of those embeddings
(:func:`geokd.methods.selective.select_well_embedded`, ``k``, ``label_trust``) drops the
inputs the teacher embeds poorly. The student is then trained by the ordinary trainer
(:func:`geokd.train.loop.fit`: the row's ``terms`` and ``ce_weight``, per-epoch metrics,
resumable) on the kept inputs only. Give it the terms of another row (e.g. the Hinton KD
row's) to compare distilling on all inputs with distilling on the kept ones. The kept and
dropped indices are written to ``selection.json`` in the run directory.
"""

from __future__ import annotations

import json
import statistics
import time

from geokd.methods.systems import System, register_system


def run(config, params: dict, *, run_dir, device, resume, on_epoch_end=None, progress=None) -> None:
    from geokd.data import BatchLoader
    from geokd.methods.selective import select_well_embedded, teacher_embeddings
    from geokd.train.build import build_parts, load_teacher
    from geokd.train.distributed import DistributedContext
    from geokd.train.loop import fit
    from geokd.train.runs import RunDir
    from geokd.train.state import atomic_write_bytes

    parts, resolved = build_parts(config, device=device, ctx=DistributedContext())
    train_set, d = parts.train_batches.dataset, resolved.data
    t0 = time.perf_counter()
    x_all = next(iter(BatchLoader(train_set, batch_size=len(train_set), shuffle=False, augment=False, device=device)))[0]
    teacher = parts.teacher if parts.teacher is not None else load_teacher(resolved.teacher, device=device)
    embeddings = teacher_embeddings(teacher, x_all, layer=params["layer"], device=device)
    selection = select_well_embedded(embeddings, train_set.labels, k=params["k"], label_trust=params["label_trust"],
                                     device=device)
    seconds = time.perf_counter() - t0
    # The same seeded generator the trainer would have used, now over the kept inputs.
    parts.train_batches = BatchLoader(train_set.subset(selection.kept), batch_size=d.batch_size, shuffle=True,
                                      augment=d.augment, device=device, generator=parts.generator,
                                      drop_last=d.drop_last)
    report = selection.report()
    run = RunDir(run_dir)
    with run.lock():  # fit() keeps what meta.json holds and takes the lock itself below
        atomic_write_bytes(run.path / "selection.json", json.dumps(
            {**report, "layer": params["layer"], "kept_indices": selection.kept.tolist(),
             "dropped_indices": selection.dropped.tolist()}, indent=1).encode())
        results = {key: report[key] for key in ("total", "kept", "dropped", "dropped_per_class")}
        run.update_meta(system="selective", params=params, selection_seconds=seconds,
                        system_results={**results, "selection_seconds": seconds})
    fit(parts, resolved, run_dir=run.path, device=device, resume=resume, on_epoch_end=on_epoch_end, progress=progress)
    run.write_json(run.config_path, {**run.read_json(run.config_path), "system": "selective", "params": params})


def describe(method: str, results: list[dict]) -> tuple[str, list[str]]:
    dropped = statistics.median(r["dropped"] for r in results)
    total = results[0]["total"]
    return f"trained on {total - dropped:g} of {total} training inputs ({dropped:g} dropped by the cut)", []


register_system(System(name="selective", run=run, describe=describe, needs_teacher=True, takes_terms=True,
                       takes_ce_weight=True, defaults={"k": 10, "label_trust": 0.2, "layer": "pool"}))
