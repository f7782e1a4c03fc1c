"""Training that fits small data: step-based schedules with the best epoch kept, the TF-IDF baseline
beside every classifier, and the opt-in Optuna search."""

import json

import pytest
from click.testing import CliRunner

from toolchain import schedule
from toolchain.artifact import Artifact
from toolchain.baseline import tfidf_baseline
from toolchain.cli import main
from toolchain.config import config_from_dict
from toolchain.data import DataSpec
from toolchain.distill import DistillConfig, distill
from toolchain.errors import RecipeError
from toolchain.evaluate import EvaluateConfig, evaluate
from toolchain.finetune import FinetuneConfig, finetune

WORDS = {"positive": "good great brilliant fun charming", "negative": "bad awful boring dull mess"}


def _reviews(tmp_path, n=60, name="reviews.csv"):
    rows = [f"the film was {WORDS[lab].split()[i % 5]} and {WORDS[lab].split()[(i + 2) % 5]},{lab}"
            for i in range(n) for lab in [("positive", "negative")[i % 2]]]
    path = tmp_path / name
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


# ----------------------------------------------------------------------------- schedules


def test_schedule_keeps_epochs_that_give_enough_steps():
    s = schedule.plan(10201, 32, 3.0, 600)  # the rotten-tomatoes teacher: unchanged
    assert (s.epochs, s.steps, s.raised) == (3.0, 957, False)
    assert "as configured" in s.reason


def test_schedule_raises_epochs_on_small_data_and_says_why():
    s = schedule.plan(1599, 32, 2.0, 600)  # the tweets student of issue 19: 100 updates before
    assert (s.epochs, s.steps_per_epoch, s.steps, s.raised) == (12.0, 50, 600, True)
    assert "1599 examples give 50 steps an epoch" in s.reason and "best epoch on validation kept" in s.reason
    assert schedule.plan(100, 32, 1.0, 600).epochs == schedule.MAX_EPOCHS  # capped
    assert "capped at max_epochs" in schedule.plan(100, 32, 1.0, 600).reason
    assert schedule.plan(1599, 32, 2.0, 0).epochs == 2.0  # min_steps 0: as configured


def test_finetune_on_small_data_records_its_raised_schedule_and_the_best_epoch(tiny, tmp_path):
    cfg = FinetuneConfig(data=str(_reviews(tmp_path)), epochs=1, batch_size=16, max_length=16, min_steps=12,
                         learning_rate=5e-3, patience=2)
    art = finetune(tiny("bert"), cfg, tmp_path / "out")
    s = art.manifest.lineage[-1].metrics["schedule"]
    assert s["raised"] and s["steps_per_epoch"] == 3 and s["epochs"] == 4.0
    assert 1 <= len(s["validation_by_epoch"]) <= 4 and s["epochs_run"] <= 4
    assert art.manifest.lineage[-1].metrics["splits"].startswith("seeded stratified 80/10/10")


def test_distill_keeps_the_best_epoch_on_validation_and_records_it(tiny, tmp_path, monkeypatch):
    from toolchain import distill as distill_module

    scores = iter([0.5, 0.9, 0.6, 0.4, 0.3, 0.2])  # epoch 2 best, then two epochs without a gain
    monkeypatch.setattr(distill_module, "validation_accuracy", lambda *a, **k: next(scores))
    cfg = DistillConfig(student_layers=1, data=str(_reviews(tmp_path)), max_length=16, epochs=1, batch_size=16,
                        min_steps=18, patience=2)
    art = distill(str(tiny("bert")), cfg, tmp_path / "s", progress=False)
    s = art.manifest.lineage[-1].metrics["train"]["schedule"]
    assert s["raised"] and s["epochs"] == 6.0
    assert s["validation_by_epoch"] == [0.5, 0.9, 0.6, 0.4] and s["best_epoch"] == 2 and s["stopped_early"] is True


@pytest.mark.parametrize("bad", [{"min_steps": -1}, {"patience": 0}, {"search": ("depth",)},
                                 {"search": ("learning_rate",), "trials": 1}])
def test_bad_schedule_and_search_configs_are_refused(bad):
    with pytest.raises(RecipeError):
        config_from_dict(FinetuneConfig, bad)
    with pytest.raises(RecipeError):
        config_from_dict(DistillConfig, bad)


# ----------------------------------------------------------------------------- the TF-IDF baseline


def test_baseline_chooses_c_on_validation_and_scores_the_same_rows(tmp_path):
    r = tfidf_baseline(DataSpec(str(_reviews(tmp_path, n=100))), "test")
    assert r["accuracy"] == 1.0 and r["n"] == 10  # the words name the label
    assert set(r["c_grid"]) == {str(c) for c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)}
    assert r["validation_accuracy"] == max(r["c_grid"].values()) and r["train_examples"] == 80


def test_evaluate_says_plainly_when_a_model_does_not_beat_the_baseline(tiny, tmp_path):
    r = evaluate(tiny("bert"), EvaluateConfig(data=str(_reviews(tmp_path, n=100)), batch_size=4), record=False)
    assert r["baseline"]["accuracy"] == 1.0 and r["beats_baseline"] is False  # an untrained tiny model
    assert "does not beat the TF-IDF + logistic regression baseline" in r["baseline_verdict"]
    assert "baseline" not in evaluate(tiny("bert"), EvaluateConfig(data=str(_reviews(tmp_path, n=100)),
                                                                   baseline=False), record=False)


def test_report_carries_a_baseline_row_and_the_verdict(tiny_run):
    out, _, output = tiny_run
    md = (out / "report.md").read_text()
    assert "| baseline (TF-IDF + logistic regression" in md
    assert "not beat the TF-IDF + logistic regression baseline" in md  # the untrained tiny model
    # The run says so too, once, naming every artifact below the baseline in one sentence.
    lines = [line for line in output.splitlines() if "not beat the TF-IDF" in line]
    assert len(lines) == 1 and "onnx" in lines[0], output


# ----------------------------------------------------------------------------- search


def test_search_runs_seeded_trials_chosen_by_validation_and_records_them(tiny, tmp_path):
    args = ["finetune", str(tiny("bert")), str(tmp_path / "out"), "--data", str(_reviews(tmp_path)), "--epochs", "1",
            "--batch-size", "16", "--max-length", "16", "--search", "learning_rate,batch_size", "--trials", "2",
            "--json"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "search: 2 trials over learning_rate, batch_size" in r.stderr and "min in all" in r.stderr
    art = Artifact.load(tmp_path / "out")
    record = art.manifest.lineage[-1]
    s = record.metrics["search"]
    assert [t["trial"] for t in s["trials"]] == [0, 1] and s["chosen_by"] == "validation accuracy"
    best = max(s["trials"], key=lambda t: t["validation_accuracy"])
    assert s["best_trial"] == best["trial"] and s["chosen"] == best["params"]
    assert record.config["search"] == ["learning_rate", "batch_size"] and record.config["trials"] == 2
    assert art.verify() == [] and not (tmp_path / ".out.search").exists()
    assert json.loads(r.stdout)["artifact"] == str(tmp_path / "out")
