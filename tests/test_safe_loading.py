"""Safe loading: safetensors by default, pickles only when allowed and then weights-only, remote code only
with its flag, ONNX external data only from inside the model's folder, and `verify` catching any change."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bad_inputs import SITUATIONS, Kit, rehash
from toolchain.cli import main
from toolchain.errors import BadModel, UnsafeInput
from toolchain.modeling import load_model, resolve_model
from toolchain.runtime import check_onnx_file, make_session


@pytest.fixture
def build(tiny, tiny_onnx, tmp_path):
    """name -> a fresh folder of that bad-input situation under tmp_path."""
    kit = Kit(tiny, tiny_onnx, tmp_path)

    def make(name: str):
        SITUATIONS[name].build(tmp_path / name, kit)
        return tmp_path / name

    return make


def _logits(model) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([[2, 20, 30, 3]])).logits.numpy()


def test_pickle_weights_are_refused_unless_allowed_then_read_weights_only(build, tiny, monkeypatch):
    import torch

    folder = build("pickle_only")
    with pytest.raises(UnsafeInput, match="only pickle weights"):
        load_model(resolve_model(folder), "text-classification")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("weights_only")) or real_load(*a, **kw))
    model = load_model(resolve_model(folder), "text-classification", allow_pickle=True)
    assert calls and all(w is True for w in calls), f"every torch.load was weights_only: {calls}"
    reference = load_model(resolve_model(tiny("bert")), "text-classification")
    assert np.allclose(_logits(model), _logits(reference), atol=1e-7)


def test_hostile_pickle_does_not_run_even_when_pickles_are_allowed(build, tmp_path):
    folder = build("hostile_pickle")
    with pytest.raises(UnsafeInput, match="posix.system"):
        load_model(resolve_model(folder), "text-classification", allow_pickle=True)
    assert not (tmp_path / "PICKLE-RAN").exists()
    # The same file, unpickled without weights_only, does run its code: the test's pickle is real.
    import torch

    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert (tmp_path / "PICKLE-RAN").exists()


def test_remote_code_runs_only_with_its_flag(build, tmp_path):
    folder = build("custom_code")
    with pytest.raises(UnsafeInput, match="custom code"):
        resolve_model(folder).config
    with pytest.raises(UnsafeInput, match="custom code"):
        load_model(resolve_model(folder), "text-classification")
    assert not (tmp_path / "CODE-RAN").exists()
    model = load_model(resolve_model(folder, trust_remote_code=True), "text-classification", trust_remote_code=True)
    assert type(model).__name__ == "EvilModel" and (tmp_path / "CODE-RAN").exists()


@pytest.mark.parametrize("name", ["onnx_extdata_up", "onnx_extdata_abs"])
def test_onnx_external_data_outside_the_folder_is_refused(build, name):
    folder = build(name)
    for load in (check_onnx_file, make_session):
        with pytest.raises(UnsafeInput, match="outside the model's folder"):
            load(folder / "model.onnx")


def test_onnx_external_data_through_a_symlink_is_refused(tiny_onnx, tmp_path):
    import os

    import onnx

    m = onnx.load(str(tiny_onnx("bert").onnx_path))
    tensor = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    (tmp_path / "outside.bin").write_bytes(tensor.raw_data)
    n = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(n))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(m, str(folder / "model.onnx"))
    # The name looks local; the file is a link to one outside the folder.
    os.symlink(tmp_path / "outside.bin", folder / "weights.bin")
    with pytest.raises(UnsafeInput, match="outside the model's folder"):
        check_onnx_file(folder / "model.onnx")


def test_onnx_external_data_beside_the_model_is_accepted(tiny_onnx, tmp_path):
    import onnx

    m = onnx.load(str(tiny_onnx("bert").onnx_path))
    onnx.save(m, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    assert (tmp_path / "model.onnx.data").stat().st_size > 0
    check_onnx_file(tmp_path / "model.onnx")
    session = make_session(tmp_path / "model.onnx")
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_verify_reports_every_changed_missing_and_extra_file(build):
    folder = build("onnx_art")
    (folder / "vocab.txt").unlink()
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    (folder / "extra.bin").write_bytes(b"x")
    result = CliRunner().invoke(main, ["verify", str(folder), "--json"])
    assert result.exit_code == 9
    report = json.loads(result.stdout)
    assert sorted(p.split(" (")[0] for p in report["problems"]) == [
        "changed file config.json", "extra file extra.bin", "missing file vocab.txt"]
    assert "and 2 more" in result.stderr


def test_verify_passes_an_intact_artifact_and_smoke_runs_it(build):
    folder = build("onnx_art")
    result = CliRunner().invoke(main, ["verify", str(folder), "--smoke", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == [] and report["kind"] == "onnx artifact"
    assert report["smoke"]["outputs"]["logits"] == [2, 2] and report["smoke"]["finite"] is True


def test_verify_smoke_catches_a_model_that_parses_but_does_not_run(build):
    import onnx

    folder = build("onnx_art")
    m = onnx.load(str(folder / "model.onnx"))
    m.graph.input[0].name = "renamed_input"  # the graph now reads an input nobody feeds
    onnx.save(m, str(folder / "model.onnx"))
    rehash(folder)
    result = CliRunner().invoke(main, ["verify", str(folder), "--smoke"])
    assert result.exit_code == BadModel.exit_code and "error: " in result.output, result.output


def test_verify_passes_a_torch_artifact(build):
    result = CliRunner().invoke(main, ["verify", str(build("torch_art"))])
    assert result.exit_code == 0 and "every hash matches" in result.output
