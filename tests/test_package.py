import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from toolchain.artifact import Artifact, atomic_write_text
from toolchain.cli import main
from toolchain.errors import IntegrityError, Unsupported
from toolchain.package import BUNDLE_FILE, PackageConfig, mobile_readiness, package, smoke_test


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _flip(path, offset=100):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


@pytest.fixture
def bundle(tiny_run, tmp_path):
    """A private copy of the tiny run's bundle, free to damage."""
    return shutil.copytree(tiny_run[0] / "bundle", tmp_path / "bundle")


def test_package_writes_the_whole_edge_bundle(tiny_run):
    folder = tiny_run[0] / "bundle"
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "model.ort", "required_operators.config", "tokenizer.json", "labels.json", "predict.py",
            "bundle.json", "manifest.json", "README.md", "config.json"} <= names
    info = json.loads((folder / BUNDLE_FILE).read_text())
    assert info["labels"] == ["negative", "positive"]
    assert json.loads((folder / "labels.json").read_text()) == {"0": "negative", "1": "positive"}
    assert info["onnx"]["opsets"]["ai.onnx"] >= 13 and info["onnx"]["ir_version"] >= 7
    assert [i["name"] for i in info["onnx"]["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["onnx"]["outputs"][0] == {"name": "logits", "shape": ["batch_size", 2], "dtype": "tensor(float)"}
    assert info["min_onnxruntime"]["model.onnx"] == "1.14"  # opset 18
    assert info["metrics"]["evaluate"]["evaluate/reviews.csv/test"]["n"] == 6
    from toolchain.artifact import sha256_file

    assert info["files"] == {n: sha256_file(folder / n) for n in sorted(names - {BUNDLE_FILE, "manifest.json"})}
    ops = (folder / "required_operators.config").read_text()
    assert "# - model.ort\n" in ops
    assert any(line.startswith("ai.onnx;") and "MatMul" in line for line in ops.splitlines())


def test_model_ort_is_optimized_as_predict_py_runs_model_onnx(tiny_onnx, tmp_path):
    """onnxruntime's converter would fuse SkipLayerNormalization, which the runtime disables (slower kernel,
    other rounding): model.ort keeps Add + LayerNormalization like model.onnx in predict.py."""
    from toolchain.optimize import OptimizeConfig, optimize
    from toolchain.runtime import CPU_DISABLED_OPTIMIZERS

    assert CPU_DISABLED_OPTIMIZERS == ("SkipLayerNormFusion",)
    fused = optimize(tiny_onnx("bert").path, OptimizeConfig(), tmp_path / "fused")
    art = package(fused.path, PackageConfig(mobile_check=False), tmp_path / "bundle")
    ops = (art.path / "required_operators.config").read_text()
    assert "SkipLayerNormalization" not in ops
    assert any("LayerNormalization" in line for line in ops.splitlines() if line.startswith("ai.onnx;"))
    assert art.manifest.lineage[-1].metrics["smoke"]["models"]["model.ort"] <= 1e-5


def test_verify_accepts_the_bundle_and_runs_a_smoke_inference(bundle, tiny_run):
    r = cli("verify", bundle)
    assert r.exit_code == 0, r.output
    assert "every hash matches" in r.output and "smoke inference: ok" in r.output and "model.ort" in r.output
    r = cli("verify", tiny_run[0] / "onnx", "--json")  # an artifact that is not a bundle: hashes only
    assert r.exit_code == 0 and json.loads(r.output)["smoke"] is None


def test_verify_catches_a_changed_byte(bundle):
    _flip(bundle / "model.onnx")
    r = cli("verify", bundle)
    assert r.exit_code == 9
    assert "changed file model.onnx" in r.output
    with pytest.raises(IntegrityError):
        smoke_test(bundle)


def test_verify_fails_when_the_model_no_longer_gives_the_packaged_outputs(bundle):
    """A bundle whose hashes were rewritten to match (edited, not corrupted) still fails its smoke test."""
    info = json.loads((bundle / BUNDLE_FILE).read_text())
    info["smoke"]["logits"][0][0] += 0.5
    (bundle / BUNDLE_FILE).write_text(json.dumps(info))
    art = Artifact.load(bundle)
    from toolchain.artifact import hash_payload

    art.manifest.files = hash_payload(bundle)
    atomic_write_text(bundle / "manifest.json", art.manifest.to_json())
    r = cli("verify", bundle)
    assert r.exit_code == 7
    assert "smoke inference failed: model.onnx differs from the packaged reference by 0.5" in r.output


def test_predict_py_opens_its_session_as_the_toolchain_does(bundle):
    # predict.py cannot import the toolchain, so it spells out the CPU session settings: they must not drift.
    from toolchain.runtime import CPU_DISABLED_OPTIMIZERS

    source = (bundle / "predict.py").read_text()
    assert CPU_DISABLED_OPTIMIZERS and all(f'disabled_optimizers=["{name}"]' in source for name in CPU_DISABLED_OPTIMIZERS)


def test_predict_py_runs_standalone_in_a_subprocess(bundle, tmp_path):
    """predict.py with the venv's python, torch, transformers and toolchain made unimportable."""
    info = json.loads((bundle / BUNDLE_FILE).read_text())
    texts = info["smoke"]["texts"]
    code = ("import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('torch', 'transformers', 'toolchain')]; "
            "sys.argv = ['predict.py', '--json', *sys.argv[1:]]; runpy.run_path('predict.py', run_name='__main__')")
    for model in ("model.onnx", "model.ort"):
        out = subprocess.run([sys.executable, "-c", code, "--model", model, *texts], cwd=bundle, capture_output=True,
                             text=True, env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        results = json.loads(out.stdout)
        assert [r["text"] for r in results] == texts
        for r, ref in zip(results, info["smoke"]["logits"]):
            assert r["label"] in ("negative", "positive")
            assert sum(r["probabilities"].values()) == pytest.approx(1.0)
            assert max(abs(a - b) for a, b in zip(r["logits"], ref)) < 1e-4


def test_package_causal_lm_generates_with_its_kv_cache(tiny_onnx, tmp_path):
    art = package(tiny_onnx("gpt2-past").path, PackageConfig(mobile_check=False, generate_tokens=5), tmp_path / "b")
    info = json.loads((art.path / BUNDLE_FILE).read_text())
    assert info["onnx"]["with_past"] and "labels.json" not in info["files"]
    # predict.py decodes with the cache; the reference recomputed the whole sequence each step.
    assert art.manifest.lineage[-1].metrics["smoke"]["ok"]
    out = subprocess.run([sys.executable, "predict.py", "--json", "--tokens", str(len(info["smoke"]["token_ids"])),
                          info["smoke"]["texts"][0]], cwd=art.path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["token_ids"] == info["smoke"]["token_ids"]


def test_package_checks_the_input_hashes_first(tiny_onnx, tmp_path):
    src = shutil.copytree(tiny_onnx("bert").path, tmp_path / "src")
    _flip(src / "model.onnx")
    with pytest.raises(IntegrityError, match="changed file model.onnx"):
        package(src, PackageConfig(), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_package_refuses_a_torch_artifact(tiny, tmp_path):
    from toolchain.artifact import write_artifact

    with write_artifact(tmp_path / "torch", stage="x", config={}, format="torch", task="text-classification",
                        model_type="bert") as o:
        shutil.copytree(tiny("bert"), o.folder, dirs_exist_ok=True)
    with pytest.raises(Unsupported, match="export it first"):
        package(tmp_path / "torch", PackageConfig(), tmp_path / "b")


def test_mobile_readiness_lists_what_falls_back_per_execution_provider(tiny_onnx):
    report = mobile_readiness(tiny_onnx("bert").onnx_path)
    assert set(report) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
    nnapi = report["NNAPI"]
    assert nnapi["suitability"] in ("YES", "MAYBE", "NO")
    assert 0 < nnapi["supported_nodes"] <= nnapi["nodes"]
    # Dynamic shapes count against NNAPI: fixing them can only let more nodes onto it.
    assert nnapi["if_shapes_fixed"]["supported_nodes"] >= nnapi["supported_nodes"]
    assert all(":" in op and n > 0 for op, n in nnapi["if_shapes_fixed"]["fallback_ops"].items())


@pytest.mark.parametrize("id2label", [None, {"0": "LABEL_0", "1": "LABEL_1"}])
def test_package_of_a_classifier_with_transformers_default_labels_works(tiny, tmp_path, id2label):
    # Many hub classifiers keep transformers' default labels or save no id2label at all.
    from toolchain.export import ExportConfig, export

    model = shutil.copytree(tiny("bert"), tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config.pop("label2id", None)
    config.pop("id2label", None)
    if id2label is not None:
        config["id2label"] = id2label
    (model / "config.json").write_text(json.dumps(config))
    onnx_art = export(model, ExportConfig(), tmp_path / "onnx")
    art = package(onnx_art.path, PackageConfig(ort_format=False, mobile_check=False), tmp_path / "bundle")
    info = json.loads((art.path / BUNDLE_FILE).read_text())
    width = len(info["smoke"]["logits"][0])
    expected = [(id2label or {}).get(str(i), f"LABEL_{i}") for i in range(width)]
    assert info["labels"] == expected
    assert smoke_test(art.path)["ok"]
    done = subprocess.run([sys.executable, "predict.py", "a fine film", "--json"], cwd=art.path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["label"] in expected


def test_coreml_readiness_names_an_embedding_over_16384_rows(tiny_onnx, monkeypatch):
    import onnx

    from toolchain import package as package_module

    assert mobile_readiness(tiny_onnx("bert").onnx_path)["CoreML MLProgram"]["over_16384"] == []
    monkeypatch.setattr(package_module, "COREML_MAX_DIM", 100)  # the tiny vocabulary (143 rows) is then too big
    blockers = package_module.coreml_dim_blockers(onnx.load(str(tiny_onnx("bert").onnx_path)))
    assert [(b["op"], b["shape"][0]) for b in blockers] == [("Gather", 143), ("Gather", 128)]  # words, positions


def test_lm_bundle_reference_decodes_as_the_bundle_does_so_int8_passes_at_16_tokens(tiny_onnx, tmp_path):
    """Issue 20: dynamic int8 rounds a 1-token cached step and a full recompute differently, so a no-cache
    reference failed SmolLM2's int8 bundle at 16 tokens ("differs ... by inf"). The reference now decodes with
    the cache, as predict.py and generate.py do, and the check holds the bundle to exactly its tokens."""
    from toolchain.bundle_predict import Predictor
    from toolchain.quantize import QuantizeConfig, quantize

    int8 = quantize(tiny_onnx("llama-past").path, QuantizeConfig(mode="dynamic", preset="avx2"), tmp_path / "int8")
    art = package(int8.path, PackageConfig(mobile_check=False, generate_tokens=16), tmp_path / "b")
    info = json.loads((art.path / BUNDLE_FILE).read_text())
    smoke = info["smoke"]
    assert smoke["decode"] == "kv-cache" and len(smoke["token_ids"]) >= 1
    assert art.manifest.lineage[-1].metrics["smoke"]["ok"]
    got = Predictor(art.path, threads=1).generate(smoke["texts"][0], len(smoke["token_ids"]))
    assert got["token_ids"] == smoke["token_ids"]
    assert (art.path / "generate.py").is_file() and "generate.py" in info["files"]


def test_lm_smoke_test_says_where_the_greedy_tokens_part(tiny_onnx, tmp_path):
    art = package(tiny_onnx("llama-past").path, PackageConfig(mobile_check=False, ort_format=False,
                                                                generate_tokens=6), tmp_path / "b")
    info = json.loads((art.path / BUNDLE_FILE).read_text())
    want = info["smoke"]["token_ids"]
    info["smoke"]["token_ids"] = want[:2] + [(want[2] + 1) % 300] + want[3:]
    (art.path / BUNDLE_FILE).write_text(json.dumps(info))
    checks = smoke_test(art.path, verify_hashes=False)
    assert not checks["ok"] and checks["models"]["model.onnx"] == float("inf")
    assert checks["problem"] == (f"model.onnx greedy tokens differ from the packaged reference's (kv-cache decode) "
                                 f"from token 3 of {len(want)}")


def test_generate_py_streams_the_same_greedy_tokens_standalone(tiny_onnx, tmp_path):
    art = package(tiny_onnx("llama-past").path, PackageConfig(mobile_check=False, generate_tokens=8), tmp_path / "b")
    smoke = json.loads((art.path / BUNDLE_FILE).read_text())["smoke"]
    from tokenizers import Tokenizer

    want = Tokenizer.from_file(str(art.path / "tokenizer.json")).decode(smoke["token_ids"])
    # Run from the bundle's folder as a user would; it imports predict.py from beside it.
    out = subprocess.run([sys.executable, "-I", "generate.py", "--tokens", str(len(smoke["token_ids"])),
                          "--threads", "1", smoke["texts"][0]], cwd=art.path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == smoke["texts"][0] + want + "\n"
    assert "decode" in out.stderr and "tokens/s" in out.stderr
    sampled = subprocess.run([sys.executable, "-I", "generate.py", "--tokens", "5", "--temperature", "0.8",
                              "--top-k", "20", "--top-p", "0.9", "--seed", "3", "the film"], cwd=art.path,
                             capture_output=True, text=True)
    again = subprocess.run(sampled.args, cwd=art.path, capture_output=True, text=True)
    assert sampled.returncode == 0 and sampled.stdout == again.stdout  # seeded sampling repeats
