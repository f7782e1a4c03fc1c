"""Fuse an ONNX graph with ONNX Runtime's transformer optimizer, optionally to float16, checked against its parent.

Fusions (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization, ...) are what make
ONNX Runtime fast on transformers; which ones matched is counted and recorded, because a fusion that
silently did not match is the usual reason a model is slower than expected.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import parity
from .artifact import Artifact, check_output, write_artifact
from .config import config_to_dict, opt
from .console import library_logs
from .errors import BadModel, CheckFailed, Unsupported
from .guard import writes_output
from .targets import HOST, TARGETS, check_target, target as get_target

# Hugging Face model_type -> the optimizer's model type. Decoders with rotary embeddings and RMSNorm
# (Llama, Mistral, Qwen) use the GPT-2 fusions: they match RMSNorm, SkipRMSNorm and RotaryEmbedding.
OPTIMIZER_TYPE = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet", "albert"), "bert"),
    **dict.fromkeys(("gpt2", "gpt_neo", "gptj", "codegen"), "gpt2"),
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "smollm"), "gpt2"),
    "gpt_neox": "gpt_neox", "bart": "bart", "t5": "t5", "vit": "vit", "swin": "swin",
}
# Fused ops worth reporting; the optimizer's own statistics miss the decoder-side ones.
FUSED_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "EmbedLayerNormalization",
             "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
             "SimplifiedLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "GemmFastGelu", "RotaryEmbedding",
             "BiasAdd", "BiasSplitGelu")
# fp32 fusions reorder float math: outputs move by ~1e-6..1e-4 (tanh-approximated Gelu fusions a little more).
DEFAULT_ATOL = 1e-3
# float16 keeps ~3 significant digits, so it is held to a relative L2 error per output.
FP16_RTOL = 2e-2
# GELU's tanh form (standard-op targets without Erf) moves each GELU output by up to ~5e-4; through a few
# layers that reaches logits as ~1e-3..1e-2, so those graphs are held to a relative L2 error instead.
GELU_TANH_RTOL = 2e-2


@dataclass(frozen=True)
class OptimizeConfig:
    model_type: str | None = opt(None, "Optimizer model type (bert, gpt2, ...); when unset, from the manifest.")
    # Pruned heads (config.pruned_heads) are detected per layer.
    num_heads: int | None = opt(None, "Attention heads; when unset, config.json's (0: detect from the graph).")
    hidden_size: int | None = opt(None, "Hidden size; when unset, config.json's (0: detect from the graph).")
    opt_level: int | None = opt(None, "ONNX Runtime graph optimizations first; when unset, the model type's "
                                      "default (0-2).", choices=(0, 1, 2, 99))
    # Static QDQ cannot quantize the fused Attention op.
    disable_attention: bool = opt(False, "Keep attention unfused (for static int8 QDQ afterwards).")
    fp16: bool = opt(False, "Convert weights and math to float16 for GPU targets (CPU kernels are mostly fp32).")
    keep_io_types: bool = opt(True, "With --fp16: inputs and outputs stay float32, so callers feed and read fp32.",
                              off="fp16-io")
    use_gpu: bool = opt(False, "Allow GPU-only fusions (implied by --fp16).")
    # On CPU (ORT 1.32) SkipLayerNormalization is 5-8x slower than the two ops it replaces
    # (runtime.CPU_DISABLED_OPTIMIZERS).
    skip_layer_norm: bool | None = opt(None, "Fuse Add + LayerNorm into SkipLayerNormalization; when unset, for GPU "
                                             "targets only.")
    embed_layer_norm: bool = opt(True, "Fuse the embedding Gather + Add + LayerNorm; --no-embed-layer-norm keeps a "
                                       "Gather that quantize --embedding-bits 4 can store as 4-bit blocks.")
    atol: float | None = opt(None, "Parity tolerance vs the parent; when unset, the default max abs diff (relative "
                                   "with --fp16).")
    # NNAPI / CoreML targets get standard ONNX ops only.
    target: str = opt(HOST, choices=tuple(TARGETS))

    def __post_init__(self):
        check_target(self.target)
        if get_target(self.target).fusions == "standard" and (self.fp16 or self.use_gpu or self.skip_layer_norm):
            raise ValueError(f"target {self.target} keeps standard ONNX ops: fp16, use_gpu and skip_layer_norm "
                             "apply to ORT's fusions")
        if self.num_heads is not None and self.num_heads < 0 or self.hidden_size is not None and self.hidden_size < 0:
            raise ValueError("num_heads and hidden_size must be >= 0 (0 = detect from the graph)")
        if self.opt_level is not None and self.opt_level not in (0, 1, 2, 99):
            raise ValueError(f"opt_level {self.opt_level} is not one of 0, 1, 2, 99")
        if self.atol is not None and not self.atol > 0:
            raise ValueError("atol must be positive")
        if not self.keep_io_types and not self.fp16:
            raise ValueError("keep_io_types=False applies to fp16 only")


@writes_output()
def optimize(src: str | Path | Artifact, cfg: OptimizeConfig, out: str | Path, *, force: bool = False) -> Artifact:
    """Fuse the ONNX artifact `src` into `out`, count the fusions, and check it against `src` on real text.

    >>> optimize("runs/minilm-onnx", OptimizeConfig(), "runs/minilm-opt")  # doctest: +SKIP
    """
    t0 = time.time()  # the lineage times the whole stage (`toolchain info`), not only the write
    check_output(Path(out), force)  # fail now, not after fusing
    parent = onnx_parent(src, "optimize")
    if get_target(cfg.target).fusions == "standard":
        return _standard(parent, cfg, Path(out), force, t0)
    model_config = _model_config(parent)
    opt_type = optimizer_type(parent.manifest.model_type, cfg.model_type)
    heads, hidden = attention_shape(model_config, cfg)
    with write_artifact(out, stage="optimize", config=config_to_dict(cfg), format="onnx", task=parent.task,
                        model_type=parent.manifest.model_type, parent=parent, force=force, started=t0) as o:
        started = time.perf_counter()
        model = _fuse(parent.onnx_path, opt_type, heads, hidden, cfg)
        before, after = op_counts(parent.onnx_path), Counter(n.op_type for n in model.model.graph.node)
        model.save_model_to_file(str(o.folder / "model.onnx"))
        copy_sidecar_files(parent.path, o.folder)
        m = o.record.metrics
        m["target"] = get_target(cfg.target).choices()
        m.update(optimizer_model_type=opt_type, num_heads=heads, hidden_size=hidden,
                 optimize_seconds=round(time.perf_counter() - started, 3),
                 fusions={op: after[op] for op in FUSED_OPS if after[op] > before[op]},
                 nodes_before=sum(before.values()), nodes_after=sum(after.values()),
                 size_bytes_before=parent.onnx_path.stat().st_size,
                 size_bytes_after=(o.folder / "model.onnx").stat().st_size)
        m["warnings"] = _fusion_warnings(m["fusions"], opt_type, cfg)
        m["parity"] = _check(parent, o.folder / "model.onnx", cfg)
    return Artifact.load(out)


def _standard(parent: Artifact, cfg: OptimizeConfig, out: Path, force: bool, t0: float) -> Artifact:
    """Standard ONNX ops only (NNAPI, CoreML): the target's rewrites instead of ORT's contrib-op fusions."""
    import onnx

    from . import standard_ops

    tgt = get_target(cfg.target)
    with write_artifact(out, stage="optimize", config=config_to_dict(cfg), format="onnx", task=parent.task,
                        model_type=parent.manifest.model_type, parent=parent, force=force, started=t0) as o:
        started = time.perf_counter()
        model = onnx.load(str(parent.onnx_path))
        rewritten = standard_ops.apply(model, tgt.rewrites)
        onnx.checker.check_model(model)
        onnx.save(model, str(o.folder / "model.onnx"))
        copy_sidecar_files(parent.path, o.folder)
        before, after = op_counts(parent.onnx_path), op_counts(o.folder / "model.onnx")
        m = o.record.metrics
        m.update(target=tgt.choices(), rewrites=rewritten, optimize_seconds=round(time.perf_counter() - started, 3),
                 fusions={}, nodes_before=sum(before.values()), nodes_after=sum(after.values()),
                 contrib_ops=sorted(n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")),
                 size_bytes_before=parent.onnx_path.stat().st_size,
                 size_bytes_after=(o.folder / "model.onnx").stat().st_size, warnings=[])
        relative = bool(rewritten.get("gelu"))
        m["parity"] = _check(parent, o.folder / "model.onnx", cfg, relative)
        from .package import target_readiness

        m["readiness"] = target_readiness(o.folder / "model.onnx", tgt)
    return Artifact.load(out)


def onnx_parent(src: str | Path | Artifact, stage: str) -> Artifact:
    """The ONNX artifact a graph stage reads, its hashes checked; a torch artifact or a bare file is a clear error."""
    parent = Artifact.load(src.path if isinstance(src, Artifact) else src, verify=True)
    if parent.format != "onnx":
        raise Unsupported(f"{parent.path} is a {parent.format} artifact; {stage} needs an ONNX one",
                          f"export it first: toolchain export {parent.path} OUT")
    if not parent.onnx_path.is_file():
        raise BadModel(f"{parent.path} has no model.onnx", "re-export the model")
    from .runtime import check_onnx_file

    check_onnx_file(parent.onnx_path)  # a parseable graph, external data inside its folder only
    return parent


def optimizer_type(model_type: str, override: str | None = None) -> str:
    """The transformer optimizer's model type: `override` if given, else mapped from a Hugging Face model_type."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    if override is not None and override not in MODEL_TYPES:
        raise Unsupported(f"no transformer-optimizer model type {override!r}",
                          f"pass --model-type as one of: {', '.join(sorted(MODEL_TYPES))}")
    if override is not None or model_type in OPTIMIZER_TYPE:
        return override or OPTIMIZER_TYPE[model_type]
    raise Unsupported(f"no transformer-optimizer mapping for model type {model_type!r}",
                      f"pass --model-type (one of: {', '.join(sorted(set(OPTIMIZER_TYPE.values())))})")


