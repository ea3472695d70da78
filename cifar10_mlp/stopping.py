"""Ctrl-C and SIGTERM as a request to stop, which a run acts on at its next safe point.

A signal handler that raised would throw KeyboardInterrupt at whatever line happens to be
running: inside TensorFlow while it traces a function (which breaks TF's own state), in
MLflow mid-write, in a launcher's bookkeeping. Instead, :func:`on_signals` only records
the stop, and the run calls :meth:`StopRequest.check` where stopping is safe: before
each training and validation batch (``train.StopAtBatch``) and between its stages.
Work that nothing keeps (importing TensorFlow) a stop may cut short. A second Ctrl-C
while the run winds down exits at once; its MLflow run, left RUNNING, is ended KILLED by
the lost-run check of the next resume or report.

The command's own process holds a signal while Hydra composes the config
(:func:`held`): a single run takes it over as its first request; a sweep acts on it once
its parent run is open (:func:`release_held`), and from then on stops where it is.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

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


def left_to_the_sweep(signum, frame) -> None:
    """A worker's SIGINT handler between its jobs: the sweep's own process, which got the
    same Ctrl-C, stops the sweep; a KeyboardInterrupt here would land in the pool's code (a
    joblib worker waiting for its next job or shutting down) and print its traceback."""


@contextmanager
def on_signals(worker: bool = False) -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM ask the returned request to stop, and a second
    SIGINT exits the process at once (status 130); before and after it, the process's own
    handlers apply (a joblib or Ray worker goes on to other jobs as its pool expects).
    ``worker``: the block is a sweep job; if its process raised KeyboardInterrupt on Ctrl-C
    (Python's default: a joblib worker), it leaves Ctrl-C to the sweep afterwards
    (:func:`left_to_the_sweep`).

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
    held_before = [h for h in previous.values() if isinstance(h, HeldSignals)]
    if held_before and held_before[0].received and (not held_before[0].raising
                                                    or held_before[0].deferred):
        # a stop that came while Hydra started, or composed this job (in-process launcher)
        held_before[0].deferred = False
        request.ask(held_before[0].received[0])
    if worker and previous[signal.SIGINT] is signal.default_int_handler:
        previous[signal.SIGINT] = left_to_the_sweep
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


RETRY_S = 0.05  # how soon a stop that met code it must not land in is delivered again


class Interrupter:
    """A signal handler that stops the process where it is, with a KeyboardInterrupt, but
    not where ``defer_in(frame)`` says it must not land (code that turns it into another
    error, such as Hydra's config composition): there the signal is delivered to it again
    :data:`RETRY_S` later, until it lands elsewhere. ``None``: it lands anywhere."""

    def __init__(self, defer_in: Callable[[FrameType], bool] | None = None) -> None:
        self.defer_in = defer_in
        self.deferred = False  # a stop met such code and comes again

    def interrupt(self, signum: int, frame: FrameType | None, name: str) -> None:
        """Raise ``KeyboardInterrupt(name)`` in ``frame``, or, where it must not land, come
        again (if this is still the process's handler for ``signum`` then)."""
        if frame is not None and self.defer_in is not None and self.defer_in(frame):
            self.deferred = True
            timer = threading.Timer(RETRY_S, self._again, (signum,))
            timer.daemon = True
            timer.start()
            return
        self.deferred = False
        raise KeyboardInterrupt(name)

    def _again(self, signum: int) -> None:
        if self.deferred and signal.getsignal(signum) is self:
            signal.pthread_kill(threading.main_thread().ident, signum)


class HeldSignals(Interrupter):
    """The signal handler of a sweep's own process: it holds SIGINT and SIGTERM while Hydra
    composes the config (a KeyboardInterrupt inside OmegaConf turns into a config error and
    no clean stop), then, once :func:`release_held` is called, raises KeyboardInterrupt
    (named by the signal) where the process is, except where ``defer_in`` says (see
    :class:`Interrupter`), which stops the sweep as a whole."""

    def __init__(self, defer_in: Callable[[FrameType], bool] | None = None) -> None:
        super().__init__(defer_in)
        self.received: list[str] = []
        self.raising = False
        # what ends the work a stop met (a sweep's stop), for the entry point to call
        self.stop_work: Callable[[str], str | None] | None = None

    def __call__(self, signum, frame) -> None:
        if not self.deferred:
            self.received.append(SIGNAL_NAMES[signum])
        if self.raising:
            self.interrupt(signum, frame, SIGNAL_NAMES[signum])


@contextmanager
def held(defer_in: Callable[[FrameType], bool] | None = None) -> Iterator[HeldSignals]:
    """Within the block, SIGINT (unless ignored) and SIGTERM are held by a
    :class:`HeldSignals` (``defer_in``: where, once released, a stop must not land), until
    :func:`release_held` or a run's :func:`on_signals` takes them; afterwards the process's
    own handlers are back."""
    handler = HeldSignals(defer_in)
    previous = {signum: signal.getsignal(signum) for signum in SIGNAL_NAMES}
    for signum, before in previous.items():
        if before is not signal.SIG_IGN or signum != signal.SIGINT:
            signal.signal(signum, handler)
    try:
        yield handler
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def release_held(stop_work: Callable[[str], str | None] | None = None) -> None:
    """From here on, a signal the process holds stops it where it is; one held already
    does so now. ``stop_work`` (given the signal's name, it ends the work, say a sweep, and
    returns the line to print) is left with the holder for the entry point that holds them
    (:attr:`HeldSignals.stop_work`). Nothing happens in a process that holds none."""
    handler = signal.getsignal(signal.SIGTERM)
    if isinstance(handler, HeldSignals) and not handler.raising:
        handler.stop_work = stop_work
        handler.raising = True
        if handler.received:
            raise KeyboardInterrupt(handler.received[0])


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them.

    A signal that lands inside a store write can leave a SQLite transaction open and
    the database locked, so the run could not even be marked KILLED afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    held: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, lambda received, frame: held.append(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])
