"""Where a run came from, as it records it: its command-line overrides, its config as
dotted params, the commit of the code and the versions of the packages that ran it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException

from cifar10_mlp.errors import UserError
from cifar10_mlp.tracking.store import open_client

# a run's command-line overrides as a JSON list: the ``overrides`` tag joins them with spaces,
# which a value with a space in it makes ambiguous
OVERRIDES_LIST_TAG = "overrides_list"
# the run a run was started from (``from_run``)
FROM_RUN_TAG = "from_run"
# versions recorded on every run, so a result can be traced and rerun
TRACED_PACKAGES = ("tensorflow", "keras", "numpy", "scikit-learn", "mlflow", "hydra-core")


def overrides_tag(overrides: Sequence[str]) -> str:
    """The ``overrides`` tag of a run: its command-line overrides, which in a sweep tell its
    job apart from the others."""
    return " ".join(overrides) or "(defaults)"


def overrides_tags(overrides: Sequence[str]) -> dict[str, str]:
    """A run's tags that record its command-line overrides."""
    return {"overrides": overrides_tag(overrides), OVERRIDES_LIST_TAG: json.dumps(list(overrides))}


def run_tags(uri: str, run_id: str) -> dict[str, str]:
    """The tags of run ``run_id``, which must exist."""
    try:
        return open_client(uri).get_run(run_id).data.tags
    except MlflowException as err:
        raise UserError(f"no run {run_id} in {uri} ({str(err).splitlines()[0]})") from None


def recorded_overrides(tags: dict[str, str]) -> list[str]:
    """The command-line overrides a run was made with, from its tags (a run older than the
    :data:`OVERRIDES_LIST_TAG`: its ``overrides`` tag split at spaces)."""
    if OVERRIDES_LIST_TAG in tags:
        return json.loads(tags[OVERRIDES_LIST_TAG])
    listed = tags.get("overrides", "(defaults)")
    return [] if listed == "(defaults)" else listed.split(" ")


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
