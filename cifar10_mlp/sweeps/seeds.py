"""Runs that differ only in ``seed`` as one group: mean and spread, and whether a lead is real.

**The rule.** The seed spread is the pooled standard deviation of validation accuracy across
seeds within groups (each group's variance weighted by its degrees of freedom). The best
group's lead over the second counts as larger than seed noise when it exceeds twice the
standard error of the difference of the two means, ``2 * spread * sqrt(1/n_best + 1/n_second)``
(about a two-sided 95% test). Without seed repeats there is no spread to measure, and the page
compares the lead with the typical seed spread measured once on the default run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from cifar10_mlp.sweeps.report import SELECTION_METRIC
from cifar10_mlp.tracking.sweep_runs import ChildRun

# standard deviations over seeds 1, 2, 3 of the default run on the real data, test and
# validation accuracy (the seed also draws the validation split): docs/results.md, "Seed spread"
DEFAULT_RUN_SEED_STD = {"test": 0.0026, "validation": 0.0086}


@dataclass(frozen=True)
class Group:
    """The finished (not pruned) runs of one setting, across seeds."""

    setting: dict[str, str]  # the swept keys other than seed, with their values
    runs: list[ChildRun]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float:
        return statistics.fmean(r.metrics[SELECTION_METRIC] for r in self.runs)

    @property
    def std(self) -> float | None:
        """Standard deviation across seeds (None for one run)."""
        values = [r.metrics[SELECTION_METRIC] for r in self.runs]
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def test_mean(self) -> float | None:
        values = [r.metrics["test_accuracy"] for r in self.runs if "test_accuracy" in r.metrics]
        return statistics.fmean(values) if values else None

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.setting.items()) or "(one setting)"


def seed_groups(finished: list[ChildRun], swept: list[str]) -> list[Group]:
    """Finished runs grouped by their swept values other than seed, best mean first."""
    keys = [k for k in swept if k != "seed"]
    by_setting: dict[tuple, list[ChildRun]] = {}
    for run in finished:
        if SELECTION_METRIC in run.metrics:
            by_setting.setdefault(tuple(run.params.get(k, "") for k in keys), []).append(run)
    groups = [Group(dict(zip(keys, values, strict=True)), runs)
              for values, runs in by_setting.items()]
    return sorted(groups, key=lambda g: -g.mean)


def seed_spread(groups: list[Group]) -> float | None:
    """The pooled standard deviation across seeds, from groups with two or more seeds."""
    repeated = [g for g in groups if g.n > 1]
    if not repeated:
        return None
    return math.sqrt(sum((g.n - 1) * g.std ** 2 for g in repeated)
                     / sum(g.n - 1 for g in repeated))


def verdict(groups: list[Group]) -> str:
    """In words: the best group, and whether its lead over the second beats seed noise."""
    if not groups:
        return "No run finished, so there is no best setting."
    best = groups[0]
    head = f"Best: {best.label}, validation accuracy {_pm(best)}."
    if len(groups) == 1:
        return head
    second, spread = groups[1], seed_spread(groups)
    lead = best.mean - second.mean
    versus = f"Its lead over {second.label} ({_pm(second)}) is {lead * 100:.2f} points"
    if spread is None:
        typical = DEFAULT_RUN_SEED_STD
        return (f"{head} {versus}. Each setting ran with one seed, so this sweep cannot measure "
                f"seed noise. On the default run, seeds alone move validation accuracy by "
                f"{typical['validation'] * 100:.2f} points and test accuracy by "
                f"{typical['test'] * 100:.2f} (one standard deviation over 3 seeds): a "
                f"difference smaller than that is not evidence. Add seed=1,2,3 to the sweep "
                "to tell.")
    margin = 2 * spread * math.sqrt(1 / best.n + 1 / second.n)
    real = lead > margin
    return (f"{head} {versus}; the seed spread here is {spread * 100:.2f} points, so a real lead "
            f"must exceed {margin * 100:.2f} points (twice the standard error of the "
            f"difference). The lead is {'larger' if real else 'not larger'} than seed noise: "
            + ("the best setting is better." if real else
               "this sweep does not show that the best setting is better than the second."))


def _pm(group: Group) -> str:
    spread = f" ± {group.std:.4f}" if group.std is not None else ""
    return f"{group.mean:.4f}{spread} over {group.n} seed{'s' if group.n > 1 else ''}"
