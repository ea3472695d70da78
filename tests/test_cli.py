"""End to end: the `cifar10-mlp` command in a subprocess, on a tiny archive, real SQLite store."""

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from conftest import tiny_overrides
from mlflow import MlflowClient

from cifar10_mlp.tracking.store import open_client, open_experiment

CLI = str(Path(sys.executable).parent / "cifar10-mlp")


def wait_for_epochs(process, client, epochs, timeout=240):
    """The id of the run a CLI subprocess is training, once it has logged ``epochs`` epochs."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, f"no {epochs} epochs logged in {timeout} s"
        time.sleep(0.5)
        # under the store's lock: the run may be creating the store right now, and two
        # processes migrating one new SQLite file at once fail
        experiment = open_experiment(client.tracking_uri, "tests", create=False)
        runs = client.search_runs([experiment]) if experiment else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "loss")) >= epochs:
            return runs[0].info.run_id


def ctrl_c_enabled():
    """In the child: take SIGINT as a terminal would deliver it, even when pytest itself was
    started in the background, where the shell ignores SIGINT and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(args, cwd):
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_one_run_logs_everything_and_the_model_loads(tiny_cifar, tmp_path):
    overrides = [*tiny_overrides(tiny_cifar, tmp_path), "tracking.run_name=e2e"]
    done = run_cli(overrides, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout and "macro F1" in done.stdout
    # TensorFlow's native start-up chatter is not shown (no GPU is not an error)
    assert "absl::InitializeLog" not in done.stderr and "cuInit" not in done.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri}" in done.stdout

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.run_id in done.stdout
    assert run.info.status == "FINISHED"
    # the resolved config as params, and the overrides as a tag
    assert run.data.params["model.hidden"] == "[32, 16]"
    assert run.data.params["trainer.epochs"] == "2"
    assert run.data.params["split.n_train"] == "80"
    assert run.data.tags["overrides"] == " ".join(overrides)
    assert run.data.tags["version.tensorflow"] and run.data.tags["version.keras"]
    assert len(run.data.tags["git_commit"]) == 40  # the tests run from a git checkout
    # per-epoch metrics, one value per epoch
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2], key
    # test metrics: overall, per class, averaged
    metrics = run.data.metrics
    for key in ("test_loss", "test_accuracy", "test_f1_macro", "test_precision_weighted",
                "test_recall_airplane", "test_f1_truck", "selected_val_accuracy"):
        assert 0 <= metrics[key] <= (10 if key == "test_loss" else 1), key
    assert f"{metrics['test_accuracy']:.4f}" in done.stdout
    # artifacts: figures, config, report
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "classification_report.json", "confusion_matrix.json",
            "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/misclassified.png",
                     "plots/learning_curves.png"}
    config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml",
                                                           str(tmp_path))).read_text())
    assert config["model"]["hidden"] == [32, 16] and config["data"]["path"] == str(
        tiny_cifar.archive)
    # the dataset as an MLflow input
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "cifar10"
    assert len(dataset_input.dataset.digest) == 16
    # the model (an MLflow 3 LoggedModel, tests/test_models.py) loads by the URI printed
    # and predicts on raw uint8 images
    mlflow.set_tracking_uri(uri)
    assert f"model {run.data.tags['model_uri']}\n" in done.stdout
    model = mlflow.keras.load_model(run.data.tags["model_uri"])
    probs = model.predict(tiny_cifar.x_test[:4], verbose=0)
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_bad_config_fails_fast_with_one_clear_line(tmp_path):
    done = run_cli(["model.dropout=1.5"], tmp_path)
    assert done.returncode != 0
    assert "cifar10-mlp: error: model.dropout=1.5 is not allowed: expected a value in [0, 1)" \
        in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_missing_data_path_names_the_file(tmp_path):
    done = run_cli([f"data.path={tmp_path / 'absent.tar.gz'}"], tmp_path)
    assert done.returncode != 0
    assert f"{tmp_path / 'absent.tar.gz'}: no such file or folder" in done.stderr


