"""The data report on a tiny archive with known contents, injected duplicates included."""

import json

import numpy as np
import pytest
from conftest import PER_BATCH, compose_config, tiny_overrides, write_batch, write_tiny_cifar
from mlflow import MlflowClient

from cifar10_mlp import runner


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One data report, which the tests below read (it runs t-SNE and draws five figures)."""
    tmp_path = tmp_path_factory.mktemp("eda")
    tiny = write_tiny_cifar(tmp_path / "data")
    # data_batch_1: image 1 repeats image 0, and image 2 is test image 5
    x = tiny.x_train.copy()
    x[1] = x[0]
    x[2] = tiny.x_test[5]
    write_batch(tiny.folder / "data_batch_1", x[:PER_BATCH], tiny.y_train[:PER_BATCH])
    overrides = [*tiny_overrides(tiny, tmp_path), f"data.path={tiny.folder}",
                 f"eda.out_dir={tmp_path / 'eda'}", "eda.projection_samples=60",
                 "eda.tsne_samples=40", "eda.samples_per_class=3"]
    cfg = compose_config(overrides, config_name="eda_config")
    run_id, page = runner.explore(cfg, overrides)
    stats = json.loads((tmp_path / "eda" / "statistics.json").read_text())
    return tiny, x, cfg, run_id, page, stats


def test_counts_and_pixel_statistics_are_exact(report):
    tiny, x, _, _, _, stats = report
    assert stats["counts"]["train"] == [8] * 10
    assert stats["counts"]["val"] == [2] * 10
    assert stats["counts"]["test"] == [2] * 10
    test_channels = tiny.x_test.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats["pixels_before"]["test"]["mean"], test_channels.mean(0))
    np.testing.assert_allclose(stats["pixels_before"]["test"]["std"], test_channels.std(0))
    # train and validation together are exactly the training pool
    pooled = (80 * np.array(stats["pixels_before"]["train"]["mean"])
              + 20 * np.array(stats["pixels_before"]["val"]["mean"])) / 100
    np.testing.assert_allclose(pooled, x.reshape(-1, 3).mean(0))
    # standardised with training statistics: the training split is centred and scaled
    np.testing.assert_allclose(stats["pixels_after_train"]["mean"], 0, atol=1e-4)
    np.testing.assert_allclose(stats["pixels_after_train"]["std"], 1, atol=1e-3)


def test_injected_duplicates_are_found(report):
    dup = report[-1]["duplicates"]
    assert dup["within"]["train"] + dup["within"]["val"] + dup["across"]["train-val"] == 1
    assert dup["across"]["train-test"] + dup["across"]["val-test"] == 1
    assert dup["within"]["test"] == 0


def test_figures_page_and_run_are_produced_and_logged(report):
    _, _, cfg, run_id, page, _ = report
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == 5
    assert "airplane" in text and "Exact duplicates" in text and "<table>" in text
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "eda"
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {f"plots/{name}.png" for name in
                     ("class_counts", "samples", "pixel_histograms", "class_means", "projections")}
    assert {"statistics.json", "eda.html"} <= {a.path for a in client.list_artifacts(run_id)}
