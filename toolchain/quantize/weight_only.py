"""Weight-only quantization: constant MatMul weights to 4 or 8 bits in blocks along K (ONNX Runtime's
MatMulNBits), embedding tables to 4 bits (GatherBlockQuantized); activations stay float32.

Why a separate mode: for a causal LM decoding one token at a time the weights are the memory traffic,
so 4-bit blocks cut the time per token where dynamic int8 (per-call activation scales) mostly adds
rounding; and the error stays in the weights, where calibration algorithms can reduce it.

Algorithms for the 4-bit weights (8-bit weights are always round-to-nearest: nearly lossless):
- rtn: min/max per block (ORT's DefaultWeightOnlyQuantizer, C++ kernels). No data.
- hqq: half-quadratic optimisation of each block's zero point (ORT's HQQWeightOnlyQuantizer). No data;
  float zero points, so asymmetric only (ORT's CPU kernel for float zero points is ~70x slower).
- minmax: each block's own min..max in 16 steps with the min kept exactly (llama.cpp's Q4_1 grid), where
  rtn rounds the zero point to an integer, shifting every weight of the block by up to half a step. The
  min goes in as one small MatMul of per-block sums of x (x E, E the block indicator, shared by the
  MatMuls that read the same x) added to MatMulNBits' output. No data; exact for weights that were Q4_1
  (the built-in SmolLM2 is a de-quantized GGUF Q4_1: rtn costs it +36% perplexity).
- gptq: ORT's bundled GPTQ (neural_compressor): the Hessian of each MatMul's input on calibration text,
  quantization error compensated column by column.
- awq: activation-aware scaling (AWQ-style): per input channel s = mean|x|^alpha, alpha searched on
  calibration text to minimise the MatMul outputs' error; the weight rows are multiplied by s before
  RTN and one Mul by 1/s feeds the MatMuls that share the input.

`build(model, spec, ...)` is the graph-to-graph function (also for 4-bit embeddings of a classifier:
`WeightOnlySpec(bits=4, op_types=("Gather",))`); `run(job)` is the quantize stage's weight-only mode with
the mixed-precision loop: layers whose int4 error is largest go to int8 until the budget holds.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BITS = (4, 8)
ALGORITHMS = ("rtn", "minmax", "hqq", "gptq", "awq")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations
# int8 activations inside MatMulNBits (accuracy level 4) is what makes CPU decode fast: the kernels run
# integer dot products on the unpacked weights (ORT GenAI's builder uses it for CPU too).
DEFAULT_ACCURACY_LEVEL = 4
DEFAULT_BLOCK_SIZE = 32  # 4-bit: one scale per 32 weights costs 1 extra bit a weight and keeps error low
AWQ_GRID = tuple(i / 10 for i in range(11))  # alpha candidates: s = mean|x|^alpha
AWQ_SAMPLES = 8  # calibration samples whose activations set and score the AWQ scales
AWQ_ROWS = 512  # token rows per input tensor used by the AWQ search (memory and time bound)
SENSITIVITY_SAMPLES = 8  # calibration samples whose activations rank the int4 layers
TIED_SUFFIX = "/transposed"  # a tied LM head's own (K, N) copy of the embedding table
AWQ_MUL_SUFFIX = "/awq_scale"  # names the Mul nodes inserted where 1/s cannot be folded into a norm


@dataclass(frozen=True)
class WeightOnlySpec:
    """How weights are quantized; validated on construction (QuantizeConfig builds one from its fields)."""

    bits: int = 4
    block_size: int = DEFAULT_BLOCK_SIZE
    algorithm: str = "rtn"
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL
    symmetric: bool = False  # asymmetric blocks fit skewed weight blocks better at 4 bits
    op_types: tuple[str, ...] = ("MatMul", "Gather")
    bias_correction: bool = False  # MatMulNBits' bias = E[x] (W - W_quantized): the error's mean, from calibration
    act_order: bool = True  # gptq: rows by decreasing Hessian diagonal, grids fitted beforehand (no g_idx, no cost)

    def __post_init__(self):
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of two >= 16 (MatMulNBits' kernels)")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if self.algorithm != "rtn" and self.bits != 4:
            raise ValueError(f"{self.algorithm} is a 4-bit algorithm; 8-bit weights use rtn (nearly lossless)")
        if self.algorithm in ("hqq", "minmax") and self.symmetric:
            raise ValueError(f"{self.algorithm} keeps each block's own minimum: it is asymmetric only")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ValueError(f"accuracy_level must be one of {ACCURACY_LEVELS}")
        unknown = set(self.op_types) - {"MatMul", "Gather"}
        if not self.op_types or unknown:
            raise ValueError("weight-only op types are MatMul and Gather"
                             + (f"; not {', '.join(sorted(unknown))}" if unknown else ""))

    @property
    def needs_data(self) -> bool:
        return self.algorithm in ("gptq", "awq") or self.bias_correction


# --- what the graph holds ---------------------------------------------------------------------------

def weight_matmuls(model) -> dict[str, tuple[int, int]]:
    """MatMul node -> (K, N) of its constant 2-D weight: the nodes MatMulNBits can replace."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "MatMul" and len(n.input) > 1 and len(shapes.get(n.input[1], ())) == 2:
            out[n.name] = shapes[n.input[1]]
    return out


