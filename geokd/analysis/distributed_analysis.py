"""One analysis across the processes of a ``torchrun`` job: students split over the ranks.

``torchrun --nproc-per-node G [--nnodes N ...] -m geokd analyze ...`` (or ``geokd analyze
--launcher torchrun --nproc-per-node G ...``, which starts that command itself) runs the
same analysis as one process, with the students spread round-robin over the ranks by their
position in the student list (:func:`assigned_students`):

1. with a teacher cache (``cache_dir``, no graph variants), rank 0 first runs the teacher
   alone (:func:`geokd.analysis.pipeline.analyze_networks` with no student), which writes
   the teacher's work to the cache, while the other ranks wait; without one, every rank
   computes the teacher itself. Above ``DENSE_LIMIT`` nodes (a whole training split), on
   one machine, every rank runs the teacher with rank 0, each building a share of its k-NN
   graphs' blocks, chunks and groups (:class:`geokd.graphs.dataset_knn.KnnShard`);
2. every rank analyses its students against the teacher (read from the cache);
3. every rank sends rank 0 either its results (rows, heat maps, stage times) or the error
   that stopped it (:class:`RankOutcome`); rank 0 puts the rows back in the order one
   process gives (the teacher's, then each student's in student order) and keeps the heat
   maps one process keeps (the teacher's and those of the first student of each method:
   :func:`shown_students`), or raises :class:`RankFailedError` naming the ranks that
   failed and why.

Only rank 0 writes the output, and only once every rank's results have arrived: a rank that
raises reports its error to rank 0 first; a rank that is killed makes torchrun stop the job,
rank 0 with it, before anything was written.

The results travel as pickled objects over a gloo group of their own
(``dist.new_group(backend="gloo")``): NCCL's object collectives need a GPU tensor per rank,
and the group's long timeout (:data:`WAIT_TIMEOUT`) lets the ranks wait for the teacher or
for the slowest rank's students longer than the default group's 30 minutes.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) a :class:`RankGroup` is one process and
every collective returns at once, so the same code runs (and is tested) in one process.

Examples
--------
>>> assigned_students(5, rank=1, world_size=2)
[1, 3]
>>> RankGroup().gather("result of rank 0")
['result of rank 0']
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

from geokd.analysis.pipeline import AnalysisResult, Network, analyze_networks
from geokd.analysis.scale import DENSE_LIMIT
from geokd.analysis.progress import ProgressReporter

__all__ = ["WAIT_TIMEOUT", "GatheredAnalysis", "RankFailedError", "RankGroup", "RankOutcome",
           "analyze_across_ranks", "assigned_students", "joined_ranks", "merge_outcomes", "shown_students",
           "torchrun_command", "under_torchrun"]

# How long a rank waits for the others (rank 0's teacher, the slowest rank's students).
# The default process group's 30 minutes are shorter than a whole-split analysis of a few
# students; a rank that dies does not make the others wait this long (torchrun stops them).
WAIT_TIMEOUT = timedelta(hours=24)


class RankFailedError(RuntimeError):
    """One or more ranks of a distributed analysis failed; the message names them and why."""


def under_torchrun() -> bool:
    """Whether this process is one of several of a ``torchrun`` job (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def torchrun_command(arguments: Sequence[str], *, nproc_per_node: int, python: str) -> list[str]:
    """The command that runs ``geokd <arguments>`` on ``nproc_per_node`` processes of this machine.

    ``--standalone`` lets torchrun pick a free port, so two jobs on one machine do not clash.

    Examples
    --------
    >>> torchrun_command(["analyze", "s.pt", "--teacher", "t.pt"], nproc_per_node=2, python="python")
    ['python', '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2', '-m', 'geokd', 'analyze', 's.pt', '--teacher', 't.pt']
    >>> torchrun_command(["analyze"], nproc_per_node=0, python="python")
    Traceback (most recent call last):
    ...
    ValueError: expected --nproc-per-node of at least 1, got 0
    """
    if not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ValueError(f"expected --nproc-per-node of at least 1, got {nproc_per_node!r}")
    return [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc_per_node),
            "-m", "geokd", *arguments]


