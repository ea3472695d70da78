#!/usr/bin/env python
"""Measure what decides whether the tool is fast: matmul peak, training throughput, data
loading, the framework's own overhead, and the presets' time to accuracy.

    python scripts/benchmark.py                      # real data from $CIFAR10_PATH
    python scripts/benchmark.py --presets fast_mlp,best_mlp --out benchmark.json
    python scripts/benchmark.py --presets '' --overrides trainer.batch_size=128  # compare
    python scripts/benchmark.py --presets '' --widths 2048-1024-512 --overrides preprocess=zca

Timings are medians over --repeats; ratios (achieved / peak) are measured in the same run,
over numpy's float32 peak, or TensorFlow's bfloat16 peak for ``model.precision=mixed_bfloat16``.
Achieved GFLOP/s counts what is computed (``model.matmul_flops``): forward 2 per weight;
backward 4 per trainable weight, 2 in the first trainable layer (no input gradient); fixed
whitening forward only, and a ZCA model's once per image, not per epoch; for presets, each
epoch's validation pass (forward only) too.
Each preset's training time is also given in reference minutes: N x 60 s x 300 / R, R
numpy's float32 4096^3 rate measured right before and right after the preset (the lower),
300 GFLOP/s on the quiet reference machine (the machines are shared; their speed varies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli_run import cli_run  # noqa: E402

from cifar10_mlp import cli  # noqa: E402,F401  (registers the config schemas)

REFERENCE_RATE = 300.0  # numpy's float32 4096^3 GFLOP/s on the quiet reference machine


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(n: int, repeats: int) -> float:
    """float32 GFLOP/s of an n x n matmul through numpy's BLAS."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    a @ b  # warm-up
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def numpy_matmul_rate(repeats: int = 5) -> float:
    """R, numpy's float32 4096 x 4096 matmul rate in GFLOP/s: the yardstick of a reference
    minute (60 s x 300 / R; R is 300 on the quiet reference machine)."""
    return matmul_peak(4096, repeats)


def reference_minutes(seconds: float, rate: float) -> float:
    """``seconds`` measured where numpy multiplies at ``rate`` GFLOP/s, in reference
    minutes: what they would have been on the quiet reference machine."""
    return seconds / 60 * rate / REFERENCE_RATE


def bfloat16_matmul_peak(n: int, repeats: int) -> float:
    """bfloat16 GFLOP/s of an n x n matmul through TensorFlow (numpy has no bfloat16): the
    peak for models with ``model.precision=mixed_bfloat16``."""
    import tensorflow as tf

    a, b = (tf.cast(tf.random.stateless_normal((n, n), seed=(0, i)), tf.bfloat16)
            for i in range(2))
    multiply = tf.function(lambda: tf.matmul(a, b)[0, 0])
    multiply().numpy()  # trace and warm up
    return 2 * n**3 / median_seconds(lambda: multiply().numpy(), repeats) / 1e9


def load_times(path: str, repeats: int) -> dict[str, float]:
    """Decoding the archive (cold, empty cache) against reading the decoded cache (warm)."""
    from cifar10_mlp.data import read_cifar10

    def cold():
        with tempfile.TemporaryDirectory() as cache:
            read_cifar10(path, cache)

    with tempfile.TemporaryDirectory() as cache:
        read_cifar10(path, cache)
        warm = median_seconds(lambda: read_cifar10(path, cache), repeats)
    return {"cold_seconds": median_seconds(cold, repeats), "warm_seconds": warm}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def train_throughput(path: str, cache: str, hidden: list[int], n_images: int, epochs: int,
                     repeats: int, peaks: dict[str, float], extra: list[str]) -> dict:
    """Samples/s of the training loop for one MLP, epochs after the first (compile) one (a
    ZCA model's on its whitened images, as ``train.fit`` trains it)."""
    from cifar10_mlp import data, model, optim, preprocess, train

    cfg = compose([f"data.path={path}", f"data.cache_dir={cache}",
                   f"model.hidden=[{','.join(map(str, hidden))}]", *extra])
    split = data.load(cfg.data, cfg.seed)
    x, y = split.x_train[:n_images], train.one_hot(split.y_train[:n_images], 10)
    prep = preprocess.fit(cfg.preprocess, x)
    mlp = model.build(cfg.model, cfg.augment, 10, prep, cfg.seed)
    whiten, trained = train.split_at_whitening(mlp)
    if whiten is not None:
        x = whiten.predict(x, batch_size=cfg.trainer.batch_size, verbose=0)
    trained.compile(optimizer=optim.build(cfg.optimizer), loss="categorical_crossentropy",
                    jit_compile=cfg.trainer.jit_compile)
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


