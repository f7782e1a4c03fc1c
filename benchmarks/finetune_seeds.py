"""Fine-tuning defaults across seeds: which teacher recipe is better when one seed moves test accuracy by a point.

A test set of 1,276 reviews has a standard error of about 1.1 points at 82%, and two seeds of the
same recipe differed by 1.4 points here; so each variant is trained with several seeds and chosen by
its *mean validation* accuracy (test is reported, never used to choose). Every run is
`toolchain.finetune` on the built-in data; a run whose artifact already exists under --out is reused,
so an interrupted study resumes. Also scores the TF-IDF + logistic regression baseline on this split
and over other split seeds (how hard is this particular test set?). Writes results.md / results.json.

    python benchmarks/finetune_seeds.py --out runs/finetune-seeds                 # all variants, seeds 42,0,1,2
    python benchmarks/finetune_seeds.py --out runs/finetune-seeds --only default --seeds 42,0,1
    python benchmarks/finetune_seeds.py --out runs/finetune-seeds --no-train      # summarise what exists

A run of seed S of variant V is the folder V-sS: link an existing teacher there (the recipe's
runs/minilm/teacher is default-s42) and it is reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

# FinetuneConfig fields on top of the defaults (3 epochs, lr 5e-5, batch 32, max length 64, length-grouped batches).
VARIANTS = {
    "default": {},
    "no-group-by-length": {"group_by_length": False},  # random batches: ~1.9x slower a step on CPU
    "lr-1e-4": {"learning_rate": 1e-4},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the teachers and the results")
    p.add_argument("--model", default="minilm")
    p.add_argument("--seeds", default="42,0,1,2")
    p.add_argument("--only", help="comma-separated variants (default: all): " + ", ".join(VARIANTS))
    p.add_argument("--split-seeds", type=int, default=15, help="other split seeds for the TF-IDF baseline")
    p.add_argument("--no-train", action="store_true", help="summarise the runs that exist; train nothing")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.only.split(",") if args.only else list(VARIANTS)
    if unknown := set(names) - set(VARIANTS):
        sys.exit(f"unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")

    baseline = tfidf_baseline(args.split_seeds)  # first: seconds, and a missing scikit-learn fails before training
    runs = {name: [r for seed in seeds if (r := train(args.model, name, seed, args.out, args.no_train))]
            for name in names}
    runs = {name: rs for name, rs in runs.items() if rs}
    if not runs:
        sys.exit(f"no runs under {args.out}: drop --no-train to train them")
    common = set.intersection(*({r["seed"] for r in rs} for rs in runs.values()))
    rows = [summary(name, rs, common) for name, rs in runs.items()]
    best = choose(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "summary": rows, "chosen_by_validation":
                                                       best["variant"], "tfidf": baseline}, indent=2) + "\n")
    md = markdown(rows, runs, best, baseline)
    (args.out / "results.md").write_text(md)
    print(md)


def train(model: str, name: str, seed: int, out: Path, reuse_only: bool = False) -> dict | None:
    from toolchain.artifact import Artifact
    from toolchain.finetune import FinetuneConfig, finetune

    folder = out / f"{name}-s{seed}"
    if Artifact.is_artifact(folder):
        art = Artifact.load(folder)
        print(f"{folder}: exists, reused", file=sys.stderr)
    elif reuse_only:
        return None
    else:
        art = finetune(model, FinetuneConfig(seed=seed, **VARIANTS[name]), folder)
    record = art.manifest.lineage[-1]
    acc = {k.rsplit("/", 1)[-1]: v["accuracy"] for k, v in art.manifest.results.items() if k.startswith("evaluate/")}
    return {"seed": seed, "validation": acc["validation"], "test": acc["test"],
            "best_checkpoint": record.metrics.get("best_checkpoint"), "train_seconds": record.metrics["train_seconds"],
            "recorded_config": record.config}


def summary(name: str, runs: list[dict], common: set[int]) -> dict:
    """Means over all of a variant's runs, and its mean validation over the seeds every variant has."""
    val, test = [r["validation"] for r in runs], [r["test"] for r in runs]
    shared = [r["validation"] for r in runs if r["seed"] in common]
    return {"variant": name, "config": VARIANTS[name], "seeds": [r["seed"] for r in runs],
            "common_seeds": sorted(common), "mean_validation_common": statistics.mean(shared) if shared else None,
            "mean_validation": statistics.mean(val), "mean_test": statistics.mean(test),
            "sd_test": statistics.stdev(test) if len(test) > 1 else 0.0, "min_test": min(test), "max_test": max(test)}