@dataclass(frozen=True)
class RankGroup:
    """This process's place in the job, and the gloo group the results travel over.

    ``group=None`` with ``world_size=1`` is one process: the collectives return at once.
    ``device`` is the device this rank analyses on (its own GPU under CUDA).
    """

    rank: int = 0
    world_size: int = 1
    group: object = field(default=None, repr=False)
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _check(self) -> None:
        if self.world_size > 1 and self.group is None:
            raise ValueError(f"expected a process group for {self.world_size} ranks (joined_ranks), got none")

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank; also a barrier (every rank waits for rank 0)."""
        self._check()
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` on the other ranks.

        Examples
        --------
        >>> RankGroup().gather({"rows": []})
        [{'rows': []}]
        """
        self._check()
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def knn_shard(self):
        """This rank's :class:`geokd.graphs.dataset_knn.KnnShard` of one k-NN graph, gathered over
        the group (CPU tensors: the group is gloo; the shares come back on their device)."""
        from geokd.graphs.dataset_knn import KnnShard

        def all_gather(tensor):
            if self.world_size == 1:
                return [tensor]
            import torch
            import torch.distributed as dist

            local = tensor.cpu()
            out = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(out, local, group=self.group)
            return out

        return KnnShard(rank=self.rank, world_size=self.world_size, all_gather=all_gather)

    def barrier(self) -> None:
        self._check()
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)


