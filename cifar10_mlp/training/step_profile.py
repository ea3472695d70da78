"""Where a training step's time goes, from TensorFlow's own op-level trace.

A window of training steps is traced with TensorFlow's profiler (``StepTracer``). Every op
TensorFlow ran in the window is put in one category by its type and the name scope the
Keras layer, loss or optimizer gave it (``category``). The window's wall time is then
shared out instant by instant (``attribute``): while ops run, each running op gets an equal
part of that instant; while none runs, the time goes to the Python interval that covers it
(Keras' per-batch callbacks, the input pipeline), or else to "outside TensorFlow" (Keras'
training loop and dispatch). The parts add up to the wall time, so each share is a share
of the step, not of a sum of overlapping op times.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import keras

PRODUCTS_FORWARD = "matrix products, forward"
PRODUCTS_BACKWARD = "matrix products, backward"
NORMALISATION = "normalisation"
ACTIVATION_DROPOUT = "activation and dropout"
LOSS = "loss"
OPTIMIZER = "optimizer update"
CASTS = "precision casts"
METRICS = "metrics"
INPUT = "input (batches)"
OTHER_OPS = "other TensorFlow ops"
CALLBACKS = "per-batch Python callbacks"
OUTSIDE = "outside TensorFlow (Keras' loop, Python)"
CATEGORIES = (PRODUCTS_FORWARD, PRODUCTS_BACKWARD, NORMALISATION, ACTIVATION_DROPOUT, LOSS,
              OPTIMIZER, CASTS, METRICS, INPUT, OTHER_OPS, CALLBACKS, OUTSIDE)

MATMUL_TYPES = {"MatMul", "_MklMatMul", "_FusedMatMul", "_MklFusedMatMul", "BatchMatMulV2",
                "_MklBatchMatMulV2", "_MklNativeFusedMatMul", "_MklNativeMatMul"}
# ops that only call other ops, whose own events are the ones counted
CALL_TYPES = {"StatefulPartitionedCall", "PartitionedCall", "While", "StatelessWhile", "If",
              "StatelessIf", "Identity", "NoOp"}
# name scope fragments -> category, first match wins (after the op-type rules)
SCOPES = (
    (re.compile(r"(^|/)(compile_metrics|accuracy)[/_]"), METRICS),
    (re.compile(r"(^|/)(compile_loss|categorical_crossentropy|loss)[/_]"), LOSS),
    (re.compile(r"(^|/)(batch_norm|layer_norm|batch_normalization|layer_normalization)"
                r"[^/]*/"), NORMALISATION),
    (re.compile(r"(^|/)(dropout|relu|gelu|silu|tanh|elu|activation)[^/]*/"),
     ACTIVATION_DROPOUT),
    (re.compile(r"(^|/)(adam|adam_w|adamw|sgd|lion|fused_\w+|optimizer)[^/]*/"), OPTIMIZER),
    (re.compile(r"(^|/)(classifier)/"), LOSS),  # the softmax and its gradient
)
XLA_EXECUTION = "CpuExecutable::ExecuteAsyncOnStream"
XLA_TYPE = "XlaProgram"
XLA_KERNEL = re.compile(r"^[a-z_]+_fusion(\.\d+)?$")
OP_EVENT = re.compile(r"^(?P<name>[^:]+):(?P<type>\w+)$")


@dataclass(frozen=True)
class OpEvent:
    """One op TensorFlow ran: its full name (scopes included), type, wall interval and the
    thread it ran on."""

    name: str
    type: str
    start_ns: float
    end_ns: float
    thread: str = ""


def read_trace(logdir: Path) -> list[OpEvent]:
    """The op events of the newest trace under ``logdir``, on the host's op threads.

    TensorFlow writes the trace as an XSpace protocol buffer; its schema ships with
    TensorFlow (``tensorflow.tsl.profiler.protobuf``), which has no other public reader.
    Times are in nanoseconds of the Unix clock (``time.time_ns``).
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(Path(logdir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not paths:
        raise FileNotFoundError(f"no TensorFlow trace (*.xplane.pb) under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(paths[-1].read_bytes())
    origin = 0  # line timestamps count from the start of profiling, which one plane states
    for plane in space.planes:
        for stat in plane.stats:
            if plane.stat_metadata[stat.metadata_id].name == "profile_start_time":
                origin = stat.uint64_value or stat.int64_value
    events = []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                op = _op_of(names.get(event.metadata_id, ""))
                if op is not None:
                    start = origin + line.timestamp_ns + event.offset_ps / 1000
                    events.append(OpEvent(*op, start, start + event.duration_ps / 1000,
                                          line.name))
    return events


def _op_of(event_name: str) -> tuple[str, str] | None:
    """(name, type) of an op event, or None for the profiler's other events. The work of
    XLA-compiled code shows as executions of an XLA program and its fused kernels (which
    may go on after the program's own event ends), with no op names."""
    if event_name == XLA_EXECUTION or XLA_KERNEL.match(event_name):
        return "xla", XLA_TYPE
    match = OP_EVENT.match(event_name)
    if match is None or match["type"] in CALL_TYPES:
        return None
    return match["name"], match["type"]


def category(event: OpEvent) -> str:
    """The part of a training step an op belongs to."""
    if event.type == XLA_TYPE:  # a training step compiles only the fused optimizer update
        return OPTIMIZER
    if event.type in MATMUL_TYPES:
        return PRODUCTS_BACKWARD if "gradient_tape/" in event.name else PRODUCTS_FORWARD
    if (event.thread.startswith("tf_data")  # the input pipeline's own threads
            or event.type.startswith(("IteratorGetNext", "OptionalGetValue", "PyFunc"))):
        return INPUT
    for pattern, kind in SCOPES:
        if pattern.search(event.name):
            return kind
    if event.type == "Cast":
        return CASTS
    if "FusedBatchNorm" in event.type:
        return NORMALISATION
    return OTHER_OPS


def attribute(events: Iterable[OpEvent], start_ns: float, end_ns: float,
              python: dict[str, list[tuple[float, float]]] | None = None) -> dict[str, float]:
    """Share the wall time ``[start_ns, end_ns)`` out among categories, in nanoseconds.

    At each instant the running ops of the step share it equally (by ``category``). An
    instant when none runs goes to the input pipeline if it is working (the step waits
    for its batch; input work alongside the step's ops is not on its path), else to the
    first category of ``python`` (name -> intervals) covering it, else to ``OUTSIDE``.
    The result adds up to ``end_ns - start_ns``.
    """
    intervals: dict[str, list[tuple[float, float]]] = {}
    for event in events:
        intervals.setdefault(category(event), []).append((event.start_ns, event.end_ns))
    fillers = [INPUT, *(python or {})]  # count only where no op of the step runs
    for name, spans in (python or {}).items():
        intervals.setdefault(name, []).extend(spans)
    points: list[tuple[float, int, str]] = []
    for kind, spans in intervals.items():
        for lo, hi in spans:
            lo, hi = max(lo, start_ns), min(hi, end_ns)
            if hi > lo:
                points += [(lo, 1, kind), (hi, -1, kind)]
    points.sort(key=lambda p: (p[0], p[1]))
    shares = dict.fromkeys(CATEGORIES, 0.0)
    running: dict[str, int] = {}
    now = start_ns
    for at, change, kind in [*points, (end_ns, 0, "")]:
        if at > now:
            ops = {k: n for k, n in running.items() if n > 0 and k not in fillers}
            if ops:
                total = sum(ops.values())
                for k, n in ops.items():
                    shares[k] += (at - now) * n / total
            else:
                covering = [k for k in fillers if running.get(k, 0) > 0]
                shares[covering[0] if covering else OUTSIDE] += at - now
            now = at
        if kind:
            running[kind] = running.get(kind, 0) + change
    return shares


class StepTracer(keras.callbacks.Callback):
    """Traces training batches ``first`` to ``first + count - 1`` of the first epoch with
    TensorFlow's profiler into ``logdir``; ``window_ns`` is then their wall interval."""

    def __init__(self, logdir: Path, first: int, count: int):
        super().__init__()
        self.logdir, self.first, self.count = Path(logdir), first, count
        self.window_ns: tuple[int, int] | None = None
        self._start = 0

    def on_train_batch_begin(self, batch, logs=None):
        import tensorflow as tf

        if batch == self.first and self.window_ns is None:
            tf.profiler.experimental.start(str(self.logdir))
            self._start = time.time_ns()
        elif batch == self.first + self.count and self._start and self.window_ns is None:
            self.window_ns = (self._start, time.time_ns())
            tf.profiler.experimental.stop()


class EpochSplit(keras.callbacks.Callback):
    """Each epoch's wall time split into its training steps, its validation and the
    epoch-end work of the callbacks listed before this one (early-stopping copy,
    checkpoint, logs); list it last. ``epochs`` holds one dict of seconds per epoch."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict[str, float]] = []
        self._marks: dict[str, float] = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._marks = {"begin": time.perf_counter()}

    def on_test_begin(self, logs=None):
        self._marks["validation"] = time.perf_counter()

    def on_test_end(self, logs=None):
        self._marks["callbacks"] = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        validation = self._marks.get("validation", end)
        callbacks = self._marks.get("callbacks", end)
        self.epochs.append({"training steps": validation - self._marks["begin"],
                            "validation": callbacks - validation,
                            "epoch-end callbacks": end - callbacks,
                            "epoch": end - self._marks["begin"]})


def dense_products(model: keras.Model, batch: int) -> list[tuple[str, int, int, int, str]]:
    """The matrix products of one training step of ``model`` at ``batch`` images, as
    (kind, batch, inputs, units, dtype) rows, per trainable Dense layer: ``forward``
    (x W), ``kernel_gradient`` (x^T dy) and, except in the first trainable layer, whose
    input needs no gradient, ``input_gradient`` (dy W^T)."""
    products = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Dense) or not layer.trainable:
            continue
        inputs, units = layer.kernel.shape
        kinds = ["forward", "kernel_gradient", "input_gradient"][:3 if products else 2]
        products += [(kind, batch, inputs, units, layer.dtype_policy.compute_dtype)
                     for kind in kinds]
    return products


def products_seconds(products: list[tuple[str, int, int, int, str]], repeats: int = 20
                     ) -> float:
    """Median seconds TensorFlow takes for all of ``products`` in a row, in one function,
    laid out as the step lays them out, in their layers' compute dtype."""
    import statistics

    import tensorflow as tf

    def operand(shape, seed, dtype):
        return tf.cast(tf.random.stateless_normal(shape, seed=(seed, 0)), dtype)

    calls = []
    for i, (kind, batch, inputs, units, dtype) in enumerate(products):
        x, w = operand((batch, inputs), 2 * i, dtype), operand((inputs, units), 2 * i + 1, dtype)
        dy = operand((batch, units), 2 * i, dtype)
        calls.append({"forward": (x, w, {}), "kernel_gradient": (x, dy, {"transpose_a": True}),
                      "input_gradient": (dy, w, {"transpose_b": True})}[kind])

    @tf.function
    def run():
        total = tf.constant(0.0)
        for a, b, transposes in calls:
            total += tf.cast(tf.matmul(a, b, **transposes)[0, 0], tf.float32)
        return total

    run().numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run().numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def products_flops(products: list[tuple[str, int, int, int, str]]) -> int:
    """Floating-point operations of ``products`` (2 x batch x inputs x units each)."""
    return sum(2 * batch * inputs * units for _, batch, inputs, units, _ in products)
