"""Starting a run from an earlier one (``from_run=<run id>``): the overrides that run was
made with, then the command's own, so later ones win, as on any command line. A sweep's
parent run stands for its best job, by validation accuracy as its report picks it."""

from __future__ import annotations

from collections.abc import Sequence

from cifar10_mlp.errors import UserError
from cifar10_mlp.sweeps import report
from cifar10_mlp.tracking import provenance, sweep_runs

KEY = "from_run"
# how the source run was launched, not what it trained: a search or grid, resuming, its name
LAUNCH_ONLY = ("hydra.", "hydra/", "+hydra", "~hydra", "hparams_search=", "sweep=",
               "sweep.resume=", "trainer.resume=", "tracking.run_name=", f"{KEY}=")


def requested(args: Sequence[str]) -> str:
    """The run id of the command's (last) ``from_run=...``."""
    return [a.split("=", 1)[1] for a in args if a.startswith(f"{KEY}=")][-1]


def source(uri: str, run_id: str) -> tuple[str, list[str]]:
    """The run to start from (for a sweep's parent: its best job) and the overrides it was
    made with, less those that only said how to launch it."""
    try:
        tags = provenance.run_tags(uri, run_id)
    except UserError as err:
        raise UserError(f"{KEY}={run_id}: {err}") from None
    if tags.get("sweep") == "parent":
        best = report.build(sweep_runs.sweep_children(uri, run_id)).best
        if best is None:
            raise UserError(f"{KEY}={run_id}: its sweep has no finished job to start from")
        run_id, tags = best.run_id, provenance.run_tags(uri, best.run_id)
    return run_id, [o for o in provenance.recorded_overrides(tags)
                    if not o.startswith(LAUNCH_ONLY)]


def expanded(args: Sequence[str], run_id: str, overrides: Sequence[str]) -> list[str]:
    """The command line with ``overrides`` before its own overrides and ``from_run`` naming
    ``run_id``: Hydra applies them in order, so the command's win."""
    args = [a for a in args if not a.startswith(f"{KEY}=")]
    first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")),
                 len(args))
    return [*args[:first], *overrides, f"{KEY}={run_id}", *args[first:]]
