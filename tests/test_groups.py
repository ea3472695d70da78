import math

import pytest

from cifar10_mlp.sweeps.seeds import seed_groups, seed_spread, verdict
from cifar10_mlp.tracking.sweep_runs import ChildRun


def run(lr, seed, val):
    return ChildRun(f"{lr}-{seed}", f"{lr}-{seed}", "FINISHED",
                    {"optimizer.lr": lr, "seed": str(seed)},
                    {"selected_val_accuracy": val, "test_accuracy": val - 0.01}, 1.0, None)


def test_runs_that_differ_only_in_seed_form_one_group_ranked_by_mean():
    groups = seed_groups([run("0.1", 1, 0.50), run("0.1", 2, 0.52), run("0.01", 1, 0.55),
                          run("0.01", 2, 0.57)], ["optimizer.lr", "seed"])
    assert [g.setting for g in groups] == [{"optimizer.lr": "0.01"}, {"optimizer.lr": "0.1"}]
    assert [g.n for g in groups] == [2, 2]
    assert groups[0].mean == pytest.approx(0.56) and groups[0].std == pytest.approx(0.01414, 1e-3)
    assert groups[0].test_mean == pytest.approx(0.55)
    assert seed_spread(groups) == pytest.approx(math.sqrt(0.0002))


def test_a_lead_beyond_twice_its_standard_error_is_called_real():
    # spread 0.0141 over 2 + 2 seeds: the standard error of the difference is 0.0141, so a
    # real lead must exceed 0.0283
    clear = seed_groups([run("0.1", 1, 0.50), run("0.1", 2, 0.52), run("0.01", 1, 0.55),
                         run("0.01", 2, 0.57)], ["optimizer.lr", "seed"])
    assert "The lead is larger than seed noise: the best setting is better." in verdict(clear)
    close = seed_groups([run("0.1", 1, 0.50), run("0.1", 2, 0.52), run("0.01", 1, 0.52),
                         run("0.01", 2, 0.54)], ["optimizer.lr", "seed"])
    said = verdict(close)
    assert said.startswith("Best: optimizer.lr=0.01, validation accuracy 0.5300 ± 0.0141 over "
                           "2 seeds.")
    assert "must exceed 2.83 points" in said and "is not larger than seed noise" in said


def test_without_seed_repeats_the_page_cites_the_typical_seed_spread():
    said = verdict(seed_groups([run("0.1", 1, 0.50), run("0.01", 1, 0.55)],
                               ["optimizer.lr"]))
    assert "Each setting ran with one seed, so this sweep cannot measure seed noise" in said
    assert "is not evidence" in said
