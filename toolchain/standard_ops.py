"""Rewrites that keep a transformer graph inside the standard ONNX ops a mobile EP runs.

`optimize` applies the ones a deployment target names (toolchain/targets.py) instead of ORT's
transformer fusions, whose com.microsoft ops only ORT's own CPU/GPU EPs run:

- layernorm: LayerNormalization (NNAPI has none) -> ReduceMean, Sub, Mul, Add, Sqrt, Div.
- gelu: Erf (NNAPI has none) -> its tanh form, erf(z) ~ tanh(2/sqrt(pi) (z + 0.044715 * 2 z^3)), the
  approximation of GELU that GPT-2 and BERT's `gelu_new` use (max abs error of GELU ~5e-4).
- cls-slice: Gather of one constant position along a non-leading axis (BERT's pooler takes token 0)
  -> Slice + Squeeze (CoreML's ML Program has no Gather).
- where: Where(c, A, B) on float branches (the attention mask's fill) -> B + Cast(c) * (A - B), exact for
  finite values (NNAPI has no Where).
- expand: Expand(x, shape) -> x * ones(shape) (NNAPI has no Expand; with fixed input shapes the ones fold
  into a constant).

Each returns how many nodes it rewrote; the graph keeps its inputs, outputs and initializers.
"""

from __future__ import annotations

import math

import numpy as np

ERF_CUBIC = 0.044715 * 2  # the tanh-GELU cubic term, in the erf argument z = x / sqrt(2)
ERF_SCALE = 2 / math.sqrt(math.pi)


def apply(model, rewrites: tuple[str, ...]) -> dict[str, int]:
    """Apply the named rewrites in place; returns {rewrite: nodes rewritten}."""
    done = {}
    for name in rewrites:
        done[name] = REWRITES[name](model)
    return done


def _const(model, name: str, value) -> str:
    import onnx

    model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
    return name


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _reduce_mean(model, x: str, out: str, axis: int, name: str):
    from onnx import helper

    if _opset(model) >= 18:  # axes became an input in opset 18
        axes = _const(model, f"{name}/axes", np.array([axis], dtype=np.int64))
        return helper.make_node("ReduceMean", [x, axes], [out], name=name, keepdims=1)
    return helper.make_node("ReduceMean", [x], [out], name=name, axes=[axis], keepdims=1)


def _replace(model, old, new_nodes: list) -> None:
    """Put `new_nodes` where `old` was, keeping the graph topologically sorted."""
    nodes = model.graph.node
    at = list(nodes).index(old)
    nodes.remove(old)
    for k, n in enumerate(new_nodes):
        nodes.insert(at + k, n)


def layernorm(model) -> int:
    """LayerNormalization -> (x - mean) / sqrt(var + eps) * scale + bias, over the last axis."""
    from onnx import helper

    found = [n for n in model.graph.node if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]
    for i, n in enumerate(found):
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        axis, eps = attrs.get("axis", -1), attrs.get("epsilon", 1e-5)
        if axis != -1 or len(n.output) > 1 and any(n.output[1:]):
            continue  # only the last-axis form, without the optional mean / inv-std outputs
        p, x = f"{n.name or f'LayerNorm_{i}'}/std", n.input[0]
        eps_name = _const(model, f"{p}/eps", np.array(eps, dtype=np.float32))
        new = [_reduce_mean(model, x, f"{p}/mean", -1, f"{p}/ReduceMean"),
               helper.make_node("Sub", [x, f"{p}/mean"], [f"{p}/centered"], name=f"{p}/Sub"),
               helper.make_node("Mul", [f"{p}/centered", f"{p}/centered"], [f"{p}/squared"], name=f"{p}/Square"),
               _reduce_mean(model, f"{p}/squared", f"{p}/var", -1, f"{p}/ReduceMeanVar"),
               helper.make_node("Add", [f"{p}/var", eps_name], [f"{p}/var_eps"], name=f"{p}/AddEps"),
               helper.make_node("Sqrt", [f"{p}/var_eps"], [f"{p}/stddev"], name=f"{p}/Sqrt"),
               helper.make_node("Div", [f"{p}/centered", f"{p}/stddev"], [f"{p}/normed"], name=f"{p}/Div")]
        scaled = f"{p}/scaled" if len(n.input) > 2 and n.input[2] else n.output[0]
        new.append(helper.make_node("Mul", [f"{p}/normed", n.input[1]], [scaled], name=f"{p}/Scale"))
        if scaled != n.output[0]:
            new.append(helper.make_node("Add", [scaled, n.input[2]], [n.output[0]], name=f"{p}/Bias"))
        _replace(model, n, new)
    return len(found)


