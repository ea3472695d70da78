"""Ctrl-C and SIGTERM as a request to stop, which a run acts on at its next safe point.

A signal handler that raised would throw KeyboardInterrupt at whatever line happens to be
running: inside TensorFlow while it traces a function (which breaks TF's own state), in
MLflow mid-write, in a launcher's bookkeeping. Instead, :func:`on_signals` only records
the stop, and the run calls :meth:`StopRequest.check` where stopping is safe: before
each training and validation batch (``train.StopAtBatch``) and between its stages.
Work that nothing keeps (importing TensorFlow) a stop may cut short. A second Ctrl-C
while the run winds down exits at once; its MLflow run, left RUNNING, is ended KILLED by
the lost-run check of the next resume or report.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# how the one line printed for a stop names each signal
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopRequested(KeyboardInterrupt):
    """Raised by the run itself, at a safe point, once a stop was asked for; it ends a run
    as Ctrl-C always has (KILLED, checkpoint kept)."""


class StopRequest:
    """Whether, and by which signal, this process was asked to stop."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.droppable = False  # within at_once(): a stop raises where it lands

    def ask(self, reason: str) -> None:
        """Ask for a stop (what a signal does); within :meth:`at_once`, stop there."""
        self.reason = self.reason or reason
        if self.droppable:
            self.droppable = False
            raise StopRequested(self.reason)

    @contextmanager
    def at_once(self) -> Iterator[None]:
        """Within the block, a stop raises :class:`StopRequested` where it lands, for work
        that a stop may cut short because nothing of it is kept (importing TensorFlow: the
        process ends after a stop, so no half-imported module is used again). Whatever
        error the cut-short work raises then counts as the stop."""
        self.check()
        self.droppable = True
        try:
            yield
        except Exception as err:
            if self.reason is None:
                raise
            raise StopRequested(self.reason) from err
        finally:
            self.droppable = False

    def check(self) -> None:
        """Raise :class:`StopRequested` if a stop was asked for: call where stopping is safe."""
        if self.reason is not None:
            raise StopRequested(self.reason)


@contextmanager
def on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM ask the returned request to stop, and a second
    SIGINT exits the process at once (status 130); before and after it, the process's own
    handlers apply (a joblib or Ray worker goes on to other jobs as its pool expects).

    A SIGINT that the process ignores (started in the background by a shell) stays ignored.
    Outside the main thread, where Python delivers no signals, the block runs unguarded.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame) -> None:
        if request.reason is not None and signum == signal.SIGINT:
            os.write(2, b"\ncifar10-mlp: second Ctrl-C: stopped at once; the run's MLflow "
                        b"record is ended KILLED by the next resume or report\n")
            os._exit(130)
        request.ask(SIGNAL_NAMES[signum])

    previous = {signum: signal.getsignal(signum) for signum in SIGNAL_NAMES}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN or signum != signal.SIGINT:
            signal.signal(signum, handle)
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
