"""What vocabulary trimming costs, paired against the model it trimmed: plain, and with --alias.

Plain trimming (trim-vocab) drops tokens, so a held-out word that used one splits into other pieces. With
--alias every dropped token stays in tokenizer.json, pointing at the kept row nearest its embedding, so every
text splits exactly as before and only rare tokens read a neighbour's row. This trims a finished run's pruned
model both ways with the recipe's settings (the stage itself, into --work) and scores both on the test split
against the untrimmed model (torch, batch 1, the same examples: a paired test):

    python benchmarks/trim_alias.py --run runs/demo/minilm     # needs its `pruned` step; ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def predict(model, tokenizer, texts: list[str]) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for t in texts:
            x = torch.tensor([tokenizer.encode(t).ids])
            out.append(int(model(input_ids=x, attention_mask=torch.ones_like(x)).logits.argmax(-1)))
    return np.array(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "demo" / "minilm")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "trim-alias")
    args = p.parse_args()
    import torch
    import yaml
    from tokenizers import Tokenizer

    from toolchain.artifact import Artifact
    from toolchain.config import config_from_dict
    from toolchain.data import load_classification
    from toolchain.metrics import mcnemar_exact
    from toolchain.modeling import load_model, resolve_model
    from toolchain.trim_vocab import TrimVocabConfig, trim_vocab

    torch.set_num_threads(1)
    recipe = yaml.safe_load((ROOT / "models" / "minilm-rotten-tomatoes.yaml").read_text())
    step = next(s for s in recipe["steps"] if s["stage"] == "trim-vocab")
    pruned = args.run / "pruned"
    folders = {"pruned": pruned}
    for name, alias in (("trimmed", False), ("aliased", True)):
        cfg = config_from_dict(TrimVocabConfig, (step.get("config") or {}) | {"alias": alias})
        folders[name] = trim_vocab(str(pruned), cfg, args.work / name, force=True).path
    length = Artifact.load(folders["trimmed"]).max_length or 128
    test = load_classification("rotten-tomatoes").split("test")
    y = test.labels
    preds, pieces = {}, {}
    for name, folder in folders.items():
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.enable_truncation(length)
        preds[name] = predict(load_model(resolve_model(str(folder)), "text-classification").eval(), tok, test.texts)
        pieces[name] = [tok.encode(t).tokens for t in test.texts]  # aliased: names are ambiguous, not compared
    dropped = Artifact.load(folders["aliased"]).manifest.lineage[-1].metrics["aliased"]
    changed = Artifact.load(folders["trimmed"]).manifest.lineage[-1].metrics["held_out"]["texts_changed_share"]
    print(f"{len(y)} test reviews, max_length {length}; {dropped:,} tokens dropped, "
          f"{changed:.0%} of held-out texts split differently when trimmed plainly")
    print(f"{'variant':10} {'accuracy':>8} {'vs pruned':>9} {'lost':>5} {'won':>4} {'p':>6}")
    base = preds["pruned"]
    print(f"{'pruned':10} {(base == y).mean():8.4f}")
    for name in ("trimmed", "aliased"):
        pred = preds[name]
        lost, won = int(((base == y) & (pred != y)).sum()), int(((base != y) & (pred == y)).sum())
        print(f"{name:10} {(pred == y).mean():8.4f} {((pred == y).mean() - (base == y).mean()) * 100:+8.1f} "
              f"{lost:5d} {won:4d} {mcnemar_exact(won, lost):6.3f}")
    same = sum(a == b for a, b in zip(pieces["trimmed"], pieces["pruned"]))
    print(f"test reviews split as before: trimmed {same / len(y):.0%}, aliased 100% (checked by trim-vocab)")


if __name__ == "__main__":
    main()
