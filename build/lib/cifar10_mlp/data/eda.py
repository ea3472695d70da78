"""Dataset exploration: statistics of a split, before and after preprocessing.

Everything here is computed on the same split (classes, limits, validation carve)
and the same fitted preprocessing that a training run with the same config uses.
"""

from __future__ import annotations

import hashlib
import html
import logging
from collections import defaultdict

import numpy as np

from cifar10_mlp import pages
from cifar10_mlp.data import preprocess
from cifar10_mlp.data.archive import DataSplit

log = logging.getLogger(__name__)


def images_of(split: DataSplit) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": (split.x_train, split.y_train), "val": (split.x_val, split.y_val),
            "test": (split.x_test, split.y_test)}


def class_counts(split: DataSplit) -> dict[str, list[int]]:
    """Images per class in each split."""
    k = len(split.class_names)
    return {name: np.bincount(y, minlength=k).tolist() for name, (_, y) in images_of(split).items()}


def channel_stats(values: np.ndarray) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation of images or flattened channel-last vectors."""
    channels = values.reshape(-1, 3).astype(np.float64)
    return {"mean": channels.mean(axis=0).tolist(), "std": channels.std(axis=0).tolist()}


def preprocessed(prep: preprocess.Preprocessing, images: np.ndarray,
                 batch_size: int = 1024) -> np.ndarray:
    """Images through the fitted preprocessing layers (what the MLP's first layer sees)."""
    import keras

    model = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"),
                              *preprocess.as_layers(prep)])
    return model.predict(images, batch_size=batch_size, verbose=0)


def class_mean_images(split: DataSplit) -> np.ndarray:
    """The mean training image of each class, uint8 (k, 32, 32, 3)."""
    return np.stack([split.x_train[split.y_train == c].mean(axis=0)
                     for c in range(len(split.class_names))]).round().astype(np.uint8)


def duplicates(split: DataSplit) -> dict[str, object]:
    """Exact duplicate images within and across splits, by their bytes.

    ``within`` counts, for each split, the images that repeat an earlier image of the
    same split; ``across`` counts the distinct images of one split that also occur in
    another; ``examples`` gives up to 5 index groups for each kind.
    """
    first_seen: dict[str, dict[bytes, list[int]]] = {}
    for name, (x, _) in images_of(split).items():
        seen: dict[bytes, list[int]] = defaultdict(list)
        for i, image in enumerate(x):
            seen[hashlib.sha1(image.tobytes()).digest()].append(i)
        first_seen[name] = seen
    within = {name: sum(len(ix) - 1 for ix in seen.values()) for name, seen in first_seen.items()}
    examples: dict[str, list] = {name: [ix for ix in seen.values() if len(ix) > 1][:5]
                                 for name, seen in first_seen.items()}
    across = {}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = first_seen[a].keys() & first_seen[b].keys()
        across[f"{a}-{b}"] = len(shared)
        examples[f"{a}-{b}"] = [[first_seen[a][h][0], first_seen[b][h][0]]
                                for h in list(shared)[:5]]
    return {"within": within, "across": across, "examples": examples}


def projections(split: DataSplit, n_samples: int, tsne_samples: int, seed: int
                ) -> dict[str, np.ndarray]:
    """2-D PCA of a stratified training sample and, on fewer images, t-SNE (from 50 PCs)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    take = rng.permutation(len(split.y_train))[:n_samples]
    x = split.x_train[take].reshape(len(take), -1).astype(np.float32) / 255.0
    log.info("PCA of %d images", len(take))
    n_components = min(50, len(take), x.shape[1])
    components = PCA(n_components=n_components, random_state=seed).fit_transform(x)
    out = {"labels": split.y_train[take], "pca": components[:, :2]}
    if tsne_samples > 0:
        m = min(tsne_samples, len(take))
        log.info("t-SNE of %d images (from %d principal components)", m, n_components)
        out["tsne_labels"] = split.y_train[take[:m]]
        out["tsne"] = TSNE(n_components=2, init="pca", random_state=seed,
                           perplexity=min(30.0, (m - 1) / 3)).fit_transform(components[:m])
    return out


def statistics(split: DataSplit, prep: preprocess.Preprocessing,
               after: np.ndarray) -> dict[str, object]:
    """The JSON-able numbers of the report."""
    return {
        "classes": list(split.class_names),
        "source": split.source,
        "digest": split.digest,
        "counts": class_counts(split),
        "pixels_before": {name: channel_stats(x) for name, (x, _) in images_of(split).items()},
        "pixels_after_train": channel_stats(after),
        "preprocess": prep.name,
        "duplicates": duplicates(split),
    }


def render_html(stats: dict, figures: dict) -> str:
    """One self-contained page: the statistics as tables, every figure embedded as PNG."""
    names = stats["classes"]
    counts = "".join(f"<tr><th>{split}</th>{''.join(f'<td>{n}</td>' for n in row)}"
                     f"<td>{sum(row)}</td></tr>" for split, row in stats["counts"].items())
    pixels = "".join(
        f"<tr><th>{label}</th>"
        + "".join(f"<td>{m:.3f} / {s:.3f}</td>" for m, s in zip(v["mean"], v["std"], strict=True))
        + "</tr>"
        for label, v in [*((f"{k} (0-255)", v) for k, v in stats["pixels_before"].items()),
                         (f"train after {stats['preprocess']}", stats["pixels_after_train"])])
    dup = stats["duplicates"]
    duplicates = ", ".join([*(f"within {k}: {v}" for k, v in dup["within"].items()),
                            *(f"{k}: {v}" for k, v in dup["across"].items())])
    images = "".join(pages.image(name, pages.png(fig)) for name, fig in figures.items())
    return pages.page("CIFAR-10 data report", f"""
<p>Source: <code>{html.escape(stats["source"])}</code> (sha256 {stats["digest"][:16]}&hellip;)</p>
<h2>Images per class</h2><table><tr><th></th>{''.join(f'<th>{n}</th>' for n in names)}
<th>total</th></tr>{counts}</table>
<h2>Pixels: mean / std per channel (red, green, blue)</h2><table>{pixels}</table>
<h2>Exact duplicates</h2><p>{duplicates}</p>
{images}""")
