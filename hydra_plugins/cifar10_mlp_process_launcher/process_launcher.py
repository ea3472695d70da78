"""Hydra launcher that runs each sweep job in a fresh process of its own, ``n_jobs`` at once.

Hydra's joblib launcher runs jobs in a loky pool, and loky ends the whole pool when one of
its workers dies (SIGKILL, the out-of-memory killer): the other running jobs die with it,
the rest never start, and the sweep ends in a traceback. Here a job whose process dies is
logged and reported as ``launch.report_lost_job`` says (its run ends KILLED, ``error:
process lost``, for ``sweep.resume=true`` to continue), and the other jobs go on.
A fresh process per job also gives each job a TensorFlow of its own (its thread settings
apply), for one more import of TensorFlow per job.

Each job is a new Python (not a fork: the launching process has threads, MLflow's, that a
fork would copy mid-operation). A stop never prints a traceback from inside its imports:
it ignores Ctrl-C while Python starts (the sweep's own process stops the sweep, and
SIGTERMs and awaits its jobs), and until the job itself takes over signals, a stop ends
it at once; no run has opened by then.
"""

# no `from __future__ import annotations`: Hydra imports plugin modules outside
# sys.modules, where dataclasses cannot resolve string annotations
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait

import cloudpickle
from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from omegaconf import DictConfig

from cifar10_mlp import stopping
from cifar10_mlp.sweeps.launch import (
    JobLauncher,
    composing_config,
    job_config,
    jobs_at_once,
    report_lost_job,
    run_job_in_worker,
)

log = logging.getLogger(__name__)


@dataclass
class ProcessLauncherConf:
    _target_: str = ("hydra_plugins.cifar10_mlp_process_launcher.process_launcher."
                     "ProcessLauncher")
    # jobs running at once; -1: one per core, -2: all cores but one, ... (joblib's
    # convention). Each job's TensorFlow gets cores / n_jobs threads (trainer.threads: null)
    n_jobs: int = -1


ConfigStore.instance().store(group="hydra/launcher", name="processes",
                             node=ProcessLauncherConf, provider="cifar10_mlp")


class ProcessLauncher(JobLauncher):
    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
               ) -> Sequence[JobReturn]:
        from cifar10_mlp.stopping import uninterrupted

        sweep_dir = self.begin_launch()
        at_once = jobs_at_once(self.n_jobs)
        log.info("Process launcher: %d jobs, %d at a time, sweep output dir: %s",
                 len(job_overrides), at_once, sweep_dir)
        waiting = list(enumerate(job_overrides, start=initial_job_idx))
        running: list[JobProcess] = []
        returns: dict[int, JobReturn] = {}
        while waiting or running:
            try:
                while waiting and len(running) < at_once:
                    number, overrides = waiting.pop(0)
                    # a signal waits: inside OmegaConf it would turn into a config error
                    with uninterrupted():
                        sweep_config = job_config(self.hydra_context, self.config, overrides,
                                                  number, "process")
                        # cloudpickle: Hydra's task function is not importable by name
                        # (@hydra.main replaced it in its module)
                        job = cloudpickle.dumps((self.hydra_context, sweep_config,
                                                 self.task_function, Singleton.get_state(),
                                                 os.getcwd()))
                        running.append(JobProcess(job, sweep_config, number, overrides))
                ready = wait([job.reader for job in running])
            except BaseException:  # Ctrl-C or SIGTERM: the sweep stops (cli.main)
                stop_all(running)
                raise
            for job in [job for job in running if job.reader in ready and job.read()]:
                running.remove(job)
                returns[job.number] = job.outcome or report_lost_job(
                    self.hydra_context, job.sweep_config, job.overrides, job.how_lost())
        return [returns[number] for number in sorted(returns)]


def stop_all(running: list["JobProcess"], within_s: float = 30.0) -> None:
    """Stop the running jobs, and wait (``within_s`` at most) until their processes have
    ended, so none writes to the console after the sweep's last line. SIGTERM reaches the
    jobs that a Ctrl-C did not (still starting, ignoring it); a second Ctrl-C meanwhile exits
    at once."""
    with stopping.on_signals():
        for job in running:
            job.stop()
        deadline = time.monotonic() + within_s
        for job in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.process.wait(max(0.0, deadline - time.monotonic()))


