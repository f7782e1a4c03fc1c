"""Build a smaller student from a teacher: keep chosen layers, optionally narrow the widths.

The student is a fresh model of the teacher's own class, built from the teacher's config with
fewer layers (and, if asked, a smaller hidden size, FFN size or head count), so it saves and
reloads with `from_pretrained` at its real shapes. With `init="copy"` its weights come from the
teacher: student layer i takes teacher layer `layers[i]` (DistilBERT keeps every other layer),
and every tensor is cut to the student's shape by keeping its leading rows and columns
("weight selection", Xu et al. 2023). At the teacher's width the copy is exact.
"""

from __future__ import annotations

import copy
import re

from .errors import RecipeError, Unsupported

# Families whose weights can be cut to a narrower width by keeping leading rows / columns.
# Fused projections (GPT-2's c_attn holds q, k and v side by side) are cut per part.
NARROWABLE = {"bert", "roberta", "xlm-roberta", "electra", "distilbert", "gpt2", "llama", "mistral", "qwen2"}
FUSED_PARTS = {"c_attn": 3}
FFN_KEYS = ("intermediate_size", "n_inner", "hidden_dim")  # BERT/Llama, GPT-2, DistilBERT


def evenly_spaced(n_teacher: int, n_student: int) -> tuple[int, ...]:
    """Teacher layers for a student of `n_student` layers, DistilBERT-style: 6 -> 3 keeps 0, 2, 4."""
    stride = n_teacher // n_student
    return tuple(i * stride for i in range(n_student))


