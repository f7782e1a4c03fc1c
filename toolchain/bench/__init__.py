"""Benchmarks: latency, throughput, memory and fraction of the machine's limit, per execution provider.

    >>> from toolchain.bench import BenchConfig, bench                      # doctest: +SKIP
    >>> result = bench(["runs/teacher", "runs/teacher-onnx"], BenchConfig(data="rotten-tomatoes", batch=(1, 32)))

Each (artifact, provider) is timed in its own worker process (`python -m toolchain.bench.worker`),
torch or onnxruntime but never both. The parent tokenizes, sends the same batches to every worker,
and hands out blocks of runs round-robin (stats.interleave) so drift of a shared machine lands on
all artifacts alike. Results carry machine.machine_record() and are stored in each artifact's
manifest (results.stored_results reads them back). The result layout is in results.py.

This module imports neither torch nor onnxruntime: the worker imports this package first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import config_to_dict, opt, resolve_max_length
from ..errors import RecipeError
from ..runtime import PROVIDERS
from .results import RESULT_KEYS, ROW_KEYS, SCHEMA_VERSION, stored_results

__all__ = ["BenchConfig", "bench", "stored_results", "SCHEMA_VERSION", "ROW_KEYS", "RESULT_KEYS"]


@dataclass(frozen=True)
class BenchConfig:
    providers: tuple[str, ...] = opt(("cpu",), "Execution providers (cpu,cuda,tensorrt); one not available here "
                                               "gives a 'skipped' row.")
    batch: tuple[int, ...] = opt((1, 8, 32), "Batch sizes, each a configuration.")
    seq: tuple[int, ...] = opt((16, 64, 128), "Fixed sequence lengths, no padding (ignored with --data).")
    data: str | None = opt(None, "Real texts to time (the test split of a dataset, or hamlet lines), padded per "
                                 "batch; when unset, fixed --seq lengths.")
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    validation_data: str | None = None
    test_data: str | None = opt(None, "The test split's own file: its texts are the ones timed.")
    split_column: str | None = "split"
    max_length: int | None = None  # truncation of real texts, as deployment would truncate
    threads: int | None = opt(None, "Intra-op threads for torch and onnxruntime alike; when unset, all usable cores "
                                    "(1 if the machine is busy).")
    runs: int = opt(50, "Timed calls per artifact and configuration.")
    warmup: int = opt(5, "Untimed calls first (allocations, caches, lazy init, compilation).")
    block: int = opt(5, "Calls per artifact before the next one's turn: small blocks cancel drift better.")
    speedup_baseline: str | None = opt(None, "Artifact the speedup column is relative to (label or path); when "
                                             "unset, the first.")
    torch_compile: bool = opt(False, "Run torch artifacts through torch.compile instead of eager.")
    decode_tokens: int = opt(16, "Causal LMs: greedy decode steps with the KV cache after each prefill.")
    trt_fp16: bool = opt(False, "TensorRT: allow fp16 kernels.")
    trt_int8: bool = opt(False, "TensorRT: allow int8 kernels (needs a QDQ graph or a calibration table).")
    peak: bool = opt(True, "Measure (or read the cached) GEMM peak for the fraction-of-peak column.")
    refresh_peak: bool = opt(False, "Re-measure this machine's GEMM peak instead of using the cache.")
    store: bool = opt(True, "Write the results into the artifacts' manifests.")
    # "spin" is onnxruntime's default; "stop" stops when a run ends, so an idle worker leaves the cores to the
    # one being timed (runtime.SPIN).
    ort_spin: str = opt("spin", "How onnxruntime's intra-op threads wait between runs.",
                        choices=("spin", "stop", "off"))

    def __post_init__(self):
        unknown = [p for p in self.providers if p not in PROVIDERS]
        if not self.providers or unknown:
            raise ValueError(f"providers must be some of {', '.join(PROVIDERS)}; got {list(self.providers)}")
        if len(set(self.providers)) != len(self.providers):
            raise ValueError("providers are listed twice")
        for name, most in (("batch", 4096), ("seq", 65536)):  # beyond these, inputs alone need gigabytes
            values = getattr(self, name)
            if not values or any(not 1 <= v <= most for v in values):
                raise ValueError(f"{name} needs values from 1 to {most}; got {list(values)}")
        for name, low in (("runs", 1), ("warmup", 0), ("block", 1), ("decode_tokens", 1), ("max_length", 2)):
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.ort_spin not in ("spin", "stop", "off"):
            raise ValueError(f"ort_spin must be spin, stop or off; got {self.ort_spin!r}")


def bench(specs: list, cfg: BenchConfig = BenchConfig(), progress: Callable[[int], None] | None = None) -> dict:
    """Benchmark artifacts (or model folders) on each provider and configuration; see results.py for the layout.

    A spec is what a user types (artifact or model folder, built-in name) or a ready workload.Target
    (e.g. workload.torch_dynamic_int8_target(...), which has no folder of its own).
    """
    from .machine import machine_record, openmp_wait_policy, pick_threads, usable_cores
    from .results import add_limits, add_speedups, store, storage_key
    from .runner import run_provider
    from .workload import Target, resolve_target, unique_labels

    targets = [s if isinstance(s, Target) else resolve_target(s) for s in specs]
    unique_labels(targets)
    check_lengths(targets, cfg)
    baseline = pick_baseline(targets, specs, cfg.speedup_baseline)
    # On a busy machine: 1 thread and sleeping OpenMP barriers, or the figures measure the contention.
    threads, threads_why = pick_threads(cfg.threads, usable_cores())
    policy, openmp_why = openmp_wait_policy(usable_cores())
    machine = machine_record(threads) | {"threads_why": threads_why, "omp_wait_policy": policy, "openmp": openmp_why}
    workloads = build_workloads(targets, cfg)
    rows = []
    for provider in cfg.providers:
        rows += run_provider(targets, workloads, provider, cfg, machine, progress or (lambda n: None))
    peaks = measure_peaks(rows, machine, cfg) if cfg.peak else {}
    add_limits(rows, peaks, lambda r: f"{r['provider']}/{r['precision']}")
    add_speedups(rows, baseline.label)
    rows.sort(key=_row_order(targets, cfg))
    result = {
        "schema_version": SCHEMA_VERSION, "kind": "toolchain.bench", "created": _now(), "machine": machine,
        "config": config_to_dict(cfg), "baseline": baseline.label, "peaks": peaks, "rows": rows,
        "artifacts": [{"label": t.label, "path": str(t.path), "format": t.format, "task": t.task,
                       "precision": t.precision, "file_mb": t.file_bytes / 1e6,
                       "stored_as": sorted({storage_key(r["provider"], r["workload"]) for r in rows
                                            if r["artifact"] == t.label}) if t.artifact and cfg.store else []}
                      for t in targets],
    }
    if cfg.store:
        store(result, targets)
    return result


def check_lengths(targets, cfg: BenchConfig) -> None:
    """Refuse a --seq longer than a model's positions before anything runs (it would only give error rows)."""
    import json

    if cfg.data:
        return
    for t in targets:
        try:
            config = json.loads((Path(t.path) / "config.json").read_text())
        except (OSError, ValueError, TypeError):
            continue  # the worker reports an unreadable model in its own row
        limit = next((config[k] for k in ("max_position_embeddings", "n_positions", "n_ctx")
                      if isinstance(config, dict) and isinstance(config.get(k), int)), None)
        if limit is not None and max(cfg.seq) > limit:
            raise RecipeError(f"seq {max(cfg.seq)} is longer than {t.label} takes ({limit} positions)",
                              f"use --seq values up to {limit}")


