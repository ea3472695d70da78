"""Command-line entry points (the only module that knows Hydra's @hydra.main)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

# TensorFlow's C++ start-up chatter hides the run's own output; set before it is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# MLflow's progress bars for artifact downloads would interleave with the sweep's table
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import hydra  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from cifar10_mlp import runner, stopping
from cifar10_mlp.config import schema
from cifar10_mlp.data.archive import DataError  # noqa: E402
from cifar10_mlp.errors import UserError  # noqa: E402
from cifar10_mlp.sweeps.launch import (  # noqa: E402
    JOB_LOG,
    PARENT_RUN_ENV,
    composing_config,
    earlier_run,
    fill_launch_settings,
    job_output_to,
    job_overrides,
    search_trial,
    sweep_stopping,
)

CONFIG_MODULE = "cifar10_mlp.conf"  # conf/ of the repository, shipped in the package

schema.register_configs()
log = logging.getLogger(__name__)


def main() -> None:
    """`cifar10-mlp`: :func:`train`, where Ctrl-C or SIGTERM stops a sweep as a whole: its
    jobs and parent run end KILLED and one line says how to continue. A second Ctrl-C
    meanwhile exits at once (the next resume or report ends what is left RUNNING).
    While Hydra composes the config, a signal is held: the sweep acts on it once its parent
    run is open, a single run once it starts."""
    # until the sweep opens or the run takes them over
    with stopping.held(defer_in=composing_config) as signals:
        try:
            sys.argv[1:] = with_origin(sys.argv[1:])
        except UserError as err:
            sys.exit(f"cifar10-mlp: error: {err}")
        try:
            train()
        except KeyboardInterrupt as stop:
            reason = str(stop) or "Ctrl-C"
            with stopping.on_signals() as winding_down:
                winding_down.ask(reason)  # so the next Ctrl-C is the second
                line = signals.stop_work(reason) if signals.stop_work else None
            sys.exit(line or f"cifar10-mlp: stopped by {reason} before any run started")


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
def train(cfg: DictConfig) -> runner.RunSummary | float:
    """Train, evaluate and log one run; returns its summary (metrics a sweeper optimises).

    In a sweep (-m) a failing job is recorded as a FAILED child run and returns NaN,
    so the other jobs go on and the sweep's summary counts it. A job of an Optuna search
    reports to its trial every epoch and may be pruned. In a sweep continued with
    ``sweep.resume=true`` a job that finished earlier is not run again, and one that was
    interrupted continues its own run.
    """
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return train_and_report(cfg, hydra_cfg)
    # a sweep job's whole output goes to a file in its folder: the sweep's console says
    # when each job starts and ends
    job_log = Path(hydra_cfg.runtime.output_dir) / JOB_LOG
    with job_output_to(job_log):
        return train_and_report(cfg, hydra_cfg, job_log)


def train_and_report(cfg: DictConfig, hydra_cfg: DictConfig, job_log: Path | None = None
                     ) -> runner.RunSummary | float:
    """:func:`train`'s run, printing its summary; ``job_log``: a sweep job's output file."""
    overrides = job_overrides(hydra_cfg.overrides.task)
    sweeping = job_log is not None
    parent_run_id = os.environ.get(PARENT_RUN_ENV) if sweeping else None
    fill_launch_settings(cfg, hydra_cfg, sweeping)
    try:
        with stopping.on_signals(worker=sweeping) as stop:
            if sweeping and sweep_stopping(cfg, parent_run_id):
                log.info("the sweep is being stopped: this job does not start")
                return math.nan
            earlier = (earlier_run(cfg, parent_run_id, overrides)
                       if sweeping and cfg.sweep.resume else None)
            if earlier is not None and earlier.status != "KILLED":
                return reused(earlier, cfg.tracking.uri)
            trial = search_trial(hydra_cfg) if sweeping else None
            summary = runner.run(cfg, overrides, parent_run_id, trial.report if trial else None,
                                 resume_run_id=earlier.run_id if earlier else None, stop=stop,
                                 job_log=job_log).summary
    except KeyboardInterrupt as stopped:
        if sweeping:  # the sweep stops as a whole (main)
            raise
        sys.exit(f"cifar10-mlp: stopped by {stopped or 'Ctrl-C'}; the MLflow run, if it had "
                 "started, is marked KILLED with every finished epoch; trainer.resume=true "
                 "continues it")
    except Exception as err:
        if not sweeping:
            if isinstance(err, UserError):
                sys.exit(f"cifar10-mlp: error: {err}")
            raise
        if isinstance(err, schema.ConfigError | DataError):  # failed before its run opened
            from cifar10_mlp.tracking import sweep_runs

            sweep_runs.record_failed_run(cfg, overrides, parent_run_id, err, job_log)
        log.error("job failed (%s); recorded as a FAILED run", err,
                  exc_info=not isinstance(err, UserError))
        return math.nan
    metrics = summary.metrics
    outcome = (f"test accuracy {metrics['test_accuracy']:.4f} | macro F1 "
               f"{metrics['test_f1_macro']:.4f} | " if summary.pruned_epoch is None else
               f"pruned by the search after epoch {summary.pruned_epoch}, so not evaluated on "
               "the test set | ")
    from cifar10_mlp.tracking.store import where_to_look

    where = where_to_look(summary.tracking_uri, summary.experiment_id, summary.run_id)
    model = (f"model {summary.model_uri}"
             + (f", registered as {summary.registered}" if summary.registered else "")
             + f"\ntry it: cifar10-mlp-predict {summary.model_uri} <image or folder> "
               f"--tracking-uri {summary.tracking_uri}\n"
             if summary.model_uri else "")
    print(f"\n{outcome}validation accuracy {metrics['selected_val_accuracy']:.4f}\n"
          f"MLflow run {summary.run_id}\n{model}"
          f"see it {where}")
    return summary


def reused(earlier, tracking_uri: str) -> runner.RunSummary | float:
    """What a job that ended in an earlier session of its sweep returns again: its run's
    summary, or NaN for a job that failed (it would fail again)."""
    log.info("this job ended %s in run %s before the sweep was interrupted; not run again",
             earlier.status, earlier.run_id)
    if earlier.status != "FINISHED":
        return math.nan
    return runner.RunSummary(earlier.run_id, tracking_uri, earlier.experiment_id, earlier.metrics,
                             earlier.pruned_epoch)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="eda_config")
def eda(cfg: DictConfig) -> None:
    """`cifar10-mlp-eda`: a report on the data as a run with this config would see it."""

    try:
        schema.validate(cfg)
        run_id, page = runner.explore(cfg, HydraConfig.get().overrides.task)
    except UserError as err:
        sys.exit(f"cifar10-mlp-eda: error: {err}")
    print(f"\nreport: {page.resolve()}\nMLflow run {run_id} (experiment {cfg.eda.experiment})")


def with_origin(args: list[str]) -> list[str]:
    """The command line ``args`` with its ``from_run=<run id>`` replaced by the overrides
    that run was made with (:mod:`cifar10_mlp.sweeps.origin`), checked to compose: a key
    renamed since is one line naming the override."""
    if not any(a.startswith("from_run=") for a in args):
        return args
    from cifar10_mlp.sweeps import origin  # MLflow: only for a run that needs it

    run_id = origin.requested(args)
    own = [a for a in args if "=" in a and not a.startswith(("-", f"{origin.KEY}="))]
    try:
        uri = composed(own).tracking.uri
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(str(err).splitlines()[0]) from None
    with store_access(uri):
        source_id, recorded = origin.source(uri, run_id)
    try:
        composed([*recorded, *own])
    except (HydraException, OmegaConfBaseException) as err:
        for override in recorded:  # which of the run's overrides no longer applies
            try:
                composed([override])
            except (HydraException, OmegaConfBaseException) as alone:
                raise UserError(
                    f"{origin.KEY}={run_id}: run {source_id}'s override {override!r} no longer "
                    f"applies ({str(alone).splitlines()[0]}); its config.yaml artifact has the "
                    "config it ran with") from None
        raise UserError(f"{origin.KEY}={run_id}: {str(err).splitlines()[0]}") from None
    print(f"{origin.KEY}={run_id}: starting from run {source_id}'s overrides: "
          f"{' '.join(recorded) or '(defaults)'}", flush=True)
    return origin.expanded(args, source_id, recorded)


def composed(overrides: list[str]) -> DictConfig:
    """The training config these overrides compose, leaving out Hydra's own settings and
    a sweep's lists of values (``seed=1,2``)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name="config", overrides=[
            o.input_line for o in parsed
            if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")])