@pytest.mark.parametrize("overrides, message", [
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed: expected an integer >= 1"),
    # values that once got through: a TypeError, a Keras error after loading, NaN in training
    (["trainer.early_stopping.monitor=foo"],
     "trainer.early_stopping.monitor='foo' is not allowed: expected one of val_accuracy"),
    (["optimizer=sgd", "optimizer.momentum=1.5"],
     "optimizer.momentum=1.5 is not allowed: expected a value in [0, 1)"),
    (["preprocess=zca", "preprocess.epsilon=-1"],
     "preprocess.epsilon=-1.0 is not allowed: expected a number > 0"),
])
@pytest.mark.slow
def test_bad_config_fails_before_tensorflow_is_imported(tmp_path, overrides, message):
    done = subprocess.run([sys.executable, "-X", "importtime", CLI, *overrides],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith(f"cifar10-mlp: error: {message}")
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "hydra" in imported and "tensorflow" not in imported and "keras" not in imported


@pytest.mark.slow
def test_diverging_run_fails_with_the_epoch_and_is_recorded(tiny_cifar, tmp_path):
    done = run_cli([*tiny_overrides(tiny_cifar, tmp_path), "optimizer.lr=1e12"], tmp_path)
    assert done.returncode != 0
    assert "cifar10-mlp: error: training loss became nan in epoch 1" in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("TrainingDiverged: training loss became nan in "
                                             "epoch 1")


@pytest.mark.slow
def test_unreachable_tracking_server_fails_fast_and_trains_nothing(tiny_cifar, tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [*tiny_overrides(tiny_cifar, tmp_path), f"tracking.uri=http://127.0.0.1:{port}"]
    done = run_cli(overrides, tmp_path)
    assert done.returncode != 0
    assert f"tracking.uri=http://127.0.0.1:{port}: no MLflow server answers there" in done.stderr
    assert "Epoch" not in done.stdout


def test_locked_sqlite_store_gives_a_clear_error(tmp_path):
    from cifar10_mlp.tracking.store import TrackingStoreError, check_store

    path = tmp_path / "mlflow.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(TrackingStoreError, match=r"mlflow\.db cannot be written \(database "
                                                     r"is locked\)"):
            check_store(f"sqlite:///{path}", timeout=0.2)
    finally:
        holder.rollback()
        holder.close()
    check_store(f"sqlite:///{path}", timeout=0.2)  # free again


def interrupt_after_epochs(overrides, tmp_path, epochs, signum):
    """Run the CLI, send ``signum`` once ``epochs`` epochs are logged and check that the run
    ended KILLED with the epochs so far, each once; return its id and epoch count."""
    process = subprocess.Popen([CLI, *overrides], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_enabled)
    client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")  # it may be creating it
    run_id = wait_for_epochs(process, client, epochs)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    reason = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert stderr.strip().splitlines()[-1] == (
        f"cifar10-mlp: stopped by {reason}; the MLflow run, if it had started, is marked "
        "KILLED with every finished epoch; trainer.resume=true continues it")
    assert client.get_run(run_id).info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= epochs
    return run_id, len(steps)


@pytest.mark.slow
def test_sigterm_ends_the_run_killed_with_the_epochs_so_far(tiny_cifar, tmp_path):
    overrides = [*tiny_overrides(tiny_cifar, tmp_path), "trainer.epochs=500",
                 "trainer.early_stopping.patience=null"]
    _, logged = interrupt_after_epochs(overrides, tmp_path, 2, signal.SIGTERM)
    assert logged < 500


@pytest.mark.slow
def test_ctrl_c_then_resume_continues_the_run_to_its_last_epoch(tiny_cifar, tmp_path):
    epochs = 40  # ~0.3 s each: enough left to interrupt after 3
    overrides = [*tiny_overrides(tiny_cifar, tmp_path), f"trainer.epochs={epochs}",
                 "trainer.early_stopping.patience=null", "tracking.log_model=false"]
    run_id, interrupted_at = interrupt_after_epochs(overrides, tmp_path, 3, signal.SIGINT)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")

    done = run_cli([*overrides, "trainer.resume=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run_id in done.stdout  # the same MLflow run went on
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    for key in ("loss", "val_accuracy", "lr"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == list(range(1, epochs + 1)), key  # each epoch exactly once
    assert run.data.metrics["epochs_trained"] == epochs
    assert interrupted_at < epochs
    assert not (tmp_path / "checkpoints" / run_id).exists()  # cleaned up when finished


@pytest.mark.slow
def test_resume_without_an_interrupted_run_says_so(tiny_cifar, tmp_path):
    done = run_cli([*tiny_overrides(tiny_cifar, tmp_path), "trainer.resume=true"], tmp_path)
    assert done.returncode != 0
    assert ("trainer.resume=true: no interrupted run (KILLED, or RUNNING with its process gone) "
            "in experiment 'tests'") in done.stderr


@pytest.mark.slow
def test_three_runs_started_at_once_on_a_fresh_store_all_finish(tiny_cifar, tmp_path):
    overrides = [o for o in tiny_overrides(tiny_cifar, tmp_path)
                 if not o.startswith("trainer.epochs")] + ["trainer.epochs=1",
                                                            "tracking.log_model=false"]
    assert not (tmp_path / "mlflow.db").exists()
    runs = [subprocess.Popen([CLI, *overrides, f"seed={seed}"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed in (1, 2, 3)]
    for process in runs:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "tests"]
    finished = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["seed"] for r in finished) == ["1", "2", "3"]
    assert {r.info.status for r in finished} == {"FINISHED"}


@pytest.mark.slow
def test_help_names_the_tool_shows_common_commands_and_only_real_options(tmp_path):
    done = run_cli(["--help"], tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("cifar10-mlp: train an MLP on CIFAR-10")
    assert "powered by Hydra" not in done.stdout and "_schema" not in done.stdout
    assert "Usage: cifar10-mlp [-m] [group=option ...] [key=value ...]" in done.stdout
    assert "hparams_search=mlp_asha" in done.stdout and "trainer.resume=true" in done.stdout
    assert "\noptimizer: adam, adamw, lion, sgd\n" in done.stdout
    assert "\n  val_size: 0.1\n" in done.stdout  # the config, every key overridable


@pytest.mark.slow
def test_a_run_killed_with_sigkill_is_continued_by_resume(tiny_cifar, tmp_path):
    overrides = [*tiny_overrides(tiny_cifar, tmp_path), "trainer.epochs=30",
                 "trainer.early_stopping.patience=null", "tracking.log_model=false"]
    process = subprocess.Popen([CLI, *overrides], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")  # it may be creating it
    run_id = wait_for_epochs(process, client, 2)
    process.kill()  # SIGKILL: nothing in the process gets to mark the run
    process.wait()
    assert client.get_run(run_id).info.status == "RUNNING"  # what the store is left with

    done = run_cli([*overrides, "trainer.resume=true"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(1, 31))  # each epoch once: the lost ones from its checkpoint
    assert "error" not in run.data.tags