def choose(rows: list[dict]) -> dict:
    """The variant with the best mean validation accuracy over the seeds all variants ran (a lucky extra seed
    must not decide); test accuracy never decides."""
    return max(rows, key=lambda r: r["mean_validation_common"] if r["mean_validation_common"] is not None
               else r["mean_validation"])


def tfidf_baseline(split_seeds: int) -> dict:
    """Word 1-2 gram TF-IDF + logistic regression (C=10) on the project's split, and on other seeded splits."""
    import toolchain.data as data

    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        sys.exit("the TF-IDF baseline needs scikit-learn: .venv/bin/pip install -e .")

    def score(seed: int) -> dict:
        saved, data.SEED = data.SEED, seed
        try:
            d = data.load_classification(data.DataSpec("rotten-tomatoes"))
        finally:
            data.SEED = saved
        train = d.split("train")
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        clf = LogisticRegression(C=10, max_iter=2000).fit(vec.fit_transform(train.texts), train.labels)
        return {s: float((clf.predict(vec.transform(d.split(s).texts)) == d.split(s).labels).mean())
                for s in ("validation", "test")}

    ours = score(data.SEED)
    others = [score(s)["test"] for s in range(split_seeds)]
    rank = sum(t < ours["test"] for t in others)
    return {"split_seed": data.SEED, **ours, "other_split_seeds": split_seeds, "other_tests": others,
            "other_mean_test": statistics.mean(others) if others else None,
            "other_sd_test": statistics.stdev(others) if len(others) > 1 else None, "rank_of_ours": rank}


def markdown(rows: list[dict], runs: dict, best: dict, baseline: dict) -> str:
    seeds = sorted({s for row in rows for s in row["seeds"]}, key=[42, *range(1000)].index)
    head = ["variant", *(f"seed {s} val / test" for s in seeds), "mean val", "mean val, common seeds", "mean test (sd)"]
    lines = ["# Fine-tuning across seeds", "",
             "Each cell: validation / test accuracy of one `toolchain.finetune` run (rotten-tomatoes, the project's "
             "fixed split: validation n=1275, test n=1276). The variant is chosen by mean validation accuracy; "
             "test accuracy never decides; between variants, only the seeds all of them ran count "
             f"({', '.join(map(str, rows[0]['common_seeds'])) or 'none'}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        by_seed = {r["seed"]: r for r in runs[row["variant"]]}
        cells = [f"{r['validation']:.4f} / {r['test']:.4f}" if (r := by_seed.get(s)) else "-" for s in seeds]
        mark = " (chosen)" if row is best else ""
        common = f"{row['mean_validation_common']:.4f}" if row["mean_validation_common"] is not None else "-"
        lines.append(f"| {row['variant']}{mark} | " + " | ".join(cells)
                     + f" | {row['mean_validation']:.4f} | {common} | {row['mean_test']:.4f} ({row['sd_test']:.4f}) |")
    tf = baseline
    lines += ["", f"TF-IDF + logistic regression (word 1-2 grams, C=10) on this split: validation "
              f"{tf['validation']:.4f}, test {tf['test']:.4f}."]
    if tf["other_tests"]:
        lines.append(f"On {tf['other_split_seeds']} other split seeds its test accuracy averaged "
                     f"{tf['other_mean_test']:.4f} (sd {tf['other_sd_test']:.4f}); this split's test set is harder than "
                     f"{tf['other_split_seeds'] - tf['rank_of_ours']} of them.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
