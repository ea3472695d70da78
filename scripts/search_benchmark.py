#!/usr/bin/env python
"""What pruning (or a launch setting) saves: the same Optuna search run once per variant.

    python scripts/search_benchmark.py     # mlp_asha with pruner=none, then as it is
    python scripts/search_benchmark.py --trials 12 --common data.train_limit=5000 \\
        trainer.epochs=12 hydra/launcher=joblib hydra.sweeper.n_jobs=2 \\
        --variants batched=hydra.sweeper.batched=true async=hydra.sweeper.batched=false

Each variant runs `cifar10-mlp hparams_search=<preset> <common> <its overrides>` in a fresh
folder (its own MLflow store and study, so every variant draws the same first trials), one
after the other, and reports the command's wall time, the trials finished / pruned / failed,
the epochs trained by all trials together, and the best validation accuracy. Wall times come
from one run each on a shared machine: compare them within one invocation, as ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from cli_run import CLI, add_data_argument  # noqa: E402


def run_variant(name: str, args: list[str], folder: Path) -> dict:
    """Run one search in ``folder``; its outcome as read back from the MLflow store."""
    from cifar10_mlp.sweeps import report
    from cifar10_mlp.tracking import sweep_runs

    folder.mkdir(parents=True)
    print(f"[{name}] cifar10-mlp {' '.join(args)}", flush=True)
    start = time.perf_counter()
    with open(folder / "output.log", "w") as log:
        done = subprocess.run([CLI, *args], cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    parent = sweep_runs.find_sweep(uri, "search-benchmark")
    runs = sweep_runs.sweep_children(uri, parent)
    outcome = report.build(runs)
    result = {
        "command": "cifar10-mlp " + " ".join(args),
        "exit_status": done.returncode,
        "wall_seconds": round(wall, 1),
        "finished": outcome.n_finished,
        "pruned": outcome.n_pruned,
        "failed": outcome.n_failed,
        "epochs_trained": int(sum(r.metrics.get("epochs_trained", 0) for r in runs)),
        "best_val_accuracy": (outcome.best.metrics[report.SELECTION_METRIC]
                              if outcome.best else None),
        "best_run": outcome.best.name if outcome.best else None,
        "log": str(folder / "output.log"),
    }
    print(f"[{name}] {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--preset", default="mlp_asha", help="an hparams_search preset")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--common", nargs="*",
                        default=["data.train_limit=10000", "trainer.epochs=12"],
                        help="overrides every variant gets")
    parser.add_argument("--variants", nargs="*",
                        default=["none=hydra/sweeper/pruner=none", "pruned="],
                        help="NAME=OVERRIDES (space-separated overrides within one argument)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep each variant's folder here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("search_benchmark.json"))
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="search-benchmark-"))
    results = {}
    for variant in args.variants:
        name, _, overrides = variant.partition("=")
        command = [f"hparams_search={args.preset}", f"hydra.sweeper.n_trials={args.trials}",
                   f"data.path={args.data}", "tracking.experiment=search-benchmark",
                   "trainer.verbose=0", *args.common, *overrides.split()]
        results[name] = run_variant(name, command, workdir / name)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    first = next(iter(results.values()))
    print("\n| variant | wall s | x first | finished | pruned | failed | epochs | x first "
          "| best val acc |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        best = f"{r['best_val_accuracy']:.4f}" if r["best_val_accuracy"] is not None else "-"
        wall_ratio = r["wall_seconds"] / first["wall_seconds"]
        epochs_ratio = r["epochs_trained"] / max(1, first["epochs_trained"])
        print(f"| {name} | {r['wall_seconds']:.0f} | {wall_ratio:.2f} | {r['finished']} "
              f"| {r['pruned']} | {r['failed']} | {r['epochs_trained']} | {epochs_ratio:.2f} "
              f"| {best} |")
    print(f"\nwritten: {args.out}; folders: {workdir}")


if __name__ == "__main__":
    main()
