"""Stream a causal LM bundle's continuation of a prompt, token by token, with the KV cache.

    python generate.py "To be, or not to be"                       # greedy, 64 new tokens, streamed
    python generate.py --tokens 200 --temperature 0.7 --top-p 0.9 --seed 1 "Once upon a time"
    python generate.py --model model.ort --threads 1 "..."          # the ORT-format model, one thread
    python generate.py - < prompt.txt                               # the prompt from stdin (all of it)

Needs onnxruntime, tokenizers and numpy only. It runs the same decode code as predict.py (imported from
beside it), which `toolchain verify` checks against the toolchain's own decoding. Stop tokens and the context
length come from genai_config.json when the bundle has one (ONNX Runtime GenAI's model builder wrote the
model), else from bundle.json and config.json. Prints speed to stderr: prefill ms, decode tokens/s.
Problems are one `error:` and one `fix:` line with predict.py's exit codes; `--help` describes this bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import numpy as np
    from predict import (EXIT_CODES, BundleError, _decode, _positive, describe, model_files, open_predictor,
                         read_info, report)
except ImportError as missing:  # predict.py ships beside this file; it needs onnxruntime, tokenizers and numpy
    if missing.name == "predict":
        sys.stderr.write("error: predict.py is missing beside generate.py\n  fix: copy the whole bundle folder\n")
        sys.exit(3)
    sys.stderr.write(f"error: generate.py needs the Python package {missing.name}, which is not installed\n"
                     "  fix: pip install onnxruntime tokenizers numpy\n")
    sys.exit(11)


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


def build_parser(info: dict | None, folder: pathlib.Path = HERE) -> argparse.ArgumentParser:
    """generate.py's options, with this bundle's model, context length and stop tokens in the description."""
    about = describe(info) if info else "Stream this bundle's continuation of a prompt (bundle.json is missing)."
    if info and info.get("task") == "text-generation":
        stop, context = limits(folder, info)
        about += (f" Context: {context} tokens." if context else "") + (
            f" Stops at token {', '.join(map(str, sorted(stop)))}." if stop else "")
    parser = argparse.ArgumentParser(prog="generate.py", description=about, epilog="exit codes: 0 ok, " + ", ".join(
        f"{c} {k}" for k, c in EXIT_CODES.items()))
    parser.add_argument("prompt", nargs="*", help="the text to continue (the words are joined); - reads it from stdin")
    parser.add_argument("--tokens", type=_positive, default=64, help="new tokens at most (default 64)")
    parser.add_argument("--temperature", type=_at_least_zero, default=0.0, help="0: greedy (default)")
    parser.add_argument("--top-k", type=_at_least_zero_int, default=0, help="sample among the k likeliest (0: all)")
    parser.add_argument("--top-p", type=_probability, default=1.0, help="sample within this probability mass")
    parser.add_argument("--seed", type=int, help="seed for sampling")
    parser.add_argument("--model", default="model.onnx", help=f"the model file: {' or '.join(model_files(info))}")
    parser.add_argument("--threads", type=_positive, help="intra-op threads (default: onnxruntime's)")
    return parser


def _at_least_zero(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number >= 0")
    return number


def _at_least_zero_int(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 0")
    return int(value)


def _probability(value: str) -> float:
    number = _at_least_zero(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not in (0, 1]")
    return number


def read_prompt(words: list[str], stdin=None) -> str:
    """The prompt: the words joined, or all of stdin for `-`; refuses an empty one."""
    if not words:
        raise BundleError("no prompt given", "give the text to continue, or - to read it from stdin", "usage")
    if "-" in words and len(words) > 1:
        raise BundleError("- (read stdin) given with other words", "give - alone, or the prompt alone", "usage")
    prompt = _decode((stdin or sys.stdin.buffer).read(), "stdin").rstrip("\n") if words == ["-"] else " ".join(words)
    if not prompt.strip():
        raise BundleError("the prompt is empty", "give non-empty text to continue", "bad input")
    return prompt


def main(argv: list[str] | None = None) -> int:
    """generate.py's command line; returns the exit code (errors are reported, never raised)."""
    try:
        info, problem = read_info(HERE), None
    except BundleError as e:
        info, problem = None, e
    args = build_parser(info).parse_args(argv)
    try:
        if problem:
            raise problem
        if info["task"] != "text-generation":
            raise BundleError(f"this bundle holds a {info['task']} model: generate.py continues text-generation "
                              "models only", "use predict.py", "usage")
        return stream(args, info)
    except BundleError as e:
        return report(e)
    except Exception as e:  # a bug, not the user's input: one line too, the traceback on request
        if os.environ.get("TOOLCHAIN_DEBUG"):
            raise
        return report(BundleError(f"generate.py failed: {type(e).__name__}: {e}",
                                  "TOOLCHAIN_DEBUG=1 shows the traceback to report", "bug"))


def stream(args: argparse.Namespace, info: dict) -> int:
    """Write the prompt, then each new token as it comes; the speed to stderr."""
    prompt = read_prompt(args.prompt)
    p = open_predictor(HERE, args.model, args.threads)
    stop, context = limits(HERE, p.info)
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
