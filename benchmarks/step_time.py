"""Where `make demo`'s time goes: per-step training time of the teacher and the student, per ISA and threads.

    python benchmarks/step_time.py                          # the default grid, ~10 min on an idle 2-core machine
    python benchmarks/step_time.py --grid teacher:avx2:2:grouped --steps 40

Each configuration runs in its own process: the recipe's fine-tuning Trainer (toolchain.finetune, batch 32,
max length 64, rotten-tomatoes train sentences) on `--steps` batches, timed per optimizer step by a Trainer
callback (after `--warmup` untimed steps). `avx2` runs torch as an AVX2-only CPU would (ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2; checked with torch.backends.cpu.get_cpu_capability()); `native` uses all this CPU has.
The student is the recipe's shape (teacher layers 0/2/4); its KD loss on cached teacher logits adds a softmax.
Per-step medians of wall time and of the process's CPU time, with the load average beside each: on a busy
machine the wall time measures the queue for a core, while the CPU time of a 1-thread run stays close to what
the step costs on an idle core (caches shared with other jobs still inflate it somewhat). Writes benchmarks/results/step_time.{json,md}.
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

DEFAULT_GRID = ("teacher:native:2:grouped", "teacher:avx2:2:grouped", "teacher:avx2:1:grouped",
                "teacher:avx2:2:random", "student:avx2:2:grouped")
# torch's own kernels, oneDNN's and MKL's GEMMs (torch's CPU Linear): each picks its ISA by itself.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}

CHILD = r"""
import json, statistics, sys, tempfile, time
model_kind, threads, grouped, steps, warmup = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "grouped", int(sys.argv[4]), int(sys.argv[5])
import torch
torch.set_num_threads(threads)
from transformers import TrainerCallback, set_seed
from toolchain.data import DataSpec, load_classification
from toolchain.finetune import FinetuneConfig, _trainer
from toolchain.modeling import load_model, load_tokenizer, resolve_model

cfg = FinetuneConfig(max_train_samples=32 * (steps + warmup), max_eval_samples=32, epochs=1.0, group_by_length=grouped)
source = resolve_model("minilm")
data = load_classification(DataSpec(cfg.data))
tok = load_tokenizer(source)
set_seed(cfg.seed)
model = load_model(source, "text-classification", new_head=True, num_labels=2, id2label=data.id2label, label2id=data.label2id)
if model_kind == "student":  # the recipe's student: teacher layers 0, 2, 4
    model.bert.encoder.layer = torch.nn.ModuleList([model.bert.encoder.layer[i] for i in (0, 2, 4)])
    model.config.num_hidden_layers = 3

class Clock(TrainerCallback):
    def __init__(self):
        self.t, self.steps, self.cpu = None, [], []
    def on_step_begin(self, args, state, control, **kw):
        self.t, self.c = time.perf_counter(), time.process_time()
    def on_step_end(self, args, state, control, **kw):
        self.steps.append(time.perf_counter() - self.t)
        self.cpu.append(time.process_time() - self.c)
    def on_epoch_end(self, args, state, control, **kw):
        control.should_evaluate = False
        control.should_save = False

with tempfile.TemporaryDirectory() as tmp:
    trainer, _ = _trainer(model, tok, data, cfg, __import__("pathlib").Path(tmp))
    trainer.args.eval_strategy = "no"
    trainer.args.save_strategy = "no"
    trainer.args.load_best_model_at_end = False
    from transformers import EarlyStoppingCallback
    trainer.remove_callback(EarlyStoppingCallback)  # it needs evaluation, which is off here
    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
timed, cpu = clock.steps[warmup:], clock.cpu[warmup:]
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                  "median_s": statistics.median(timed), "mean_s": statistics.fmean(timed), "steps": len(timed),
                  "min_s": min(timed), "max_s": max(timed), "cpu_median_s": statistics.median(cpu)}))
"""


def run_one(spec: str, steps: int, warmup: int) -> dict:
    model, isa, threads, order = spec.split(":")
    env = {k: v for k, v in os.environ.items() if k not in AVX2_ENV}
    env |= (AVX2_ENV if isa == "avx2" else {}) | {"OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
                                                  "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    load = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", CHILD, model, threads, order, str(steps), str(warmup)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{spec}: {done.stderr[-1500:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return {"spec": spec, "model": model, "isa": isa, "threads": int(threads), "order": order,
            "load_before": load, "load_after": os.getloadavg()[0], "at": time.strftime("%H:%M UTC", time.gmtime()), **got}


@click.command()
@click.option("--grid", default=",".join(DEFAULT_GRID), show_default=True,
              help="model:isa:threads:order items (model teacher|student, isa native|avx2, order grouped|random)")
@click.option("--steps", default=40, show_default=True, help="timed optimizer steps per configuration")
@click.option("--warmup", default=3, show_default=True)
@click.option("--out", default=str(ROOT / "benchmarks" / "results"), show_default=True)
def main(grid, steps, warmup, out):
    """Per-step training time of the recipe's teacher and student, per ISA, threads and batch order."""
    rows = []
    for spec in [s for s in grid.split(",") if s]:
        rows.append(run_one(spec, steps, warmup))
        r = rows[-1]
        click.echo(f"{spec}: {r['median_s']:.3f} s/step median, CPU {r['cpu_median_s']:.3f} s/step "
                   f"({r['capability']}, {r['threads']} threads, "
                   f"load {r['load_before']:.1f} -> {r['load_after']:.1f})", err=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    record = {"cpu": _cpu(), "steps": steps, "rows": rows}
    (Path(out) / "step_time.json").write_text(json.dumps(record, indent=2) + "\n")
    (Path(out) / "step_time.md").write_text(markdown(record))
    click.echo(markdown(record))


def _cpu() -> str:
    from toolchain.bench.machine import machine_record

    m = machine_record(1)
    return f"{m['cpu_model']} ({', '.join(k for k, v in m['isa'].items() if v)})"


def markdown(record: dict) -> str:
    lines = [f"# Training step time ({record['cpu']}; {record['steps']} timed steps of batch 32, max length 64)", "",
             "| model | torch ISA | threads | batches | median s/step (wall) | median CPU s/step | min / max wall "
             "| load before / after | at |", "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['model']} | {r['capability']} | {r['threads']} | {r['order']} | {r['median_s']:.3f} | "
                     f"{r['cpu_median_s']:.3f} | "
                     f"{r['min_s']:.2f} / {r['max_s']:.2f} | {r['load_before']:.1f} / {r['load_after']:.1f} | {r['at']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
