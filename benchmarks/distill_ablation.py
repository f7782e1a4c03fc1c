"""Distillation ablation on rotten-tomatoes: which parts of KD buy accuracy, at what training cost and speed.

Trains each variant from one fine-tuned teacher with `toolchain.distill`, scores it on the test
split with `toolchain.evaluate`, and times PyTorch batch-1 latency in a separate process per model
(so models and runtimes never share a process while timed). Prints a Markdown table and writes
results.json / results.md under --out. A variant whose artifact already exists is reused, so an
interrupted run resumes; pass --fresh to retrain.

    python benchmarks/distill_ablation.py --teacher runs/teacher --out runs/ablation --device cpu --epochs 2
    python benchmarks/distill_ablation.py --teacher runs/teacher --out runs/ablation --only kd-3,hard-3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Each variant: DistillConfig fields on top of the shared ones (T=2, alpha=0.5, the run's epochs and lr).
VARIANTS = {
    "kd-3": {"student_layers": (0, 2, 4)},
    "hard-3": {"student_layers": (0, 2, 4), "alpha": 1.0},  # hard labels only: the teacher is not read
    "kd-2": {"student_layers": 2},  # teacher layers 0 and 3
    # A 2-layer student underfits in 2 epochs at 5e-5 (validation 0.801 vs 0.826 here): more steps, a larger rate.
    "kd-2-long": {"student_layers": 2, "learning_rate": 2e-4, "epochs": 3.0},
    "kd-2-long+hidden": {"student_layers": 2, "learning_rate": 2e-4, "epochs": 3.0, "hidden_weight": 1.0,
                         "hidden_loss": "mse"},
    "kd-3+hidden": {"student_layers": (0, 2, 4), "hidden_weight": 1.0, "hidden_loss": "mse"},
    "kd-3+boundary": {"student_layers": (0, 2, 4), "boundary_weight": 2.0},
    # Which two layers, or where they start from? The layers the progressive student ends up with (2 and 4),
    # copied straight from the teacher; then progressive: the kd-3 student minus its least important layer
    # (first-order Taylor, `toolchain prune --layers 1`), distilled again from the teacher.
    "kd-2-layers24-long": {"student_layers": (2, 4), "learning_rate": 2e-4, "epochs": 3.0},
    "kd-2-progressive": {"from": "kd-3", "drop_layers": 1, "learning_rate": 2e-4, "epochs": 3.0},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", help="fine-tuned classifier (torch artifact or folder)")
    p.add_argument("--out", type=Path, help="folder for the students and the results")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--data", default="rotten-tomatoes")
    p.add_argument("--only", help="comma-separated variants (default: all): " + ", ".join(VARIANTS))
    p.add_argument("--max-train-samples", type=int, help="train on a subset (smoke runs)")
    p.add_argument("--latency-samples", type=int, default=200, help="test sentences timed per model")
    p.add_argument("--latency-rounds", type=int, default=3,
                   help="interleaved timing rounds (every model once per round, each in a fresh process)")
    p.add_argument("--fresh", action="store_true", help="retrain variants whose artifacts exist")
    p.add_argument("--latency", metavar="MODEL", help=argparse.SUPPRESS)  # internal: time one model, print JSON
    args = p.parse_args()
    if args.latency:
        print(json.dumps(measure_latency(args.latency, args.device, args.data, args.max_length, args.latency_samples)))
        return
    if not args.teacher or not args.out:
        p.error("--teacher and --out are required")
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    rows = [teacher_row(args)] + [variant_row(name, args) for name in names]
    add_latencies(rows, args)
    report(rows, args)


def teacher_row(args) -> dict:
    from toolchain.evaluate import EvaluateConfig, evaluate

    acc = evaluate(args.teacher, EvaluateConfig(args.data, "test", max_length=args.max_length), record=False)
    val = evaluate(args.teacher, EvaluateConfig(args.data, "validation", max_length=args.max_length), record=False)
    return {"model": "teacher", "path": str(args.teacher), "test_accuracy": acc["accuracy"],
            "validation_accuracy": val["accuracy"],
            "macro_f1": acc["macro_f1"], "train_seconds": None, **size(args.teacher)}


def variant_row(name: str, args) -> dict:
    from toolchain.artifact import Artifact
    from toolchain.distill import DistillConfig, distill
    from toolchain.evaluate import EvaluateConfig, evaluate

    out = args.out / name
    if args.fresh or not Artifact.is_artifact(out):
        shared = {"data": args.data, "epochs": args.epochs, "max_length": args.max_length, "batch_size": args.batch_size,
                  "learning_rate": args.learning_rate, "temperature": 2.0, "alpha": 0.5, "device": args.device,
                  "max_train_samples": args.max_train_samples}
        spec = dict(VARIANTS[name])
        if "from" in spec:  # progressive: start from an earlier variant's student with layers removed
            spec["student"] = str(smaller_student(spec.pop("from"), spec.pop("drop_layers"), args))
        cfg = DistillConfig(**(shared | spec))
        print(f"== {name}: distilling", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # Trainer's log lines; stdout carries the table
            distill(args.teacher, cfg, out, force=True)
    record = Artifact.load(out).manifest.lineage[-1]
    m, used = record.metrics, record.config
    acc = evaluate(out, EvaluateConfig(args.data, "test", max_length=args.max_length))  # recorded in its manifest
    t = m["train"]
    return {"model": name, "path": str(out), "test_accuracy": acc["accuracy"], "macro_f1": acc["macro_f1"],
            "validation_accuracy": m["validation"]["accuracy"],
            "train_seconds": round(t["wall_seconds"] + m["teacher"].get("cache_seconds", 0.0), 1),
            "teacher_mode": m["teacher"]["mode"], "layers": m["student"]["num_layers"], "epochs": used["epochs"],
            "lr": used.get("learning_rate", used.get("lr")), "hidden_weight": used.get("hidden_weight"),
            "boundary_weight": used.get("boundary_weight"),
            "params_m": round(m["student"]["params"] / 1e6, 2), "final_losses": t["losses_by_epoch"][-1],
            "device": t["device"], "precision": t["precision"], **size(out)}


def smaller_student(source: str, layers: int, args) -> Path:
    """`source`'s student (trained first if needed) with its `layers` least important layers removed."""
    from toolchain.artifact import Artifact
    from toolchain.prune import PruneConfig, prune

    out = args.out / f"{source}-drop{layers}"
    if args.fresh or not Artifact.is_artifact(out):
        if not Artifact.is_artifact(args.out / source):
            variant_row(source, args)
        cfg = PruneConfig(layers=layers, importance="taylor", calibration_samples=64, max_length=args.max_length,
                          data=args.data)
        with contextlib.redirect_stdout(sys.stderr):
            prune(args.out / source, cfg, out, force=True)
    return out


