#!/usr/bin/env python
"""What the team server holds under load and through restarts, and whether anything is lost.

    python scripts/server_load.py --clients 8 32 --epochs 20 --repeats 3

Starts an authenticated server (scripts/tracking_server.py, in a temporary folder) and, for
each number of clients N and each scenario, N client processes that start logging together,
each a run as a training run logs: its params, per-epoch metrics (one request per epoch)
and, at the end, two artifacts (a 200 kB file and a figure), then FINISHED. Scenarios:
``steady``; ``mlflow-killed`` (the MLflow server killed with SIGKILL 40% into the logging
and started again); ``postgres-restarted`` (PostgreSQL restarted then). Clients use this
tool's client (``tracking.store.open_client``), as its runs do, with its retries and
MLflow's. Reported per scenario (median over repeats): requests per second, request latency
p50 / p95 / p99 / max, errors the clients saw, and what was lost: runs not FINISHED, epochs
whose metric is missing or doubled, artifacts missing. With several
``--auth-cache-seconds``, every round is run against a server with each.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER = [sys.executable, str(Path(__file__).with_name("tracking_server.py"))]
SCENARIOS = ("steady", "mlflow-killed", "postgres-restarted")
METRICS = ("loss", "val_accuracy")
ARTIFACTS = ("blob.bin", "plots/figure.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32],
                        help="numbers of clients logging at once, one round each")
    parser.add_argument("--epochs", type=int, default=20, help="epochs each client logs")
    parser.add_argument("--epoch-seconds", type=float, default=0.25,
                        help="pause between a client's epochs (its training)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds per (clients, scenario); figures are their medians")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS),
                        help="steady, the MLflow server SIGKILLed, PostgreSQL restarted")
    parser.add_argument("--auth-cache-seconds", type=int, nargs="+", default=[60],
                        help="the server's login cache (tracking_server.py start "
                             "--auth-cache-seconds); one server per value")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--client", nargs=3, metavar=("URI", "EXPERIMENT", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(*args.client, args.epochs, args.epoch_seconds)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the servers
    results = []
    for cache_seconds in args.auth_cache_seconds:
        with tempfile.TemporaryDirectory(prefix="server-load-") as base:
            os.chmod(base, 0o711)  # as root, PostgreSQL runs as postgres, who must pass through
            results += measure(Path(base), cache_seconds, args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def measure(base: Path, cache_seconds: int, args: argparse.Namespace) -> list[dict]:
    """Every (clients, scenario) round against one server with this login cache."""
    folder = base / "server"
    as_root = ["--allow-root"] if os.geteuid() == 0 else []
    started = subprocess.run([*SERVER, "start", "--dir", str(folder), "--port", "0",
                              "--workers", "2", "--auth-cache-seconds", str(cache_seconds),
                              *as_root], capture_output=True, text=True)
    if started.returncode != 0:
        sys.exit(started.stderr)
    uri = started.stdout.strip()
    try:
        results = []
        for n in args.clients:
            for scenario in args.scenarios:
                rows = [one_round(base, folder, uri, n, scenario, r, args)
                        for r in range(args.repeats)]
                results.append({"auth_cache_s": cache_seconds,
                                **summarise(n, scenario, rows)})
                print(f"server_load: {n} clients, {scenario}: {results[-1]}", file=sys.stderr,
                      flush=True)
        return results
    finally:
        subprocess.run([*SERVER, "stop", "--dir", str(folder)], capture_output=True)


def one_round(base: Path, folder: Path, uri: str, n: int, scenario: str, repeat: int,
              args: argparse.Namespace) -> dict:
    """N clients at once (started together once all are ready); the disruption at 40% of
    their logging time; what they saw and what the store holds afterwards."""
    experiment = f"load-{n}-{scenario}-{repeat}"
    password = base / "load.password"
    password.write_text("load-Pa55-word-1")
    name = f"load{n}{scenario.replace('-', '')}{repeat}"
    subprocess.run([*SERVER, "user", "--dir", str(folder), "--name", name, "--password-file",
                    str(password), "--experiment", experiment, "--permission", "EDIT"],
                   capture_output=True, check=True)
    env = {**os.environ, "MLFLOW_TRACKING_USERNAME": name,
           "MLFLOW_TRACKING_PASSWORD": "load-Pa55-word-1"}
    outs = [base / f"client-{experiment}-{i}.json" for i in range(n)]
    clients = [subprocess.Popen([sys.executable, __file__, "--epochs", str(args.epochs),
                                 "--epoch-seconds", str(args.epoch_seconds),
                                 "--client", uri, experiment, str(out)], env=env,
                                stdout=subprocess.DEVNULL)
               for out in outs]
    # N clients at once: each waits, its imports done, until all are ready
    while not all(ready_file(out).exists() or c.poll() is not None
                  for out, c in zip(outs, clients, strict=True)):
        time.sleep(0.1)
    go_file(base, experiment).touch()
    began = time.monotonic()
    downtime = None
    if scenario != "steady":
        time.sleep(0.4 * args.epochs * args.epoch_seconds)
        hit = time.monotonic()
        if scenario == "mlflow-killed":
            state = json.loads((folder / "server.json").read_text())
            os.killpg(state["mlflow_pid"], signal.SIGKILL)
            service = "mlflow"
        else:
            service = "postgres"
        subprocess.run([*SERVER, "restart", "--dir", str(folder), "--service", service],
                       capture_output=True, check=True)
        downtime = time.monotonic() - hit
    for client in clients:
        client.wait()
    wall = time.monotonic() - began
    seen = [json.loads(out.read_text()) if out.exists() else {"latencies": [], "errors": [
        f"client exited {c.returncode} without a report"], "run_id": None}
        for out, c in zip(outs, clients, strict=True)]
    return {"wall": wall, "downtime": downtime, **check_store(uri, env, seen, args.epochs)}


def check_store(uri: str, env: dict, seen: list[dict], epochs: int) -> dict:
    """What the clients saw, and what the store holds for each of their runs."""
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_USERNAME",
                                           "MLFLOW_TRACKING_PASSWORD")})
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    latencies = [t for s in seen for t in s["latencies"]]
    lost = {"runs_not_finished": 0, "epochs_missing": 0, "epochs_doubled": 0,
            "artifacts_missing": 0}
    for s in seen:
        if s["run_id"] is None:
            lost["runs_not_finished"] += 1
            lost["epochs_missing"] += epochs * len(METRICS)
            lost["artifacts_missing"] += len(ARTIFACTS)
            continue
        run = client.get_run(s["run_id"])
        lost["runs_not_finished"] += run.info.status != "FINISHED"
        for key in METRICS:
            steps = [m.step for m in client.get_metric_history(s["run_id"], key)]
            lost["epochs_missing"] += len(set(range(epochs)) - set(steps))
            lost["epochs_doubled"] += len(steps) - len(set(steps))
        present = {f.path for f in client.list_artifacts(s["run_id"])} | {
            f.path for f in client.list_artifacts(s["run_id"], "plots")}
        lost["artifacts_missing"] += len(set(ARTIFACTS) - present)
    return {"requests": len(latencies), "latencies": latencies,
            "errors": sum(len(s["errors"]) for s in seen),
            "error_messages": sorted({e for s in seen for e in s["errors"]}),
            **lost}


def summarise(n: int, scenario: str, rows: list[dict]) -> dict:
    def median(key):
        return round(statistics.median(r[key] for r in rows), 3)

    def pct(q):
        return round(statistics.median(
            quantile(r["latencies"], q) for r in rows) * 1000, 1)

    return {"clients": n, "scenario": scenario, "repeats": len(rows),
            "requests_per_s": round(statistics.median(r["requests"] / r["wall"] for r in rows),
                                    1),
            "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "downtime_s": None if rows[0]["downtime"] is None else median("downtime"),
            "errors_seen": sum(r["errors"] for r in rows),
            "error_messages": sorted({m for r in rows for m in r["error_messages"]}),
            **{key: sum(r[key] for r in rows) for key in (
                "runs_not_finished", "epochs_missing", "epochs_doubled", "artifacts_missing")}}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def table(results: list[dict]) -> str:
    columns = {"login cache s": "auth_cache_s", "clients": "clients", "scenario": "scenario",
               "req/s": "requests_per_s", "p50 ms": "p50_ms", "p95 ms": "p95_ms",
               "p99 ms": "p99_ms", "max ms": "max_ms", "restart s": "downtime_s",
               "errors seen": "errors_seen", "runs not FINISHED": "runs_not_finished",
               "epochs missing": "epochs_missing", "epochs doubled": "epochs_doubled",
               "artifacts missing": "artifacts_missing"}
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in results:
        lines.append("| " + " | ".join("-" if r[key] is None else str(r[key])
                                       for key in columns.values()) + " |")
    return "\n".join(lines)


def ready_file(out: Path) -> Path:
    return out.with_suffix(".ready")


def go_file(base: Path, experiment: str) -> Path:
    return base / f"{experiment}.go"


def client_main(uri: str, experiment: str, out: str, epochs: int, pause: float) -> None:
    """One client, as a training run logs: a run with params, a metric request per epoch,
    two artifacts, FINISHED; each request timed, each error the client sees recorded (the
    run goes on after it)."""
    from mlflow.entities import Metric, Param

    from cifar10_mlp.tracking.store import open_client

    client = open_client(uri)
    latencies, errors, run_id = [], [], None
    ready_file(Path(out)).touch()
    while not go_file(Path(out).parent, experiment).exists():
        time.sleep(0.05)

    def timed(call, *args, **kwargs):
        started = time.monotonic()
        try:
            return call(*args, **kwargs)
        except Exception as err:  # what a client sees: recorded, and the run goes on
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
        finally:
            latencies.append(time.monotonic() - started)

    found = timed(client.get_experiment_by_name, experiment)
    run = timed(client.create_run, found.experiment_id) if found else None
    if run is not None:
        run_id = run.info.run_id
        timed(client.log_batch, run_id, params=[Param(f"p{i}", str(i)) for i in range(40)])
        for epoch in range(epochs):
            time.sleep(pause)
            now = int(time.time() * 1000)
            timed(client.log_batch, run_id, metrics=[
                Metric("loss", 1 / (epoch + 1), now, epoch),
                Metric("val_accuracy", epoch / epochs, now, epoch)])
        with tempfile.TemporaryDirectory() as folder:
            blob = Path(folder, "blob.bin")
            blob.write_bytes(os.urandom(200_000))
            timed(client.log_artifact, run_id, str(blob))
            figure = Path(folder, "figure.png")
            figure.write_bytes(os.urandom(30_000))
            timed(client.log_artifact, run_id, str(figure), "plots")
        timed(client.set_terminated, run_id, "FINISHED")
    Path(out).write_text(json.dumps({"run_id": run_id, "latencies": latencies,
                                     "errors": errors}))


if __name__ == "__main__":
    main()
