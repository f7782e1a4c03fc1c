"""Benchmark pieces that need no worker process: statistics, run order, FLOPs, machine record, rows."""

import itertools
import json

import numpy as np
import pytest

from toolchain.bench import BenchConfig, RESULT_KEYS, ROW_KEYS, SCHEMA_VERSION, machine
from toolchain.bench.flops import inference_flops, model_shape
from toolchain.bench.results import add_speedups, new_row, storage_key, table_rows, timed_row
from toolchain.bench.runner import Entry, run_configuration
from toolchain.bench.stats import interleave, percentile, summarize, time_runs
from toolchain.bench.workload import Target, TokenizerJson, Workload
from toolchain.config import config_from_dict
from toolchain.errors import RecipeError


def fake_clock(durations):
    """A clock whose consecutive (start, stop) reads are `durations` apart."""
    ticks = itertools.accumulate(d for dur in durations for d in (0.0, dur))
    return lambda: next(ticks)


def test_time_runs_measures_each_call_on_a_fake_clock():
    calls = []
    lat, used = time_runs(calls.append, 5, start=3, n_inputs=4, clock=fake_clock([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert lat == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert used == calls == [3, 0, 1, 2, 3]  # cycles through the inputs from `start`


def test_summarize_gives_percentiles_and_throughput_of_a_fake_clock():
    durations = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    lat, _ = time_runs(lambda j: None, 100, 0, 1, clock=fake_clock(durations))
    s = summarize(lat, [8] * 100)
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["min_ms"] == pytest.approx(1.0) and s["mean_ms"] == pytest.approx(50.5)
    assert s["throughput"] == pytest.approx(800 / sum(durations))  # items over total time


@pytest.mark.parametrize("values", [[3.0], [5.0, 1.0], [0.2, 9.0, 4.0, 4.0, 7.5]])
def test_percentile_matches_numpy(values):
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_interleave_gives_every_worker_its_runs_in_rotating_rounds():
    order = interleave(3, 7, 3)
    assert order == [(0, 3), (1, 3), (2, 3), (1, 3), (2, 3), (0, 3), (2, 1), (0, 1), (1, 1)]
    for w in range(3):
        assert sum(n for k, n in order if k == w) == 7


def test_interleave_rejects_empty_schedules():
    with pytest.raises(ValueError):
        interleave(0, 5, 1)


class FakeClient:
    """Stands in for a worker: answers from a canned latency, logs each request."""

    def __init__(self, name, log, latency):
        self.name, self.log, self.latency = name, log, latency

    def request(self, cmd, **fields):
        self.log.append((self.name, cmd, fields.get("n")))
        if cmd == "prepare":
            return {"ok": True, "n": 1, "rss_reset": True}
        n = fields["n"]
        return {"ok": True, "latencies": [self.latency] * n, "inputs": [0] * n, "peak_rss_mb": 10.0}

    def close(self):
        pass


def _target(label, config=None, task="text-classification"):
    config = config or {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 16, "vocab_size": 10}
    return Target(label, None, "onnx", task, config, None, 1_000_000, "fp32")


def _workload(batch=2, seq=4):
    return Workload(f"seq={seq}", batch, seq, [{"input_ids": [[1] * seq] * batch, "attention_mask": [[1] * seq] * batch}])


def test_run_configuration_interleaves_blocks_across_workers():
    log = []
    cfg = BenchConfig(runs=4, warmup=1, block=2)
    entries = [Entry(_target(n), FakeClient(n, log, lat), {"load_s": 0.5, "session": {}}, [_workload()], "cpu", "fp32")
               for n, lat in (("a", 0.01), ("b", 0.02))]
    rows = run_configuration(entries, 0, cfg, lambda n: None)
    timed = [(name, n) for name, cmd, n in log if cmd == "run"][2:]  # after the two warm-ups
    assert timed == [("a", 2), ("b", 2), ("b", 2), ("a", 2)]
    assert [r["artifact"] for r in rows] == ["a", "b"]
    assert rows[0]["runs"] == 4 and rows[0]["p50_ms"] == pytest.approx(10.0)
    assert rows[1]["throughput"] == pytest.approx(2 / 0.02)


def test_worker_failure_becomes_an_error_row_and_the_others_go_on():
    log = []

    class Failing(FakeClient):
        def request(self, cmd, **fields):
            return {"ok": False, "error": "RuntimeError: boom"} if cmd == "run" else super().request(cmd, **fields)

    entries = [Entry(_target("bad"), Failing("bad", log, 0.01), {"load_s": 0.1, "session": {}}, [_workload()], "cpu", "fp32"),
               Entry(_target("good"), FakeClient("good", log, 0.01), {"load_s": 0.1, "session": {}}, [_workload()], "cpu", "fp32")]
    rows = run_configuration(entries, 0, BenchConfig(runs=2, warmup=0, block=1), lambda n: None)
    by = {r["artifact"]: r for r in rows}
    assert by["bad"]["status"] == "error" and "boom" in by["bad"]["message"]
    assert by["good"]["status"] == "ok" and by["good"]["runs"] == 2


MINILM = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
          "intermediate_size": 1536, "vocab_size": 30522}


def test_encoder_flops_count_linear_layers_and_attention():
    h, f, layers, b, s = 384, 1536, 6, 2, 128
    linear = 2 * b * s * layers * (4 * h * h + 2 * h * f)
    attention = 4 * b * s * s * h * layers
    assert inference_flops(MINILM, "feature-extraction", b, s) == linear + attention
    head = 2 * b * (h * h + h * 2)
    assert inference_flops(MINILM, "text-classification", b, s) == linear + attention + head


def test_pruned_heads_shrink_attention_flops():
    pruned = MINILM | {"pruned_heads": {"0": [0, 1, 2], "3": [5]}}
    assert model_shape(pruned).attn_width(0) == 9 * 32
    assert inference_flops(pruned, "feature-extraction", 1, 64) < inference_flops(MINILM, "feature-extraction", 1, 64)


def test_prune_stage_shapes_set_each_layers_ffn_and_heads():
    base = MINILM | {"num_hidden_layers": 2}
    pruned = base | {"toolchain_shapes": {"intermediate_size": [1152, 768], "num_heads": [12, 6], "version": 1}}
    s = model_shape(pruned)
    assert (s.ffn_width(0), s.ffn_width(1), s.attn_width(1)) == (1152, 768, 6 * 32)
    tokens, hidden = 64, MINILM["hidden_size"]
    saved = 2 * tokens * 2 * hidden * ((1536 - 1152) + (1536 - 768))  # FFN up and down
    saved += 2 * tokens * 4 * hidden * 6 * 32 + 2 * 2 * tokens * tokens * 6 * 32  # projections and scores of 6 heads
    got = inference_flops(base, "feature-extraction", 1, 64) - inference_flops(pruned, "feature-extraction", 1, 64)
    assert got == saved


def test_decoder_flops_use_grouped_kv_heads_and_gated_mlp():
    llama = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100}
    h, kv, f, v = 64, 32, 128, 100
    per_token = 2 * 2 * (h * h + 2 * h * kv + h * h + 3 * h * f)  # 2 FLOPs x 2 layers
    step = inference_flops(llama, "text-generation", 1, 10, "decode", context=11)
    assert step == per_token + 2 * 2 * 2 * 11 * h + 2 * h * v
    prefill = inference_flops(llama, "text-generation", 1, 10)
    assert prefill == 10 * per_token + 2 * 2 * 2 * 10 * 10 * h + 2 * 10 * h * v


def test_flops_name_the_missing_config_key():
    with pytest.raises(KeyError, match="num_hidden_layers"):
        inference_flops({"hidden_size": 8, "num_attention_heads": 2}, "feature-extraction", 1, 4)


def test_machine_record_reads_isa_flags_from_cpuinfo(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t: 0\n"
                    "flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile\n\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t: 1\nflags\t: avx2\n")
    monkeypatch.setattr(machine, "CPUINFO", fake)
    rec = machine.machine_record(threads=3)
    assert rec["cpu_model"] == "Test CPU 9000" and rec["cores_physical"] == 2 and rec["threads_used"] == 3
    assert rec["isa"] == {"avx2": True, "avx512": True, "vnni": True, "amx": True, "neon": False, "sve": False,
                          "arm_dotprod": False}
    assert {"version", "providers"} <= set(rec["onnxruntime"]) and isinstance(rec["gpu"], list)
    assert machine.fingerprint(rec) == machine.fingerprint(json.loads(json.dumps(rec)))


def test_machine_record_reads_arm_features(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp sve\nCPU part\t: 0xd40\n")
    monkeypatch.setattr(machine, "CPUINFO", fake)
    isa = machine.machine_record()["isa"]
    assert isa["neon"] and isa["arm_dotprod"] and isa["sve"] and not isa["avx2"]


def test_result_schema_is_versioned_and_its_keys_are_fixed():
    # Changing a key breaks the report, the bundle and users' scripts: bump SCHEMA_VERSION and update this.
    assert SCHEMA_VERSION == 1
    assert RESULT_KEYS == ("schema_version", "kind", "created", "machine", "config", "baseline", "peaks",
                           "artifacts", "rows")
    assert ROW_KEYS == (
        "artifact", "format", "precision", "task", "provider", "mode", "workload", "batch", "seq", "status", "message",
        "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "throughput", "throughput_unit",
        "tokens_per_s", "mean_padded_len", "load_s", "peak_rss_mb", "file_mb", "gflop", "gflops", "peak_gflops",
        "fraction_of_peak", "speedup", "session", "notes")


def test_every_row_has_exactly_the_schema_keys():
    t, w = _target("a"), _workload()
    skipped = new_row(t, "cuda", "forward", w, status="skipped", message="not here")
    timed = timed_row(t, "cpu", "forward", w, [0.01, 0.02], [0, 0])
    assert tuple(skipped) == ROW_KEYS and set(timed) == set(ROW_KEYS)
    with pytest.raises(KeyError):
        new_row(t, "cpu", "forward", w, latency=1)


def test_speedup_is_against_the_baseline_at_the_same_shape_and_provider():
    t, u, w = _target("base"), _target("fast"), _workload()
    rows = [timed_row(t, "cpu", "forward", w, [0.02], [0]), timed_row(u, "cpu", "forward", w, [0.005], [0]),
            timed_row(u, "cuda", "forward", w, [0.001], [0])]
    add_speedups(rows, "base")
    assert [r["speedup"] for r in rows] == [pytest.approx(1.0), pytest.approx(4.0), None]


def test_table_explains_skipped_rows():
    t, w = _target("a"), _workload()
    result = {"rows": [new_row(t, "tensorrt", "forward", w, status="skipped", message="tensorrt not available")]}
    rows, headers = table_rows(result)
    assert rows[0][headers.index("note")] == "skipped: tensorrt not available"


def test_storage_key_names_provider_and_workload_kind():
    assert storage_key("cpu", "seq=64") == "bench/cpu/seq"
    assert storage_key("cuda", "data=rotten-tomatoes") == "bench/cuda/data-rotten-tomatoes"


def test_tokenizer_pads_per_batch_right_for_encoders_and_left_for_lms(tiny):
    tok = TokenizerJson(tiny("bert"), left_pad=False)
    rows = tok.encode(["the film", "the film is a charming and moving story"], 64)
    batch = tok.pad(rows)
    assert len(batch["input_ids"][0]) == len(rows[1])  # padded to the longest, not to 64
    assert batch["attention_mask"][0][-1] == 0 and batch["input_ids"][0][-1] == tok.pad_id
    lm = TokenizerJson(tiny("gpt2"), left_pad=True).pad([[5], [5, 6, 7]])
    assert lm["attention_mask"][0] == [0, 0, 1] and lm["input_ids"][0][-1] == 5


@pytest.mark.parametrize("bad", [{"providers": ["gpu"]}, {"providers": []}, {"batch": [0]}, {"runs": 0},
                                 {"threads": 0}, {"providers": ["cpu", "cpu"]}])
def test_bench_config_rejects_bad_values(bad):
    with pytest.raises(RecipeError):
        config_from_dict(BenchConfig, bad)


def test_torch_dynamic_int8_swaps_linears_and_keeps_logits_close(tiny):
    import torch

    from toolchain.bench.worker import state_dict_bytes, torch_dynamic_int8
    from toolchain.modeling import ModelSource, load_model

    src = ModelSource(str(tiny("bert")), str(tiny("bert")), local=True)
    model = load_model(src, "text-classification")
    ids = torch.tensor([[2, 20, 30, 40, 3]])
    with torch.inference_mode():
        want = model(input_ids=ids).logits
        quantized = torch_dynamic_int8(model)
        got = quantized(input_ids=ids).logits
    modules = list(quantized.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in modules)
    assert torch.allclose(want, got, atol=0.05 * float(want.abs().max()) + 1e-3)
    assert state_dict_bytes(quantized) > 0


@pytest.mark.parametrize("spin,key", [("stop", "session.force_spinning_stop"), ("off", "session.intra_op.allow_spinning")])
def test_ort_spin_sets_how_idle_threads_wait(tiny_onnx, spin, key):
    from toolchain.runtime import SPIN, make_session

    session = make_session(tiny_onnx("bert").onnx_path, threads=2, spin=spin)
    assert session.get_session_options().get_session_config_entry(key) == SPIN[spin][key]
    with pytest.raises(ValueError, match="ort_spin must be"):
        BenchConfig(ort_spin="sometimes")
