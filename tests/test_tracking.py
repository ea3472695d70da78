import signal

import pytest
from mlflow import MlflowClient

from cifar10_mlp import stopping
from cifar10_mlp.data import archive
from cifar10_mlp.tracking import provenance, runs


def test_a_run_that_raises_ends_failed_with_the_error_recorded(tiny_cfg):
    split = archive.load(tiny_cfg.data, tiny_cfg.seed)
    with pytest.raises(RuntimeError, match="loss exploded"), \
            runs.start_run(tiny_cfg, ["trainer.epochs=2"], split) as run:
        raise RuntimeError("loss exploded")
    client = MlflowClient(tiny_cfg.tracking.uri)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["error"] == "RuntimeError: loss exploded"
    assert logged.data.tags["overrides"] == "trainer.epochs=2"
    assert logged.data.params["model.hidden"] == "[32, 16]"
    traceback_file = client.download_artifacts(run.run_id, "error.txt")
    with open(traceback_file) as f:
        assert "RuntimeError: loss exploded" in f.read()


def test_flatten_gives_dotted_keys():
    flat = provenance.flatten({"model": {"hidden": [8, 4], "bn": True}, "seed": 1})
    assert flat == {"model.hidden": "[8, 4]", "model.bn": "True", "seed": "1"}


def test_a_signal_during_a_store_write_is_delivered_after_the_write():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        written = []
        with pytest.raises(KeyboardInterrupt), stopping.uninterrupted():
            signal.raise_signal(signal.SIGINT)
            written.append("metrics")
        assert written == ["metrics"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
