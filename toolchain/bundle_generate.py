"""Stream a causal LM bundle's continuation of a prompt, token by token, with the KV cache.

    python generate.py "To be, or not to be"                       # greedy, 64 new tokens, streamed
    python generate.py --tokens 200 --temperature 0.7 --top-p 0.9 --seed 1 "Once upon a time"
    python generate.py --model model.ort --threads 1 "..."          # the ORT-format model, one thread

Needs onnxruntime, tokenizers and numpy only. It runs the same decode code as predict.py (imported from
beside it), which `toolchain verify` checks against the toolchain's own decoding. Stop tokens and the context
length come from genai_config.json when the bundle has one (ONNX Runtime GenAI's model builder wrote the
model), else from bundle.json and config.json. Prints speed to stderr: prefill ms, decode tokens/s.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from predict import Predictor  # noqa: E402  (predict.py ships beside this file)


def limits(folder: pathlib.Path, info: dict) -> tuple[set[int], int | None]:
    """Stop token ids and the context length the model was built for."""
    stop, context = {info.get("eos_token_id")} - {None}, None
    genai = folder / "genai_config.json"
    if genai.is_file():
        model = json.loads(genai.read_text()).get("model", {})
        eos = model.get("eos_token_id")
        stop |= set(eos if isinstance(eos, list) else [eos]) - {None}
        context = model.get("context_length")
    config = folder / "config.json"
    if context is None and config.is_file():
        context = json.loads(config.read_text()).get("max_position_embeddings")
    return stop, context


def sampler(temperature: float, top_k: int, top_p: float, seed: int | None):
    """None (greedy) at temperature 0, else a function logits -> token id drawing from the filtered softmax."""
    if temperature <= 0:
        return None
    rng = np.random.default_rng(seed)

    def pick(logits: np.ndarray) -> int:
        z = logits.astype(np.float64) / temperature
        order = np.argsort(-z)[: top_k or None]
        p = np.exp(z[order] - z[order[0]])
        p /= p.sum()
        keep = min(int(np.searchsorted(np.cumsum(p), top_p)) + 1, len(p)) if top_p < 1 else len(p)
        p = p[:keep] / p[:keep].sum()
        return int(order[rng.choice(keep, p=p)])

    return pick


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stream this bundle's continuation of a prompt.")
    parser.add_argument("prompt", nargs="+", help="the text to continue")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="sample within this probability mass")
    parser.add_argument("--seed", type=int, help="seed for sampling")
    parser.add_argument("--model", default="model.onnx", help="model.onnx, or model.ort (ORT format)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's)")
    args = parser.parse_args(argv)
    p = Predictor(HERE, args.model, args.threads)
    if p.info["task"] != "text-generation":
        parser.error("this bundle holds a text-generation model only for generate.py; use predict.py")
    stop, context = limits(HERE, p.info)
    prompt = " ".join(args.prompt)
    ids = list(p.tokenizer.encode(prompt).ids)
    tokens = min(args.tokens, context - len(ids)) if context else args.tokens
    sys.stdout.write(prompt)
    new, shown, times = [], "", [time.perf_counter()]
    for token, _ in p.stream(ids, max(tokens, 0), sampler(args.temperature, args.top_k, args.top_p, args.seed), stop):
        times.append(time.perf_counter())
        new.append(token)
        text = p.tokenizer.decode(new)
        if not text.endswith("\ufffd"):  # a multi-byte character still incomplete: wait for its other bytes
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    sys.stdout.write(p.tokenizer.decode(new)[len(shown):] + "\n")  # what was held back for a missing byte
    if len(times) > 1:
        decode = len(times) - 2
        rate = f", decode {decode / (times[-1] - times[1]):.1f} tokens/s" if decode else ""
        print(f"[{len(new)} tokens; prefill {len(ids)} tokens {1e3 * (times[1] - times[0]):.0f} ms{rate}]",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