class JobProcess:
    """One job running in a Python process of its own, and what it sent back."""

    def __init__(self, job: bytes, sweep_config: DictConfig, number: int,
                 overrides: Sequence[str]) -> None:
        self.sweep_config = sweep_config
        self.number = number
        self.overrides = list(overrides)
        self.outcome: JobReturn | None = None
        self.received = bytearray()
        self.reader, writer = os.pipe()
        # a SIGINT that this process ignores (started in the background) stays ignored
        keep_ignoring = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD_START, str(writer), str(int(keep_ignoring))],
            stdin=subprocess.PIPE, pass_fds=(writer,), preexec_fn=ignore_sigint)
        os.close(writer)
        with self.process.stdin:  # read first thing, before the child imports anything
            self.process.stdin.write(job)

    def read(self) -> bool:
        """Take what the job sent, as it arrives; whether it has ended (its pipe closed)."""
        chunk = os.read(self.reader, 1 << 20)
        self.received += chunk
        if chunk:
            return False
        os.close(self.reader)
        self.process.wait()
        with contextlib.suppress(Exception):  # cut short: it died while sending
            self.outcome = cloudpickle.loads(bytes(self.received))
        return True

    def stop(self) -> None:
        """Ask the job to stop (SIGTERM, which it takes as Ctrl-C): its sweep is stopping."""
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

    def how_lost(self) -> str:
        """How a process that sent nothing back ended: 'killed by SIGKILL', ..."""
        code = self.process.returncode
        if code < 0:
            return f"its process (pid {self.process.pid}) was killed by " \
                   f"{signal.Signals(-code).name}"
        return f"its process (pid {self.process.pid}) exited with status {code} without " \
               "returning"


def ignore_sigint() -> None:
    """In a job process, before it runs Python: a Ctrl-C there is ignored (an ignored signal
    stays ignored across exec, and Python then installs no handler of its own), so one that
    meets the interpreter's start-up cannot end it with a traceback; job_process_main takes
    SIGINT over once it can act on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# a job process's first lines (SIGINT is ignored already: see ignore_sigint)
CHILD_START = ("import signal, sys; "
               "job = sys.stdin.buffer.read(); "
               "from hydra_plugins.cifar10_mlp_process_launcher.process_launcher import "
               "job_process_main; job_process_main(job, int(sys.argv[1]), sys.argv[2] == '1')")


def job_process_main(job: bytes, result_fd: int, keep_ignoring: bool) -> None:
    """A job's process: run the job, write its JobReturn to ``result_fd``. A stop before
    the job itself takes over signals ends the process at once and quietly: no run has
    opened yet. The process then ends without the interpreter's shutdown (a second or more
    with TensorFlow loaded): its logs are flushed, and nothing else is left to close."""
    stop_before_job = StopBeforeJob()
    if not keep_ignoring:
        signal.signal(signal.SIGINT, stop_before_job)
    signal.signal(signal.SIGTERM, stop_before_job)
    status = 1
    try:
        job_return = run_job_in_worker(*cloudpickle.loads(job))
        with contextlib.suppress(BrokenPipeError), os.fdopen(result_fd, "wb") as result:
            result.write(cloudpickle.dumps(job_return))
        status = 0
    except KeyboardInterrupt:  # stopped: its run, if it had opened one, ended KILLED
        pass
    except Exception:  # the launcher reports the job lost; this says why
        traceback.print_exc()
    finally:
        stop_before_job.armed = False  # first: a stop arriving from here on is too late
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


class StopBeforeJob(stopping.Interrupter):
    """A job process's SIGINT / SIGTERM handler until its job takes over signals: a
    KeyboardInterrupt, while armed (not inside OmegaConf, as Hydra sets the job up).
    Disarmed as the process ends, so that a stop arriving while it restores the handlers
    cannot raise there (a traceback, and no clean exit)."""

    def __init__(self) -> None:
        super().__init__(defer_in=composing_config)
        self.armed = True

    def __call__(self, signum, frame) -> None:
        if self.armed:
            self.interrupt(signum, frame, signal.Signals(signum).name)
