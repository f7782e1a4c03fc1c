import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from toolchain.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_export_then_info_through_the_cli(tiny, tmp_path):
    r = run("export", tiny("bert"), tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "max abs diff" in r.output and ": ok" in r.output
    r = run("info", tmp_path / "out", "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["format"] == "onnx" and data["problems"] == []
    assert data["lineage"][-1]["stage"] == "export"


def test_export_json_reports_parity(tiny, tmp_path):
    r = run("export", tiny("gpt2"), tmp_path / "out", "--with-past", "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert data["parity"]["max_abs_diff"] <= data["parity"]["atol"]


def test_info_fails_on_a_changed_file(tiny, tmp_path):
    run("export", tiny("bert"), tmp_path / "out")
    with open(tmp_path / "out" / "model.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    r = run("info", tmp_path / "out")
    assert r.exit_code == 9 and "changed file model.onnx" in r.output


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["export", "/no/such/folder", "{out}"], 3, "does not exist"),
        (["export", "{empty}", "{out}"], 4, "is empty"),
        (["export", "not-a-builtin-xyz", "{out}"], 3, "not a built-in model"),
        (["export", "{bert}", "{out}", "--task", "translation"], 2, "translation"),
        (["export", "{bert}", "{out}", "--opset", "3"], 8, "opset"),
        (["info", "/no/such/artifact"], 3, "does not exist"),
        (["info", "{empty}"], 4, "not a toolchain artifact"),
    ],
)
def test_bad_input_gives_one_clear_error_and_a_distinct_exit(tiny, tmp_path, args, code, message):
    (tmp_path / "empty").mkdir()
    subs = {"{out}": str(tmp_path / "out"), "{empty}": str(tmp_path / "empty"), "{bert}": str(tiny("bert"))}
    r = run(*[subs.get(a, a) for a in args])
    assert r.exit_code == code, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tiny, tmp_path):
    assert run("export", tiny("bert"), tmp_path / "out").exit_code == 0
    r = run("export", tiny("bert"), tmp_path / "out")
    assert r.exit_code == 6 and "--force" in r.output
    assert run("export", tiny("bert"), tmp_path / "out", "--force").exit_code == 0


def test_help_does_not_import_torch():
    code = "import sys; from toolchain.cli import main; assert 'torch' not in sys.modules; print('lean')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "lean"


def test_a_busy_machine_gets_sleeping_openmp_threads_before_torch_loads(monkeypatch):
    from toolchain import cli

    monkeypatch.setenv("OMP_WAIT_POLICY", "unset-by-test")
    monkeypatch.delenv("OMP_WAIT_POLICY")  # registered, so the test's change is undone afterwards
    monkeypatch.setattr("os.getloadavg", lambda: (64.0, 64.0, 64.0))
    cli.calm_openmp()  # torch is loaded in this process: too late to matter, so it leaves the variable alone
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `toolchain ...` process
    cli.calm_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
