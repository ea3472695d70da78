"""The notebook API (cifar10_mlp.api) and examples/quickstart.ipynb, run in a fresh kernel."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config, tiny_overrides
from matplotlib.figure import Figure
from mlflow import MlflowClient

from cifar10_mlp import api
from cifar10_mlp.config.allowed import ConfigError

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"
CLI = Path(sys.executable).parent / "cifar10-mlp"


def test_compose_gives_the_clis_config_with_its_launch_settings(tiny_cifar, tmp_path):
    overrides = [*tiny_overrides(tiny_cifar, tmp_path), "optimizer=sgd", "optimizer.lr=0.05"]
    cfg = api.compose(*overrides)
    expected = compose_config(overrides)
    assert cfg.trainer.threads >= 1 and expected.trainer.threads is None  # filled, as the CLI
    expected.trainer.threads = cfg.trainer.threads
    assert cfg == expected


def test_compose_refuses_what_the_cli_refuses_in_one_line(tiny_cifar, tmp_path):
    base = tiny_overrides(tiny_cifar, tmp_path)
    with pytest.raises(ConfigError, match=r"^optimizer.lr=-1.0 is not allowed: expected a "
                                          r"number > 0$"):
        api.compose(*base, "optimizer.lr=-1")
    with pytest.raises(api.UserError, match=r"^Could not override 'trainer.epochz'\.$"):
        api.compose(*base, "trainer.epochz=3")
    with pytest.raises(api.UserError, match=r"^optimizer.lr=0.1,0.01: a list of values makes a "
                                            r"sweep: use api.sweep\(\)$"):
        api.run(*base, "optimizer.lr=0.1,0.01")


@pytest.mark.slow
def test_runs_in_a_row_leave_nothing_behind_for_the_next(tiny_cifar, tmp_path):
    base = [*tiny_overrides(tiny_cifar, tmp_path), "tracking.log_model=false"]
    first = api.run(*base, "model.hidden=[16]")
    other = api.run(*base, "model.hidden=[32,16]", "optimizer.lr=0.01", "seed=3")
    again = api.run(*base, "model.hidden=[16]")
    assert again.summary.metrics["test_loss"] == first.summary.metrics["test_loss"]
    assert again.summary.metrics["selected_val_accuracy"] == \
        first.summary.metrics["selected_val_accuracy"]
    assert other.summary.metrics["test_loss"] != first.summary.metrics["test_loss"]
    # what it returns: the trained model, as it scored, and figures to show
    probabilities = first.model.predict(tiny_cifar.x_test, verbose=0)
    assert probabilities.shape == (len(tiny_cifar.y_test), 10)
    assert float((probabilities.argmax(axis=1) == tiny_cifar.y_test).mean()) == \
        pytest.approx(first.summary.metrics["test_accuracy"])
    assert {"learning_curves.png", "confusion_matrix.png"} <= set(first.figures)
    assert all(isinstance(figure, Figure) for figure in first.figures.values())
    # logged as the CLI logs: its overrides, its figures
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(other.summary.run_id)
    assert "model.hidden=[32,16]" in run.data.tags["overrides"]
    assert run.data.params["seed"] == "3"
    assert "plots/learning_curves.png" in {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")}


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_its_run_matches_the_clis(tiny_cifar, tmp_path):
    import nbclient  # the test extra's
    import nbformat

    # the store: ./mlflow.db of the folder the notebook (and the CLI) runs in
    quick = [o for o in tiny_overrides(tiny_cifar, tmp_path) if not o.startswith("tracking.uri")]
    quick += ["tracking.log_model=false"]
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "notebook"
    work.mkdir()
    env_cell = nbformat.v4.new_code_cell(  # as a user would set it before running the cells
        f"import os\nos.environ['QUICKSTART_OVERRIDES'] = {' '.join(quick)!r}")
    notebook.cells.insert(0, env_cell)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    results = [o.data for o in outputs if o.output_type == "execute_result"]
    assert any(r["text/plain"].startswith("RunSummary(run_id=") for r in results)
    assert any("image/png" in r for r in results)  # a figure, inline
    assert any("<table" in r.get("text/html", "") and "selected_val_accuracy" in r["text/html"]
               for r in results)  # the sweep's DataFrame

    # the notebook's first run, and the same config through the CLI: the same metrics
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    from_api = runs[0]
    assert from_api.data.tags["overrides"].endswith("model.hidden=[512,256]")
    done = subprocess.run([str(CLI), *quick, "model.hidden=[512,256]"], cwd=work,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from_cli = client.search_runs([experiment.experiment_id],
                                  order_by=["attributes.start_time DESC"])[0]
    assert from_cli.info.run_id != from_api.info.run_id
    for metric in ("test_loss", "test_accuracy", "selected_val_accuracy", "test_f1_macro"):
        assert from_cli.data.metrics[metric] == from_api.data.metrics[metric], metric
    # and the winner was retrained from the sweep's best job
    assert any(r.data.tags.get("from_run") for r in runs)
