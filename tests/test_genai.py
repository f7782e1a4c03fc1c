"""ONNX Runtime GenAI's model builder as an export backend (toolchain/genai.py, export --backend genai).

The default tests check what the toolchain decides and wraps without the builder's environment; the tests
marked slow create that environment (pip, a few minutes once) and build the tiny Llama with the real builder.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain import genai
from toolchain.cli import main
from toolchain.errors import CheckFailed, MissingPackage, Unsupported
from toolchain.export import ExportConfig, export


def test_builder_command_reads_a_local_folder_for_the_cpu_offline_and_without_remote_code(tmp_path):
    cmd = genai.builder_command(Path("/py"), tmp_path / "m", tmp_path / "o", tmp_path / "c", "fp32", None, 32)
    assert cmd[:3] == ["/py", "-m", "onnxruntime_genai.models.builder"]
    assert cmd[cmd.index("-i") + 1] == str(tmp_path / "m") and "-m" not in cmd[3:]  # never a hub name
    assert cmd[cmd.index("-e") + 1] == "cpu" and cmd[cmd.index("-p") + 1] == "fp32"
    assert cmd[cmd.index("--extra_options") + 1:] == ["hf_token=false", "hf_remote=false"]


def test_builder_command_writes_out_the_weight_only_settings(tmp_path):
    cmd = genai.builder_command(Path("/py"), tmp_path, tmp_path, tmp_path, "int4", None, 64, symmetric=False)
    options = cmd[cmd.index("--extra_options") + 1:]
    assert cmd[cmd.index("-p") + 1] == "int4"
    # The builder's CPU default accuracy level (4: int8 activations) is spelled out, so the manifest states it.
    assert {"accuracy_level=4", "block_size=64", "is_symmetric=false"} <= set(options)
    cmd = genai.builder_command(Path("/py"), tmp_path, tmp_path, tmp_path, "int8", 1, 32)
    assert "accuracy_level=1" in cmd and "is_symmetric=true" in cmd


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "int4"}, "apply to backend genai"),
    ({"accuracy_level": 4}, "apply to backend genai"),
    ({"backend": "genai", "task": "text-classification"}, "text-generation"),
    ({"backend": "genai", "accuracy_level": 5}, "accuracy_level"),
    ({"backend": "genai", "block_size": 48}, "block_size"),
    ({"backend": "onnxmodelbuilder"}, "backend"),
])
def test_export_config_refuses_genai_settings_that_cannot_apply(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExportConfig(**kwargs)


def test_genai_backend_refuses_gpt2_before_building_anything(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(genai.PYTHON_ENV, str(tmp_path / "no-python"))  # would fail loudly if it were reached
    with pytest.raises(Unsupported, match="GenAI builder backend takes LlamaForCausalLM.*GPT2LMHeadModel"):
        export(tiny("gpt2"), ExportConfig(backend="genai"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_genai_backend_refuses_a_classifier(tiny, tmp_path):
    with pytest.raises(Unsupported, match="builds causal LMs"):
        export(tiny("bert"), ExportConfig(backend="genai"), tmp_path / "out")


def test_environment_key_follows_the_pins(monkeypatch):
    key = genai.env_key()
    assert key.startswith("genai-builder-")
    monkeypatch.setattr(genai, "BUILDER_PINS", genai.BUILDER_PINS + ("extra==1",))
    assert genai.env_key() != key  # new pins, new environment: an old one is never reused for them


def test_a_named_interpreter_is_used_as_it_is(monkeypatch, tmp_path):
    monkeypatch.setenv(genai.PYTHON_ENV, "/opt/builder/bin/python")
    assert genai.builder_python() == Path("/opt/builder/bin/python")


def test_a_missing_environment_is_a_missing_package_when_not_allowed_to_create(monkeypatch, tmp_path):
    monkeypatch.delenv(genai.PYTHON_ENV, raising=False)
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path))
    with pytest.raises(MissingPackage, match="does not exist yet"):
        genai.builder_python(create=False)


def test_a_failing_builder_is_one_line_naming_its_last_words(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys\nprint('loading', file=sys.stderr)\nsys.exit('ImportError: no Qwen3_5')\n")
    with pytest.raises(CheckFailed, match="builder failed: ImportError: no Qwen3_5"):
        genai.run_builder([sys.executable, str(script)])


def test_collect_keeps_the_graph_its_data_and_genai_config_only(tmp_path):
    built, folder = tmp_path / "built", tmp_path / "art"
    built.mkdir(), folder.mkdir()
    for name in ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "scratch.bin"):
        (built / name).write_text(name)
    assert genai.collect(built, folder) == ["genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json"]
    assert not (folder / "scratch.bin").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckFailed, match="wrote no model.onnx"):
        genai.collect(tmp_path / "empty", folder)


def test_export_cli_takes_the_backend_options(tiny, tmp_path):
    out = CliRunner().invoke(main, ["export", str(tiny("gpt2")), str(tmp_path / "o"), "--precision", "int4"])
    assert out.exit_code == 8 and "apply to backend genai" in out.output


class _Inputs:
    """A stand-in for an onnxruntime session of the builder's graph: only its input names matter here."""

    def __init__(self, layers):
        names = ["input_ids", "attention_mask"]
        for i in range(layers):
            names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        self._inputs = [type("Arg", (), {"name": n})() for n in names]

    def get_inputs(self):
        return self._inputs