def tracking_defaults() -> DictConfig:
    """``conf/tracking``'s defaults, for the commands that take no Hydra overrides."""
    return composed([]).tracking


def store_access(uri: str):
    """For the commands that take ``--tracking-uri``: refuse credentials in it (as
    ``tracking.uri``), and make a server's refusal of this client one line."""
    from cifar10_mlp.tracking.store import refused_as

    schema.TRACKING_URI.check("--tracking-uri", uri)
    return refused_as(f"--tracking-uri {uri}: the server refused this client")


def report() -> None:
    """`cifar10-mlp-report`: compare the runs of a sweep (a parent run id or experiment name)."""
    tracking = tracking_defaults()
    parser = argparse.ArgumentParser(prog="cifar10-mlp-report", description=report.__doc__)
    parser.add_argument("sweep", help="parent run id, or an experiment name (its latest sweep)")
    parser.add_argument("--tracking-uri", default=tracking.uri)
    parser.add_argument("--out", type=Path, default=Path("sweep_report"),
                        help="folder for index.html (the page), runs.csv, runs.md and figures")
    parser.add_argument("--lost-after-minutes", type=float, default=tracking.lost_after_minutes,
                        help="a RUNNING job silent this long (or whose process on this host "
                             "is gone) is ended KILLED: process lost")
    args = parser.parse_args()
    from cifar10_mlp.sweeps import report_files
    from cifar10_mlp.tracking import sweep_runs

    try:
        with store_access(args.tracking_uri):
            parent = sweep_runs.find_sweep(args.tracking_uri, args.sweep)
            if parent is None:
                sys.exit(f"cifar10-mlp-report: no sweep parent run or experiment "
                         f"{args.sweep!r} in {args.tracking_uri}")
            page = report_files.write(args.tracking_uri, parent, args.out,
                                      args.lost_after_minutes * 60)
    except UserError as err:
        sys.exit(f"cifar10-mlp-report: error: {err}")
    print(page.text(parent))


