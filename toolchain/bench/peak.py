"""This machine's measured limit: the best GFLOP/s of a large matrix product per provider and precision.

Measured once in a fresh worker with the benchmark's thread count and cached per machine
(`<cache>/bench/peaks.json`, keyed by machine.fingerprint), so a result reads as a fraction of
what the hardware did on the same kind of work.
"""

from __future__ import annotations

import json
import time

from ..artifact import atomic_write_text
from ..assets import cache_dir
from .client import WorkerClient, WorkerDied
from .machine import fingerprint

# Matrix size per device: large enough that the product is compute-bound, small enough to take a second.
GEMM_N = {"cpu": 1024, "gpu": 4096}
GEMM_REPS = 10


def peaks_file():
    return cache_dir() / "bench" / "peaks.json"


def measured_peak(provider: str, precision: str, machine: dict, env: dict | None = None, refresh: bool = False) -> dict:
    """{'gflops', 'n', 'op', 'precision', 'measured', 'source'} for (provider, precision), or {'error': why}.

    TensorRT shares the CUDA measurement: both run on the same GPU.
    """
    device = "cpu" if provider == "cpu" else "gpu"
    run_on = "cpu" if provider == "cpu" else "cuda"
    key = f"{fingerprint(machine)}/{run_on}/{precision}"
    cache = _read_cache()
    if key in cache and not refresh:
        return cache[key] | {"source": "cache"}
    try:
        with WorkerClient(env) as w:
            reply = w.request("peak", provider=run_on, precision=precision, threads=machine["threads_used"],
                              n=GEMM_N[device], reps=GEMM_REPS)
    except WorkerDied as exc:
        return {"error": str(exc)}
    if not reply.get("ok"):
        return {"error": reply.get("error") or reply.get("skipped")}
    value = {k: reply[k] for k in ("gflops", "n", "reps", "op", "precision")} | {"measured": time.time()}
    cache = _read_cache()  # re-read: another run may have written meanwhile
    cache[key] = value
    peaks_file().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(peaks_file(), json.dumps(cache, indent=2, sort_keys=True) + "\n")
    return value | {"source": "measured"}


def _read_cache() -> dict:
    try:
        data = json.loads(peaks_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
