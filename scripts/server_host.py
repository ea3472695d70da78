"""The host's side of scripts/tracking_server.py: PostgreSQL on a private socket, secrets in
owner-only files, and processes signalled only while they are still the ones we started."""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DB_USER = "mlflow"
PG_PORT = 5432  # names the socket file in the data folder; no TCP port is opened


class ServerError(RuntimeError):
    """A service did not start or stop; the message says which and where its log is."""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def secret_file(path: Path, given: Path | None = None) -> tuple[str, bool]:
    """The secret kept in ``path`` (mode 0600): read from ``given`` when it names a file,
    else the one kept from before, else a new random one. Returns it and whether it is new
    (so that the caller shows it once)."""
    if given is not None:
        value = given.read_text().strip()
        if len(value) < 12:
            raise ServerError(f"{given}: a password of at least 12 characters is needed")
    elif path.exists():
        return path.read_text().strip(), False
    else:
        value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, given is None


def read_state(folder: Path) -> dict:
    """What `start` recorded in DIR/server.json: the processes, the URI, the settings."""
    path = folder / "server.json"
    if not path.exists():
        raise ServerError(f"{path} not found: nothing was started from {folder}")
    return json.loads(path.read_text())


def write_state(folder: Path, state: dict) -> None:
    (folder / "server.json").write_text(json.dumps(state, indent=2) + "\n")


def healthy(uri: str, tls_cert: str | None) -> bool:
    """Whether the server answers its health check (unauthenticated in basic-auth too),
    trusting the server's own certificate when it has one."""
    context = None
    if tls_cert:
        context = ssl.create_default_context(cafile=tls_cert)
        context.check_hostname = False  # the URI may name 127.0.0.1; the chain is checked
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2, context=context) as response:
            return response.status == 200
    except OSError:
        return False


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- privileges ---

def run_as(user: str | None, allow_root: bool, folder: Path) -> None:
    """As root, go on as ``user`` (who gets DIR), or refuse: a server should not be root."""
    if os.geteuid() != 0:
        if user or allow_root:
            raise ServerError("--run-as and --allow-root are for root; you are not root")
        return
    if allow_root:
        progress("warning: --allow-root: the MLflow server runs as root (PostgreSQL as "
                 "postgres); anyone who can write a model it serves can run code as root")
        return
    if not user:
        raise ServerError("refusing to run the servers as root: pass --run-as USER (e.g. "
                          "--run-as postgres), or start them as that user")
    uid_gid = _ids(user)
    if subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", "import mlflow"],
                      capture_output=True).returncode != 0:
        raise ServerError(f"--run-as {user}: {user} cannot run {sys.executable} with MLflow "
                          "(a Python under /root?); install this tool where that user can "
                          "read it (e.g. a virtual environment under /opt), or start as them")
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, *uid_gid)
    argv = [a for i, a in enumerate(sys.argv)
            if a != "--run-as" and sys.argv[i - 1] != "--run-as" and not a.startswith("--run-as=")]
    env = {**os.environ, "HOME": str(folder.resolve()), "USER": user, "LOGNAME": user}
    os.execvpe("runuser", ["runuser", "-u", user, "--", sys.executable, *argv], env)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError as err:
        raise ServerError(f"--run-as {user}: no such user") from err
    if entry.pw_uid == 0:
        raise ServerError(f"--run-as {user}: that is root")
    return entry.pw_uid, entry.pw_gid


# --- processes -------------------------------------------------------------------------------

def identity(pid: int) -> str | None:
    """What tells process ``pid`` apart from a later one with the same id: its start time
    (in clock ticks since boot, /proc/<pid>/stat field 22). None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    state, start_ticks = fields[0], fields[19]
    return None if state in ("Z", "X") else start_ticks


def is_ours(pid: int, started: str) -> bool:
    """Whether ``pid`` is still the process whose :func:`identity` was ``started``."""
    return identity(pid) == started


def terminate(pid: int, started: str, signum: int, what: str, group: bool = False,
              timeout: float = 30) -> None:
    """Stop ``what`` (process ``pid``, or its process group): ``signum``, then SIGKILL after
    ``timeout`` seconds. Only while it is the process that was started (a pid reused since
    a crash or reboot is left alone), and only as long as that: it returns once it is gone."""
    if identity(pid) is None:
        progress(f"{what} (pid {pid}) is not running; nothing to stop")
        return
    if not is_ours(pid, started):
        progress(f"{what} is not running: pid {pid} is now another process, left alone")
        return
    send = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        send(pid, signum)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it, if it is our child
        if not is_ours(pid, started):  # gone (or a zombie someone else will reap)
            break
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                send(pid, signal.SIGKILL)
            deadline += timeout
        time.sleep(0.2)
    progress(f"stopped {what} (pid {pid})")


def run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ServerError(f"{what} failed:\n{done.stdout}{done.stderr}")


# --- PostgreSQL ------------------------------------------------------------------------------

def postgres_uri(folder: Path, database: str) -> str:
    """SQLAlchemy's URI of ``database`` through the socket in DIR/postgres."""
    return f"postgresql://{DB_USER}@/{database}?host={folder / 'postgres'}&port={PG_PORT}"


def start_postgres(folder: Path) -> int:
    """Create the cluster on first use and start it with no TCP listener at all: its only
    way in is the socket in its own data folder (mode 0700), so only this user (and root)
    can connect. PostgreSQL refuses to run as root: as root it runs as ``postgres``.
    Returns the postmaster's pid."""
    bin_dir = postgres_bin_dir()
    data = folder / "postgres"
    log_file = folder / "postgres.log"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if not (data / "PG_VERSION").exists():
        data.mkdir(mode=0o700, exist_ok=True)
        if as_postgres:
            folder.chmod(0o711)  # postgres may pass through DIR, not list it
            shutil.chown(data, "postgres", "postgres")
        run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", DB_USER, "-E",
             "UTF8", "--auth-local=trust", "--auth-host=reject"], f"initdb in {data}" + (
                 " (as root, PostgreSQL runs as postgres: every folder above it must let "
                 "postgres pass, e.g. chmod o+x)" if as_postgres else ""))
    if as_postgres:
        log_file.touch(mode=0o600)
        shutil.chown(log_file, "postgres", "postgres")
    run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log_file), "-w",
         "-o",
         f"-c listen_addresses='' -p {PG_PORT} -k {data} -c unix_socket_permissions=0700",
         "start"], f"starting PostgreSQL (log: {log_file})")
    pid = int((data / "postmaster.pid").read_text().split()[0])
    progress(f"PostgreSQL (pid {pid}) on a socket in {data}")
    return pid


def create_databases(folder: Path, names: tuple[str, ...]) -> None:
    try:
        import psycopg  # SQLAlchemy's driver for postgresql:// URIs, as MLflow uses them
    except ImportError as err:
        raise ServerError("psycopg is missing: pip install 'cifar10-mlp[server]'") from err
    with psycopg.connect(host=str(folder / "postgres"), port=PG_PORT, user=DB_USER,
                         dbname="postgres", autocommit=True) as connection:
        for name in names:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                        (name,)).fetchone()
            if exists is None:
                connection.execute(f"CREATE DATABASE {name}")


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
