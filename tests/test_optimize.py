import numpy as np
import onnx
import pytest

from toolchain import parity
from toolchain.artifact import Artifact
from toolchain.errors import BadModel, CheckFailed, Unsupported
from toolchain.optimize import OptimizeConfig, attention_shape, optimize, optimizer_type
from toolchain.runtime import make_session


@pytest.fixture(scope="module")
def fused_bert(tiny_onnx, tmp_path_factory):
    return optimize(tiny_onnx("bert"), OptimizeConfig(), tmp_path_factory.mktemp("opt") / "bert")


def test_optimize_fuses_bert_and_records_the_fusions(fused_bert):
    m = fused_bert.manifest.lineage[-1].metrics
    # The tiny BERT has 2 layers: one attention and one BiasGelu per layer. On CPU the residual Add and its
    # LayerNorm stay two ops: ORT's SkipLayerNormalization kernel is slower than both together.
    assert m["fusions"] == {"Attention": 2, "EmbedLayerNormalization": 1, "BiasGelu": 2}
    assert m["nodes_after"] < m["nodes_before"] and m["warnings"] == []
    ops = [n.op_type for n in onnx.load(fused_bert.onnx_path).graph.node]
    assert "Attention" in ops and ops.count("LayerNormalization") == 4
    assert "SkipLayerNormalization" not in ops and "Softmax" not in ops
    assert m["parity"]["max_abs_diff"] <= m["parity"]["atol"] == 1e-3
    assert m["size_bytes_before"] > 0 and m["size_bytes_after"] > 0


def test_skip_layer_norm_fuses_on_request_and_cpu_sessions_never_refuse_it(tiny_onnx, tmp_path, monkeypatch):
    art = optimize(tiny_onnx("bert"), OptimizeConfig(skip_layer_norm=True), tmp_path / "sln")
    assert art.manifest.lineage[-1].metrics["fusions"]["SkipLayerNormalization"] == 4
    import onnxruntime as ort

    seen = {}
    real = ort.InferenceSession

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    make_session(tiny_onnx("bert").onnx_path)
    assert seen["disabled_optimizers"] == ["SkipLayerNormFusion"]  # ORT would fuse Add + LayerNorm again


def test_optimized_artifact_keeps_tokenizer_lineage_and_hashes(fused_bert):
    assert {"model.onnx", "config.json", "tokenizer.json"} <= set(fused_bert.manifest.files)
    assert [r.stage for r in fused_bert.manifest.lineage] == ["export", "optimize"]
    assert fused_bert.verify() == []


@pytest.mark.parametrize("name", ["gpt2-past", "llama-past"])
def test_optimize_decoders_with_past_checks_the_cache_path(tiny_onnx, tmp_path, name):
    art = optimize(tiny_onnx(name), OptimizeConfig(), tmp_path / "out")
    m = art.manifest.lineage[-1].metrics
    assert m["fusions"], "decoders fuse at least their layer norms"
    assert m["optimizer_model_type"] == "gpt2"
    # present.* outputs are compared too: the cache made by the parent is fed to both graphs.
    assert any(k.startswith("present.") for k in m["parity"]["per_output"])
    assert m["parity"]["max_abs_diff"] <= m["parity"]["atol"]


def test_fp16_keeps_inputs_and_outputs_float32(tiny_onnx, tmp_path):
    art = optimize(tiny_onnx("bert"), OptimizeConfig(fp16=True), tmp_path / "out")
    model = onnx.load(art.onnx_path)
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) > 5
    p = art.manifest.lineage[-1].metrics["parity"]
    assert p["rel_l2_diff"] <= p["rtol"]
    assert art.onnx_path.stat().st_size < 0.7 * Artifact.load(tiny_onnx("bert").path).onnx_path.stat().st_size


def test_fp16_io_gives_float16_outputs(tiny_onnx, tmp_path):
    art = optimize(tiny_onnx("bert"), OptimizeConfig(fp16=True, keep_io_types=False), tmp_path / "out")
    outputs = onnx.load(art.onnx_path).graph.output
    assert outputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_optimize_parity_failure_writes_nothing(tiny_onnx, tmp_path):
    with pytest.raises(CheckFailed, match="differs from its parent"):
        optimize(tiny_onnx("bert"), OptimizeConfig(atol=1e-30), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compare_onnx_of_a_graph_with_itself_is_exact(tiny_onnx):
    art = tiny_onnx("llama-past")
    from toolchain.modeling import ModelSource, load_tokenizer

    tok = load_tokenizer(ModelSource(str(art.path), str(art.path), local=True))
    session = make_session(art.onnx_path)
    result = parity.compare_onnx(session, session, tok, "text-generation", atol=1e-9)
    assert result.ok and result.max_abs_diff == 0.0 and "logits" in result.per_output


def test_attention_shape_from_config_and_pruned_heads():
    cfg = OptimizeConfig()
    assert attention_shape({"num_attention_heads": 12, "hidden_size": 384}, cfg) == (12, 384)
    assert attention_shape({"n_head": 4, "n_embd": 32}, cfg) == (4, 32)
    # Pruned layers keep different head counts: the optimizer must read them from the graph.
    assert attention_shape({"num_attention_heads": 12, "hidden_size": 384, "pruned_heads": {"0": [1, 2]}}, cfg) == (0, 0)
    shapes = {"num_heads": [6, 6, 6], "intermediate_size": [768] * 3}  # toolchain prune's record: detect per layer
    assert attention_shape({"num_attention_heads": 12, "hidden_size": 384, "toolchain_shapes": shapes}, cfg) == (0, 0)
    shapes = {"num_heads": [12, 12, 12], "intermediate_size": [768] * 3}  # FFN-only pruning: heads as configured
    assert attention_shape({"num_attention_heads": 12, "hidden_size": 384, "toolchain_shapes": shapes}, cfg) == (12, 384)
    assert attention_shape({"num_attention_heads": 12, "hidden_size": 384}, OptimizeConfig(num_heads=6)) == (6, 384)


def test_optimizer_type_maps_families_and_refuses_unknown():
    assert optimizer_type("distilbert") == "bert" and optimizer_type("llama") == "gpt2"
    with pytest.raises(Unsupported, match="--model-type"):
        optimizer_type("mamba")


def test_optimize_refuses_a_folder_that_is_not_an_artifact(tiny, tmp_path):
    with pytest.raises(BadModel, match="not a toolchain artifact"):
        optimize(tiny("bert"), OptimizeConfig(), tmp_path / "out")


def test_optimize_config_validates():
    with pytest.raises(ValueError, match="opt_level"):
        OptimizeConfig(opt_level=3)
    with pytest.raises(ValueError, match="fp16"):
        OptimizeConfig(keep_io_types=False)


def test_relative_parity_is_the_l2_error_and_ignores_a_logit_shift():
    r = parity.compare({"a": np.array([3.0, 4.0])}, {"a": np.array([3.0, 4.5])}, atol=0.2, relative=True)
    assert r.max_abs_diff == pytest.approx(0.1) and r.ok and r.as_metrics()["rel_l2_diff"] == r.max_abs_diff
    logits = np.random.default_rng(0).normal(size=(2, 3, 7))
    same = parity._log_probs({"logits": logits + 5.0})["logits"]
    assert np.allclose(same, parity._log_probs({"logits": logits})["logits"])
