"""The sweep's console: one line as each job starts and as it ends, a progress line with
the counts, the best job so far and the time left, and each job's own output (its epoch
lines, its warnings) in a log file in its job folder (``launch.job_output_to``).

Jobs run wherever their launcher puts them (loky workers, processes, Ray, SLURM), so the
console follows them where they all write: their child runs in MLflow, looked at every
``sweep.poll_seconds`` by a thread of the sweep's process. The counts and the best job are
the report's (:func:`report.build`), so the console and the report cannot disagree.
On a terminal the progress line is a live bar (tqdm); elsewhere (CI, a log file) it is a
plain line after each job's end, with no control characters.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TextIO

from cifar10_mlp.sweeps.report import PRUNED, SELECTION_METRIC, build, short_name, status
from cifar10_mlp.tracking.sweep_runs import ChildRun

log = logging.getLogger(__name__)


def shown_path(path: str) -> str:
    """``path`` relative to the working folder when it lies under it, as typed paths are."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def clock(seconds: float) -> str:
    """``1:05:09``, ``4:02``: hours only when there are some."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class SweepProgress:
    """What the console knows of a sweep's jobs, from successive looks at their runs: each
    look gives the lines to print (jobs that started, jobs that ended) and the progress."""

    def __init__(self, n_jobs: int, started_at: float) -> None:
        self.n_jobs = n_jobs
        self.started_at = started_at
        self.status: dict[str, str] = {}  # run id -> status at the last look
        self.order: dict[str, int] = {}  # run id -> 1, 2, ... in the order they started
        self.looked = False
        self.done_before = 0  # jobs that had ended before this session of the sweep
        self.children: list[ChildRun] = []

    def look(self, children: list[ChildRun]) -> list[tuple[str, bool]]:
        """The start and end lines since the last look, each with whether a job ended."""
        lines = []
        for run in children:
            before = self.status.get(run.run_id)
            self.status[run.run_id] = run.status
            if not self.looked and run.status != "RUNNING":
                continue  # ended in an earlier session of this sweep (resumed)
            if run.status == "RUNNING" and before != "RUNNING":
                lines.append((self.started(run), False))
            elif run.status != "RUNNING" and before != run.status:
                if before != "RUNNING":  # started (again) and ended between two looks
                    lines.append((self.started(run), False))
                lines.append((self.ended(run), True))
        if not self.looked:
            self.done_before = self.n_done()
        self.looked, self.children = True, children
        return lines

    def _label(self, run: ChildRun) -> str:
        number = self.order.setdefault(run.run_id, len(self.order) + 1)
        return f"[{number}/{self.n_jobs}] {run.name}"

    def started(self, run: ChildRun) -> str:
        return f"{self._label(run)}: started"

    def ended(self, run: ChildRun) -> str:
        took = f" in {clock(run.seconds)}" if run.seconds is not None else ""
        val = run.metrics.get(SELECTION_METRIC)
        if status(run) == PRUNED:
            outcome = (f"pruned after epoch {run.pruned_epoch}{took}" + (
                f", validation accuracy {val:.4f}" if val is not None else ""))
        elif run.status == "FINISHED":
            test = run.metrics.get("test_accuracy")
            outcome = (f"finished{took}: validation accuracy {val:.4f}" if val is not None
                       else f"finished{took}") + (f", test accuracy {test:.4f}"
                                                 if test is not None else "")
        elif run.status == "FAILED":
            outcome = f"failed: {run.error or 'see its log'}"
        else:
            outcome = f"stopped ({run.status}): {run.error or 'interrupted'}"
        where = f"; log {shown_path(run.job_log)}" if run.job_log else ""
        return f"{self._label(run)}: {outcome}{where}"

    def counts(self) -> str:
        """``3 of 8 jobs done: 2 finished, 1 pruned, 0 failed; best ...``."""
        report = build(self.children)
        done = report.n_finished + report.n_pruned + report.n_failed
        best = (f"; best validation accuracy "
                f"{report.best.metrics.get(SELECTION_METRIC, float('nan')):.4f} "
                f"({short_name(report.best.name)})" if report.best else "")
        return (f"{done} of {self.n_jobs} jobs done: {report.n_finished} finished, "
                f"{report.n_pruned} pruned, {report.n_failed} failed{best}")

    def n_done(self) -> int:
        return sum(s not in ("RUNNING", "KILLED") for s in self.status.values())

    def timing(self, now: float) -> str:
        """Elapsed time, and the time left at this session's pace so far."""
        elapsed = now - self.started_at
        finished_here = self.n_done() - self.done_before
        left = self.n_jobs - self.n_done()
        estimate = (f"about {clock(elapsed / finished_here * left)} left" if finished_here
                    and left > 0 else "time left unknown" if left > 0 else "none left")
        return f"{clock(elapsed)} elapsed, {estimate}"


class SweepConsole:
    """The thread that follows a sweep's jobs in MLflow and prints what they do."""

    def __init__(self, uri: str, parent_run_id: str, n_jobs: int, poll_s: float,
                 stream: TextIO | None = None) -> None:
        self.uri, self.parent_run_id, self.poll_s = uri, parent_run_id, poll_s
        self.progress = SweepProgress(n_jobs, time.monotonic())
        # its own copy of the terminal: a job running in this process (Hydra's basic
        # launcher) sends file descriptors 1 and 2 to its log file meanwhile
        self.stream = stream or os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        self.live = self.stream.isatty()
        self.bar = None
        self.failed_looks = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="sweep-console", daemon=True)

    def start(self) -> SweepConsole:
        if self.live:
            from tqdm import tqdm

            self.bar = tqdm(total=self.progress.n_jobs, file=self.stream, unit="job",
                            bar_format="{n}/{total} jobs done |{bar:12}| {desc}")
        self.thread.start()
        return self

    def close(self, look_again: bool = True) -> None:
        """Stop following the jobs; ``look_again``: first print what the last ones did (a
        sweep that ended), not when a stop is in a hurry."""
        self.done.set()
        self.thread.join()
        if look_again:
            self.look()
        if self.bar is not None:
            self.bar.close()
        self.stream.flush()

    def _follow(self) -> None:
        while not self.done.wait(self.poll_s):
            self.look()

    def look(self) -> None:
        """One look at the sweep's runs; its lines printed."""
        from cifar10_mlp.tracking.sweep_runs import sweep_children

        with self.lock:
            try:
                children = sweep_children(self.uri, self.parent_run_id)
            except Exception as err:  # the store is away: the jobs go on, so does the sweep
                self.failed_looks += 1
                if self.failed_looks == 1:
                    log.warning("the sweep console cannot read the sweep's runs (%s); "
                                "trying again every %s s", err, self.poll_s)
                return
            self._show(self.progress.look(children))

    def _show(self, lines: list[tuple[str, bool]]) -> None:
        progress = f"{self.progress.counts()}; {self.progress.timing(time.monotonic())}"
        if self.bar is None:
            for line, _ in lines:
                print(line, file=self.stream)
            if any(ended for _, ended in lines):
                print(f"progress: {progress}", file=self.stream)
            return
        for line, _ in lines:
            self.bar.write(line, file=self.stream)
        self.bar.n = self.progress.n_done()
        self.bar.set_description_str(progress.split(": ", 1)[1], refresh=False)
        self.bar.refresh()
