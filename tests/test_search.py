"""Optuna searches: pruning from each job's own process, resuming, samplers, several objectives.

End to end as subprocesses on the tiny archive (real SQLite stores, real journal files),
and the sweeper's scheduling with a stand-in launcher.
"""

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import CONFIG_DIR, compose_config
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_sweep import CLI, run, runs_of, sweep_overrides

from cifar10_mlp.runner import RunSummary
from cifar10_mlp.sweeps.study import (
    StudyError,
    build_pruner,
    build_sampler,
    check_search,
    join_trial,
    open_storage,
)

State = optuna.trial.TrialState
# a threshold no validation accuracy reaches: every trial is pruned after its first epoch
ALWAYS_PRUNE = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.1"]


def search_args(tiny, folder, n_trials, *extra):
    """A small mlp_optuna search on the tiny archive, its study in folder/optuna.journal."""
    return ["hparams_search=mlp_optuna", f"hydra.sweeper.n_trials={n_trials}",
            "model.hidden=choice([8],[16])",
            *(o for o in sweep_overrides(tiny, folder) if not o.startswith("trainer.epochs")),
            *extra]


def load_study(folder, name="mlp_optuna"):
    return optuna.load_study(study_name=name, storage=open_storage("optuna.journal", folder))


def finished_trials(folder):
    try:
        return [t for t in load_study(folder).trials if t.state.is_finished()]
    except KeyError:  # not created yet
        return []


PRUNED_BY_THRESHOLD = ["trainer.epochs=3", "tracking.log_model=true", *ALWAYS_PRUNE]
# the end-to-end searches of this module: (trials, overrides); independent, so run side by side
SEARCHES = {
    "pruned": (2, PRUNED_BY_THRESHOLD),
    "pruned_processes": (2, [*PRUNED_BY_THRESHOLD, "hydra/launcher=processes",
                             "hydra.sweeper.n_jobs=2"]),
    "random": (2, ["trainer.epochs=1", "hydra/sweeper/sampler=random"]),
    "cmaes": (2, ["trainer.epochs=1", "hydra/sweeper/sampler=cmaes"]),
    "qmc": (2, ["trainer.epochs=1", "hydra/sweeper/sampler=qmc"]),
    # two objectives: NSGA-II, accuracy against size
    "pareto": (4, ["trainer.epochs=1", "hparams_search=mlp_pareto",
                   "hydra.sweeper.sampler.population_size=2"]),
}