def pick_baseline(targets, specs: list[str], wanted: str | None):
    """The target named by `wanted` (its label, or the spec typed for it); the first when None."""
    if wanted is None:
        return targets[0]
    for t, spec in zip(targets, specs):
        if wanted in (t.label, spec, str(t.path)):
            return t
    raise RecipeError(f"baseline {wanted!r} is not one of the benchmarked artifacts",
                      f"use one of: {', '.join(t.label for t in targets)}")


def _max_length(cfg: BenchConfig, path: Path) -> int:
    """Real texts are cut where the model was trained / packaged to cut them (resolve_max_length)."""
    from ..artifact import Artifact

    return resolve_max_length(cfg, Artifact.load(path) if Artifact.is_artifact(path) else None).max_length


def build_workloads(targets, cfg: BenchConfig) -> dict:
    """label -> one Workload per configuration, in the same order for every target (batch, then length)."""
    from .workload import TokenizerJson, data_texts, data_workload, synthetic_workload

    texts = data_texts(cfg) if cfg.data else None
    made: dict[tuple, list] = {}
    out = {}
    for t in targets:
        left = t.task == "text-generation"
        length = _max_length(cfg, t.path) if texts is not None else None
        tokenizer = (t.path / "tokenizer.json").read_bytes() if (t.path / "tokenizer.json").is_file() else t.path
        key = (tokenizer, left, length)
        if key not in made:
            tok = TokenizerJson(t.path, left_pad=left)
            if texts is not None:
                made[key] = [data_workload(tok, texts, cfg.data, b, length, cfg.runs + cfg.warmup)
                             for b in cfg.batch]
            else:
                made[key] = [synthetic_workload(tok, b, s) for b in cfg.batch for s in cfg.seq]
        out[t.label] = made[key]
    return out


def measure_peaks(rows: list[dict], machine: dict, cfg: BenchConfig) -> dict:
    """'provider/precision' -> measured peak, for each pair that has a timed row."""
    from .peak import measured_peak
    from .runner import worker_env

    pairs = sorted({(r["provider"], r["precision"]) for r in rows if r["status"] == "ok"})
    env = worker_env(machine["threads_used"], machine.get("omp_wait_policy"))
    return {f"{p}/{prec}": measured_peak(p, prec, machine, env, cfg.refresh_peak) for p, prec in pairs}


def _row_order(targets, cfg: BenchConfig):
    order = {t.label: i for i, t in enumerate(targets)}
    modes = {"forward": 0, "prefill": 1, "decode": 2}
    return lambda r: (cfg.providers.index(r["provider"]), r["batch"], r["seq"] or 0, modes[r["mode"]],
                      order[r["artifact"]])


def _now() -> float:
    import time

    return time.time()
