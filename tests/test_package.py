"""The package as a user installs it: a wheel built from this checkout, installed elsewhere."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient

import cifar10_mlp

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                              "mlflow.db", "mlruns", "multirun", "outputs", "site")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel of this checkout installed with ``pip install --no-deps --target``, and a
    fresh interpreter that sees it and this environment's dependencies (but not the
    checkout's editable install, whose finder only ``site`` processing would add)."""
    work = tmp_path_factory.mktemp("package")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SKIP)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", work / "wheels", source], check=True)
    (wheel,) = (work / "wheels").glob("cifar10_mlp-*.whl")
    target = work / "target"
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = subprocess.run([venv / "bin" / "python", "-c", "import site; "
                           "print(site.getsitepackages()[0])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "cifar10_mlp_test.pth").write_text(
        f"{target}\n{sysconfig.get_paths()['purelib']}\n")
    return wheel, target, venv / "bin" / "python"


def run_installed(python, args, cwd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([python, "-m", "cifar10_mlp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.slow
def test_the_wheel_carries_every_config_and_the_hydra_plugins(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert configs and {f"cifar10_mlp/conf/{c}" for c in configs} <= names
    assert {"hydra_plugins/cifar10_mlp_optuna_sweeper/optuna_sweeper.py",
            "hydra_plugins/cifar10_mlp_process_launcher/process_launcher.py",
            "cifar10_mlp/sweeps/callback.py"} <= names


@pytest.mark.slow
def test_the_installed_wheel_composes_helps_and_trains_from_another_folder(
        installed, tiny_cifar, tmp_path):
    _, target, python = installed
    where = run_installed(python, ["--version"], tmp_path)
    assert where.stdout.strip() == f"cifar10-mlp {cifar10_mlp.__version__}"
    found = subprocess.run([python, "-c", "import cifar10_mlp.conf, hydra_plugins."
                            "cifar10_mlp_process_launcher as p; print(cifar10_mlp.conf.__file__)"
                            "; print(p.__file__)"], cwd=tmp_path, capture_output=True,
                           text=True, check=True).stdout.split()
    assert all(Path(f).is_relative_to(target) for f in found)  # not the checkout's

    job = run_installed(python, ["--cfg", "job", "experiment=best_mlp"], tmp_path)
    assert job.returncode == 0, job.stderr
    assert "hidden:" in job.stdout and "tracking:" in job.stdout

    shown = run_installed(python, ["--help"], tmp_path)
    assert shown.returncode == 0 and "hparams_search: " in shown.stdout

    search = run_installed(python, ["--cfg", "hydra", "hparams_search=mlp_asha"], tmp_path)
    assert search.returncode == 0, search.stderr  # the sweeper plugin and its schema load

    fast = run_installed(python, ["debug=fast", *tiny_overrides(tiny_cifar, tmp_path)],
                         tmp_path)
    assert fast.returncode == 0, fast.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert "eda.tsne_samples" not in run.data.params
