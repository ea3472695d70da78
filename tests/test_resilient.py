"""tracking/resilient.py against the real tracking server, through a proxy on 127.0.0.1 that
breaks off chosen answers half-way, as a server killed mid-response does: the request was
done, its answer lost."""

import http.client
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from test_scaling import tracking_server  # noqa: F401 (the fixture)

from cifar10_mlp.tracking.resilient import CREATE_TOKEN_TAG
from cifar10_mlp.tracking.store import open_client, open_experiment

pytestmark = pytest.mark.slow


class BreakingProxy(ThreadingHTTPServer):
    """Forwards every request to ``upstream``; the first ``breaks[path]`` answers to a path
    ending in ``path`` are cut off after half their body, and the connection closed."""

    def __init__(self, upstream: str, breaks: dict[str, int]):
        self.upstream, self.breaks = urlsplit(upstream), dict(breaks)
        self.seen, self.broken = [], []  # paths asked for; paths whose answer was cut
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def forward(self) -> None:
        proxy: BreakingProxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                              timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        payload = answer.read()
        path = self.path.split("?")[0]
        proxy.seen.append(path)
        cut = next((p for p, n in proxy.breaks.items() if path.endswith(p) and n > 0), None)
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if cut is None:
            self.wfile.write(payload)
            return
        proxy.breaks[cut] -= 1
        proxy.broken.append(path)
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        self.close_connection = True

    do_GET = do_POST = do_PATCH = do_DELETE = forward

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def experiment(tracking_server):  # noqa: F811
    name = f"resilient-{uuid.uuid4().hex[:8]}"
    return name, open_experiment(tracking_server, name)


def test_a_run_whose_creation_answer_is_lost_is_created_once(tracking_server,  # noqa: F811
                                                               experiment):
    name, experiment_id = experiment
    proxy = BreakingProxy(tracking_server, {"/runs/create": 1})
    run = open_client(proxy.uri).create_run(experiment_id, tags={"k": "v"}, run_name="once")
    assert proxy.broken == ["/api/2.0/mlflow/runs/create"]
    runs = open_client(tracking_server).search_runs([experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # the server's, not a second
    assert runs[0].data.tags["k"] == "v" and CREATE_TOKEN_TAG in runs[0].data.tags


def test_a_metric_sent_again_after_a_lost_answer_is_logged_once(tracking_server,  # noqa: F811
                                                                 experiment):
    _, experiment_id = experiment
    run_id = open_client(tracking_server).create_run(experiment_id).info.run_id
    proxy = BreakingProxy(tracking_server, {"/runs/log-batch": 2})
    client = open_client(proxy.uri)
    now = int(time.time() * 1000)
    for epoch in range(3):
        client.log_batch(run_id, metrics=[Metric("loss", 1 / (epoch + 1), now, epoch)])
    client.set_terminated(run_id, "FINISHED")
    assert proxy.broken == ["/api/2.0/mlflow/runs/log-batch"] * 2
    history = open_client(tracking_server).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert open_client(tracking_server).get_run(run_id).info.status == "FINISHED"


def test_an_answer_that_arrived_is_not_sent_again(tracking_server):  # noqa: F811
    proxy = BreakingProxy(tracking_server, {})
    with pytest.raises(MlflowException) as missing:
        open_client(proxy.uri).get_run(uuid.uuid4().hex)
    assert missing.value.get_http_status_code() == 404
    assert proxy.seen == ["/api/2.0/mlflow/runs/get"]
