"""A run's model: an MLflow 3 LoggedModel, registry versions, REST serving, cifar10-mlp-predict."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import OPTION_VARIANTS, compose_config, tiny_overrides
from mlflow import MlflowClient
from PIL import Image
from test_sweep import runs_of, sweep_overrides

BIN = Path(sys.executable).parent
CLASSES = ["ship", "cat", "frog"]  # a subset, in an order of our own


def run_bin(command, args, cwd, timeout=300, **kwargs):
    return subprocess.run([str(BIN / command), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_cifar, tmp_path_factory):
    """One tiny run on three classes, tested with flip TTA, that registers its model as
    `tiny`: its folder, store URI, MLflow run and the command's output."""
    tmp_path = tmp_path_factory.mktemp("trained")
    done = run_bin("cifar10-mlp", [*tiny_overrides(tiny_cifar, tmp_path),
                                   f"data.classes=[{','.join(CLASSES)}]",
                                   "tracking.registered_model=tiny", "evaluation.tta=flip"],
                   tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    return tmp_path, uri, run, done.stdout


@pytest.mark.slow
def test_the_run_model_is_a_logged_model_with_its_test_metrics_and_a_version(trained):
    _, uri, run, stdout = trained
    mlflow.set_tracking_uri(uri)
    (model,) = mlflow.search_logged_models([run.info.experiment_id], output_format="list")
    assert model.source_run_id == run.info.run_id and model.name == "model"
    linked = {m.key: m.value for m in model.metrics}
    for key in ("test_accuracy", "test_f1_macro", "test_recall_cat", "selected_val_accuracy"):
        assert linked[key] == run.data.metrics[key], key  # shown on the Models tab
    assert 0 <= run.data.metrics["test_accuracy_without_tta"] <= 1  # the same model, no TTA
    assert run.data.params["evaluation.tta"] == "flip"
    model_uri = f"models:/{model.model_id}"
    assert run.data.tags["model_uri"] == model_uri
    assert f"model {model_uri}, registered as tiny version 1 (models:/tiny/1)" in stdout
    assert f"cifar10-mlp-predict {model_uri} " in stdout
    (version,) = MlflowClient(uri).search_model_versions("name = 'tiny'")
    assert str(version.version) == "1" and version.source == model.artifact_location
    info = mlflow.models.get_model_info(model_uri)
    assert info.metadata["class_names"] == CLASSES
    assert info.signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "uint8",
                                                                 "shape": (-1, 32, 32, 3)}


@pytest.mark.slow
@pytest.mark.parametrize("variant", [[], *OPTION_VARIANTS.values()],
                         ids=["default", *OPTION_VARIANTS])
def test_the_logged_model_predicts_as_the_model_in_process(variant, tiny_cifar, tmp_path):
    from cifar10_mlp.data import archive, preprocess
    from cifar10_mlp.tracking import registry, runs
    from cifar10_mlp.training import model

    tiny_cfg = compose_config([*tiny_overrides(tiny_cifar, tmp_path), *variant])
    split = archive.load(tiny_cfg.data, tiny_cfg.seed)
    mlp = model.build(tiny_cfg.model, tiny_cfg.augment, len(split.class_names),
                      preprocess.fit(tiny_cfg.preprocess, split.x_train), tiny_cfg.seed)
    with runs.start_run(tiny_cfg, [], split) as run:
        model_uri = run.log_model(mlp, split.x_test[:5], split.class_names)
    for name in (model_uri, run.run_id):  # by its id, and by its run
        loaded, _ = registry.load(name, tiny_cfg.tracking.uri)
        np.testing.assert_array_equal(loaded.predict(split.x_test, verbose=0),
                                      mlp.predict(split.x_test, verbose=0))