def test_the_gqa_step_feeds_each_rows_last_token_after_its_own_cache(tiny):
    """GroupQueryAttention reads the mask as each row's length: the step is fed every row's last real token of a
    right-padded batch, and PyTorch's answer for it is the row's own (unpadded) logits and cache."""
    import torch

    from toolchain import parity
    from toolchain.export import _torch_last_token_step
    from toolchain.modeling import load_model, load_tokenizer, resolve_model

    src = resolve_model(str(tiny("llama64")))
    model, tok = load_model(src, "text-generation"), load_tokenizer(src)
    tok.padding_side = "right"
    enc = parity.tokenize(tok, 4, 64)  # the tiny texts are 28..60 tokens: every row is padded
    lengths = enc["attention_mask"].sum(1)
    assert (lengths < 64).all() and len(set(lengths)) > 1
    ref, feeds, valid, full = _torch_last_token_step(model, enc, _Inputs(2))
    assert feeds["past_key_values.0.key"].shape[2] == 63 and (feeds["attention_mask"] == full).all()
    assert valid.shape == (4, 1)
    for b, n in enumerate(lengths):
        assert feeds["input_ids"][b, 0] == enc["input_ids"][b, n - 1]
        with torch.inference_mode():
            alone = model(input_ids=torch.from_numpy(enc["input_ids"][b:b + 1, :n]), use_cache=True)
        np.testing.assert_allclose(ref["logits"][b, 0], alone.logits[0, -1].numpy(), atol=1e-5)
        key = alone.past_key_values.to_legacy_cache()[1][0] if hasattr(alone.past_key_values, "to_legacy_cache") \
            else alone.past_key_values[1][0]
        np.testing.assert_allclose(ref["present.1.key"][b, :, :n], key[0].numpy(), atol=1e-5)
    tok.padding_side = "left"  # how the check fed it before: the graph would attend to the padding
    with pytest.raises(ValueError, match="right-padded"):
        _torch_last_token_step(model, parity.tokenize(tok, 4, 64), _Inputs(2))


def test_a_one_head_cache_is_masked_by_the_full_mask_not_the_steps():
    from toolchain import parity

    full = np.array([[1, 1, 0], [1, 1, 1]])
    cache = np.ones((2, 1, 3, 4))  # (batch, one key/value head, positions, head size): shape[:2] == valid's
    out = parity.mask_padding({"present.0.key": cache}, np.ones((2, 1)), full)["present.0.key"]
    assert out[0, 0, 2].sum() == 0 and out[1].sum() == 12


# ---------------------------------------------------------------- the real builder (creates its environment)


