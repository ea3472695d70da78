"""The decoded CIFAR-10 arrays cached as one ``.npz`` file per source, keyed by its sha256.

A cache is never trusted: any fault (stale digest, wrong shapes, a damaged file) means the
source is decoded again, and a cache is written whole or not at all (write, then rename), so
runs in parallel never read half of one.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
ARRAYS = ("x_train", "y_train", "x_test", "y_test", "class_names")


def read(cache_file: Path, digest: str, image_shape: tuple[int, ...]
         ) -> dict[str, np.ndarray] | None:
    """The arrays (:data:`ARRAYS`) cached for the source with sha256 ``digest``, uint8
    images of ``image_shape``; None if there are none, or they are stale or damaged (the
    caller decodes the source again)."""
    if not cache_file.exists():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in (*ARRAYS, "digest")}
        if str(arrays.pop("digest")) != digest:
            raise ValueError("digest does not match the source")
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if x.dtype != np.uint8 or x.shape[1:] != image_shape or len(x) != len(y):
                raise ValueError(f"{split} arrays have the wrong shape or type")
    except Exception as err:  # a cache is never trusted: any fault means rebuild
        log.warning("ignoring unreadable cache %s (%s); decoding the source again",
                    cache_file, err)
        return None
    return arrays


def write(cache_file: Path, digest: str, arrays: dict[str, np.ndarray]) -> None:
    """Cache the decoded ``arrays`` (:data:`ARRAYS`) of the source with sha256 ``digest``;
    a cache that cannot be written is only a warning."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # write then rename, so a crash or a parallel run never leaves half a cache
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{k: arrays[k] for k in ARRAYS}, digest=np.array(digest))
            os.replace(tmp, cache_file)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not write the data cache %s (%s); continuing without it",
                    cache_file, err)
