"""ARM64 emulation of a bundle: command construction, comparison, recording, and the errors when qemu or the
arm64 root is missing. The real emulated run (minutes, needs qemu and a one-time download) is marked slow."""

import json
import shutil

import pytest
from click.testing import CliRunner

from toolchain import emulate as em
from toolchain.artifact import Artifact
from toolchain.cli import main
from toolchain.errors import CheckFailed, MissingPackage, Unsupported
from toolchain.package import BUNDLE_FILE


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def bundle(tiny_run, tmp_path):
    return shutil.copytree(tiny_run[0] / "bundle", tmp_path / "bundle")


def test_emulated_command_runs_the_arm64_python_with_only_the_guest_wheels(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/host/site-packages")
    prefix = tmp_path / "arm64" / "cpu-neoverse-n1"
    cmd, env = em.emulated_command("/usr/bin/qemu-aarch64-static", prefix, "python3.11", ["predict.py", "--json"],
                                   "neoverse-n1", 1)
    assert cmd == ["/usr/bin/qemu-aarch64-static", "-cpu", "neoverse-n1", "-L", str(prefix),
                   str(prefix / "usr" / "bin" / "python3.11"), "predict.py", "--json"]
    assert env["PYTHONPATH"] == str(tmp_path / "arm64" / "site")  # never the host's x86 packages
    assert env["PYTHONNOUSERSITE"] == "1" and env["OMP_NUM_THREADS"] == "1" and env["TOKENIZERS_PARALLELISM"] == "false"


def test_cpuinfo_names_the_emulated_arm_core(tmp_path):
    text = em.cpuinfo("neoverse-n1")
    assert text.count("processor\t:") == 2 and "CPU implementer\t: 0x41" in text and "CPU part\t: 0xd0c" in text
    assert "asimddp" in text and "asimddp" not in em.cpuinfo("cortex-a53")  # A53: no dot product
    root = tmp_path / "arm64"
    (root / "sysroot" / "usr").mkdir(parents=True)
    (root / "sysroot" / "lib").mkdir()
    prefix = em.prefix_for("cortex-a53", root)
    assert (prefix / "proc" / "cpuinfo").read_text() == em.cpuinfo("cortex-a53")
    assert (prefix / "usr").resolve() == (root / "sysroot" / "usr").resolve() and (prefix / "lib").is_symlink()
    assert em.prefix_for("cortex-a53", root) == prefix  # reused


def test_emulate_config_validates():
    with pytest.raises(ValueError, match="cpu must be one of"):
        em.EmulateConfig(cpu="cortex-m4")
    with pytest.raises(ValueError, match="arch must be arm64"):
        em.EmulateConfig(arch="riscv64")


def _rows(logits, labels=("negative", "positive")):
    return [{"label": labels[int(row[1] > row[0])], "logits": list(row)} for row in logits]


def test_compare_predictions_wants_the_same_labels_and_logits_within_atol():
    host = _rows([[0.1, 0.9], [0.8, -0.2]])
    ok = em.compare_predictions("text-classification", host, _rows([[0.1004, 0.8999], [0.8, -0.2]]), 1e-3)
    assert ok["ok"] and ok["labels_match"] == 2 and ok["max_abs_diff"] == pytest.approx(4e-4)
    drift = em.compare_predictions("text-classification", host, _rows([[0.1, 0.95], [0.8, -0.2]]), 1e-3)
    assert not drift["ok"] and "logits differ by 0.05" in drift["problem"]
    flipped = em.compare_predictions("text-classification", host, _rows([[0.1, 0.9], [0.1, 0.2]]), 10.0)
    assert not flipped["ok"] and flipped["problem"] == "labels differ on 1 of 2 texts"
    lm = em.compare_predictions("text-generation", [{"token_ids": [1, 2]}], [{"token_ids": [1, 3]}], 1e-3)
    assert not lm["ok"] and lm["problem"] == "greedy tokens differ"


def _result(ok=True):
    predict = em.compare_predictions("text-classification", _rows([[0.1, 0.9]]), _rows([[0.1, 0.9]]), 1e-3)
    smoke = {"ok": ok, "problem": "" if ok else "model.ort differs", "models": {"model.onnx": 0.0, "model.ort": 2e-7},
             "platform": {"machine": "aarch64", "onnxruntime": "1.32.0"}}
    return em.result_record("/usr/bin/true", em.EmulateConfig(), {"python": "python3.11"}, smoke, predict, 1e-3)


def test_record_keeps_the_bundle_verifiable_and_stores_no_time(bundle):
    before = Artifact.load(bundle).manifest.files
    em.record(bundle, _result())
    info = json.loads((bundle / BUNDLE_FILE).read_text())
    rec = info["emulation"]["arm64"]["neoverse-n1"]
    assert rec["ok"] and rec["cpu"] == "neoverse-n1" and rec["smoke"]["models"]["model.ort"] == 2e-7
    assert "not" in rec["note"] and "speed" in rec["note"]
    assert not any(k.endswith(("_s", "_ms", "seconds")) for k in json.dumps(rec).split('"'))  # no timings
    art = Artifact.load(bundle, verify=True)  # bundle.json's new hash is in the manifest
    assert art.manifest.results["emulate/arm64/neoverse-n1"]["ok"] is True
    assert {k: v for k, v in art.manifest.files.items() if k != BUNDLE_FILE} == \
           {k: v for k, v in before.items() if k != BUNDLE_FILE}
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".partial-")]
    r = cli("verify", bundle)
    assert r.exit_code == 0, r.output
    em.record(bundle, _result(ok=False))  # a later run on the same core replaces its verdict
    assert json.loads((bundle / BUNDLE_FILE).read_text())["emulation"]["arm64"]["neoverse-n1"]["problem"] == \
        "model.ort differs"
    a53 = _result() | {"cpu": "cortex-a53"}
    em.record(bundle, a53)  # another core keeps its own
    assert set(json.loads((bundle / BUNDLE_FILE).read_text())["emulation"]["arm64"]) == {"neoverse-n1", "cortex-a53"}


