#!/usr/bin/env python
"""Where one training step of a config spends its time, and how close it runs to the
matrix engine's rate for its own products.

    python scripts/profile_step.py                            # the default run
    python scripts/profile_step.py experiment=best_mlp        # any overrides
    python scripts/profile_step.py experiment=best_mlp --out best.json

It trains the config as ``cifar10-mlp`` does (``train.fit``, its callbacks and input
pipeline included) for two epochs on the first --images training images of the real data,
and traces steps --first to --first + --steps - 1 of the first with TensorFlow's profiler;
the second epoch's wall time is split into its steps, its validation and its epoch-end
callbacks. The table
shares the traced steps' wall time out among the parts of a step
(``cifar10_mlp.training.step_profile``). Then the step's own matrix products (forward and backward,
its layer shapes, batch and precision) are timed alone, in the same invocation: the
step's achieved GFLOP/s over that rate is the share of the step the products would fill.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_run import add_data_argument  # noqa: E402
from measure import compose, numpy_matmul_rate  # noqa: E402

from cifar10_mlp.training import step_profile


def profile(overrides: list[str], images: int, first: int, steps: int) -> dict:
    """Train two epochs of the composed config, tracing ``steps`` steps of the first;
    the step's parts and the second epoch's."""
    import keras

    from cifar10_mlp.data import archive, preprocess
    from cifar10_mlp.training import model, runtime, train

    cfg = compose([f"data.train_limit={images}", "trainer.epochs=2", "trainer.verbose=0",
                   *overrides])
    if cfg.trainer.jit_compile:
        raise SystemExit("trainer.jit_compile=true: the whole step would be one XLA program, "
                         "which the trace does not split into parts")
    runtime.start(cfg.trainer.threads or os.cpu_count())
    split = archive.load(cfg.data, cfg.seed)
    batches = -(-len(split.y_train) // cfg.trainer.batch_size)
    if batches < first + steps + 1:
        raise SystemExit(f"{images} images give {batches} batches of "
                         f"{cfg.trainer.batch_size}: too few for --first {first} "
                         f"--steps {steps}")
    prep = preprocess.fit(cfg.preprocess, split.x_train)
    mlp = model.build(cfg.model, cfg.augment, len(split.class_names), prep, cfg.seed)
    hooks: list[tuple[float, float]] = []
    timed = {name: getattr(keras.callbacks.CallbackList, name)
             for name in ("on_train_batch_begin", "on_train_batch_end")}

    def timing(method):
        def timed_hook(self, *args, **kwargs):
            start = time.time_ns()
            try:
                return method(self, *args, **kwargs)
            finally:
                hooks.append((start, time.time_ns()))
        return timed_hook

    with tempfile.TemporaryDirectory() as tmp:
        tracer = step_profile.StepTracer(Path(tmp) / "trace", first, steps)
        epochs = step_profile.EpochSplit()
        for name, method in timed.items():  # the time Keras spends in per-batch callbacks
            setattr(keras.callbacks.CallbackList, name, timing(method))
        try:
            train.fit(mlp, split, cfg.trainer, cfg.optimizer, cfg.schedule, cfg.augment,
                      cfg.seed, Path(tmp) / "checkpoint", callbacks=[tracer, epochs])
        finally:
            for name, method in timed.items():
                setattr(keras.callbacks.CallbackList, name, method)
        events = step_profile.read_trace(Path(tmp) / "trace")
    start, end = tracer.window_ns
    shares = step_profile.attribute(events, start, end, {step_profile.CALLBACKS: hooks})
    step_seconds = (end - start) / 1e9 / steps
    _, trained = train.split_at_whitening(mlp)
    products = step_profile.dense_products(trained, cfg.trainer.batch_size)
    alone = step_profile.products_seconds(products)
    flops = step_profile.products_flops(products)
    return {"overrides": overrides, "batch_size": cfg.trainer.batch_size,
            "precision": cfg.model.precision, "hidden": list(cfg.model.hidden),
            "step_ms": 1000 * step_seconds,
            "parts_ms": {k: v / 1e6 / steps for k, v in shares.items()},
            "products_alone_ms": 1000 * alone,
            "products_gflop": flops / 1e9,
            "achieved_gflops": flops / step_seconds / 1e9,
            "own_shapes_gflops": flops / alone / 1e9,
            "of_own_shapes_rate": alone / step_seconds,
            "second_epoch_seconds": epochs.epochs[-1]}


def print_profile(result: dict) -> None:
    label = " ".join(result["overrides"]) or "the default run"
    print(f"\n{label}: {'-'.join(map(str, result['hidden']))}, batch "
          f"{result['batch_size']}, {result['precision']}")
    print("\n| part of the step | ms per step | share |\n| --- | --- | --- |")
    for part, ms in result["parts_ms"].items():
        if ms >= 0.05:
            print(f"| {part} | {ms:.1f} | {ms / result['step_ms']:.0%} |")
    print(f"| **whole step** | **{result['step_ms']:.1f}** | 100% |")
    print(f"\nits products alone: {result['products_alone_ms']:.1f} ms "
          f"({result['products_gflop']:.1f} GFLOP at {result['own_shapes_gflops']:.0f} GFLOP/s, "
          f"the rate of its own shapes); the step achieves {result['achieved_gflops']:.0f} "
          f"GFLOP/s: **{result['of_own_shapes_rate']:.0%}** of that rate")
    epoch = result["second_epoch_seconds"]
    parts = ", ".join(f"{part} {seconds:.2f} s ({seconds / epoch['epoch']:.0%})"
                      for part, seconds in epoch.items() if part != "epoch")
    print(f"\nits second epoch, {epoch['epoch']:.2f} s: {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides, as for cifar10-mlp")
    add_data_argument(parser)
    parser.add_argument("--images", type=int, default=25_000,
                        help="training images (before the validation split) to train on")
    parser.add_argument("--first", type=int, default=10, help="first traced step")
    parser.add_argument("--steps", type=int, default=25, help="steps traced")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    rate_before = numpy_matmul_rate()
    result = profile([f"data.path={args.data}", *args.overrides], args.images, args.first,
                     args.steps)
    result["overrides"] = args.overrides
    result["numpy_float32_gflops"] = [rate_before, numpy_matmul_rate()]
    print_profile(result)
    print(f"\nnumpy float32 4096^3 before and after: "
          f"{' and '.join(f'{r:.0f}' for r in result['numpy_float32_gflops'])} GFLOP/s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
