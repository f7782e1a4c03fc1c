"""Running a benchmark: one worker per (artifact, provider), blocks of runs interleaved across them."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..assets import cache_dir
from ..runtime import PROVIDERS
from .client import WorkerClient, WorkerDied
from .results import add_flops, new_row, timed_row
from .stats import interleave
from .workload import Target, Workload

Progress = Callable[[int], None]


@dataclass
class Entry:
    """A loaded worker and what it measures in the current configuration."""

    target: Target
    client: WorkerClient
    load: dict
    workloads: list[Workload]
    provider: str
    precision: str
    failed: str | None = None
    acc: dict = field(default_factory=dict)

    @property
    def lm(self) -> bool:
        return self.target.task == "text-generation"

    def request(self, cmd: str, **fields) -> dict:
        """A reply, with a dead worker turned into an error reply (the run goes on without it)."""
        try:
            return self.client.request(cmd, **fields)
        except WorkerDied as exc:
            return {"ok": False, "error": str(exc)}


def worker_env(threads: int, omp_wait_policy: str | None = None) -> dict:
    """The worker imports this same toolchain and uses the same thread count (and OpenMP policy) as recorded."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1"} | ({"OMP_WAIT_POLICY": omp_wait_policy} if omp_wait_policy else {})


def unavailable(provider: str, target: Target, machine: dict) -> str | None:
    """Why `provider` cannot run `target` here (None: try it). Checked before any worker starts."""
    if provider == "cpu":
        return None
    if target.format == "torch" and provider == "tensorrt":
        return "tensorrt runs ONNX artifacts only"
    ort = machine["onnxruntime"]
    if target.format == "onnx" and PROVIDERS[provider] not in ort["providers"]:
        return (f"{provider} not available: onnxruntime {ort['version']} offers {', '.join(ort['providers'])} "
                "(needs toolchain[gpu], i.e. onnxruntime-gpu, and an NVIDIA GPU)")
    if not machine["gpu"]:
        return f"{provider} not available: no NVIDIA GPU found (nvidia-smi)"
    return None


def precision_for(target: Target, provider: str, cfg) -> str:
    """The precision the matrix products run in: TensorRT's int8/fp16 flags override the graph's."""
    if provider == "tensorrt" and cfg.trt_int8:
        return "int8"
    if provider == "tensorrt" and cfg.trt_fp16 and target.precision == "fp32":
        return "fp16"
    return target.precision


def trt_request(target: Target, cfg, workloads: list[Workload]) -> dict:
    """TensorRT flags, an engine cache per artifact and flags, and the input shape range to build for."""
    tag = target.artifact.content_hash[:16] if target.artifact else hashlib.sha256(str(target.path).encode()).hexdigest()[:16]
    cache = cache_dir() / "bench" / "trt-engines" / f"{tag}-fp16{int(cfg.trt_fp16)}-int8{int(cfg.trt_int8)}"
    profile = None
    if not target.with_past:  # a cache input has 4 axes; let onnxruntime derive those ranges itself
        inputs = [n for n in target.onnx_inputs if not n.startswith("past_key_values")]
        top = [max(w.batch for w in workloads), max(max(w.padded_lengths) for w in workloads)]
        profile = {"inputs": inputs, "opt": top, "max": top}
    return {"fp16": cfg.trt_fp16, "int8": cfg.trt_int8, "cache_dir": str(cache), "profile": profile}


def run_provider(targets: list[Target], workloads: dict[str, list[Workload]], provider: str, cfg, machine: dict,
                 progress: Progress) -> list[dict]:
    """All rows of one provider: load a worker per artifact, then each configuration in turn."""
    rows, entries = [], []
    per_target = (cfg.runs + cfg.warmup) * len(next(iter(workloads.values())))
    try:
        for t in targets:
            reason = unavailable(provider, t, machine)
            started = ("skipped", reason) if reason else _start(t, provider, cfg, machine, workloads[t.label])
            if isinstance(started, Entry):
                entries.append(started)
                continue
            status, message = started
            rows += [_status_row(t, provider, w, status, message) for w in workloads[t.label]]
            progress(per_target)
        for i in range(len(next(iter(workloads.values())))):
            rows += run_configuration(entries, i, cfg, progress)
    finally:
        for e in entries:
            e.client.close()
    return rows


def _start(target: Target, provider: str, cfg, machine: dict, workloads: list[Workload]):
    """A loaded Entry, or (status, message) when the worker could not load the model."""
    client = WorkerClient(worker_env(machine["threads_used"], machine.get("omp_wait_policy")))
    request = {"format": target.format, "path": str(target.path), "task": target.task, "provider": provider,
               "threads": machine["threads_used"], "torch_compile": cfg.torch_compile,
               "torch_quantize": target.torch_quantize, "ort_spin": cfg.ort_spin}
    if provider == "tensorrt":
        request["trt"] = trt_request(target, cfg, workloads)
    try:
        reply = client.request("load", **request)
    except WorkerDied as exc:
        reply = {"ok": False, "error": str(exc)}
    if reply.get("ok"):
        target.file_bytes = reply.get("file_bytes", target.file_bytes)  # a model quantized at load has no file
        return Entry(target, client, reply, workloads, provider, precision_for(target, provider, cfg))
    client.close()
    return ("skipped", reply["skipped"]) if reply.get("skipped") else ("error", reply["error"])


