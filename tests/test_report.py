import math

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from cifar10_mlp import plots, report
from cifar10_mlp.sweep_store import ChildRun
from hydra_plugins.cifar10_mlp_optuna_sweeper.optuna_sweeper import as_override, distribution


def child(name, status, lr, val=None, error=None):
    metrics = {} if val is None else {"selected_val_accuracy": val, "test_accuracy": val - 0.1}
    return ChildRun(name, name, status, {"optimizer.lr": lr, "seed": "42", "split.n_train": "8"},
                    metrics, 12.0, error)


RUNS = [child("a", "FINISHED", "0.1", 0.5), child("b", "FAILED", "10", error="boom"),
        child("c", "FINISHED", "0.01", 0.7), child("d", "KILLED", "0.001")]


def test_report_ranks_by_validation_and_finds_what_was_swept():
    built = report.build(RUNS)
    assert built.swept == ["optimizer.lr"]  # seed is constant, split.* is derived
    assert [row["run"] for row in built.rows] == ["c", "a", "b", "d"]
    assert built.best.name == "c"
    assert (built.n_finished, built.n_failed) == (2, 1)  # KILLED is listed, not counted
    assert built.rows[2]["error"] == "boom"


def test_markdown_has_a_row_per_run_under_its_header():
    lines = report.to_markdown(report.build(RUNS)).splitlines()
    assert lines[0].startswith("| run | status | optimizer.lr | selected_val_accuracy |")
    assert lines[2].startswith("| c | FINISHED | 0.01 | 0.7000 | 0.6000 |")
    assert len(lines) == 2 + len(RUNS)


def test_no_finished_run_means_no_best():
    assert report.build([RUNS[1]]).best is None


def test_scatter_has_a_panel_per_swept_param_with_finished_runs_only():
    built = report.build(RUNS)
    fig = plots.hyperparameter_scatter(built.rows, built.swept, "selected_val_accuracy")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"  # the finished runs span 0.01 .. 0.1
    assert len(ax.collections[0].get_offsets()) == 2


def parse(line):
    (override,) = OverridesParser.create().parse_overrides([line])
    return distribution(override)


def test_search_space_syntax_maps_to_optuna_distributions():
    lr = parse("optimizer.lr=tag(log, interval(0.0001, 0.1))")
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    assert (lr.low, lr.high) == (0.0001, 0.1)
    depth = parse("n=tag(int, interval(1, 4))")
    assert isinstance(depth, optuna.distributions.IntDistribution) and not depth.log
    assert (depth.low, depth.high) == (1, 4)
    widths = parse("model.hidden=choice([512],[1024,512])")
    assert widths.choices == ("[512]", "[1024,512]")
    assert parse("trainer.batch_size=range(64, 257, 64)").choices == (64, 128, 192, 256)


def test_values_are_written_back_as_override_text():
    assert as_override([1024, 512]) == "[1024,512]"
    assert as_override(0.5) == "0.5"
    assert not math.isnan(float(as_override(1e-4)))


def test_a_non_sweep_value_is_refused():
    with pytest.raises(ValueError, match="use choice"):
        parse("optimizer.lr=0.1")
