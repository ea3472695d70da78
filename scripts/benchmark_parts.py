"""The parts of the benchmark besides the presets: data loading, training throughput per
width and precision, the framework's own overhead (scripts/benchmark.py runs them)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
from cli_run import cli_run
from measure import compose, median_seconds


def load_times(path: str, repeats: int) -> dict[str, float]:
    """Decoding the archive (cold, empty cache) against reading the decoded cache (warm)."""
    from cifar10_mlp.data.archive import read_cifar10

    def cold():
        with tempfile.TemporaryDirectory() as cache:
            read_cifar10(path, cache)

    with tempfile.TemporaryDirectory() as cache:
        read_cifar10(path, cache)
        warm = median_seconds(lambda: read_cifar10(path, cache), repeats)
    return {"cold_seconds": median_seconds(cold, repeats), "warm_seconds": warm}


def train_throughput(path: str, cache: str, hidden: list[int], n_images: int, epochs: int,
                     repeats: int, peaks: dict[str, float], extra: list[str]) -> dict:
    """Samples/s of the training loop for one MLP, epochs after the first (compile) one (a
    ZCA model's on its whitened images, as ``train.fit`` trains it)."""
    from cifar10_mlp.data import archive, preprocess
    from cifar10_mlp.training import model, optim, train

    cfg = compose([f"data.path={path}", f"data.cache_dir={cache}",
                   f"model.hidden=[{','.join(map(str, hidden))}]", *extra])
    split = archive.load(cfg.data, cfg.seed)
    x, y = split.x_train[:n_images], train.one_hot(split.y_train[:n_images], 10)
    prep = preprocess.fit(cfg.preprocess, x)
    mlp = model.build(cfg.model, cfg.augment, 10, prep, cfg.seed)
    whiten, trained = train.split_at_whitening(mlp)
    if whiten is not None:
        x = whiten.predict(x, batch_size=cfg.trainer.batch_size, verbose=0)
    trained.compile(optimizer=optim.build(cfg.optimizer, cfg.optimizer.lr),
                    loss="categorical_crossentropy", jit_compile=cfg.trainer.jit_compile)
    fit = lambda: trained.fit(x, y, batch_size=cfg.trainer.batch_size,  # noqa: E731
                              epochs=epochs, verbose=0)
    fit()  # compile and warm up
    seconds = median_seconds(fit, repeats) / epochs
    params = sum(int(np.prod(w.shape)) for w in mlp.trainable_weights)
    samples_per_second = len(x) / seconds
    achieved = model.matmul_flops(mlp)["train"] * samples_per_second / 1e9
    return {"hidden": hidden, "batch_size": cfg.trainer.batch_size, "params": params,
            "samples_per_second": samples_per_second, "gflops": achieved,
            "precision": cfg.model.precision,
            "ratio_to_peak": achieved / peaks[cfg.model.precision],
            "epoch_seconds_full_train_set": 45_000 / samples_per_second}


def overhead(path: str, cache: str, workdir: Path, repeats: int) -> dict[str, float]:
    """Whole-command wall time minus the time inside training and evaluation."""
    runs = [cli_run([f"data.path={path}", f"data.cache_dir={cache}", "debug=fast",
                     "tracking.log_model=true"], workdir) for _ in range(repeats)]

    def med(fn):
        return statistics.median(fn(r) for r in runs)

    return {
        "wall_seconds": med(lambda r: r["wall_seconds"]),
        "train_seconds": med(lambda r: r["metrics"]["time_train_seconds"]),
        "evaluate_seconds": med(lambda r: r["metrics"]["time_evaluate_seconds"]),
        "data_seconds": med(lambda r: r["metrics"]["time_data_seconds"]),
        "mlflow_logging_seconds": med(lambda r: r["metrics"]["time_logging_seconds"]),
        "overhead_seconds": med(lambda r: r["wall_seconds"] - r["metrics"]["time_train_seconds"]
                                - r["metrics"]["time_evaluate_seconds"]),
    }


def measure_parts(report: dict, args, cache: str, workdir: Path, peaks: dict) -> None:
    """Data loading, training throughput per width and precision, framework overhead."""
    print("data loading ...", flush=True)
    report["data_loading"] = load_times(args.data, args.repeats)
    report["training"] = []
    for widths in args.widths.split(";"):
        hidden = [int(w) for w in widths.split("-")]
        for precision in args.precisions.split(","):
            print(f"training throughput {hidden} {precision} ...", flush=True)
            report["training"].append(train_throughput(
                args.data, cache, hidden, args.images, 1, args.repeats, peaks,
                [f"model.precision={precision}", *args.overrides]))
    print("framework overhead ...", flush=True)
    report["overhead"] = overhead(args.data, cache, workdir, args.repeats)


def print_parts(report: dict) -> None:
    load = report["data_loading"]
    print(f"data loading: cold {load['cold_seconds']:.2f} s, warm (cache) "
          f"{load['warm_seconds']:.2f} s")
    print("\n| hidden | batch | precision | params | samples/s | GFLOP/s | of peak "
          "| s/epoch (45k) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for t in report["training"]:
        print(f"| {'-'.join(map(str, t['hidden']))} | {t['batch_size']} | {t['precision']} | "
              f"{t['params']:,} | "
              f"{t['samples_per_second']:.0f} | {t['gflops']:.1f} | {t['ratio_to_peak']:.0%} | "
              f"{t['epoch_seconds_full_train_set']:.1f} |")
    o = report["overhead"]
    print(f"\nwhole `cifar10-mlp debug=fast` run: {o['wall_seconds']:.1f} s; training "
          f"{o['train_seconds']:.1f} s, evaluation {o['evaluate_seconds']:.1f} s; overhead "
          f"{o['overhead_seconds']:.1f} s, of which MLflow logging "
          f"{o['mlflow_logging_seconds']:.1f} s and data {o['data_seconds']:.1f} s")
