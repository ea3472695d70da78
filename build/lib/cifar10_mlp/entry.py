"""The first and last code `cifar10-mlp` runs: a Ctrl-C while it imports Hydra, NumPy and
the rest (about a second) ends with one line instead of a traceback from inside an import,
and one after its work is done cannot turn a finished run's exit into a failure."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """`cifar10-mlp`: :func:`cifar10_mlp.cli.main`, once it is imported (``--version``
    answers without importing it)."""
    if sys.argv[1:] == ["--version"]:
        from cifar10_mlp import __version__

        print(f"cifar10-mlp {__version__}")
        return
    try:
        from cifar10_mlp import cli
    except KeyboardInterrupt:
        sys.exit("cifar10-mlp: stopped by Ctrl-C while starting; nothing was run")
    try:
        cli.main()
    finally:
        # the interpreter's shutdown (seconds, with TensorFlow) puts back the default
        # handlers, which die of a signal silently: ignored ones it leaves alone
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
