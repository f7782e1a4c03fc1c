"""Benchmarks end to end: real worker processes on the tiny models (a few seconds each)."""

import dataclasses
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from toolchain.artifact import Artifact
from toolchain.bench import BenchConfig, RESULT_KEYS, ROW_KEYS, bench, stored_results
from toolchain.bench.client import WorkerClient
from toolchain.bench.peak import measured_peak
from toolchain.bench.machine import machine_record, usable_cores
from toolchain.bench.runner import worker_env
from toolchain.bench.workload import TokenizerJson
from toolchain.cli import main

QUICK = dict(batch=(1, 2), seq=(8,), runs=3, warmup=1, block=2, peak=False)


@pytest.fixture
def bert_onnx(tiny_onnx, tmp_path):
    """A private copy of the tiny ONNX classifier, so stored results do not leak into other tests."""
    return shutil.copytree(tiny_onnx("bert").path, tmp_path / "bert-onnx")


def test_bench_cli_compares_torch_and_onnx_and_stores_results(tiny, bert_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "cache"))
    args = ["bench", str(tiny("bert")), str(bert_onnx), "--batch", "1,2", "--seq", "8", "--runs", "3",
            "--warmup", "1", "--threads", "1", "--json"]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert set(result) == set(RESULT_KEYS)
    assert result["schema_version"] == 1 and result["machine"]["threads_used"] == 1
    rows = result["rows"]
    assert len(rows) == 4 and all(set(row) == set(ROW_KEYS) and row["status"] == "ok" for row in rows)
    assert {row["artifact"] for row in rows if row["speedup"] == 1.0} == {"bert"}  # the first is the baseline
    onnx = [row for row in rows if row["format"] == "onnx"]
    assert onnx[0]["session"]["intra_op_num_threads"] == 1 and onnx[0]["session"]["providers"][0] == "CPUExecutionProvider"
    assert all(row["p50_ms"] <= row["p99_ms"] and row["runs"] == 3 for row in rows)
    assert all(0 < row["fraction_of_peak"] for row in rows)
    assert result["peaks"]["cpu/fp32"]["gflops"] > 0
    stored = stored_results(Artifact.load(bert_onnx))
    assert list(stored) == ["bench/cpu/seq"] and len(stored["bench/cpu/seq"]["rows"]) == 2
    assert stored["bench/cpu/seq"]["machine"]["cpu_model"] == result["machine"]["cpu_model"]
    assert Artifact.load(bert_onnx).verify() == []  # results live in the manifest, the payload is untouched


def test_unavailable_providers_are_skipped_with_a_message(bert_onnx, tiny):
    cfg = BenchConfig(providers=("cpu", "cuda", "tensorrt"), store=False, **QUICK)
    result = bench([str(bert_onnx), str(tiny("bert"))], cfg)
    for row in result["rows"]:
        if row["provider"] == "cpu":
            assert row["status"] == "ok"
        elif result["machine"]["gpu"] == [] or "CUDAExecutionProvider" not in result["machine"]["onnxruntime"]["providers"]:
            assert row["status"] == "skipped" and row["p50_ms"] is None
            assert "not available" in row["message"] or "ONNX artifacts only" in row["message"]
    r = CliRunner().invoke(main, ["bench", str(bert_onnx), "--providers", "tensorrt", "--seq", "8", "--batch", "1",
                                  "--runs", "1", "--no-peak", "--no-store"], catch_exceptions=False)
    if "TensorrtExecutionProvider" not in result["machine"]["onnxruntime"]["providers"]:
        assert r.exit_code == 0 and "skipped: tensorrt not available" in r.output