def preset(name: str, path: str, cache: str, workdir: Path, peaks: dict[str, float],
           extra: list[str]) -> dict:
    """A preset's (``default``: no preset) test accuracy, training time (also in reference
    minutes, by numpy's float32 rate measured right before and right after it, the lower
    of the two), the time its validation accuracy took, and the GFLOP/s its training
    achieved."""
    chosen = [] if name == "default" else [f"experiment={name}"]
    rate_before = numpy_matmul_rate()
    result = cli_run([f"data.path={path}", f"data.cache_dir={cache}", *chosen, *extra,
                      "tracking.log_model=false"], workdir)
    rates = (rate_before, numpy_matmul_rate())
    elapsed = np.cumsum(result["epoch_seconds"])
    best = max(result["val_accuracy"])
    reached = next(i for i, v in enumerate(result["val_accuracy"]) if v >= 0.99 * best)
    metrics = result["metrics"]
    flops, precision, own_rate = preset_flops([*chosen, *extra, f"data.path={path}",
                                               f"data.cache_dir={cache}"])
    n_train, n_val = result["split"]
    computed = ((flops["train"] * n_train + flops["validation"] * n_val) * len(elapsed)
                + flops["once"] * (n_train + n_val))
    achieved = computed / metrics["time_train_seconds"] / 1e9
    return {"test_accuracy": metrics["test_accuracy"],
            # with test-time augmentation, the same model's accuracy without it
            "test_accuracy_without_tta": metrics.get("test_accuracy_without_tta"),
            "train_seconds": metrics["time_train_seconds"],
            "numpy_float32_gflops_before_after": rates,
            "train_reference_minutes": reference_minutes(metrics["time_train_seconds"],
                                                         min(rates)),
            "epochs": len(elapsed),
            "best_val_accuracy": best,
            "seconds_to_99pct_of_best_val": float(elapsed[reached]),
            "gflops": achieved, "precision": precision,
            "ratio_to_peak": achieved / peaks[precision],
            # its training step's products alone, at its own shapes, batch and precision
            "own_shapes_gflops": own_rate, "of_own_shapes_rate": achieved / own_rate,
            "wall_seconds": result["wall_seconds"]}


def preset_flops(overrides: list[str]) -> tuple[dict[str, int], str, float]:
    """``model.matmul_flops`` of the model a config builds (its fixed whitening with the
    fitted shape; the values do not change the count), its ``model.precision``, and the
    GFLOP/s of its training step's matrix products alone (``step_profile``)."""
    from cifar10_mlp import model, preprocess, step_profile, train

    cfg = compose(overrides)
    pixels = 32 * 32 * 3
    whitening = {"zca": np.zeros((pixels, pixels)),
                 "pca": np.zeros((pixels, cfg.preprocess.get("components", 0)))}
    prep = preprocess.Preprocessing(cfg.preprocess.name, np.zeros(pixels), np.ones(pixels),
                                    whitening.get(cfg.preprocess.name))
    n_classes = len(cfg.data.classes) if cfg.data.classes else 10
    mlp = model.build(cfg.model, cfg.augment, n_classes, prep, cfg.seed)
    products = step_profile.dense_products(train.split_at_whitening(mlp)[1],
                                           cfg.trainer.batch_size)
    own_rate = (step_profile.products_flops(products)
                / step_profile.products_seconds(products) / 1e9)
    return model.matmul_flops(mlp), cfg.model.precision, own_rate


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("CIFAR10_PATH"),
                        help="CIFAR-10 archive or folder (default: $CIFAR10_PATH)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=10_000,
                        help="training images per throughput measurement")
    parser.add_argument("--widths", default="1024-512-256;512;2048-1024;2048-2048-2048",
                        help="';'-separated hidden widths to measure (the first is the default)")
    parser.add_argument("--presets", default="default,fast_mlp",
                        help="','-separated experiment presets to train in full, each timed "
                             "in reference minutes ('default': the default run; '' for none)")
    parser.add_argument("--preset-overrides", nargs="*", default=[],
                        help="config overrides for the presets' runs, e.g. trainer.epochs=5")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16",
                        help="','-separated model.precision values: each width is measured "
                             "in each, side by side")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="config overrides for the throughput runs, e.g. "
                             "trainer.batch_size=128 trainer.jit_compile=true")
    parser.add_argument("--presets-only", action="store_true",
                        help="only the peaks and the presets, no throughput or overhead")
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"))
    args = parser.parse_args()
    if not args.data:
        parser.error("give --data or set CIFAR10_PATH")

    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir, cache = Path(tmp), str(Path(tmp) / "cache")
        print("matmul peak ...", flush=True)
        peaks = {"float32": matmul_peak(2048, max(5, args.repeats)),
                 "mixed_bfloat16": bfloat16_matmul_peak(2048, max(5, args.repeats))}
        report["matmul_peak_gflops"] = peaks["float32"]
        report["bfloat16_matmul_peak_gflops"] = peaks["mixed_bfloat16"]
        if not args.presets_only:
            measure_parts(report, args, cache, workdir, peaks)
        report["presets"] = {}
        for name in filter(None, args.presets.split(",")):
            print(f"preset {name} ...", flush=True)
            report["presets"][name] = preset(name, args.data, cache, workdir, peaks,
                                             args.preset_overrides)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nwritten to {args.out}")


def print_table(report: dict) -> None:
    print(f"\nmatmul peak (2048^3): numpy float32 {report['matmul_peak_gflops']:.1f} GFLOP/s, "
          f"TensorFlow bfloat16 {report['bfloat16_matmul_peak_gflops']:.1f} GFLOP/s (the peak "
          "for mixed_bfloat16 rows)")
    if "training" in report:
        print_parts(report)
    if report["presets"]:
        print("\n| preset | test accuracy | without TTA | training s | reference minutes "
              "| numpy GFLOP/s before, after | epochs | s to 99% of best val | GFLOP/s "
              "| of peak | of its products' rate |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, p in report["presets"].items():
            plain = p["test_accuracy_without_tta"]
            rates = ", ".join(f"{r:.0f}" for r in p["numpy_float32_gflops_before_after"])
            print(f"| {name} | {p['test_accuracy']:.4f} | "
                  f"{'-' if plain is None else f'{plain:.4f}'} | {p['train_seconds']:.0f} | "
                  f"{p['train_reference_minutes']:.2f} | {rates} | {p['epochs']} | "
                  f"{p['seconds_to_99pct_of_best_val']:.0f} | {p['gflops']:.1f} | "
                  f"{p['ratio_to_peak']:.0%} | {p['of_own_shapes_rate']:.0%} |")


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


if __name__ == "__main__":
    main()
