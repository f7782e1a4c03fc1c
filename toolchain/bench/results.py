"""Benchmark rows: their fixed schema, the limit and ratio columns, the table, and manifest storage.

A result (what `bench()` returns, `--json` prints and manifests store) is:

    {"schema_version": 1, "kind": "toolchain.bench", "created": unix time,
     "machine": machine.machine_record(), "config": BenchConfig as a dict,
     "baseline": label, "peaks": {"cpu/fp32": {"gflops": ...}, ...},
     "artifacts": [{"label", "path", "format", "task", "precision", "file_mb", "stored_as"}],
     "rows": [row, ...]}

Every row has exactly ROW_KEYS (None where a value does not apply), so readers never guess.
Manifests hold, under `bench/<provider>/<workload kind>`, the same dict with only that artifact's rows.
"""

from __future__ import annotations

from .flops import inference_flops
from .stats import summarize

SCHEMA_VERSION = 1
RESULT_KEYS = ("schema_version", "kind", "created", "machine", "config", "baseline", "peaks", "artifacts", "rows")
ROW_KEYS = (
    "artifact", "format", "precision", "task", "provider", "mode", "workload", "batch", "seq",
    "status", "message",
    "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms",
    "throughput", "throughput_unit", "tokens_per_s", "mean_padded_len",
    "load_s", "peak_rss_mb", "file_mb",
    "gflop", "gflops", "peak_gflops", "fraction_of_peak", "speedup",
    "session", "notes",
)


def new_row(target, provider: str, mode: str, workload, **values) -> dict:
    """A row with every key: the identity of the measurement, then whatever was measured."""
    row = dict.fromkeys(ROW_KEYS)
    row |= {"artifact": target.label, "format": target.format, "precision": target.precision, "task": target.task,
            "provider": provider, "mode": mode, "workload": workload.name, "batch": workload.batch,
            "seq": workload.seq, "file_mb": target.file_bytes / 1e6, "status": "ok", "message": "", "notes": []}
    unknown = set(values) - set(ROW_KEYS)
    if unknown:
        raise KeyError(f"not row keys: {sorted(unknown)}")
    return row | values


def timed_row(target, provider, mode, workload, latencies, inputs, **values) -> dict:
    """A row from per-call latencies; `inputs` are the batch indices used (decode: one per step)."""
    lens, items, real = workload.padded_lengths, workload.items, workload.real_tokens
    per_call_items = [items[j] for j in inputs]  # decode: each step makes one new token per sequence
    stats = summarize(latencies, per_call_items)
    total = sum(latencies)
    tokens = per_call_items if mode == "decode" else [real[j] for j in inputs]
    unit = "tokens/s" if mode == "decode" else "items/s"
    return new_row(target, provider, mode, workload, runs=len(latencies), throughput_unit=unit,
                   tokens_per_s=sum(tokens) / total if total else None,
                   mean_padded_len=sum(lens[j] for j in inputs) / len(inputs), **stats, **values)


def add_flops(row: dict, target, workload, inputs: list[int], contexts: list[int] | None, latencies: list[float]) -> None:
    """FLOPs per call (mean) and achieved GFLOP/s; decode calls pass their context length each."""
    try:
        flops = []
        for i, j in enumerate(inputs):
            b, s = workload.items[j], workload.padded_lengths[j]
            ctx = contexts[i] if contexts else None
            flops.append(inference_flops(target.config, target.task, b, s, row["mode"], ctx))
    except (KeyError, ValueError, TypeError) as exc:
        row["notes"].append(f"FLOPs unknown: {exc}")
        return
    row["gflop"] = sum(flops) / len(flops) / 1e9
    row["gflops"] = sum(flops) / sum(latencies) / 1e9 if sum(latencies) > 0 else None


def add_limits(rows: list[dict], peaks: dict[str, dict], peak_key) -> None:
    """Peak GFLOP/s of the row's provider and precision, and the fraction of it the row achieved."""
    for row in rows:
        peak = peaks.get(peak_key(row)) or {}
        if row["status"] == "ok" and peak.get("gflops"):
            row["peak_gflops"] = peak["gflops"]
            if row["gflops"] is not None:
                row["fraction_of_peak"] = row["gflops"] / peak["gflops"]
                if row["fraction_of_peak"] > 1:  # a peak measured while the machine was busy
                    row["notes"].append("above the measured peak: re-measure it on a quiet machine (--refresh-peak)")


def add_speedups(rows: list[dict], baseline: str) -> None:
    """speedup = baseline p50 / row p50 at the same provider, mode and shape (>1: faster than baseline)."""
    def key(r):
        return (r["provider"], r["mode"], r["workload"], r["batch"], r["seq"])

    base = {key(r): r["p50_ms"] for r in rows if r["artifact"] == baseline and r["status"] == "ok"}
    for r in rows:
        ref = base.get(key(r))
        if r["status"] == "ok" and ref and r["p50_ms"]:
            r["speedup"] = ref / r["p50_ms"]


TABLE = [("artifact", "artifact"), ("provider", "provider"), ("mode", "mode"), ("batch", "batch"),
         ("len", "len"), ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"),
         ("throughput", "items/s"), ("speedup", "vs base"), ("load_s", "load s"), ("peak_rss_mb", "RSS MB"),
         ("file_mb", "file MB"), ("gflops", "GFLOP/s"), ("pct", "% peak"), ("message", "note")]


def table_rows(result: dict) -> tuple[list[list], list[str]]:
    """The terminal table: one line per row; skipped and failed rows say why in the last column."""
    out = []
    for r in result["rows"]:
        cells = dict(r)
        cells["len"] = r["seq"] if r["seq"] is not None else (
            f"~{r['mean_padded_len']:.0f}" if r["mean_padded_len"] else r["workload"])
        cells["pct"] = f"{100 * r['fraction_of_peak']:.1f}" if r["fraction_of_peak"] is not None else None
        cells["speedup"] = f"{r['speedup']:.2f}x" if r["speedup"] is not None else None
        if r["mode"] == "decode" and r["throughput"] is not None:
            cells["throughput"] = f"{r['throughput']:.1f} tok/s"
        if r["status"] != "ok":
            cells["message"] = f"{r['status']}: {r['message']}"
        out.append([cells[k] for k, _ in TABLE])
    return out, [h for _, h in TABLE]


def storage_key(provider: str, workload_name: str) -> str:
    """Where a result lives in a manifest: bench/<provider>/<seq | data-NAME>."""
    kind = "seq" if workload_name.startswith("seq=") else workload_name.replace("=", "-").replace("/", "_")
    return f"bench/{provider}/{kind}"


def store(result: dict, targets) -> dict[str, list[str]]:
    """Write each artifact's rows into its manifest (Artifact.record_result); returns label -> keys written."""
    written: dict[str, list[str]] = {}
    for t in targets:
        if t.artifact is None:
            continue
        groups: dict[str, list[dict]] = {}
        for r in result["rows"]:
            if r["artifact"] == t.label:
                groups.setdefault(storage_key(r["provider"], r["workload"]), []).append(r)
        for key, rows in groups.items():
            t.artifact.record_result(key, {k: result[k] for k in RESULT_KEYS if k != "rows"} | {"rows": rows})
            written.setdefault(t.label, []).append(key)
    return written


def stored_results(artifact) -> dict[str, dict]:
    """The benchmark results stored in an artifact's manifest, keyed bench/<provider>/<workload kind>.

    The report and packaging stages read these; each value is a result dict (see module docstring)
    holding only this artifact's rows.
    """
    return {k: v for k, v in artifact.manifest.results.items() if k.startswith("bench/")}
