"""Ctrl-C and SIGTERM are requests that a run acts on where stopping is safe."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from cifar10_mlp import stopping


@pytest.fixture(autouse=True)
def ctrl_c_as_a_terminal_delivers_it():
    """Python's own SIGINT handler, whatever pytest inherited: started in the background by
    a non-interactive shell, it would ignore SIGINT, and an ignored Ctrl-C stays ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_only_asks_and_the_run_stops_where_it_checks():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stopping.on_signals() as request:
        request.check()  # nothing asked yet
        signal.raise_signal(signal.SIGTERM)  # no exception here, wherever the code was
        assert request.reason == "SIGTERM"
        signal.raise_signal(signal.SIGTERM)  # a scheduler repeating itself: still a request
        with pytest.raises(stopping.StopRequested, match="SIGTERM") as stopped:
            request.check()
    assert isinstance(stopped.value, KeyboardInterrupt)  # ends a run as Ctrl-C always has
    assert {s: signal.getsignal(s) for s in before} == before  # a worker's own handlers back


def test_work_that_nothing_keeps_is_cut_short_where_the_stop_lands():
    with stopping.on_signals() as request:
        with pytest.raises(stopping.StopRequested, match="SIGTERM"), request.at_once():
            signal.raise_signal(signal.SIGTERM)
            pytest.fail("the block went on after the stop")
        assert not request.droppable  # after the block, a signal only asks again
    with stopping.on_signals() as request:
        # what the cut-short work raises instead (an import that failed half-way) is the stop
        with pytest.raises(stopping.StopRequested, match="Ctrl-C"), request.at_once():
            try:
                signal.raise_signal(signal.SIGINT)
            except stopping.StopRequested as stopped:
                raise ImportError("partially initialised module") from stopped
        # a stop asked before the block: the work does not begin
        with pytest.raises(stopping.StopRequested), request.at_once():
            pytest.fail("the block began after the stop")
    with pytest.raises(ImportError), stopping.StopRequest().at_once():  # no stop: itself
        raise ImportError("a real import error")


def test_a_sweep_holds_a_signal_while_hydra_starts_then_stops_where_it_is():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def stop_sweep(reason):
        return f"sweep stopped by {reason}"

    with stopping.held() as signals:
        assert signals.stop_work is None  # no sweep open: the entry point has none to end
        signal.raise_signal(signal.SIGTERM)  # while Hydra composes: nothing raised there
        with pytest.raises(KeyboardInterrupt, match="SIGTERM") as stopped:
            stopping.release_held(stop_work=stop_sweep)  # the sweep's parent is open: stop
        # the entry point that holds the signals ends the sweep it was handed
        assert signals.stop_work(str(stopped.value)) == "sweep stopped by SIGTERM"
        with pytest.raises(KeyboardInterrupt, match="Ctrl-C"):
            signal.raise_signal(signal.SIGINT)  # and from then on, where it lands
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_released_stop_waits_while_it_would_land_where_it_must_not():
    composing = True  # what the process is doing, as the handler's predicate sees it
    with stopping.held(defer_in=lambda frame: composing):
        stopping.release_held()
        signal.raise_signal(signal.SIGTERM)  # lands "inside": not raised there
        time.sleep(5 * stopping.RETRY_S)  # delivered again meanwhile, still inside
        composing = False
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            time.sleep(50 * stopping.RETRY_S)  # delivered again, outside: the stop lands
            pytest.fail("the stop never came")
        time.sleep(3 * stopping.RETRY_S)  # and once only


