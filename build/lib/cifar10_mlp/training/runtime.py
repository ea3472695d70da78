"""Starting TensorFlow: its threads, and a first screen without its native start-up chatter.

Importing TensorFlow 2.21 on a CPU-only machine writes, from C++ and straight to the
process's stderr (so neither ``TF_CPP_MIN_LOG_LEVEL`` nor Python's logging reaches it), an
absl notice, oneDNN and CUDA-stub INFO lines, and ``E0000 ... failed call to cuInit:
... UNKNOWN ERROR (303)``, which a newcomer reads as an error though it only means
"no GPU". :func:`start` captures stderr at the file-descriptor level while TensorFlow loads
and initialises, and passes on every line except those known ones.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# TensorFlow's own Python-side logging below ERROR; set before it is first imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# native start-up lines that say nothing is wrong; anything else still reaches stderr
START_UP_NOISE = tuple(re.compile(pattern) for pattern in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR$",
    r"^I\d{4} [\d:.]+ +\d+ \S+\] ",  # absl INFO lines (oneDNN notice, CUDA stub, ...)
    r"^E\d{4} [\d:.]+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit: ",  # no GPU here
))


@contextmanager
def filtered_native_stderr(noise: tuple[re.Pattern, ...] = START_UP_NOISE) -> Iterator[None]:
    """Hold what is written to file descriptor 2 during the block, then write it out less
    the lines ``noise`` matches (Python's own stderr output included, in order)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode(errors="replace").splitlines():
                if not any(pattern.search(line) for pattern in noise):
                    print(line, file=sys.stderr)


def start(threads: int) -> None:
    """Import and initialise TensorFlow quietly, with ``threads`` cores for its op pools.

    A worker process that runs several sweep jobs starts TensorFlow once: later calls keep
    the thread count the first one set.
    """
    with filtered_native_stderr():
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        except RuntimeError:  # TensorFlow already initialised in this process
            pass
        tf.config.list_logical_devices()  # initialise now: the CUDA probe speaks here
