"""Where each supported architecture keeps its heads, FFN neurons and layers, and how to cut them.

A *cut* keeps some output units of a projection (rows of a Linear, columns of GPT-2's Conv1D) and
the matching input units of the projection that reads them. The same cuts serve the pruner (keep
the important units) and the loader (`apply_shapes`: shrink a freshly built model to the sizes a
pruned config records, before its weights are loaded), so both always agree on the layout.

The per-layer sizes live in config.json under SHAPES_FIELD; the config's global sizes
(num_attention_heads, intermediate_size) stay those of the unpruned model because head_dim and
rotary sizes are derived from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BadModel, Unsupported

SHAPES_FIELD = "toolchain_shapes"
SHAPES_VERSION = 1


@dataclass
class Plan:
    """What a pruned model keeps, in the original model's numbering."""

    heads: list[list[int]]  # kept query-head indices per layer (GQA: whole key/value groups)
    neurons: list[list[int]]  # kept FFN intermediate neurons per layer
    layers: list[int]  # kept layer indices


# --- one projection: which weight axis holds its inputs and outputs ---------------------------

def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D"  # GPT-2 stores weights (in, out), Linear (out, in)


def keep_outputs(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep output units `idx` of a Linear / Conv1D in place (weight, bias and size attributes)."""
    axis = 1 if _is_conv1d(m) else 0
    m.weight = nn.Parameter(m.weight.detach().index_select(axis, idx).clone(), m.weight.requires_grad)
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias.detach().index_select(0, idx).clone(), m.bias.requires_grad)
    if _is_conv1d(m):
        m.nf = len(idx)
    else:
        m.out_features = len(idx)


def keep_inputs(m: nn.Module, idx: torch.Tensor) -> None:
    """Keep input units `idx` of a Linear / Conv1D in place; the bias is untouched."""
    axis = 0 if _is_conv1d(m) else 1
    m.weight = nn.Parameter(m.weight.detach().index_select(axis, idx).clone(), m.weight.requires_grad)
    if _is_conv1d(m):
        m.nx = len(idx)
    else:
        m.in_features = len(idx)


def weight_in_out(m: nn.Module) -> torch.Tensor:
    """The weight as (inputs, outputs), whichever layout the module uses."""
    return m.weight if _is_conv1d(m) else m.weight.t()


def grad_in_out(m: nn.Module) -> torch.Tensor | None:
    g = m.weight.grad
    return None if g is None else (g if _is_conv1d(m) else g.t())


def unit_index(units: list[int], width: int) -> torch.Tensor:
    """Rows of units (heads of `width` rows each) as one index tensor."""
    if not units:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(u * width, (u + 1) * width) for u in units])


# --- the architectures ------------------------------------------------------------------------

class Family:
    """Accessors for one architecture's layers; the generic cutting below uses only these."""

    name = ""

    def layers(self, model) -> nn.ModuleList: ...
    def set_layers(self, model, layers: nn.ModuleList) -> None: ...
    def head_dim(self, layer) -> int: ...
    def num_heads(self, layer) -> int: ...
    def kv_heads(self, layer) -> int: return self.num_heads(layer)  # noqa: E704
    def head_outputs(self, layer, kept_q: list[int]) -> list[tuple[nn.Module, torch.Tensor]]: ...
    def head_reader(self, layer) -> nn.Module: ...  # reads all heads' outputs (input dim = heads * head_dim)
    def set_heads(self, layer, n_q: int, n_kv: int) -> None: ...
    def ffn_writers(self, layer) -> list[nn.Module]: ...  # produce the intermediate neurons
    def ffn_reader(self, layer) -> nn.Module: ...
    def set_ffn(self, layer, n: int) -> None: pass  # noqa: E704
    def embeddings(self, model) -> list[nn.Module]: ...
    def classifier(self, model) -> list[nn.Module]: ...

    def group(self, layer) -> int:
        """Query heads per key/value head: the unit a head cut must keep whole."""
        return self.num_heads(layer) // self.kv_heads(layer)

    def ffn_size(self, layer) -> int:
        return weight_in_out(self.ffn_writers(layer)[0]).shape[1]


class BertFamily(Family):
    name = "bert"

    def layers(self, model):
        return model.base_model.encoder.layer

    def set_layers(self, model, layers):
        model.base_model.encoder.layer = layers


    def head_dim(self, layer):
        return layer.attention.self.attention_head_size

    def num_heads(self, layer):
        return layer.attention.self.num_attention_heads

    def head_outputs(self, layer, kept_q):
        idx = unit_index(kept_q, self.head_dim(layer))
        a = layer.attention.self
        return [(a.query, idx), (a.key, idx), (a.value, idx)]

    def head_reader(self, layer):
        return layer.attention.output.dense

    def set_heads(self, layer, n_q, n_kv):
        a = layer.attention.self
        a.num_attention_heads = n_q
        a.all_head_size = n_q * a.attention_head_size

    def ffn_writers(self, layer):
        return [layer.intermediate.dense]

    def ffn_reader(self, layer):
        return layer.output.dense

    def embeddings(self, model):
        return [m for m in model.base_model.embeddings.modules() if isinstance(m, nn.Embedding)]

    def classifier(self, model):
        inside = {id(m) for m in self.layers(model).modules()}  # the pooler and the classification head
        return [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in inside]


class DistilBertFamily(Family):
    name = "distilbert"

    def layers(self, model):
        return model.base_model.transformer.layer

    def set_layers(self, model, layers):
        model.base_model.transformer.layer = layers
        model.base_model.transformer.n_layers = len(layers)

    def head_dim(self, layer):
        return layer.attention.attention_head_size

    def num_heads(self, layer):
        return layer.attention.n_heads

    def head_outputs(self, layer, kept_q):
        idx = unit_index(kept_q, self.head_dim(layer))
        a = layer.attention
        return [(a.q_lin, idx), (a.k_lin, idx), (a.v_lin, idx)]

    def head_reader(self, layer):
        return layer.attention.out_lin

    def set_heads(self, layer, n_q, n_kv):
        # DistilBERT splits heads as dim // n_heads, so dim must shrink with them (as its own prune_heads does).
        a = layer.attention
        a.n_heads = n_q
        a.dim = n_q * a.attention_head_size

    def ffn_writers(self, layer):
        return [layer.ffn.lin1]

    def ffn_reader(self, layer):
        return layer.ffn.lin2

    def embeddings(self, model):
        return [m for m in model.base_model.embeddings.modules() if isinstance(m, nn.Embedding)]

    def classifier(self, model):
        inside = {id(m) for m in self.layers(model).modules()}  # pre_classifier and classifier
        return [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in inside]


class GPT2Family(Family):
    name = "gpt2"

    def layers(self, model):
        return model.transformer.h if hasattr(model, "transformer") else model.h

    def set_layers(self, model, layers):
        (model.transformer if hasattr(model, "transformer") else model).h = layers


    def head_dim(self, layer):
        return layer.attn.head_dim

    def num_heads(self, layer):
        return layer.attn.num_heads

    def head_outputs(self, layer, kept_q):
        # c_attn packs [query | key | value], each split_size wide.
        idx = unit_index(kept_q, self.head_dim(layer))
        s = layer.attn.split_size
        return [(layer.attn.c_attn, torch.cat([idx, idx + s, idx + 2 * s]))]

    def head_reader(self, layer):
        return layer.attn.c_proj

    def set_heads(self, layer, n_q, n_kv):
        layer.attn.num_heads = n_q
        layer.attn.split_size = n_q * layer.attn.head_dim

    def ffn_writers(self, layer):
        return [layer.mlp.c_fc]

    def ffn_reader(self, layer):
        return layer.mlp.c_proj

    def embeddings(self, model):
        base = model.transformer if hasattr(model, "transformer") else model
        return [base.wte, base.wpe]

    def classifier(self, model):
        out = model.get_output_embeddings()
        return [out] if out is not None else []


class LlamaFamily(Family):
    name = "llama"

    def layers(self, model):
        return model.base_model.layers

    def set_layers(self, model, layers):
        model.base_model.layers = layers


    def head_dim(self, layer):
        return layer.self_attn.head_dim

    def num_heads(self, layer):
        return layer.self_attn.q_proj.out_features // self.head_dim(layer)

    def kv_heads(self, layer):
        return layer.self_attn.k_proj.out_features // self.head_dim(layer)

    def head_outputs(self, layer, kept_q):
        # Grouped-query attention: query heads g*rep .. g*rep+rep-1 read key/value head g.
        a, hd, rep = layer.self_attn, self.head_dim(layer), self.group(layer)
        groups = sorted({h // rep for h in kept_q})
        return [(a.q_proj, unit_index(kept_q, hd)), (a.k_proj, unit_index(groups, hd)),
                (a.v_proj, unit_index(groups, hd))]

    def head_reader(self, layer):
        return layer.self_attn.o_proj

    def set_heads(self, layer, n_q, n_kv):
        pass  # Llama derives every shape from its projections; num_key_value_groups is unchanged

    def ffn_writers(self, layer):
        return [layer.mlp.gate_proj, layer.mlp.up_proj]

    def ffn_reader(self, layer):
        return layer.mlp.down_proj

    def set_ffn(self, layer, n):
        layer.mlp.intermediate_size = n

    def embeddings(self, model):
        return [model.get_input_embeddings()]

    def classifier(self, model):
        out = model.get_output_embeddings()
        return [out] if out is not None else []


FAMILIES = {"bert": BertFamily(), "roberta": BertFamily(), "xlm-roberta": BertFamily(), "gpt2": GPT2Family(),
            "llama": LlamaFamily(), "distilbert": DistilBertFamily()}


def family_of(model_or_config) -> Family:
    """The architecture adapter for a model or config, or an Unsupported error listing what is."""
    config = getattr(model_or_config, "config", model_or_config)
    fam = FAMILIES.get(config.model_type)
    if fam is None:
        raise Unsupported(f"pruning does not know the {config.model_type!r} architecture",
                          f"use a model of type {', '.join(sorted(FAMILIES))}")
    if getattr(config, "add_cross_attention", False):
        raise Unsupported("pruning does not handle cross-attention layers", "prune an encoder-only or decoder-only model")
    return fam


# --- cutting -----------------------------------------------------------------------------------

def shrink_heads(fam: Family, layer, kept_q: list[int]) -> None:
    """Keep query heads `kept_q` (and their key/value heads) of one layer, physically."""
    n_kv = len(kept_q) // fam.group(layer)
    for module, idx in fam.head_outputs(layer, kept_q):
        keep_outputs(module, idx)
    keep_inputs(fam.head_reader(layer), unit_index(kept_q, fam.head_dim(layer)))
    fam.set_heads(layer, len(kept_q), n_kv)


def shrink_ffn(fam: Family, layer, kept: list[int]) -> None:
    """Keep FFN intermediate neurons `kept` of one layer, physically."""
    idx = torch.tensor(kept, dtype=torch.long)
    for module in fam.ffn_writers(layer):
        keep_outputs(module, idx)
    keep_inputs(fam.ffn_reader(layer), idx)
    fam.set_ffn(layer, len(kept))


def keep_layers(fam: Family, model, kept: list[int]) -> None:
    """Keep only layers `kept` (renumbered 0..n-1, as a model built from the config numbers them)."""
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise Unsupported("this GPT-2 scales attention by its layer index, so removing a layer changes the others",
                          "prune heads and FFN neurons only")
    old = fam.layers(model)
    fam.set_layers(model, nn.ModuleList([old[i] for i in kept]))
    for new_idx, layer in enumerate(fam.layers(model)):
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    model.config.num_hidden_layers = len(kept)


def apply_plan(model, plan: Plan) -> None:
    """Physically prune `model` to `plan`, in place."""
    fam = family_of(model)
    layers = fam.layers(model)
    for i in plan.layers:
        if len(plan.heads[i]) < fam.num_heads(layers[i]):
            shrink_heads(fam, layers[i], plan.heads[i])
        if len(plan.neurons[i]) < fam.ffn_size(layers[i]):
            shrink_ffn(fam, layers[i], plan.neurons[i])
    if len(plan.layers) < len(layers):
        keep_layers(fam, model, plan.layers)
    write_shapes(model, source_layers=_source_layers(model, plan.layers))


def mask_plan(model, plan: Plan) -> list:
    """Make `model` compute what `plan` keeps without changing any shape (the reference for tests).

    A head or neuron is silenced by zeroing the input columns of the projection that reads it,
    which removes exactly its contribution; a dropped layer is replaced by the identity through a
    forward hook. Returns the hook handles.
    """
    fam = family_of(model)
    handles = []
    with torch.no_grad():
        for i, layer in enumerate(fam.layers(model)):
            hd = fam.head_dim(layer)
            gone = sorted(set(range(fam.num_heads(layer))) - set(plan.heads[i]))
            weight_in_out(fam.head_reader(layer))[unit_index(gone, hd)] = 0
            gone = sorted(set(range(fam.ffn_size(layer))) - set(plan.neurons[i]))
            weight_in_out(fam.ffn_reader(layer))[torch.tensor(gone, dtype=torch.long)] = 0
            if i not in plan.layers:
                handles.append(layer.register_forward_hook(_identity, with_kwargs=True))
    return handles


def _identity(module, args, kwargs, output):
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


def _source_layers(model, kept: list[int]) -> list[int]:
    before = (getattr(model.config, SHAPES_FIELD, None) or {}).get("source_layers")
    return [before[i] for i in kept] if before else list(kept)


# --- the shapes in config.json -------------------------------------------------------------------

def current_shapes(model) -> dict:
    """Per-layer head counts and FFN widths as the model's modules have them now."""
    fam = family_of(model)
    layers = fam.layers(model)
    return {
        "num_heads": [fam.num_heads(la) for la in layers],
        "num_key_value_heads": [fam.kv_heads(la) for la in layers],
        "intermediate_size": [fam.ffn_size(la) for la in layers],
    }


def write_shapes(model, source_layers: list[int]) -> None:
    """Record the real per-layer sizes in the config, so `load_model` can rebuild these shapes."""
    shapes = current_shapes(model) | {"source_layers": source_layers, "version": SHAPES_VERSION}
    setattr(model.config, SHAPES_FIELD, shapes)
    uniform = len(set(zip(shapes["num_heads"], shapes["num_key_value_heads"]))) == 1
    if family_of(model).name == "llama" and uniform:
        # Llama's config states head_dim outright, so its global head counts can be the real ones; then
        # exporters that size the KV cache from the config (optimum's with-past export) see true shapes.
        model.config.num_attention_heads = shapes["num_heads"][0]
        model.config.num_key_value_heads = shapes["num_key_value_heads"][0]
    if getattr(model.config, "pruned_heads", None):
        model.config.pruned_heads = {}  # folded into SHAPES_FIELD; keeping both would prune twice on load


def with_past_problem(config) -> str | None:
    """Why a KV-cache export of this pruned config would fail, or None: exporters size the cache
    from the config's single head count, which per-layer pruned heads no longer match."""
    shapes = getattr(config, SHAPES_FIELD, None)
    if not shapes:
        return None
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    if set(shapes["num_heads"]) == {config.num_attention_heads} and set(shapes["num_key_value_heads"]) == {kv}:
        return None
    return (f"its attention heads were pruned (per layer: {shapes['num_heads']}) and the KV-cache export sizes the "
            f"cache from the config's single head count ({config.num_attention_heads})")


def apply_shapes(model, shapes: dict) -> None:
    """Shrink a model freshly built from its config to the recorded per-layer sizes (weights follow)."""
    fam = family_of(model)
    layers = fam.layers(model)
    n = len(layers)
    if shapes.get("version") != SHAPES_VERSION or any(
        len(shapes.get(k) or []) != n for k in ("num_heads", "num_key_value_heads", "intermediate_size")
    ):
        raise BadModel(f"config.json's {SHAPES_FIELD} does not describe the model's {n} layers",
                       "re-run toolchain prune to rewrite the model folder")
    for layer, n_q, n_kv, ffn in zip(layers, shapes["num_heads"], shapes["num_key_value_heads"],
                                     shapes["intermediate_size"]):
        if n_q > fam.num_heads(layer) or ffn > fam.ffn_size(layer) or n_q != n_kv * fam.group(layer):
            raise BadModel(f"config.json's {SHAPES_FIELD} ({n_q} heads, {n_kv} key/value heads, FFN {ffn}) "
                           "does not fit the architecture", "re-run toolchain prune to rewrite the model folder")
        if n_q != fam.num_heads(layer):
            shrink_heads(fam, layer, list(range(n_q)))
        if ffn != fam.ffn_size(layer):
            shrink_ffn(fam, layer, list(range(ffn)))