def test_a_stop_lands_outside_hydras_config_composition():
    """Hydra's config loader and OmegaConf turn a KeyboardInterrupt that meets them
    mid-update into a config error: a sweep stopped there ended in a traceback."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from cifar10_mlp.config import schema
    from cifar10_mlp.sweeps.launch import composing_config

    schema.register_configs()
    rng = random.Random(0)
    with initialize_config_module("cifar10_mlp.conf", version_base="1.3"), \
            stopping.held(defer_in=composing_config):
        loader = GlobalHydra.instance().config_loader()
        sweep = loader.load_configuration("config", [], RunMode.MULTIRUN)
        stopping.release_held()
        for _ in range(8):
            stop = threading.Timer(rng.uniform(0.0, 0.1), os.kill,
                                   (os.getpid(), signal.SIGTERM))
            with pytest.raises(KeyboardInterrupt, match="SIGTERM") as stopped:
                stop.start()
                for _ in range(3):  # a launcher composes its jobs' configs, then waits
                    loader.load_sweep_config(sweep, ["model.hidden=[32]"])
                time.sleep(30)
            stop.join()
            # the code the stop met, from this test down to the signal handler
            met, frame = [], stopped.tb
            while frame.tb_frame.f_code.co_filename != stopping.__file__:
                met.append(frame.tb_frame.f_globals["__name__"].partition(".")[0])
                frame = frame.tb_next
            assert not {"hydra", "omegaconf", "yaml", "antlr4"} & set(met), met


def test_a_run_takes_over_a_stop_that_waited_for_its_config():
    # an in-process launcher composes the job's config, then the job takes over signals
    with stopping.held(defer_in=lambda frame: True):
        stopping.release_held()
        signal.raise_signal(signal.SIGTERM)
        with stopping.on_signals() as request, pytest.raises(stopping.StopRequested,
                                                             match="SIGTERM"):
            time.sleep(3 * stopping.RETRY_S)  # no KeyboardInterrupt: the run's request
            request.check()
        time.sleep(3 * stopping.RETRY_S)  # taken over: not delivered again


def test_a_run_takes_over_a_stop_held_while_hydra_started():
    with stopping.held():
        signal.raise_signal(signal.SIGINT)
        with stopping.on_signals() as request, pytest.raises(stopping.StopRequested,
                                                             match="Ctrl-C"):
            request.check()
    with stopping.held():  # nothing held: the run starts as usual
        with stopping.on_signals() as request:
            request.check()
        stopping.release_held()


def test_an_ignored_ctrl_c_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's background job
    try:
        with stopping.on_signals() as request:
            signal.raise_signal(signal.SIGINT)
            assert request.reason is None
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)



def test_a_worker_leaves_ctrl_c_between_its_jobs_to_the_sweep():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a joblib worker's
    try:
        for _ in range(2):  # a job, then the next one in the same worker
            with stopping.on_signals(worker=True) as request:
                signal.raise_signal(signal.SIGINT)
                assert request.reason == "Ctrl-C"  # within a job: the job's stop request
            signal.raise_signal(signal.SIGINT)  # between jobs, or as the pool shuts it down
            assert signal.getsignal(signal.SIGINT) is stopping.left_to_the_sweep
        with stopping.held():  # the sweep's own process (basic launcher): its handler back
            with stopping.on_signals(worker=True):
                pass
            assert isinstance(signal.getsignal(signal.SIGINT), stopping.HeldSignals)
    finally:
        signal.signal(signal.SIGINT, previous)

@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once():
    script = ("import signal, time\n"
              "from cifar10_mlp import stopping\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "with stopping.on_signals() as request:\n"
              "    signal.raise_signal(signal.SIGINT)\n"
              "    print(request.reason, flush=True)\n"
              "    signal.raise_signal(signal.SIGINT)\n"
              "    time.sleep(30)\n"
              "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=20)
    assert done.returncode == 130
    assert done.stdout == "Ctrl-C\n"
    assert done.stderr.strip().startswith("cifar10-mlp: second Ctrl-C: stopped at once")


def test_a_job_process_stopped_as_it_ends_exits_without_a_traceback():
    from hydra_plugins.cifar10_mlp_process_launcher.process_launcher import StopBeforeJob

    handler = StopBeforeJob()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):  # before its job: ends it
            signal.raise_signal(signal.SIGTERM)
        handler.armed = False  # the process is restoring its handlers, then exits
        signal.raise_signal(signal.SIGTERM)  # a stop meeting that is ignored, not raised
    finally:
        signal.signal(signal.SIGTERM, previous)
