"""Reading ONNX graphs for quantization: what is already quantized, which ops exist, and which nodes
must stay float32 (attention-mask paths, activation x activation MatMuls).
"""

from __future__ import annotations

from collections import Counter

# Ops that only appear in a graph that was quantized already.
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QLinearMatMul", "QLinearConv", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "QGemm", "MatMulNBits",
                 "GatherBlockQuantized"}
# How attention masks are applied to scores: added (0 / float-min) or selected (Where). A tensor that
# leaves one of these holds float-min at masked positions, which no int8 scale can represent.
MASK_APPLYING_OPS = {"Add", "Sub", "Where", "Min", "Max"}
SHAPE_OPS = {"Shape", "Size"}  # their outputs carry shapes, not values
FLOAT_TYPES = {1, 10, 16}  # TensorProto FLOAT, FLOAT16, BFLOAT16
HUGE = 1e30  # calibrated ranges beyond this come from mask fill values (float-min), not activations


def op_counts(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def quantized_ops(model) -> dict[str, int]:
    """Quantized op types the graph already holds, with their counts (empty for a float graph)."""
    counts = op_counts(model)
    return {op: counts[op] for op in sorted(QUANTIZED_OPS) if counts[op]}


def int8_weight_stats(model) -> dict:
    """How many initializers (and bytes) are stored as 8-bit integers vs float: proof weights are int8."""
    from onnx import TensorProto

    stats = Counter()
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        kind = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.FLOAT: "float32",
                TensorProto.FLOAT16: "float16"}.get(t.data_type)
        if kind and n > 1:  # scalars are scales and zero points
            stats[f"{kind}_tensors"] += 1
            stats[f"{kind}_elements"] += n
    return dict(stats)


def constant_tensors(model) -> set[str]:
    """Initializers and Constant outputs: values known without running the graph."""
    names = {t.name for t in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def activation_matmuls(model) -> list[str]:
    """MatMuls whose both inputs are activations (attention scores Q.K^T, probabilities x V).

    ONNX Runtime's QDQ quantizer ignores MatMulConstBOnly, so these are excluded by name: softmax
    probabilities and keys quantized per tensor cost much more accuracy than they save time.
    """
    consts = constant_tensors(model)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] not in consts and not _from_dequantize(model, n.input[1])]


def _from_dequantize(model, tensor: str) -> bool:
    return any(n.op_type == "DequantizeLinear" and tensor in n.output for n in model.graph.node)


def mask_guard(model) -> tuple[set[str], set[str]]:
    """(nodes, tensors) of the attention-mask path that must not be calibrated or quantized.

    Values are traced from graph inputs named like `*mask*`: a tensor computed only from the mask,
    constants and shapes is mask-derived (0 / float-min, or positions); a node that applies it to data
    (Add, Where, ...) outputs scores holding float-min, and its consumers read them. Histogram
    calibrators fail on those values, and the MinMax ranges they set are useless.
    """
    types = _elem_types(model)
    origin = {t: "static" for t in constant_tensors(model)}
    for i in model.graph.input:
        origin[i.name] = "mask" if "mask" in i.name.lower() else "data"
    consumers = _consumers(model)
    nodes, tensors = set(), set()
    for node in model.graph.node:
        kinds = {origin.get(t, "data") for t in node.input if t}
        if node.op_type in SHAPE_OPS or kinds <= {"static"}:
            kind = "static"
        elif kinds <= {"static", "mask"}:
            kind = "mask"
        else:
            kind = "data"
        for t in node.output:
            origin[t] = kind
        if kind == "mask":
            nodes.add(node.name)
            tensors |= {t for t in node.output if types.get(t, 1) in FLOAT_TYPES}
        elif (node.op_type in MASK_APPLYING_OPS and "mask" in kinds
              and all(types.get(t, 1) in FLOAT_TYPES for t in node.output)):
            nodes.add(node.name)  # scores + mask: its output holds float-min where masked
            for t in node.output:
                tensors.add(t)
                nodes |= {c.name for c in consumers.get(t, [])}
    return nodes, tensors


def _elem_types(model) -> dict[str, int]:
    """Element type of every tensor the graph declares or ONNX shape inference can tell."""
    import onnx

    if not model.graph.value_info:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001  (contrib ops or >2 GB: fall back to what is declared)
            pass
    infos = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    out = {v.name: v.type.tensor_type.elem_type for v in infos if v.type.HasField("tensor_type")}
    out |= {t.name: t.data_type for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            out[n.output[0]] = n.attribute[0].t.data_type
    return out


def _consumers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            out.setdefault(t, []).append(n)
    return out


def untyped_inputs(model, op_types: set[str]) -> list[str]:
    """Nodes of `op_types` whose first input has no type information: the static quantizer silently
    leaves them float32 (only their weights become int8), so they are reported."""
    known = set(_elem_types(model))
    return [n.name for n in model.graph.node if n.op_type in op_types and n.input and n.input[0] not in known]


def keep_float_consumers(model, quantized: set[str]) -> int:
    """Give float ops back the float tensor that ONNX Runtime's QDQ quantizer replaced; returns how many inputs.

    The quantizer feeds a quantized activation's DequantizeLinear output to *every* consumer, so a
    residual Add or SkipLayerNormalization that merely shares the tensor with a MatMul reads uint8
    rounding, and the runtime has to run the DequantizeLinear for it. Only the `quantized` nodes keep
    reading the round trip; activations that int8 ops produce (Gather outputs) are left alone.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        if source in producers and producers[source].name in quantized:
            continue  # an int8 op's own output: its consumers need the dequantized value
        for node in model.graph.node:
            if node.name in quantized:
                continue
            for i, t in enumerate(node.input):
                if t == dq.output[0]:
                    node.input[i] = source
                    rewired += 1
    _drop_dead_qdq(model)
    return rewired


def _drop_dead_qdq(model) -> None:
    """Remove QuantizeLinear/DequantizeLinear nodes whose outputs nothing reads any more."""
    while True:
        used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)
