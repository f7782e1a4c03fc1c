"""Nothing lost: a stage stopped at any point (SIGINT, SIGTERM, SIGKILL, an exception, a failed write)
leaves earlier artifacts as they were and nothing that looks finished; the next run resumes.

The kills hit real `python -m toolchain` processes, at moments chosen by watching the files they write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bad_inputs import Kit, snapshot
from toolchain import artifact as artifact_module
from toolchain.artifact import Artifact, write_artifact
from toolchain.cli import main

REPO = Path(__file__).parent.parent
# One thread each: the tiny model trains ~20x slower when torch's threads fight over shared cores.
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _data(folder: Path, n: int = 3000) -> Path:
    """Enough rows that evaluating validation and test (inside the atomic write) takes a moment."""
    words = ("good", "bad", "fun", "dull", "great", "awful")
    rows = "".join(f"the film was {words[i % 6]} and {words[i * 7 % 6]} {i},{('negative', 'positive')[i % 2]}\n"
                   for i in range(n))
    path = folder / "reviews.csv"
    path.write_text("text,label\n" + rows)
    return path


def _finetune_args(model: Path, data: Path, out: Path) -> list[str]:
    return ["finetune", str(model), str(out), "--data", str(data), "--epochs", "8", "--batch-size", "8",
            "--max-length", "16", "--max-train-samples", "320", "--force"]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "toolchain", *args], env=ENV, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, seen, sig: int, timeout: float = 600) -> None:
    """Send `sig` as soon as `seen()` is true; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not seen():
        assert proc.poll() is None, f"finished before the moment to kill it:\n{proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(sig)


def _complete_checkpoint(folder: Path) -> bool:
    """A checkpoint whose trainer_state.json (the Trainer's last write) parses: one the re-run can resume from.
    Mere existence is not enough: on a loaded machine the kill can land while the file is half-written."""
    for state in folder.glob(".out.checkpoints/checkpoint-*/trainer_state.json"):
        try:
            json.loads(state.read_text())
            return True
        except (OSError, ValueError):
            pass
    return False