def materialize_transposed_weights(model) -> list[str]:
    """Give MatMuls that read Transpose(initializer) (a tied LM head: the embedding table transposed at
    run time) their own transposed initializer, so they can be quantized; returns those MatMuls."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    transposed = {}
    for n in model.graph.node:
        perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), [1, 0])
        if n.op_type == "Transpose" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2 and perm == [1, 0]:
            transposed[n.output[0]] = n.input[0]
    done = []
    for n in model.graph.node:
        if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in transposed:
            name = f"{transposed[n.input[1]]}{TIED_SUFFIX}"
            if name not in inits:
                w = numpy_helper.to_array(inits[transposed[n.input[1]]]).T.copy()
                inits[name] = numpy_helper.from_array(w, name)
                model.graph.initializer.append(inits[name])
            n.input[1] = name
            done.append(n.name)
    if done:
        used = {t for n in model.graph.node for t in n.input}
        dead = [n for n in model.graph.node if n.op_type == "Transpose" and n.output[0] in transposed
                and n.output[0] not in used]
        for n in dead:
            model.graph.node.remove(n)
    return done


def tied_pairs(model) -> dict[str, str]:
    """Gather node -> MatMul node of a tied LM head: the MatMul reads the table's transposed copy (optimum's
    export, after materialize_transposed_weights), or the Gather reads the head's weight transposed at run
    time (ORT GenAI's builder: Gather(Transpose(lm_head weight)))."""
    readers = {n.input[1]: n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    inits = {t.name for t in model.graph.initializer}
    transposed = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Transpose"
                  and n.input[0] in inits and next((list(a.ints) for a in n.attribute if a.name == "perm"), [1, 0])
                  == [1, 0]}
    pairs = {}
    for n in model.graph.node:
        if n.op_type != "Gather":
            continue
        if n.input[0] + TIED_SUFFIX in readers:
            pairs[n.name] = readers[n.input[0] + TIED_SUFFIX]
        elif transposed.get(n.input[0]) in readers:
            pairs[n.name] = readers[transposed[n.input[0]]]
    return pairs


def share_tied_embeddings(model, tied: dict[str, str], row_scales: dict | None = None) -> list[str]:
    """Let each tied embedding read its LM head's quantized blocks instead of a second copy (smollm2:
    -17 MB at int4): the head's MatMulNBits B is (vocab, blocks, bytes), which GatherBlockQuantized
    reads with quantize_axis 2, and a Reshape restores (..., hidden). Skipped when the head stayed
    float, has float zero points (HQQ) or AWQ-scaled rows. Returns the Gathers that now share."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    nodes = {_float_name(n.name): n for n in model.graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}
    shared = []
    for gather_name, head_name in tied.items():
        head, old = nodes.get(head_name), nodes.get(gather_name)
        if head is None or head_name in (row_scales or {}):
            continue
        zp = inits.get(head.input[3]) if len(head.input) > 3 and head.input[3] else None
        if zp is not None and zp.data_type != TensorProto.UINT8:
            continue
        attr = {a.name: helper.get_attribute_value(a) for a in head.attribute}
        bits, vocab, hidden = attr.get("bits", 4), attr["N"], attr["K"]
        blocks = tuple(inits[head.input[1]].dims)[1]
        name = head.input[1]
        # The head's own scales, reshaped by a node (folded when the session loads): one copy in the file.
        padded = blocks * attr["block_size"]  # a K that the block size does not divide is padded to whole blocks
        extra = [numpy_helper.from_array(np.array([vocab, blocks, 1], dtype=np.int64), f"{name}/gather_scales_shape"),
                 numpy_helper.from_array(np.array([padded], dtype=np.int64), f"{name}/gather_width")]
        inputs = [name, None, f"{name}/gather_scales"]
        if zp is not None:
            zeros = numpy_helper.to_array(zp)
            if bits == 4:
                zeros = np.stack([zeros & 0x0F, zeros >> 4], axis=-1).reshape(vocab, -1)[:, :blocks]
            extra.append(numpy_helper.from_array(_pack(zeros.reshape(vocab, blocks, 1), bits), f"{name}/gather_zero_points"))
            inputs.append(extra[-1].name)
        ids = old.input[1] if old is not None else next(n for n in model.graph.node if n.name == gather_name).input[1]
        target = old if old is not None else next(n for n in model.graph.node if n.name == gather_name)
        out = target.output[0]
        inputs[1] = ids
        new = [helper.make_node("Reshape", [head.input[2], extra[0].name], [f"{name}/gather_scales"],
                                name=f"{gather_name}_shared/scales"),
               helper.make_node("GatherBlockQuantized", inputs, [f"{out}/blocks"], name=f"{gather_name}_shared",
                                domain="com.microsoft", gather_axis=0, quantize_axis=2, block_size=attr["block_size"],
                                bits=bits),
               helper.make_node("Shape", [ids], [f"{out}/ids_shape"], name=f"{gather_name}_shared/shape"),
               helper.make_node("Concat", [f"{out}/ids_shape", extra[1].name], [f"{out}/shape"],
                                name=f"{gather_name}_shared/concat", axis=0),
               helper.make_node("Reshape", [f"{out}/blocks", f"{out}/shape"], [out], name=f"{gather_name}_shared/reshape")]
        if name + OFFSETS_SUFFIX in inits:  # a minmax head: each row's block minima, gathered and added
            extra.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}/gather_last_axis"))
            new[-1:-1] = [
                helper.make_node("Transpose", [name + OFFSETS_SUFFIX], [f"{name}/rows_offsets"],
                                 name=f"{gather_name}_shared/offsets_rows", perm=[1, 0]),
                helper.make_node("Gather", [f"{name}/rows_offsets", ids], [f"{out}/offsets16"],
                                 name=f"{gather_name}_shared/offsets", axis=0),
                helper.make_node("Cast", [f"{out}/offsets16"], [f"{out}/offsets32"],
                                 name=f"{gather_name}_shared/offsets_cast", to=TensorProto.FLOAT),
                helper.make_node("Unsqueeze", [f"{out}/offsets32", extra[-1].name], [f"{out}/offsets"],
                                 name=f"{gather_name}_shared/offsets_unsqueeze"),
                helper.make_node("Add", [f"{out}/blocks_q", f"{out}/offsets"], [f"{out}/blocks"],
                                 name=f"{gather_name}_shared/add_offsets")]
            new[1].output[0] = f"{out}/blocks_q"
        if padded != hidden:  # the rows' padding off again
            extra += [numpy_helper.from_array(np.array([v], dtype=np.int64), f"{name}/gather_{k}")
                      for k, v in (("start", 0), ("end", hidden), ("axis", -1))]
            new[-1].output[0] = f"{out}/padded"
            new.append(helper.make_node("Slice", [f"{out}/padded"] + [f"{name}/gather_{k}" for k in ("start", "end", "axis")],
                                        [out], name=f"{gather_name}_shared/unpad"))
        model.graph.initializer.extend(extra)
        at = list(model.graph.node).index(target)
        model.graph.node.remove(target)
        for k, n in enumerate(new):
            model.graph.node.insert(at + k, n)
        shared.append(gather_name)
    if shared:
        _drop_dead_nodes(model)  # the run-time Transpose that fed a GenAI graph's embedding
        _drop_unused_initializers(model)
    return shared


def _drop_dead_nodes(model) -> None:
    """Remove nodes none of whose outputs is read by a node or is a graph output, until none is left."""
    while True:
        needed = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if not any(o in needed for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)


def _drop_unused_initializers(model) -> None:
    used = {t for n in model.graph.node for t in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _tidy(model) -> None:
    """After replacing nodes: the float weights nothing reads leave, and the contrib-op domain is declared."""
    from onnx import helper

    _drop_unused_initializers(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def embedding_gathers(model) -> dict[str, tuple[int, int]]:
    """Gather node -> (rows, width) of its constant 2-D table (embeddings), gathered along axis 0."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if n.op_type == "Gather" and axis == 0 and len(shapes.get(n.input[0], ())) == 2:
            out[n.name] = shapes[n.input[0]]
    return out


def bits_by_node(model) -> dict[str, int]:
    """Quantized node -> its weight bits, keyed by the float node's name (ORT appends _Q4 / _Q8)."""
    out = {}
    for n in model.graph.node:
        if n.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            bits = next((a.i for a in n.attribute if a.name == "bits"), 4)
            out[_float_name(n.name)] = bits
    return out


def _float_name(name: str) -> str:
    for suffix in ("_Q4", "_Q8", "_Q2"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def match_nodes(names, patterns) -> tuple[list[str], list[str]]:
    """(names matching any glob pattern, patterns matching nothing)."""
    hits = {p: fnmatch.filter(names, p) for p in patterns}
    return sorted({n for h in hits.values() for n in h}), [p for p, h in hits.items() if not h]


# --- building a quantized graph ---------------------------------------------------------------------

def build(model, spec: WeightOnlySpec, *, int8_nodes=(), exclude=(), feeds=None, cache: dict | None = None
          ) -> tuple[object, dict]:
    """Quantize a float ModelProto's weights (a copy) as `spec` says; `int8_nodes` get 8-bit blocks
    whatever spec.bits is (the mixed-precision loop's fallback), `exclude` stay float32. `feeds`
    (input dicts) are the calibration data gptq and awq need; `cache` (a dict kept between calls) lets
    the mixed-precision loop reuse each layer's GPTQ codes instead of solving them again. Returns
    (model, notes)."""
    source = model  # the float graph: bias correction reads its weights and its activations' means
    model = copy.deepcopy(model)
    materialize_transposed_weights(model)
    tied = tied_pairs(model)
    matmuls = set(weight_matmuls(model)) if "MatMul" in spec.op_types else set()
    exclude = set(exclude)
    int8 = (set(int8_nodes) & matmuls) - exclude if spec.bits == 4 else matmuls - exclude
    int4 = matmuls - exclude - int8 if spec.bits == 4 else set()
    notes: dict = {}
    if spec.needs_data and int4 and not feeds:
        raise ValueError(f"{spec.algorithm} needs calibration feeds")
    if spec.algorithm == "awq" and int4:
        model, notes["awq"] = awq_scale(model, feeds, int4, spec)
    # ORT's quantizer logs every node, and warns that it lifts the opset to 21 for int4 (ONNX Runtime
    # runs the result: the parity check proves it); HQQ's torch.from_numpy warns about read-only arrays.
    ort_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = ort_log.level
    ort_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if int8:
                model = _default(model, 8, spec, only=int8, op_type="MatMul")
            if int4:
                model = _int4(model, spec, int4, feeds, cache)
            gathers = set(embedding_gathers(model)) - exclude if "Gather" in spec.op_types else set()
            if gathers:
                _quantize_gathers(model, gathers, spec)
    finally:
        ort_log.setLevel(level)
    _set_accuracy_level(model, spec.accuracy_level)
    if spec.bias_correction:
        notes["bias_correction"] = correct_bias(model, source, feeds, cache,
                                                row_scales=notes.get("awq", {}).get("_row_scales"))
    notes["shared_embedding"] = share_tied_embeddings(model, tied, row_scales=notes.get("awq", {}).get("_row_scales", {}))
    notes["nodes"] = {"int4_matmul": len(int4), "int8_matmul": len(int8),
                      "float32_matmul": len(matmuls - int4 - int8), f"int{spec.bits}_gather": len(gathers)}
    return model, notes


def _default(model, bits: int, spec: WeightOnlySpec, only: set[str], op_type: str):
    """ORT's round-to-nearest block quantizer on the nodes `only` (every other node excluded)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    others = [n.name for n in model.graph.node if n.name not in only]
    algo = DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=spec.symmetric, bits=bits,
                                        accuracy_level=spec.accuracy_level or None, op_types_to_quantize=(op_type,),
                                        quant_axes=(("MatMul", 0), ("Gather", 1)))
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=spec.block_size, is_symmetric=spec.symmetric,
                             nodes_to_exclude=others, algo_config=algo)
    q.process()
    return q.model.model


def _quantize_gathers(model, names: set[str], spec: WeightOnlySpec) -> None:
    """Embedding tables to GatherBlockQuantized with `spec.bits` in blocks along the row, stored as
    packed uint8 (ORT's quantizer writes UINT4 tensors, which ORT-format bundles cannot load, and only
    4 bits); dequantized value = (q - zero point) * scale, as MatMulNBits."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for i, node in enumerate(model.graph.node):
        if node.name not in names:
            continue
        table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        codes, scales, zeros = block_codes(table, spec.bits, spec.block_size, spec.symmetric)
        name = node.input[0]
        new = [numpy_helper.from_array(_pack(codes, spec.bits), f"{name}_Q{spec.bits}"),
               numpy_helper.from_array(scales, f"{name}_scales")]
        if not spec.symmetric:
            new.append(numpy_helper.from_array(_pack(zeros, spec.bits), f"{name}_zero_points"))
        model.graph.initializer.extend(new)
        q = helper.make_node("GatherBlockQuantized", [new[0].name, node.input[1]] + [t.name for t in new[1:]],
                             list(node.output), name=f"{node.name}_Q{spec.bits}", domain="com.microsoft",
                             gather_axis=0, quantize_axis=1, block_size=spec.block_size, bits=spec.bits)
        model.graph.node[i].CopyFrom(q)
    _tidy(model)


def block_codes(table: np.ndarray, bits: int, block: int, symmetric: bool):
    """Round-to-nearest codes of a (rows, width) table in blocks of `block` along the width:
    (codes (rows, width) uint8, scales and zero points (rows, ceil(width / block)))."""
    rows, width = table.shape
    blocks = (width + block - 1) // block
    t = np.pad(table, ((0, 0), (0, blocks * block - width))).reshape(rows, blocks, block)
    qmax = (1 << bits) - 1
    if symmetric:
        scale = np.abs(t).max(axis=2) / ((1 << (bits - 1)) - 1)
        scale = np.where(scale > 0, scale, 1.0)
        zero = np.full(scale.shape, 1 << (bits - 1), dtype=np.float32)
    else:
        lo, hi = np.minimum(t.min(axis=2), 0.0), np.maximum(t.max(axis=2), 0.0)
        scale = np.where(hi > lo, (hi - lo) / qmax, 1.0)
        zero = np.clip(np.round(-lo / scale), 0, qmax)
    codes = np.clip(np.round(t / scale[..., None]) + zero[..., None], 0, qmax).astype(np.uint8)
    return codes.reshape(rows, -1)[:, :width], scale.astype(np.float32), zero.astype(np.uint8)


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values along the last axis, two 4-bit values a byte (low nibble first) when bits is 4."""
    if bits == 8:
        return values.astype(np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _int4(model, spec: WeightOnlySpec, nodes: set[str], feeds, cache: dict | None = None):
    if spec.algorithm in ("rtn", "awq"):  # awq has already scaled the weights: RTN on the scaled rows
        return _default(model, 4, spec, only=nodes, op_type="MatMul")
    if spec.algorithm == "minmax":
        return _minmax(model, spec, nodes)
    if spec.algorithm == "hqq":
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

        algo = HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=4, op_types_to_quantize=("MatMul",))
        others = [n.name for n in model.graph.node if n.name not in nodes]
        q = MatMulNBitsQuantizer(model, nodes_to_exclude=others, algo_config=algo)
        q.process()
        return q.model.model
    return _gptq(model, spec, nodes, feeds, {} if cache is None else cache)


OFFSETS_SUFFIX = "_offsets"  # a minmax MatMulNBits' block minima: (blocks, N) float16, named after its B


def minmax_codes(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, N) weight -> (codes (K, N) in [0, 15], scales (blocks, N), minima (blocks, N)) with
    weight ~ codes * scale + minimum, each block of `block` rows along K on its own min..max."""
    k, n = w.shape
    blocks = (k + block - 1) // block
    t = np.pad(w.astype(np.float32), ((0, blocks * block - k), (0, 0)), constant_values=np.nan)
    t = t.reshape(blocks, block, n)
    lo, hi = np.nanmin(t, axis=1), np.nanmax(t, axis=1)
    lo = lo.astype(np.float16).astype(np.float32)  # stored as float16: exact for GGUF's (float16) minima
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0).astype(np.float32)
    codes = np.clip(np.round((w - np.repeat(lo, block, axis=0)[:k]) / np.repeat(scale, block, axis=0)[:k]), 0, 15)
    return codes.astype(np.uint8), scale, lo


def _minmax(model, spec: WeightOnlySpec, nodes: set[str]):
    """`nodes` as MatMulNBits on minmax_codes (zero point 0) plus x E M: the per-block sums of x (E, the
    (K, blocks) block indicator, one table per shape; x E once per input tensor) times the block minima M
    (float16, cast once)."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    block = spec.block_size
    sums: dict[str, str] = {}
    indicators: set[str] = set()
    out_nodes = []
    for node in model.graph.node:
        if node.name not in nodes:
            out_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        k, n = w.shape
        codes, scales, lo = minmax_codes(w, block)
        q = _nbits_node(model, node, codes, scales, np.zeros_like(scales, dtype=np.uint8), block)
        y = node.output[0]
        q.output[0] = f"{y}/q4"
        x, name = node.input[0], q.input[1]
        if x not in sums:
            blocks = scales.shape[0]
            e = f"block_indicator_{k}x{blocks}"  # one per shape, shared by every layer
            if e not in indicators:
                table = (np.arange(k)[:, None] // block == np.arange(blocks)[None, :]).astype(np.float32)
                model.graph.initializer.append(numpy_helper.from_array(table, e))
                indicators.add(e)
            sums[x] = f"{x}/block_sums"
            out_nodes.append(helper.make_node("MatMul", [x, e], [sums[x]], name=f"{x}/block_sums"))
        model.graph.initializer.append(numpy_helper.from_array(lo.astype(np.float16), name + OFFSETS_SUFFIX))
        out_nodes += [q,
                      helper.make_node("Cast", [name + OFFSETS_SUFFIX], [f"{name}{OFFSETS_SUFFIX}/float"],
                                       name=f"{q.name}/offsets_cast", to=TensorProto.FLOAT),
                      helper.make_node("MatMul", [sums[x], f"{name}{OFFSETS_SUFFIX}/float"], [f"{y}/offset"],
                                       name=f"{q.name}/offsets"),
                      helper.make_node("Add", [f"{y}/q4", f"{y}/offset"], [y], name=f"{q.name}/add_offsets")]
    del model.graph.node[:]
    model.graph.node.extend(out_nodes)
    _tidy(model)
    return model


def _gptq(model, spec: WeightOnlySpec, nodes: set[str], feeds, cache: dict):
    """GPTQ on `nodes`: Hessians of their inputs from one probe run per calibration sample, then
    gptq_codes per weight, written as MatMulNBits with GPTQ's own grid.

    ORT's bundled gptq_quantize runs the whole model once per input tensor per sample, re-fits a grid to
    the already-rounded weights, and mis-packs zero points when K / block_size is odd; this keeps its
    algorithm (Frantar et al., lazy batch updates, dampening 1% of the mean diagonal) without those."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    readers = [n for n in model.graph.node if n.name in nodes]
    todo = [n for n in readers if n.name not in cache]
    hessians = _hessians(model, sorted({n.input[0] for n in todo}), feeds) if todo else {}
    replaced = {}
    for node in readers:
        if node.name not in cache:
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            cache[node.name] = gptq_codes(w, hessians[node.input[0]], spec.block_size, spec.symmetric,
                                          act_order=spec.act_order)
        codes, scales, zeros = cache[node.name]
        replaced[node.name] = _nbits_node(model, node, codes, scales, None if spec.symmetric else zeros, spec.block_size)
    for i, n in enumerate(model.graph.node):
        if n.name in replaced:
            model.graph.node[i].CopyFrom(replaced[n.name])
    _tidy(model)
    return model


def _hessians(model, tensors: list[str], feeds) -> dict[str, np.ndarray]:
    """tensor -> X^T X / rows over every token of `feeds` (float32 while summing: smollm2's 121 inputs
    hold ~0.4 GB of them; gptq_codes works in float64)."""
    acc = {t: None for t in tensors}
    rows = 0
    for values in _probed(model, tensors, feeds):
        for t, x in values.items():
            xtx = x.T @ x
            acc[t] = xtx if acc[t] is None else acc[t] + xtx
        rows += x.shape[0]
    return {t: h / max(rows, 1) for t, h in acc.items()}


def gptq_codes(w: np.ndarray, h: np.ndarray, block: int, symmetric: bool, percdamp: float = 0.01,
               lazy: int = 128, act_order: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ of a (K, N) weight given the (K, K) Hessian of its input: (codes (K, N) uint8 in [0, 15],
    scales and zero points (K / block, N)); weight ~ (codes - zero) * scale, block by block along K.
    Each block's grid is fitted to the rows as GPTQ has already updated them; with `act_order` the rows
    go largest Hessian diagonal first and each block's grid is fitted to the original rows beforehand
    ("static groups": the blocks stay contiguous along K, so MatMulNBits needs no g_idx)."""
    k, n = w.shape
    w, h = w.astype(np.float64), h.astype(np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    blocks = (k + block - 1) // block
    scales, zeros = np.zeros((blocks, n)), np.zeros((blocks, n))
    order = np.arange(k)
    if act_order:
        for b in range(blocks):
            scales[b], zeros[b] = _grid(w[b * block:(b + 1) * block], symmetric)
        order = np.argsort(-np.diag(h), kind="stable")
        w, h = w[order], h[np.ix_(order, order)]
    h[np.arange(k), np.arange(k)] += percdamp * float(np.mean(np.diag(h)))
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H^-1
    lazy = max(lazy // block, 1) * block  # a grid's rows never straddle two lazy batches
    codes = np.zeros((k, n), dtype=np.uint8)
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1, err = w[i1:i2].copy(), np.zeros((i2 - i1, n))
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = order[i1 + i]
            if not act_order and row % block == 0:
                scales[row // block], zeros[row // block] = _grid(w1[i:i + block], symmetric)
            scale, zero = scales[row // block], zeros[row // block]
            q = np.clip(np.round(w1[i] / scale) + zero, 0, 15)
            codes[row] = q
            e = (w1[i] - (q - zero) * scale) / hinv1[i, i]
            w1[i:] -= np.outer(hinv1[i, i:], e)  # row i of the upper factor: the later rows
            err[i] = e
        w[i2:] -= hinv[i1:i2, i2:].T @ err
    return codes, scales.astype(np.float32), zeros.astype(np.uint8)


def _grid(rows: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """4-bit scale and zero point per column of a block of rows (the range includes zero)."""
    if symmetric:
        scale = np.abs(rows).max(axis=0) / 7.0  # codes 1..15 around zero point 8
        return np.where(scale > 0, scale, 1.0), np.full(rows.shape[1], 8.0)
    lo, hi = np.minimum(rows.min(axis=0), 0.0), np.maximum(rows.max(axis=0), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 15.0, 1.0)
    return scale, np.clip(np.round(-lo / scale), 0, 15)


def _nbits_node(model, node, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, block: int):
    """A 4-bit MatMulNBits node for `node` from (K, N) codes and (blocks, N) scales / zero points;
    its initializers are added to the model."""
    from onnx import helper, numpy_helper

    k, n = codes.shape
    blocks = scales.shape[0]
    padded = np.zeros((blocks * block, n), dtype=np.uint8)
    padded[:k] = codes
    if zeros is None:
        padded[k:] = 8  # padding rows dequantize to zero
    else:
        padded[k:] = np.repeat(zeros, block, axis=0)[k:]
    t = padded.T.reshape(n, blocks, block // 2, 2)
    packed = (t[..., 0] | (t[..., 1] << 4)).astype(np.uint8)
    name = node.input[1]
    new = [numpy_helper.from_array(packed, f"{name}_Q4"), numpy_helper.from_array(scales.T.copy(), f"{name}_scales")]
    if zeros is not None:
        z = np.zeros((n, blocks + blocks % 2), dtype=np.uint8)
        z[:, :blocks] = zeros.T
        new.append(numpy_helper.from_array((z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8), f"{name}_zero_points"))
    model.graph.initializer.extend(new)
    return helper.make_node("MatMulNBits", [node.input[0]] + [t.name for t in new], list(node.output),
                            name=f"{node.name}_Q4", domain="com.microsoft", K=k, N=n, bits=4, block_size=block)


def _set_accuracy_level(model, level: int) -> None:
    """Every MatMulNBits computes at `level` (HQQ and GPTQ do not set it themselves)."""
    from onnx import helper

    for n in model.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        kept = [a for a in n.attribute if a.name != "accuracy_level"]
        del n.attribute[:]
        n.attribute.extend(kept)
        if level:
            n.attribute.append(helper.make_attribute("accuracy_level", level))


# --- AWQ-style activation-aware scaling ---------------------------------------------------------------

def fake_quantize(w: np.ndarray, bits: int, block: int, symmetric: bool) -> np.ndarray:
    """Round trip of a (K, N) weight through `bits`-bit blocks of `block` rows along K, like
    MatMulNBits' round-to-nearest (range includes zero; symmetric uses [-2^(b-1), 2^(b-1)-1])."""
    k, n = w.shape
    pad = (-k) % block
    wp = np.pad(w, ((0, pad), (0, 0))).reshape(-1, block, n)
    qmax = (1 << bits) - 1
    if symmetric:
        amax = np.abs(wp).max(axis=1, keepdims=True)
        scale = np.where(amax > 0, amax / (1 << (bits - 1)), 1.0)
        q = np.clip(np.round(wp / scale), -(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        out = q * scale
    else:
        lo = np.minimum(wp.min(axis=1, keepdims=True), 0.0)
        hi = np.maximum(wp.max(axis=1, keepdims=True), 0.0)
        scale = np.where(hi > lo, (hi - lo) / qmax, 1.0)
        zero = np.clip(np.round(-lo / scale), 0, qmax)
        out = (np.clip(np.round(wp / scale) + zero, 0, qmax) - zero) * scale
    return out.reshape(-1, n)[:k].astype(np.float32)


def awq_scale(model, feeds, int4_nodes: set[str], spec: WeightOnlySpec):
    """Scale the rows of the int4 MatMuls' weights by s = mean|x|^alpha per input channel (alpha from
    AWQ_GRID, best output error on calibration activations) and feed them x / s through one Mul per
    shared input, or fold 1/s into the norm weight that produces it (RMSNorm's Mul by gamma: no extra op
    at run time). Returns (model, notes: how many inputs were scaled and folded, the error ratio; under
    "_row_scales" the s of each scaled MatMul, for the sensitivity ranking)."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers[t] = consumers.get(t, 0) + 1
    outputs = {o.name for o in model.graph.output}
    groups: dict[str, list] = {}
    for n in model.graph.node:
        if n.name in int4_nodes:
            groups.setdefault(n.input[0], [])
    for n in model.graph.node:  # every weight MatMul reading a scaled input must be scaled, int4 or not
        if n.op_type == "MatMul" and n.input[0] in groups and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            groups[n.input[0]].append(n)
    acts = activations(model, list(groups), feeds[:AWQ_SAMPLES])
    notes, new_nodes, row_scales, folded = {}, [], {}, 0
    for tensor, readers in groups.items():
        x = acts[tensor]
        weights = {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in readers}
        alpha, s, gain = _search_alpha(x, [weights[n.name] for n in readers if n.name in int4_nodes], spec)
        notes[tensor] = {"alpha": alpha, "error_ratio": round(gain, 4)}
        if alpha == 0.0:
            continue  # plain RTN was best: no Mul
        for n in readers:
            w = weights[n.name] * s[:, None]
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), n.input[1]))
            row_scales[n.name] = s
        norm = producers.get(tensor)
        slot = _norm_weight(norm, inits, producers, len(s))
        if slot is not None and consumers[tensor] == len(readers) and tensor not in outputs:
            index, gamma = slot  # a new gamma / s for this Mul only: exporters share equal initializers
            g = numpy_helper.from_array(numpy_helper.to_array(gamma).astype(np.float32) / s, f"{tensor}{AWQ_MUL_SUFFIX}/gamma")
            model.graph.initializer.append(g)
            norm.input[index] = g.name
            folded += 1
            continue
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{tensor}{AWQ_MUL_SUFFIX}/inv_s")
        model.graph.initializer.append(inv)
        scaled = f"{tensor}{AWQ_MUL_SUFFIX}/out"
        new_nodes.append((readers, helper.make_node("Mul", [tensor, inv.name], [scaled], name=f"{tensor}{AWQ_MUL_SUFFIX}")))
        for n in readers:
            n.input[0] = scaled
    for readers, mul in new_nodes:  # insert each Mul right before its first reader (keeps topological order)
        first = min(i for i, n in enumerate(model.graph.node) if n.name in {r.name for r in readers})
        model.graph.node.insert(first, mul)
    scaled = [v for v in notes.values() if v["alpha"] > 0]
    return model, {"inputs": len(notes), "scaled_inputs": len(scaled), "folded_into_norm": folded,
                   "_row_scales": row_scales,
                   "mean_alpha": round(float(np.mean([v["alpha"] for v in notes.values()])), 3) if notes else None,
                   "mean_error_ratio": round(float(np.mean([v["error_ratio"] for v in notes.values()])), 4) if notes else None}


def _norm_weight(node, inits: dict, producers: dict, k: int):
    """(input index, initializer) of the constant (K,) factor of a Mul (a norm's gamma), directly or
    through an Identity; None when the node is not such a Mul."""
    if node is None or node.op_type != "Mul":
        return None
    for i, t in enumerate(node.input):
        src = producers.get(t)
        if t not in inits and src is not None and src.op_type == "Identity":
            t = src.input[0]
        if t in inits and tuple(inits[t].dims) == (k,):
            return i, inits[t]
    return None


def _search_alpha(x: np.ndarray, weights: list[np.ndarray], spec: WeightOnlySpec) -> tuple[float, np.ndarray, float]:
    """(alpha, s, error with s / error without) minimising sum ||xW - (x/s) Q(sW)||^2 over `weights`."""
    mean_abs = np.abs(x).mean(axis=0) + 1e-8
    refs = [x @ w for w in weights]
    best = (math.inf, 0.0, np.ones_like(mean_abs))
    base = None
    for alpha in AWQ_GRID:
        s = mean_abs ** alpha
        s = s / math.sqrt(float(s.max()) * float(s.min()))  # centre the scales around 1
        s = np.clip(s, 1e-4, 1e4).astype(np.float32)
        xs = x / s
        err = sum(float(((r - xs @ fake_quantize(w * s[:, None], 4, spec.block_size, spec.symmetric)) ** 2).sum())
                  for r, w in zip(refs, weights))
        if base is None:
            base = err
        if err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2], (best[0] / base) if base else 1.0


@contextlib.contextmanager
def _probe(model, tensors: list[str]):
    """An ONNX Runtime session of `model` with `tensors` exposed as extra outputs."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper

    from ..runtime import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    for t in tensors:
        if t not in declared:
            probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="toolchain-weight-only-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        del probe
        yield make_session(path)


def _probed(model, tensors: list[str], feeds: list[dict]):
    """For each feed, {tensor: its float32 values as (tokens, channels)} for each of `tensors`."""
    with _probe(model, tensors) as session:
        for feed in feeds:
            yield {t: np.asarray(v, dtype=np.float32).reshape(-1, np.shape(v)[-1])
                   for t, v in zip(tensors, session.run(tensors, feed))}


def activations(model, tensors: list[str], feeds: list[dict], rows: int = AWQ_ROWS) -> dict[str, np.ndarray]:
    """The float values of `tensors` on `feeds` as (tokens, channels), at most `rows` tokens each."""
    out: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for values in _probed(model, tensors, feeds):
        for t, x in values.items():
            out[t].append(x)
    result = {}
    for t, parts in out.items():
        x = np.concatenate(parts)
        result[t] = x[np.linspace(0, len(x) - 1, min(rows, len(x))).astype(int)] if len(x) > rows else x
    return result


def input_means(model, tensors: list[str], feeds: list[dict]) -> dict[str, np.ndarray]:
    """The mean over every token of every feed of each of `tensors` (per channel), in float64."""
    sums: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    for values in _probed(model, tensors, feeds):
        for t, x in values.items():
            sums[t] = sums.get(t, 0.0) + x.sum(axis=0, dtype=np.float64)
            count[t] = count.get(t, 0) + len(x)
    return {t: sums[t] / count[t] for t in tensors}


def correct_bias(model, source, feeds: list[dict], cache: dict | None = None, row_scales: dict | None = None) -> dict:
    """Give every MatMulNBits of `model` the bias E[x] (W - W_quantized), with E[x] its input's mean over the
    calibration feeds in the float graph `source`: the mean of the rounding error's effect, taken back at no
    cost (MatMulNBits adds a bias itself). The rest of the error, which varies with x, stays. `row_scales`
    (AWQ's s per float node): that kernel sees x / s and s W, so its bias is E[x / s] (s W - Q(s W)).

    SmolLM2-135M on GenAI's graph (docs/results.md): RTN int4 +33.7% -> +24.0% perplexity, GPTQ in K order
    +12.2% -> +11.1%; act-order GPTQ +6.5% -> +6.4%.
    """
    from onnx import numpy_helper

    floats = {t.name: t for t in source.graph.initializer}
    float_inputs = {n.name: n.input[0] for n in source.graph.node if n.op_type == "MatMul"}
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits" and len(n.input) < 6
             and _float_name(n.name) in float_inputs]
    key = ("input_means", tuple(sorted({float_inputs[_float_name(n.name)] for n in nodes})))
    means = (cache or {}).get(key) or input_means(source, list(key[1]), feeds)
    if cache is not None:
        cache[key] = means
    done = 0
    for n in nodes:
        name, weight = _float_name(n.name), re.sub(r"_Q[48]$", "", n.input[1])
        if weight not in floats:
            continue
        w, mean = numpy_helper.to_array(floats[weight]).astype(np.float64), means[float_inputs[name]]
        s = (row_scales or {}).get(name)
        if s is not None:
            w, mean = w * s[:, None], mean / s
        bias = f"{n.name}/bias_correction"
        model.graph.initializer.append(numpy_helper.from_array((mean @ (w - dequantize(n, inits))).astype(np.float32), bias))
        inputs = list(n.input) + [""] * (5 - len(n.input)) + [bias]  # A, B, scales, zero_points, g_idx, bias
        del n.input[:]
        n.input.extend(inputs)
        done += 1
    return {"matmuls": done, "samples": len(feeds)}


# --- reading a quantized graph back -------------------------------------------------------------------

def dequantize(node, inits: dict) -> np.ndarray:
    """The (K, N) float weight a MatMulNBits node computes with (scales, zero points, packing undone)."""
    from onnx import helper, numpy_helper

    attr = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = attr["K"], attr["N"], attr.get("bits", 4), attr["block_size"]
    blocks = (k + block - 1) // block
    packed = numpy_helper.to_array(inits[node.input[1]]).reshape(n, blocks, -1)
    if bits == 4:
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, blocks, block).astype(np.float32)
    else:
        q = packed.reshape(n, blocks, block).astype(np.float32)
    scale = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32).reshape(n, blocks, 1)
    zp_name = node.input[3] if len(node.input) > 3 else ""
    if not zp_name:
        zero = np.full((n, blocks, 1), float(1 << (bits - 1)), dtype=np.float32)
    else:
        zp = numpy_helper.to_array(inits[zp_name])
        if zp.dtype == np.uint8 and bits == 4:
            zp = zp.reshape(n, -1)
            zero = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)[:, :blocks].astype(np.float32)
        else:
            zero = zp.astype(np.float32).reshape(n, blocks)
        zero = zero[..., None]
    w = (q - zero) * scale
    if node.input[1] + OFFSETS_SUFFIX in inits:  # minmax: plus each block's minimum
        w = w + numpy_helper.to_array(inits[node.input[1] + OFFSETS_SUFFIX]).astype(np.float32).T[..., None]
    return w.reshape(n, blocks * block)[:, :k].T.copy()


def sensitivity(float_model, quant_model, feeds: list[dict], nodes: set[str] | None = None,
                row_scales: dict | None = None) -> list[dict]:
    """int4 MatMuls, most damaged first: the SQNR (dB) of each one's output, x W_float vs x W_int4, on
    the quantized model's own activations (so upstream error is included). `nodes` limits the float
    node names ranked; `row_scales` are AWQ's s per node (its kernel sees x / s and sW). Each entry {node, sqnr_db, nodes: [node]} is a fallback the loop can take."""
    from onnx import numpy_helper

    from .loop import _sqnr

    f_inits = {t.name: t for t in float_model.graph.initializer}
    f_weight = {n.name: n.input[1] for n in float_model.graph.node if n.op_type == "MatMul"}
    q_inits = {t.name: t for t in quant_model.graph.initializer}
    row_scales = row_scales or {}
    targets = [n for n in quant_model.graph.node if n.op_type == "MatMulNBits"
               and dict((a.name, a.i) for a in n.attribute).get("bits", 4) == 4
               and _float_name(n.name) in f_weight and (nodes is None or _float_name(n.name) in nodes)]
    acts = activations(quant_model, sorted({n.input[0] for n in targets}), feeds[:SENSITIVITY_SAMPLES])
    ranking = []
    for n in targets:
        name = _float_name(n.name)
        w = numpy_helper.to_array(f_inits[f_weight[name]]).astype(np.float32)
        if name in row_scales:  # x/s feeds sW: compare in that space
            w = w * row_scales[name][:, None]
        x = acts[n.input[0]]
        ranking.append({"node": name, "sqnr_db": round(_sqnr([x @ w], [x @ dequantize(n, q_inits)]), 2),
                        "nodes": [name]})
    return sorted(ranking, key=lambda r: r["sqnr_db"])


def spec_dict(spec: WeightOnlySpec) -> dict:
    """The settings a manifest records (act_order only where it means something: gptq)."""
    d = asdict(spec) | {"op_types": list(spec.op_types)}
    if spec.algorithm != "gptq":
        del d["act_order"]
    return d


# --- the quantize stage's weight-only mode ------------------------------------------------------------

def prepare(parent, cfg, work: Path):
    """The stage's job for weight-only mode: user exclusions, and calibration feeds when the algorithm
    or the mixed-precision loop needs them."""
    import onnx

    from ..errors import Unsupported
    from .stage import _feeds, _Job, _warn, refuse_quantized, resolve_settings

    refuse_quantized(parent)
    spec = cfg.weight_only_spec
    job = _Job(parent, cfg, parent.onnx_path, work, resolve_settings(cfg), list(spec.op_types), {})
    model = onnx.load(str(parent.onnx_path))
    materialize_transposed_weights(model)
    found = {"MatMul": weight_matmuls(model), "Gather": embedding_gathers(model)}
    candidates = [n for op in spec.op_types for n in found[op]]
    if not candidates:
        raise Unsupported(f"the model has no {' or '.join(spec.op_types)} node with a constant 2-D weight",
                          "weight-only quantization needs MatMul weights or Gather tables stored in the graph")
    for op in spec.op_types:
        if not found[op] and cfg.op_types:
            _warn(job.warnings, f"op type {op} has no constant-weight node in the model: nothing to quantize there")
    hits, unknown = match_nodes(candidates, cfg.exclude_nodes)
    if unknown:
        _warn(job.warnings, f"excluded node(s) not in the graph: {', '.join(unknown[:5])}")
    job.excluded = {n: "user" for n in hits}
    if spec.needs_data or cfg.budget_limit is not None:
        job.feeds = _feeds(job)
        job.notes["calibration"] = {"samples": len(job.feeds), "max_length": cfg.max_length,
                                    "data": cfg.data or ("hamlet" if parent.task == "text-generation" else "rotten-tomatoes")}
    return job


def run(job) -> tuple[Path, dict]:
    """Quantize once, or run the mixed-precision loop: all int4 first; while over the budget the int4
    MatMuls with the lowest output SQNR go to int8 (1, 2, 4, ... more per round)."""
    import onnx

    from . import loop
    from .stage import _budget, _warn

    cfg, spec = job.cfg, job.cfg.weight_only_spec
    model = onnx.load(str(job.model))
    materialize_transposed_weights(model)  # the ranking reads the same float weights the builds quantize
    notes: dict[Path, dict] = {}
    cache: dict = {}  # GPTQ codes per layer: the same in every round (Hessians of the float model's inputs)

    def make(int8_nodes: list[str]) -> Path:
        quantized, why = build(model, spec, int8_nodes=int8_nodes, exclude=set(job.excluded), feeds=job.feeds,
                               cache=cache)
        path = job.work / f"weight-only-{len(notes)}.onnx"
        onnx.save(quantized, str(path))
        notes[path] = why
        return path

    def public(why: dict) -> dict:  # what the manifest records (AWQ's scale vectors stay out)
        return {k: ({i: j for i, j in v.items() if not i.startswith("_")} if isinstance(v, dict) else v)
                for k, v in why.items()}

    if cfg.budget_limit is None:
        path = make([])
        job.notes["weight_only"] = public(notes[path])
        return path, {}
    budget, score = _budget(job)

    def rank(path: Path) -> list[dict]:
        return sensitivity(model, onnx.load(str(path)), job.feeds,
                           row_scales=notes[path].get("awq", {}).get("_row_scales"))

    result, chosen = loop.accuracy_loop(make, score, budget, rank, cfg.max_iterations)
    job.notes["weight_only"] = public(notes[chosen])
    it = result.chosen
    if not it.within_budget:
        _warn(job.warnings, f"perplexity budget not met: best {budget.metric} {it.value:.4g} "
                            f"(cost {it.cost:.4g} > {budget.limit:g}) with {len(it.fp32_nodes)} int8 layers")
    return chosen, {"budget": {"metric": budget.metric, "parent": budget.parent, "limit": budget.limit,
                               "split": "validation" if budget.metric == "accuracy" else cfg.data or "hamlet",
                               "batch_size": cfg.eval_batch_size, "max_tokens": cfg.max_eval_tokens},
                    "iterations": [_int8_counts(i.as_dict(budget.metric)) for i in result.iterations],
                    "chosen_iteration": result.best, "within_budget": it.within_budget, "int8_nodes": it.fp32_nodes,
                    "sensitivity": [{"node": r["node"], "sqnr_db": r["sqnr_db"]} for r in result.ranking]}


def _int8_counts(row: dict) -> dict:
    """A loop iteration's row: its fallback nodes went to int8, not float32."""
    row["int8_nodes"] = row.pop("fp32_nodes")
    return row
