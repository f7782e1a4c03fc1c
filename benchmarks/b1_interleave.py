"""Why interleaved batch-1 figures read higher than one model timed alone: each model's b1 p50 interleaved
with the others (toolchain.bench, a worker per model, blocks of 50 calls) against the same model timed
with no other worker alive, under each way of letting idle threads wait.

    python benchmarks/b1_interleave.py runs/minilm/teacher runs/compare/toolchain-onnx runs/minilm/int8-dynamic

Settings (toolchain.runtime.SPIN for onnxruntime, OMP_WAIT_POLICY for PyTorch's OpenMP threads):
  spin     onnxruntime and OpenMP defaults: threads keep spinning after a call returns
  stop     onnxruntime stops its threads when a run ends (session.force_spinning_stop); OpenMP PASSIVE
  off      onnxruntime never spins (session.intra_op.allow_spinning=0); OpenMP PASSIVE
Rounds alternate the order of the settings so drift of a shared machine lands on all. Writes
benchmarks/results/b1_interleave.{json,md}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import click  # noqa: E402

SETTINGS = {"spin": ("spin", None), "stop": ("stop", "PASSIVE"), "off": ("off", "PASSIVE")}


def one_setting(models: list[str], setting: str, threads: int, runs: int) -> dict:
    """Interleaved then alone, in a child process so OMP_WAIT_POLICY is read fresh (it is set before torch)."""
    ort_spin, omp = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | ({"OMP_WAIT_POLICY": omp} if omp else {})
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from toolchain.bench import BenchConfig, bench
models = {models!r}
common = dict(batch=(1,), data="rotten-tomatoes", max_length=64, threads={threads}, runs={runs}, warmup=20,
              block=50, peak=False, store=False, ort_spin={ort_spin!r})
out = {{"interleaved": {{}}, "alone": {{}}}}
r = bench(models, BenchConfig(**common))
out["load"] = r["machine"].get("load")
for row in r["rows"]:
    out["interleaved"][row["artifact"]] = row.get("p50_ms")
labels = [a["label"] for a in r["artifacts"]]
for m, label in zip(models, labels):
    out["alone"][label] = bench([m], BenchConfig(**common))["rows"][0].get("p50_ms")
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def task_cpu_ns(pid: int) -> int:
    """CPU time of every thread of process `pid` so far, in ns (Linux schedstat: exact, not tick-sampled)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def idle_burn(model: str, setting: str, threads: int, blocks: int = 3, block: int = 30, idle_s: float = 0.3) -> dict:
    """CPU a worker burns while idle, right after a block of batch-1 calls: what it takes from the next model.

    On a busy machine wall times drown in the queue for a core, but CPU time burnt while the worker has
    nothing to do is still there to count.
    """
    from toolchain.bench import BenchConfig, build_workloads
    from toolchain.bench.client import WorkerClient
    from toolchain.bench.runner import worker_env
    from toolchain.bench.workload import resolve_target

    ort_spin, omp = SETTINGS[setting]
    target = resolve_target(model)
    cfg = BenchConfig(batch=(1,), data="rotten-tomatoes", max_length=64, runs=block, warmup=0, ort_spin=ort_spin)
    work = build_workloads([target], cfg)[target.label][0]
    client = WorkerClient(worker_env(threads, omp))
    try:
        client.request("load", format=target.format, path=str(target.path), task=target.task, provider="cpu",
                       threads=threads, torch_compile=False, torch_quantize=None, ort_spin=ort_spin)
        client.request("prepare", key=work.name, batches=work.batches)
        client.request("run", key=work.name, n=5, warmup=True)
        busy, idle = [], []
        for _ in range(blocks):
            c0, t0 = task_cpu_ns(client.proc.pid), time.perf_counter()
            client.request("run", key=work.name, n=block)
            c1, t1 = task_cpu_ns(client.proc.pid), time.perf_counter()
            time.sleep(idle_s)
            c2, t2 = task_cpu_ns(client.proc.pid), time.perf_counter()
            busy.append((c1 - c0) / 1e9 / (t1 - t0))
            idle.append((c2 - c1) / 1e9 / (t2 - t1))
    finally:
        client.close()
    return {"model": target.label, "setting": setting, "threads": threads, "idle_cores": sorted(idle)[len(idle) // 2],
            "busy_cores": sorted(busy)[len(busy) // 2], "load": os.getloadavg()[0]}


@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--runs", default=300, show_default=True, help="timed batch-1 calls per model and setting")
@click.option("--rounds", default=2, show_default=True)
@click.option("--settings", default="spin,stop,off", show_default=True)
@click.option("--out", default=str(ROOT / "benchmarks" / "results"), show_default=True)
@click.option("--idle-only", is_flag=True, help="only the CPU idle workers burn (meaningful on a busy machine too)")
def main(models, threads, runs, rounds, settings, out, idle_only):
    """Batch-1 p50 of each model interleaved vs alone, per thread-waiting setting."""
    names = [s for s in settings.split(",") if s]
    burns = []
    for m in models:
        for s in names:
            burns.append(idle_burn(m, s, threads))
            b = burns[-1]
            click.echo(f"{b['model']} {b['setting']}: idle {b['idle_cores']:.2f} cores, busy {b['busy_cores']:.2f} "
                       f"(load {b['load']:.1f})", err=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "b1_idle_burn.json").write_text(json.dumps(burns, indent=2) + "\n")
    (Path(out) / "b1_idle_burn.md").write_text(burn_markdown(burns, threads))
    if idle_only:
        return
    results = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for s in order:
            load = os.getloadavg()[0]
            t0 = time.time()
            got = one_setting(list(models), s, threads, runs)
            results.append({"round": r, "setting": s, "load_before": load, "load_after": os.getloadavg()[0],
                            "started": t0, **got})
            ratio = {k: got["interleaved"][k] / got["alone"][k] for k in got["alone"]}
            click.echo(f"round {r} {s:5s} load {load:.1f}: " + ", ".join(
                f"{k} {got['interleaved'][k]:.2f}/{got['alone'][k]:.2f} ms ({ratio[k]:.2f}x)" for k in ratio), err=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    record = {"models": list(models), "threads": threads, "runs": runs, "cpu": _cpu(), "results": results}
    (Path(out) / "b1_interleave.json").write_text(json.dumps(record, indent=2) + "\n")
    (Path(out) / "b1_interleave.md").write_text(markdown(record))
    click.echo(markdown(record))


def _cpu() -> str:
    from toolchain.bench.machine import machine_record

    m = machine_record(1)
    return f"{m['cpu_model']} ({', '.join(k for k, v in m['isa'].items() if v)})"


def burn_markdown(burns: list[dict], threads: int) -> str:
    lines = [f"# CPU an idle benchmark worker burns ({_cpu()}, {threads} threads per model)", "",
             "Median over 3 blocks of 30 batch-1 calls: cores used while the block ran, and in the 0.3 s after it, "
             "when the worker had nothing to do (its threads' CPU time from /proc/PID/task/*/schedstat).", "",
             "| model | setting | cores busy during the block | cores burnt while idle | load |", "|---|---|---|---|---|"]
    lines += [f"| {b['model']} | {b['setting']} | {b['busy_cores']:.2f} | {b['idle_cores']:.2f} | {b['load']:.1f} |"
              for b in burns]
    return "\n".join(lines) + "\n"


def markdown(record: dict) -> str:
    lines = [f"# Batch-1 p50: interleaved vs alone ({record['cpu']}, {record['threads']} threads, "
             f"{record['runs']} calls per model)", "",
             "| round | setting | load (1-min avg) before / after | " + " | ".join(
                 f"{k} interleaved / alone ms (ratio)" for k in record["results"][0]["alone"]) + " |",
             "|" + "---|" * (3 + len(record["results"][0]["alone"]))]
    for r in record["results"]:
        cells = [f"{r['interleaved'][k]:.2f} / {r['alone'][k]:.2f} ({r['interleaved'][k] / r['alone'][k]:.2f}x)"
                 for k in r["alone"]]
        lines.append(f"| {r['round']} | {r['setting']} | {r['load_before']:.1f} / {r['load_after']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
