"""One run, top to bottom: config -> data -> model -> training -> test -> MLflow."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from cifar10_mlp import schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    tracking_uri: str
    val_accuracy: float  # of the restored (best-epoch) weights: what a sweeper optimises
    test_accuracy: float
    test_f1_macro: float


def run(cfg: DictConfig, overrides: Sequence[str] = (), parent_run_id: str | None = None
        ) -> RunSummary:
    """Train and evaluate the model ``cfg`` describes, logging everything to MLflow.

    ``parent_run_id`` files the run under a sweep's parent run.
    """
    schema.validate(cfg)  # fail fast, before TensorFlow is imported
    from cifar10_mlp import tracking

    tracking.check_store(cfg.tracking.uri)  # before TensorFlow, any data or any training
    resume_run_id = tracking.find_interrupted(cfg) if cfg.trainer.resume else None
    from cifar10_mlp import data, evaluate, model, plots, preprocess, train

    train.limit_threads(cfg.trainer.threads)
    seconds: dict[str, float] = {}
    with stopwatch(seconds, "data"):
        split = data.load(cfg.data, cfg.seed)
        log.info("fitting %s preprocessing on the training split", cfg.preprocess.name)
        prep = preprocess.fit(cfg.preprocess, split.x_train)
    mlp = model.build(cfg.model, cfg.augment, len(split.class_names), prep, cfg.seed)
    with tracking.start_run(cfg, overrides, split, parent_run_id,
                            resume_run_id=resume_run_id) as run:
        log.info("MLflow run %s: training %s for up to %d epochs", run.run_id,
                 "-".join(str(w) for w in cfg.model.hidden), cfg.trainer.epochs)
        checkpoints = Path(cfg.trainer.checkpoint_dir) / run.run_id
        if resume_run_id is not None:
            run.log_missing_epochs(train.read_checkpoint(checkpoints)["history"])
        with stopwatch(seconds, "train"):
            history = train.fit(mlp, split, cfg.trainer, cfg.optimizer, cfg.schedule, cfg.seed,
                                checkpoints, callbacks=[train.epoch_callback(run.log_epoch)])
        log.info("evaluating on the validation and test sets; logging results")
        with stopwatch(seconds, "evaluate"):
            val = evaluate.measure(mlp, split.x_val, split.y_val, split.class_names,
                                   cfg.trainer.batch_size)
            test = evaluate.measure(mlp, split.x_test, split.y_test, split.class_names,
                                    cfg.trainer.batch_size)
            figures = plots.all_figures(test, history, split.x_test,
                                        cfg.evaluation.misclassified_grid)
        with stopwatch(seconds, "logging"):
            run.log_result(test, figures, extra_metrics={"selected_val_accuracy": val.accuracy,
                                                         "epochs_trained": len(history["loss"])})
            if cfg.tracking.log_model:
                run.log_model(mlp, split.x_test[:5])
        run.log_metrics({f"time_{stage}_seconds": s for stage, s in seconds.items()})
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: nothing left to resume
    return RunSummary(run.run_id, run.tracking_uri, val.accuracy, test.accuracy,
                      test.report["macro avg"]["f1-score"])


@contextmanager
def stopwatch(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
