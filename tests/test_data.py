import pickle
import tarfile

import numpy as np
import pytest
from conftest import PER_BATCH, write_batch, write_tiny_cifar
from omegaconf import OmegaConf

from cifar10_mlp.config.schema import CIFAR10_CLASSES
from cifar10_mlp.data import archive
from cifar10_mlp.data.archive import DataError, read_cifar10


def data_cfg(path, cache_dir=None, **changes):
    cfg = {"path": str(path), "cache_dir": cache_dir, "val_size": 0.2, "classes": None,
           "train_limit": None}
    return OmegaConf.create({**cfg, **changes})


def assert_matches(loaded, tiny):
    np.testing.assert_array_equal(loaded.x_train, tiny.x_train)
    np.testing.assert_array_equal(loaded.y_train, tiny.y_train)
    np.testing.assert_array_equal(loaded.x_test, tiny.x_test)
    np.testing.assert_array_equal(loaded.y_test, tiny.y_test)
    assert loaded.class_names == CIFAR10_CLASSES


@pytest.mark.parametrize("kind", ["archive", "folder", "parent of folder"])
def test_reads_archive_and_folder_as_channels_last_uint8(tiny_cifar, kind):
    path = {"archive": tiny_cifar.archive, "folder": tiny_cifar.folder,
            "parent of folder": tiny_cifar.folder.parent}[kind]
    loaded = read_cifar10(path)
    assert loaded.x_train.dtype == np.uint8 and loaded.x_train.shape == (100, 32, 32, 3)
    assert_matches(loaded, tiny_cifar)


def test_archive_and_folder_digests_differ_but_are_stable(tiny_cifar):
    assert read_cifar10(tiny_cifar.archive).digest == read_cifar10(tiny_cifar.archive).digest
    assert read_cifar10(tiny_cifar.archive).digest != read_cifar10(tiny_cifar.folder).digest


def test_truncated_archive_error_names_the_file(tiny_cifar, tmp_path):
    truncated = tmp_path / "cifar-10-python.tar.gz"
    truncated.write_bytes(tiny_cifar.archive.read_bytes()[: tiny_cifar.archive.stat().st_size // 2])
    with pytest.raises(DataError, match=f"{truncated}.*truncated or corrupt"):
        read_cifar10(truncated)


def test_file_that_is_not_an_archive_is_rejected_by_name(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(DataError, match=f"{junk}: not a readable CIFAR-10 archive") as err:
        read_cifar10(junk)
    assert "\n" not in str(err.value)  # one line, however many formats tarfile tried


def test_missing_path_names_the_path_and_the_key(tmp_path):
    with pytest.raises(DataError, match=r"nope\.tar\.gz: no such file.*data\.path"):
        read_cifar10(tmp_path / "nope.tar.gz")


def test_folder_missing_a_batch_is_rejected(tmp_path):
    tiny = write_tiny_cifar(tmp_path)
    (tiny.folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing"):
        read_cifar10(tiny.folder)


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((PER_BATCH, 32, 32, 3), np.uint8), [10] * PER_BATCH, "labels outside 0..9"),
        (np.zeros((PER_BATCH, 32, 32, 3), np.uint8), [0] * (PER_BATCH - 1), "19 labels for 20"),
        (np.zeros((PER_BATCH - 1, 32, 32, 3), np.uint8), [0] * (PER_BATCH - 1),
         "19 images, but batches.meta says 20"),
    ],
)
def test_malformed_batch_is_rejected_naming_the_batch(tmp_path, images, labels, message):
    tiny = write_tiny_cifar(tmp_path)
    write_batch(tiny.folder / "data_batch_2", images, labels)
    with pytest.raises(DataError, match=f"data_batch_2: {message}"):
        read_cifar10(tiny.folder)


def test_wrong_pixel_count_is_rejected(tmp_path):
    tiny = write_tiny_cifar(tmp_path)
    with open(tiny.folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((20, 100), np.uint8), b"labels": [0] * 20}, f)
    with pytest.raises(DataError, match=r"test_batch: b'data' is uint8 \(20, 100\)"):
        read_cifar10(tiny.folder)


