"""Reading the pickles of CIFAR-10's "python version" without trusting them: a pickle can
name any importable callable and have it called, so only what the official batches hold
is admitted."""

from __future__ import annotations

import pickle

# the only globals a CIFAR-10 batch's pickle names: numpy arrays, scalars (labels taken from
# an array) and dtypes, as numpy 1 and 2 write them (protocols 2 to 5), and bytes as Python 3
# writes them under protocol 2
BATCH_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class BatchUnpickler(pickle.Unpickler):
    """Unpickles what the official batches hold (bytes, str, numbers, lists, dicts and
    numpy arrays) and refuses any other global before it is imported, let alone called:
    a pickle that names ``os.system`` runs nothing."""

    def find_class(self, module: str, name: str):
        if (module, name) not in BATCH_GLOBALS:
            raise UnsafePickle(f"{module}.{name}")
        return super().find_class(module, name)


class UnsafePickle(pickle.UnpicklingError):
    """A pickle named a global that a CIFAR-10 batch never holds."""
