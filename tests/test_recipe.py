import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import recipe_helpers
from toolchain import stages
from toolchain.artifact import Artifact
from toolchain.cli import main
from toolchain.errors import RecipeError
from toolchain.recipe import load_recipe, plan, run

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_run_tiny_recipe_end_to_end(tiny_run):
    out, _, output = tiny_run
    for name in ("onnx", "bundle"):
        assert Artifact.load(out / name).verify() == []
    onnx = Artifact.load(out / "onnx")
    assert onnx.manifest.results["evaluate/reviews.csv/test"]["config"]["batch_size"] == 1
    bundle = Artifact.load(out / "bundle")
    assert bundle.manifest.lineage[-1].stage == "package"
    assert bundle.manifest.lineage[-1].input_hash == onnx.content_hash  # `recommended` resolved to onnx
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert "★" in output and "bundle:" in output and "report.html" in output
    assert "(packaged from onnx)" in (out / "report.md").read_text()
    plan_file = json.loads((out / "recipe.json").read_text())
    assert [s["kind"] for s in plan_file["steps"]] == ["transform", "measure", "transform"]


def test_run_prints_each_step_and_what_came_out_with_timing(tiny_run):
    _, _, output = tiny_run
    lines = output.splitlines()
    started = [i for i, line in enumerate(lines) if line.startswith("[") and ": running," in line]
    assert [lines[i].split()[1] for i in started] == ["onnx", "eval", "bundle"]
    outcomes = [lines[i + 1].strip() for i in started]  # nothing between a step's start and its outcome here
    assert all(re.match(r"done in \d+\.\ds: .+  \[elapsed ", line) for line in outcomes), outcomes
    assert "parity" in outcomes[0] and "best onnx" in outcomes[1] and "bundle" in outcomes[2]
    assert re.search(r"^finished 3 steps \(3 ran, 0 skipped\) in \d", output, re.M)


def test_second_run_skips_every_step(tiny_run):
    out, recipe, _ = tiny_run
    before = {n: (out / n / "manifest.json").read_text() for n in ("onnx", "bundle")}
    records = run(load_recipe(recipe), out, echo=lambda s: None)
    assert [r["action"] for r in records] == ["skipped"] * 3
    assert records[0]["reason"] == "input and config unchanged"
    assert records[1]["reason"] == "already measured with this config"
    assert {n: (out / n / "manifest.json").read_text() for n in ("onnx", "bundle")} == before


