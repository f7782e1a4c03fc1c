"""The user's own data: a split column, a file per split, a held-out test file scored whole, and the
recipe's data block (columns not named text / label) reaching every stage of the default recipe."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from toolchain.artifact import Artifact
from toolchain.cli import main
from toolchain.data import DataSpec, load_classification
from toolchain.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["good", "bad"]


def _rows(n: int, start: int = 0, split: str | None = None) -> list[str]:
    """`body,topic[,split]` rows whose label the tiny BERT can name (negative / positive)."""
    return [f"the film is {WORDS[i % 2]} {i},{['negative', 'positive'][i % 2]}" + (f",{split}" if split else "")
            for i in range(start, start + n)]


def _csv(path: Path, rows: list[str], header: str = "body,topic") -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_split_column_is_used_as_given_with_aliases(tmp_path):
    rows = _rows(20, 0, "train") + _rows(6, 20, "dev") + _rows(8, 26, "Test")
    data = load_classification(DataSpec(str(_csv(tmp_path / "s.csv", rows, "body,topic,split")), "body", "topic"))
    assert data.counts() == {"train": 20, "validation": 6, "test": 8}
    assert data.split("test").texts[:2] == ["the film is good 26", "the film is bad 27"]  # test keeps file order
    assert sorted(data.split("train").texts) == sorted(t.rsplit(",", 2)[0] for t in _rows(20))
    assert data.origin == "the file's 'split' column"


def test_split_column_with_an_unknown_value_is_a_data_error_naming_the_row(tmp_path):
    rows = _rows(4, 0, "train") + ["the film is good 9,positive,holdout"]
    with pytest.raises(DataError, match="row 5 has split 'holdout'"):
        load_classification(DataSpec(str(_csv(tmp_path / "s.csv", rows, "body,topic,split")), "body", "topic"))


def test_separate_files_are_used_whole_and_a_missing_validation_is_cut_from_train(tmp_path):
    train, test = _csv(tmp_path / "train.csv", _rows(40)), _csv(tmp_path / "test.csv", _rows(12, 40))
    data = load_classification(DataSpec(str(train), "body", "topic", test=str(test)))
    assert len(data.split("test")) == 12  # the whole held-out file
    assert data.counts()["train"] + data.counts()["validation"] == 40
    assert data.counts()["validation"] == 4  # a tenth per class, seeded
    assert "validation cut from train" in data.origin
    assert not set(data.split("train").texts) & set(data.split("validation").texts)
    again = load_classification(DataSpec(str(train), "body", "topic", test=str(test)))
    assert again.split("validation").texts == data.split("validation").texts


def test_whole_file_is_one_split_of_every_row(tmp_path):
    data = load_classification(DataSpec(str(_csv(tmp_path / "t.csv", _rows(7))), "body", "topic"), whole=True)
    assert data.counts() == {"all": 7}
    assert np.array_equal(data.split("all").labels, [0, 1, 0, 1, 0, 1, 0])


def test_unsplit_file_keeps_the_seeded_80_10_10_split(tmp_path):
    data = load_classification(DataSpec(str(_csv(tmp_path / "u.csv", _rows(100))), "body", "topic"))
    assert data.counts() == {"train": 80, "validation": 10, "test": 10}
    assert data.origin.startswith("seeded stratified 80/10/10")


def test_evaluate_scores_a_held_out_test_file_whole_and_says_how(tiny, tmp_path):
    test = _csv(tmp_path / "test.csv", _rows(50))
    runner = CliRunner()
    whole = runner.invoke(main, ["evaluate", str(tiny("bert")), "--data", str(test), "--text-column", "body",
                                 "--label-column", "topic", "--split", "all", "--json"], catch_exceptions=False)
    assert whole.exit_code == 0, whole.output
    r = json.loads(whole.stdout)
    assert r["n"] == 50 and r["split"] == "all" and r["rows_in_source"] == 50 and "note" not in r
    cut = json.loads(runner.invoke(main, ["evaluate", str(tiny("bert")), "--data", str(test), "--text-column", "body",
                                          "--label-column", "topic", "--json"]).stdout)
    assert cut["n"] == 6 and "--split all" in cut["note"]  # the seeded test tenth (3 a class), and the run says so
    assert cut["baseline"]["n"] == 6 and "baseline_skipped" not in cut
    assert "no train split" in r["baseline_skipped"] or "has none" in r["baseline_skipped"]


def _default_recipe_on(model: Path, csv: Path, test: Path, validation: Path) -> dict:
    """models/minilm-rotten-tomatoes.yaml with a tiny model, the user's columns and files, tiny budgets."""
    doc = yaml.safe_load((ROOT / "models" / "minilm-rotten-tomatoes.yaml").read_text())
    doc["model"] = str(model)
    doc["data"] = {"source": str(csv), "validation": str(validation), "test": str(test), "text_column": "body",
                   "label_column": "topic"}
    doc["report"]["accuracy_budget"] = 0.9
    doc.pop("quick")
    tweaks = {"teacher": {"epochs": 1, "batch_size": 8, "max_length": 16, "min_steps": 0},
              "student": {"student_layers": [0], "epochs": 1, "batch_size": 8, "max_length": 16, "min_steps": 0},
              "pruned": {"calibration_samples": 4, "max_length": 16, "recover_min_steps": 0},
              "int8-static": {"calibration_samples": 8, "max_accuracy_drop": 0.5},
              "speed": {"batch": [1], "runs": 2, "warmup": 1, "max_length": 16},
              "bundle": {"mobile_check": False}}
    for step in doc["steps"]:
        step["config"] = {**(step.get("config") or {}), **tweaks.get(step["name"], {})}
    return doc


