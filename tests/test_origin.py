"""from_run=<run id>: a new run from the overrides an earlier run (or a sweep's best job) was
made with, then the command's own."""

import json
import subprocess

import pytest
from conftest import compose_config
from test_search import search_args
from test_sweep import CLI, runs_of

from cifar10_mlp.cli import with_origin
from cifar10_mlp.errors import UserError
from cifar10_mlp.sweeps import origin
from cifar10_mlp.tracking.provenance import OVERRIDES_LIST_TAG
from cifar10_mlp.tracking.store import open_client, open_experiment


def recorded_run(uri, overrides, parent=None, val_accuracy=None, sweep_parent=False):
    """A run in the store at ``uri`` as start_run records one: its overrides' tags."""
    tags = {OVERRIDES_LIST_TAG: json.dumps(overrides), "overrides": " ".join(overrides)}
    if parent:
        tags["mlflow.parentRunId"] = parent
    if sweep_parent:
        tags["sweep"] = "parent"
    client = open_client(uri)
    run_id = client.create_run(open_experiment(uri, "origin"), tags=tags).info.run_id
    if val_accuracy is not None:
        client.log_metric(run_id, "selected_val_accuracy", val_accuracy)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_sweep_parent_stands_for_its_best_job_without_how_it_was_launched(uri):
    parent = recorded_run(uri, ["hparams_search=mlp_asha"], sweep_parent=True)
    launch = ["hparams_search=mlp_asha", "hydra.sweeper.n_trials=4", "tracking.run_name=x"]
    recorded_run(uri, [*launch, "optimizer.lr=0.01", "model.hidden=[8]"], parent, 0.4)
    best = recorded_run(uri, [*launch, "optimizer.lr=0.003", "model.hidden=[16]"], parent, 0.6)
    recorded_run(uri, [*launch, "optimizer.lr=0.001", "model.hidden=[8]"], parent, 0.5)

    assert origin.source(uri, parent) == (best, ["optimizer.lr=0.003", "model.hidden=[16]"])
    assert origin.source(uri, best) == (best, ["optimizer.lr=0.003", "model.hidden=[16]"])


def test_the_commands_own_overrides_come_after_the_runs_so_they_win(uri):
    source = recorded_run(uri, ["trainer.epochs=2", "optimizer=sgd", "optimizer.lr=0.05"])
    args = ["-m", f"tracking.uri={uri}", f"from_run={source}", "trainer.epochs=70", "seed=1,2"]
    expanded = with_origin(args)
    assert expanded == ["-m", "trainer.epochs=2", "optimizer=sgd", "optimizer.lr=0.05",
                        f"from_run={source}", f"tracking.uri={uri}", "trainer.epochs=70",
                        "seed=1,2"]
    cfg = compose_config([o for o in expanded[1:] if o != "seed=1,2"])
    assert (cfg.trainer.epochs, cfg.optimizer.name, cfg.optimizer.lr) == (70, "sgd", 0.05)
    assert cfg.from_run == source


def test_a_key_renamed_since_is_one_line_naming_it(uri):
    source = recorded_run(uri, ["optimizer.lr=0.003", "model.widths=[512]"])
    with pytest.raises(UserError) as refused:
        with_origin([f"tracking.uri={uri}", f"from_run={source}"])
    message = str(refused.value)
    assert "\n" not in message and "'model.widths=[512]'" in message
    assert message.startswith(f"from_run={source}: run {source}'s override")


def test_an_unknown_run_is_one_line(uri):
    open_experiment(uri, "origin")
    with pytest.raises(UserError, match=r"^from_run=0{32}: no run 0{32} in sqlite:///"):
        with_origin([f"tracking.uri={uri}", f"from_run={'0' * 32}"])


def test_a_command_without_from_run_is_left_as_it_is():
    args = ["-m", "optimizer.lr=0.01,0.001", "--cfg", "job"]
    assert with_origin(args) == args


@pytest.mark.slow
def test_a_searchs_winner_is_retrained_longer_on_two_seeds_tagged_with_its_origin(
        tiny_cifar, tmp_path):
    search = search_args(tiny_cifar, tmp_path, 4, "trainer.epochs=1",
                         "tracking.experiment=search")
    done = subprocess.run([str(CLI / "cifar10-mlp"), *search], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = next(o.split("=", 1)[1] for o in search if o.startswith("tracking.uri="))
    client, (parent,), trials = runs_of(uri, "search")
    winner = client.get_run(parent.data.tags["best_run_id"])
    swept = ("model.hidden", "optimizer.lr", "model.dropout", "optimizer.weight_decay",
             "trainer.batch_size")

    again = subprocess.run(
        [str(CLI / "cifar10-mlp"), "-m", f"from_run={parent.info.run_id}", "trainer.epochs=2",
         "seed=1,2", "tracking.experiment=retrained", f"tracking.uri={uri}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"starting from run {winner.info.run_id}'s overrides" in again.stdout
    _, (retrain_parent,), runs = runs_of(uri, "retrained")
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {k: run.data.params[k] for k in swept} == {
            k: winner.data.params[k] for k in swept}
        assert run.data.params["trainer.epochs"] == "2" and run.data.metrics[
            "epochs_trained"] == 2
        assert run.data.tags["from_run"] == winner.info.run_id
    assert len(trials) == 4
    pages = [p.read_text() for p in (tmp_path / "multirun").rglob("index.html")]
    assert any(f"started from run <code>{winner.info.run_id}</code>" in p for p in pages)
