#!/usr/bin/env python
"""Start or stop a team's MLflow tracking server on PostgreSQL, and add its users.

    python scripts/tracking_server.py start --dir /srv/mlflow --host 0.0.0.0 \\
        --tls-cert /srv/tls/mlflow.pem --tls-key /srv/tls/mlflow.key
    python scripts/tracking_server.py user --dir /srv/mlflow --name alice \\
        --experiment cifar10-mlp --permission EDIT
    python scripts/tracking_server.py stop --dir /srv/mlflow

``start`` creates, the first time, a PostgreSQL cluster in DIR/postgres that listens on no
TCP port at all: its only way in is a socket inside its own 0700 data folder. It then starts
``mlflow server`` on it with MLflow's basic-auth app (users, and READ / EDIT / MANAGE per
experiment and registered model; the user database is on the same PostgreSQL) and artifacts
kept in DIR/artifacts and served through the server. The admin password is generated (or
read from ``--admin-password-file``), printed once, and kept in DIR/admin-password (0600);
every file the servers write is readable by their user alone. With ``--tls-cert`` and
``--tls-key`` the server speaks HTTPS. It waits until the server answers, records both
processes in DIR/server.json and prints the tracking URI (alone on stdout).
``--no-auth`` (loopback addresses only) serves without users, as for a test on one machine.

``stop`` stops both, signalling a recorded process only while it is still the one that was
started (a pid reused after a crash or a reboot is left alone). ``user`` adds a user with a
permission and prints its password once (or reads it from ``--password-file``).
Arguments after ``--`` go to ``mlflow server`` (e.g. ``-- --allowed-hosts mlflow.example.org``).

Needs PostgreSQL's server programs (Debian: ``apt-get install postgresql``) and
``pip install 'cifar10-mlp[server]'``. The servers never run as root: as root, pass
``--run-as USER`` (e.g. ``postgres``), who then owns DIR.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from server_host import (
    ServerError,
    create_databases,
    free_port,
    healthy,
    identity,
    is_loopback,
    postgres_uri,
    progress,
    read_state,
    run_as,
    secret_file,
    start_postgres,
    tail,
    terminate,
    write_state,
)

DATABASE, AUTH_DATABASE = "mlflow", "mlflow_auth"
ADMIN = "admin"
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def main() -> None:
    os.umask(0o077)  # the database, artifacts, logs, secrets: this user's alone
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_parser = sub.add_parser("start", help="start PostgreSQL and the MLflow server")
    start_parser.add_argument("--dir", type=Path, required=True,
                              help="folder for the database, artifacts, logs and secrets")
    start_parser.add_argument("--host", default="127.0.0.1",
                              help="address the MLflow server listens on (0.0.0.0: all)")
    start_parser.add_argument("--port", type=int, default=5000,
                              help="MLflow server port (0: any free port)")
    start_parser.add_argument("--workers", type=int, default=2,
                              help="MLflow server worker processes")
    start_parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate "
                                                            "(PEM, with its chain)")
    start_parser.add_argument("--tls-key", type=Path, help="... and this private key (PEM)")
    start_parser.add_argument("--admin-password-file", type=Path,
                              help="the admin's password, the first time (else generated)")
    start_parser.add_argument("--no-auth", action="store_true",
                              help="no users and no login (loopback addresses only)")
    start_parser.add_argument("--auth-cache-seconds", type=int, default=60,
                              help="a worker accepts a login it checked for this long without "
                                   "hashing the password again (0: every request); a changed "
                                   "password or deleted user can pass until then")
    start_parser.add_argument("--run-as", metavar="USER",
                              help="when started as root: the user the servers run as")
    start_parser.add_argument("--allow-root", action="store_true",
                              help="as root, run the MLflow server as root (a throwaway "
                                   "machine such as a CI container only)")
    start_parser.add_argument("--timeout", type=float, default=180,
                              help="seconds to wait for the server to answer")
    start_parser.add_argument("mlflow_args", nargs="*", help="after --: more `mlflow server` "
                                                             "arguments")
    stop_parser = sub.add_parser("stop", help="stop the server and PostgreSQL")
    stop_parser.add_argument("--dir", type=Path, required=True)
    restart_parser = sub.add_parser("restart", help="restart one of them, as it was started")
    restart_parser.add_argument("--dir", type=Path, required=True)
    restart_parser.add_argument("--service", choices=("mlflow", "postgres"), required=True)
    restart_parser.add_argument("--timeout", type=float, default=180)
    user_parser = sub.add_parser("user", help="add a user with a permission")
    user_parser.add_argument("--dir", type=Path, required=True)
    user_parser.add_argument("--name", required=True)
    user_parser.add_argument("--password-file", type=Path, help="its password (else generated)")
    user_parser.add_argument("--experiment", help="an experiment (created if new) the user "
                                                  "gets --permission on")
    user_parser.add_argument("--registered-model", help="a registered model name the user gets "
                                                        "--permission on")
    user_parser.add_argument("--permission", choices=PERMISSIONS, default="EDIT")
    args = parser.parse_args()
    try:
        if args.command == "start":
            run_as(args.run_as, args.allow_root, args.dir)
            print(start(args))
        elif args.command == "stop":
            stop(args.dir.resolve())
        elif args.command == "restart":
            restart(args.dir.resolve(), args.service, args.timeout)
        else:
            add_user(args)
    except (ServerError, OSError) as err:
        sys.exit(f"tracking_server: error: {err}")


def start(args: argparse.Namespace) -> str:
    """Start PostgreSQL and the MLflow server on it; return the tracking URI."""
    folder = args.dir.resolve()
    if args.no_auth and not is_loopback(args.host):
        raise ServerError(f"--host {args.host} --no-auth: refusing to serve a network without "
                          "authentication; drop --no-auth (users and passwords) or listen on "
                          "127.0.0.1")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ServerError("--tls-cert and --tls-key go together")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (folder / "server.json").exists():
        raise ServerError(f"{folder / 'server.json'} exists: a server was started from this "
                          "folder and not stopped; run `stop --dir` first")
    postgres_pid = start_postgres(folder)
    write_state(folder, {"postgres_pid": postgres_pid,
                         "postgres_started": identity(postgres_pid)})
    try:
        create_databases(folder, (DATABASE, AUTH_DATABASE))
        if not args.no_auth:  # the admin's password: shown to the operator the first time
            password, new = secret_file(folder / "admin-password", args.admin_password_file)
            if new:
                progress(f"admin password (shown once; kept in {folder / 'admin-password'}, "
                         f"mode 0600): {password}")
        port = args.port or free_port()
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        settings = {
            "uri": f"{'https' if args.tls_cert else 'http'}://{host}:{port}",
            "host": args.host, "port": port, "workers": args.workers, "auth": not args.no_auth,
            "auth_cache_seconds": args.auth_cache_seconds,
            "tls_cert": str(args.tls_cert.resolve()) if args.tls_cert else None,
            "tls_key": str(args.tls_key.resolve()) if args.tls_key else None,
            "mlflow_args": args.mlflow_args}
        write_state(folder, read_state(folder) | settings)
        launch_mlflow_server(folder, args.timeout)
    except BaseException:
        stop(folder)  # leave nothing running behind a failed start
        raise
    progress(f"MLflow server ready: export MLFLOW_TRACKING_URI={settings['uri']}")
    return settings["uri"]


def restart(folder: Path, service: str, timeout: float) -> None:
    """Restart one service with the settings it was started with: the MLflow server (after
    a crash, say), or PostgreSQL (its fast shutdown: open connections are cut)."""
    state = read_state(folder)
    if service == "postgres":
        terminate(state["postgres_pid"], state["postgres_started"], signal.SIGINT, "PostgreSQL")
        pid = start_postgres(folder)
        write_state(folder, state | {"postgres_pid": pid, "postgres_started": identity(pid)})
        return
    terminate(state["mlflow_pid"], state["mlflow_started"], signal.SIGTERM, "the MLflow server",
              group=True)
    launch_mlflow_server(folder, timeout)


def launch_mlflow_server(folder: Path, timeout: float) -> None:
    """Start `mlflow server` on the PostgreSQL database with the settings in server.json
    (artifacts served from DIR/artifacts), record it there, and wait until it answers."""
    state = read_state(folder)
    artifacts = folder / "artifacts"
    artifacts.mkdir(mode=0o700, exist_ok=True)
    options, env = [], dict(os.environ)
    if state["auth"]:
        options, env = ["--app-name", "basic-auth"], auth_env(folder,
                                                             state.get("auth_cache_seconds", 0))
    if state["tls_cert"]:
        options += ["--uvicorn-opts", shlex.join(["--ssl-certfile", state["tls_cert"],
                                                  "--ssl-keyfile", state["tls_key"]])]
    log_file = folder / "mlflow-server.log"
    with open(log_file, "ab") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server",
             "--backend-store-uri", postgres_uri(folder, DATABASE),
             "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts",
             "--host", state["host"], "--port", str(state["port"]),
             "--workers", str(state["workers"]), *options, *state["mlflow_args"]],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=folder, start_new_session=True)  # its own process group: its workers too
    write_state(folder, state | {"mlflow_pid": server.pid,
                                 "mlflow_started": identity(server.pid)})
    progress(f"MLflow server (pid {server.pid}) starting on {state['uri']}")
    deadline = time.monotonic() + timeout
    while not healthy(state["uri"], state["tls_cert"]):
        if server.poll() is not None or time.monotonic() > deadline:
            raise ServerError(f"the MLflow server did not come up on {state['uri']}; "
                              f"see {log_file}:\n{tail(log_file)}")
        time.sleep(0.5)


def auth_env(folder: Path, cache_seconds: int) -> dict[str, str]:
    """The environment of a server with MLflow's basic-auth app: its config file (users in
    PostgreSQL; a login checked once per worker per ``cache_seconds``), the admin's password
    (which creates the admin the first time) and the secret that signs its sessions."""
    flask_secret, _ = secret_file(folder / "flask-secret")
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "# an authenticated user reads every experiment; writing needs EDIT, given per user\n"
        "default_permission = READ\n"
        f"database_uri = {postgres_uri(folder, AUTH_DATABASE)}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "# a password hash costs a CPU tens of milliseconds: each worker remembers a checked\n"
        "# login this long (a changed password or deleted user passes until it expires)\n"
        f"auth_cache_ttl_seconds = {cache_seconds}\n")
    return {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": (folder / "admin-password").read_text().strip(),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret}


def stop(folder: Path) -> None:
    """Stop the MLflow server, then PostgreSQL: each only while it is the process started."""
    state = read_state(folder)
    if "mlflow_pid" in state:
        terminate(state["mlflow_pid"], state.get("mlflow_started"), signal.SIGTERM,
                  "the MLflow server", group=True)
    terminate(state["postgres_pid"], state.get("postgres_started"), signal.SIGINT,
              "PostgreSQL")  # SIGINT: PostgreSQL's "fast" shutdown
    (folder / "server.json").unlink()


def add_user(args: argparse.Namespace) -> None:
    """Create a user (as the admin) with ``--permission`` on an experiment and/or a
    registered model; print its password once, with how a client uses it."""
    folder = args.dir.resolve()
    state = read_state(folder)
    if not state.get("auth"):
        raise ServerError(f"the server of {folder} runs without authentication (--no-auth)")
    os.environ["MLFLOW_TRACKING_USERNAME"] = ADMIN  # read by MLflow's clients below
    os.environ["MLFLOW_TRACKING_PASSWORD"] = (folder / "admin-password").read_text().strip()
    if state.get("tls_cert"):
        os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = state["tls_cert"]
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # Starlette's, as mlflow.server loads
    from mlflow import MlflowClient
    from mlflow.server import get_app_client

    uri = state["uri"]
    password = (args.password_file.read_text().strip() if args.password_file
                else secrets.token_urlsafe(18))
    users = get_app_client("basic-auth", tracking_uri=uri)
    users.create_user(username=args.name, password=password)
    if args.experiment:
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(args.experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(
            args.experiment, tags={"mlflow.experimentKind": "custom_model_development"})
        users.grant_user_permission(args.name, "experiment", experiment_id, args.permission)
    if args.registered_model:
        users.grant_user_permission(args.name, "registered_model", args.registered_model,
                                    args.permission)
    granted = " and ".join(f"{args.permission} on {kind} {name!r}" for kind, name in (
        ("experiment", args.experiment), ("registered model", args.registered_model)) if name)
    progress(f"user {args.name!r}: {granted or 'no write access yet'}; READ everywhere else")
    if not args.password_file:
        progress("its password, shown once; give it to the user, who puts it in "
                 "~/.mlflow/credentials (mode 0600):\n[mlflow]\n"
                 f"mlflow_tracking_username = {args.name}\n"
                 f"mlflow_tracking_password = {password}")


if __name__ == "__main__":
    main()
