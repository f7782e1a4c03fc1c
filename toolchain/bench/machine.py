"""What machine a benchmark ran on: CPU, ISA, cores and threads, runtimes, GPU.

`machine_record()` is stored with every benchmark result (and read by the report and packaging
stages), so a number is never separated from the hardware that produced it. It imports
onnxruntime (for its version and providers) but never torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
from pathlib import Path

from ..artifact import library_versions

CPUINFO = Path("/proc/cpuinfo")
# ISA features that decide which kernels onnxruntime and torch pick; name -> flags that imply it.
ISA = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni", "avx512vnni"),  # int8 dot products: what makes dynamic int8 pay off
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
    "neon": ("asimd", "neon"),
    "sve": ("sve",),
    "arm_dotprod": ("asimddp",),  # Arm's int8 dot product
}


def machine_record(threads: int | None = None) -> dict:
    """A JSON-ready record of this machine: CPU model, cores, threads used, ISA flags, runtimes, GPU.

    `threads` is the thread count the benchmark used (None: the default, all usable cores).
    """
    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "arch": platform.machine(),
        "cores_physical": physical_cores(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable_cores(),
        "threads_used": threads or usable_cores(),
        "isa": {name: any(f in flags for f in implied) for name, implied in ISA.items()},
        "memory_gb": memory_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "onnxruntime": onnxruntime_info(),
        "gpu": gpu_info(),
        "versions": library_versions(),
    }


def fingerprint(record: dict) -> str:
    """A short hash of what makes two machines equal for peak measurements (not the time of day)."""
    keys = ("cpu_model", "arch", "cores_logical", "cores_usable", "threads_used", "isa", "gpu")
    blob = json.dumps({k: record.get(k) for k in keys} | {"ort": record["onnxruntime"].get("version")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cpuinfo_fields() -> dict[str, str]:
    """The first value of each field in /proc/cpuinfo (Linux); empty elsewhere."""
    fields: dict[str, str] = {}
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's marketing name, e.g. 'AMD EPYC 9R14' or 'Apple M2'."""
    info = _cpuinfo_fields()
    for key in ("model name", "Hardware", "Model", "cpu model"):
        if info.get(key):
            return info[key]
    if platform.system() == "Darwin":
        out = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if out:
            return out
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU's feature flags, lower case (x86 'flags', Arm 'Features'; sysctl on macOS)."""
    info = _cpuinfo_fields()
    text = info.get("flags") or info.get("Features") or ""
    if not text and platform.system() == "Darwin":
        text = _run(["sysctl", "-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"]) or ""
        if platform.machine() == "arm64":
            text += " asimd"  # every Apple silicon core has NEON
    return {f.lower() for f in text.split()}


def physical_cores() -> int | None:
    """Distinct (package, core) pairs: what compute-bound kernels scale with, unlike hyperthreads."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return None
    pairs = set(re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", text, flags=re.S))
    return len(pairs) or None


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def onnxruntime_info() -> dict:
    """onnxruntime's version, build (cpu or gpu package) and the execution providers it offers."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"version": None, "providers": [], "device": None}
    return {"version": ort.__version__, "providers": ort.get_available_providers(), "device": ort.get_device()}


def gpu_info() -> list[dict]:
    """One entry per NVIDIA GPU (name, driver, memory) from nvidia-smi; empty when there is none."""
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"])
    gpus = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory_mb": _int(parts[2])})
    return gpus


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _run(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def openmp_wait_policy(cores: int) -> tuple[str | None, str]:
    """On a busy machine, OpenMP threads (PyTorch's) should sleep at barriers instead of spinning:
    (the OMP_WAIT_POLICY timed workers get, or None for the default; why).

    With more runnable threads than cores, a spinning OpenMP barrier waits for threads that lost their
    core: measured here at load ~9 on 2 cores, PyTorch's batch-1 p50 went from 47 ms (passive) to 535 ms
    (spinning), while onnxruntime (its own thread pool) moved from 31 to 35 ms. Left alone, that would
    flatter every ONNX row against PyTorch. Set before torch is imported here or in any worker.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return os.environ["OMP_WAIT_POLICY"], f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} (set by the caller)"
    load = os.getloadavg()[0]
    if load <= cores:
        return None, f"OpenMP default wait policy (load {load:.1f} <= {cores} cores)"
    return "PASSIVE", (f"OMP_WAIT_POLICY=PASSIVE: the machine was busy (load {load:.1f} on {cores} cores), where "
                       "PyTorch's spinning OpenMP threads lose their cores and run up to ~10x slower")


def calm_openmp(cores: int) -> str:
    """openmp_wait_policy, set for this process's children (and torch, if not imported yet); says which."""
    policy, why = openmp_wait_policy(cores)
    if policy:
        os.environ["OMP_WAIT_POLICY"] = policy
    return why


def pick_threads(wanted: int | None, cores: int) -> tuple[int, str]:
    """Threads per timed model: --threads; else all usable cores, or 1 when the machine is busy.

    On a busy machine each multi-threaded call waits until all its threads hold a core at once, and
    that wait, not the model, decides the figure: at load ~6 on 2 cores, 2 threads gave ONNX fp32
    14.0 ms and fused int8 6.6 ms where 1 thread gave 5.4 and 2.2 ms, and the ranking changed with it.
    """
    load = os.getloadavg()[0]
    if wanted:
        return wanted, f"{wanted} thread(s) per model (--threads; load {load:.1f} on {cores} cores at start)"
    if load > cores:
        return 1, (f"1 thread per model: the machine was busy (load {load:.1f} on {cores} cores), where a call "
                   "on 2 threads waits for both to hold a core and measures the contention, not the model")
    return cores, f"{cores} threads per model: all usable cores (load {load:.1f})"
