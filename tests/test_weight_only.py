"""Weight-only quantization (MatMulNBits / GatherBlockQuantized): op types, bits, block sizes, the
calibrated algorithms' numerics, and the mixed-precision loop, on the shared tiny models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.errors import Unsupported
from toolchain.quantize import QuantizeConfig, quantize
from toolchain.quantize import weight_only as wo
from toolchain.runtime import make_session

LAYERS = 2 * 7 + 1  # tiny Llama: q, k, v, o, gate, up, down per layer, and the LM head


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _nodes(art, op):
    return [n for n in onnx.load(str(art.onnx_path)).graph.node if n.op_type == op]


@pytest.fixture(scope="module")
def int4(tiny_onnx, tmp_path_factory):
    cfg = QuantizeConfig(mode="weight-only", data="hamlet")
    return quantize(tiny_onnx("llama-past"), cfg, tmp_path_factory.mktemp("wo") / "int4")


def test_int4_replaces_every_weight_matmul_and_the_embedding(int4):
    nbits = _nodes(int4, "MatMulNBits")
    assert len(nbits) == LAYERS
    assert {(_attrs(n)["bits"], _attrs(n)["block_size"], _attrs(n)["accuracy_level"]) for n in nbits} == {(4, 32, 4)}
    assert len(_nodes(int4, "GatherBlockQuantized")) == 1
    assert wo.weight_matmuls(onnx.load(str(int4.onnx_path))) == {}  # no float weight left in a MatMul
    m = int4.manifest.lineage[-1].metrics
    assert m["settings"] == {"mode": "weight-only", "target": "host", "bits": 4, "block_size": 32, "algorithm": "rtn",
                             "accuracy_level": 4, "symmetric": False, "op_types": ["MatMul", "Gather"],
                             "bias_correction": False}
    assert m["weight_only"]["nodes"] == {"int4_matmul": LAYERS, "int8_matmul": 0, "float32_matmul": 0, "int4_gather": 1}
    assert m["size_bytes_after"] < m["size_bytes_before"]
    assert m["parity"]["rel_l2_diff"] < 0.5


def test_int8_blocks_for_matmuls_and_embedding_are_closer_than_int4(tiny_onnx, int4, tmp_path):
    art = quantize(tiny_onnx("llama-past"), QuantizeConfig(mode="weight-only", bits=8, block_size=16, symmetric=True),
                   tmp_path / "int8")
    nbits = _nodes(art, "MatMulNBits")
    assert len(nbits) == LAYERS and {(_attrs(n)["bits"], _attrs(n)["block_size"]) for n in nbits} == {(8, 16)}
    assert all(len(n.input) == 3 for n in nbits)  # symmetric: no zero points
    assert [_attrs(n)["bits"] for n in _nodes(art, "GatherBlockQuantized")] == [8]
    logits = "logits"
    assert (art.manifest.lineage[-1].metrics["parity"]["per_output"][logits]
            < int4.manifest.lineage[-1].metrics["parity"]["per_output"][logits])


def _one_matmul(k=48, n=24, seed=0):
    """x (batch, K) @ W (K, N): K = 48 is three blocks of 16, an odd count (zero points pad a nibble)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(k, n)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(64, k)).astype(np.float32) * np.linspace(0.2, 3.0, k, dtype=np.float32)
    return model, w, x


