"""The store as a whole: runs whose process is gone, and the report that closes them."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2

from cifar10_mlp.tracking import store
from cifar10_mlp.tracking.store import (
    HEARTBEAT_TAG,
    TrackingStoreError,
    open_experiment,
    process_lost,
)

REPORT = str(Path(sys.executable).parent / "cifar10-mlp-report")


def dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_experiment(uri, "tests")
    return MlflowClient(uri)


def running(client, host, pid, heartbeat, parent=None):
    tags = {"host": host, "pid": str(pid), HEARTBEAT_TAG: str(heartbeat)}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(client.get_experiment_by_name("tests").experiment_id, tags=tags,
                            run_name="job 0" if parent else None)
    return client.get_run(run.info.run_id)


@pytest.mark.slow
def test_a_run_is_lost_when_its_process_here_is_gone_or_it_fell_silent(client):
    now = time.time()
    here = socket.gethostname()
    assert process_lost(running(client, here, dead_pid(), now), lost_after_s=3600)
    assert not process_lost(running(client, here, os.getpid(), now), lost_after_s=3600)
    # elsewhere only silence tells: a heartbeat older than the limit
    assert process_lost(running(client, "elsewhere", 1, now - 7200), lost_after_s=3600)
    assert not process_lost(running(client, "elsewhere", 1, now - 60), lost_after_s=3600)


@pytest.mark.slow
def test_the_sweep_report_ends_a_lost_job_killed(client, tmp_path):
    experiment = client.get_experiment_by_name("tests").experiment_id
    parent = client.create_run(experiment, run_name="sweep", tags={"sweep": "parent"})
    client.set_terminated(parent.info.run_id, status="KILLED")
    lost = running(client, socket.gethostname(), dead_pid(), time.time(),
                   parent=parent.info.run_id)
    done = subprocess.run([REPORT, "tests", "--tracking-uri", client.tracking_uri, "--out",
                           str(tmp_path / "report")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ended = client.get_run(lost.info.run_id)
    assert ended.info.status == "KILLED" and ended.data.tags["error"] == "process lost"
    assert client.get_run(parent.info.run_id).info.status == "KILLED"  # left as it was
    assert "| job 0 | KILLED |" in done.stdout


CONNECT = """
import sys, time
from mlflow import MlflowClient
from cifar10_mlp.tracking.store import open_client
connect = {"open_client": open_client, "MlflowClient": MlflowClient}[sys.argv[2]]
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all start at the same moment
print(len(connect(sys.argv[1]).search_experiments()))
"""


def connect_together(uri: str, how: str, n: int = 4) -> list[subprocess.CompletedProcess]:
    start = time.time() + 8  # after every interpreter has imported MLflow
    processes = [subprocess.Popen([sys.executable, "-c", CONNECT, uri, how, str(start)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(n)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate())
            for p in processes]


@pytest.mark.slow
def test_processes_connecting_to_a_new_store_at_once_all_get_it(tmp_path):
    # a sweep, its jobs and whoever watches them may all be first to open a new SQLite file;
    # MLflow migrates the schema on a process's first connection, and two at once collide
    done = connect_together(f"sqlite:///{tmp_path / 'mlflow.db'}", "open_client")
    assert [d.returncode for d in done] == [0] * 4, [d.stderr[-2000:] for d in done]
    assert [d.stdout.strip() for d in done] == ["1"] * 4  # the Default experiment, once


@pytest.mark.parametrize("code, status, how", [
    (databricks_pb2.UNAUTHENTICATED, 401, "MLFLOW_TRACKING_USERNAME"),
    (databricks_pb2.PERMISSION_DENIED, 403, "--permission EDIT")])
def test_a_servers_refusal_is_one_line_saying_how_to_get_in(code, status, how):
    with pytest.raises(TrackingStoreError) as refused, store.write_permitted(
            "https://mlflow.example.org", "team"):
        raise MlflowException("Permission denied", error_code=code)
    message = str(refused.value)
    assert message.startswith("tracking.uri=https://mlflow.example.org: the server does not "
                              f"let this user write to experiment 'team' ({status}); ")
    assert how in message and "\n" not in message


def test_other_store_errors_pass_through_as_they_are():
    with pytest.raises(MlflowException, match="boom"), store.refused_as("never said"):
        raise MlflowException("boom", error_code=databricks_pb2.INTERNAL_ERROR)