def test_every_stage_of_the_default_recipe_reads_the_users_columns_and_test_file(tiny, tmp_path):
    csv = _csv(tmp_path / "mine.csv", _rows(40))
    test = _csv(tmp_path / "held-out.csv", _rows(10, 40))
    val = _csv(tmp_path / "dev.csv", _rows(8, 50))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_default_recipe_on(tiny("bert"), csv, test, val)))
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "run")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    teacher = Artifact.load(run / "teacher")
    assert teacher.manifest.lineage[-1].metrics["splits"].startswith(
        "files: train mine.csv, validation dev.csv, test held-out.csv")
    for name in ("teacher", "student", "pruned", "int8-dynamic", "int8-static"):
        scored = Artifact.load(run / name).manifest.results["evaluate/held-out.csv/test"]
        assert scored["n"] == 10 and scored["config"]["text_column"] == "body"
    pruned = Artifact.load(run / "pruned").manifest.lineage[-1]
    assert pruned.config["label_column"] == "topic"
    assert pruned.metrics["recovery"]["config"]["text_column"] == "body"
    assert pruned.metrics["recovery"]["config"]["validation_data"] == str(val)
    trimmed = Artifact.load(run / "trimmed").manifest.lineage[-1]  # scored on the user's validation file, all of it
    assert trimmed.config["validation_data"] == str(val) and trimmed.metrics["score_before"]["examples"] == 8
    assert Artifact.load(run / "bundle").verify() == []


def test_every_stage_that_reads_data_takes_every_field_of_the_data_block():
    """A stage config without, say, split_column silently re-splits the user's file (trim-vocab did)."""
    import dataclasses

    from toolchain.evaluate import DATA_FIELDS
    from toolchain.recipe import DATA_KEYS
    from toolchain.stages import STAGES, stage

    assert set(DATA_KEYS.values()) == {"data", *DATA_FIELDS}
    readers = {name: {f.name for f in dataclasses.fields(stage(name).config)} for name in STAGES}
    readers = {name: fields for name, fields in readers.items() if "data" in fields}
    assert {"finetune", "distill", "prune", "trim-vocab", "quantize", "evaluate", "bench"} <= set(readers)
    for name, fields in readers.items():
        assert set(DATA_FIELDS) <= fields, f"{name} lacks {set(DATA_FIELDS) - fields}"
