"""A run's model after training: registered versions and aliases in the MLflow Model Registry,
and loading a model back with its class names (``cifar10-mlp-predict``).

``runs.py`` logs each run's model as an MLflow 3 LoggedModel and tags the run with its
``models:/<id>`` URI; a single run with ``tracking.registered_model`` registers it at once,
a sweep registers only its best run's, at its end, and points ``tracking.registered_alias``
at that version.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from cifar10_mlp.errors import UserError
from cifar10_mlp.tracking.runs import CLASS_NAMES_KEY, MODEL_URI_TAG
from cifar10_mlp.tracking.store import open_client

if TYPE_CHECKING:
    import keras

RUN_ID = re.compile(r"[0-9a-f]{32}")


class ModelError(UserError):
    """A model that cannot be found or loaded, or that is not a cifar10-mlp model."""


@dataclass(frozen=True)
class Registered:
    """One registered model version, as a run or a sweep reports it."""

    name: str
    version: str
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else \
            f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        alias = f", alias @{self.alias}" if self.alias else ""
        return f"{self.name} version {self.version}{alias} ({self.uri})"


def model_uri_of_run(uri: str, run_id: str) -> str | None:
    """The ``models:/<id>`` URI of the model a run logged, if it logged one."""
    return open_client(uri).get_run(run_id).data.tags.get(MODEL_URI_TAG)


def register(uri: str, model_uri: str, name: str, alias: str | None = None) -> Registered:
    """``model_uri`` as a version of registered model ``name`` (created on first use), and
    ``alias`` pointing at it. A model registered under ``name`` before is not registered
    again: its version gets the alias, so a sweep that is continued registers once."""
    client = open_client(uri)
    logged = client.get_logged_model(model_uri.removeprefix("models:/"))
    # the version's source is where the model's files are: MLflow resolves a models:/ source
    # through the process-wide tracking URI, which this tool leaves alone
    earlier = [v for v in client.search_model_versions(f"name = '{name}'")
               if v.source in (model_uri, logged.artifact_location)]  # (SQLite: no model_id)
    if earlier:
        version = earlier[0].version
    else:
        with contextlib.suppress(MlflowException):  # it exists: registered before
            client.create_registered_model(name)
        version = client.create_model_version(
            name, logged.artifact_location, run_id=logged.source_run_id,
            model_id=logged.model_id).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return Registered(name, str(version), alias)


def register_best(uri: str, parent_run_id: str, best_run_id: str, name: str, alias: str
                  ) -> Registered:
    """Register the model of a sweep's best run under ``name`` with ``alias`` (once, however
    often the sweep is continued), and tag the sweep's parent run with the version."""
    model_uri = model_uri_of_run(uri, best_run_id)
    if model_uri is None:
        raise ModelError(f"tracking.registered_model={name}: the best run, {best_run_id}, "
                         "logged no model")
    registered = register(uri, model_uri, name, alias)
    open_client(uri).set_tag(parent_run_id, "registered_model", registered.uri)
    return registered


def model_files(client: MlflowClient, model: str) -> str:
    """Where the files of the model a user names are: ``models:/<id>``,
    ``models:/<name>/<version>``, ``models:/<name>@<alias>``, a bare run id (its model), or a
    ``runs:/`` URI or local folder as it is. Resolved through ``client``'s store (MLflow's own
    resolution of ``models:/`` URIs reads the process-wide tracking URI)."""
    if RUN_ID.fullmatch(model):
        model = client.get_run(model).data.tags.get(MODEL_URI_TAG) or f"runs:/{model}/model"
    if not model.startswith("models:/"):
        return model
    ref = model.removeprefix("models:/")
    if ref.startswith("m-"):
        return client.get_logged_model(ref).artifact_location
    if "@" in ref:
        version = client.get_model_version_by_alias(*ref.split("@", 1))
    else:
        version = client.get_model_version(*ref.rsplit("/", 1))
    # versions registered before 0.2 name their model as models:/<id>
    return model_files(client, version.source) if version.source.startswith("models:/") \
        else version.source


def load(model: str, uri: str) -> tuple[keras.Model, list[str]]:
    """The Keras model ``model`` names (see :func:`model_files`) in tracking store ``uri``,
    and its class names in output order; ModelError, naming it, when that fails."""
    import mlflow.keras  # imports Keras, which loading the model needs anyway

    client = open_client(uri)
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = download_artifacts(
                artifact_uri=model_files(client, model), dst_path=folder, tracking_uri=uri)
            info = Model.load(local)
        except MlflowException as err:
            if err.get_http_status_code() in (401, 403):
                raise  # not a missing model: this client is not let in (see store.refused_as)
            raise ModelError(f"{model}: no model there ({str(err).splitlines()[0]})") from err
        except (OSError, ValueError) as err:
            raise ModelError(f"{model}: no model there ({str(err).splitlines()[0]})") from err
        class_names = ((info.metadata or {}).get(CLASS_NAMES_KEY)
                       or _run_class_names(client, info.run_id))
        if "keras" not in info.flavors or not class_names:
            raise ModelError(f"{model}: not a cifar10-mlp model (no Keras flavor with "
                             f"{CLASS_NAMES_KEY} in its metadata)")
        return mlflow.keras.load_model(local), list(class_names)


def _run_class_names(client: MlflowClient, run_id: str | None) -> list[str] | None:
    """The classes a run was tested on (its confusion matrix's rows): for models logged
    before their metadata listed them."""
    if run_id is None:
        return None
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = client.download_artifacts(run_id, "confusion_matrix.json", folder)
            return json.loads(Path(path).read_text()).get("class_names")
    except (MlflowException, OSError):
        return None
