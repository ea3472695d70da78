"""Predicting the user's own pictures with a trained model (``cifar10-mlp-predict``).

Each picture becomes what the model was trained on, a 32 x 32 RGB uint8 image: a palette,
grey or CMYK image is converted to RGB and an alpha channel is dropped; the central square
is cut out (CIFAR-10's objects fill a square frame) and resized to 32 x 32 with Pillow's
Lanczos filter, which averages away detail that would alias at this size.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 32
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# the picture formats Pillow is allowed to parse: common raster formats only, never those it
# hands to other programs (EPS runs Ghostscript) or rarely exercised decoders
PICTURE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")


@dataclass(frozen=True)
class Prediction:
    """A file's top classes with their probabilities, or why it could not be predicted."""

    file: str
    top: list[tuple[str, float]]
    error: str | None = None

    def line(self) -> str:
        return f"{self.file}: " + ", ".join(f"{name} {p:.3f}" for name, p in self.top)

    def as_dict(self) -> dict:
        if self.error:
            return {"file": self.file, "error": self.error}
        return {"file": self.file,
                "top": [{"class": name, "probability": round(p, 6)} for name, p in self.top]}


def image_files(paths: list[Path]) -> list[Path]:
    """The files to predict: each file as given, and a folder's PNG and JPEG files (sorted,
    not recursive)."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


class UnreadablePicture(ValueError):
    """A file that is not, or should not be read as, a picture; the message says why."""


def to_cifar(path: Path) -> np.ndarray:
    """The picture at ``path`` as a (32, 32, 3) uint8 array. UnreadablePicture, saying why,
    for anything else: a missing file, a folder, a pipe or device (which could block or never
    end), a format outside PICTURE_FORMATS, a truncated or corrupt file, or a decompression
    bomb (more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS``)."""
    from PIL import Image

    if not path.exists():
        raise UnreadablePicture("no such file")
    if not path.is_file():
        raise UnreadablePicture("not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=PICTURE_FORMATS) as image:
                image.load()
                rgb = image.convert("RGB")  # palette, grey, CMYK to RGB; alpha dropped
    except Image.UnidentifiedImageError as err:
        raise UnreadablePicture("cannot identify image file (read as pictures: "
                                f"{', '.join(PICTURE_FORMATS)})") from err
    except Exception as err:  # decoders raise many kinds (OSError, SyntaxError, struct.error)
        raise UnreadablePicture(_reason(err)) from err
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    resized = square.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def predict_files(model, class_names: list[str], files: list[Path], top: int,
                  batch_size: int = 256) -> list[Prediction]:
    """Each file's ``top`` classes by probability (in the order given); a file that cannot be
    read gets its error instead, and the others are still predicted."""
    images, errors = {}, {}
    for file in files:
        try:
            images[file] = to_cifar(file)
        except UnreadablePicture as err:
            errors[file] = str(err)
    from cifar10_mlp.training.evaluate import predict

    probabilities = (predict(model, np.stack(list(images.values())), batch_size) if images
                     else np.empty((0, len(class_names))))
    by_file = dict(zip(images, probabilities, strict=True))
    predictions = []
    for file in files:
        if file in errors:
            predictions.append(Prediction(str(file), [], errors[file]))
            continue
        p = by_file[file]
        best = np.argsort(p)[::-1][:top]
        predictions.append(Prediction(str(file), [(class_names[i], float(p[i])) for i in best]))
    return predictions


def render(predictions: list[Prediction], as_json: bool) -> str:
    """What the command prints on stdout: a line per predicted file, or a JSON list of every
    file (those that failed with their ``error``)."""
    if as_json:
        return json.dumps([p.as_dict() for p in predictions], indent=2)
    return "\n".join(p.line() for p in predictions if not p.error)


def _reason(err: Exception) -> str:
    message = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
