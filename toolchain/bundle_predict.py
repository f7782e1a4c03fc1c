"""Run this bundle's model with onnxruntime, tokenizers and numpy only (no torch, no transformers).

    python predict.py "A charming, moving film." "A waste of two hours."   # classifier: label + probabilities
    python predict.py --tokens 20 "To be, or not to be"                     # causal LM: greedy continuation
    python predict.py --model model.ort --json "..."                        # the ORT-format model, JSON out
    python predict.py --smoke                  # this machine gives the outputs stored in bundle.json (exit 1 if not)

Everything it needs to know about the model is in bundle.json beside it. `toolchain package` copies
this file into every bundle as predict.py; `toolchain verify` runs the same code as its smoke test.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = pathlib.Path(__file__).resolve().parent
DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32}


class Predictor:
    """The bundle's model and tokenizer, with the inputs its graph declares built from text."""

    def __init__(self, folder: str | pathlib.Path = HERE, model: str = "model.onnx", threads: int | None = None):
        folder = pathlib.Path(folder)
        self.info = json.loads((folder / "bundle.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.info["max_length"])
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        # ORT's CPU SkipLayerNormalization kernel is 5-8x slower than the Add + LayerNorm it would fuse: keep them.
        self.session = ort.InferenceSession(str(folder / model), opts, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=["SkipLayerNormFusion"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        # Mobile bundles (NNAPI, CoreML) fix their inputs to [1, max_length]: one text per call, padded to it.
        shape = self.inputs["input_ids"].shape if "input_ids" in self.inputs else []
        self.fixed_length = shape[1] if len(shape) == 2 and all(isinstance(d, int) for d in shape) else None

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Token ids, attention mask and token types, right-padded to the longest text (or the fixed length)."""
        encs = self.tokenizer.encode_batch(list(texts))
        width = self.fixed_length or max(len(e.ids) for e in encs)
        pad = self.info.get("pad_token_id") or 0
        batch = {"input_ids": np.full((len(encs), width), pad, dtype=np.int64),
                 "attention_mask": np.zeros((len(encs), width), dtype=np.int64),
                 "token_type_ids": np.zeros((len(encs), width), dtype=np.int64)}
        for i, e in enumerate(encs):
            n = len(e.ids)
            batch["input_ids"][i, :n] = e.ids
            batch["attention_mask"][i, :n] = 1
            batch["token_type_ids"][i, :n] = e.type_ids
        return {k: v for k, v in batch.items() if k in self.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        if self.fixed_length is None or n == 1:
            return dict(zip(self.outputs, self.session.run(None, feeds)))
        rows = [self.session.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
        return {name: np.concatenate([r[j] for r in rows]) for j, name in enumerate(self.outputs)}

    def classify(self, texts: list[str]) -> list[dict]:
        """Label and probability of every label for each text."""
        logits = self.run(self.encode(texts))["logits"].astype(np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        labels = self.info.get("labels") or [f"LABEL_{i}" for i in range(logits.shape[-1])]
        return [{"text": t, "label": labels[int(p.argmax())], "probabilities": dict(zip(labels, map(float, p))),
                 "logits": [float(v) for v in row]} for t, p, row in zip(texts, probs, logits)]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled last hidden state per text (feature-extraction models)."""
        feeds = self.encode(texts)
        hidden = self.run(feeds)["last_hidden_state"]
        mask = feeds["attention_mask"][..., None].astype(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def generate(self, prompt: str, tokens: int) -> dict:
        """Greedy continuation of `prompt`: `tokens` new tokens, with the KV cache when the graph has one."""
        new, first_logits = [], None
        for token, logits in self.stream(list(self.tokenizer.encode(prompt).ids), tokens):
            first_logits = logits if first_logits is None else first_logits
            new.append(token)
        top5 = [int(i) for i in np.argsort(-first_logits)[:5]] if first_logits is not None else []
        return {"prompt": prompt, "text": self.tokenizer.decode(new), "token_ids": new, "first_logits_top5": top5}

    def stream(self, ids: list[int], tokens: int, pick=None, stop: set[int] | None = None):
        """Yield (token id, its step's logits) for up to `tokens` new tokens after `ids`: the prompt in one call,
        then one token a call with the KV cache (the whole sequence again when the graph has none).

        `pick(logits) -> id` chooses each token (greedy when None); a token in `stop` (default: the EOS id) ends.
        """
        ids = list(ids)
        stop = {self.info.get("eos_token_id")} if stop is None else stop
        past, step_ids = self._empty_past(), ids
        for _ in range(tokens):
            out = self.run(self._lm_feeds(step_ids, len(ids), past))
            logits = out["logits"][0, -1]
            nxt = int(np.argmax(logits)) if pick is None else int(pick(logits))
            ids.append(nxt)
            if past is not None:
                past = {name.replace("present", "past_key_values"): v for name, v in out.items()
                        if name.startswith("present")}
                step_ids = [nxt]
            else:
                step_ids = ids
            yield nxt, logits
            if nxt in stop:
                break

    def _empty_past(self) -> dict[str, np.ndarray] | None:
        names = [n for n in self.inputs if n.startswith("past_key_values")]
        if not names:
            return None
        past = {}
        for n in names:
            i = self.inputs[n]
            dims = [1 if k == 0 else (d if isinstance(d, int) else 0) for k, d in enumerate(i.shape)]
            past[n] = np.zeros(dims, dtype=DTYPES.get(i.type, np.float32))
        return past

    def _lm_feeds(self, step_ids: list[int], total: int, past) -> dict[str, np.ndarray]:
        n = len(step_ids)
        feeds = {"input_ids": np.array([step_ids], dtype=np.int64),
                 "attention_mask": np.ones((1, total), dtype=np.int64),
                 "position_ids": np.arange(total - n, total, dtype=np.int64)[None]}
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        return feeds | (past or {})


def smoke_diff(p: Predictor, smoke: dict) -> tuple[float, str]:
    """Max abs difference of `p`'s outputs on the smoke texts from the stored ones, and a note: inf when the
    greedy tokens differ, with the token where they part."""
    texts, task = smoke["texts"], p.info["task"]
    if task == "text-classification":
        got = np.array([r["logits"] for r in p.classify(texts)])
        return float(np.abs(got - np.array(smoke["logits"])).max()), ""
    if task == "text-generation":
        want = smoke["token_ids"]
        out = p.generate(texts[0], len(want))
        if out["token_ids"] != want:
            at = next((i for i, (a, b) in enumerate(zip(out["token_ids"], want)) if a != b),
                      min(len(out["token_ids"]), len(want)))
            return float("inf"), (f"greedy tokens differ from the packaged reference's ({smoke.get('decode', 'full')} "
                                  f"decode) from token {at + 1} of {len(want)}")
        ids = list(p.tokenizer.encode(texts[0]).ids)
        logits = p.run(p._lm_feeds(ids, len(ids), p._empty_past()))["logits"][0, -1]
        return float(np.abs(logits[smoke["first_top5"]] - np.array(smoke["first_top5_logits"])).max()), ""
    return float(np.abs(p.embed(texts) - np.array(smoke["embeddings"])).max()), ""


def smoke_check(folder: str | pathlib.Path = HERE, threads: int | None = 1) -> dict:
    """The smoke test on this machine: model.onnx (and model.ort) against the outputs stored in bundle.json.

    Returns {"ok", "problem", "models": {file: max abs diff}, "atol"}.
    """
    folder = pathlib.Path(folder)
    smoke = json.loads((folder / "bundle.json").read_text())["smoke"]
    checked = {name: smoke_diff(Predictor(folder, name, threads=threads), smoke)
               for name in ("model.onnx", "model.ort") if (folder / name).is_file()}
    models = {name: diff for name, (diff, _) in checked.items()}
    bad = [(m, d) for m, d in models.items() if not d <= smoke["atol"]]
    problem = ((f"{bad[0][0]} {checked[bad[0][0]][1]}" if checked[bad[0][0]][1] else
                f"{bad[0][0]} differs from the packaged reference by {bad[0][1]:.3g} (atol {smoke['atol']:g})")
               if bad else "")
    return {"ok": not bad, "problem": problem, "models": models, "atol": smoke["atol"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run this bundle's model on text.")
    parser.add_argument("texts", nargs="*", help="sentences to classify, or the prompt to continue")
    parser.add_argument("--tokens", type=int, default=20, help="causal LM: new tokens to generate")
    parser.add_argument("--model", default="model.onnx", help="model.onnx, or model.ort (ORT format)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--smoke", action="store_true", help="check this machine against bundle.json's stored outputs")
    args = parser.parse_args(argv)
    if args.smoke:
        result = smoke_check(HERE, args.threads or 1)
        diffs = ", ".join(f"{m} max abs diff {d:.2g}" for m, d in result["models"].items())
        verdict = "ok: " if result["ok"] else f"FAILED: {result['problem']}: "
        print(json.dumps(result, indent=2) if args.json else f"{verdict}{diffs} (atol {result['atol']:g})")
        return 0 if result["ok"] else 1
    if not args.texts:
        parser.error("give at least one text (or --smoke)")
    p = Predictor(HERE, args.model, args.threads)
    task = p.info["task"]
    if task == "text-classification":
        out = p.classify(args.texts)
        lines = [f"{r['label']}\t{r['probabilities'][r['label']]:.3f}\t{r['text']}" for r in out]
    elif task == "text-generation":
        out = [p.generate(" ".join(args.texts), args.tokens)]
        lines = [out[0]["prompt"] + out[0]["text"]]
    else:
        vectors = p.embed(args.texts)
        out = [{"text": t, "embedding": v.tolist()} for t, v in zip(args.texts, vectors)]
        lines = [f"{t}\t[{', '.join(f'{x:.4f}' for x in v[:4])}, ...] ({len(v)} dims)"
                 for t, v in zip(args.texts, vectors)]
    print(json.dumps(out, indent=2) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