def test_dry_run_prints_the_plan_and_writes_nothing(tiny, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_helpers.tiny_recipe(tiny("bert"), recipe_helpers.write_csv(tmp_path / "d.csv")))
    r = cli("run", recipe, "--out", tmp_path / "run", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "3 to run, 0 to skip" in r.output
    assert "input onnx is rebuilt first" in r.output and "chosen once the measurements are in" in r.output
    assert not (tmp_path / "run").exists()
    data = json.loads(cli("run", recipe, "--out", tmp_path / "run", "--dry-run", "--json").output)
    assert [(p["step"], p["run"]) for p in data["plan"]] == [("onnx", True), ("eval", True), ("bundle", True)]


def test_dry_run_after_a_run_names_what_changed(tiny_run, tmp_path):
    out, recipe, _ = tiny_run
    decisions = plan(load_recipe(recipe), out)
    assert [d.run for d in decisions] == [False, False, False]
    changed = tmp_path / "changed.yaml"
    changed.write_text(recipe.read_text().replace("config: {batch_size: 1}", "config: {batch_size: 2}"))
    decisions = plan(load_recipe(changed), out)
    assert [d.run for d in decisions] == [False, True, True]
    assert decisions[1].reason == "onnx not measured with this config"
    assert "recommended artifact, chosen once the measurements are in" in decisions[2].reason
    quick = plan(load_recipe(recipe, quick=True), out)  # quick: eval max_eval_samples 4
    assert quick[1].run and quick[1].step.config.max_eval_samples == 4


def test_changed_config_reruns_the_step_and_what_reads_it(tiny, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_helpers.tiny_recipe(tiny("bert"), recipe_helpers.write_csv(tmp_path / "d.csv")))
    run(load_recipe(recipe), tmp_path / "run", echo=lambda s: None)
    before = Artifact.load(tmp_path / "run" / "onnx").content_hash
    recipe.write_text(recipe.read_text().replace("stage: export\n", "stage: export\n    config: {atol: 0.001}\n"))
    decisions = plan(load_recipe(recipe), tmp_path / "run")
    assert decisions[0].run and decisions[0].reason == "config changed: atol: None -> 0.001"
    assert decisions[1].reason == "input onnx is rebuilt first"
    records = run(load_recipe(recipe), tmp_path / "run", echo=lambda s: None)
    assert [r["action"] for r in records[:2]] == ["ran", "ran"]  # a rebuilt artifact's manifest has no results
    # The bundle follows content, not timestamps: a byte-identical re-export leaves it valid.
    same = Artifact.load(tmp_path / "run" / "onnx").content_hash == before
    assert records[2]["action"] == ("skipped" if same else "ran")


def test_run_resumes_after_a_killed_step(tiny, tmp_path, monkeypatch):
    """Kill a real run while its second step is writing; the re-run skips the first and finishes."""
    steps = "  - name: held\n    stage: hold\n"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_helpers.tiny_recipe(tiny("bert"), recipe_helpers.write_csv(tmp_path / "d.csv"), steps))
    marker = tmp_path / "holding"
    script = ("import sys, recipe_helpers; from toolchain import stages, recipe; "
              "stages.STAGES['hold'] = recipe_helpers.HOLD_ENTRY; "
              "recipe.run(recipe.load_recipe(sys.argv[1]), sys.argv[2])")
    env = os.environ | {"HOLD_STAGE": str(marker), "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(recipe), str(tmp_path / "run")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[0] if proc.poll() is not None else "the run never reached the step"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert Artifact.load(tmp_path / "run" / "onnx").verify() == []
    assert not (tmp_path / "run" / "held").exists()
    assert list((tmp_path / "run").glob(".partial-held-*")), "the killed write leaves only a hidden partial folder"

    monkeypatch.setitem(stages.STAGES, "hold", recipe_helpers.HOLD_ENTRY)
    monkeypatch.delenv("HOLD_STAGE", raising=False)
    lines = []
    records = run(load_recipe(recipe), tmp_path / "run", echo=lines.append)
    assert [(r["step"], r["action"]) for r in records] == [("onnx", "skipped"), ("held", "ran"), ("eval", "ran"),
                                                            ("bundle", "ran")]
    assert lines[1] == "[1/4] onnx (export): skipped, input and config unchanged"  # after the run's header
    assert not list((tmp_path / "run").glob(".partial-*"))


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


GOOD = """\
model: minilm
data: rotten-tomatoes
steps:
  - name: onnx
    stage: export
  - name: eval
    stage: evaluate
    config:
      batch_size: 1
"""


@pytest.mark.parametrize("edit, line, message", [
    (("stage: export", "stage: exprot"), 5, "unknown stage 'exprot'"),
    (("batch_size: 1", "batch_sise: 1"), 9, "unknown key 'batch_sise' for EvaluateConfig"),
    (("batch_size: 1", "batch_size: one"), 9, "expected int, got str"),
    (("batch_size: 1", "batch_size: 0"), 9, "batch_size must be >= 1"),
    (("    stage: evaluate\n", "    stage: evaluate\n    input: teacher\n"), 8,
     "input 'teacher' names no earlier step"),
    (("  - name: onnx\n    stage: export\n", "  - name: onnx\n    stage: export\n    input: eval\n"), 6,
     "input 'eval' names no earlier step"),
    (("name: eval", "name: onnx"), 6, "a step named 'onnx' already exists"),
    (("data: rotten", "dat: rotten"), 2, "unknown key 'dat'"),
    (("    stage: evaluate\n", "    stage: evaluate\n    inputs: onnx\n"), 8, "unknown step key 'inputs'"),
    (("stage: export\n", "stage: export\n    input: recommended\n"), 6, "needs an earlier measurement"),
    (("  - name: eval", "  -name: eval"), 6, "not valid YAML"),
])
def test_recipe_errors_name_the_key_and_its_line(tmp_path, edit, line, message):
    path = _write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{path}:{line}:" in err.value.problem
    assert message in err.value.problem


def test_data_error_points_at_the_recipe_data_line(tmp_path):
    text = GOOD.replace("data: rotten-tomatoes", "data: 17")
    with pytest.raises(RecipeError, match=r":2: data: `data` must be a name, a path, or a mapping"):
        load_recipe(_write(tmp_path, text))
    text = GOOD.replace("data: rotten-tomatoes", "data:\n  source: my.csv\n  text_colum: review")
    with pytest.raises(RecipeError, match=r":4: data.text_colum: unknown data key"):
        load_recipe(_write(tmp_path, text))


def test_quick_overrides_are_checked_and_merged(tmp_path):
    text = GOOD + "quick:\n  eval: {max_eval_samples: 10}\n"
    assert load_recipe(_write(tmp_path, text), quick=True).step("eval").config.max_eval_samples == 10
    assert load_recipe(_write(tmp_path, text)).step("eval").config.max_eval_samples is None
    with pytest.raises(RecipeError, match=r":11: quick\.evl: quick names no step 'evl'"):
        load_recipe(_write(tmp_path, GOOD + "quick:\n  evl: {max_eval_samples: 10}\n"))
    with pytest.raises(RecipeError, match=r":11: quick\.eval\.max_sample: step .eval.: unknown key .max_sample."):
        load_recipe(_write(tmp_path, GOOD + "quick:\n  eval: {max_sample: 10}\n"), quick=True)


def test_recipe_data_fills_configs_that_have_data_and_measures_default_to_all_artifacts(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD + "  - {name: onnx2, stage: export, input: model}\n"
                                            "  - {name: eval2, stage: evaluate}\n"))
    assert r.step("eval").config.data == "rotten-tomatoes"
    columns = GOOD.replace("data: rotten-tomatoes", "data: {source: my.csv, text_column: review}")
    cfg = load_recipe(_write(tmp_path, columns)).step("eval").config
    assert (cfg.data, cfg.text_column, cfg.label_column) == ("my.csv", "review", "label")
    assert r.step("onnx2").inputs == ("model",)
    assert r.step("eval2").inputs == ("onnx", "onnx2")