def size(path) -> dict:
    return {"size_mb": round(sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 1e6, 1)}


def add_latencies(rows: list[dict], args) -> None:
    """Time every model after all training, in interleaved rounds, so machine drift lands on all alike:
    a row's latency is the median of its per-round medians (the spread across rounds is kept)."""
    runs: dict[str, list[dict]] = {r["path"]: [] for r in rows}
    for i in range(args.latency_rounds):
        for r in rows:
            print(f"== latency round {i + 1}/{args.latency_rounds}: {r['model']}", file=sys.stderr, flush=True)
            runs[r["path"]].append(latency(r["path"], args))
    for r in rows:
        got = runs[r["path"]]
        medians = [g["latency_ms_median"] for g in got]
        r |= {"latency_ms_median": round(statistics.median(medians), 3),
              "latency_ms_p90": round(statistics.median(g["latency_ms_p90"] for g in got), 3),
              "latency_ms_round_medians": medians, "latency_samples": got[0]["latency_samples"],
              "threads": got[0]["threads"]}


def latency(path, args) -> dict:
    """Batch-1 latency in a fresh process: the timed model is alone in its process."""
    cmd = [sys.executable, __file__, "--latency", str(path), "--device", args.device, "--data", args.data,
           "--max-length", str(args.max_length), "--latency-samples", str(args.latency_samples)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ | {"TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_latency(path: str, device: str, data: str, max_length: int, samples: int) -> dict:
    """Median and p90 milliseconds of one model call on single test sentences at their real lengths."""
    import torch

    from toolchain.data import load_classification
    from toolchain.modeling import infer_task, load_model, load_tokenizer, resolve_model

    src = resolve_model(path)
    model = load_model(src, src.artifact.task if src.artifact else infer_task(src.config)).to(device)
    tok = load_tokenizer(src)
    texts = load_classification(data).split("test").texts[:samples]
    inputs = [{k: v.to(device) for k, v in tok(t, truncation=True, max_length=max_length, return_tensors="pt").items()}
              for t in texts]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for x in inputs[:20]:  # warm-up: allocator, kernels, caches
            model(**x)
        for x in inputs:
            sync()
            start = time.perf_counter()
            model(**x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"latency_ms_median": round(statistics.median(times), 3), "latency_ms_p90": round(times[int(0.9 * len(times))], 3),
            "latency_samples": len(times), "threads": torch.get_num_threads()}


def report(rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = rows[0]
    for r in rows:
        r["vs_teacher_points"] = round(100 * (r["test_accuracy"] - teacher["test_accuracy"]), 2)
        r["latency_vs_teacher"] = round(r["latency_ms_median"] / teacher["latency_ms_median"], 3)
    head = ["model", "layers", "epochs", "lr", "test acc", "vs teacher (pts)", "val acc", "macro F1", "train s",
            "teacher", "latency ms (p50)", "x teacher", "MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r.get("layers", ""), r.get("epochs", ""), r.get("lr", ""), f"{r['test_accuracy']:.4f}",
                 f"{r['vs_teacher_points']:+.2f}", f"{r['validation_accuracy']:.4f}" if r.get("validation_accuracy") else "",
                 f"{r['macro_f1']:.4f}", "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}",
                 r.get("teacher_mode", ""), f"{r['latency_ms_median']:.2f}", f"{r['latency_vs_teacher']:.2f}",
                 f"{r['size_mb']:.1f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    note = (f"\nrotten-tomatoes test split (n=1276), max length {args.max_length}, T=2, alpha=0.5 (hard-3: alpha 1, "
            "labels only; +hidden: hidden-state MSE, weight 1; +boundary: beta 2); val acc: the student's validation "
            f"accuracy (the teacher's: {teacher['validation_accuracy']:.4f}). Latency: PyTorch eager, batch 1, "
            f"{args.device}, {rows[0]['latency_samples']} real test sentences, {rows[0]['threads']} threads, median "
            f"of {args.latency_rounds} interleaved rounds, separate process per model and round.\n")
    table = "\n".join(lines) + "\n" + note
    (args.out / "results.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
