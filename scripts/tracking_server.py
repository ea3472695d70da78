#!/usr/bin/env python
"""Start or stop a shared MLflow tracking server backed by PostgreSQL.

    python scripts/tracking_server.py start --dir /srv/mlflow [--host 0.0.0.0] [--port 5000]
    python scripts/tracking_server.py stop --dir /srv/mlflow

``start`` creates, the first time, a PostgreSQL cluster in DIR/postgres with a database
``mlflow``, and starts it listening on 127.0.0.1 only: the MLflow server is its one
client. It then starts ``mlflow server`` on that database, with artifacts kept in
DIR/artifacts and served through the server (``--serve-artifacts``), so workers need
nothing but HTTP access to it. It waits until the server answers, records both
process ids in DIR/server.json and prints the tracking URI (alone on stdout).
``stop`` stops both by those process ids. Arguments after ``--`` go to ``mlflow server``
(e.g. ``-- --allowed-hosts mlflow.example.org``).

Needs PostgreSQL's server programs (Debian: ``apt-get install postgresql``) and
``pip install 'cifar10-mlp[server]'``. PostgreSQL refuses to run as root; run as root,
this script runs it as the ``postgres`` user, which must be able to reach DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DATABASE = "mlflow"
DB_USER = "mlflow"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_parser = sub.add_parser("start", help="start PostgreSQL and the MLflow server")
    start_parser.add_argument("--dir", type=Path, required=True,
                              help="folder for the database, artifacts, logs and pids")
    start_parser.add_argument("--host", default="127.0.0.1",
                              help="address the MLflow server listens on (0.0.0.0: all)")
    start_parser.add_argument("--port", type=int, default=5000,
                              help="MLflow server port (0: any free port)")
    start_parser.add_argument("--pg-port", type=int, default=0,
                              help="PostgreSQL port on 127.0.0.1 (0: any free port)")
    start_parser.add_argument("--workers", type=int, default=2,
                              help="MLflow server worker processes")
    start_parser.add_argument("--timeout", type=float, default=180,
                              help="seconds to wait for the server to answer")
    start_parser.add_argument("mlflow_args", nargs="*", help="after --: more `mlflow server` "
                                                             "arguments")
    stop_parser = sub.add_parser("stop", help="stop the server and PostgreSQL by process id")
    stop_parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    try:
        if args.command == "start":
            print(start(args.dir.resolve(), args.host, args.port, args.pg_port, args.workers,
                        args.timeout, args.mlflow_args))
        else:
            stop(args.dir.resolve())
    except ServerError as err:
        sys.exit(f"tracking_server: error: {err}")


class ServerError(RuntimeError):
    """A service did not start or stop; the message says which and where its log is."""


def start(folder: Path, host: str, port: int, pg_port: int, workers: int, timeout: float,
          mlflow_args: list[str]) -> str:
    """Start PostgreSQL and the MLflow server on it; return the tracking URI."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "server.json").exists():
        raise ServerError(f"{folder / 'server.json'} exists: a server was started from this "
                          "folder and not stopped; run `stop --dir` first")
    pg_port = pg_port or free_port()
    state = {"postgres_pid": start_postgres(folder, pg_port), "postgres_port": pg_port}
    _write_state(folder, state)
    try:
        create_database(pg_port)
        port = port or free_port()
        uri = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        server = start_mlflow_server(folder, pg_port, host, port, workers, mlflow_args)
        _write_state(folder, state | {"mlflow_pid": server.pid, "uri": uri})
        progress(f"MLflow server (pid {server.pid}) starting on {uri}")
        deadline = time.monotonic() + timeout
        while not healthy(uri):
            if server.poll() is not None or time.monotonic() > deadline:
                log_file = folder / "mlflow-server.log"
                raise ServerError(f"the MLflow server did not come up on {uri}; "
                                  f"see {log_file}:\n{tail(log_file)}")
            time.sleep(0.5)
    except BaseException:
        stop(folder)  # leave nothing running behind a failed start
        raise
    progress(f"MLflow server ready: export MLFLOW_TRACKING_URI={uri}")
    return uri


def start_mlflow_server(folder: Path, pg_port: int, host: str, port: int, workers: int,
                        mlflow_args: list[str]) -> subprocess.Popen:
    """`mlflow server` on the PostgreSQL database, artifacts served from DIR/artifacts."""
    artifacts = folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with open(folder / "mlflow-server.log", "ab") as log:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server",
             "--backend-store-uri", f"postgresql://{DB_USER}@127.0.0.1:{pg_port}/{DATABASE}",
             "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts",
             "--host", host, "--port", str(port), "--workers", str(workers), *mlflow_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: its workers stop with it


def stop(folder: Path) -> None:
    """Stop the MLflow server, then PostgreSQL, by the process ids `start` recorded."""
    state_file = folder / "server.json"
    if not state_file.exists():
        raise ServerError(f"{state_file} not found: nothing was started from {folder}")
    state = json.loads(state_file.read_text())
    if "mlflow_pid" in state:
        terminate(state["mlflow_pid"], signal.SIGTERM, group=True)
        progress(f"stopped the MLflow server (pid {state['mlflow_pid']})")
    terminate(state["postgres_pid"], signal.SIGINT)  # PostgreSQL's "fast" shutdown
    progress(f"stopped PostgreSQL (pid {state['postgres_pid']})")
    state_file.unlink()


def start_postgres(folder: Path, port: int) -> int:
    """Create the cluster on first use, start it on 127.0.0.1:port; return its pid."""
    bin_dir = postgres_bin_dir()
    data = folder / "postgres"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, exist_ok=True)
        if as_postgres:
            shutil.chown(data, "postgres", "postgres")
        run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", DB_USER,
             "--auth=trust", "-E", "UTF8"], f"initdb in {data}")
    log_file = folder / "postgres.log"
    if as_postgres:
        log_file.touch()
        shutil.chown(log_file, "postgres", "postgres")
    run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-w",
         "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {data}", "start"],
        f"starting PostgreSQL (log: {log_file})")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    progress(f"PostgreSQL (pid {pid}) listening on 127.0.0.1:{port}")
    return pid


def create_database(port: int) -> None:
    try:
        import psycopg  # SQLAlchemy's driver for postgresql:// URIs, as MLflow uses them
    except ImportError as err:
        raise ServerError("psycopg is missing: pip install 'cifar10-mlp[server]'") from err
    with psycopg.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres",
                         autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                    (DATABASE,)).fetchone()
        if exists is None:
            connection.execute(f"CREATE DATABASE {DATABASE}")


def postgres_bin_dir() -> Path:
    """Where initdb and pg_ctl are: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                    key=lambda p: int(Path(p).parts[-3]))
    if debian:
        return Path(debian[-1]).parent
    raise ServerError("PostgreSQL's server programs (initdb, pg_ctl) were not found; "
                      "install them, e.g. `apt-get install postgresql`")


def terminate(pid: int, signum: int, group: bool = False, timeout: float = 30) -> None:
    """Signal the process (or its group) and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(pid, signum)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                (os.killpg if group else os.kill)(pid, signal.SIGKILL)
        time.sleep(0.2)


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ServerError(f"{what} failed:\n{done.stdout}{done.stderr}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_state(folder: Path, state: dict) -> None:
    (folder / "server.json").write_text(json.dumps(state, indent=2) + "\n")


if __name__ == "__main__":
    main()