def test_bad_recipe_through_the_cli_exits_8_without_a_traceback(tmp_path):
    r = cli("run", _write(tmp_path, GOOD.replace("stage: export", "stage: exprot")), "--out", tmp_path / "o")
    assert r.exit_code == 8
    assert "bad.yaml:5: steps[0].stage: unknown stage 'exprot'" in r.output and "fix: use one of:" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("name", ["minilm-rotten-tomatoes.yaml", "smollm2-hamlet.yaml", "custom-csv.yaml"])
def test_shipped_recipes_validate(name, monkeypatch):
    """The recipes in models/ load, in full and --quick, every step's keys checked by its real config."""
    path = ROOT / "models" / name
    full, quick = load_recipe(path), load_recipe(path, quick=True)
    assert full.steps[-1].stage == "package" and full.steps[-1].inputs == ("recommended",)
    assert [s.name for s in full.steps] == [s.name for s in quick.steps]


def test_run_json_prints_only_json_with_the_steps_and_the_report(tiny_run):
    out, recipe, _ = tiny_run
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [s["action"] for s in data["steps"]] == ["skipped"] * 3
    assert data["report"]["recommended"] == "onnx" and data["report"]["bundles"] == [str(out / "bundle")]
    assert "[1/3] onnx (export): skipped" in result.stderr  # progress lines go to stderr
