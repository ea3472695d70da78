#!/usr/bin/env python
"""What each technique adds on its own: `best_mlp` with one change at a time, all on the same
(shorter) schedule, against `best_mlp` itself, with the default run trained in the same
invocation beside them.

    python scripts/ablations.py --epochs 8                 # real data from $CIFAR10_PATH
    python scripts/ablations.py --epochs 8 --only pca,lion --out ablations.json

Training seconds are also given in reference minutes, by numpy's float32 rate measured right
before and right after each run (benchmark.py): these machines are shared and their speed
varies 2x between sessions. One run per row: differences below the seed spread
(docs/results.md, "Seed spread") are noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_run import add_data_argument, cli_run  # noqa: E402
from measure import numpy_matmul_rate, reference_minutes  # noqa: E402

# one change each against best_mlp: a technique it uses taken out or swapped, or one it does
# not use added (test-time augmentation needs no row: every run with it also logs its
# accuracy without it, from the same model)
TECHNIQUES = {
    "float32": ["model.precision=float32"],
    "flip_translate": ["augment=flip_translate"],
    "no_augmentation": ["augment=none"],
    "pca": ["preprocess=pca"],
    "standardize": ["preprocess=standardize"],
    "residual": ["model.block=residual", "model.hidden=[512,512,512]", "model.norm=layer"],
    "lion": ["optimizer=lion"],
    "mixup": ["augment.mixup_alpha=0.2"],
    "cutmix": ["augment.cutmix_alpha=1.0"],
    # the speed techniques: Keras' own layers and optimizer in training
    "keras_layers": ["model.fused_layers=false"],
    "keras_optimizer": ["optimizer.fused=false"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--epochs", type=int, default=8,
                        help="epochs of every best_mlp variant (the default run keeps its own)")
    parser.add_argument("--only", default=",".join(TECHNIQUES),
                        help="','-separated techniques to run: " + ", ".join(TECHNIQUES))
    parser.add_argument("--out", type=Path, default=Path("ablations.json"))
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(TECHNIQUES)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; "
                     f"known: {', '.join(TECHNIQUES)}")

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        common = [f"data.path={args.data}", f"data.cache_dir={workdir / 'cache'}",
                  "tracking.log_model=false"]
        base = ["experiment=best_mlp", f"trainer.epochs={args.epochs}"]
        plan = {"default run": [], "best_mlp": base,
                **{name: [*base, *TECHNIQUES[name]] for name in args.only.split(",")}}
        for name, overrides in plan.items():
            print(f"{name}: {' '.join(overrides) or '(defaults)'} ...", flush=True)
            rate = numpy_matmul_rate()
            metrics = cli_run([*common, *overrides], workdir)["metrics"]
            rate = min(rate, numpy_matmul_rate())
            rows[name] = {"overrides": overrides, "test_accuracy": metrics["test_accuracy"],
                          "train_seconds": metrics["time_train_seconds"],
                          "train_reference_minutes": reference_minutes(
                              metrics["time_train_seconds"], rate),
                          "test_accuracy_without_tta": metrics.get("test_accuracy_without_tta")}
            args.out.write_text(json.dumps(rows, indent=2))  # what is done survives a stop
    base_accuracy = rows["best_mlp"]["test_accuracy"]
    print(f"\n| run | test accuracy | vs best_mlp ({args.epochs} epochs) | without TTA "
          "| training s | reference minutes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        delta = "" if name == "default run" else \
            f"{100 * (row['test_accuracy'] - base_accuracy):+.2f} points"
        plain = row["test_accuracy_without_tta"]
        print(f"| {name} | {row['test_accuracy']:.4f} | {delta} | "
              f"{'-' if plain is None else f'{plain:.4f}'} | {row['train_seconds']:.0f} "
              f"| {row['train_reference_minutes']:.2f} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
