import numpy as np

from cifar10_mlp.training import plots
from cifar10_mlp.training.evaluate import from_probabilities

NAMES = ("cat", "dog", "ship")


def evaluation():
    y_true = np.array([0, 1, 2, 0, 1, 2])
    # three mistakes with confidences 0.9 (row 1), 0.6 (row 3), 0.7 (row 5)
    probs = np.array([
        [0.8, 0.1, 0.1],
        [0.9, 0.05, 0.05],
        [0.1, 0.1, 0.8],
        [0.2, 0.6, 0.2],
        [0.1, 0.8, 0.1],
        [0.1, 0.7, 0.2],
    ])
    return from_probabilities(y_true, probs, NAMES)


def image_titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.images]


def test_misclassified_grid_shows_the_most_confident_mistakes_first():
    images = np.zeros((6, 32, 32, 3), np.uint8)
    titles = image_titles(plots.misclassified_grid(evaluation(), images, n=2))
    assert titles == ["true: dog\npred: cat (90%)", "true: ship\npred: dog (70%)"]


def test_misclassified_grid_caps_at_the_number_of_mistakes():
    fig = plots.misclassified_grid(evaluation(), np.zeros((6, 32, 32, 3), np.uint8), n=25)
    assert len(image_titles(fig)) == 3
    assert "3 of 6 wrong" in fig.get_suptitle()


def test_confusion_matrix_is_labelled_and_annotated_with_counts():
    fig = plots.confusion_matrix(evaluation())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(NAMES)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(NAMES)
    cells = [t.get_text().split("\n")[0] for t in ax.texts]
    assert cells == [str(c) for c in evaluation().confusion.ravel()]


def test_learning_curves_plot_train_and_validation_per_epoch():
    history = {"loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.7, 1.6],
               "accuracy": [0.2, 0.4, 0.5], "val_accuracy": [0.2, 0.35, 0.4]}
    fig = plots.learning_curves(history)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train", "validation"]
    assert list(acc_ax.lines[1].get_ydata()) == history["val_accuracy"]
    assert list(acc_ax.lines[0].get_xdata()) == [1, 2, 3]


def test_all_figures_names_the_three_files():
    ev = evaluation()
    figures = plots.all_figures(ev, {"loss": [1.0]}, np.zeros((6, 32, 32, 3), np.uint8), 4)
    assert set(figures) == {"confusion_matrix.png", "misclassified.png", "learning_curves.png"}
