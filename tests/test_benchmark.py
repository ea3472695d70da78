"""scripts/benchmark.py end to end on a tiny archive (numbers are not asserted, only sense)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "benchmark.py"


@pytest.mark.slow
def test_benchmark_measures_every_part_and_writes_json(tiny_cifar, tmp_path):
    out = tmp_path / "bench.json"
    # relative, as the docs write it: the runs work in folders of their own
    relative = os.path.relpath(tiny_cifar.archive, tmp_path)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", relative, "--repeats", "1",
         "--images", "64", "--widths", "16;32-16", "--presets", "default,fast_mlp",
         "--out", str(out), "--precisions", "float32", "--overrides", "trainer.batch_size=32"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["matmul_peak_gflops"] > 0
    assert report["data_loading"]["cold_seconds"] > 0 and report["data_loading"]["warm_seconds"] > 0
    first, second = report["training"]
    assert (first["hidden"], second["hidden"]) == ([16], [32, 16])
    assert first["batch_size"] == 32  # the overrides reach the throughput runs
    assert first["params"] == 3072 * 16 + 2 * 16 + 16 * 10 + 10  # batch norm: no Dense bias
    assert first["ratio_to_peak"] == pytest.approx(first["gflops"] / report["matmul_peak_gflops"])
    overhead = report["overhead"]
    assert overhead["overhead_seconds"] == pytest.approx(
        overhead["wall_seconds"] - overhead["train_seconds"] - overhead["evaluate_seconds"],
        abs=1e-6)
    assert 0 < overhead["mlflow_logging_seconds"] < overhead["overhead_seconds"]
    assert first["gflops"] == pytest.approx(  # as computed: 4 per first-layer weight
        (4 * 3072 * 16 + 6 * 16 * 10) * first["samples_per_second"] / 1e9)
    default, fast = report["presets"]["default"], report["presets"]["fast_mlp"]
    assert list(report["presets"]) == ["default", "fast_mlp"]
    for preset in (default, fast):  # timed by numpy's rate right before and after each
        before, after = preset["numpy_float32_gflops_before_after"]
        assert preset["train_reference_minutes"] == pytest.approx(
            preset["train_seconds"] / 60 * min(before, after) / 300)
    assert default["of_own_shapes_rate"] == pytest.approx(
        default["gflops"] / default["own_shapes_gflops"])
    assert 1 <= default["epochs"] <= 20
    median, fastest, slowest = fast["epoch_seconds_median_min_max"]
    assert 0 < fastest <= median <= slowest < fast["train_seconds"]
    assert f"| 8 | {median:.2f} ({fastest:.2f}-{slowest:.2f}) |" in done.stdout
    assert fast["epochs"] == 8 and 0 <= fast["test_accuracy"] <= 1 and fast["gflops"] > 0
    assert "| hidden | batch | precision | params | samples/s | GFLOP/s | of peak |" in done.stdout
    assert "| fast_mlp |" in done.stdout
    assert first["precision"] == "float32" and default["precision"] == "float32"

    # each width in each precision, side by side; bfloat16 rows against the bfloat16 peak,
    # measured in the same run
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tiny_cifar.archive), "--repeats", "1",
         "--images", "64", "--widths", "16", "--presets", "", "--out", str(out),
         "--overrides", "trainer.batch_size=32"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    full, bf16 = report["training"]
    assert (full["precision"], bf16["precision"]) == ("float32", "mixed_bfloat16")
    assert full["hidden"] == bf16["hidden"] == [16] and full["params"] == bf16["params"]
    assert report["bfloat16_matmul_peak_gflops"] > 0
    assert bf16["ratio_to_peak"] == pytest.approx(
        bf16["gflops"] / report["bfloat16_matmul_peak_gflops"])

    # the presets alone, with overrides for their runs
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--data", str(tiny_cifar.archive), "--presets-only",
         "--presets", "default", "--preset-overrides", "trainer.epochs=1", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "training" not in report and report["presets"]["default"]["epochs"] == 1


@pytest.mark.slow
def test_ablations_run_each_technique_against_best_mlp_in_reference_minutes(
        tiny_cifar, tmp_path):
    script = SCRIPT.with_name("ablations.py")
    out = tmp_path / "ablations.json"
    done = subprocess.run(
        [sys.executable, str(script), "--data", str(tiny_cifar.archive), "--epochs", "1",
         "--only", "float32,pca", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert list(rows) == ["default run", "best_mlp", "float32", "pca"]
    assert rows["pca"]["overrides"] == ["experiment=best_mlp", "trainer.epochs=1",
                                        "preprocess=pca"]
    # best_mlp tests with flip TTA: each row also has the same model's accuracy without it
    assert rows["best_mlp"]["test_accuracy_without_tta"] is not None
    assert rows["default run"]["test_accuracy_without_tta"] is None
    for name, row in rows.items():
        assert f"| {name} | {row['test_accuracy']:.4f} |" in done.stdout
        minutes = f"| {row['train_reference_minutes']:.2f} |"
        assert minutes in done.stdout.split(f"| {name} |")[1].splitlines()[0]
        assert row["train_reference_minutes"] > 0
    done = subprocess.run([sys.executable, str(script), "--data", "x", "--only", "magic"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--only: unknown magic; known: float32," in done.stderr
