"""The step profile: which part of a step an op is, how wall time is shared out, the trace."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar10_mlp.training import step_profile as sp
from cifar10_mlp.training.step_profile import OpEvent

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "profile_step.py"


@pytest.mark.parametrize("name, kind, part", [
    ("StatefulPartitionedCall/cifar10_mlp/dense_1/MatMul", "_MklMatMul", sp.PRODUCTS_FORWARD),
    ("gradient_tape/cifar10_mlp/dense_2/MatMul/MatMul_1", "_MklMatMul", sp.PRODUCTS_BACKWARD),
    ("gradient_tape/cifar10_mlp/batch_norm_1/FusedBatchNormGradV3", "FusedBatchNormGradV3",
     sp.NORMALISATION),
    ("cifar10_mlp/dropout_3/mul", "Mul", sp.ACTIVATION_DROPOUT),
    ("gradient_tape/cifar10_mlp/relu_1/ReluGrad", "ReluGrad", sp.ACTIVATION_DROPOUT),
    ("adam_w/Sub_2", "Sub", sp.OPTIMIZER),
    ("xla", sp.XLA_TYPE, sp.OPTIMIZER),
    ("compile_loss/categorical_crossentropy/Sum", "Sum", sp.LOSS),
    ("cifar10_mlp/dense_1/Cast/Cast", "Cast", sp.CASTS),
    ("PyFunc", "PyFunc", sp.INPUT),
    ("AddN", "AddN", sp.OTHER_OPS),
])
def test_each_op_belongs_to_its_part_of_the_step(name, kind, part):
    assert sp.category(OpEvent(name, kind, 0, 1)) == part


def test_ops_of_the_input_pipeline_threads_are_input():
    gather = OpEvent("GatherV2", "GatherV2", 0, 1, "tf_data_private_threadpool/123")
    assert sp.category(gather) == sp.INPUT


def test_wall_time_is_shared_out_and_adds_up():
    events = [OpEvent("dense_1/MatMul", "MatMul", 0, 40),  # alone, then beside a cast
              OpEvent("dense_2/Cast/Cast", "Cast", 20, 40),
              OpEvent("PyFunc", "PyFunc", 10, 70),  # input: counted only while no op runs
              OpEvent("adam/Sub", "Sub", 80, 90)]
    shares = sp.attribute(events, 0, 100, {sp.CALLBACKS: [(65, 75)]})
    assert shares[sp.PRODUCTS_FORWARD] == pytest.approx(20 + 10)
    assert shares[sp.CASTS] == pytest.approx(10)
    assert shares[sp.INPUT] == pytest.approx(30)  # 40..70
    assert shares[sp.CALLBACKS] == pytest.approx(5)  # 70..75
    assert shares[sp.OPTIMIZER] == pytest.approx(10)
    assert shares[sp.OUTSIDE] == pytest.approx(5 + 10)  # 75..80 and 90..100
    assert sum(shares.values()) == pytest.approx(100)


def test_events_outside_the_window_are_cut_to_it():
    shares = sp.attribute([OpEvent("dense_1/MatMul", "MatMul", -50, 30)], 0, 40)
    assert shares[sp.PRODUCTS_FORWARD] == pytest.approx(30)
    assert shares[sp.OUTSIDE] == pytest.approx(10)


def test_the_trace_reader_finds_the_ops_tensorflow_ran_in_unix_time(tmp_path):
    """Pinned to TensorFlow's trace format (XSpace), which it has no public reader for."""
    import tensorflow as tf

    a = tf.random.stateless_normal((256, 256), seed=(1, 2))
    multiply = tf.function(lambda: tf.matmul(a, a)[0, 0])
    multiply()
    start = time.time_ns()
    tf.profiler.experimental.start(str(tmp_path))
    multiply().numpy()
    tf.profiler.experimental.stop()
    end = time.time_ns()
    products = [e for e in sp.read_trace(tmp_path) if e.type in sp.MATMUL_TYPES]
    assert products
    assert all(start <= e.start_ns <= e.end_ns <= end for e in products)


def test_the_products_counted_are_the_flops_the_model_counts():
    import keras

    from cifar10_mlp.training import model

    inputs = keras.Input((48,))
    x = keras.layers.Dense(32)(inputs)
    x = keras.layers.Dense(16, dtype="mixed_bfloat16")(x)
    mlp = keras.Model(inputs, keras.layers.Dense(10)(x))
    products = sp.dense_products(mlp, batch=8)
    assert [p[0] for p in products] == ["forward", "kernel_gradient", *["forward",
                                        "kernel_gradient", "input_gradient"] * 2]
    assert products[3][4] == "bfloat16"
    assert sp.products_flops(products) == 8 * model.matmul_flops(mlp)["train"]
    assert sp.products_seconds(products, repeats=2) > 0


@pytest.mark.slow
def test_profile_step_shares_out_a_real_step_and_rates_it_by_its_own_shapes(tiny_cifar,
                                                                            tmp_path):
    out = tmp_path / "profile.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tiny_cifar.archive), "--images", "100",
         "--first", "2", "--steps", "4", "--out", str(out), "trainer.batch_size=8",
         "model.hidden=[32,16]", f"data.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    # trace times are float nanoseconds since the epoch: about 0.25 us apart at today's dates
    assert sum(result["parts_ms"].values()) == pytest.approx(result["step_ms"], abs=1e-3)
    assert result["parts_ms"][sp.PRODUCTS_FORWARD] > 0
    assert result["parts_ms"][sp.OPTIMIZER] > 0  # the fused update's XLA program
    assert result["of_own_shapes_rate"] == pytest.approx(
        result["products_alone_ms"] / result["step_ms"])
    assert f"| **whole step** | **{result['step_ms']:.1f}** | 100% |" in done.stdout
    epoch = result["second_epoch_seconds"]
    assert epoch["epoch"] == pytest.approx(
        epoch["training steps"] + epoch["validation"] + epoch["epoch-end callbacks"])
    assert epoch["validation"] > 0  # its hooks were called
    assert f"its second epoch, {epoch['epoch']:.2f} s: training steps" in done.stdout
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tiny_cifar.archive), "--images", "100",
         "--first", "20", f"data.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "too few for --first 20" in done.stderr
