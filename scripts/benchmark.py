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
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark_parts import measure_parts, print_parts  # noqa: E402
from cli_run import add_data_argument, cli_run  # noqa: E402
from measure import (  # noqa: E402
    bfloat16_matmul_peak,
    compose,
    matmul_peak,
    numpy_matmul_rate,
    reference_minutes,
)


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
            # the epochs' spread shows load the rates read at the two ends cannot see
            "epoch_seconds_median_min_max": (float(np.median(result["epoch_seconds"])),
                                             min(result["epoch_seconds"]),
                                             max(result["epoch_seconds"])),
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
    from cifar10_mlp.data import preprocess
    from cifar10_mlp.training import model, step_profile, train

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
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
              "| numpy GFLOP/s before, after | epochs | epoch s: median (min-max) "
              "| s to 99% of best val | GFLOP/s | of peak | of its products' rate |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, p in report["presets"].items():
            plain = p["test_accuracy_without_tta"]
            rates = ", ".join(f"{r:.0f}" for r in p["numpy_float32_gflops_before_after"])
            median, fastest, slowest = p["epoch_seconds_median_min_max"]
            print(f"| {name} | {p['test_accuracy']:.4f} | "
                  f"{'-' if plain is None else f'{plain:.4f}'} | {p['train_seconds']:.0f} | "
                  f"{p['train_reference_minutes']:.2f} | {rates} | {p['epochs']} | "
                  f"{median:.2f} ({fastest:.2f}-{slowest:.2f}) | "
                  f"{p['seconds_to_99pct_of_best_val']:.0f} | {p['gflops']:.1f} | "
                  f"{p['ratio_to_peak']:.0%} | {p['of_own_shapes_rate']:.0%} |")


if __name__ == "__main__":
    main()