def test_cache_is_used_instead_of_decoding_again(tiny_cifar, tmp_path, monkeypatch):
    first = read_cifar10(tiny_cifar.archive, tmp_path)
    (cache_file,) = tmp_path.glob("cifar10-*.npz")
    assert first.digest[:16] in cache_file.name

    def no_decoding(path):
        raise AssertionError("decoded the archive although a cache exists")

    monkeypatch.setattr(archive, "_iter_archive", no_decoding)
    assert_matches(read_cifar10(tiny_cifar.archive, tmp_path), tiny_cifar)


def test_corrupt_cache_is_rebuilt_not_trusted(tiny_cifar, tmp_path):
    read_cifar10(tiny_cifar.archive, tmp_path)
    (cache_file,) = tmp_path.glob("cifar10-*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:1000])
    assert_matches(read_cifar10(tiny_cifar.archive, tmp_path), tiny_cifar)
    assert np.load(cache_file)["x_train"].shape == (100, 32, 32, 3)  # rewritten whole


def test_validation_split_is_stratified_seeded_and_disjoint(tiny_cifar):
    split = archive.load(data_cfg(tiny_cifar.archive), seed=1)
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (80, 20, 20)
    assert np.bincount(split.y_val).tolist() == [2] * 10
    assert np.bincount(split.y_train).tolist() == [8] * 10
    # every tiny image is distinct noise, so overlap would show as shared rows
    train_rows = {img.tobytes() for img in split.x_train}
    assert not train_rows & {img.tobytes() for img in split.x_val}
    again = archive.load(data_cfg(tiny_cifar.archive), seed=1)
    np.testing.assert_array_equal(again.x_val, split.x_val)
    other = archive.load(data_cfg(tiny_cifar.archive), seed=2)
    assert not np.array_equal(other.x_val, split.x_val)


def test_class_subset_is_relabelled_in_the_given_order(tiny_cifar):
    split = archive.load(data_cfg(tiny_cifar.archive, classes=["bird", "airplane"]), seed=0)
    assert split.class_names == ("bird", "airplane")
    assert set(split.y_train) | set(split.y_val) == {0, 1}
    birds = tiny_cifar.x_test[tiny_cifar.y_test == 2]
    np.testing.assert_array_equal(split.x_test[split.y_test == 0], birds)
    assert len(split.y_train) + len(split.y_val) == 20


def test_train_limit_caps_the_training_pool_before_the_split(tiny_cifar):
    split = archive.load(data_cfg(tiny_cifar.archive, train_limit=50), seed=0)
    assert len(split.y_train) + len(split.y_val) == 50
    assert np.bincount(split.y_train).tolist() == [4] * 10
    assert len(split.y_test) == 20  # the test set is never cut


def test_impossible_split_names_the_key(tiny_cifar):
    with pytest.raises(DataError, match="data.val_size"):
        archive.load(data_cfg(tiny_cifar.archive, val_size=0.05), seed=0)


class WritesAFile:
    """A pickle payload: unpickling it would call exec, which writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("kind", ["folder", "archive"])
def test_a_batch_whose_pickle_would_run_code_is_refused_before_it_runs(tmp_path, kind):
    tiny = write_tiny_cifar(tmp_path)
    marker = tmp_path / "the-payload-ran"
    images = np.zeros((PER_BATCH, 32, 32, 3), np.uint8)
    write_batch(tiny.folder / "data_batch_2", images, [0] * PER_BATCH)
    batch = pickle.loads((tiny.folder / "data_batch_2").read_bytes())
    (tiny.folder / "data_batch_2").write_bytes(
        pickle.dumps(batch | {b"extra": WritesAFile(marker)}))
    archive = tmp_path / "swapped.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny.folder, arcname="cifar-10-batches-py")
    with pytest.raises(DataError, match=r"data_batch_2: refused: its pickle calls builtins\.exec"
                       ) as refused:
        read_cifar10(tiny.folder if kind == "folder" else archive)
    assert "\n" not in str(refused.value)
    assert not marker.exists()
    pickle.loads((tiny.folder / "data_batch_2").read_bytes())  # the payload is real: plain
    assert marker.read_text() == "ran"                          # pickle runs it
