"""The accuracy-aware loop: quantize, evaluate against the float32 parent, and while over budget keep
the most quantization-sensitive nodes in float32.

Sensitivity is measured per quantized activation: the signal-to-quantization-noise ratio (SQNR, dB)
of what its int8 round trip does to the MatMul outputs that read it (or to the activation itself), with
the scale and zero point the quantized model really uses (static: calibrated; dynamic: per sample, as
DynamicQuantizeLinear computes them).
The nodes that read the noisiest activation go back to float32 first; each iteration doubles how many
activations fall back, so a budget that needs many fallbacks is reached in a few evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

RANKING_SAMPLES = 16  # activations of this many calibration samples rank the nodes
MAX_ROWS = 128  # tokens per sample kept for ranking (an LM's 128-token windows: all of them)


@dataclass
class Budget:
    """How much worse than the float32 parent a quantized model may be."""

    metric: str  # "accuracy" (higher is better) or "perplexity" (lower is better)
    parent: float
    limit: float  # accuracy: absolute drop (0.01 = 1 point); perplexity: relative increase (0.05 = 5%)

    def cost(self, value: float) -> float:
        """The drop (accuracy) or relative increase (perplexity) of `value` against the parent."""
        if self.metric == "accuracy":
            return self.parent - value
        return value / self.parent - 1.0 if math.isfinite(value) else math.inf

    def within(self, value: float) -> bool:
        return self.cost(value) <= self.limit + 1e-12


@dataclass
class Iteration:
    fp32_nodes: list[str]
    value: float
    cost: float
    within_budget: bool

    def as_dict(self, metric: str) -> dict:
        return {"fp32_nodes": len(self.fp32_nodes), metric: self.value, "cost": self.cost,
                "within_budget": self.within_budget}


@dataclass
class LoopResult:
    best: int  # index into iterations
    iterations: list[Iteration] = field(default_factory=list)
    ranking: list[dict] = field(default_factory=list)

    @property
    def chosen(self) -> Iteration:
        return self.iterations[self.best]


def accuracy_loop(build: Callable[[list[str]], Path], score: Callable[[Path], float], budget: Budget,
                  rank: Callable[[Path], list[dict]], max_iterations: int) -> tuple[LoopResult, Path]:
    """Quantize with no fallback; while over budget, fall back the 1, 2, 4, ... next most sensitive
    activations' nodes. Returns the first model within budget, else the best one tried."""
    from ..console import bar as progress_bar

    bar = progress_bar(desc="quantize: accuracy loop", total=max_iterations + 1, unit="try")
    fallback: list[str] = []
    path = build(fallback)
    value = score(path)
    result = LoopResult(0, [Iteration([], value, budget.cost(value), budget.within(value))])
    paths = [path]
    bar.update()
    if not budget.within(value):
        result.ranking = rank(path)
    queue = [r for r in result.ranking if r["nodes"]]
    step = 1
    while not result.iterations[-1].within_budget and queue and len(result.iterations) <= max_iterations:
        take, queue = queue[:step], queue[step:]
        fallback = fallback + [n for r in take for n in r["nodes"] if n not in fallback]
        path = build(fallback)
        value = score(path)
        result.iterations.append(Iteration(list(fallback), value, budget.cost(value), budget.within(value)))
        paths.append(path)
        bar.update()
        step *= 2
    bar.close()
    within = [i for i, it in enumerate(result.iterations) if it.within_budget]
    result.best = within[0] if within else min(range(len(result.iterations)),
                                               key=lambda i: result.iterations[i].cost)
    return result, paths[result.best]


def rank_activations(float_model: Path, quant_model: Path, feeds: list[dict],
                     candidates: dict[str, list[str]]) -> list[dict]:
    """Quantized activations, most damaging first: {tensor, sqnr_db, nodes} where `nodes` are the float
    graph's nodes that read (or, for an output, write) the tensor and would go back to float32.

    For a MatMul/Gemm reader the SQNR is that of its *output* (x W vs round_trip(x) W): an activation
    with a few huge channels (LLM MLP inputs) loses its small channels to the int8 step, which the
    input's own SQNR hides because the outliers carry nearly all of its energy. Other readers (fused
    Attention) are ranked by the input's SQNR.
    """
    import onnx

    quant = onnx.load(str(quant_model), load_external_data=False)
    params = _quant_params(quant)
    tensors = [t for t in params if candidates.get(t)]
    values = _float_activations(float_model, tensors, feeds[:RANKING_SAMPLES])
    weights = _matmul_weights(onnx.load(str(float_model)), {n for t in tensors for n in candidates[t]})
    ranking = []
    for t in tensors:
        trips = [_round_trip(v, params[t]) for v in values[t]]
        sqnr = [_sqnr(values[t], trips)]
        for node in candidates[t]:
            w = weights.get(node)
            if w is not None and values[t][0].shape[-1] == w.shape[0]:
                sqnr.append(_sqnr([v @ w for v in values[t]], [q @ w for q in trips]))
        ranking.append({"tensor": t, "sqnr_db": round(min(sqnr), 2), "nodes": candidates[t]})
    return sorted(ranking, key=lambda r: r["sqnr_db"])


def _matmul_weights(model, nodes: set[str]) -> dict[str, np.ndarray]:
    """node -> its constant weight as (in, out), for MatMul and Gemm nodes among `nodes`."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.name in nodes and n.op_type in ("MatMul", "Gemm") and n.input[1] in inits:
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            trans = n.op_type == "Gemm" and any(a.name == "transB" and helper.get_attribute_value(a) for a in n.attribute)
            if w.ndim == 2:
                out[n.name] = w.T if trans else w
    return out


def _quant_params(model) -> dict:
    """Tensor -> (scale, zero point, qmin, qmax) of each statically quantized activation, or
    tensor -> None for each one quantized at run time (DynamicQuantizeLinear)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DynamicQuantizeLinear":
            out[n.input[0]] = None
        elif n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            scale = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else None
            zp = inits.get(n.input[2]) if len(n.input) > 2 else None
            if scale is None or scale.size != 1:
                continue
            signed = zp is not None and zp.data_type == TensorProto.INT8
            zero = float(numpy_helper.to_array(zp)) if zp is not None else 0.0
            out[n.input[0]] = (float(scale), zero, -128 if signed else 0, 127 if signed else 255)
    return out


def _float_activations(model_path: Path, tensors: list[str], feeds: list[dict]) -> dict[str, list[np.ndarray]]:
    """The float32 values of `tensors` on `feeds`, read by exposing them as extra graph outputs."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper

    from ..runtime import make_session

    model = onnx.load(str(model_path))
    declared = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in declared:
            model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(dir=model_path.parent) as tmp:
        path = Path(tmp) / "activations.onnx"
        onnx.save(model, str(path))
        session = make_session(path)
        out: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
        for feed in feeds:
            for t, v in zip(tensors, session.run(tensors, feed)):
                v = np.asarray(v, dtype=np.float32)
                rows = v.reshape(-1, v.shape[-1]) if v.ndim > 1 else v.reshape(1, -1)
                out[t].append(rows[:MAX_ROWS])  # one row per token: enough to rank, bounded memory
    return out


def _sqnr(reference: list[np.ndarray], noisy: list[np.ndarray]) -> float:
    """SQNR in dB of `noisy` against `reference` (higher is better)."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    return float(compute_signal_to_quantization_noice_ratio([r.ravel() for r in reference], [n.ravel() for n in noisy]))


def _round_trip(x: np.ndarray, params) -> np.ndarray:
    if params is None:  # DynamicQuantizeLinear: uint8, range always including zero, per run
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = (hi - lo) / 255.0 or 1.0
        zero, qmin, qmax = float(np.clip(np.round(-lo / scale), 0, 255)), 0, 255
    else:
        scale, zero, qmin, qmax = params
    q = np.clip(np.round(x / scale) + zero, qmin, qmax)
    return ((q - zero) * scale).astype(np.float32)
