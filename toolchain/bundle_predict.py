"""Run this bundle's model with onnxruntime, tokenizers and numpy only (no torch, no transformers).

    python predict.py "A charming, moving film." "A waste of two hours."   # classifier: label + probabilities
    python predict.py --tokens 20 "To be, or not to be"                     # causal LM: greedy continuation
    python predict.py --model model.ort --json "..."                        # the ORT-format model, JSON out

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

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Token ids, attention mask and token types, right-padded to the longest text."""
        encs = self.tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encs)
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
        return dict(zip(self.outputs, self.session.run(None, feeds)))

    def classify(self, texts: list[str]) -> list[dict]:
        """Label and probability of every label for each text."""
        logits = self.run(self.encode(texts))["logits"].astype(np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        labels = self.info["labels"]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run this bundle's model on text.")
    parser.add_argument("texts", nargs="+", help="sentences to classify, or the prompt to continue")
    parser.add_argument("--tokens", type=int, default=20, help="causal LM: new tokens to generate")
    parser.add_argument("--model", default="model.onnx", help="model.onnx, or model.ort (ORT format)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
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
