"""ONNX Runtime figures for a pruned export: batch-1 latency on real sentences, and transformer fusion.

Run each measurement in its own process (torch and onnxruntime timings never share one):

    python benchmarks/prune_ort.py latency runs/teacher-onnx --sentences 300
    python benchmarks/prune_ort.py fusion runs/pruned-onnx

`latency` times the model call only (tokenization excluded), one test sentence at a time, and prints
the median and quartiles in ms. `fusion` runs onnxruntime.transformers' BERT optimizer with
num_heads=0 / hidden_size=0 (detect from the graph), counts the fused ops, checks the fused graph
against the unfused one on the parity texts and saves it beside the artifact folder as
<artifact>-fused.onnx (outside it, so the artifact's hashes stay true); time it with --onnx.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np

FUSED = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu",
         "FastGelu", "Gelu", "LayerNormalization", "Softmax", "MatMul")


def latency(artifact: Path, onnx_name: str, sentences: int, threads: int, warmup: int) -> dict:
    from toolchain.data import load_classification
    from toolchain.modeling import ModelSource, load_tokenizer
    from toolchain.parity import onnx_feeds
    from toolchain.runtime import make_session

    tok = load_tokenizer(ModelSource(str(artifact), str(artifact), local=True))
    texts = load_classification("rotten-tomatoes").split("test").texts[:sentences]
    session = make_session(artifact / onnx_name, threads=threads)  # an absolute onnx_name replaces the folder
    feeds = [onnx_feeds(session, {k: v.astype(np.int64) for k, v in tok(t, return_tensors="np").items()})
             for t in texts]
    for f in feeds[:warmup]:
        session.run(None, f)
    times = []
    for f in feeds:
        start = time.perf_counter()
        session.run(None, f)
        times.append((time.perf_counter() - start) * 1e3)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {"model": str(artifact / onnx_name), "sentences": len(times), "threads": threads,
            "mean_tokens": float(np.mean([f["input_ids"].shape[1] for f in feeds])),
            "median_ms": round(float(med), 3), "q1_ms": round(float(q1), 3), "q3_ms": round(float(q3), 3)}


def fusion(artifact: Path) -> dict:
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    from toolchain import parity
    from toolchain.modeling import ModelSource, load_tokenizer

    src = artifact / "model.onnx"
    optimized = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0)
    out = artifact.parent / f"{artifact.name}-fused.onnx"
    optimized.save_model_to_file(str(out))
    counts = collections.Counter(n.op_type for n in optimized.model.graph.node)
    heads = [next(a.i for a in n.attribute if a.name == "num_heads") for n in optimized.model.graph.node
             if n.op_type == "Attention"]
    tok = load_tokenizer(ModelSource(str(artifact), str(artifact), local=True))
    plain, fused = ort.InferenceSession(str(src)), ort.InferenceSession(str(out))
    diff = 0.0
    for batch, seq in parity.SHAPES:
        enc = parity.tokenize(tok, batch, seq)
        a = plain.run(None, parity.onnx_feeds(plain, enc))[0]
        b = fused.run(None, parity.onnx_feeds(fused, enc))[0]
        diff = max(diff, float(np.abs(a - b).max()))
    return {"model": str(src), "fused_ops": {k: counts[k] for k in FUSED if counts[k]},
            "attention_num_heads": heads, "fused_vs_unfused_max_abs_diff": diff, "saved": str(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["latency", "fusion"])
    p.add_argument("artifact", type=Path, help="an ONNX artifact folder (model.onnx + tokenizer)")
    p.add_argument("--onnx", default="model.onnx", help="ONNX file to time (default the artifact's model.onnx)")
    p.add_argument("--sentences", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=20)
    a = p.parse_args()
    if a.mode == "latency":
        result = latency(a.artifact, a.onnx, a.sentences, a.threads, a.warmup)
    else:
        result = fusion(a.artifact)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
