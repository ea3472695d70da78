"""The MLflow store as a whole: can it take a run, its first use, experiments, lost runs.

``check_store`` fails fast on a store that cannot be written; ``open_experiment`` creates
the store and an experiment under a lock, so runs started together on a fresh SQLite file
all succeed; ``process_lost`` recognises a RUNNING run whose process is gone (each run
records its ``host``, ``pid`` and a ``heartbeat`` per epoch), which ``find_interrupted``
(``trainer.resume``) and the sweep report end as KILLED.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sqlite3
import ssl
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig

from cifar10_mlp.errors import UserError
from cifar10_mlp.tracking.resilient import ResilientClient

# a run's last sign of life (seconds since the epoch), written when it starts and each epoch
HEARTBEAT_TAG = "heartbeat"
# the experiment tag MLflow 3's UI reads to choose an experiment's first page
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive use of a SQLite store's first-use steps across processes.

    MLflow creates a new store's schema in several migration steps; two processes doing so
    at once fail ('duplicate column name'), and two creating one experiment collide. A
    tracking server serialises these itself.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(absolute_uri(uri)[len("sqlite:///"):])
    with open(path.with_name(f"{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def open_client(uri: str) -> MlflowClient:
    """A client of the store at ``uri``, the one way this tool connects to a store.

    A process's first client of a SQLite store creates its schema, or checks it, which
    fails while another process is still migrating a new file: so it is made under the
    store's lock. MLflow keeps one store object per URI and process, so later clients
    cost nothing more.
    """
    with store_lock(uri):
        return ResilientClient(uri)


def open_experiment(uri: str, name: str, create: bool = True) -> str | None:
    """The id of experiment ``name``, the store and the experiment created on first use,
    under the store's lock (None when it does not exist and ``create`` is false).

    The experiment is marked as model training (:data:`EXPERIMENT_KIND`), so that the MLflow
    UI opens it on its runs table rather than on the GenAI overview (traces, tokens).
    """
    with store_lock(uri):
        client = ResilientClient(uri)  # under the lock already: open_client would wait on itself
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name, tags=dict([EXPERIMENT_KIND])) if create else None
        if experiment.tags.get(EXPERIMENT_KIND[0]) is None:  # made before this tag was set
            client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        return experiment.experiment_id


@contextmanager
def refused_as(message: str) -> Iterator[None]:
    """A server's refusal (401 or 403) of the block's requests as one line: ``message``,
    its status and how to get in; any other error as it is."""
    try:
        yield
    except MlflowException as err:
        status = err.get_http_status_code()
        if status not in (401, 403):
            raise
        how = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or put them in "
               "~/.mlflow/credentials" if status == 401 else "ask the server's admin for EDIT "
               "(scripts/tracking_server.py user --experiment ... --permission EDIT)")
        raise TrackingStoreError(f"{message} ({status}); {how}") from None


def write_permitted(uri: str, experiment: str):
    """:func:`refused_as` for writing to experiment ``experiment`` of ``uri``."""
    return refused_as(f"tracking.uri={uri}: the server does not let this user write to "
                      f"experiment {experiment!r}")


def ui_url(uri: str, experiment_id: str, run_id: str | None = None,
           local_ui: str = "http://127.0.0.1:5000") -> str:
    """A page of the MLflow UI: a run, or the experiment's runs table. A tracking server
    serves its own UI; a SQLite store's is ``mlflow ui`` at ``local_ui``.

    MLflow 3.17's UI opens an experiment on the page its GenAI / Model training switch
    chooses (the URL's ``workflowType``, else the browser's last choice, GenAI at first), not
    by the experiment's ``mlflow.experimentKind`` tag: the link asks for model training.
    """
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else local_ui
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{base}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def where_to_look(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """How to see a run in the MLflow UI: its page on a server, or `mlflow ui` on a file."""
    page = ui_url(tracking_uri, experiment_id, run_id)
    if tracking_uri.startswith(("http://", "https://")):
        return f"at {page}"
    return f"with: mlflow ui --backend-store-uri {tracking_uri}, then {page}"


def find_interrupted(cfg: DictConfig) -> str:
    """The run ``trainer.resume`` continues: the latest of ``cfg.tracking.experiment`` that
    was interrupted (KILLED), or that is RUNNING with its process gone, which is marked
    KILLED here first."""
    client = open_client(cfg.tracking.uri)
    experiment_id = open_experiment(cfg.tracking.uri, cfg.tracking.experiment, create=False)
    runs = client.search_runs([experiment_id], "attributes.status != 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000
                              ) if experiment_id else []
    for run in runs:
        if run.info.status == "KILLED":
            return run.info.run_id
        if process_lost(run, cfg.tracking.lost_after_minutes * 60):
            end_lost(client, run.info.run_id)
            return run.info.run_id
    raise TrackingStoreError(
        f"trainer.resume=true: no interrupted run (KILLED, or RUNNING with its process gone) "
        f"in experiment {cfg.tracking.experiment!r} of {cfg.tracking.uri}")


def process_lost(run: Run, lost_after_s: float) -> bool:
    """Whether a RUNNING run's process is gone: it gave no sign of life (a heartbeat each
    epoch) for ``lost_after_s`` seconds, or it ran on this host and its process no longer
    exists (killed with SIGKILL, out of memory, crashed)."""
    if run.info.status != "RUNNING":
        return False
    tags = run.data.tags
    beat = float(tags.get(HEARTBEAT_TAG, run.info.start_time / 1000))
    if time.time() - beat > lost_after_s:
        return True
    return tags.get("host") == socket.gethostname() and "pid" in tags and not alive(
        int(tags["pid"]))


def end_lost(client: MlflowClient, run_id: str) -> None:
    """End a run whose process is gone as KILLED: its epochs so far and checkpoint stay."""
    client.set_tag(run_id, "error", "process lost")
    client.set_terminated(run_id, status="KILLED")


def alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True




class TrackingStoreError(UserError, RuntimeError):
    """The tracking store cannot be reached or written; the message names it."""


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds if ``uri`` cannot take a run, rather than after training.

    An HTTP server must answer its health check; a SQLite file (or its folder, for a
    new store) must be writable and not locked by another writer.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout,
                                        context=tls_context()):
                pass
        except (OSError, ValueError) as err:
            raise TrackingStoreError(f"tracking.uri={uri}: no MLflow server answers there "
                                     f"({err}); start one or choose another store") from err
        # a server with users: are this client's credentials (if any) accepted?
        with refused_as(f"tracking.uri={uri}: the server refused this client"):
            MlflowClient(uri).search_experiments(max_results=1)
        return
    if uri.startswith("sqlite:///"):
        path = Path(absolute_uri(uri)[len("sqlite:///"):])
        if not path.exists():
            if not os.access(path.parent, os.W_OK):
                raise TrackingStoreError(f"tracking.uri={uri}: cannot create {path}: its folder "
                                         "is not writable")
            return
        if not os.access(path, os.W_OK):
            raise TrackingStoreError(f"tracking.uri={uri}: {path} is read-only")
        try:
            with sqlite3.connect(path, timeout=timeout) as db:
                db.execute("BEGIN IMMEDIATE")  # takes the write lock, or waits `timeout`
                db.rollback()
        except sqlite3.Error as err:
            raise TrackingStoreError(f"tracking.uri={uri}: {path} cannot be written ({err})"
                                     ) from err


def tls_context() -> ssl.SSLContext | None:
    """What our own HTTPS requests trust, as MLflow's client does: the private CA in
    ``MLFLOW_TRACKING_SERVER_CERT_PATH`` when it is set, else the system's."""
    cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cafile) if cafile else None


def absolute_uri(uri: str) -> str:
    """A relative SQLite URI made absolute, so it names the same store from anywhere."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri
