"""Deployment targets: the format follows the target whatever host builds it; mobile targets give
standard-op, fixed-shape, EP-ready graphs and bundles."""

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.optimize import OptimizeConfig, optimize
from toolchain.package import BUNDLE_FILE, COREML_MAX_DIM, PackageConfig, blockers, package
from toolchain.quantize import QuantizeConfig, quantize, stage
from toolchain.quantize.presets import PRESETS
from toolchain.targets import TARGETS

ONNX_TYPE = {"quint8": onnx.TensorProto.UINT8, "qint8": onnx.TensorProto.INT8}
STATIC = dict(mode="static", calibration_samples=16)
CPU_TARGETS = [t for t in TARGETS.values() if t.preset and not t.mobile]


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _metrics(art) -> dict:
    return art.manifest.lineage[-1].metrics


def _matmul_weights(model) -> list:
    inits = {t.name: t for t in model.graph.initializer}
    b = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "MatMulInteger")}
    direct = [inits[x] for x in b if x in inits]
    behind_dq = [inits[n.input[0]] for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.output[0] in b and n.input[0] in inits]
    return direct + behind_dq


@pytest.fixture(scope="module")
def nnapi(tiny_onnx, tmp_path_factory):
    """The tiny classifier through optimize -> static int8 -> package for android-nnapi."""
    root = tmp_path_factory.mktemp("nnapi")
    fused = optimize(tiny_onnx("bert"), OptimizeConfig(target="android-nnapi"), root / "fused")
    int8 = quantize(fused, QuantizeConfig(**STATIC, target="android-nnapi"), root / "int8")
    bundle = package(int8, PackageConfig(target="android-nnapi", max_length=32), root / "bundle")
    return fused, int8, bundle


@pytest.mark.parametrize("host", ["avx2", "avx512_vnni", "arm64"])
@pytest.mark.parametrize("tgt", CPU_TARGETS, ids=lambda t: t.name)
def test_cpu_targets_get_their_int8_format_whatever_the_host_detects(tiny_onnx, tmp_path, monkeypatch, tgt, host):
    monkeypatch.setattr(stage, "detect_preset", lambda: (host, f"test: a {host} host"))
    art = quantize(tiny_onnx("bert"), QuantizeConfig(target=tgt.name), tmp_path / "q")
    s, want = _metrics(art)["settings"], PRESETS[tgt.preset]
    assert (s["target"], s["preset"], s["reduce_range"]) == (tgt.name, tgt.preset, want.reduce_range)
    assert s["detected"].startswith(f"target {tgt.name}")
    weights = _matmul_weights(onnx.load(art.onnx_path))
    assert len(weights) == 14 and {w.data_type for w in weights} == {ONNX_TYPE[want.weight_type]}
    assert _metrics(art)["target"]["target"] == tgt.name and _metrics(art)["target"]["ort_platform"] == tgt.ort_platform


def test_a_preset_given_with_a_target_overrides_it_and_says_so(tiny_onnx, tmp_path):
    art = quantize(tiny_onnx("bert"), QuantizeConfig(target="x86-avx2", preset="avx512_vnni"), tmp_path / "q")
    s = _metrics(art)["settings"]
    assert (s["preset"], s["detected"], s["target"]) == ("avx512_vnni", "chosen by the user", "x86-avx2")


def test_nnapi_optimize_keeps_standard_ops_that_nnapi_runs(nnapi, tiny_onnx):
    fused = nnapi[0]
    ops = _ops(fused.onnx_path)
    model = onnx.load(fused.onnx_path)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)  # no com.microsoft fusions
    assert not {"LayerNormalization", "Erf", "Expand", "Attention", "SkipLayerNormalization"} & set(ops)
    assert ops["Where"] == 1  # the shape arithmetic's (int64): it folds away once the shapes are fixed
    assert ops["ReduceMean"] == 10 and ops["Tanh"] == 3  # 5 LayerNorms x 2, 2 GELUs + the pooler's Tanh
    m = _metrics(fused)
    assert m["rewrites"] == {"layernorm": 5, "gelu": 2, "cls-slice": 1, "where": 1, "expand": 1}
    assert m["contrib_ops"] == [] and m["fusions"] == {}
    assert m["parity"]["rel_l2_diff"] < 1e-3  # tanh GELU: ~1e-7 on this tiny model
    r = m["readiness"]
    assert (r["ep"], r["share"], r["partitions"], r["suitability"]) == ("NNAPI", 1.0, 1, "YES")
    assert m["target"]["target"] == "android-nnapi" and m["target"]["fixed_shapes"] is True


def test_nnapi_int8_is_static_u8u8_per_tensor_qdq_with_quantized_matmul_outputs(nnapi):
    int8 = nnapi[1]
    model = onnx.load(int8.onnx_path)
    ops = _ops(int8.onnx_path)
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert not {"MatMulInteger", "DynamicQuantizeLinear", "QAttention", "QGemm"} & set(ops)
    s = _metrics(int8)["settings"]
    assert (s["preset"], s["activation_type"], s["weight_type"], s["per_channel"], s["matmul_outputs"]) == \
        ("nnapi", "quint8", "quint8", False, True)
    weights = _matmul_weights(model)
    assert len(weights) == 14 and {w.data_type for w in weights} == {onnx.TensorProto.UINT8}  # 12 MatMul + 2 Gemm
    inits = {t.name: t for t in model.graph.initializer}
    scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits]
    assert scales and all(int(np.prod(sc.dims)) == 1 for sc in scales)  # one scale per tensor
    consumers = {i: n for n in model.graph.node for i in n.input}
    weight_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and any(
        p.op_type == "DequantizeLinear" and p.output[0] == n.input[1] for p in model.graph.node)]
    assert len(weight_matmuls) == 12 and all(consumers[n.output[0]].op_type == "QuantizeLinear" for n in weight_matmuls)
    assert _metrics(int8)["readiness"]["share"] == 1.0 and _metrics(int8)["parity"]["rel_l2_diff"] < 0.1


def test_nnapi_bundle_has_fixed_shapes_an_arm_ort_file_and_reports_nnapi_ready(nnapi):
    bundle = nnapi[2]
    info = json.loads((bundle.path / BUNDLE_FILE).read_text())
    assert [i["shape"] for i in info["onnx"]["inputs"]] == [[1, 32]] * 3
    t = info["target"]
    assert (t["target"], t["ort_platform"], t["max_length"], t["preset"]) == ("android-nnapi", "arm", 32, "nnapi")
    assert t["providers"] == ["NnapiExecutionProvider", "CPUExecutionProvider"] and t["why"]["per_channel"]
    assert t["readiness"]["share"] >= 0.9 and t["readiness"]["partitions"] == 1
    assert info["mobile"]["NNAPI"]["as_is"] == "YES"
    ready = (bundle.path / "mobile_readiness.md").read_text()
    assert "Built for **android-nnapi**" in ready and "int64 inputs" in ready
    assert _metrics(bundle)["smoke"]["ok"] and (bundle.path / "model.ort").is_file()


def test_fixed_shape_bundle_predicts_one_text_at_a_time_like_the_artifact(nnapi):
    from toolchain import bundle_predict
    from toolchain.package import SAMPLES

    p = bundle_predict.Predictor(nnapi[2].path, threads=1)
    assert p.fixed_length == 32
    out = p.classify(list(SAMPLES))
    stored = json.loads((nnapi[2].path / BUNDLE_FILE).read_text())["smoke"]["logits"]
    assert np.abs(np.array([r["logits"] for r in out]) - np.array(stored)).max() < 1e-3


def test_coreml_keeps_layernorm_and_erf_and_its_float_graph_is_ready(tiny_onnx, tmp_path):
    fused = optimize(tiny_onnx("bert"), OptimizeConfig(target="ios-coreml"), tmp_path / "fused")
    ops = _ops(fused.onnx_path)
    assert ops["LayerNormalization"] == 5 and ops["Erf"] == 2  # ML Program has both: exact, one op each
    assert "Expand" not in ops and _metrics(fused)["parity"]["max_abs_diff"] < 1e-5
    r = _metrics(fused)["readiness"]
    assert r["ep"] == "CoreML MLProgram" and r["share"] >= 0.9 and r["partitions"] == 1
    int8 = quantize(fused, QuantizeConfig(**STATIC, target="ios-coreml"), tmp_path / "int8")
    assert _metrics(int8)["settings"]["preset"] == "arm64"
    # ORT's CoreML EP has no QuantizeLinear/DequantizeLinear: the int8 graph is not CoreML-ready, and says so.
    assert _metrics(int8)["readiness"]["share"] < 0.9
    assert "DequantizeLinear" in str(_metrics(int8)["readiness"]["fallback_ops"])


def test_blockers_name_coreml_dimension_limit_and_qdq_with_their_fixes(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.zeros((COREML_MAX_DIM + 1, 4), dtype=np.float32), "word_embeddings")
    graph = helper.make_graph([helper.make_node("Gather", ["word_embeddings", "input_ids"], ["h"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 8])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 8, 4])], [table])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    found = blockers(tmp_path / "m.onnx")
    assert "16,385" in found["CoreML MLProgram"][0]["problem"] and "trim-vocab" in found["CoreML MLProgram"][0]["fix"]
    assert "int64 inputs (input_ids)" in found["NNAPI"][0]["problem"]


def test_configs_refuse_unknown_targets_and_fusions_for_standard_op_targets():
    for cls in (OptimizeConfig, QuantizeConfig, PackageConfig):
        with pytest.raises(ValueError, match="target 'pixel' is not one of host, x86-avx2"):
            cls(target="pixel")
    with pytest.raises(ValueError, match="standard ONNX ops"):
        OptimizeConfig(target="android-nnapi", fp16=True)