def _rerun_resumes(args: list[str], out: Path, tmp_path: Path) -> Artifact:
    done = subprocess.run([sys.executable, "-m", "toolchain", *args], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    art = Artifact.load(out)
    assert art.manifest.lineage[-1].stage == "finetune"
    assert art.manifest.lineage[-1].metrics["resumed"] is True
    assert {"evaluate/reviews.csv/validation", "evaluate/reviews.csv/test"} <= set(art.manifest.results)
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0
    assert not list(tmp_path.glob(".out*")), "partial folders and checkpoints are gone once the artifact is written"
    return art


def test_finetune_killed_after_a_checkpoint_keeps_the_old_artifact_and_resumes(tiny, tiny_onnx, tmp_path):
    # SIGTERM, what kill, schedulers and containers send; SIGINT takes the same path (see below).
    sig = signal.SIGTERM
    out = tmp_path / "out"
    Kit(tiny, tiny_onnx, tmp_path).torch_artifact(out)  # the previous artifact, replaced only with --force
    before = snapshot(out)
    args = _finetune_args(tiny("bert"), _data(tmp_path), out)
    proc = _start(args)
    _kill_when(proc, lambda: _complete_checkpoint(tmp_path), sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert snapshot(out) == before and Artifact.load(out).verify() == []
    assert not list(tmp_path.glob(".partial-*"))
    _rerun_resumes(args, out, tmp_path)


def test_finetune_sigkilled_while_writing_leaves_nothing_finished_and_resumes(tiny, tmp_path):
    out = tmp_path / "out"
    args = _finetune_args(tiny("bert"), _data(tmp_path), out)
    proc = _start(args)
    # SIGKILL cannot be handled: only the write-to-a-hidden-folder-then-rename protocol protects `out`.
    _kill_when(proc, lambda: any(tmp_path.glob(".partial-out-*")), signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed write must not leave a folder that looks finished"
    assert list(tmp_path.glob(".partial-out-*")), "the half-written artifact stays hidden"
    _rerun_resumes(args, out, tmp_path)


def test_finetune_killed_then_data_edited_starts_fresh_instead_of_resuming(tiny, tmp_path):
    out = tmp_path / "out"
    data = _data(tmp_path)
    args = _finetune_args(tiny("bert"), data, out)
    proc = _start(args)
    _kill_when(proc, lambda: _complete_checkpoint(tmp_path), signal.SIGTERM)
    proc.communicate(timeout=300)
    assert _complete_checkpoint(tmp_path)
    data.write_text(data.read_text().replace("the film was", "this movie is"))  # same labels, other rows
    done = subprocess.run([sys.executable, "-m", "toolchain", *args], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "starting fresh: the data changed since the interrupted run" in done.stderr
    metrics = Artifact.load(out).manifest.lineage[-1].metrics
    assert metrics["resumed"] is False and "data changed" in metrics["started_fresh_because"]
    assert not list(tmp_path.glob(".out*"))


def test_failed_write_keeps_the_previous_artifact(tiny, tmp_path):
    # A real failed write: the process may not write files over 50 kB, so model.onnx (~150 kB) fails.
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["export", str(tiny("bert")), str(out)]).exit_code == 0
    before = snapshot(out)
    limit = 50_000
    code = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); from toolchain.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "export", str(tiny("bert")), str(out), "--force"], env=ENV,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 13, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: could not write") and lines[1].startswith("  fix: ") and len(lines) == 2
    assert snapshot(out) == before and Artifact.load(out).verify() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_exception_in_a_stage_keeps_the_previous_artifact(tmp_path):
    out = tmp_path / "out"
    _write(out)
    before = snapshot(out)
    with pytest.raises(ZeroDivisionError):
        with write_artifact(out, stage="unit", config={}, format="onnx", task="t", model_type="bert", force=True) as o:
            (o.folder / "model.onnx").write_bytes(b"half")
            1 / 0
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_kill_between_the_two_renames_restores_the_previous_artifact(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _write(out, b"old")
    real_rename = os.rename

    def killed_after_first(src, dst):
        real_rename(src, dst)
        if Path(dst).name.startswith(".partial-out-old-"):
            raise KeyboardInterrupt  # the moment where `out` is absent and the old artifact is aside

    monkeypatch.setattr(artifact_module.os, "rename", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        _write(out, b"new", force=True)
    monkeypatch.setattr(artifact_module.os, "rename", real_rename)
    assert not out.exists()
    monkeypatch.setattr(artifact_module, "_alive", lambda pid: False)  # as when that process has died
    artifact_module.prepare_output(out, force=True)  # what the next run does first
    assert (out / "model.onnx").read_bytes() == b"old" and Artifact.load(out).verify() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_partial_folders_of_a_live_run_or_another_output_are_left_alone(tmp_path):
    live = tmp_path / f".partial-out-{os.getppid()}"  # our parent process: alive
    other = tmp_path / ".partial-out-b-99999999"  # belongs to output "out-b", not "out"
    dead = tmp_path / ".partial-out-99999999"
    for p in (live, other, dead):
        p.mkdir()
    artifact_module.prepare_output(tmp_path / "out", force=False)
    assert live.exists() and other.exists() and not dead.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_in_a_command_unwinds_it_like_an_interrupt(sig, tmp_path, capsys):
    from toolchain import cli

    @cli.reports_errors
    def stage():
        with write_artifact(tmp_path / "out", stage="unit", config={}, format="onnx", task="t", model_type="b") as o:
            (o.folder / "model.onnx").write_bytes(b"half")
            os.kill(os.getpid(), sig)
            time.sleep(30)  # the handler interrupts this long before it ends

    handler = signal.getsignal(signal.SIGTERM)
    # A shell starts background jobs with SIGINT ignored (and Python keeps SIG_IGN): give the test the
    # disposition an interactive run has, which is what the CLI is meant to unwind.
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(SystemExit) as exit_info:
            stage()
    finally:
        signal.signal(signal.SIGINT, interrupt)
    assert exit_info.value.code == 128 + sig
    assert "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "the partial folder was removed on the way out"
    assert signal.getsignal(signal.SIGTERM) is handler, "the CLI restores the previous handler"


def _write(out: Path, payload: bytes = b"payload", force: bool = False) -> Artifact:
    with write_artifact(out, stage="unit", config={}, format="onnx", task="text-classification", model_type="bert",
                        force=force) as o:
        (o.folder / "model.onnx").write_bytes(payload)
    return Artifact.load(out)