def test_causal_lm_reports_prefill_and_decode_with_the_kv_cache(tiny, tiny_onnx):
    specs = [str(tiny("gpt2")), str(tiny_onnx("gpt2-past").path), str(tiny_onnx("gpt2").path)]
    cfg = BenchConfig(batch=(2,), seq=(8,), runs=2, warmup=1, decode_tokens=3, store=False, peak=False)
    result = bench(specs, cfg)
    torch_lm, past, no_past = [a["label"] for a in result["artifacts"]]  # two folders named gpt2: labels differ
    assert torch_lm != no_past
    by = {(r["artifact"], r["mode"]): r for r in result["rows"]}
    for name in (torch_lm, past):
        assert by[(name, "prefill")]["status"] == "ok"
        decode = by[(name, "decode")]
        assert decode["status"] == "ok" and decode["runs"] == 2 * 3 and decode["throughput_unit"] == "tokens/s"
        assert decode["gflop"] < by[(name, "prefill")]["gflop"]  # one token, not eight
    assert by[(no_past, "prefill")]["status"] == "ok"
    assert by[(no_past, "decode")]["status"] == "skipped" and "--with-past" in by[(no_past, "decode")]["message"]


def test_data_workload_pads_each_batch_to_its_longest_text(bert_onnx, tmp_path):
    rows = [{"text": "the film is " + "very " * (i % 7) + "good", "label": ["pos", "neg"][i % 2]} for i in range(40)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = BenchConfig(batch=(2,), data=str(data), runs=2, warmup=0, store=False, peak=False)
    row = bench([str(bert_onnx)], cfg)["rows"][0]
    assert row["status"] == "ok" and row["seq"] is None and row["workload"] == f"data={data}"
    assert 4 <= row["mean_padded_len"] < 128


def test_a_sentence_pair_dataset_is_timed_on_both_texts(bert_onnx, tmp_path):
    rows = [{"premise": "the film is good", "hypothesis": "it is " + "very " * 6 + "fine", "label": ["pos", "neg"][i % 2]}
            for i in range(40)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = BenchConfig(batch=(2,), data=str(data), text_column="premise", runs=2, warmup=0, store=False, peak=False)
    alone = bench([str(bert_onnx)], cfg)["rows"][0]["mean_padded_len"]
    paired = bench([str(bert_onnx)], dataclasses.replace(cfg, pair_column="hypothesis"))["rows"][0]["mean_padded_len"]
    both = TokenizerJson(bert_onnx, left_pad=False).encode([(rows[0]["premise"], rows[0]["hypothesis"])], 128)[0]
    assert alone == 6 and paired == len(both) > alone  # [CLS] premise [SEP] hypothesis [SEP]


def test_worker_survives_a_bad_request_and_measures_a_gemm_peak(tmp_path, monkeypatch):
    with WorkerClient() as w:
        bad = w.request("load", format="onnx", path=str(tmp_path), task="text-classification", provider="cpu",
                        threads=1)
        assert not bad["ok"] and "does not exist" in bad["error"]
        peak = w.request("peak", provider="cpu", precision="int8", threads=1, n=64, reps=2)
        assert peak["ok"] and peak["op"] == "MatMulInteger" and peak["gflops"] > 0


def test_peak_is_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path))
    monkeypatch.setattr("toolchain.bench.peak.GEMM_N", {"cpu": 64, "gpu": 64})
    m = machine_record(1)
    first = measured_peak("cpu", "fp32", m)
    second = measured_peak("cpu", "fp32", m)
    assert first["source"] == "measured" and second["source"] == "cache" and second["gflops"] == first["gflops"]
    assert measured_peak("cpu", "fp32", m, refresh=True)["source"] == "measured"


def test_unknown_baseline_is_a_config_error(bert_onnx):
    r = CliRunner().invoke(main, ["bench", str(bert_onnx), "--speedup-baseline", "nope", "--runs", "1"])
    assert r.exit_code == 8 and "baseline 'nope'" in r.output


@pytest.mark.slow
def test_torch_compile_option_runs_and_is_recorded(tiny):
    cfg = BenchConfig(batch=(1,), seq=(8,), runs=2, warmup=1, torch_compile=True, store=False, peak=False)
    row = bench([str(tiny("bert"))], cfg)["rows"][0]
    assert row["status"] == "ok" and row["session"]["mode"] == "torch.compile"


@pytest.mark.slow
def test_bench_builtin_minilm_torch_vs_onnx_on_real_text(tmp_path):
    from toolchain.export import ExportConfig, export

    export("minilm", ExportConfig(), tmp_path / "minilm-onnx")
    cfg = BenchConfig(batch=(1, 8), data="rotten-tomatoes", runs=5, warmup=1)
    result = bench(["minilm", str(tmp_path / "minilm-onnx")], cfg)
    assert all(r["status"] == "ok" and r["fraction_of_peak"] > 0 for r in result["rows"])
    assert stored_results(Artifact.load(tmp_path / "minilm-onnx"))["bench/cpu/data-rotten-tomatoes"]["rows"]