def gelu(model) -> int:
    """Erf(z) -> Tanh(2/sqrt(pi) * (z + 0.08943 z^3)): GELU's tanh form, made of ops every EP has."""
    from onnx import helper

    found = [n for n in model.graph.node if n.op_type == "Erf"]
    if found:
        cubic = _const(model, "gelu_tanh/cubic", np.array(ERF_CUBIC, dtype=np.float32))
        scale = _const(model, "gelu_tanh/scale", np.array(ERF_SCALE, dtype=np.float32))
    for i, n in enumerate(found):
        p, z = f"{n.name or f'Erf_{i}'}/tanh", n.input[0]
        _replace(model, n, [
            helper.make_node("Mul", [z, z], [f"{p}/z2"], name=f"{p}/Square"),
            helper.make_node("Mul", [f"{p}/z2", cubic], [f"{p}/cz2"], name=f"{p}/Cubic"),
            helper.make_node("Mul", [f"{p}/cz2", z], [f"{p}/cz3"], name=f"{p}/Cube"),
            helper.make_node("Add", [z, f"{p}/cz3"], [f"{p}/inner"], name=f"{p}/Add"),
            helper.make_node("Mul", [f"{p}/inner", scale], [f"{p}/arg"], name=f"{p}/Scale"),
            helper.make_node("Tanh", [f"{p}/arg"], [n.output[0]], name=f"{p}/Tanh")])
    return len(found)


def cls_slice(model) -> int:
    """Gather(data, constant scalar k, axis>0) -> Squeeze(Slice(data, k, k+1, axis), axis)."""
    from onnx import helper, numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consts |= {n.output[0]: numpy_helper.to_array(a.t) for n in model.graph.node if n.op_type == "Constant"
               for a in n.attribute if a.name == "value"}
    count = 0
    for n in [n for n in model.graph.node if n.op_type == "Gather"]:
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        index = consts.get(n.input[1])
        if axis == 0 or index is None or index.ndim != 0 or int(index) < 0:
            continue  # embedding lookups (axis 0) and negative positions stay Gathers
        p, k = n.name or f"Gather_{count}", int(index)
        starts = _const(model, f"{p}/starts", np.array([k], dtype=np.int64))
        ends = _const(model, f"{p}/ends", np.array([k + 1], dtype=np.int64))
        axes = _const(model, f"{p}/axes", np.array([axis], dtype=np.int64))
        _replace(model, n, [helper.make_node("Slice", [n.input[0], starts, ends, axes], [f"{p}/slice"],
                                             name=f"{p}/Slice"),
                            helper.make_node("Squeeze", [f"{p}/slice", axes], [n.output[0]], name=f"{p}/Squeeze")])
        count += 1
    return count


def _elem_types(model) -> dict[str, int]:
    """Tensor name -> ONNX element type, from shape inference (empty where it cannot run)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types are a hint: without them the rewrites that need them are skipped
        return {}
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}
    return types | {t.name: t.data_type for t in model.graph.initializer}


def where(model) -> int:
    """Where(c, A, B) with float A and B -> Add(B, Mul(Cast(c, float), Sub(A, B)))."""
    from onnx import TensorProto, helper

    types = _elem_types(model)
    count = 0
    for n in [n for n in model.graph.node if n.op_type == "Where"]:
        if types.get(n.input[1]) != TensorProto.FLOAT or types.get(n.input[2]) != TensorProto.FLOAT:
            continue
        p, (c, a, b) = n.name or f"Where_{count}", n.input
        _replace(model, n, [helper.make_node("Cast", [c], [f"{p}/cond"], name=f"{p}/Cast", to=TensorProto.FLOAT),
                            helper.make_node("Sub", [a, b], [f"{p}/gap"], name=f"{p}/Sub"),
                            helper.make_node("Mul", [f"{p}/cond", f"{p}/gap"], [f"{p}/step"], name=f"{p}/Mul"),
                            helper.make_node("Add", [b, f"{p}/step"], [n.output[0]], name=f"{p}/Add")])
        count += 1
    return count


def expand(model) -> int:
    """Expand(x, shape) -> Mul(x, ConstantOfShape(shape, 1)): the same broadcast, of ops that fold when the
    input shapes are fixed."""
    from onnx import helper

    types = _elem_types(model)
    count = 0
    for n in [n for n in model.graph.node if n.op_type == "Expand"]:
        dtype = types.get(n.input[0])
        if not dtype:
            continue
        p = n.name or f"Expand_{count}"
        one = helper.make_tensor(f"{p}/one", dtype, [1], [1])
        _replace(model, n, [helper.make_node("ConstantOfShape", [n.input[1]], [f"{p}/ones"], name=f"{p}/Ones",
                                             value=one),
                            helper.make_node("Mul", [n.input[0], f"{p}/ones"], [n.output[0]], name=f"{p}/Mul")])
        count += 1
    return count


REWRITES = {"layernorm": layernorm, "gelu": gelu, "cls-slice": cls_slice, "where": where, "expand": expand}
