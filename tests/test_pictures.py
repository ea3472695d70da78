"""cifar10-mlp-predict's reading of the user's pictures: every file that cannot or should not
be read gets a one-line reason, and the others are still predicted."""

import os

import numpy as np
import pytest
from PIL import Image

from cifar10_mlp.serving.predict import predict_files, to_cifar

CLASSES = [f"class_{i}" for i in range(10)]


class MeanColourModel:
    """Stands in for the Keras model: one probability per class, from the mean pixel, so a
    prediction shows which picture it was made from."""

    def predict(self, x, batch_size, verbose):
        assert x.shape[1:] == (32, 32, 3) and x.dtype == np.uint8
        logits = np.stack([x.mean(axis=(1, 2, 3)) * (i + 1) / 255 for i in range(10)], 1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


@pytest.fixture
def pictures(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    bomb = tmp_path / "bomb.png"  # a few kB that decode to 196 million pixels
    Image.new("1", (14_000, 14_000)).save(bomb)
    eps = tmp_path / "drawing.eps"  # Pillow would hand it to Ghostscript
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    fifo = tmp_path / "pipe.png"  # opening it would block until someone writes
    os.mkfifo(fifo)
    return {"good": good, "truncated": truncated, "bomb": bomb, "eps": eps, "fifo": fifo,
            "folder": tmp_path, "missing": tmp_path / "missing.jpg",
            "text": tmp_path / "notes.png"}


def test_every_unreadable_picture_gets_its_reason_and_the_rest_are_predicted(pictures):
    pictures["text"].write_text("not a picture")
    files = list(pictures.values())
    predictions = predict_files(MeanColourModel(), CLASSES, files, top=3)
    assert [p.file for p in predictions] == [str(f) for f in files]  # in the order given
    by_name = dict(zip(pictures, predictions, strict=True))
    good = by_name.pop("good")
    assert good.error is None and [name for name, _ in good.top] == [
        "class_9", "class_8", "class_7"]  # bright: the class with the largest weight wins
    reasons = {name: p.error for name, p in by_name.items()}
    assert all(p.top == [] for p in by_name.values())
    assert all(reason and "\n" not in reason for reason in reasons.values()), reasons
    assert reasons["missing"] == "no such file"
    assert reasons["folder"] == reasons["fifo"] == "not a regular file"
    assert "DecompressionBomb" in reasons["bomb"]
    assert reasons["eps"].startswith("cannot identify image file")
    assert reasons["text"].startswith("cannot identify image file")
    assert "truncated" in reasons["truncated"]


def test_a_picture_is_cut_to_its_central_square_and_resized(tmp_path):
    picture = np.zeros((20, 60, 3), np.uint8)
    picture[:, 20:40] = 255  # the central 20 x 20 square is white, the sides black
    Image.fromarray(picture).save(tmp_path / "wide.png")
    cifar = to_cifar(tmp_path / "wide.png")
    assert cifar.shape == (32, 32, 3) and cifar.dtype == np.uint8
    assert cifar.min() >= 250  # none of the black sides is left
