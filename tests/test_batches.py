import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from cifar10_mlp.data.batches import TrainingBatches, cutmix, mixup
from cifar10_mlp.training import train

N, SIZE = 24, 32


def augment(**changes):
    return OmegaConf.create({"flip": "none", "translate": 0.0, "crop_padding": 0,
                             "mixup_alpha": 0.0, "cutmix_alpha": 0.0, **changes})


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.eye(4, dtype=np.float32)[rng.integers(0, 4, N)]
    return images, labels


def source_ids(batches, epoch, index):
    return batches.order(epoch)[index * batches.batch_size:(index + 1) * batches.batch_size]


def test_without_augmentation_each_epoch_is_the_whole_set_once_in_its_own_order(data):
    images, labels = data
    batches = TrainingBatches(images, labels, 10, augment(), seed=3)
    orders = []
    for epoch in range(3):
        seen = [batches.batch(epoch, index) for index in range(len(batches))]
        ids = np.concatenate([source_ids(batches, epoch, i) for i in range(len(batches))])
        assert sorted(ids) == list(range(N))  # every image once, the last batch short
        np.testing.assert_array_equal(np.concatenate([x for x, _ in seen]), images[ids])
        np.testing.assert_array_equal(np.concatenate([y for _, y in seen]), labels[ids])
        orders.append(tuple(ids))
    assert len(set(orders)) == 3  # reshuffled every epoch


def test_each_crop_is_a_window_of_the_reflect_padded_image_at_its_own_offset(data):
    images, labels = data
    batches = TrainingBatches(images, labels, 8, augment(crop_padding=4), seed=0)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    offsets = set()
    for index in range(len(batches)):
        crops, targets = batches.batch(0, index)
        ids = source_ids(batches, 0, index)
        np.testing.assert_array_equal(targets, labels[ids])
        for crop, i in zip(crops, ids, strict=True):
            found = [(dy, dx) for dy in range(9) for dx in range(9)
                     if np.array_equal(padded[i, dy:dy + SIZE, dx:dx + SIZE], crop)]
            assert found, "not a window of the padded image"
            offsets.add(found[0])
    assert len(offsets) > N // 2  # per image, not one offset for the batch


def test_alternating_flips_flip_each_image_every_other_epoch(data):
    images, labels = data
    batches = TrainingBatches(images, labels, N, augment(flip="alternating"), seed=0)
    states = []
    for epoch in range(3):
        out, _ = batches.batch(epoch, 0)
        by_image = dict(zip(source_ids(batches, epoch, 0), out, strict=True))
        flipped = np.array([np.array_equal(by_image[i], images[i, :, ::-1]) for i in range(N)])
        kept = np.array([np.array_equal(by_image[i], images[i]) for i in range(N)])
        assert np.all(flipped ^ kept)
        states.append(flipped)
    assert 0 < states[0].sum() < N  # a random start per image
    assert np.all(states[1] == ~states[0]) and np.all(states[2] == states[0])


def test_mixup_blends_images_and_labels_with_one_weight(data):
    images, labels = data
    mixed, targets = mixup(images, labels, 0.4, np.random.default_rng(3))
    lam = np.random.default_rng(3).beta(0.4, 0.4)
    partner = np.random.default_rng(3)
    partner.beta(0.4, 0.4)
    partner = partner.permutation(N)
    np.testing.assert_array_equal(
        mixed, np.rint(lam * images.astype(np.float32) + (1 - lam) * images[partner]))
    np.testing.assert_allclose(targets, lam * labels + (1 - lam) * labels[partner], rtol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1, rtol=1e-6)


def test_cutmix_pastes_a_box_and_weights_labels_by_its_area(data):
    images, labels = data
    mixed, targets = cutmix(images, labels, 1.0, np.random.default_rng(5))
    draws = np.random.default_rng(5)  # the same draws, in cutmix's order
    side = int(round(SIZE * np.sqrt(1 - draws.beta(1.0, 1.0))))
    top, left = draws.integers(0, SIZE - side + 1, 2)
    partner = draws.permutation(N)
    assert 0 < side < SIZE
    box = (slice(None), slice(top, top + side), slice(left, left + side))
    np.testing.assert_array_equal(mixed[box], images[partner][box])
    outside = np.ones((SIZE, SIZE), bool)
    outside[box[1:]] = False
    np.testing.assert_array_equal(mixed[:, outside], images[:, outside])
    kept = 1 - side * side / (SIZE * SIZE)
    np.testing.assert_allclose(targets, kept * labels + (1 - kept) * labels[partner],
                               rtol=1e-6)


def test_batches_repeat_for_the_same_seed_epoch_and_index_and_come_epoch_by_epoch(data):
    images, labels = data
    cfg = augment(flip="alternating", crop_padding=2, mixup_alpha=0.2, cutmix_alpha=1.0)
    first = TrainingBatches(images, labels, 8, cfg, seed=7)
    again = TrainingBatches(images, labels, 8, cfg, seed=7)
    other = TrainingBatches(images, labels, 8, cfg, seed=8)
    for epoch, index in ((0, 0), (1, 2), (5, 1)):
        for a, b in zip(first.batch(epoch, index), again.batch(epoch, index), strict=True):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.batch(0, 0)[0], other.batch(0, 0)[0])
    # a run's batches, a resumed run's from its first epoch on, one epoch after another
    stream = list(again.epochs(4, 6))
    assert len(stream) == 2 * len(again)
    for position, (epoch, index) in enumerate((e, i) for e in (4, 5) for i in range(len(again))):
        np.testing.assert_array_equal(stream[position][0], first.batch(epoch, index)[0])
        np.testing.assert_array_equal(stream[position][1], first.batch(epoch, index)[1])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, tf.bfloat16.as_numpy_dtype],
                         ids=["images", "whitened", "whitened-bfloat16"])
def test_the_training_stream_holds_the_runs_batches_in_order(data, dtype):
    images, labels = data
    training = TrainingBatches(images.astype(dtype), labels, 10,
                               augment(crop_padding=2, mixup_alpha=0.4), seed=1)
    stream = [(x.numpy(), y.numpy()) for x, y in train.training_stream(training, 2, 4)]
    expected = list(training.epochs(2, 4))  # a run resumed at epoch 2 of 4
    assert len(stream) == len(expected) == 2 * len(training)
    for (x, y), (want_x, want_y) in zip(stream, expected, strict=True):
        assert x.dtype == dtype
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)