@dataclass(frozen=True)
class Search:
    folder: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def searches(tiny_cifar, tmp_path_factory) -> dict[str, Search]:
    """Every search of SEARCHES, each in a folder of its own, all started at once: most of a
    tiny search is single-threaded start-up, which two cores overlap."""
    started = {}
    for name, (n_trials, extra) in SEARCHES.items():
        folder = tmp_path_factory.mktemp(name)
        started[name] = folder, subprocess.Popen(
            [str(CLI / "cifar10-mlp"), *search_args(tiny_cifar, folder, n_trials, *extra)],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = {}
    for name, (folder, process) in started.items():
        stdout, stderr = process.communicate(timeout=600)
        done[name] = Search(folder, process.returncode, stdout, stderr)
    return done


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pruned", "pruned_processes"])
def test_pruned_trials_end_finished_with_their_epochs_and_no_test_evaluation(searches, name):
    done = searches[name]
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load_study(done.folder).trials
    assert [t.state for t in trials] == [State.PRUNED, State.PRUNED]
    client, (parent,), children = runs_of(f"sqlite:///{done.folder / 'mlflow.db'}", "tests")
    by_name = {c.info.run_name.split(":")[0]: c for c in children}  # job N: its values
    assert len(by_name) == 2
    for trial in trials:
        pruned = by_name[f"job {trial.number}"]
        assert f"model.hidden={trial.params['model.hidden']}" in pruned.info.run_name
        assert trial.user_attrs["mlflow_run_id"] == pruned.info.run_id
        assert pruned.info.status == "FINISHED" and pruned.data.tags["pruned"] == "1"
        history = client.get_metric_history(pruned.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1]  # stopped after its first epoch of 3
        # the job reported what its run logged to its trial, from its own process
        assert trial.intermediate_values == {1: pytest.approx(history[0].value)}
        assert "test_accuracy" not in pruned.data.metrics  # never evaluated on test
        assert pruned.data.metrics["epochs_trained"] == 1
        assert {a.path for a in client.list_artifacts(pruned.info.run_id, "plots")} == {
            "plots/learning_curves.png"}
        assert "model_uri" not in pruned.data.tags  # no model, though log_model=true
        assert not client.search_logged_models(
            [pruned.info.experiment_id], f"source_run_id = '{pruned.info.run_id}'")
    parent = client.get_run(parent.info.run_id)
    assert (parent.data.metrics["n_finished"], parent.data.metrics["n_pruned"],
            parent.data.metrics["n_failed"]) == (0, 2, 0)
    assert "best_run_id" not in parent.data.tags  # a pruned run is never the best
    assert "0 finished, 2 pruned, 0 failed" in done.stdout
    assert sum("| PRUNED |" in line for line in done.stdout.splitlines()) == 2
    if name == "pruned_processes":  # two trials at once, each in a process of its own
        assert len({c.data.tags["pid"] for c in children}) == 2


@pytest.mark.slow
def test_a_killed_search_resumes_and_counts_pruned_trials_as_done(tiny_cifar, tmp_path):
    n_trials = 4
    args = search_args(tiny_cifar, tmp_path, n_trials, "trainer.epochs=3", *ALWAYS_PRUNE)
    first = subprocess.Popen([str(CLI / "cifar10-mlp"), *args], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while len(finished_trials(tmp_path)) < 2 and first.poll() is None:
        assert time.monotonic() < deadline, "the search never finished two trials"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert 2 <= len(finished_trials(tmp_path)) < n_trials

    done = run("cifar10-mlp", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load_study(tmp_path).trials
    pruned = [t for t in trials if t.state == State.PRUNED]
    interrupted = [t for t in trials if t.state != State.PRUNED]  # running at the kill, if any
    assert len(pruned) == n_trials  # pruned trials count as done; the resumed part pruned too
    assert all(t.state == State.FAIL and t.user_attrs["interrupted"] for t in interrupted)
    assert len(trials) == n_trials + len(interrupted)
    # the resumed session drew new values rather than replaying the first session's
    assert len({t.params["optimizer.lr"] for t in pruned}) == n_trials

    _, (parent,), children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "tests")
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert {c.info.run_id for c in finished} == {t.user_attrs["mlflow_run_id"] for t in pruned}
    assert all(c.data.tags["pruned"] == "1" for c in finished)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    assert len({c.info.run_name for c in children}) == len(children)  # job N = trial N


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "cmaes", "qmc"])
def test_each_sampler_runs_the_trials_of_a_search(searches, sampler):
    done = searches[sampler]
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"({sampler} sampler, none pruner)" in done.stdout  # Hydra's log
    trials = load_study(done.folder).trials
    assert [t.state for t in trials] == [State.COMPLETE, State.COMPLETE]
    _, _, children = runs_of(f"sqlite:///{done.folder / 'mlflow.db'}", "tests")
    values = {c.info.run_id: c.data.metrics["selected_val_accuracy"] for c in children}
    assert {t.user_attrs["mlflow_run_id"]: t.value for t in trials} == values


@pytest.mark.slow
def test_a_multi_objective_search_reports_its_pareto_front(searches):
    done = searches["pareto"]
    assert done.returncode == 0, done.stderr[-3000:]
    folder = done.folder
    study = load_study(folder, "mlp_pareto")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.trials) == 4 and all(t.state == State.COMPLETE for t in study.trials)
    client, (parent,), children = runs_of(f"sqlite:///{folder / 'mlflow.db'}", "tests")
    for trial in study.trials:  # the objectives are what each run logged
        (logged,) = [c for c in children if c.info.run_id == trial.user_attrs["mlflow_run_id"]]
        assert trial.values == [logged.data.metrics["selected_val_accuracy"],
                                logged.data.metrics["trainable_params"]]
    # the report's front is Optuna's own
    front = {c.info.run_name.split(":")[0] for c in children  # the table's short names
             if c.info.run_id in {t.user_attrs["mlflow_run_id"] for t in study.best_trials}}
    (sweep_dir,) = (folder / "multirun").glob("*/*")
    rows = (sweep_dir / "runs.csv").read_text().splitlines()
    header = rows[0].split(",")
    marked = {row.split(",")[0] for row in rows[1:] if row.split(",")[header.index("pareto")]}
    assert marked == front and front
    assert "Pareto front of selected_val_accuracy and trainable_params: " in done.stdout
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/pareto_front.png" in report


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "qmc": optuna.samplers.QMCSampler,
            "nsga2": optuna.samplers.NSGAIISampler}
PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
           "hyperband": optuna.pruners.HyperbandPruner,
           "threshold": optuna.pruners.ThresholdPruner}


def group_options(group):
    return {p.stem for p in (Path(CONFIG_DIR) / "hydra" / "sweeper" / group).glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_from_its_yaml_settings(name):
    assert group_options("sampler") == set(SAMPLERS)
    settings = compose_config(["hparams_search=mlp_optuna", f"hydra/sweeper/sampler={name}",
                               "hydra.sweeper.sampler.n_startup_trials=3"]
                              if name in {"tpe", "cmaes"} else
                              ["hparams_search=mlp_optuna", f"hydra/sweeper/sampler={name}"],
                              with_hydra=True).hydra.sweeper.sampler
    sampler = build_sampler(OmegaConf.to_container(settings, resolve=True), seed=1)
    assert type(sampler) is SAMPLERS[name]


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_builds_from_its_yaml_settings(name):
    assert group_options("pruner") == set(PRUNERS)
    cfg = compose_config(["hparams_search=mlp_optuna", f"hydra/sweeper/pruner={name}",
                          "trainer.epochs=7",
                          *(["hydra.sweeper.pruner.lower=0.2"] if name == "threshold" else [])],
                         with_hydra=True)
    pruner = build_pruner(OmegaConf.to_container(cfg.hydra.sweeper.pruner, resolve=True))
    assert type(pruner) is PRUNERS[name]


@pytest.mark.parametrize("group, name, option", [("sampler", "grid", "nsga2"),
                                                 ("pruner", "asha", "successive_halving")])
def test_an_unknown_sampler_or_pruner_is_refused_with_the_options(group, name, option):
    with pytest.raises(ConfigCompositionException) as refused:
        compose_config(["hparams_search=mlp_optuna", f"hydra/sweeper/{group}={name}"],
                       with_hydra=True)
    assert f"hydra/sweeper/{group}/{name}" in str(refused.value)
    assert option in str(refused.value)  # Hydra lists what is there


def test_a_sampler_or_pruner_setting_it_does_not_take_is_refused_while_composing():
    with pytest.raises(ConfigCompositionException, match="n_startup_trials"):
        compose_config(["hparams_search=mlp_optuna", "hydra/sweeper/sampler=random",
                        "hydra.sweeper.sampler.n_startup_trials=3"], with_hydra=True)


ACCURACY = {"selected_val_accuracy": "maximize"}


def search_settings(sampler="tpe", pruner="none", launcher="basic"):
    """(sampler, pruner, choices) of the mlp_optuna search with these groups, as composed."""
    cfg = compose_config(["hparams_search=mlp_optuna", f"hydra/sweeper/sampler={sampler}",
                          f"hydra/sweeper/pruner={pruner}", f"hydra/launcher={launcher}"],
                         with_hydra=True).hydra
    return cfg.sweeper.sampler, cfg.sweeper.pruner, cfg.runtime.choices


@pytest.mark.parametrize("objectives, sampler, pruner, message", [
    ({"selected_val_accuracy": "up"}, "tpe", "none",
     "hydra.sweeper.objectives.selected_val_accuracy='up' is not allowed"),
    ({"selected_val_accuracy": "maximize", "trainable_params": "minimize"}, "cmaes", "none",
     "hydra/sweeper/sampler=cmaes is not allowed with 2 objectives"),
    ({"selected_val_accuracy": "maximize", "trainable_params": "minimize"}, "nsga2", "median",
     "hydra/sweeper/pruner=median is not allowed with objectives"),
    ({"time_train_seconds": "minimize"}, "tpe", "hyperband",
     "hydra/sweeper/pruner=hyperband is not allowed with objectives"),
])
def test_settings_optuna_cannot_run_are_refused_by_name(objectives, sampler, pruner, message):
    with pytest.raises(StudyError, match=message.replace("(", r"\(")):
        sampler_cfg, pruner_cfg, choices = search_settings(sampler, pruner)
        check_search(objectives, sampler_cfg, pruner_cfg, "optuna.journal", 1, choices)


def test_a_database_url_is_refused_as_storage():
    with pytest.raises(StudyError, match="hydra.sweeper.storage='sqlite:///o.db' is not "
                                         "allowed: expected the path of an Optuna journal"):
        check_search(ACCURACY, *search_settings()[:2], "sqlite:///o.db", 1, {})


def test_parallel_trials_need_a_parallel_launcher():
    with pytest.raises(StudyError, match="n_jobs=2 is not allowed with Hydra's basic launcher"):
        sampler, pruner, choices = search_settings(launcher="basic")
        check_search(ACCURACY, sampler, pruner, "optuna.journal", 2, choices)
    sampler, pruner, choices = search_settings(launcher="processes")
    check_search(ACCURACY, sampler, pruner, "optuna.journal", 2, choices)


def summary(trial, **metrics):
    return RunSummary(f"run-{trial}", "", "0", {"selected_val_accuracy": trial / 10, **metrics})


class StandInLauncher:
    """Runs each trial as a sleep, from the calling thread, recording when it started and
    ended, and returns what ``outcome(trial)`` gives: a summary as ``cifar10-mlp`` returns."""

    def __init__(self, outcome, seconds):
        self.outcome = outcome
        self.seconds = seconds
        self.spans = {}
        self.lock = threading.Lock()

    def launch(self, jobs, initial_job_idx):
        returns = []
        for overrides in jobs:
            trial = int(next(o for o in overrides if o.startswith("hydra.sweeper.trial="))
                        .split("=")[1])
            start = time.monotonic()
            time.sleep(self.seconds(trial))
            with self.lock:
                self.spans[trial] = (start, time.monotonic())
            returns.append(JobReturn(overrides=overrides, status=JobStatus.COMPLETED,
                                     _return_value=self.outcome(trial)))
        return returns


def stand_in_search(tmp_path, *overrides, outcome=summary, seconds=lambda trial: 0.0):
    """A 4-trial mlp_optuna search whose jobs the stand-in launcher runs; its trials."""
    sweeper = instantiate(compose_config(
        ["hparams_search=mlp_optuna", "hydra.sweeper.n_trials=4",
         f"hydra.sweeper.storage={tmp_path / 'optuna.journal'}", *overrides],
        with_hydra=True).hydra.sweeper)
    sweeper.launcher = StandInLauncher(outcome, seconds)
    sweeper.sweep([])
    return sweeper.launcher.spans, load_study(tmp_path).trials


def one_long_trial(trial):
    return 1.5 if trial == 0 else 0.05


def test_a_free_slot_starts_the_next_trial_at_once(tmp_path):
    spans, trials = stand_in_search(tmp_path, "hydra.sweeper.n_jobs=2", seconds=one_long_trial)
    long_end = spans[0][1]
    # trials 2 and 3 ran in the slot trial 1 freed, while trial 0 was still running
    assert spans[2][0] < long_end and spans[3][0] < long_end
    assert [t.value for t in trials] == [0.0, 0.1, 0.2, 0.3]


def test_batched_trials_wait_for_the_slowest_of_their_batch(tmp_path):
    spans, _ = stand_in_search(tmp_path, "hydra.sweeper.n_jobs=2", "hydra.sweeper.batched=true",
                               seconds=one_long_trial)
    assert spans[2][0] >= spans[0][1] and spans[3][0] >= spans[0][1]


def test_each_job_outcome_becomes_its_trial_state_and_counts_towards_n_trials(tmp_path):
    outcomes = {
        0: summary(0),
        1: RunSummary("run-1", "", "0", {"selected_val_accuracy": 0.3}, pruned_epoch=2),
        2: float("nan"),  # what cifar10-mlp returns for a job that failed
        3: summary(3, selected_val_accuracy=float("nan")),  # no usable objective
    }

    def outcome(trial):
        if trial == 4:
            raise RuntimeError("the launcher lost the job")
        return outcomes[trial]

    _, trials = stand_in_search(tmp_path, "hydra.sweeper.n_trials=5", outcome=outcome)
    assert [t.state for t in trials] == [State.COMPLETE, State.PRUNED, State.FAIL, State.FAIL,
                                         State.FAIL]
    assert trials[0].user_attrs["mlflow_run_id"] == "run-0"
    assert trials[1].user_attrs["mlflow_run_id"] == "run-1"


@pytest.mark.slow
def test_a_setting_that_cannot_work_stops_the_search_before_anything_is_opened(tmp_path):
    done = run("cifar10-mlp", ["hparams_search=mlp_pareto", "hydra/sweeper/pruner=median"],
               tmp_path)
    assert done.returncode != 0
    assert "hydra/sweeper/pruner=median is not allowed with objectives" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # no MLflow store, no study, no sweep folder


@pytest.mark.slow
def test_a_search_that_stops_early_leaves_its_parent_run_failed_not_running(tmp_path):
    # a study of the same name with other objectives: the sweeper refuses to resume it
    optuna.create_study(study_name="mlp_optuna", directions=["maximize", "minimize"],
                        storage=open_storage("optuna.journal", tmp_path))
    done = run("cifar10-mlp", ["hparams_search=mlp_optuna", "tracking.experiment=tests",
                               f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path)
    assert done.returncode != 0
    assert ("study 'mlp_optuna' in optuna.journal was created to maximize and minimize, which "
            "does not fit hydra.sweeper.objectives=") in done.stderr
    client, (parent,), children = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}", "tests")
    assert not children
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error"].startswith("the sweep stopped before it ended")


def sweeper_settings(tmp_path, *overrides):
    return compose_config(["hparams_search=mlp_optuna",
                           f"hydra.sweeper.storage={tmp_path / 'optuna.journal'}", *overrides],
                          with_hydra=True).hydra.sweeper


def test_a_job_joins_its_trial_by_number_and_stops_when_its_pruner_says_so(tmp_path):
    study = optuna.create_study(study_name="mlp_optuna",
                                storage=open_storage("optuna.journal", tmp_path))
    first, second = study.ask(), study.ask()
    job = join_trial(sweeper_settings(tmp_path, f"hydra.sweeper.trial={second.number}",
                                      *ALWAYS_PRUNE), tmp_path)
    assert job.number == second.number
    assert job.report(1, 0.42) is True  # below the threshold: pruned
    reported = load_study(tmp_path).trials
    assert reported[second.number].intermediate_values == {1: 0.42}
    assert reported[first.number].intermediate_values == {}
    never = join_trial(sweeper_settings(tmp_path, f"hydra.sweeper.trial={first.number}"),
                       tmp_path)
    assert never.report(1, 0.1) is False  # pruner none


def test_a_job_that_cannot_reach_the_study_says_where_it_looked(tmp_path):
    settings = sweeper_settings(tmp_path, "hydra.sweeper.trial=0",
                                "hydra.sweeper.storage=elsewhere/optuna.journal")
    with pytest.raises(StudyError, match="hydra.sweeper.storage=elsewhere/optuna.journal: no "
                                         "such study journal as seen from this job"):
        join_trial(settings, tmp_path)
    assert not (tmp_path / "elsewhere").exists()


def test_no_trial_to_join_outside_an_optuna_search(tmp_path):
    assert join_trial(sweeper_settings(tmp_path), tmp_path) is None  # trial: null


def test_the_preset_search_retunes_the_preset_on_a_shorter_schedule():
    cfg = compose_config(["experiment=best_mlp", "hparams_search=preset_asha"], with_hydra=True)
    preset = compose_config(["experiment=best_mlp"])
    assert cfg.model.hidden == preset.model.hidden and cfg.preprocess == preset.preprocess
    assert cfg.trainer.epochs < preset.trainer.epochs  # the search's shortened schedule
    space = cfg.hydra.sweeper.params
    assert set(space) == {"optimizer.lr", "model.dropout", "optimizer.weight_decay"}
    assert cfg.hydra.runtime.choices["hydra/sweeper/pruner"] == "successive_halving"
    assert cfg.hydra.sweeper.pruner.min_resource == 3