def test_emulate_refuses_what_is_not_a_bundle(tiny_onnx):
    with pytest.raises(Unsupported, match="not an edge bundle"):
        em.emulate(tiny_onnx("bert").path, em.EmulateConfig())


def test_missing_qemu_is_exit_11_with_the_install_command(bundle, monkeypatch):
    monkeypatch.setattr(em.shutil, "which", lambda name: None)
    r = CliRunner().invoke(main, ["verify", str(bundle), "--emulate", "arm64"])
    assert r.exit_code == 11, r.output
    assert "qemu-user for aarch64 is not installed" in r.output and "apt-get install qemu-user-static" in r.output
    assert "Traceback" not in r.output
    assert "emulation" not in json.loads((bundle / BUNDLE_FILE).read_text())


def test_missing_arm64_root_without_apt_is_exit_11_with_the_fix(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(em, "find_qemu", lambda: "/usr/bin/qemu-aarch64-static")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no apt-cache, apt-get, dpkg-deb
    r = CliRunner().invoke(main, ["verify", str(bundle), "--emulate", "arm64"])
    assert r.exit_code == 11, r.output
    assert "apt-cache not found" in r.output and "dpkg --add-architecture arm64" in r.output
    assert not (tmp_path / "cache" / "emulate" / "arm64").exists()  # nothing half set up looks ready
    with pytest.raises(MissingPackage, match="no arm64 Python"):
        em.ensure_root(setup=False)


def test_a_disagreement_is_recorded_then_exits_7(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "emulate" / "arm64" / "site").mkdir(parents=True)
    monkeypatch.setattr(em, "find_qemu", lambda: "/usr/bin/qemu-aarch64-static")
    monkeypatch.setattr(em, "ensure_root", lambda setup: {"python": "python3.11"})
    monkeypatch.setattr(em, "prefix_for", lambda cpu, root: root / "cpu")
    calls = []

    def fake_run(cmd, env, where, timeout):  # x86 predict.py, arm64 predict.py, arm64 smoke: the 2nd flips a label
        calls.append(where)
        if len(calls) == 3:
            return {"ok": True, "problem": "", "models": {"model.onnx": 0.0}, "platform": {"machine": "aarch64"}}
        info = json.loads((bundle / BUNDLE_FILE).read_text())
        logits = [list(x) for x in info["smoke"]["logits"]]
        if len(calls) == 2:
            logits[0] = logits[0][::-1]
        return _rows(logits)

    monkeypatch.setattr(em, "_json_run", fake_run)
    with pytest.raises(CheckFailed, match="labels differ on 1 of 3"):
        em.emulate(bundle, em.EmulateConfig())
    assert calls[0] == "predict.py here (x86)" and calls[1].startswith("predict.py on arm64")
    rec = json.loads((bundle / BUNDLE_FILE).read_text())["emulation"]["arm64"]["neoverse-n1"]
    assert rec["ok"] is False and rec["problem"] == "labels differ on 1 of 3 texts"
    assert Artifact.load(bundle, verify=True)


def test_predict_py_smoke_flag_checks_this_machine(bundle):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "predict.py", "--smoke", "--json"], cwd=bundle, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] and set(result["models"]) == {"model.onnx", "model.ort"}


@pytest.mark.slow
def test_bundle_runs_on_emulated_arm64_like_on_x86(bundle):
    """The real thing: qemu-aarch64 + Debian's arm64 Python + PyPI's aarch64 wheels (set up once, cached)."""
    if not shutil.which("qemu-aarch64-static") and not shutil.which("qemu-aarch64"):
        pytest.skip("qemu-user is not installed (apt-get install qemu-user-static)")
    r = cli("verify", bundle, "--emulate", "arm64")
    assert r.exit_code == 0, r.output
    rec = json.loads((bundle / BUNDLE_FILE).read_text())["emulation"]["arm64"]["neoverse-n1"]
    assert rec["ok"] and rec["guest"]["machine"] == "aarch64" and rec["predict_py"]["labels_match"] == 3
    assert "model.ort" in rec["smoke"]["models"]
    assert "not" in r.output and "speed" in r.output
