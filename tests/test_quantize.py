import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from toolchain.errors import CheckFailed, DataError, Unsupported
from toolchain.optimize import OptimizeConfig, optimize
from toolchain.quantize import QuantizeConfig, quantize
from toolchain.quantize import graph, loop, stage
from toolchain.quantize.presets import PRESETS, detect_preset
from toolchain.quantize.stage import resolve_settings

# Few samples keep the tests fast; the warning this gives is asserted where it matters. The module's
# fixtures pin the VNNI preset (int8 weights) whatever the host; every preset is run further down.
STATIC = dict(mode="static", calibration_samples=16)
VNNI = dict(preset="avx512_vnni")
ONNX_TYPE = {"quint8": onnx.TensorProto.UINT8, "qint8": onnx.TensorProto.INT8}


def _ops(art) -> dict:
    return dict(graph.op_counts(onnx.load(art.onnx_path)))


def _metrics(art) -> dict:
    return art.manifest.lineage[-1].metrics


def _weights_of(model, op_type: str) -> list:
    inits = {t.name: t for t in model.graph.initializer}
    return [inits[n.input[0]] for n in model.graph.node if n.op_type == op_type and n.input[0] in inits]


@pytest.fixture(scope="module")
def dynamic_bert(tiny_onnx, tmp_path_factory):
    return quantize(tiny_onnx("bert"), QuantizeConfig(**VNNI), tmp_path_factory.mktemp("q") / "dyn")


@pytest.fixture(scope="module")
def static_bert(tiny_onnx, tmp_path_factory):
    return quantize(tiny_onnx("bert"), QuantizeConfig(**STATIC, **VNNI), tmp_path_factory.mktemp("q") / "static")


def test_dynamic_quantize_uses_integer_matmuls_with_int8_weights(dynamic_bert):
    ops = _ops(dynamic_bert)
    # 2 layers x 6 weight MatMuls + pooler + classifier; activations quantized at run time.
    assert ops["MatMulInteger"] == 14 and ops["DynamicQuantizeLinear"] >= 4
    assert "QuantizeLinear" not in ops
    model = onnx.load(dynamic_bert.onnx_path)
    inits = {t.name: t for t in model.graph.initializer}
    weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert weights and all(w.data_type == onnx.TensorProto.INT8 for w in weights)
    assert _metrics(dynamic_bert)["quantized_ops"]["MatMulInteger"] == 14


