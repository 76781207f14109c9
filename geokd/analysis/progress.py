"""Progress of a long analysis: stages timed per network, lines with elapsed time and time left.

The analysis (:func:`geokd.analysis.pipeline.analyze_networks`) wraps each piece of work in
``reporter.stage(network, stage)``; the reporter sums the time of every stage over the
networks (``reporter.timings``, also returned in ``AnalysisResult.timings``) and, if given a
``write`` callable, reports as it goes:

- ``bars=False`` (a log file, a job scheduler, a notebook): one line when a stage of a network
  ends, with the stage's time, the run's elapsed time and, once a network is done, the
  estimated time left; inside a long stage a line at least every ``interval`` seconds (a
  heartbeat thread calls :meth:`ProgressReporter.tick`) or every ``fraction`` of its units;
- ``bars=True`` (a terminal): a tqdm bar for stages counted in units (the forward passes), no
  per-stage lines.

Times come from ``clock`` (``time.perf_counter`` unless injected, e.g. a fake clock in tests).

Examples
--------
>>> now = [0.0]
>>> lines = []
>>> reporter = ProgressReporter(write=lines.append, clock=lambda: now[0], num_networks=2, heartbeat=False)
>>> with reporter.network("teacher"):
...     with reporter.stage("teacher", "features", total=100, unit="images") as stage:
...         now[0] = 10.0
...         stage.advance(50)
...         now[0] = 20.0
...         stage.advance(50)
>>> lines[0]
'teacher: features 50/100 images (50%), 10 s elapsed, about 10 s left'
>>> lines[-1]
'[1/2] teacher done in 20 s; run 20 s elapsed, about 20 s left'
>>> reporter.timings
{'features': 20.0}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

# The stages of an analysis, in the order the final line lists them.
STAGES = ("loading", "features", "heatmaps", "k-NN graphs", "spectra", "consistency", "smoothness",
          "distances", "probe", "variants", "teacher cache")


def format_seconds(seconds: float) -> str:
    """A short human duration.

    Examples
    --------
    >>> format_seconds(4.24), format_seconds(75), format_seconds(3725)
    ('4.2 s', '1 min 15 s', '1 h 2 min')
    """
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        minutes, rest = divmod(int(round(seconds)), 60)
        return f"{minutes} min {rest} s"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60} min"


def remaining_estimate(*, done: float, total: float, elapsed: float) -> float | None:
    """Time left at a constant rate: ``elapsed / done * (total - done)`` (``None`` before any is done).

    Examples
    --------
    >>> remaining_estimate(done=25, total=100, elapsed=5.0)
    15.0
    >>> remaining_estimate(done=0, total=100, elapsed=5.0) is None
    True
    """
    if done <= 0 or total <= 0:
        return None
    return elapsed / done * max(0.0, total - done)


class Stage:
    """One stage of one network, as ``ProgressReporter.stage`` yields it; ``advance(n)`` counts units."""

    def __init__(self, reporter: "ProgressReporter", network: str, stage: str, *, total, unit: str, detail: str):
        self.reporter, self.network, self.stage = reporter, network, stage
        self.total, self.unit, self.detail = total, unit, detail
        self.done = 0
        self.start = reporter.clock()
        self.next_step = 1
        self.bar = None
        if reporter.bars and reporter.write is not None and total:
            from geokd.data.fetch import progress_bar

            self.bar = progress_bar(total=int(total), desc=f"{network} {stage}", progress=True)

    @property
    def label(self) -> str:
        return f"{self.network}{' ' + self.detail if self.detail else ''}: {self.stage}"

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done; may print a line (every ``fraction`` of the total)."""
        with self.reporter.lock:
            self.done += n
            if self.bar is not None:
                self.bar.update(n)
            # Whole steps of ``fraction`` (a running float sum would drift past 30 % etc.).
            step = self.reporter.fraction * self.total
            due = bool(self.total) and self.done < self.total and self.done >= self.next_step * step - 1e-9
            if due:
                self.next_step = int(self.done / step + 1e-9) + 1
        if due:
            self.reporter._emit(self.progress_line())

    def elapsed(self) -> float:
        return self.reporter.clock() - self.start

    def progress_line(self) -> str:
        """``network: stage done/total unit (p%), elapsed, about ... left`` (or the reference time left)."""
        elapsed = self.elapsed()
        if self.total:
            left = remaining_estimate(done=self.done, total=self.total, elapsed=elapsed)
            counted = f" {self.done:,}/{self.total:,}{' ' + self.unit if self.unit else ''} " \
                      f"({100 * self.done / self.total:.0f}%)"
        else:
            reference = self.reporter.reference(self.stage, self.detail)
            left = None if reference is None else max(0.0, reference - elapsed)
            counted = " running"
        tail = "" if left is None else f", about {format_seconds(left)} left"
        return f"{self.label}{counted}, {format_seconds(elapsed)} elapsed{tail}"


