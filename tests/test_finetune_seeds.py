"""benchmarks/finetune_seeds.py: variants are chosen by mean validation accuracy, never by test."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import finetune_seeds as fs  # noqa: E402


def _run(seed, val, test):
    return {"seed": seed, "validation": val, "test": test, "best_checkpoint": "checkpoint-1", "train_seconds": 60.0}


def test_the_better_mean_validation_on_shared_seeds_wins_not_the_better_test_or_an_extra_seed():
    runs = {"default": [_run(42, 0.86, 0.82), _run(0, 0.85, 0.83)],
            # better test everywhere, and a lucky seed 1 that lifts its mean validation over default's
            "lr-1e-4": [_run(42, 0.85, 0.84), _run(0, 0.84, 0.85), _run(1, 0.90, 0.85)]}
    rows = [fs.summary(name, rs, {42, 0}) for name, rs in runs.items()]
    assert rows[0]["mean_validation"] == 0.855 and round(rows[0]["mean_test"], 4) == 0.825
    assert rows[1]["mean_validation"] > rows[0]["mean_validation"] > rows[1]["mean_validation_common"]
    best = fs.choose(rows)
    assert best["variant"] == "default"
    baseline = {"validation": 0.79, "test": 0.77, "other_split_seeds": 2, "other_tests": [0.76, 0.78],
                "other_mean_test": 0.77, "other_sd_test": 0.014, "rank_of_ours": 1}
    md = fs.markdown(rows, runs, best, baseline)
    assert "| default (chosen) | 0.8600 / 0.8200 | 0.8500 / 0.8300 | - |" in md  # no seed 1 run: a dash
    assert "harder than 1 of them" in md