def attention_shape(config: dict, cfg: OptimizeConfig) -> tuple[int, int]:
    """(num_heads, hidden_size) from config.json; 0 lets the optimizer read them per layer from the graph,
    which pruned models need: their layers keep different numbers of heads."""
    if config.get("pruned_heads") and any(config["pruned_heads"].values()):
        return cfg.num_heads or 0, cfg.hidden_size or 0
    kept = (config.get("toolchain_shapes") or {}).get("num_heads")  # toolchain prune's per-layer head counts
    if kept and any(h != config.get("num_attention_heads", config.get("n_head")) for h in kept):
        return cfg.num_heads or 0, cfg.hidden_size or 0
    heads = config.get("num_attention_heads", config.get("n_head", 0))
    hidden = config.get("hidden_size", config.get("n_embd", config.get("dim", 0)))
    return (cfg.num_heads if cfg.num_heads is not None else heads,
            cfg.hidden_size if cfg.hidden_size is not None else hidden)


def _model_config(parent: Artifact) -> dict:
    path = parent.path / "config.json"
    if not path.is_file():
        raise BadModel(f"{parent.path} has no config.json", "re-export the model with the toolchain")
    return json.loads(path.read_text())


def _fuse(path: Path, opt_type: str, heads: int, hidden: int, cfg: OptimizeConfig):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(opt_type)
    if cfg.disable_attention:
        options.enable_attention = False
    gpu = cfg.use_gpu or cfg.fp16
    options.enable_skip_layer_norm = gpu if cfg.skip_layer_norm is None else cfg.skip_layer_norm
    options.enable_embed_layer_norm = cfg.embed_layer_norm
    # "Input hidden size (192) is not same as weight matrix dimension of q,k,v (384)" is logged for every
    # attention the optimizer inspects, even when the fusion then succeeds: library_logs keeps it off the terminal.
    with warnings.catch_warnings(), library_logs():
        warnings.simplefilter("ignore")
        try:
            model = optimize_model(str(path), model_type=opt_type, num_heads=heads, hidden_size=hidden,
                                   optimization_options=options, opt_level=cfg.opt_level,
                                   use_gpu=cfg.use_gpu or cfg.fp16)
        except Exception as exc:  # the optimizer raises bare Exceptions and AssertionErrors from deep inside
            raise BadModel(f"the transformer optimizer failed on {path}: {str(exc).splitlines()[0][:200]}",
                           "try --opt-level 0 or another --model-type") from None
        if cfg.fp16:
            model.convert_float_to_float16(keep_io_types=cfg.keep_io_types)
    return model