def resolve_layers(spec: int | tuple[int, ...] | None, n_teacher: int) -> tuple[int, ...]:
    """The teacher layer indices to keep: a count (evenly spaced), explicit indices, or None (half)."""
    if spec is None:
        spec = max(1, n_teacher // 2)
    if isinstance(spec, int):
        if not 1 <= spec <= n_teacher:
            raise RecipeError(f"student_layers={spec}, but the teacher has {n_teacher} layers",
                              f"keep between 1 and {n_teacher} layers")
        return evenly_spaced(n_teacher, spec)
    bad = [i for i in spec if not 0 <= i < n_teacher]
    if bad:
        raise RecipeError(f"teacher layer index {bad[0]} is out of range: the teacher has layers 0..{n_teacher - 1}",
                          f"use indices between 0 and {n_teacher - 1}")
    if not spec or list(spec) != sorted(set(spec)):
        raise RecipeError(f"student_layers {list(spec)} must be distinct and increasing", "e.g. 0,2,4")
    return tuple(spec)


def num_layers(config) -> int:
    return int(config.num_hidden_layers)


def ffn_size(config) -> int:
    for key in FFN_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    return 4 * int(config.hidden_size)  # GPT-2's n_inner=None means 4 x hidden


def head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def student_config(teacher_config, layers: tuple[int, ...], hidden: int | None = None, ffn: int | None = None,
                   heads: int | None = None):
    """The teacher's config with `len(layers)` layers and the given (narrower) widths."""
    cfg = copy.deepcopy(teacher_config)
    cfg.num_hidden_layers = len(layers)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [teacher_config.layer_types[i] for i in layers]
    if getattr(cfg, "pruned_heads", None):
        # Pruned heads are keyed by layer: a kept layer keeps its pruning under its new index.
        pruned = {int(k): v for k, v in teacher_config.pruned_heads.items()}
        cfg.pruned_heads = {i: pruned[j] for i, j in enumerate(layers) if j in pruned}
    if ffn is not None:
        key = next((k for k in FFN_KEYS if hasattr(cfg, k)), "intermediate_size")
        setattr(cfg, key, ffn)
    if hidden is not None or heads is not None:
        _set_width(cfg, teacher_config, hidden or teacher_config.hidden_size, heads)
    return cfg


def _set_width(cfg, teacher_config, hidden: int, heads: int | None) -> None:
    if heads is None:
        # Keep the teacher's head size: a narrower model has fewer heads of the same size.
        d = head_dim(teacher_config)
        if hidden % d:
            raise RecipeError(f"student hidden size {hidden} is not a multiple of the teacher's head size {d}",
                              "set student_num_heads, or pick a hidden size that is a multiple of it")
        heads = hidden // d
    if hidden % heads:
        raise RecipeError(f"student hidden size {hidden} is not divisible by {heads} heads", "change either")
    t_heads = teacher_config.num_attention_heads
    cfg.hidden_size, cfg.num_attention_heads = hidden, heads
    if getattr(cfg, "head_dim", None) is not None:
        cfg.head_dim = hidden // heads
    kv = getattr(teacher_config, "num_key_value_heads", None)
    if kv is not None:
        kv = max(1, heads * kv // t_heads)
        cfg.num_key_value_heads = kv if heads % kv == 0 else heads


def check_not_wider(teacher_config, cfg) -> None:
    """A layer copy cuts teacher tensors down; a student wider than its teacher cannot be cut from it."""
    pairs = [("hidden size", teacher_config.hidden_size, cfg.hidden_size),
             ("FFN size", ffn_size(teacher_config), ffn_size(cfg)),
             ("head count", teacher_config.num_attention_heads, cfg.num_attention_heads)]
    for what, t, s in pairs:
        if s > t:
            raise RecipeError(f"student {what} {s} is wider than the teacher's {t}, but a layer copy was asked",
                              f"use a {what} of at most {t}, or student_init=random")


def build_student(teacher, layers: tuple[int, ...], *, hidden: int | None = None, ffn: int | None = None,
                  heads: int | None = None, init: str = "copy"):
    """A new model of the teacher's class with the kept layers; weights copied (and cut) or random."""
    t_cfg = teacher.config
    cfg = student_config(t_cfg, layers, hidden, ffn, heads)
    if init == "copy":
        check_not_wider(t_cfg, cfg)
        narrower = (cfg.hidden_size, ffn_size(cfg)) != (t_cfg.hidden_size, ffn_size(t_cfg))
        if narrower and t_cfg.model_type not in NARROWABLE:
            raise Unsupported(f"narrowing a {t_cfg.model_type} by weight copy is not supported",
                              "keep the teacher's widths, or use student_init=random")
    student = type(teacher)(cfg)
    if init == "copy":
        copy_weights(teacher, student, layers)
    return student.eval()


def layer_prefix(model) -> str:
    """Dotted name of the model's list of transformer blocks (encoder.layer, transformer.h, model.layers)."""
    import torch

    n = num_layers(model.config)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name:
            return name
    raise Unsupported(f"cannot find the {n} transformer blocks of this {model.config.model_type} model",
                      "pass a ready student with --student instead")


def copy_weights(teacher, student, layers: tuple[int, ...]) -> None:
    """Student block i <- teacher block layers[i]; other tensors by name; all cut to the student's shapes."""
    import torch

    block = re.compile("^(" + re.escape(layer_prefix(student)) + r"\.)(\d+)\.")
    source = teacher.state_dict()
    target = student.state_dict()
    with torch.no_grad():
        for name, tensor in target.items():
            t_name = block.sub(lambda m: f"{m.group(1)}{layers[int(m.group(2))]}.", name, count=1)
            if t_name not in source:
                raise Unsupported(f"the student's tensor {name} has no counterpart {t_name} in the teacher",
                                  "use student_init=random or pass a ready student")
            tensor.copy_(cut(source[t_name], tuple(tensor.shape), name))


def cut(t, shape: tuple[int, ...], name: str):
    """The leading part of `t` with `shape`; fused q/k/v projections are cut per part."""
    if tuple(t.shape) == shape:
        return t
    if any(s > d for s, d in zip(shape, t.shape)) or len(shape) != t.ndim:
        raise RecipeError(f"student tensor {name} {list(shape)} is wider than the teacher's {list(t.shape)}",
                          "a layer copy needs a student no wider than its teacher; use student_init=random")
    parts = next((n for key, n in FUSED_PARTS.items() if f".{key}." in f".{name}"), 1)
    if parts > 1:
        import torch

        # The fused axis is the last one (GPT-2 Conv1D weights are [in, out]).
        pieces = t.chunk(parts, dim=-1)
        sub = shape[:-1] + (shape[-1] // parts,)
        return torch.cat([_leading(p, sub) for p in pieces], dim=-1)
    return _leading(t, shape)


def _leading(t, shape: tuple[int, ...]):
    return t[tuple(slice(0, s) for s in shape)]
