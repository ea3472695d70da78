"""The team server of scripts/tracking_server.py as a team runs it: MLflow's basic-auth app
with its users in PostgreSQL, HTTPS with a self-signed certificate made here, clients that
take their credentials from the environment or ~/.mlflow/credentials; and its host's side
(files, pids)."""

import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SERVER = [sys.executable, str(ROOT / "scripts" / "tracking_server.py")]
BIN = Path(sys.executable).parent
AS_ROOT = ["--allow-root"] if os.geteuid() == 0 else []
EXPERIMENT = "team"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def add_user(folder: Path, name: str, password: str, *grant: str) -> None:
    secret = folder.parent / f"{name}.password"
    secret.write_text(password)
    done = subprocess.run([*SERVER, "user", "--dir", str(folder), "--name", name,
                           "--password-file", str(secret), *grant],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def server():
    """An authenticated HTTPS server; its folder, URI, certificate and the admin's password,
    with an EDIT user (alice, on EXPERIMENT) and a READ-only one (bob)."""
    base = Path(tempfile.mkdtemp(prefix="cifar10-mlp-team-"))
    base.chmod(0o711)  # as root, PostgreSQL runs as postgres, who must pass through
    cert, key = self_signed(base)
    folder = base / "server"
    started = subprocess.run([*SERVER, "start", "--dir", str(folder), "--port", "0",
                              "--tls-cert", str(cert), "--tls-key", str(key), *AS_ROOT],
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    uri = started.stdout.strip()
    admin_password = (folder / "admin-password").read_text().strip()
    try:
        assert uri.startswith("https://127.0.0.1:")
        # the admin's password is shown once, to the operator, on stderr only
        assert started.stderr.count(admin_password) == 1 and admin_password not in uri
        add_user(folder, "alice", "alice-Pa55-word-1", "--experiment", EXPERIMENT,
                 "--registered-model", "team-model", "--permission", "EDIT")
        add_user(folder, "bob", "bob-Pa55-word-22")
        yield folder, uri, cert, admin_password
    finally:
        subprocess.run([*SERVER, "stop", "--dir", str(folder)], timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def as_user(cert: Path, name: str | None, password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(cert)
    if name:
        env |= {"MLFLOW_TRACKING_USERNAME": name, "MLFLOW_TRACKING_PASSWORD": password}
    return env


def status_of(url: str, cert: Path) -> int:
    try:
        with urllib.request.urlopen(url, context=ssl.create_default_context(cafile=str(cert)),
                                    timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_without_credentials_nothing_is_served(server):
    _, uri, cert, _ = server
    assert status_of(f"{uri}/health", cert) == 200  # the probe our clients use stays open
    for path in ("/api/2.0/mlflow/experiments/search?max_results=5",
                 "/api/2.0/mlflow/runs/search",
                 "/api/2.0/mlflow-artifacts/artifacts?path=1",
                 "/api/2.0/mlflow/registered-models/search",
                 "/api/2.0/mlflow/logged-models/search",
                 "/"):
        assert status_of(f"{uri}{path}", cert) == 401, path
    # a client that does not trust the private CA does not get through the handshake
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{uri}/health", context=ssl.create_default_context(),
                               timeout=10)


def test_a_read_user_cannot_write(server, monkeypatch):
    _, uri, cert, _ = server
    for key, value in as_user(cert, "bob", "bob-Pa55-word-22").items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)  # READ everywhere
    with pytest.raises(MlflowException) as refused:
        client.create_run(experiment.experiment_id)
    assert refused.value.get_http_status_code() == 403
    # bob's login is now in the workers' login cache: a wrong password still is not
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "bob-Pa55-word-2")
    with pytest.raises(MlflowException) as refused:
        client.get_experiment_by_name(EXPERIMENT)
    assert refused.value.get_http_status_code() == 401


def test_an_edit_user_runs_sweeps_and_predicts_and_its_password_is_nowhere(
        server, tiny_cifar, tmp_path):
    folder, uri, cert, admin_password = server
    password = "alice-Pa55-word-1"
    env = as_user(cert, "alice", password)
    tracking = [f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}"]
    overrides = [o for o in tiny_overrides(tiny_cifar, tmp_path)
                 if not o.startswith("tracking.")] + tracking
    outputs = []

    def run(command, *args, env=env):
        done = subprocess.run([str(BIN / command), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run("cifar10-mlp", *overrides, "tracking.run_name=single",
        "tracking.registered_model=team-model")
    run("cifar10-mlp", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        *[o for o in overrides if not o.startswith(("trainer.epochs", "model.hidden"))],
        "trainer.epochs=1", "tracking.log_model=false", "model.hidden=[16],[32]")
    picture = tmp_path / "picture.png"
    from PIL import Image
    Image.fromarray(tiny_cifar.x_test[0]).save(picture)
    home = tmp_path / "home"  # the credentials file instead of the environment
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = alice\nmlflow_tracking_password = {password}\n")
    (home / ".mlflow" / "credentials").chmod(0o600)
    predicted = run("cifar10-mlp-predict", "models:/team-model/1", str(picture),
                    "--tracking-uri", uri, env=as_user(cert, None, None) | {"HOME": str(home)})
    assert predicted.stdout.startswith(f"{picture}: ")

    client = MlflowClient(uri)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        runs = client.search_runs(
            [client.get_experiment_by_name(EXPERIMENT).experiment_id])
        assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}  # 1 + 1 + 2
        logged = []
        for r in runs:
            logged += [*r.data.params.values(), *r.data.tags.values()]
            artifacts = Path(client.download_artifacts(r.info.run_id, "", str(
                tmp_path / "artifacts" / r.info.run_id)))
            logged += [p.read_bytes().decode("latin-1") for p in artifacts.rglob("*")
                       if p.is_file()]
    local = [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*")
             if p.is_file() and p.suffix in (".log", ".yaml", ".txt", ".json")]
    for secret in (password, admin_password):
        for text in (*outputs, *logged, *local):
            assert secret not in text


def test_the_servers_files_are_their_users_alone(server):
    folder, *_ = server
    exposed = [str(p) for p in (folder, *folder.rglob("*"))
               if not p.is_symlink() and p.stat().st_mode & (stat.S_IROTH | stat.S_IWOTH)]
    assert exposed == []
    assert stat.S_IMODE((folder / "admin-password").stat().st_mode) == 0o600


def test_serving_a_network_without_users_is_refused(tmp_path):
    done = subprocess.run([*SERVER, "start", "--dir", str(tmp_path / "s"), "--host", "0.0.0.0",
                           "--no-auth", *AS_ROOT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        "tracking_server: error: --host 0.0.0.0 --no-auth: refusing")
    assert not (tmp_path / "s" / "postgres").exists()  # refused before anything started


@pytest.mark.skipif(os.geteuid() != 0, reason="the refusal is for root")
def test_root_is_refused_unless_told_how_to_run(tmp_path):
    done = subprocess.run([*SERVER, "start", "--dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "refusing to run the servers as root" in done.stderr
    assert "--run-as" in done.stderr


def test_stop_signals_only_the_processes_it_started(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 start_new_session=True)
    try:
        folder = tmp_path / "s"
        folder.mkdir()
        # a state file whose pids now belong to someone else (reused after a reboot), and
        # one that is gone
        (folder / "server.json").write_text(json.dumps({
            "mlflow_pid": bystander.pid, "mlflow_started": "1",
            "postgres_pid": 2 ** 22 + 17, "postgres_started": "1"}))
        started = time.monotonic()
        done = subprocess.run([*SERVER, "stop", "--dir", str(folder)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 30  # it ends, with nothing to wait for
        assert bystander.poll() is None  # not signalled
        assert f"pid {bystander.pid} is now another process, left alone" in done.stderr
        assert not (folder / "server.json").exists()
    finally:
        os.killpg(bystander.pid, signal.SIGKILL)
        bystander.wait()


def test_our_commands_without_credentials_stop_in_one_line_saying_how(server, tiny_cifar,
                                                                      tmp_path):
    _, uri, cert, _ = server
    env = as_user(cert, None, None)
    env["HOME"] = str(tmp_path)  # no ~/.mlflow/credentials either
    commands = [
        ["cifar10-mlp", *[o for o in tiny_overrides(tiny_cifar, tmp_path)
                          if not o.startswith("tracking.")],
         f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}"],
        ["cifar10-mlp-report", EXPERIMENT, "--tracking-uri", uri],
        ["cifar10-mlp-predict", "models:/team-model/1", str(tmp_path / "picture.png"),
         "--tracking-uri", uri]]
    from PIL import Image
    Image.fromarray(tiny_cifar.x_test[0]).save(tmp_path / "picture.png")
    for command, *args in commands:
        done = subprocess.run([str(BIN / command), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert last.startswith(f"{command}: error: ") and "refused this client (401)" in last
        assert "~/.mlflow/credentials" in last
