"""What a person reads (issue 18): durations, bars only on a terminal, -q / -v, and a recipe run whose
terminal output is one line per step start, epoch and outcome, with library chatter in RUN/toolchain.log."""

import io
import json
import re
import warnings

import pytest
from click.testing import CliRunner

import recipe_helpers
from toolchain import console
from toolchain.artifact import Artifact
from toolchain.cli import main


@pytest.fixture(autouse=True)
def normal_level():
    yield
    console.set_level(console.NORMAL)


@pytest.mark.parametrize("seconds, text", [(0, "0.0s"), (4.23, "4.2s"), (59.9, "59.9s"), (60, "1m00s"),
                                           (1579.5, "26m20s"), (3599.4, "59m59s"), (3720, "1h02m"),
                                           (90061, "25h01m")])
def test_duration_reads_as_minutes_and_seconds(seconds, text):
    assert console.duration(seconds) == text


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bar_draws_only_on_a_terminal_and_not_when_quiet(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert console.bar(range(3), desc="evaluate x").disable  # a file, CI: no bar
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    shown = console.bar(range(3), desc="evaluate int8 (test)")
    assert not shown.disable
    list(shown)
    assert "evaluate int8 (test)" in tty.getvalue()
    assert console.bar(range(3), desc="x", show=False).disable
    console.set_level(console.QUIET)
    assert console.bar(range(3), desc="x").disable


def test_say_respects_quiet_and_verbose(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    console.say("normal line")
    console.say("detail", console.VERBOSE)
    console.set_level(console.QUIET)
    console.say("hidden when quiet")
    console.say("always", console.QUIET)
    console.set_level(console.VERBOSE)
    console.say("detail shown")
    assert err.getvalue().splitlines() == ["normal line", "always", "detail shown"]


def test_capture_sends_library_prints_to_the_log_and_say_to_the_terminal(tmp_path, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with console.log_to(tmp_path / "toolchain.log"):
        with console.capture():
            print("{'loss': 0.6842, 'grad_norm': 0.76}")  # what the Trainer prints
            import sys
            sys.stderr.write("\r 40%|####      | 2/5 [00:01<00:01]\x1b[A")  # a library's bar: dropped
            console.say("epoch 1/3  val accuracy 0.8000  best")
            warnings.warn("a library's deprecation", DeprecationWarning, stacklevel=1)
    assert err.getvalue() == "epoch 1/3  val accuracy 0.8000  best\n"
    log = (tmp_path / "toolchain.log").read_text()
    assert "'loss': 0.6842" in log and "epoch 1/3" in log and "2/5 [" not in log


FINETUNE_STEPS = """\
  - name: teacher
    stage: finetune
    config: {epochs: 2, batch_size: 8, max_length: 16, min_steps: 0}
  - name: fused
    stage: optimize
"""


def _recipe(tiny, tmp_path):
    """finetune -> export -> optimize -> evaluate -> package on the tiny BERT: every kind of chatter."""
    text = recipe_helpers.tiny_recipe(tiny("bert"), recipe_helpers.write_csv(tmp_path / "reviews.csv", 40))
    text = text.replace("steps:\n  - name: onnx", "steps:\n" + FINETUNE_STEPS.split("  - name: fused")[0]
                        + "  - name: onnx").replace("  - name: eval", "  - name: fused\n    stage: optimize\n"
                                                                        "  - name: eval")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    return recipe


@pytest.fixture(scope="module")
def finetune_run(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console-run")
    recipe = _recipe(tiny, tmp)
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp / "run")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tmp / "run", recipe, result.output


def test_recipe_run_prints_steps_epochs_and_outcomes_not_library_chatter(finetune_run):
    out, _, output = finetune_run
    assert "{'loss'" not in output and "eval_loss" not in output and "\x1b[A" not in output and "\r" not in output
    assert "Input hidden size" not in output and "it/s]" not in output
    lines = output.splitlines()
    steps = [line for line in lines if re.match(r"\[\d/5\] ", line)]
    assert [line.split()[1] for line in steps] == ["teacher", "onnx", "fused", "eval", "bundle"]
    outcomes = [line for line in lines if line.startswith("    done in ")]
    assert len(outcomes) == 5
    assert re.search(r"val \d\.\d{4}, test \d\.\d{4}", outcomes[0])  # finetune
    assert "fused " in outcomes[2] and "nodes " in outcomes[2]  # optimize: what fused
    epochs = [line.strip() for line in lines if line.strip().startswith("epoch ")]
    assert len(epochs) == 2 and all(re.fullmatch(r"epoch \d/2  val accuracy \d\.\d{4}(  best)?", e) for e in epochs)
    assert epochs[0].endswith("  best")
    assert "[elapsed " in outcomes[0] and "ETA ~" in outcomes[0] and "ETA" not in outcomes[-1]
    assert len(lines) < 40, output  # the report table included


def test_recipe_run_writes_the_log_and_step_times(finetune_run):
    out, _, output = finetune_run
    log = (out / "toolchain.log").read_text()
    assert "'loss':" in log  # the Trainer's records, kept for whoever wants them
    assert "[1/5] teacher (finetune): running" in log
    assert f"library messages go to {out / 'toolchain.log'}" in output
    times = json.loads((out / "step-times.json").read_text())["full"]
    assert set(times) == {"teacher", "onnx", "fused", "eval", "bundle"} and all(t >= 0 for t in times.values())


def test_second_run_says_what_each_step_took_last_time(finetune_run, tiny, tmp_path):
    out, recipe, _ = finetune_run
    times = json.loads((out / "step-times.json").read_text())
    times["full"]["teacher"] = 1579.5
    (out / "step-times.json").write_text(json.dumps(times))
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--force"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[1/5] teacher (finetune): running, --force (took 26m20s last time)" in result.output


def test_lineage_and_info_time_the_whole_stage_not_only_the_write(finetune_run):
    out, _, _ = finetune_run
    record = Artifact.load(out / "teacher").manifest.lineage[-1]
    assert record.finished - record.started >= record.metrics["train_seconds"]
    result = CliRunner().invoke(main, ["info", str(out / "teacher")], catch_exceptions=False)
    row = next(line for line in result.output.splitlines() if line.startswith("finetune "))
    assert console.duration(record.finished - record.started) in row


def test_quiet_run_prints_only_the_result_and_verbose_shows_library_messages(tiny, tmp_path):
    recipe = _recipe(tiny, tmp_path)
    quiet = CliRunner().invoke(main, ["-q", "run", str(recipe), "--out", str(tmp_path / "run")],
                               catch_exceptions=False)
    assert quiet.exit_code == 0, quiet.output
    assert "[1/5]" not in quiet.output and "epoch 1/2" not in quiet.output and "report.html" in quiet.output
    verbose = CliRunner().invoke(main, ["-v", "run", str(recipe), "--out", str(tmp_path / "run"), "--force"],
                                 catch_exceptions=False)
    assert verbose.exit_code == 0, verbose.output
    assert "[1/5] teacher (finetune): running" in verbose.output and "'loss':" in verbose.output


def test_optimizer_notes_stay_off_the_terminal_outside_a_run(capsys, monkeypatch):
    """ORT's optimizer logs "Input hidden size ... is not same as ..." from modules named like `fusion_attention`
    even when the fusion succeeds; a standalone `toolchain optimize` has no log file, so they are dropped."""
    import logging

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as on the command line: pytest's own handler off
    with console.library_logs():
        logging.getLogger("fusion_attention").warning("Input hidden size (192) is not same as weight matrix")
    assert "Input hidden size" not in capsys.readouterr().err
    console.set_level(console.VERBOSE)
    with console.library_logs():
        logging.getLogger("fusion_attention").warning("Input hidden size (192) is not same as weight matrix")
    assert "Input hidden size" in capsys.readouterr().err  # -v asked for them


def test_library_warnings_are_hushed_outside_a_run_unless_verbose():
    def shown(level):
        console.set_level(level)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            console.hush_library_warnings()
            warnings.warn_explicit("mtime may not be reliable", UserWarning, "trainer.py", 1,
                                   module="transformers.trainer")
            warnings.warn_explicit("8 calibration samples", UserWarning, "calibration.py", 1,
                                   module="toolchain.quantize.calibration")
        return [str(w.message) for w in seen]

    assert shown(console.NORMAL) == ["8 calibration samples"]
    assert shown(console.VERBOSE) == ["mtime may not be reliable", "8 calibration samples"]