class NetworkTimer:
    """What :meth:`ProgressReporter.network` yields: ``typical`` says whether its time predicts the others'."""

    def __init__(self):
        self.typical = True


class ProgressReporter:
    """Times the stages of an analysis and, given ``write``, reports them as lines or bars.

    Parameters
    ----------
    write : callable, optional
        Called with each line (e.g. ``lambda s: print(s, file=sys.stderr)``); ``None``: silent,
        only the timings are kept.
    clock : callable
        Seconds, monotonic (default ``time.perf_counter``).
    bars : bool
        tqdm bars for counted stages instead of lines (for a terminal).
    num_networks : int, optional
        Networks in the run, for the time left.
    interval : float
        In line mode, the longest silence inside a stage, in seconds.
    fraction : float
        In line mode, a line every this fraction of a counted stage's units.
    heartbeat : bool
        Run a daemon thread that calls :meth:`tick` (line mode with ``write`` only).
    quiet_below : float
        A stage neither counted in units nor part of a layer gets its own line only if it
        took at least this many seconds (it is in the final breakdown all the same).
    """

    def __init__(self, *, write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter,
                 bars: bool = False, num_networks: int | None = None, interval: float = 30.0,
                 fraction: float = 0.1, heartbeat: bool = True, quiet_below: float = 1.0):
        if not interval > 0:
            raise ValueError(f"expected a positive progress interval in seconds, got {interval!r}")
        if not 0 < fraction <= 1:
            raise ValueError(f"expected a progress fraction in (0, 1], got {fraction!r}")
        self.write, self.clock, self.bars = write, clock, bool(bars)
        self.num_networks, self.interval, self.fraction = num_networks, float(interval), float(fraction)
        self.quiet_below = float(quiet_below)
        self.lock = threading.RLock()
        self.timings: dict[str, float] = {}
        self.network_seconds: list[float] = []
        self._references: dict[tuple[str, str], float] = {}
        self._current: Stage | None = None
        self._layer: dict[str, float] | None = None
        self._done_keys: set[tuple[str, str]] = set()
        self._pending: dict[tuple[str, str], float] = {}
        self._typical_seconds: list[float] = []
        self._network_start: float | None = None
        self.start = clock()
        self._last_emit = self.start
        self._stop = threading.Event()
        self._thread = None
        if heartbeat and write is not None and not self.bars:
            self._thread = threading.Thread(target=self._beat, name="geokd-progress", daemon=True)
            self._thread.start()

    # -- lines ---------------------------------------------------------------------------
    def _emit(self, line: str) -> None:
        with self.lock:
            self._last_emit = self.clock()
        if self.write is not None and not self.bars:
            self.write(line)

    def message(self, line: str) -> None:
        """Print ``line`` in either mode (e.g. a warning); silent without ``write``."""
        with self.lock:
            self._last_emit = self.clock()
        if self.write is not None:
            self.write(line)

    def tick(self) -> None:
        """Print the current stage's progress if nothing was printed for ``interval`` seconds."""
        with self.lock:
            stage = self._current
            due = stage is not None and self.clock() - self._last_emit >= self.interval
        if due:
            self._emit(stage.progress_line())

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 5.0)):
            self.tick()

    def close(self) -> None:
        """Stop the heartbeat thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # -- estimates -----------------------------------------------------------------------
    def reference(self, stage: str, detail: str) -> float | None:
        """The time the first (typical) network took for this stage and layer, the estimate of another's."""
        return self._references.get((stage, detail))

    def elapsed(self) -> float:
        return self.clock() - self.start

    def run_remaining(self) -> float | None:
        """Time left in the run: the current network's stages not done yet, at the time each took
        the first typical network that had it (less what the running one has spent), plus the networks
        not started at the mean time of those done. ``None`` before a network is done."""
        with self.lock:
            if not self._typical_seconds or self.num_networks is None:
                return None
            mean = sum(self._typical_seconds) / len(self._typical_seconds)
            running = self._network_start is not None
            left = max(0, self.num_networks - len(self.network_seconds) - running) * mean
            if running:
                active = self._current
                for key, seconds in self._references.items():
                    if key in self._done_keys:
                        continue
                    if active is not None and key == (active.stage, active.detail):
                        seconds = max(0.0, seconds - active.elapsed())
                    left += seconds
            return left

    # -- stages --------------------------------------------------------------------------
    @contextmanager
    def network(self, name: str):
        """Time one network's whole analysis; a line when it is done.

        Yields a :class:`NetworkTimer`; set its ``typical = False`` (e.g. a teacher read from
        the cache) to keep its time out of the estimates of the others.
        """
        timer = NetworkTimer()
        self._network_start = self.clock()
        self._done_keys = set()
        self._pending = {}
        try:
            yield timer
        except BaseException:   # a failed network is neither done nor an estimate
            self._network_start, self._pending = None, {}
            raise
        seconds = self.clock() - self._network_start
        self._network_start = None
        self.network_seconds.append(seconds)
        if timer.typical:
            self._typical_seconds.append(seconds)
            for key, value in self._pending.items():
                self._references.setdefault(key, value)
        self._pending = {}
        count = f"[{len(self.network_seconds)}/{self.num_networks}] " if self.num_networks else ""
        last = self.num_networks is not None and len(self.network_seconds) >= self.num_networks
        left = None if last else self.run_remaining()
        tail = "" if left is None else f", about {format_seconds(left)} left"
        self.message(f"{count}{name} done in {format_seconds(seconds)}; "
                     f"run {format_seconds(self.elapsed())} elapsed{tail}")

    @contextmanager
    def stage(self, network: str, stage: str, *, total: int | None = None, unit: str = "", detail: str = ""):
        """Time ``stage`` of ``network`` (``detail``: e.g. the layer); yields a :class:`Stage`."""
        current = Stage(self, network, stage, total=total, unit=unit, detail=detail)
        with self.lock:
            outer, self._current = self._current, current
        failed = False
        try:
            yield current
        except BaseException:
            failed = True
            raise
        finally:
            seconds = current.elapsed()
            with self.lock:
                self._current = outer
                if outer is None:   # nested stages are counted once, in the outer one
                    self.timings[stage] = self.timings.get(stage, 0.0) + seconds
                # The estimates of the next networks: this network's stage times, once it is done
                # (the cache is the teacher's alone).
                if stage != "teacher cache":
                    target = self._pending if self._network_start is not None else self._references
                    target.setdefault((stage, detail), seconds)
                self._done_keys.add((stage, detail))
                in_layer = self._layer is not None
                if in_layer:
                    self._layer[stage] = self._layer.get(stage, 0.0) + seconds
            if current.bar is not None:
                current.bar.close()
            # A layer's stages are reported in one line by :meth:`layer`; short uncounted stages
            # (loading a network, the heat maps) only in the final breakdown.
            if not failed and not in_layer and (total or seconds >= self.quiet_below):
                self._emit(f"{current.label} {format_seconds(seconds)}; run {format_seconds(self.elapsed())} elapsed")

    @contextmanager
    def layer(self, network: str, layer: str, *, index: int | None = None, count: int | None = None):
        """Group the stages of one layer: one line when it is done, with each stage's time.

        Examples
        --------
        >>> now, lines = [0.0], []
        >>> r = ProgressReporter(write=lines.append, clock=lambda: now[0], heartbeat=False)
        >>> with r.layer("gkd-0", "layer1", index=0, count=3):
        ...     with r.stage("gkd-0", "k-NN graphs", detail="layer1"):
        ...         now[0] = 2.0
        ...     with r.stage("gkd-0", "spectra", detail="layer1"):
        ...         now[0] = 5.0
        >>> lines
        ['gkd-0 layer1 (1/3): k-NN graphs 2.0 s, spectra 3.0 s; run 5.0 s elapsed']
        """
        with self.lock:
            self._layer = {}
        try:
            yield self
        finally:
            with self.lock:
                times, self._layer = self._layer, None
        # (not reached when the layer failed: the error is the news)
        position = f" ({index + 1}/{count})" if index is not None and count else ""
        parts = ", ".join(f"{s} {format_seconds(t)}" for s, t in times.items())
        left = self.run_remaining()
        tail = "" if left is None else f", about {format_seconds(left)} left"
        self._emit(f"{network} {layer}{position}: {parts or 'nothing'}; "
                   f"run {format_seconds(self.elapsed())} elapsed{tail}")

    def summary_line(self, *, total: float | None = None) -> str:
        """``time per stage (all networks): features 1 min 2 s, ...; total ...``.

        Examples
        --------
        >>> r = ProgressReporter()
        >>> r.timings = {"spectra": 3.0, "features": 12.0}
        >>> r.summary_line(total=16.0)
        'time per stage (all networks): features 12 s, spectra 3.0 s; other 1.0 s; total 16 s'
        """
        order = sorted(self.timings, key=lambda s: (STAGES.index(s) if s in STAGES else len(STAGES), s))
        parts = ", ".join(f"{s} {format_seconds(self.timings[s])}" for s in order)
        line = f"time per stage (all networks): {parts or 'none'}"
        if total is not None:
            other = max(0.0, total - sum(self.timings.values()))
            line += f"; other {format_seconds(other)}; total {format_seconds(total)}"
        return line