def predict() -> None:
    """`cifar10-mlp-predict`: a trained model's top classes for your own PNG or JPEG pictures
    (any size: the central square, resized to 32 x 32 RGB with Lanczos)."""
    parser = argparse.ArgumentParser(prog="cifar10-mlp-predict", description=predict.__doc__)
    parser.add_argument("model", help="models:/<model id>, models:/<name>@<alias>, "
                                      "models:/<name>/<version>, runs:/<run id>/model, or a run id")
    parser.add_argument("images", nargs="+", type=Path,
                        help="image files, or folders (their .png, .jpg, .jpeg files)")
    parser.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    parser.add_argument("--tracking-uri", default=tracking_defaults().uri,
                        help="the MLflow store that holds the model (default: %(default)s)")
    args = parser.parse_args()
    if args.top < 1:
        parser.error(f"--top {args.top}: expected at least 1")
    from cifar10_mlp.serving import predict as pictures
    from cifar10_mlp.tracking import registry
    from cifar10_mlp.training import runtime

    files = pictures.image_files(args.images)
    if not files:
        sys.exit("cifar10-mlp-predict: no .png, .jpg or .jpeg files in "
                 + ", ".join(map(str, args.images)))
    runtime.start(0)  # TensorFlow's default threads
    try:
        with store_access(args.tracking_uri):
            model, class_names = registry.load(args.model, args.tracking_uri)
    except UserError as err:
        sys.exit(f"cifar10-mlp-predict: error: {err}")
    predictions = pictures.predict_files(model, class_names, files, args.top)
    for failed in (p for p in predictions if p.error):
        print(f"cifar10-mlp-predict: {failed.file}: {failed.error}", file=sys.stderr)
    print(pictures.render(predictions, args.json))
    if any(p.error for p in predictions):
        sys.exit(1)
