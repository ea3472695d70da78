import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from cifar10_mlp.data import preprocess


@pytest.fixture
def splits():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 200, size=(64, 32, 32, 3), dtype=np.uint8)
    val = rng.integers(50, 256, size=(16, 32, 32, 3), dtype=np.uint8)  # other statistics
    return train, val


def transform(prep, images):
    layers = preprocess.as_layers(prep)
    return keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), *layers])(images).numpy()


def cfg(name, **extra):
    return OmegaConf.create({"name": name, **extra})


def test_standardize_uses_training_statistics_only(splits):
    train, val = splits
    prep = preprocess.fit(cfg("standardize"), train)
    channels = train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(prep.mean, channels.mean(axis=0))
    np.testing.assert_allclose(prep.std, channels.std(axis=0))
    both = np.concatenate([train, val]).reshape(-1, 3).mean(axis=0)
    assert not np.allclose(prep.mean, both)
    expected = ((val.astype(np.float64) - prep.mean) / prep.std).reshape(len(val), -1)
    np.testing.assert_allclose(transform(prep, val), expected, rtol=1e-4, atol=1e-4)


def test_pixel_standardize_centres_and_scales_each_training_pixel(splits):
    train, _ = splits
    out = transform(preprocess.fit(cfg("pixel_standardize"), train), train)
    assert out.shape == (64, 3072)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-3)


def test_scale_divides_by_255(splits):
    train, val = splits
    out = transform(preprocess.fit(cfg("scale"), train), val)
    np.testing.assert_allclose(out, val.reshape(len(val), -1) / 255.0, rtol=1e-6)


@pytest.mark.slow  # eigendecompositions of 3072 x 3072 covariances
def test_zca_whitens_the_training_images_and_their_mirror_images(splits):
    train, val = splits
    prep = preprocess.fit(cfg("zca", epsilon=1e-6), train)
    both = np.concatenate([train, train[:, :, ::-1]])
    np.testing.assert_allclose(prep.mean, both.reshape(len(both), -1).mean(axis=0))
    np.testing.assert_allclose(prep.whitening, prep.whitening.T, atol=1e-8)
    out = transform(prep, both).reshape(len(both), -1).astype(np.float64)
    eigvals = np.linalg.eigvalsh(np.cov(out, rowvar=False, bias=True))
    # 128 centred images span 127 directions: those become unit variance, the rest stay 0
    assert np.sum(eigvals > 0.99) == 127
    assert eigvals.max() < 1.01
    assert transform(prep, val).shape == (16, 32, 32, 3)  # whitened images, as images


@pytest.mark.slow  # eigendecompositions of 3072 x 3072 covariances
def test_zca_of_a_mirror_image_is_the_mirror_of_its_zca(splits):
    # what lets a ZCA model augment whitened images, whitened once before training
    train, val = splits
    prep = preprocess.fit(cfg("zca", epsilon=0.1), train)
    assert prep.image_out
    np.testing.assert_allclose(transform(prep, val[:, :, ::-1]), transform(prep, val)[:, :, ::-1],
                               atol=1e-4)


@pytest.mark.slow  # eigendecompositions of 3072 x 3072 covariances
def test_pca_whitens_the_top_components_of_the_training_data(splits):
    train, val = splits
    prep = preprocess.fit(cfg("pca", epsilon=1e-6, components=20), train)
    assert prep.whitening.shape == (3072, 20)
    out = transform(prep, np.concatenate([train, train[:, :, ::-1]])).astype(np.float64)
    assert out.shape == (128, 20) and not prep.image_out
    # the 20 strongest directions, each scaled to unit variance and uncorrelated
    np.testing.assert_allclose(np.cov(out, rowvar=False, bias=True), np.eye(20), atol=1e-3)
    # the top directions of the images and their mirror images
    both = np.concatenate([train, train[:, :, ::-1]])
    flat = both.reshape(len(both), -1) / 255.0
    centred = flat - flat.mean(axis=0)
    top = np.linalg.eigh(np.cov(centred, rowvar=False, bias=True))[1][:, ::-1][:, :20]
    np.testing.assert_allclose(np.abs(prep.whitening / np.linalg.norm(prep.whitening, axis=0)),
                               np.abs(top), atol=1e-4)
    assert transform(prep, val).shape == (16, 20)
