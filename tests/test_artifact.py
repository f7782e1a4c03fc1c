import json
import os

import pytest

from toolchain.artifact import MANIFEST, Artifact, Manifest, write_artifact
from toolchain.errors import BadModel, IntegrityError, OutputExists


def _write(out, **kw):
    with write_artifact(out, stage="unit", config={"k": 1}, format="onnx", task="text-classification",
                        model_type="bert", **kw) as o:
        (o.folder / "model.onnx").write_bytes(b"payload")
        (o.folder / "sub").mkdir()
        (o.folder / "sub" / "vocab.txt").write_text("a\nb\n")
        o.record.metrics["x"] = 1.5
    return Artifact.load(out)


def test_write_artifact_records_hashes_and_lineage(tmp_path):
    art = _write(tmp_path / "a")
    assert set(art.manifest.files) == {"model.onnx", "sub/vocab.txt"}
    assert art.manifest.lineage[-1].stage == "unit"
    assert art.manifest.lineage[-1].metrics == {"x": 1.5}
    assert art.manifest.lineage[-1].finished >= art.manifest.lineage[-1].started
    assert "toolchain" in art.manifest.lineage[-1].versions
    assert art.verify() == []


def test_manifest_round_trips_through_json(tmp_path):
    art = _write(tmp_path / "a")
    again = Manifest.from_json(art.manifest.to_json())
    assert again == art.manifest


def test_child_artifact_extends_lineage_and_records_parent_hash(tmp_path):
    parent = _write(tmp_path / "a")
    child = _write(tmp_path / "b", parent=parent)
    assert [r.stage for r in child.manifest.lineage] == ["unit", "unit"]
    assert child.manifest.lineage[-1].input_hash == parent.content_hash


def test_verify_finds_changed_missing_and_extra_files(tmp_path):
    art = _write(tmp_path / "a")
    (art.path / "model.onnx").write_bytes(b"paylOad")
    (art.path / "sub" / "vocab.txt").unlink()
    (art.path / "extra.bin").write_bytes(b"x")
    problems = Artifact.load(art.path).verify()
    assert any("changed file model.onnx" in p for p in problems)
    assert any("missing file sub/vocab.txt" in p for p in problems)
    assert any("extra file extra.bin" in p for p in problems)
    with pytest.raises(IntegrityError):
        Artifact.load(art.path, verify=True)


def test_failing_stage_leaves_nothing_that_looks_finished(tmp_path):
    out = tmp_path / "a"
    with pytest.raises(RuntimeError):
        with write_artifact(out, stage="unit", config={}, format="onnx", task="t", model_type="bert") as o:
            (o.folder / "model.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_failing_stage_keeps_the_previous_artifact_when_forced(tmp_path):
    art = _write(tmp_path / "a")
    before = (art.path / MANIFEST).read_text()
    with pytest.raises(RuntimeError):
        with write_artifact(art.path, stage="unit", config={}, format="onnx", task="t", model_type="bert",
                            force=True):
            raise RuntimeError("boom")
    assert (art.path / MANIFEST).read_text() == before
    assert Artifact.load(art.path).verify() == []


def test_existing_artifact_is_refused_unless_forced(tmp_path):
    _write(tmp_path / "a")
    with pytest.raises(OutputExists, match="--force"):
        _write(tmp_path / "a")
    assert _write(tmp_path / "a", force=True).verify() == []


def test_record_result_keeps_payload_hashes(tmp_path):
    art = _write(tmp_path / "a")
    h = art.content_hash
    art.record_result("evaluate/test", {"accuracy": 0.9})
    again = Artifact.load(art.path)
    assert again.manifest.results["evaluate/test"] == {"accuracy": 0.9}
    assert again.content_hash == h and again.verify() == []


@pytest.mark.parametrize("text", ["{", "[]", json.dumps({"schema_version": 99}),
                                  json.dumps({"schema_version": 1, "format": "onnx"})])
def test_bad_manifest_is_an_integrity_error(tmp_path, text):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(IntegrityError):
        Artifact.load(tmp_path)


def test_manifest_naming_a_file_outside_the_folder_is_refused(tmp_path):
    art = _write(tmp_path / "a")
    data = json.loads((art.path / MANIFEST).read_text())
    data["files"]["../../etc/passwd"] = "0" * 64
    (art.path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="outside"):
        Artifact.load(art.path)


def test_folder_without_manifest_is_not_an_artifact(tmp_path):
    with pytest.raises(BadModel, match="not a toolchain artifact"):
        Artifact.load(tmp_path)