def _status_row(target: Target, provider: str, workload: Workload, status: str, message: str) -> dict:
    mode = "prefill" if target.task == "text-generation" else "forward"
    return new_row(target, provider, mode, workload, status=status, message=message)


def run_configuration(entries: list[Entry], i: int, cfg, progress: Progress) -> list[dict]:
    """One configuration (batch, length) on every loaded worker: prepare, warm up, interleaved runs."""
    live = [e for e in entries if _prepare(e, i, cfg, progress)]
    rows = [_failed_row(e, i) for e in entries if e not in live]
    if live:
        for k, n in interleave(len(live), cfg.runs, cfg.block):
            _block(live[k], i, n, cfg)
            progress(n)
    return rows + [r for e in live for r in _rows(e, i, cfg)]


def _prepare(e: Entry, i: int, cfg, progress: Progress) -> bool:
    w = e.workloads[i]
    e.failed, e.acc = None, {"lat": [], "inputs": [], "rss": 0.0, "prefill": [], "steps": [], "step_inputs": [],
                             "contexts": [], "first_ms": None}
    reply = e.request("prepare", key=w.name, batches=w.batches)
    e.acc["rss_reset"] = reply.get("rss_reset", False)
    if reply.get("ok") and cfg.warmup:
        cmd = "generate" if e.lm else "run"
        reply = e.request(cmd, key=w.name, n=cfg.warmup, steps=cfg.decode_tokens, warmup=True)
        first = reply.get("prefill" if e.lm else "latencies") or [None]
        e.acc["first_ms"] = first[0] * 1e3 if first[0] is not None else None
    progress(cfg.warmup)
    if not reply.get("ok"):
        e.failed = reply.get("error") or reply.get("skipped")
    return e.failed is None


def _block(e: Entry, i: int, n: int, cfg) -> None:
    """One block of `n` timed calls on one worker; a failure ends this worker's configuration."""
    if e.failed:
        return
    w = e.workloads[i]
    reply = e.request("generate" if e.lm else "run", key=w.name, n=n, steps=cfg.decode_tokens)
    if not reply.get("ok"):
        e.failed = reply.get("error") or reply.get("skipped")
        return
    acc = e.acc
    acc["rss"] = max(acc["rss"], reply["peak_rss_mb"])
    if not e.lm:
        acc["lat"] += reply["latencies"]
        acc["inputs"] += reply["inputs"]
        return
    acc["prefill"] += reply["prefill"]
    acc["inputs"] += reply["inputs"]
    acc["no_decode"] = reply.get("no_decode")
    for j, steps in zip(reply["inputs"], reply["decode"]):
        acc["steps"] += steps
        acc["step_inputs"] += [j] * len(steps)
        acc["contexts"] += [w.padded_lengths[j] + t + 1 for t in range(len(steps))]


def _failed_row(e: Entry, i: int) -> dict:
    status = "error" if e.failed and not e.failed.startswith("skipped") else "skipped"
    return new_row(e.target, e.provider, "prefill" if e.lm else "forward", e.workloads[i], status=status,
                   message=e.failed or "")


def _rows(e: Entry, i: int, cfg) -> list[dict]:
    if e.failed:
        return [_failed_row(e, i)]
    w, acc = e.workloads[i], e.acc
    common = {"load_s": e.load["load_s"], "peak_rss_mb": acc["rss"], "session": e.load["session"],
              "precision": e.precision}
    notes = _notes(e, cfg)
    if not e.lm:
        row = timed_row(e.target, e.provider, "forward", w, acc["lat"], acc["inputs"], notes=notes, **common)
        add_flops(row, e.target, w, acc["inputs"], None, acc["lat"])
        return [row]
    prefill = timed_row(e.target, e.provider, "prefill", w, acc["prefill"], acc["inputs"], notes=notes, **common)
    add_flops(prefill, e.target, w, acc["inputs"], None, acc["prefill"])
    if not acc["steps"]:
        return [prefill, new_row(e.target, e.provider, "decode", w, status="skipped", message=acc["no_decode"])]
    decode = timed_row(e.target, e.provider, "decode", w, acc["steps"], acc["step_inputs"], notes=list(notes), **common)
    add_flops(decode, e.target, w, acc["step_inputs"], acc["contexts"], acc["steps"])
    decode["notes"].append(f"{cfg.decode_tokens} greedy steps with the KV cache after each prefill")
    return [prefill, decode]


def _notes(e: Entry, cfg) -> list[str]:
    notes = []
    if not e.acc.get("rss_reset"):
        notes.append("peak RSS since the worker started (could not reset the mark)")
    if e.acc.get("first_ms") is not None and (cfg.torch_compile or e.provider == "tensorrt"):
        notes.append(f"first call {e.acc['first_ms']:.0f} ms (compile / engine build)")
    if e.target.format == "torch":
        notes.append("torch " + e.load["session"].get("mode", "eager"))
    return notes
