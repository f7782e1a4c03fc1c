"""The rules of toolchain/guard.py and the CLI's last line of defence: outputs never overlap inputs, one
writer per output, and no command ever shows a traceback, whatever fails inside it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from bad_inputs import snapshot
from toolchain.cli import main
from toolchain.errors import INTERNAL_ERROR_EXIT, OutputExists
from toolchain.guard import output_lock, refuse_overlap

REPO = Path(__file__).parent.parent
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
HOLD = """import sys, time
from toolchain.guard import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("out, src", [("a", "a"), ("a/b", "a"), ("a", "a/b"), ("a/./b/../c", "a")])
def test_refuse_overlap_refuses_an_output_equal_to_inside_or_around_an_input(tmp_path, out, src):
    (tmp_path / src).mkdir(parents=True, exist_ok=True)
    with pytest.raises(OutputExists):
        refuse_overlap(tmp_path / out, [str(tmp_path / src)])


def test_refuse_overlap_sees_through_links_and_ignores_names_that_are_not_paths(tmp_path):
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "model", tmp_path / "alias")
    with pytest.raises(OutputExists):
        refuse_overlap(tmp_path / "alias" / "onnx", [tmp_path / "model"])
    refuse_overlap(tmp_path / "out", ["minilm", "glue/sst2", None, tmp_path / "model"])  # no error


@pytest.fixture
def held(tmp_path):
    """Another process holding the write lock of tmp_path/out, as a second `toolchain` run would."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], env=ENV, cwd=REPO, text=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "held"
    yield tmp_path / "out"
    proc.kill()
    proc.wait()


def test_a_second_writer_stops_at_once_with_exit_6_and_writes_nothing(held, tiny_onnx, tmp_path):
    before = snapshot(tmp_path)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["quantize", str(tiny_onnx("bert").path), str(held)], catch_exceptions=False)
    assert result.exit_code == 6, result.output
    assert "another toolchain process is writing" in result.output and "Traceback" not in result.output
    assert time.monotonic() - started < 30  # refused before any work, not after quantizing
    assert snapshot(tmp_path) == before


def test_a_second_finetune_stops_before_training_and_leaves_nothing(held, tiny, tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "".join(f"film {i},{('good', 'bad')[i % 2]}\n" for i in range(40)))
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-m", "toolchain", "finetune", str(tiny("bert")), str(held), "--data",
                           str(data), "--epochs", "1"], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 6, done.stderr
    assert "another toolchain process is writing" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before, "no checkpoints, no partial folder"


def test_the_lock_is_released_when_the_writer_ends(tmp_path):
    with output_lock(tmp_path / "out"):
        with output_lock(tmp_path / "out"):  # re-entered by a stage inside a stage (prune's recovery distill)
            pass
    done = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(tmp_path / "out")],
                          env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "held" in done.stdout


# ---------------------------------------------------------------- every error is ours

FAULTS = [
    (OSError(errno.ENOSPC, "No space left on device"), 13, "No space left on device"),
    (RuntimeError("onnx: write failed: No space left on device"), 13, "No space left on device"),
    (OSError(errno.EACCES, "Permission denied"), 13, "Permission denied"),
    (MemoryError(), 1, "ran out of memory"),
    (KeyError("smoke"), INTERNAL_ERROR_EXIT, "internal error: KeyError"),
    (TypeError("'NoneType' object is not subscriptable"), INTERNAL_ERROR_EXIT, "internal error: TypeError"),
]


def _inject_at_first_toolchain_call(fault: BaseException):
    """A trace function that, once a command's body runs, raises `fault` from the first function it calls in
    any toolchain module (the stage, the loader, the data reader: whichever the command reaches first)."""
    armed = False

    def trace(frame, event, arg):
        nonlocal armed
        if event != "call":
            return None
        code = frame.f_code
        if code.co_qualname == "reports_errors.<locals>.wrapper":
            armed = True
            return None
        module = frame.f_globals.get("__name__", "")
        if armed and module.startswith("toolchain.") and module != "toolchain.cli" and code.co_name != "<module>":
            sys.settrace(None)
            raise fault
        return None

    return trace


def _argv(command: click.Command, tmp_path: Path) -> list[str]:
    """The smallest command line click accepts: every argument and required option given a path."""
    argv = [command.name]
    for param in command.params:
        if isinstance(param, click.Argument):
            argv.append(str(tmp_path / param.name))
        elif param.required:
            argv += [param.opts[0], str(tmp_path / param.name)]
    return argv


@pytest.mark.parametrize("fault, code, says", FAULTS, ids=[type(f).__name__ + str(c) for f, c, _ in FAULTS])
@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_turns_any_failure_into_one_error_line(name, fault, code, says, tmp_path):
    argv = _argv(main.commands[name], tmp_path)
    sys.settrace(_inject_at_first_toolchain_call(fault))
    try:
        result = CliRunner().invoke(main, argv, catch_exceptions=False)
    finally:
        sys.settrace(None)
    lines = result.output.rstrip("\n").splitlines()
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    assert len(lines) == 2 and lines[0].startswith("error: ") and says in lines[0], result.output
    assert lines[1].startswith("  fix: ")


def test_every_command_reports_its_errors():
    # a command without the wrapper would show tracebacks: each one added later must use it too
    unwrapped = [n for n, c in main.commands.items() if not hasattr(c.callback, "__wrapped__")]
    assert not unwrapped


def test_toolchain_debug_shows_the_traceback_for_a_bug_report(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLCHAIN_DEBUG", "1")
    sys.settrace(_inject_at_first_toolchain_call(KeyError("x")))
    try:
        with pytest.raises(KeyError):
            CliRunner().invoke(main, ["info", str(tmp_path)], catch_exceptions=False)
    finally:
        sys.settrace(None)


def test_a_full_disk_in_quantize_pre_processing_is_exit_13(tiny_onnx, tmp_path, monkeypatch):
    import onnxruntime.quantization.shape_inference as shape_inference

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "model-pre.onnx")

    monkeypatch.setattr(shape_inference, "quant_pre_process", full)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(main, ["quantize", str(tiny_onnx("bert").path), str(tmp_path / "int8")],
                                catch_exceptions=False)
    assert result.exit_code == 13, result.output
    assert "could not write" in result.output and "re-export" not in result.output
    assert snapshot(tmp_path) == before