@pytest.fixture(scope="module")
def genai_export(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("genai")
    return {p: export(tiny("llama64"), ExportConfig(backend="genai", precision=p), root / p) for p in ("fp32", "int4")}


@pytest.mark.slow
def test_genai_fp32_matches_pytorch_and_takes_plain_onnxruntime_feeds(genai_export):
    import onnx

    art = genai_export["fp32"]
    m = art.manifest.lineage[-1]
    assert m.metrics["parity"]["max_abs_diff"] <= 1e-3 and m.config["with_past"] and m.config["backend"] == "genai"
    assert (art.path / "genai_config.json").is_file() and (art.path / "config.json").is_file()
    graph = onnx.load(str(art.onnx_path), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert "GroupQueryAttention" in ops  # the fused attention with rotary and the KV cache inside
    inputs = [i.name for i in graph.input]
    assert inputs[:2] == ["input_ids", "attention_mask"] and "past_key_values.0.key" in inputs


@pytest.mark.slow
def test_genai_int4_is_matmulnbits_evaluates_and_bundles(genai_export, tmp_path):
    import onnx

    from toolchain.evaluate import EvaluateConfig, evaluate
    from toolchain.package import PackageConfig, package
    from toolchain.verify import verify

    art = genai_export["int4"]
    ops = [n.op_type for n in onnx.load(str(art.onnx_path), load_external_data=False).graph.node]
    parity = art.manifest.lineage[-1].metrics["parity"]
    assert "MatMulNBits" in ops and parity["rel_l2_diff"] <= 0.5 and parity["top1_agreement"] >= 0.6
    text = tmp_path / "t.txt"
    text.write_text("the film is a charming and moving story . " * 40)
    ppl = evaluate(art.path, EvaluateConfig(data=str(text), window=64, stride=32))["perplexity"]
    assert np.isfinite(ppl) and ppl > 1
    bundle = package(art.path, PackageConfig(mobile_check=False, generate_tokens=8), tmp_path / "bundle")
    info = json.loads((bundle.path / "bundle.json").read_text())
    assert info["genai"] and "genai_config.json" in info["files"] and "generate.py" in info["files"]
    report = verify(bundle.path)
    assert not report.problems and report.smoke["ok"] and report.smoke["models"]["model.onnx"] <= 1e-3
    out = subprocess.run([sys.executable, "generate.py", "--tokens", "4", "the film"], cwd=bundle.path,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("the film"), out.stderr


@pytest.mark.slow
def test_genai_parity_holds_on_a_padded_batch(tiny, tmp_path, monkeypatch):
    """The tiny texts fill parity's (4, 24) batch, so it never pads; at 64 every row is padded, as SmolLM2's
    tokenizer pads that batch. Left-padded, this graph was off by several units (SmolLM2: 28.6)."""
    from toolchain import parity

    monkeypatch.setattr(parity, "SHAPES", ((1, 8), (4, 64)))
    art = export(tiny("llama64"), ExportConfig(backend="genai"), tmp_path / "fp32")
    p = art.manifest.lineage[-1].metrics["parity"]
    assert p["max_abs_diff"] <= 1e-3 and p["top1_agreement"] == 1.0 and p["shapes"] == [[1, 8], [4, 64]]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["rtn", "minmax"])
def test_weight_only_quantize_of_the_genai_graph_checks_parity_unpadded(genai_export, tmp_path, algorithm):
    """The quantize stage's parity check feeds GroupQueryAttention's graph rows without padding and a one-token
    step (left padding gave a row an all-zero prefix mask: seqlens_k -1, and onnxruntime refused the run)."""
    from toolchain.quantize import QuantizeConfig, quantize

    cfg = QuantizeConfig(mode="weight-only", bits=4, algorithm=algorithm, data="hamlet", calibration_samples=4)
    art = quantize(genai_export["fp32"].path, cfg, tmp_path / algorithm)
    parity = art.manifest.lineage[-1].metrics["parity"]  # the stage raises when it fails; this says what it compared
    assert parity["rel_l2_diff"] <= parity["rtol"] and "logits" in parity["per_output"]


def test_parity_cuts_rows_to_the_shortest_for_a_graph_with_implicit_positions():
    from toolchain import parity

    right = {"input_ids": np.array([[5, 6, 7, 0], [5, 6, 7, 8]]), "attention_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]])}
    left = {"input_ids": np.array([[0, 5, 6, 7], [5, 6, 7, 8]]), "attention_mask": np.array([[0, 1, 1, 1], [1, 1, 1, 1]])}
    assert parity._unpadded(right)["input_ids"].tolist() == [[5, 6, 7], [5, 6, 7]]
    assert parity._unpadded(left)["input_ids"].tolist() == [[5, 6, 7], [6, 7, 8]]
    assert parity._unpadded(left)["attention_mask"].all()
