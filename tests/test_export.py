import numpy as np
import onnx
import pytest

from toolchain import parity
from toolchain.errors import BadModel, CheckFailed, InputNotFound, OutputExists, Unsupported
from toolchain.export import ExportConfig, export
from toolchain.runtime import make_session


@pytest.mark.parametrize("name", ["bert", "gpt2", "gpt2-past", "llama", "llama-past"])
def test_export_matches_pytorch_on_real_text(tiny_onnx, name):
    art = tiny_onnx(name)
    p = art.manifest.lineage[-1].metrics["parity"]
    assert p["max_abs_diff"] <= p["atol"]
    assert len(p["shapes"]) >= 2
    assert art.verify() == []
    assert art.format == "onnx" and art.manifest.model_type == name.split("-")[0]


def test_exported_classifier_has_dynamic_batch_and_sequence_axes(tiny_onnx):
    model = onnx.load(tiny_onnx("bert").onnx_path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims), "batch and sequence axes must be symbolic"


def test_export_with_past_declares_cache_inputs_and_outputs(tiny_onnx):
    session = make_session(tiny_onnx("llama-past").onnx_path)
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    # GQA: the tiny Llama has 2 key/value heads for 4 query heads, and the cache has 2 heads.
    assert {"past_key_values.0.key", "past_key_values.1.value"} <= inputs
    assert {"present.0.key", "present.1.value"} <= outputs
    past_shape = next(i.shape for i in session.get_inputs() if i.name == "past_key_values.0.key")
    assert past_shape[1] == 2


def test_exported_artifact_carries_tokenizer_and_config(tiny_onnx):
    names = set(tiny_onnx("gpt2").manifest.files)
    assert {"model.onnx", "config.json", "tokenizer.json"} <= names


def test_parity_failure_is_reported_and_nothing_is_written(tiny, tmp_path):
    # A tolerance no float32 graph can meet forces the failure path.
    with pytest.raises(CheckFailed, match="differs from PyTorch by"):
        export(tiny("bert"), ExportConfig(atol=1e-30), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parity_compare_finds_the_worst_output():
    ref = {"a": np.zeros((2, 3)), "b": np.ones((2,))}
    got = {"a": np.full((2, 3), 0.5), "b": np.ones((2,)) * 1.1}
    r = parity.compare(ref, got, atol=0.2)
    assert r.worst_output == "a" and r.max_abs_diff == pytest.approx(0.5) and not r.ok


def test_missing_path_is_input_not_found(tmp_path):
    with pytest.raises(InputNotFound):
        export(str(tmp_path / "nope"), ExportConfig(), tmp_path / "out")


def test_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "readme.txt").write_text("hi")
    with pytest.raises(BadModel, match="no config.json"):
        export(str(tmp_path / "m"), ExportConfig(), tmp_path / "out")


def test_with_past_on_a_classifier_is_unsupported(tiny, tmp_path):
    with pytest.raises(Unsupported, match="with-past"):
        export(tiny("bert"), ExportConfig(with_past=True), tmp_path / "out")


def test_existing_output_is_refused_unless_forced(tiny, tmp_path):
    export(tiny("bert"), ExportConfig(), tmp_path / "out")
    with pytest.raises(OutputExists):
        export(tiny("bert"), ExportConfig(), tmp_path / "out")
    assert export(tiny("bert"), ExportConfig(), tmp_path / "out", force=True).verify() == []


def test_onnx_artifact_as_export_source_is_unsupported(tiny_onnx, tmp_path):
    with pytest.raises(Unsupported, match="ONNX artifact"):
        export(str(tiny_onnx("bert").path), ExportConfig(), tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("name, with_past", [("minilm", False), ("smollm2-135m", True)])
def test_export_builtin_models(tmp_path, name, with_past):
    art = export(name, ExportConfig(with_past=with_past), tmp_path / name)
    p = art.manifest.lineage[-1].metrics["parity"]
    assert p["max_abs_diff"] <= p["atol"]


def test_min_top1_is_a_share():
    from toolchain.export import MIN_TOP1, ExportConfig

    assert ExportConfig().min_top1 == MIN_TOP1
    with pytest.raises(ValueError, match="share of positions"):
        ExportConfig(backend="genai", precision="int4", min_top1=1.5)