def _run(model, x, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return make_session(path).run(None, {"x": x})[0]


@pytest.mark.parametrize("algorithm,symmetric,bits", [("rtn", False, 4), ("rtn", True, 4), ("rtn", False, 8),
                                                       ("minmax", False, 4), ("hqq", False, 4), ("gptq", False, 4), ("gptq", True, 4),
                                                       ("awq", False, 4)])
def test_dequantized_weight_is_what_the_kernel_computes(tmp_path, algorithm, symmetric, bits):
    model, w, x = _one_matmul()
    spec = wo.WeightOnlySpec(bits=bits, block_size=16, algorithm=algorithm, symmetric=symmetric, accuracy_level=1,
                             op_types=("MatMul",))
    q, _ = wo.build(model, spec, feeds=[{"x": x}])
    node = next(n for n in q.graph.node if n.op_type == "MatMulNBits")
    inits = {t.name: t for t in q.graph.initializer}
    deq = wo.dequantize(node, inits)  # minmax: with each block's minimum, added by the graph after the node
    xin = x
    mul = next((n for n in q.graph.node if n.op_type == "Mul"), None)  # (minmax adds with Add, not Mul)
    if mul is not None:  # awq: the kernel sees x / s
        xin = x * numpy_helper.to_array(inits[mul.input[1]])
    y = _run(q, x, tmp_path)
    np.testing.assert_allclose(y, xin @ deq, rtol=1e-4, atol=1e-3)
    rel = np.linalg.norm(y - x @ w) / np.linalg.norm(x @ w)
    assert rel < (0.01 if bits == 8 else 0.2)


def _output_error(x, w, wq):
    return float(np.linalg.norm(x @ w - x @ wq) / np.linalg.norm(x @ w))


def _q4_1(k, n, block, seed=4):
    """A weight de-quantized from llama.cpp's Q4_1: per block of `block` rows along K, float16 step d and
    minimum m, codes 0..15 with 0 and 15 both used (Q4_1 maps a block's min to 0 and its max to 15)."""
    rng = np.random.default_rng(seed)
    blocks = k // block
    codes = rng.integers(0, 16, size=(blocks, block, n))
    codes[:, 0], codes[:, 1] = 0, 15
    d = rng.uniform(0.002, 0.02, size=(blocks, 1, n)).astype(np.float16).astype(np.float32)
    m = -rng.uniform(0.0, 0.25, size=(blocks, 1, n)).astype(np.float16).astype(np.float32)
    return (d * codes + m).reshape(k, n).astype(np.float32)


def test_minmax_is_lossless_on_q4_1_weights_where_rtn_shifts_each_block():
    """The built-in SmolLM2 is a de-quantized GGUF Q4_1: minmax gets its exact weights back, rtn does not
    (its integer zero point moves each block by up to half a step)."""
    w = _q4_1(96, 40, 32)
    codes, scales, lo = wo.minmax_codes(w, 32)
    back = codes * np.repeat(scales, 32, axis=0) + np.repeat(lo, 32, axis=0)
    np.testing.assert_allclose(back, w, rtol=0, atol=1e-6)
    assert np.abs(wo.fake_quantize(w, 4, 32, symmetric=False) - w).max() > 1e-3


def test_minmax_graph_computes_the_q4_1_weights_exactly(tmp_path):
    k, n = 96, 40
    w = _q4_1(k, n, 32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(5).normal(size=(2, 3, k)).astype(np.float32)
    errors = {}
    for algorithm in ("minmax", "rtn"):
        q, _ = wo.build(model, wo.WeightOnlySpec(block_size=32, algorithm=algorithm, accuracy_level=1,
                                                 op_types=("MatMul",)))
        errors[algorithm] = np.linalg.norm(_run(q, x, tmp_path) - x @ w) / np.linalg.norm(x @ w)
    assert errors["minmax"] < 1e-5 < 1e-2 < errors["rtn"]


def _gptq_weight(w, h, act_order):
    codes, scales, zeros = wo.gptq_codes(w, h, 32, symmetric=False, act_order=act_order)
    return (codes.astype(np.float64) - np.repeat(zeros, 32, axis=0)) * np.repeat(scales, 32, axis=0)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_has_less_output_error_than_round_to_nearest(act_order):
    rng = np.random.default_rng(1)
    k, n = 64, 32
    mix = rng.normal(size=(k, k))
    x = rng.normal(size=(512, k)) @ mix  # correlated input channels: what GPTQ's Hessian exploits
    w = rng.normal(size=(k, n))
    h = x.T @ x / len(x)
    rtn = wo.fake_quantize(w.astype(np.float32), 4, 32, symmetric=False)
    assert _output_error(x, w, _gptq_weight(w, h, act_order)) < 0.8 * _output_error(x, w, rtn)


def test_gptq_act_order_fits_grids_to_the_original_blocks_and_goes_loudest_first():
    rng = np.random.default_rng(3)
    k, n = 128, 32
    w = rng.normal(size=(k, n))
    # A diagonal Hessian moves no error between rows: each row is rounded on its block's grid, fitted
    # to the original rows (static groups), so the result is round-to-nearest whatever the order.
    h = np.diag(rng.uniform(0.1, 10.0, size=k))
    np.testing.assert_allclose(_gptq_weight(w, h, True), wo.fake_quantize(w.astype(np.float32), 4, 32, False),
                               atol=1e-6)
    # Channels louder along K (as in an LLM's hidden state): the loud rows rounded first, their error
    # pushed onto quiet rows, costs about a third less output error than rounding in K order.
    x = rng.normal(size=(1024, k)) @ rng.normal(size=(k, k)) * np.linspace(0.2, 5.0, k)
    h = x.T @ x / len(x)
    assert _output_error(x, w, _gptq_weight(w, h, True)) < 0.8 * _output_error(x, w, _gptq_weight(w, h, False))


def test_awq_scaling_protects_channels_with_large_activations():
    rng = np.random.default_rng(2)
    k, n = 64, 32
    x = rng.normal(size=(256, k)).astype(np.float32)
    x[:, :4] *= 30.0  # a few outlier channels, as LLM activations have
    w = rng.normal(size=(k, n)).astype(np.float32)
    spec = wo.WeightOnlySpec(block_size=32, algorithm="awq")
    alpha, s, ratio = wo._search_alpha(x, [w], spec)
    assert alpha > 0 and ratio < 0.9
    scaled = (x / s) @ wo.fake_quantize(w * s[:, None], 4, 32, False)
    assert np.linalg.norm(x @ w - scaled) < np.linalg.norm(x @ w - x @ wo.fake_quantize(w, 4, 32, False))


@pytest.mark.parametrize("algorithm", ["minmax", "hqq", "gptq", "awq"])
def test_calibrated_algorithms_on_the_tiny_llama(tiny_onnx, tmp_path, algorithm):
    cfg = QuantizeConfig(mode="weight-only", algorithm=algorithm, data="hamlet", calibration_samples=8)
    art = quantize(tiny_onnx("llama-past"), cfg, tmp_path / algorithm)
    m = art.manifest.lineage[-1].metrics
    assert len(_nodes(art, "MatMulNBits")) == LAYERS and m["settings"]["algorithm"] == algorithm
    assert m["parity"]["per_output"]["logits"] < 0.05
    if algorithm not in ("hqq", "minmax"):
        assert m["calibration"]["samples"] == 8
    assert m["settings"].get("act_order") == (True if algorithm == "gptq" else None)  # recorded where it applies
    if algorithm == "awq":
        assert m["weight_only"]["awq"]["inputs"] == 2 * 4 + 1  # qkv, o, gate/up, down inputs per layer; head


def test_mixed_loop_moves_the_least_faithful_layers_to_int8(tiny_onnx, tmp_path):
    cfg = QuantizeConfig(mode="weight-only", data="hamlet", max_perplexity_increase=0.0, max_iterations=2,
                         calibration_samples=8, max_eval_tokens=256, block_size=64)
    with pytest.warns(UserWarning, match="budget not met"):
        art = quantize(tiny_onnx("llama-past"), cfg, tmp_path / "mixed")
    m = art.manifest.lineage[-1].metrics
    ranking = m["sensitivity"]
    assert len(ranking) == LAYERS and [r["sqnr_db"] for r in ranking] == sorted(r["sqnr_db"] for r in ranking)
    assert [it["int8_nodes"] for it in m["iterations"]][:2] == [0, 1]
    chosen = m["iterations"][m["chosen_iteration"]]
    bits = wo.bits_by_node(onnx.load(str(art.onnx_path)))
    assert sorted(n for n, b in bits.items() if b == 8) == sorted(m["int8_nodes"])
    assert len(m["int8_nodes"]) == chosen["int8_nodes"]
    if m["int8_nodes"]:
        assert m["int8_nodes"][0] == ranking[0]["node"]  # the lowest SQNR goes first
    assert m["weight_only"]["nodes"]["int8_matmul"] == chosen["int8_nodes"]


def test_mixed_loop_within_budget_at_once_stays_int4(tiny_onnx, tmp_path):
    cfg = QuantizeConfig(mode="weight-only", data="hamlet", max_perplexity_increase=0.9, calibration_samples=8,
                         max_eval_tokens=256)
    m = quantize(tiny_onnx("llama-past"), cfg, tmp_path / "q").manifest.lineage[-1].metrics
    assert m["within_budget"] and len(m["iterations"]) == 1 and m["int8_nodes"] == []
    assert m["weight_only"]["nodes"]["int4_matmul"] == LAYERS


def test_embeddings_only_on_a_classifier(tiny_onnx, tmp_path):
    """4-bit embedding tables of a BERT classifier (issue 17's use): Gather only, MatMuls stay float."""
    art = quantize(tiny_onnx("bert"), QuantizeConfig(mode="weight-only", op_types=("Gather",)), tmp_path / "emb")
    gathers = _nodes(art, "GatherBlockQuantized")
    assert len(gathers) >= 1 and not _nodes(art, "MatMulNBits")
    assert {_attrs(n)["bits"] for n in gathers} == {4}
    assert art.manifest.lineage[-1].metrics["parity"]["rel_l2_diff"] < 0.5


def test_weight_only_output_is_refused_as_input(int4, tmp_path):
    with pytest.raises(Unsupported, match="already quantized"):
        quantize(int4, QuantizeConfig(mode="weight-only"), tmp_path / "again")


def test_excluded_nodes_keep_float_weights(tiny_onnx, tmp_path):
    cfg = QuantizeConfig(mode="weight-only", exclude_nodes=("*/lm_head/*",), op_types=("MatMul",))
    art = quantize(tiny_onnx("llama-past"), cfg, tmp_path / "q")
    left = wo.weight_matmuls(onnx.load(str(art.onnx_path)))
    assert len(left) == 1 and "lm_head" in next(iter(left))
    assert art.manifest.lineage[-1].metrics["fp32_nodes"] == list(left)


@pytest.mark.parametrize("kwargs,message", [
    ({"bits": 4}, "apply to --mode weight-only only"),
    ({"mode": "weight-only", "bits": 8, "algorithm": "gptq"}, "4-bit algorithm"),
    ({"mode": "weight-only", "algorithm": "hqq", "symmetric": True}, "asymmetric only"),
    ({"mode": "weight-only", "block_size": 24}, "power of two"),
    ({"mode": "weight-only", "accuracy_level": 5}, "accuracy_level"),
    ({"mode": "weight-only", "op_types": ("Attention",)}, "MatMul and Gather"),
    ({"mode": "weight-only", "weight_type": "qint8"}, "int8 modes"),
    ({"mode": "weight-only", "bits": 8, "max_perplexity_increase": 0.01}, "give --bits 4 with a budget"),
    ({"mode": "weight-only", "act_order": False}, "applies to --algorithm gptq"),
    ({"mode": "dynamic", "act_order": True}, "apply to --mode weight-only only"),
])
def test_weight_only_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizeConfig(**kwargs)


def test_cli_weight_only(tiny_onnx, tmp_path):
    from click.testing import CliRunner

    from toolchain.cli import main

    out = tmp_path / "q"
    args = ["quantize", str(tiny_onnx("llama-past").path), str(out), "--mode", "weight-only", "--bits", "4",
            "--algorithm", "rtn", "--block-size", "16", "--accuracy-level", "0", "--symmetric"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "weight-only 4-bit rtn, block 16, symmetric, accuracy level 0" in result.output
    result = CliRunner().invoke(main, args[:3] + ["--mode", "weight-only", "--bits", "8", "--json", "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["settings"]["bits"] == 8
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert {(_attrs(n)["bits"], _attrs(n)["accuracy_level"]) for n in nodes} == {(8, 4)}


def test_awq_folds_scales_into_norms_and_ranks_layers_in_the_scaled_space(tiny_onnx, tmp_path):
    cfg = QuantizeConfig(mode="weight-only", algorithm="awq", data="hamlet", calibration_samples=16,
                         max_perplexity_increase=0.0, max_iterations=1, max_eval_tokens=256)
    with pytest.warns(UserWarning, match="budget not met"):
        art = quantize(tiny_onnx("llama-past"), cfg, tmp_path / "awq")
    m = art.manifest.lineage[-1].metrics
    awq = m["weight_only"]["awq"]
    assert "_row_scales" not in awq
    muls = [n for n in onnx.load(str(art.onnx_path)).graph.node if n.name.endswith(wo.AWQ_MUL_SUFFIX)]
    assert awq["folded_into_norm"] + len(muls) == awq["scaled_inputs"]
    # x/s against sW: a layer compared in the wrong space would show ~0 dB, not 4-bit noise (~15-25 dB)
    assert min(r["sqnr_db"] for r in m["sensitivity"]) > 8
    assert awq["folded_into_norm"] >= 1  # (16 samples: with 8 of the text's first nine tenths no norm-fed input scaled)


def test_a_tied_lm_head_reading_the_transposed_embedding_is_quantized(tmp_path):
    rng = np.random.default_rng(3)
    table = rng.normal(size=(64, 32)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"], name="embed"),
             helper.make_node("Transpose", ["table"], ["table_t"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["h", "table_t"], ["logits"], name="lm_head")]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 64])],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # block 64 > hidden 32: the rows are padded to a whole block, and the shared embedding slices them back
    for bits, algorithm, block in ((4, "rtn", 16), (8, "rtn", 16), (4, "minmax", 16), (4, "rtn", 64), (4, "minmax", 64)):
        spec = wo.WeightOnlySpec(bits=bits, block_size=block, algorithm=algorithm, accuracy_level=1)  # fp32: exact
        q, notes = wo.build(model, spec)
        assert notes["nodes"] == {f"int{bits}_matmul": 1, f"int{bits}_gather": 1, "float32_matmul": 0,
                                  f"int{12 - bits}_matmul": 0}
        # (a minmax head's block minima are gathered by row through a Transpose of their float16 table)
        assert len([n for n in q.graph.node if n.op_type == "Transpose"]) == (algorithm == "minmax")
        # one copy of the table: the embedding reads the head's blocks
        assert notes["shared_embedding"] == ["embed"]
        gather = next(n for n in q.graph.node if n.op_type == "GatherBlockQuantized")
        head = next(n for n in q.graph.node if n.op_type == "MatMulNBits")
        assert gather.input[0] == head.input[1]
        path = tmp_path / f"tied{bits}{algorithm}{block}.onnx"
        onnx.save(q, str(path))
        ids = np.arange(10, dtype=np.int64)
        out = make_session(path).run(None, {"ids": ids})[0]
        ref = table[ids] @ table.T
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < (0.2 if bits == 4 else 0.02)
        deq = wo.dequantize(head, {t.name: t for t in q.graph.initializer})  # (K, N) = table.T, quantized
        np.testing.assert_allclose(out, deq.T[ids] @ deq, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("algorithm", ["rtn", "minmax"])
def test_a_genai_style_tie_gather_of_the_transposed_head_weight_shares_the_head_blocks(tmp_path, algorithm):
    """ORT GenAI's builder ties the embedding as Gather(Transpose(lm_head weight)): the Gather reads the head's
    quantized blocks and the float table (and its Transpose) leave the file."""
    rng = np.random.default_rng(6)
    head = rng.normal(size=(32, 64)).astype(np.float32)  # (hidden, vocab), as the builder stores lm_head
    nodes = [helper.make_node("Transpose", ["w"], ["table"], name="embed/Transpose", perm=[1, 0]),
             helper.make_node("Gather", ["table", "ids"], ["h"], name="embed/Gather"),
             helper.make_node("MatMul", ["h", "w"], ["logits"], name="lm_head")]
    graph = helper.make_graph(nodes, "genai", [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 64])],
                              [numpy_helper.from_array(head, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q, notes = wo.build(model, wo.WeightOnlySpec(bits=4, block_size=16, algorithm=algorithm, accuracy_level=1))
    assert notes["shared_embedding"] == ["embed/Gather"]
    assert "w" not in {t.name for t in q.graph.initializer}  # one table in the file: the head's blocks
    ids = np.arange(10, dtype=np.int64)
    path = tmp_path / "genai.onnx"
    onnx.save(q, str(path))
    out = make_session(path).run(None, {"ids": ids})[0]
    deq = wo.dequantize(next(n for n in q.graph.node if n.op_type == "MatMulNBits"),
                        {t.name: t for t in q.graph.initializer})
    np.testing.assert_allclose(out, deq.T[ids] @ deq, rtol=1e-3, atol=1e-3)


def test_a_weight_only_bundle_loads_in_ort_format_and_verifies(int4, tmp_path):
    """4-bit tensors are stored as packed uint8: ORT-format bundles cannot hold ONNX's UINT4 type."""
    from toolchain.package import PackageConfig, package
    from toolchain.verify import verify

    bundle = package(int4.path, PackageConfig(), tmp_path / "bundle")
    assert (bundle.path / "model.ort").is_file()
    report = verify(bundle.path, smoke=True)
    assert report.problems == [] and report.smoke


def test_gptq_codes_are_reused_between_builds(monkeypatch):
    model, w, x = _one_matmul()
    spec = wo.WeightOnlySpec(block_size=16, algorithm="gptq", op_types=("MatMul",))
    cache = {}
    first, _ = wo.build(model, spec, feeds=[{"x": x}], cache=cache)
    assert set(cache) == {"mm"}
    monkeypatch.setattr(wo, "gptq_codes", lambda *a, **k: pytest.fail("solved again"))
    second, _ = wo.build(model, spec, feeds=[{"x": x}], cache=cache)
    assert [t.raw_data for t in first.graph.initializer] == [t.raw_data for t in second.graph.initializer]


@pytest.mark.parametrize("algorithm", ["rtn", "gptq", "awq"])
def test_bias_correction_takes_back_the_mean_of_the_rounding_error(tmp_path, algorithm):
    model, w, x = _one_matmul()
    x = x + np.linspace(-2.0, 2.0, x.shape[1], dtype=np.float32)  # channels with a mean, as LLM activations have
    plain, with_bias = (wo.WeightOnlySpec(block_size=16, algorithm=algorithm, accuracy_level=1, op_types=("MatMul",),
                                          bias_correction=on) for on in (False, True))
    q, _ = wo.build(model, plain, feeds=[{"x": x}])
    qb, notes = wo.build(model, with_bias, feeds=[{"x": x}])
    node = next(n for n in qb.graph.node if n.op_type == "MatMulNBits")
    assert notes["bias_correction"] == {"matmuls": 1, "samples": 1} and node.input[5] == "mm_Q4/bias_correction"
    error, corrected = (x @ w - _run(q, x, tmp_path)).mean(axis=0), (x @ w - _run(qb, x, tmp_path)).mean(axis=0)
    assert np.abs(corrected).max() < 1e-3 < np.abs(error).max()  # the mean error over the calibration rows is gone
    assert np.linalg.norm(x @ w - _run(qb, x, tmp_path)) < np.linalg.norm(x @ w - _run(q, x, tmp_path))


def test_bias_correction_through_the_stage_on_the_tiny_llama(tiny_onnx, tmp_path):
    cfg = QuantizeConfig(mode="weight-only", bias_correction=True, data="hamlet", calibration_samples=4)
    art = quantize(tiny_onnx("llama-past"), cfg, tmp_path / "bc")
    m = art.manifest.lineage[-1].metrics
    assert m["settings"]["bias_correction"] and m["weight_only"]["bias_correction"]["matmuls"] == LAYERS
    assert m["calibration"]["samples"] == 4 and m["parity"]["per_output"]["logits"] < 0.05
    assert all(len(n.input) == 6 for n in _nodes(art, "MatMulNBits"))
    with pytest.raises(ValueError, match="bias_correction apply to --mode weight-only"):
        QuantizeConfig(mode="dynamic", bias_correction=True)
