"""The sweep report as one self-contained page (``report/index.html``): which setting won, why,
and whether its lead beats seed noise. Plain values in, HTML out; the sweep module gathers."""

from __future__ import annotations

import html
from dataclasses import dataclass

from cifar10_mlp import pages
from cifar10_mlp.sweeps.report import SELECTION_METRIC, SweepReport, short_name
from cifar10_mlp.sweeps.seeds import Group

BEST = ' class="best"'


@dataclass(frozen=True)
class SweepFacts:
    """What the page says about the sweep as a whole."""

    title: str  # the parent run's name
    command: str
    swept: dict[str, str]  # key -> the values it swept, as written
    seconds: float | None  # from the parent's start to its end (or now)
    links: dict[str, str]  # run name -> its page in the MLflow UI (a tracking server only)
    from_run: str | None = None  # the run its jobs started from (``from_run``)


def render(facts: SweepFacts, report: SweepReport, groups: list[Group], verdict: str,
           images: dict[str, str]) -> str:
    """The page: summary, verdict, the settings ranked (seed groups), every run, the figures
    (``images``: caption -> base64 PNG, in the order given)."""
    counts = ", ".join(f"{n} {what}" for n, what in (
        (report.n_finished, "finished"), (report.n_pruned, "pruned"),
        (report.n_failed, "failed"), (report.n_interrupted, "killed"),
        (report.n_not_started, "not started")) if n or what in ("finished", "failed"))
    swept = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.swept.items())
    took = f" in {_duration(facts.seconds)}" if facts.seconds is not None else ""
    origin = (f"<p>Every job started from run <code>{_e(facts.from_run)}</code>'s config.</p>"
              if facts.from_run else "")
    body = f"""<p><code>{_e(facts.command)}</code></p>{origin}
<p>{_e(counts)}{took}.</p>
<table><tr><th>swept</th><th>values</th></tr>{swept}</table>
<h2>Which setting won</h2><p class="note">{_e(verdict)}</p>
{_groups_table(groups) if any(g.n > 1 for g in groups) else ""}
<h2>Runs</h2>{_runs_table(report, facts.links)}
{"".join(pages.image(name, png) for name, png in images.items())}"""
    return pages.page(facts.title, body)


def _groups_table(groups: list[Group]) -> str:
    keys = list(groups[0].setting)
    rows = []
    for rank, group in enumerate(groups, start=1):
        spread = f" ± {group.std:.4f}" if group.std is not None else ""
        test = f"{group.test_mean:.4f}" if group.test_mean is not None else ""
        setting = "".join(f"<td>{_e(group.setting[k])}</td>" for k in keys)
        rows.append(f"<tr{BEST if rank == 1 else ''}><td>{rank}</td>{setting}"
                    f"<td>{group.mean:.4f}{spread}</td><td>{group.n}</td><td>{test}</td></tr>")
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    return (f"<h2>Settings, ranked by mean validation accuracy over seeds</h2><table><tr>"
            f"<th>rank</th>{head}<th>validation accuracy (mean ± std)</th><th>seeds</th>"
            f"<th>test accuracy (mean)</th></tr>{''.join(rows)}</table>")


def _runs_table(report: SweepReport, links: dict[str, str]) -> str:
    columns = ["run", "status", *report.swept, SELECTION_METRIC, "test_accuracy",
               "epochs_trained", "seconds", "error"]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    best = short_name(report.best.name) if report.best else None
    rows = []
    for row in report.rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if column == "test_accuracy" and row["status"] != "FINISHED":
                value = ""  # only runs that finished were tested
            text = _e(_cell(value))
            if column == "run" and str(value) in links:
                text = f'<a href="{_e(links[str(value)])}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        rows.append(f"<tr{BEST if row['run'] == best else ''}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4f}"
    return str(value)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _e(text: object) -> str:
    return html.escape(str(text))
