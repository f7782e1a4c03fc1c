"""Why trimming costs accuracy, and what would not: the trimmed rows with the original segmentation.

Plain trimming (trim-vocab) drops tokens, so a held-out word that used one splits into other pieces. Aliasing
keeps every dropped token in the tokenizer but points it at the kept row nearest its embedding (cosine), so every
text segments exactly as before and only rare tokens read a neighbour's row. This measures both on the main job's
test split, from a finished run (torch, batch 1):

    python benchmarks/trim_alias.py --run runs/demo/minilm     # needs its `pruned` and `trimmed` steps

Not yet a trim-vocab option: a many-to-one vocabulary cannot be decoded (causal LMs are out) and the slow
tokenizer's vocab.txt numbers tokens by line, so only tokenizer.json may be shipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def aliased_tokenizer(original: dict, trimmed: dict, embedding: np.ndarray) -> tuple[dict, int]:
    """The original tokenizer.json with every token mapped to a trimmed row: kept tokens to their own, dropped
    ones to the kept token nearest them in `embedding` (the untrimmed model's rows, by cosine)."""
    old, new = original["model"]["vocab"], trimmed["model"]["vocab"]
    kept = sorted(new, key=new.get)  # kept strings in trimmed-id order
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    rows = unit[[old[s] for s in kept]]
    vocab = dict(new)
    dropped = [s for s in old if s not in new]
    for i in range(0, len(dropped), 2048):
        chunk = dropped[i:i + 2048]
        for s, j in zip(chunk, (unit[[old[s] for s in chunk]] @ rows.T).argmax(1)):
            vocab[s] = int(j)
    from toolchain.trim_vocab import _remap_ids

    out = copy.deepcopy(original)
    out["model"]["vocab"] = vocab
    new_id = {old[s]: i for s, i in new.items()}
    for t in out.get("added_tokens", []):
        t["id"] = new_id[t["id"]]
    _remap_ids(out.get("post_processor"), new_id)  # [CLS] / [SEP] as the template names them
    return out, len(dropped)


def predict(model, tokenizer, texts: list[str]) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for t in texts:
            ids = tokenizer.encode(t).ids
            x = torch.tensor([ids])
            out.append(int(model(input_ids=x, attention_mask=torch.ones_like(x)).logits.argmax(-1)))
    return np.array(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "demo" / "minilm")
    args = p.parse_args()
    import torch
    from tokenizers import Tokenizer

    from toolchain.artifact import Artifact
    from toolchain.data import load_classification
    from toolchain.metrics import mcnemar_exact
    from toolchain.modeling import load_model, resolve_model

    torch.set_num_threads(1)
    pruned, trimmed = args.run / "pruned", args.run / "trimmed"
    length = Artifact.load(trimmed).max_length or 128
    test = load_classification("rotten-tomatoes").split("test")
    models = {n: load_model(resolve_model(str(f)), "text-classification").eval() for n, f in
              (("pruned", pruned), ("trimmed", trimmed))}
    spec, n_dropped = aliased_tokenizer(json.loads((pruned / "tokenizer.json").read_text()),
                                        json.loads((trimmed / "tokenizer.json").read_text()),
                                        models["pruned"].get_input_embeddings().weight.detach().numpy())
    toks = {"pruned": Tokenizer.from_file(str(pruned / "tokenizer.json")),
            "trimmed": Tokenizer.from_file(str(trimmed / "tokenizer.json")),
            "aliased": Tokenizer.from_str(json.dumps(spec))}
    for t in toks.values():
        t.enable_truncation(length)
    y = test.labels
    base = predict(models["pruned"], toks["pruned"], test.texts)
    print(f"{len(y)} test reviews, max_length {length}; {n_dropped:,} tokens dropped by trimming")
    print(f"{'variant':10} {'accuracy':>8} {'vs pruned':>9} {'lost':>5} {'won':>4} {'p':>6} {'same pieces':>11}")
    print(f"{'pruned':10} {(base == y).mean():8.4f}")
    for name in ("trimmed", "aliased"):
        pred = predict(models["trimmed"], toks[name], test.texts)
        lost, won = int(((base == y) & (pred != y)).sum()), int(((base != y) & (pred == y)).sum())
        same = sum(toks[name].encode(t).tokens == toks["pruned"].encode(t).tokens for t in test.texts)
        print(f"{name:10} {(pred == y).mean():8.4f} {((pred == y).mean() - (base == y).mean()) * 100:+8.1f} "
              f"{lost:5d} {won:4d} {mcnemar_exact(won, lost):6.3f} {same / len(y):10.0%}")


if __name__ == "__main__":
    main()