@pytest.mark.gpu
@pytest.mark.parametrize("flags", [{}, {"trt_fp16": True}])
def test_cuda_and_tensorrt_rows_on_a_gpu(tiny_onnx, tmp_path, monkeypatch, flags):
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path / "cache"))
    art = shutil.copytree(tiny_onnx("bert").path, tmp_path / "bert-onnx")
    cfg = BenchConfig(providers=("cpu", "cuda", "tensorrt"), batch=(1, 4), seq=(8, 32), runs=5, warmup=2, **flags)
    result = bench([str(art)], cfg)
    gpu_rows = [r for r in result["rows"] if r["provider"] != "cpu"]
    assert result["machine"]["gpu"], "no GPU found by nvidia-smi"
    assert len(gpu_rows) == 2 * 2 * 2  # (cuda, tensorrt) x batch (1, 4) x seq (8, 32)
    for r in gpu_rows:
        assert r["status"] == "ok", r["message"]
        provider = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[r["provider"]]
        assert r["session"]["providers"][0] == provider
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput"] > 0 and r["gflops"] > 0
    trt = next(r for r in gpu_rows if r["provider"] == "tensorrt")
    opts = trt["session"]["provider_options"]["TensorrtExecutionProvider"]
    on = {"1", "True", "true"}  # onnxruntime reports provider options as strings
    assert opts["trt_engine_cache_enable"] in on and (opts["trt_fp16_enable"] in on) == bool(flags)
    assert any((tmp_path / "cache" / "bench" / "trt-engines").rglob("*"))  # the engine cache was written
    assert result["peaks"]["cuda/fp32"]["gflops"] > 0


def test_torch_dynamic_int8_target_is_timed_quantized_beside_fp32(tiny):
    from toolchain.bench.workload import resolve_target, torch_dynamic_int8_target

    fp32 = resolve_target(str(tiny("bert")))
    int8 = torch_dynamic_int8_target(fp32)
    assert int8.artifact is None and int8.label == "bert+torch-int8" and fp32.torch_quantize is None
    result = bench([str(tiny("bert")), int8], BenchConfig(store=False, **QUICK))
    rows = {(r["artifact"], r["batch"]): r for r in result["rows"]}
    assert all(r["status"] == "ok" for r in rows.values())
    q, f = rows[("bert+torch-int8", 1)], rows[("bert", 1)]
    assert q["precision"] == "int8" and q["session"]["mode"] == "eager dynamic-int8" and f["session"]["mode"] == "eager"
    assert q["file_mb"] != f["file_mb"]  # the quantized state_dict's size, reported by the worker


def test_torch_dynamic_int8_target_refuses_onnx(tiny_onnx):
    from toolchain.bench.workload import resolve_target, torch_dynamic_int8_target
    from toolchain.errors import Unsupported

    with pytest.raises(Unsupported, match="ONNX model"):
        torch_dynamic_int8_target(resolve_target(str(tiny_onnx("bert").path)))


def test_bench_on_a_busy_machine_times_one_thread_with_sleeping_openmp(tiny_onnx, tmp_path, monkeypatch):
    # Load 9 on this machine's cores: two threads per call would measure the contention, not the model.
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (9.0 * usable_cores(), 9.0, 9.0))
    result = bench([str(tiny_onnx("bert").path)], BenchConfig(batch=(1,), seq=(8,), runs=2, warmup=0, peak=False,
                                                             store=False))
    m = result["machine"]
    assert m["threads_used"] == 1 and "busy" in m["threads_why"] and m["omp_wait_policy"] == "PASSIVE"
    assert result["rows"][0]["status"] == "ok" and "OMP_WAIT_POLICY" not in os.environ  # only the workers sleep
    assert worker_env(1, "PASSIVE")["OMP_WAIT_POLICY"] == "PASSIVE" and "OMP_WAIT_POLICY" not in worker_env(1)