def test_static_quantize_inserts_qdq_pairs_with_int8_weights(static_bert):
    ops = _ops(static_bert)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    # Only the head's two Gemms (pooler, classifier) take the integer kernel: QDQ Gemm runs as float in ORT.
    assert ops["MatMulInteger"] == 2
    model = onnx.load(static_bert.onnx_path)
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert sum(n.op_type == "MatMul" and n.input[0] in dq_outputs for n in model.graph.node) == 12
    stored = _weights_of(onnx.load(static_bert.onnx_path), "DequantizeLinear")
    weights = [w for w in stored if len(w.dims) == 2]  # 1-D ones are Gemm biases, stored as int32
    assert {w.data_type for w in weights} <= {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    assert sum(w.data_type == onnx.TensorProto.INT8 for w in weights) >= 12
    m = _metrics(static_bert)
    assert m["weights"]["int8_elements"] > 10 * m["weights"]["float32_elements"]


def test_static_keeps_attention_score_matmuls_in_float32(static_bert):
    m = _metrics(static_bert)
    assert m["fp32_reasons"] == {"activation x activation MatMul": 4}
    model = onnx.load(static_bert.onnx_path)
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    for node in model.graph.node:
        if node.name in m["fp32_nodes"]:
            assert not set(node.input) & dq_outputs, f"{node.name} should read float32 inputs"


def test_quantized_artifacts_record_sizes_settings_and_parity(dynamic_bert, static_bert):
    for art in (dynamic_bert, static_bert):
        m = _metrics(art)
        assert m["size_bytes_after"] < m["size_bytes_before"]
        assert m["size_ratio"] == pytest.approx(m["size_bytes_before"] / m["size_bytes_after"], rel=0.01)
        assert m["settings"]["preset"] == "avx512_vnni" and m["settings"]["detected"] == "chosen by the user"
        assert m["parity"]["rel_l2_diff"] <= m["parity"]["rtol"]
        assert art.verify() == [] and [r.stage for r in art.manifest.lineage] == ["export", "quantize"]


@pytest.mark.parametrize("name, mode", [("bert", "dynamic"), ("bert", "static"), ("gpt2-past", "dynamic"),
                                        ("llama-past", "static"), ("llama", "dynamic")])
def test_int8_agrees_with_float32_on_tiny_models(tiny_onnx, tmp_path, name, mode):
    data = None if name == "bert" else "hamlet"
    art = quantize(tiny_onnx(name), QuantizeConfig(mode=mode, calibration_samples=16, data=data), tmp_path / "q")
    p = _metrics(art)["parity"]
    # Measured 0.01-0.02 on these models; a broken scale or zero point gives 0.3 and more.
    assert p["rel_l2_diff"] < 0.1
    if "past" in name:
        assert any(k.startswith("present.") for k in p["per_output"])


def test_dynamic_quantizes_gpt2_gemm_projections(tiny_onnx, tmp_path):
    art = quantize(tiny_onnx("gpt2"), QuantizeConfig(data="hamlet"), tmp_path / "q")
    ops = _ops(art)
    # GPT-2 exports its Conv1D projections (4 per layer, 2 layers) as Gemm: all become integer MatMuls.
    assert "Gemm" not in ops and ops["MatMulInteger"] >= 8


def test_exclude_node_patterns_keep_every_matching_node_float(tiny_onnx, tmp_path):
    # The smollm2 recipe keeps all 30 down_proj MatMuls in float32 with one pattern.
    art = quantize(tiny_onnx("llama-past"), QuantizeConfig(data="hamlet", exclude_nodes=("*/mlp/down_proj/*",)),
                   tmp_path / "q")
    model = onnx.load(art.onnx_path)
    floats = [n.name for n in model.graph.node if n.op_type == "MatMul" and "down_proj" in n.name]
    assert len(floats) == 2 and set(floats) <= set(_metrics(art)["fp32_nodes"])  # 2 layers
    assert _metrics(art)["fp32_reasons"]["user"] == 2
    assert not any("down_proj" in n.name for n in model.graph.node if n.op_type == "MatMulInteger")
    assert any("up_proj" in n.name for n in model.graph.node if n.op_type == "MatMulInteger")
    with pytest.warns(UserWarning, match="not in the graph: \\*/no_such/\\*"):
        quantize(tiny_onnx("llama-past"), QuantizeConfig(data="hamlet", exclude_nodes=("*/no_such/*",)), tmp_path / "q2")


def test_dynamic_on_a_fused_graph_uses_quantized_attention(tiny_onnx, tmp_path):
    fused = optimize(tiny_onnx("bert"), OptimizeConfig(), tmp_path / "fused")
    art = quantize(fused, QuantizeConfig(), tmp_path / "q")
    ops = _ops(art)
    assert ops["QAttention"] == 2 and ops["QEmbedLayerNormalization"] == 1
    assert _metrics(art)["parity"]["rel_l2_diff"] < 0.1


def test_static_on_a_fused_graph_gives_attention_integer_kernels(tiny_onnx, tmp_path):
    fused = optimize(tiny_onnx("bert"), OptimizeConfig(), tmp_path / "fused")
    art = quantize(fused, QuantizeConfig(**STATIC), tmp_path / "q")
    ops = _ops(art)
    # QDQ has no fused-attention kernel: MatMuls are calibrated QDQ, attention gets QAttention.
    assert ops["QAttention"] == 2 and ops["QEmbedLayerNormalization"] == 1 and ops["QuantizeLinear"] > 0
    assert "Attention" not in ops and _metrics(art)["parity"]["rel_l2_diff"] < 0.1


def test_static_without_attention_in_op_types_warns_it_stays_float(tiny_onnx, tmp_path):
    fused = optimize(tiny_onnx("bert"), OptimizeConfig(), tmp_path / "fused")
    with pytest.warns(UserWarning, match="Attention will keep float32 weights"):
        art = quantize(fused, QuantizeConfig(**STATIC, op_types=("MatMul", "EmbedLayerNormalization")), tmp_path / "q")
    assert _ops(art)["Attention"] == 2


def test_already_quantized_model_is_refused(dynamic_bert, tmp_path):
    with pytest.raises(Unsupported, match="already quantized.*MatMulInteger"):
        quantize(dynamic_bert, QuantizeConfig(), tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_too_few_calibration_samples_is_an_error_and_few_a_warning(tiny_onnx, tmp_path):
    with pytest.raises(DataError, match="too few"):
        quantize(tiny_onnx("bert"), QuantizeConfig(mode="static", calibration_samples=4), tmp_path / "q")
    with pytest.warns(UserWarning, match="16 calibration samples"):
        art = quantize(tiny_onnx("bert"), QuantizeConfig(**STATIC), tmp_path / "q2")
    assert any("16 calibration samples" in w for w in _metrics(art)["warnings"])


def test_op_types_the_model_lacks_warn_or_fail(tiny_onnx, tmp_path):
    with pytest.warns(UserWarning, match="Conv do not occur"):
        art = quantize(tiny_onnx("bert"), QuantizeConfig(op_types=("MatMul", "Conv")), tmp_path / "q")
    assert _ops(art)["MatMulInteger"] > 0
    with pytest.raises(Unsupported, match="none of the op types Conv"):
        quantize(tiny_onnx("bert"), QuantizeConfig(op_types=("Conv",)), tmp_path / "q2")
    with pytest.raises(Unsupported, match="no int8 kernel for Softmax"):
        quantize(tiny_onnx("bert"), QuantizeConfig(op_types=("MatMul", "Softmax")), tmp_path / "q3")


def test_mask_guard_finds_the_attention_mask_path(tiny_onnx):
    model = onnx.load(tiny_onnx("bert").onnx_path)
    nodes, tensors = graph.mask_guard(model)
    by_name = {n.name: n for n in model.graph.node}
    kinds = {by_name[n].op_type for n in nodes}
    assert {"Add", "Softmax", "Where"} <= kinds  # scores + mask, and what reads the masked scores
    assert "MatMul" not in kinds and tensors
    adds = [n for n in nodes if by_name[n].op_type == "Add"]
    assert len(adds) == 2 and all("attention" in n for n in adds)  # one per layer, no residual adds


def test_histogram_calibration_of_a_causal_mask_needs_the_guard(tiny_onnx, tmp_path):
    ops = ("MatMul", "Gather", "Where")  # Where applies GPT-2's causal mask
    cfg = dict(mode="static", calibration_method="entropy", calibration_samples=16, data="hamlet", op_types=ops)
    with pytest.raises(CheckFailed, match="mask fill values"):
        quantize(tiny_onnx("gpt2-past"), QuantizeConfig(**cfg, mask_guard=False), tmp_path / "q")
    art = quantize(tiny_onnx("gpt2-past"), QuantizeConfig(**cfg), tmp_path / "q2")
    assert _metrics(art)["fp32_reasons"]["attention mask"] >= 2


def _matmul_weights(model) -> list:
    """The stored weights behind the DequantizeLinear nodes that feed MatMuls' B input (ORT's QDQ Gather
    treats an embedding table as an activation: it gets the activation type)."""
    inits = {t.name: t for t in model.graph.initializer}
    b_inputs = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    return [inits[n.input[0]] for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.output[0] in b_inputs and n.input[0] in inits]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_quantize_assertions_hold_under_every_detected_preset(tiny_onnx, tmp_path, monkeypatch, preset):
    # What a host of each kind detects (AVX2-only hosts: avx2, uint8 weights): the two tests above once
    # assumed VNNI's int8 weights and failed on AVX2 machines. Nothing here may depend on the real CPU.
    monkeypatch.setattr(stage, "detect_preset", lambda: (preset, f"test: a {preset} host"))
    p = PRESETS[preset]
    dyn = quantize(tiny_onnx("bert"), QuantizeConfig(), tmp_path / "dyn")
    s = _metrics(dyn)["settings"]
    assert (s["preset"], s["weight_type"], s["reduce_range"]) == (preset, p.weight_type, p.reduce_range)
    ops = _ops(dyn)
    assert ops["MatMulInteger"] == 14 and ops["DynamicQuantizeLinear"] >= 4 and "QuantizeLinear" not in ops
    model = onnx.load(dyn.onnx_path)
    inits = {t.name: t for t in model.graph.initializer}
    weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert weights and {w.data_type for w in weights} == {ONNX_TYPE[p.weight_type]}
    values = np.concatenate([onnx.numpy_helper.to_array(w).astype(np.int32).ravel() for w in weights])
    span = values.max() - values.min()
    assert span <= 128 if p.reduce_range else span > 128  # 7-bit weights (int8: -64..64) only with reduce_range
    assert _metrics(dyn)["parity"]["rel_l2_diff"] < 0.1

    static = quantize(tiny_onnx("bert"), QuantizeConfig(**STATIC), tmp_path / "static")
    ops, model = _ops(static), onnx.load(static.onnx_path)
    assert ops["QuantizeLinear"] > 0 and ops["MatMulInteger"] == 2  # the head's Gemms: integer kernels
    assert len(_matmul_weights(model)) == 12 and {w.data_type for w in _matmul_weights(model)} == {ONNX_TYPE[p.weight_type]}
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and {z.data_type for z in zero_points} == {ONNX_TYPE[p.activation_type]}
    assert _metrics(static)["parity"]["rel_l2_diff"] < 0.1


def test_presets_follow_the_cpu_and_options_override_them():
    assert detect_preset({"avx2", "avx512f", "avx512_vnni"}, "x86_64")[0] == "avx512_vnni"
    assert detect_preset({"avx2", "avx512f"}, "x86_64")[0] == "avx512"
    assert detect_preset({"avx2"}, "x86_64")[0] == "avx2"
    assert detect_preset(set(), "aarch64")[0] == "arm64"
    s = resolve_settings(QuantizeConfig(mode="static", preset="avx512"))
    assert (s["activation_type"], s["weight_type"], s["reduce_range"]) == ("quint8", "qint8", True)
    s = resolve_settings(QuantizeConfig(mode="static", preset="avx512", reduce_range=False, activation_type="qint8"))
    assert (s["activation_type"], s["reduce_range"]) == ("qint8", False)


def test_quantize_config_validates():
    with pytest.raises(ValueError, match="dynamic mode"):
        QuantizeConfig(activation_type="qint8")
    with pytest.raises(ValueError, match="not both"):
        QuantizeConfig(max_accuracy_drop=0.01, max_perplexity_increase=0.05)
    with pytest.raises(ValueError, match="preset"):
        QuantizeConfig(preset="avx9000")


def test_accuracy_loop_stops_at_the_first_model_within_budget():
    ranking = [{"tensor": f"t{i}", "sqnr_db": i, "nodes": [f"n{i}"]} for i in range(10)]
    built = []

    def build(fallback):
        built.append(list(fallback))
        return Path(f"m{len(built)}")

    # Accuracy recovers by one point per node kept in float32; the budget needs 3 of them.
    score = lambda path: 0.80 + 0.01 * len(built[-1])  # noqa: E731
    budget = loop.Budget("accuracy", parent=0.84, limit=0.01)
    result, path = loop.accuracy_loop(build, score, budget, lambda p: ranking, max_iterations=6)
    assert [len(it.fp32_nodes) for it in result.iterations] == [0, 1, 3]  # 1, then 2 more: doubling
    assert result.chosen.fp32_nodes == ["n0", "n1", "n2"] and result.chosen.within_budget
    assert path == Path("m3") and len(built) == 3


def test_accuracy_loop_reports_the_best_when_the_budget_is_never_met():
    ranking = [{"tensor": "t", "sqnr_db": 1.0, "nodes": ["a"]}, {"tensor": "u", "sqnr_db": 2.0, "nodes": ["b"]}]
    values = iter([2.0, 1.5, 1.8])  # perplexities: the middle one is best
    budget = loop.Budget("perplexity", parent=1.0, limit=0.1)
    result, path = loop.accuracy_loop(lambda f: Path(str(len(f))), lambda p: next(values), budget,
                                      lambda p: ranking, max_iterations=5)
    assert not result.chosen.within_budget and result.best == 1 and path == Path("1")
    assert result.chosen.cost == pytest.approx(0.5)


def test_static_loop_on_a_causal_lm_records_iterations_and_fallbacks(tiny_onnx, tmp_path, monkeypatch):
    # A random tiny LM's int8 perplexity can even beat float32's: make the budget unreachable, so the
    # loop runs all its rounds and reports the best it found.
    monkeypatch.setattr(loop.Budget, "within", lambda self, value: False)
    cfg = QuantizeConfig(mode="static", calibration_samples=8, data="hamlet", max_perplexity_increase=0.01,
                         max_eval_tokens=200, max_iterations=2)
    art = quantize(tiny_onnx("llama"), cfg, tmp_path / "q")
    m = _metrics(art)
    assert m["budget"]["metric"] == "perplexity" and len(m["iterations"]) == 3
    assert m["within_budget"] is False and any("budget not met" in w for w in m["warnings"])
    chosen = m["iterations"][m["chosen_iteration"]]
    assert chosen["cost"] == min(it["cost"] for it in m["iterations"])
    assert set(m["fallback_nodes"]) <= set(m["fp32_nodes"])
    assert m["sensitivity"] and m["sensitivity"][0]["sqnr_db"] <= m["sensitivity"][-1]["sqnr_db"]


def test_loop_within_budget_at_once_keeps_everything_quantized(tiny_onnx, tmp_path):
    # The tiny classifier's labels are negative/positive: give it data with those names.
    rows = "\n".join(f"the film is {'good' if i % 2 else 'bad'} {i},{'positive' if i % 2 else 'negative'}"
                     for i in range(60))
    (tmp_path / "d.csv").write_text("text,label\n" + rows + "\n")
    cfg = QuantizeConfig(max_accuracy_drop=0.5, data=str(tmp_path / "d.csv"))
    art = quantize(tiny_onnx("bert"), cfg, tmp_path / "q")
    m = _metrics(art)
    assert m["within_budget"] and len(m["iterations"]) == 1 and m["fallback_nodes"] == []
    assert m["budget"]["split"] == "validation" and m["budget"]["batch_size"] == 1


def test_rank_activations_orders_by_quantization_noise(tiny_onnx, static_bert, tmp_path):
    from toolchain.quantize.calibration import preprocess, sample_feeds
    from toolchain.data import load_classification
    from toolchain.modeling import ModelSource, load_tokenizer
    from toolchain.runtime import make_session

    src = tiny_onnx("bert")
    preprocess(src.onnx_path, tmp_path / "float.onnx")
    tok = load_tokenizer(ModelSource(str(src.path), str(src.path), local=True))
    feeds = sample_feeds(make_session(tmp_path / "float.onnx"), tok, load_classification("rotten-tomatoes"), 8, 64)
    owners = {n.input[0]: [n.name] for n in onnx.load(tmp_path / "float.onnx").graph.node if n.op_type == "MatMul"}
    ranking = loop.rank_activations(tmp_path / "float.onnx", static_bert.onnx_path, feeds, owners)
    assert len(ranking) >= 4
    sqnr = [r["sqnr_db"] for r in ranking]
    assert sqnr == sorted(sqnr) and all(np.isfinite(sqnr)) and 0 < sqnr[0] < 60


def test_cli_quantize_and_optimize_json(tiny_onnx, tmp_path):
    from click.testing import CliRunner

    from toolchain.cli import main

    run = lambda *a: CliRunner().invoke(main, [str(x) for x in a], catch_exceptions=False)  # noqa: E731
    r = run("optimize", tiny_onnx("bert").path, tmp_path / "opt", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["fusions"]["Attention"] == 2
    r = run("quantize", tmp_path / "opt", tmp_path / "q", "--preset", "avx2", "--weight-type", "qint8", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["settings"]["preset"] == "avx2" and data["settings"]["weight_type"] == "qint8"
    r = run("quantize", tmp_path / "q", tmp_path / "q2")
    assert r.exit_code == 12 and "already quantized" in r.output


def test_preprocess_falls_back_and_leaves_no_files_in_the_working_directory(tiny_onnx, tmp_path, monkeypatch):
    import onnxruntime.quantization.shape_inference as si

    from toolchain.quantize.calibration import preprocess

    real = si.quant_pre_process
    calls = []

    def flaky(src, dst, **kwargs):
        calls.append(kwargs)
        if not kwargs.get("skip_symbolic_shape"):  # as ORT does when symbolic inference is incomplete
            Path("sym_shape_infer_temp.onnx").write_bytes(b"partial")
            raise Exception("Incomplete symbolic shape inference")
        return real(src, dst, **kwargs)

    monkeypatch.setattr(si, "quant_pre_process", flaky)
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(user_dir)
    assert preprocess(tiny_onnx("bert").onnx_path, tmp_path / "work" / "float.onnx") == "onnx"
    assert len(calls) == 2 and list(user_dir.iterdir()) == []
    assert onnx.load(tmp_path / "work" / "float.onnx").graph.node


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_real_minilm_int8_is_small_and_close_to_float32(tmp_path_factory, mode):
    from toolchain.export import ExportConfig, export

    root = tmp_path_factory.mktemp("minilm")
    fused = optimize(export("minilm", ExportConfig(), root / "onnx"), OptimizeConfig(), root / "fused")
    assert _metrics(fused)["fusions"]["Attention"] == 6
    art = quantize(fused, QuantizeConfig(mode=mode), root / mode)
    m = _metrics(art)
    assert m["size_ratio"] >= 3.5  # the target; measured 3.96
    # Relative L2 0.15 is cosine ~0.99 on the hidden states (measured: dynamic 0.149).
    assert m["parity"]["rel_l2_diff"] < 0.25 and m["fp32_nodes"] == []


def test_embedding_bits_4_stores_the_embedding_tables_as_4bit_blocks_and_matmuls_as_int8(tiny_onnx, tmp_path):
    fused = optimize(tiny_onnx("bert"), OptimizeConfig(embed_layer_norm=False), tmp_path / "fused")
    assert "EmbedLayerNormalization" not in _ops(fused) and _ops(fused)["Gather"] >= 3
    q4 = quantize(fused, QuantizeConfig(mode="dynamic", embedding_bits=4), tmp_path / "q4")
    int8 = quantize(fused, QuantizeConfig(mode="dynamic"), tmp_path / "int8")
    ops = _ops(q4)
    assert ops["GatherBlockQuantized"] == 3 and ops["MatMulInteger"] == _ops(int8)["MatMulInteger"]  # word/pos/type
    assert _metrics(q4)["embedding_bits"]["nodes"] == 3 and _metrics(q4)["parity"]["rel_l2_diff"] < 0.5
    tables = {t.name: t for t in onnx.load(q4.onnx_path).graph.initializer}
    word = tables["bert.embeddings.word_embeddings.weight_Q4"]
    rows = json.loads((fused.path / "config.json").read_text())["vocab_size"]
    assert word.data_type == onnx.TensorProto.UINT8 and list(word.dims) == [rows, 16]  # two 4-bit codes a byte
    assert list(tables["bert.embeddings.word_embeddings.weight_scales"].dims) == [rows, 1]  # one block (32) a row


def test_embedding_bits_needs_an_unfused_embedding_and_an_int8_mode(tiny_onnx, tmp_path):
    fused = optimize(tiny_onnx("bert"), OptimizeConfig(), tmp_path / "fused")  # EmbedLayerNormalization
    with pytest.raises(Unsupported, match="no-embed-layer-norm"):
        quantize(fused, QuantizeConfig(mode="dynamic", embedding_bits=4), tmp_path / "q4")
    for bad in ({"embedding_bits": 8}, {"embedding_bits": 4, "mode": "weight-only"}):
        with pytest.raises(ValueError, match="embedding_bits"):
            QuantizeConfig(**bad)
