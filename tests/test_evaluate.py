import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from cifar10_mlp.training.evaluate import from_probabilities

NAMES = ("cat", "dog", "ship")
Y_TRUE = np.array([0, 0, 1, 1, 2, 2, 2, 0])
Y_PRED = np.array([0, 1, 1, 1, 2, 0, 2, 0])


def probabilities(y_pred, confidence=0.8):
    probs = np.full((len(y_pred), 3), (1 - confidence) / 2)
    probs[np.arange(len(y_pred)), y_pred] = confidence
    return probs


def test_confusion_matrix_counts_and_rows():
    result = from_probabilities(Y_TRUE, probabilities(Y_PRED), NAMES)
    assert result.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    np.testing.assert_allclose(result.confusion_normalized.sum(axis=1), 1.0)
    assert result.confusion_normalized[0, 1] == pytest.approx(1 / 3)


def test_metrics_agree_with_scikit_learn_and_hand_counts():
    metrics = from_probabilities(Y_TRUE, probabilities(Y_PRED), NAMES).metrics()
    assert metrics["test_accuracy"] == pytest.approx(6 / 8)
    # by hand from the confusion matrix: cat is predicted 3 times, 2 right; 3 cats exist
    assert metrics["test_precision_cat"] == pytest.approx(2 / 3)
    assert metrics["test_recall_cat"] == pytest.approx(2 / 3)
    assert metrics["test_recall_ship"] == pytest.approx(2 / 3)
    assert metrics["test_precision_ship"] == pytest.approx(1.0)
    for average in ("macro", "weighted"):
        assert metrics[f"test_f1_{average}"] == pytest.approx(
            f1_score(Y_TRUE, Y_PRED, average=average))
        assert metrics[f"test_precision_{average}"] == pytest.approx(
            precision_score(Y_TRUE, Y_PRED, average=average))
        assert metrics[f"test_recall_{average}"] == pytest.approx(
            recall_score(Y_TRUE, Y_PRED, average=average))


def test_loss_is_cross_entropy_of_the_true_class():
    result = from_probabilities(Y_TRUE, probabilities(Y_PRED, confidence=0.8), NAMES)
    right = Y_TRUE == Y_PRED
    expected = -(right.sum() * np.log(0.8) + (~right).sum() * np.log(0.1)) / len(Y_TRUE)
    assert result.loss == pytest.approx(expected)


def test_a_class_never_seen_gets_zero_not_nan():
    result = from_probabilities(np.array([0, 0, 1]), probabilities(np.array([0, 1, 1])), NAMES)
    assert result.metrics()["test_recall_ship"] == 0.0
    assert result.confusion_normalized[2].tolist() == [0.0, 0.0, 0.0]


def test_flip_tta_averages_each_image_with_its_left_right_mirror():
    import keras

    from cifar10_mlp.training.evaluate import measure, predict

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    mirrored = images[:, :, ::-1]  # columns reversed: the left-right mirror
    # in batches of 4, as below: oneDNN's rounding depends on the batch's size
    plain = model.predict(images, batch_size=4, verbose=0)

    averaged = predict(model, images, batch_size=4, tta="flip")
    np.testing.assert_allclose(
        averaged, (plain + model.predict(mirrored, batch_size=4, verbose=0)) / 2, rtol=1e-6)
    assert not np.allclose(averaged, plain)  # a dense layer is not mirror-symmetric
    np.testing.assert_array_equal(predict(model, images, batch_size=4), plain)
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert measure(model, images, labels, NAMES, 4, "flip").probabilities.tolist() == \
        averaged.tolist()


def test_flip_shift_tta_averages_ten_views_moved_with_reflected_borders():
    import keras

    from cifar10_mlp.training.evaluate import predict, views

    images = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    shift = 2
    every = list(views(images, "flip_shift", shift))
    assert len(every) == 10
    named = dict(zip(("image", "up", "down", "left", "right"), every[:5], strict=True))
    for plain, mirror in zip(named.values(), every[5:], strict=True):
        np.testing.assert_array_equal(mirror, plain[:, :, ::-1])
    np.testing.assert_array_equal(named["image"], images)
    # the content moves by the shift; the rows or columns it uncovers mirror the border
    np.testing.assert_array_equal(named["up"][:, :-shift], images[:, shift:])
    np.testing.assert_array_equal(named["up"][:, -1], images[:, -1 - shift])
    np.testing.assert_array_equal(named["down"][:, shift:], images[:, :-shift])
    np.testing.assert_array_equal(named["down"][:, 0], images[:, shift])
    np.testing.assert_array_equal(named["left"][:, :, :-shift], images[:, :, shift:])
    np.testing.assert_array_equal(named["right"][:, :, shift:], images[:, :, :-shift])

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    each = [model.predict(view, batch_size=4, verbose=0)
            for view in views(images, "flip_shift", shift)]
    np.testing.assert_allclose(predict(model, images, 4, "flip_shift", shift),
                               np.mean(each, axis=0), rtol=1e-6)
    # flip ignores the shift: the same two views as without one
    np.testing.assert_array_equal(predict(model, images, 4, "flip", shift),
                                  predict(model, images, 4, "flip"))
    with pytest.raises(ValueError, match="needs a shift of 1 to 31 pixels, got 0"):
        predict(model, images, 4, "flip_shift", 0)
