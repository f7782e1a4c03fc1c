"""llama.cpp (llama-cpp-python) on a GGUF file, measured the way toolchain.bench measures an ONNX LM.

    python benchmarks/llamacpp_worker.py REQUEST.json     # prints one JSON object

Run by compare.py as its own process (llama.cpp's thread pool never shares a process with onnxruntime or
torch). The request names the GGUF file, the prompt token ids (the same ids the ONNX models are timed on,
from the same tokenizer), the decode steps, runs, warmup, threads, and the token ids to score perplexity
on; perplexity uses toolchain.evaluate.strided_nll, the scheme every other row is scored with, on those ids.
Prefill: the prompt in one llama_eval call; decode: one greedy token a call with llama.cpp's KV cache.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's toolchain


def load(req: dict, logits_all: bool):
    from llama_cpp import Llama

    return Llama(model_path=req["gguf"], n_ctx=req["n_ctx"], n_threads=req["threads"],
                 n_threads_batch=req["threads"], n_batch=req["n_ctx"], logits_all=logits_all, verbose=False,
                 seed=0)


def time_generation(llm, prompt: list[int], steps: int) -> tuple[float, list[float]]:
    """One prefill of `prompt`, then `steps` greedy decode steps with the cache: (prefill s, step s list)."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - t0
    lat = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t0 = time.perf_counter()
        llm.eval([token])
        lat.append(time.perf_counter() - t0)
    return prefill, lat


def perplexity(req: dict) -> dict:
    from toolchain.evaluate import strided_nll

    llm = load(req, logits_all=True)

    def logits(batch: dict) -> np.ndarray:
        ids = [int(i) for i in batch["input_ids"][0]]
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)[None]

    ids = np.array(req["ppl_ids"], dtype=np.int64)
    nll, count, _ = strided_nll(logits, ids, req["window"], req["stride"])
    return {"perplexity": math.exp(nll / count), "tokens": count, "window": req["window"], "stride": req["stride"]}


def main() -> None:
    import llama_cpp

    req = json.loads(Path(sys.argv[1]).read_text())
    out = {"library": f"llama-cpp-python {llama_cpp.__version__}", "system_info":
           llama_cpp.llama_print_system_info().decode(errors="replace").strip()}
    if req.get("ppl_ids"):
        out["evaluate"] = perplexity(req)
    if req.get("runs"):
        t0 = time.perf_counter()
        llm = load(req, logits_all=False)
        out["load_s"] = time.perf_counter() - t0
        for _ in range(req["warmup"]):
            time_generation(llm, req["prompt"], req["steps"])
        runs = [time_generation(llm, req["prompt"], req["steps"]) for _ in range(req["runs"])]
        out["prefill_s"] = [p for p, _ in runs]
        out["decode_s"] = [d for _, d in runs]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