def _fusion_warnings(fusions: dict, opt_type: str, cfg: OptimizeConfig) -> list[str]:
    """Say when the fusion that matters most did not match: the graph then runs mostly unfused."""
    out = []
    attention = {"Attention", "MultiHeadAttention", "GroupQueryAttention"} & set(fusions)
    if opt_type == "bert" and not attention and not cfg.disable_attention:
        out.append("no attention fusion matched: the graph keeps separate MatMul/Softmax ops "
                   "(check --num-heads/--hidden-size, or the export's attention implementation)")
    if not fusions:
        out.append(f"no fusion matched for model type {opt_type!r}: the optimized graph is equivalent to its parent")
    for w in out:
        warnings.warn(w)
    return out


def _check(parent: Artifact, path: Path, cfg: OptimizeConfig, approximated: bool = False) -> dict:
    """Parity vs the parent on real text; float16 and approximated GELU are held to a relative tolerance."""
    from .runtime import make_session

    tokenizer = parent_tokenizer(parent)
    ref = make_session(parent.onnx_path)
    provider = "cuda" if cfg.fp16 and "CUDAExecutionProvider" in _providers() else "cpu"
    cand = make_session(path, provider)
    relative = cfg.fp16 or approximated
    tol = cfg.atol or (FP16_RTOL if cfg.fp16 else GELU_TANH_RTOL if approximated else DEFAULT_ATOL)
    result = parity.compare_onnx(ref, cand, tokenizer, parent.task, tol, relative=relative)
    metrics = result.as_metrics() | {"provider": provider}
    if not result.ok:
        raise CheckFailed(
            f"optimized graph differs from its parent by {result.max_abs_diff:.3g} on {result.worst_output!r} "
            f"({'relative ' if result.relative else ''}tolerance {tol:g})",
            "try --opt-level 0, --disable-attention, or raise --atol if this difference is acceptable",
        )
    return metrics


def parent_tokenizer(parent: Artifact):
    """The tokenizer saved in an ONNX artifact."""
    from .modeling import ModelSource, load_tokenizer

    return load_tokenizer(ModelSource(str(parent.path), str(parent.path), local=True, artifact=parent))


def _providers() -> list[str]:
    from .runtime import available_providers

    return available_providers()


def op_counts(path: Path) -> Counter:
    """How many nodes of each op type the graph at `path` holds (weights are not loaded)."""
    from .runtime import check_onnx_file

    return Counter(n.op_type for n in check_onnx_file(path).graph.node)


def copy_sidecar_files(parent: Path, folder: Path) -> None:
    """Tokenizer and config files travel with every ONNX artifact; the model file is the stage's own."""
    for f in parent.iterdir():
        if f.is_file() and f.name not in ("model.onnx", "manifest.json") and not f.name.endswith(".onnx.data"):
            shutil.copy2(f, folder / f.name)
