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


@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--runs", default=300, show_default=True, help="timed batch-1 calls per model and setting")
@click.option("--rounds", default=2, show_default=True)
@click.option("--settings", default="spin,stop,off", show_default=True)
@click.option("--out", default=str(ROOT / "benchmarks" / "results"), show_default=True)
def main(models, threads, runs, rounds, settings, out):
    """Batch-1 p50 of each model interleaved vs alone, per thread-waiting setting."""
    names = [s for s in settings.split(",") if s]
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