def _rank_device(context, device: str) -> str:
    """The device string this rank analyses on.

    On CUDA each rank takes its local GPU (``DistributedContext.device_for``) as the *current*
    device and analyses on plain ``"cuda"``: the teacher cache's key names the device, and
    ``cuda:0`` on rank 0 against ``cuda:1`` on rank 1 would give every rank its own entry,
    so the others would never read rank 0's teacher.
    """
    import torch

    chosen = context.device_for(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
        return "cuda"
    return str(device)


@contextmanager
def joined_ranks(*, device: str = "cpu", timeout: timedelta = WAIT_TIMEOUT) -> Iterator[RankGroup]:
    """Join torchrun's job (gloo on CPU, NCCL on CUDA) and a gloo group for the results.

    Parameters
    ----------
    device : str
        The ``--device`` asked for; on CUDA each rank takes its local GPU.
    timeout : timedelta
        How long a collective of the results' group waits for the slowest rank.

    Yields
    ------
    RankGroup
        Left (the process group destroyed, if this call created it) when the block ends.
    """
    import torch.distributed as dist

    from geokd.train.distributed import DistributedContext

    if not under_torchrun():
        raise ValueError(f"expected to run under torchrun (WORLD_SIZE > 1), got WORLD_SIZE="
                         f"{os.environ.get('WORLD_SIZE', 'unset')}")
    created = not dist.is_initialized()
    context = DistributedContext.from_env(device=device)
    try:
        # Its own gloo group, every rank calls this: objects over NCCL would need a GPU
        # tensor per rank, and the default group's timeout is too short to wait for a teacher.
        group = dist.new_group(backend="gloo", timeout=timeout)
        yield RankGroup(rank=context.rank, world_size=context.world_size, group=group,
                        device=_rank_device(context, device))
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def assigned_students(num_students: int, *, rank: int, world_size: int) -> list[int]:
    """Positions in the student list of the students ``rank`` analyses: round-robin.

    Examples
    --------
    >>> [assigned_students(3, rank=r, world_size=2) for r in range(2)]
    [[0, 2], [1]]
    >>> assigned_students(1, rank=1, world_size=2)
    []
    >>> assigned_students(3, rank=2, world_size=2)
    Traceback (most recent call last):
    ...
    ValueError: expected a rank in [0, 2), got 2
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"expected a rank in [0, {world_size}), got {rank}")
    return list(range(rank, num_students, world_size))


def shown_students(methods: Sequence[str]) -> set[int]:
    """Positions of the students whose heat maps one process keeps: the first of each method.

    Examples
    --------
    >>> sorted(shown_students(["gkd", "rkd", "gkd", "crd"]))
    [0, 1, 3]
    """
    first: dict[str, int] = {}
    for position, method in enumerate(methods):
        first.setdefault(method, position)
    return set(first.values())


def _check_distinct_names(teacher: Network, students: Sequence[Network]) -> None:
    """Refuse two networks of one name: the ranks' heat maps are merged by name, and one
    process's graph-variant rows of a network depend on earlier rows of the same name."""
    seen = {teacher.name: "the teacher"}
    for position, student in enumerate(students):
        if student.name in seen:
            raise ValueError(f"expected distinct network names across ranks, got {student.name!r} for "
                             f"{seen[student.name]} and student {position + 1}")
        seen[student.name] = f"student {position + 1}"


@dataclass
class RankOutcome:
    """What one rank sends rank 0: its results, or the error that stopped it.

    ``positions`` are its students' positions in the student list and ``student_rows`` their
    rows, one list per student; ``teacher_rows`` and ``heatmap_labels`` are only needed from
    rank 0; ``heatmaps`` hold only those one process would keep from this rank's networks.
    """

    rank: int
    positions: list[int] = field(default_factory=list)
    teacher_rows: list[dict] = field(default_factory=list)
    student_rows: list[list[dict]] = field(default_factory=list)
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    heatmap_labels: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    teacher_cached: bool = False
    error: str | None = None


@dataclass
class GatheredAnalysis:
    """Rank 0's merged analysis: ``result`` as one process gives it, plus where it ran.

    ``result.timings`` sums every stage over the ranks; ``rank_timings`` are each rank's.
    """

    result: AnalysisResult
    world_size: int
    rank_timings: list[dict[str, float]]
    assignment: list[list[int]]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _split_rows(rows: list[dict], bounds: list[int], *, num_students: int) -> tuple[list[dict], list[list[dict]]]:
    """The teacher's rows and each student's, from the row counts ``on_network`` saw after each network.

    Examples
    --------
    >>> _split_rows(list("ttsSS"), [2, 3, 5], num_students=2)
    (['t', 't'], [['s'], ['S', 'S']])
    """
    if len(bounds) != 1 + num_students or bounds[-1] != len(rows):
        raise RuntimeError(f"expected the analysis to report the teacher and {num_students} students, ending at "
                           f"{len(rows)} rows, got {len(bounds)} networks ending at row counts {bounds}")
    return rows[:bounds[0]], [rows[a:b] for a, b in zip(bounds, bounds[1:])]


def _analyze_share(teacher: Network, students: Sequence[Network], images, labels, *, ranks: RankGroup,
                   positions: list[int], shown: set[int], progress: ProgressReporter, cache_dir,
                   options: dict) -> RankOutcome:
    """This rank's students against the teacher, as the outcome sent to rank 0."""
    bounds: list[int] = []
    # Rows are split per network by position (the row count after each network), not by
    # name, so that the merge never depends on how networks are named.
    result = analyze_networks(teacher, [students[i] for i in positions], images, labels,
                              on_network=lambda net, rows: bounds.append(len(rows)), progress=progress,
                              cache_dir=cache_dir, **options)
    teacher_rows, student_rows = _split_rows(result.rows, bounds, num_students=len(positions))
    # Each rank keeps the heat maps of its first student of each method; one process keeps
    # only the first of each method over the whole list, and the teacher's once (rank 0's).
    keep = {students[i].name for i in positions if i in shown} | ({teacher.name} if ranks.is_main else set())
    heatmaps = {key: value for key, value in result.heatmaps.items() if key.rsplit("/", 1)[0] in keep}
    return RankOutcome(rank=ranks.rank, positions=list(positions),
                       teacher_rows=teacher_rows if ranks.is_main else [], student_rows=student_rows,
                       heatmaps=heatmaps, heatmap_labels=result.heatmap_labels if ranks.is_main else None,
                       timings=dict(progress.timings), teacher_cached=result.teacher_cached)


def merge_outcomes(outcomes: Sequence[RankOutcome], *, num_students: int,
                   teacher_cached: bool | None = None) -> GatheredAnalysis:
    """Rank 0's analysis from every rank's outcome, in the order one process gives.

    Parameters
    ----------
    outcomes : sequence of RankOutcome
        One per rank, in rank order.
    num_students : int
        Students in the whole list: every position must come back exactly once.
    teacher_cached : bool, optional
        Whether the teacher's work was read from the cache rather than computed in this job
        (default rank 0's own ``teacher_cached``).

    Raises
    ------
    RankFailedError
        When a rank sent an error, naming every failed rank and its error.

    Examples
    --------
    >>> row = lambda net: {"network": net, "metric": "m"}
    >>> zero = RankOutcome(0, positions=[0], teacher_rows=[row("t")], student_rows=[[row("a")]],
    ...                    heatmaps={"a/pool": 2, "t/pool": 1}, timings={"features": 1.0})
    >>> one = RankOutcome(1, positions=[1], student_rows=[[row("b")]], heatmaps={"b/pool": 3},
    ...                   timings={"features": 2.0})
    >>> merged = merge_outcomes([zero, one], num_students=2)
    >>> [r["network"] for r in merged.result.rows], list(merged.result.heatmaps), merged.result.timings
    (['t', 'a', 'b'], ['t/pool', 'a/pool', 'b/pool'], {'features': 3.0})
    >>> merge_outcomes([zero, RankOutcome(1, error="CheckpointError: b.pt: not a torch checkpoint")],
    ...                num_students=2)
    Traceback (most recent call last):
    ...
    geokd.analysis.distributed_analysis.RankFailedError: the analysis failed on 1 of 2 ranks: rank 1: CheckpointError: b.pt: not a torch checkpoint
    """
    world = len(outcomes)
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise RankFailedError(f"the analysis failed on {len(failed)} of {world} ranks: "
                              + "; ".join(f"rank {o.rank}: {o.error}" for o in failed))
    if [o.rank for o in outcomes] != list(range(world)):
        raise RuntimeError(f"expected outcomes of ranks 0..{world - 1} in order, got ranks {[o.rank for o in outcomes]}")
    by_position = {}
    for outcome in outcomes:
        for position, rows in zip(outcome.positions, outcome.student_rows, strict=True):
            if position in by_position:
                raise RuntimeError(f"expected student {position + 1} from one rank, got it twice (rank {outcome.rank})")
            by_position[position] = (rows, outcome)
    if sorted(by_position) != list(range(num_students)):
        missing = sorted(set(range(num_students)) - set(by_position))
        raise RuntimeError(f"expected the rows of {num_students} students, got none for students "
                           f"{[p + 1 for p in missing]}")
    main = outcomes[0]
    rows = list(main.teacher_rows)
    for position in range(num_students):
        rows += by_position[position][0]
    # Each rank sent only the heat maps one process keeps; one process adds them teacher
    # first, then student by student (by_network gives each network's place in that order).
    by_network = {}
    for row in rows:
        by_network.setdefault(row["network"], len(by_network))
    heatmaps = {key: value for outcome in outcomes for key, value in outcome.heatmaps.items()}
    heatmaps = dict(sorted(heatmaps.items(), key=lambda item: by_network.get(item[0].rsplit("/", 1)[0], len(rows))))
    timings: dict[str, float] = {}
    for outcome in outcomes:
        for stage, seconds in outcome.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
    result = AnalysisResult(rows=rows, heatmaps=heatmaps, heatmap_labels=main.heatmap_labels, timings=timings,
                            teacher_cached=main.teacher_cached if teacher_cached is None else teacher_cached)
    return GatheredAnalysis(result=result, world_size=world, rank_timings=[dict(o.timings) for o in outcomes],
                            assignment=[list(o.positions) for o in outcomes])


def analyze_across_ranks(teacher: Network, students: Sequence[Network], images, labels, *, ranks: RankGroup,
                         cache_dir=None, progress: ProgressReporter | None = None,
                         **options) -> GatheredAnalysis | None:
    """:func:`geokd.analysis.pipeline.analyze_networks`, its students split over the ranks.

    Every rank of the job calls this with the same arguments (see the module notes).

    Parameters
    ----------
    teacher, students : Network
        The whole student list, the same on every rank; names must be distinct.
    images, labels
        As for :func:`~geokd.analysis.pipeline.analyze_networks`.
    ranks : RankGroup
        This process's place in the job (:func:`joined_ranks`).
    cache_dir : str or path, optional
        The teacher cache: rank 0 fills it and the other ranks read it (on several machines
        it must be a folder every machine sees, else each rank there computes the teacher
        again). ``None``: every rank computes the teacher.
    progress : ProgressReporter, optional
        This rank's reporter (its ``num_networks`` is set to this rank's share if unset).
    **options
        Every other keyword of ``analyze_networks`` (``node_indices``, ``mean``, ``std``,
        ``layers``, ``k``, ``graphs``, ...) except ``on_network``.

    Returns
    -------
    GatheredAnalysis or None
        On rank 0 the merged analysis, the rows in the order one process gives; ``None`` on
        the other ranks.

    Raises
    ------
    RankFailedError
        On rank 0 when any rank failed (naming each and its error); on a failed rank, its
        own error, after it was sent to rank 0.
    """
    if "on_network" in options:
        raise ValueError("expected no on_network across ranks (rank 0 has the rows only at the end), got one")
    _check_distinct_names(teacher, students)
    progress = progress if progress is not None else ProgressReporter()
    positions = assigned_students(len(students), rank=ranks.rank, world_size=ranks.world_size)
    # The cache is not used with graph variants: then every rank computes the teacher.
    teacher_first = cache_dir is not None and not options.get("graphs")
    # A teacher whose k-NN graphs are built without the dense N x N path (above DENSE_LIMIT
    # nodes) is computed by every rank together, each taking a share of its k-NN blocks. Only
    # on one machine: every rank then sees the same cache (on several, one rank could find
    # the teacher cached and skip the shared work the others wait in).
    share_teacher = (teacher_first and ranks.world_size > 1 and _one_machine(ranks)
                     and np.asarray(options.get("node_indices", ())).size > DENSE_LIMIT)
    runs_teacher = teacher_first and (ranks.is_main or share_teacher)
    if progress.num_networks is None:
        progress.num_networks = 1 + len(positions) + (1 if runs_teacher else 0)
    progress.message(f"{len(positions)} of {len(students)} students on this rank: "
                     + (", ".join(students[i].name for i in positions) or "none (more ranks than students)"))

    # 1. Rank 0 runs the teacher alone, so that the others read it instead of computing it too.
    failure, own_error, alone = None, None, None
    if share_teacher:
        # No error is caught here: the other ranks are inside the shared k-NN's collectives,
        # so a failing rank exits, and torchrun stops the job and names it.
        progress.message(f"{teacher.name}: computed by all {ranks.world_size} ranks, each with a share of its "
                         "k-NN blocks")
        alone = analyze_networks(teacher, [], images, labels, progress=progress, cache_dir=cache_dir,
                                 knn_shard=ranks.knn_shard(), **options)
    elif teacher_first and ranks.is_main:
        try:
            alone = analyze_networks(teacher, [], images, labels, progress=progress, cache_dir=cache_dir, **options)
        except Exception as exc:   # sent to the others (below) instead of leaving them waiting
            failure, own_error = _describe(exc), exc
    failure = _collective(ranks, "waiting for rank 0's teacher", lambda: ranks.broadcast(failure))

    # 2. This rank's students (rank 0 always runs: it brings the teacher's rows).
    if failure is not None:   # rank 0's teacher failed: no rank runs, rank 0's error is the news
        outcome = RankOutcome(rank=ranks.rank, error=failure if ranks.is_main else None)
    elif positions or ranks.is_main:
        try:
            outcome = _analyze_share(teacher, students, images, labels, ranks=ranks, positions=positions,
                                     shown=shown_students([s.method for s in students]), progress=progress,
                                     cache_dir=cache_dir, options=options)
        except Exception as exc:
            outcome, own_error = RankOutcome(rank=ranks.rank, error=_describe(exc)), exc
        else:
            if alone is not None and ranks.is_main:
                # The same values, but as computed: rows read back from the cache have their
                # columns in another order, which would reorder metrics.csv's columns.
                outcome.teacher_rows = list(alone.rows)
            elif teacher_first and not outcome.teacher_cached:
                progress.message(f"warning: rank {ranks.rank} did not find the teacher rank 0 cached in {cache_dir} "
                                 "(is it a folder every machine sees?) and computed it again")
    else:
        outcome = RankOutcome(rank=ranks.rank)

    # 3. Every rank's outcome to rank 0, then a barrier: no rank exits (which makes torchrun
    # stop the job) before rank 0 holds every result or error.
    outcomes = _collective(ranks, "gathering the results on rank 0", lambda: ranks.gather(outcome))
    _collective(ranks, "waiting at the last barrier", ranks.barrier)
    if own_error is not None and not ranks.is_main:
        raise RankFailedError(f"rank {ranks.rank} of {ranks.world_size} failed: {_describe(own_error)}") from own_error
    if not ranks.is_main:
        return None
    try:
        return merge_outcomes(outcomes, num_students=len(students),
                              teacher_cached=None if alone is None else alone.teacher_cached)
    except RankFailedError as exc:
        raise exc from own_error


def _one_machine(ranks: RankGroup) -> bool:
    """Whether every rank of the job runs on this machine (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", ranks.world_size)) == ranks.world_size


def _collective(ranks: RankGroup, what: str, call):
    """Run a collective; a rank that vanished (killed) turns into an error naming this rank."""
    try:
        return call()
    except RuntimeError as exc:   # gloo: the connection to a rank that died was closed
        raise RankFailedError(f"rank {ranks.rank} of {ranks.world_size} lost the other ranks while {what} "
                              f"({exc}); torchrun's report names the rank that died") from exc
