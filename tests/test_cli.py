"""End to end: the `cifar10-mlp` command in a subprocess, on a tiny archive, real SQLite store."""

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from conftest import tiny_overrides
from mlflow import MlflowClient

CLI = str(Path(sys.executable).parent / "cifar10-mlp")


def run_cli(args, cwd):
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_one_run_logs_everything_and_the_model_loads(tiny_cifar, tmp_path):
    overrides = [*tiny_overrides(tiny_cifar, tmp_path), "tracking.run_name=e2e"]
    done = run_cli(overrides, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout and "macro F1" in done.stdout
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
    assert {"config.yaml", "classification_report.json", "confusion_matrix.json", "plots",
            "model"} <= artifacts
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
    # the model loads from MLflow and predicts on raw uint8 images
    mlflow.set_tracking_uri(uri)
    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    probs = model.predict(tiny_cifar.x_test[:4], verbose=0)
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_bad_config_fails_fast_with_one_clear_line(tmp_path):
    done = run_cli(["model.dropout=1.5"], tmp_path)
    assert done.returncode != 0
    assert "cifar10-mlp: error: model.dropout=1.5 is not allowed: expected a value in [0, 1)" \
        in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_data_path_names_the_file(tmp_path):
    done = run_cli([f"data.path={tmp_path / 'absent.tar.gz'}"], tmp_path)
    assert done.returncode != 0
    assert f"{tmp_path / 'absent.tar.gz'}: no such file or folder" in done.stderr
