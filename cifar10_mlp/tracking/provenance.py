"""Where a run came from, as it records it: its command-line overrides, its config as
dotted params, the commit of the code and the versions of the packages that ran it."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

# versions recorded on every run, so a result can be traced and rerun
TRACED_PACKAGES = ("tensorflow", "keras", "numpy", "scikit-learn", "mlflow", "hydra-core")


def overrides_tag(overrides: Sequence[str]) -> str:
    """The ``overrides`` tag of a run: its command-line overrides, which in a sweep tell its
    job apart from the others."""
    return " ".join(overrides) or "(defaults)"


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested config to dotted keys, e.g. {"model.hidden": "[1024, 512]"}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def git_tags() -> dict[str, str]:
    """The commit of the code that runs, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"),
                "git_dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}
    except (OSError, subprocess.SubprocessError):
        return {}
