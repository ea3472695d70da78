"""What the measuring scripts share: timing, matrix rates, reference minutes, configs."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
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


def compose(overrides: list[str]):
    """The config ``cifar10-mlp`` would run with these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from cifar10_mlp.cli import CONFIG_MODULE

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)
