"""One run, top to bottom: config -> data -> model -> training -> test -> MLflow."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from cifar10_mlp.config import schema
from cifar10_mlp.stopping import StopRequest

if TYPE_CHECKING:  # TensorFlow is imported once the config is checked
    import keras
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """What a run leaves its caller, and a sweeper: its MLflow run and the metrics logged at
    its end (``selected_val_accuracy`` of the restored best-epoch weights, ``test_*`` unless
    pruned, ``epochs_trained``, ``trainable_params``, ``time_*_seconds``)."""

    run_id: str
    tracking_uri: str
    experiment_id: str
    metrics: dict[str, float]
    pruned_epoch: int | None = None  # a search's pruner stopped the run after this epoch
    model_uri: str | None = None  # models:/<id> of the model it logged
    registered: str | None = None  # the registered version, e.g. "x version 3 (models:/x/3)"


@dataclass(frozen=True)
class TrainedRun:
    """A run's summary, with what it made in this process: the trained model (its best
    epoch's weights) and the figures it logged, by file name."""

    summary: RunSummary
    model: keras.Model
    figures: dict[str, Figure]


def run(cfg: DictConfig, overrides: Sequence[str] = (), parent_run_id: str | None = None,
        report_to_trial: Callable[[int, float], bool] | None = None,
        resume_run_id: str | None = None, stop: StopRequest | None = None,
        job_log: Path | None = None) -> TrainedRun:
    """Train and evaluate the model ``cfg`` describes, logging everything to MLflow.

    ``parent_run_id`` files the run under a sweep's parent run. ``report_to_trial`` gets
    each epoch's number and validation accuracy, and returns True to stop (a search trial
    pruned there): the run then ends without test evaluation, tagged ``pruned``.
    ``resume_run_id`` continues that interrupted run from its checkpoint, as
    ``trainer.resume=true`` does with the experiment's latest one (or trains it again from
    its first epoch when it was stopped before its first checkpoint). ``job_log``: a sweep
    job's output file, which the run names and keeps.

    ``stop`` is checked before every batch and between the stages (data, training, test
    evaluation, figures, model logging, registration): once a signal asked for a stop,
    :class:`stopping.StopRequested` is raised there, and the run ends KILLED with every
    epoch it finished and its checkpoint kept.
    """
    stop = stop or StopRequest()
    schema.validate(cfg)  # fail fast, before TensorFlow is imported
    from cifar10_mlp.tracking import runs, store

    store.check_store(cfg.tracking.uri)  # before TensorFlow, any data or any training
    if resume_run_id is None and cfg.trainer.resume:
        resume_run_id = store.find_interrupted(cfg)
    from cifar10_mlp.training import runtime

    with stop.at_once():  # seconds of importing, which a stop may cut short
        runtime.start(cfg.trainer.threads)
    from cifar10_mlp.data import archive, preprocess
    from cifar10_mlp.training import checkpoint, evaluate, model, plots, train

    seconds: dict[str, float] = {}
    with stopwatch(seconds, "data"):
        split = archive.load(cfg.data, cfg.seed)
        log.info("fitting %s preprocessing on the training split", cfg.preprocess.name)
        prep = preprocess.fit(cfg.preprocess, split.x_train)
    stop.check()
    mlp = model.build(cfg.model, cfg.augment, len(split.class_names), prep, cfg.seed)
    with runs.start_run(cfg, overrides, split, parent_run_id, resume_run_id=resume_run_id,
                        job_log=job_log) as run:
        log.info("MLflow run %s: training %s for up to %d epochs", run.run_id,
                 "-".join(str(w) for w in cfg.model.hidden), cfg.trainer.epochs)
        checkpoints = Path(cfg.trainer.checkpoint_dir) / run.run_id
        if resume_run_id is not None:
            saved = checkpoint.read_checkpoint(checkpoints)
            run.log_missing_epochs(saved["history"] if saved else [], checkpoints)
            log.info("continuing the interrupted run %s", f"from its checkpoint after epoch "
                     f"{len(saved['history'])}" if saved else "from its first epoch (stopped "
                     "before its first checkpoint)")
        trial = train.TrialReporter(report_to_trial) if report_to_trial else None
        with stopwatch(seconds, "train"):
            history = train.fit(mlp, split, cfg.trainer, cfg.optimizer, cfg.schedule,
                                cfg.augment, cfg.seed, checkpoints,
                                callbacks=[train.StopAtBatch(stop), *([trial] if trial else [])],
                                log_epoch=run.log_epoch)
        stop.check()
        pruned_epoch = trial.pruned_epoch if trial else None
        tta, shift = cfg.evaluation.tta, cfg.evaluation.tta_shift
        without_tta = {}  # with test-time augmentation: the same model's test accuracy without it
        with stopwatch(seconds, "evaluate"):
            val = evaluate.measure(mlp, split.x_val, split.y_val, split.class_names,
                                   cfg.trainer.batch_size, tta, shift)
            if pruned_epoch is None:
                log.info("evaluating on the test set%s; logging results",
                         f" (test-time augmentation: {tta})" if tta != "none" else "")
                test = evaluate.measure(mlp, split.x_test, split.y_test, split.class_names,
                                        cfg.trainer.batch_size, tta, shift)
                if tta != "none":
                    without_tta = {"test_accuracy_without_tta": evaluate.measure(
                        mlp, split.x_test, split.y_test, split.class_names,
                        cfg.trainer.batch_size).accuracy}
                stop.check()
                figures = plots.all_figures(test, history, split.x_test,
                                            cfg.evaluation.misclassified_grid)
            else:  # not selected: the test set is not spent on it
                log.info("pruned after epoch %d: no test evaluation", pruned_epoch)
                test, figures = None, {"learning_curves.png": plots.learning_curves(history)}
        stop.check()
        model_uri = registered = None
        with stopwatch(seconds, "logging"):
            run.log_figures(figures)
            stop.check()
            if test is not None:
                run.log_test(test)  # before the model: its metrics are linked to it
                if cfg.tracking.log_model:
                    model_uri = run.log_model(mlp, split.x_test[:5], split.class_names)
                    stop.check()
                if cfg.tracking.registered_model and parent_run_id is None:  # a sweep: its best
                    from cifar10_mlp.tracking import registry

                    registered = str(registry.register(run.tracking_uri, model_uri,
                                                       cfg.tracking.registered_model))
            else:
                run.mark_pruned(pruned_epoch)
        metrics = {"selected_val_accuracy": val.accuracy,
                   "epochs_trained": len(history["loss"]),
                   "trainable_params": model.trainable_parameters(mlp), **without_tta,
                   **{f"time_{stage}_seconds": s for stage, s in seconds.items()}}
        run.log_metrics(metrics)
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: nothing left to resume
    summary = RunSummary(run.run_id, run.tracking_uri, run.experiment_id,
                         {**(test.metrics() if test is not None else {}), **metrics},
                         pruned_epoch, model_uri, registered)
    return TrainedRun(summary, mlp, figures)