def test_cli_target_option_reaches_quantize_and_shows_the_preset(tiny_onnx, tmp_path):
    r = CliRunner().invoke(main, ["quantize", str(tiny_onnx("bert").path), str(tmp_path / "q"), "--target", "arm64"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "target arm64, preset arm64" in r.output and "ARM64 dot-product" in r.output
    r = CliRunner().invoke(main, ["quantize", str(tiny_onnx("bert").path), str(tmp_path / "q2"), "--target", "pixel"])
    assert r.exit_code == 2 and "pixel" in r.output


TARGET_RECIPE = """\
model: {model}
data: {data}
target: android-nnapi
report: {{accuracy_budget: 0.5}}
steps:
  - {{name: onnx, stage: export}}
  - {{name: fused, stage: optimize}}
  - {{name: int8-dynamic, stage: quantize}}
  - {{name: int8-static, stage: quantize, input: fused, config: {{mode: static, calibration_samples: 16}}}}
  - {{name: eval, stage: evaluate, config: {{batch_size: 1}}}}
  - {{name: bundle, stage: package, input: recommended, config: {{max_length: 32, generate_tokens: 4}}}}
"""


@pytest.fixture(scope="module")
def nnapi_run(tiny, tmp_path_factory):
    import recipe_helpers

    root = tmp_path_factory.mktemp("nnapi-run")
    recipe = root / "recipe.yaml"
    recipe.write_text(TARGET_RECIPE.format(model=tiny("bert"), data=recipe_helpers.write_csv(root / "reviews.csv")))
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(root / "run")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "run", recipe, result.output


def test_recipe_target_reaches_every_step_and_the_bundle_ships_what_the_ep_runs(nnapi_run):
    from toolchain.artifact import Artifact

    out, _, output = nnapi_run
    for step in ("fused", "int8-dynamic", "int8-static", "bundle"):
        assert Artifact.load(out / step).manifest.lineage[-1].config["target"] == "android-nnapi", step
    assert "target" not in Artifact.load(out / "onnx").manifest.lineage[-1].config  # export has no target
    # Dynamic int8 is smaller but runs on the CPU EP only: the NNAPI-ready static int8 is what ships.
    dyn = Artifact.load(out / "int8-dynamic").manifest.lineage[-1].metrics
    assert dyn["readiness"]["share"] < 0.9 and any("CPU EP only" in w for w in dyn["warnings"])
    bundle = Artifact.load(out / "bundle")
    assert bundle.manifest.lineage[-1].input_hash == Artifact.load(out / "int8-static").content_hash
    info = json.loads((out / "bundle" / BUNDLE_FILE).read_text())
    assert info["target"]["readiness"]["share"] >= 0.9 and info["onnx"]["inputs"][0]["shape"] == [1, 32]
    assert "target: android-nnapi" in output and "quantized int8-static: static int8, preset nnapi" in output
    assert "NNAPI runs" in output  # the summary names the EP's share of the shipped model
    report = (out / "report.md").read_text()
    assert "android-nnapi EP nodes" in report and "Target: `android-nnapi`" in report
    assert "ranked by model size, not by CPU latency" in report  # this CPU's timings do not predict an NPU


def test_run_target_option_overrides_the_recipe_and_changes_the_plan(nnapi_run):
    from toolchain.recipe import load_recipe, plan

    out, recipe, _ = nnapi_run
    assert [d.run for d in plan(load_recipe(recipe), out)] == [False] * 6
    decisions = plan(load_recipe(recipe, target="arm64"), out)
    assert [d.run for d in decisions] == [False, True, True, True, True, True]  # eval: its inputs are rebuilt
    assert decisions[1].reason == "config changed: target: 'android-nnapi' -> 'arm64'"
    r = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--target", "ios-coreml", "--dry-run"])
    assert r.exit_code == 0 and "target ios-coreml" in r.output


def test_recipe_target_errors_name_the_line(tmp_path):
    from toolchain.errors import RecipeError
    from toolchain.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("model: minilm\ntarget: pixel-9\nsteps:\n  - {stage: export}\n")
    with pytest.raises(RecipeError, match=r"r.yaml:2: target: target 'pixel-9' is not one of host"):
        load_recipe(path)


def test_a_field_added_later_with_its_default_does_not_rebuild_old_artifacts():
    from toolchain.recipe import config_change

    defaults = {"target": "host", "mode": "dynamic"}
    assert config_change({"mode": "dynamic", "target": "host"}, {"mode": "dynamic"}, defaults) is None
    assert config_change({"mode": "dynamic", "target": "arm64"}, {"mode": "dynamic"}, defaults) == \
        "target: '<unset>' -> 'arm64'"


@pytest.mark.parametrize("name", ["x86-avx2", "arm64"])
def test_cpu_target_bundles_carry_the_targets_int8_format_and_platform(tiny_onnx, tmp_path, monkeypatch, name):
    monkeypatch.setattr(stage, "detect_preset", lambda: ("avx512_vnni", "test: a VNNI build machine"))
    tgt = TARGETS[name]
    int8 = quantize(optimize(tiny_onnx("bert"), OptimizeConfig(target=name), tmp_path / "fused"),
                    QuantizeConfig(target=name), tmp_path / "int8")
    bundle = package(int8, PackageConfig(target=name, mobile_check=False), tmp_path / "bundle")
    info = json.loads((bundle.path / BUNDLE_FILE).read_text())
    t = info["target"]
    assert (t["target"], t["preset"], t["ort_platform"], t["max_length"]) == (name, tgt.preset, tgt.ort_platform, None)
    assert "QAttention" in _ops(bundle.path / "model.onnx")  # CPU targets keep ORT's fused int8 kernels
    weights = _matmul_weights(onnx.load(bundle.path / "model.onnx"))
    assert weights and {w.data_type for w in weights} == {ONNX_TYPE[PRESETS[tgt.preset].weight_type]}
    assert info["onnx"]["inputs"][0]["shape"] == ["batch_size", "sequence_length"]
    assert f"Built for `{name}`" in (bundle.path / "README.md").read_text()