@pytest.mark.slow
def test_a_sweep_registers_its_best_child_once_with_the_alias(tiny_cifar, tmp_path):
    from cifar10_mlp.tracking import registry

    done = run_bin("cifar10-mlp", ["-m", *sweep_overrides(tiny_cifar, tmp_path),
                                   "tracking.log_model=true", "tracking.registered_model=x",
                                   "optimizer.lr=0.01,0.00001"], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, (parent,), children = runs_of(uri, "tests")
    assert len(children) == 2
    (version,) = client.search_model_versions("name = 'x'")  # the children registered none
    registered_from = version.run_id
    best = max(children, key=lambda c: c.data.metrics["selected_val_accuracy"])
    assert registered_from == parent.data.tags["best_run_id"]
    assert client.get_run(registered_from).data.metrics["selected_val_accuracy"] == \
        best.data.metrics["selected_val_accuracy"]
    assert client.get_model_version_by_alias("x", "best").version == version.version
    assert client.get_run(parent.info.run_id).data.tags["registered_model"] == "models:/x@best"
    assert "registered as x version 1, alias @best (models:/x@best)" in done.stdout
    # a continued sweep registers the same best again: no second version
    again = registry.register_best(uri, parent.info.run_id, registered_from, "x", "best")
    assert again.version == str(version.version)
    assert len(client.search_model_versions("name = 'x'")) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_raw_images_as_the_python_api(trained, tiny_cifar):
    folder, uri, _, _ = trained
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/tiny/1", "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port)],
        # the server runs `uvicorn` from PATH: the environment's, as when it is activated
        cwd=folder, env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                         "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer in 180 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        images = tiny_cifar.x_test[:4]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.array(json.load(response)["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers, by process id
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    mlflow.set_tracking_uri(uri)
    expected = mlflow.pyfunc.load_model("models:/tiny/1").predict(images)
    assert served.shape == (4, len(CLASSES))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_predict_reads_pictures_of_any_size_and_names_a_broken_one(trained, tiny_cifar):
    folder, uri, run, _ = trained
    pictures = folder / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(1)
    exact = tiny_cifar.x_test[0]
    Image.fromarray(exact).save(pictures / "a_exact.png")  # 32 x 32 RGB, lossless: as is
    Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA").save(
        pictures / "b_rgba.png")
    Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(
        pictures / "c_photo.JPG")
    Image.fromarray(rng.integers(0, 256, (100, 100), dtype=np.uint8), "L").save(
        pictures / "d_grey.jpeg")
    (pictures / "e_broken.png").write_bytes(b"not a picture")
    (pictures / "notes.txt").write_text("not listed: a folder's .png, .jpg, .jpeg only")
    env = {**os.environ, "MLFLOW_TRACKING_URI": "sqlite:///elsewhere.db"}  # the flag wins

    done = run_bin("cifar10-mlp-predict", [run.info.run_id, str(pictures),
                                           "--tracking-uri", uri], folder, env=env)
    assert done.returncode == 1  # one file failed
    lines = done.stdout.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        str(pictures / name) for name in ("a_exact.png", "b_rgba.png", "c_photo.JPG",
                                          "d_grey.jpeg")]
    for line in lines:
        top = [pair.rsplit(" ", 1) for pair in line.split(": ", 1)[1].split(", ")]
        assert len(top) == 3 and {name for name, _ in top} == set(CLASSES)
        probabilities = [float(p) for _, p in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert abs(sum(probabilities) - 1) < 0.01
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"cifar10-mlp-predict: {pictures / 'e_broken.png'}: cannot identify image file")

    done = run_bin("cifar10-mlp-predict", ["models:/tiny/1", str(pictures / "a_exact.png"),
                                           str(pictures / "e_broken.png"), "--json", "--top",
                                           "1", "--tracking-uri", uri], folder)
    assert done.returncode == 1
    exact_answer, broken = json.loads(done.stdout)
    assert broken["file"] == str(pictures / "e_broken.png") and "error" in broken
    mlflow.set_tracking_uri(uri)
    expected = mlflow.keras.load_model("models:/tiny/1").predict(exact[None], verbose=0)[0]
    ((answer,),) = [exact_answer["top"]]
    assert answer == {"class": CLASSES[int(expected.argmax())],
                      "probability": round(float(expected.max()), 6)}


@pytest.mark.slow
def test_predict_refuses_a_model_that_is_not_there_or_not_ours(trained, tmp_path):
    import keras

    folder, uri, _, _ = trained
    picture = tmp_path / "p.png"
    Image.new("RGB", (40, 40)).save(picture)
    done = run_bin("cifar10-mlp-predict", ["models:/nothing/7", str(picture),
                                           "--tracking-uri", uri], folder)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        "cifar10-mlp-predict: error: models:/nothing/7: no model there (")

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    mlflow.keras.save_model(other, str(tmp_path / "other"))
    done = run_bin("cifar10-mlp-predict", [str(tmp_path / "other"), str(picture)], folder)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"cifar10-mlp-predict: error: {tmp_path / 'other'}: not a cifar10-mlp model (no Keras "
        "flavor with class_names in its metadata)")