@contextmanager
def stopwatch(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start


def explore(cfg: DictConfig, overrides: Sequence[str] = ()) -> tuple[str, Path]:
    """The whole report for a config: statistics, figures, HTML page, one MLflow run.

    Returns the MLflow run id and the HTML page's path.
    """
    from cifar10_mlp.data import archive, eda, preprocess
    from cifar10_mlp.tracking import runs
    from cifar10_mlp.training import plots, runtime

    runtime.start(cfg.trainer.threads or os.cpu_count() or 1)
    split = archive.load(cfg.data, cfg.seed)
    log.info("fitting %s preprocessing on the training split", cfg.preprocess.name)
    prep = preprocess.fit(cfg.preprocess, split.x_train)
    log.info("preprocessing %d training images", len(split.y_train))
    after = eda.preprocessed(prep, split.x_train)
    log.info("class counts, pixel statistics, duplicates")
    stats = eda.statistics(split, prep, after)
    points = eda.projections(split, cfg.eda.projection_samples, cfg.eda.tsne_samples, cfg.seed)
    names = split.class_names
    figures = {
        "class_counts.png": plots.class_counts(stats["counts"], names),
        "samples.png": plots.sample_grid(split.x_train, split.y_train, names,
                                         cfg.eda.samples_per_class),
        "pixel_histograms.png": plots.channel_histograms(split.x_train, after, prep.name),
        "class_means.png": plots.class_mean_images(eda.class_mean_images(split), names),
        "projections.png": plots.projections(points, names),
    }
    out_dir = Path(cfg.eda.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "statistics.json").write_text(json.dumps(stats, indent=2))
    html = out_dir / "eda.html"
    html.write_text(eda.render_html(stats, figures))
    log.info("logging to MLflow")
    return runs.log_eda(cfg, overrides, split, stats, figures, html), html
