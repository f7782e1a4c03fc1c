"""The quantize stage: settings from a hardware preset, ONNX Runtime's quantizers, the accuracy loop."""

from __future__ import annotations

import fnmatch

import shutil
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .. import parity
from ..artifact import Artifact, check_output, write_artifact
from ..config import config_to_dict, opt, resolve_max_length
from ..errors import CheckFailed, Unsupported
from ..guard import writes_output
from ..optimize import copy_sidecar_files, onnx_parent, parent_tokenizer
from ..targets import HOST, TARGETS, check_target, target as get_target
from . import calibration, graph, loop, weight_only
from .presets import PRESETS, detect_preset

QType = Literal["quint8", "qint8"]
# Op types quantized by default: the ones that hold the weights. Gather and EmbedLayerNormalization
# hold the embedding table (half of a small BERT); Attention holds the fused graph's Q/K/V projections.
DEFAULT_OPS = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")
# Ops that ONNX Runtime's QDQ format runs badly or not at all. In static mode they get its integer-op
# kernels (QAttention, QEmbedLayerNormalization, DynamicQuantizeMatMul: int8 weights, activation scales
# per run) rather than staying float32: keeping a fused graph's attention is what makes int8 fast at batch 1.
INTEGER_ONLY_OPS = ("Attention", "EmbedLayerNormalization", "Gemm")
# Gemm is among them because ONNX Runtime's CPU QDQ path runs a Gemm whose output is not quantized as
# dequantize-the-weights-then-float-Gemm on every call (measured on the MiniLM classifier's pooler and
# head: 0.5 ms of DequantizeLinear per sentence, ~8% of the int8 model's time); its integer kernel is int8.
FLOAT_DEFAULT = {"DefaultTensorType": 1}  # onnx.TensorProto.FLOAT: fused contrib ops carry no type information
# A relative L2 output error beyond this means the int8 model computes something else, whatever the
# accuracy says. Measured: MiniLM classifier logits 0.02-0.03; SmolLM2 dynamic int8 0.67 on its KV cache
# (top-1 next-token agreement 52%, perplexity +73%), which fails.
DEFAULT_RTOL = 0.5


@dataclass(frozen=True)
class QuantizeConfig:
    mode: Literal["dynamic", "static", "weight-only"] = opt(
        "dynamic", "dynamic: int8 activation scales per run; static: calibrated on task data; weight-only: 4/8-bit "
                   "weight blocks (MatMulNBits).")
    preset: str | None = opt(None, "Hardware preset; when unset, the --target's (host detects it from this CPU). "
                                   "The options below override it.", choices=tuple(PRESETS))
    # Where the model will run (toolchain/targets.py): its preset, per-channel choice and QDQ form.
    target: str = opt(HOST, choices=tuple(TARGETS))
    activation_type: QType | None = opt(None, "Static: activation type; when unset, the preset's.")
    weight_type: QType | None = opt(None, "Weight type; when unset, the preset's.")
    reduce_range: bool | None = opt(None, "7-bit weights (CPUs without VNNI); when unset, the preset's.",
                                    off="full-range")
    # Per-channel weight scales: measured MiniLM embedding cosine vs fp32 0.9925, per-tensor 0.966. None: the
    # target's (per-channel, except NNAPI, whose MatMul has one scale per tensor).
    per_channel: bool | None = opt(None, "Weight scales per output channel; when unset, the target's (per-channel "
                                         "except NNAPI).", off="per-tensor")
    # Asymmetric fits GELU/softmax outputs better.
    symmetric_activations: bool = opt(False, "Static: zero point 0 for activations.")
    op_types: tuple[str, ...] | None = opt(None, "Op types to quantize; when unset, those of the mode the model has.")
    exclude_nodes: tuple[str, ...] = opt((), "Keep this node in float32 (repeatable; glob patterns such as "
                                             "'*/down_proj/*' match many).", flag="exclude_node", multiple=True)
    # Q.K^T and probs x V stay float32: quantizing softmax outputs per tensor costs accuracy, saves little.
    quantize_activation_matmuls: bool = opt(False, "Also quantize activation x activation MatMuls (attention scores).")
    # Static: complete DQ -> MatMul -> Q units, which a mobile EP runs in int8. The CPU EP does better without
    # (MatMulIntegerToFloat, see _build_static).
    quantize_matmul_outputs: bool | None = opt(None, "Static: quantize weight MatMuls' outputs too (complete "
                                                     "DQ -> MatMul -> Q units, as mobile EPs need); when unset, the "
                                                     "target's.", off="float-matmul-outputs")
    mask_guard: bool = opt(True, "Keep attention-mask paths (float-min values) out of calibration and quantization.")
    calibration_method: Literal["minmax", "entropy", "percentile"] = opt("minmax", "Static: how activation ranges "
                                                                                  "are set.")
    calibration_samples: int = opt(128, "Static: single sentences of the task data's train split to calibrate on.")
    percentile: float = opt(99.999, "Percentile calibration: the share of values the range covers.")
    data: str | None = None  # calibration and loop data
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    validation_data: str | None = None  # the loop's validation split, in a file of its own
    test_data: str | None = None
    split_column: str | None = "split"
    max_length: int | None = None  # tokens per calibration / evaluation example
    max_accuracy_drop: float | None = opt(None, "Classifiers: accuracy budget vs float32, absolute (0.01 = 1 point); "
                                                "turns on the mixed-precision loop.")
    max_perplexity_increase: float | None = opt(None, "Causal LMs: relative perplexity budget (0.05 = +5%); turns "
                                                      "on the mixed-precision loop.")
    # Dynamic int8 depends on the batch (per-batch scales): the loop scores the way per-request serving runs.
    eval_batch_size: int = opt(1, "Loop: evaluation batch size (1: as served per request).")
    max_eval_samples: int | None = opt(None, "Loop: score the first N validation examples only.")
    max_eval_tokens: int | None = opt(4096, "Loop, causal LMs: perplexity over the first N tokens.")
    max_iterations: int = opt(6, "Loop: fallback rounds; round k keeps 2^k - 1 more activations in float32.")
    rtol: float = opt(DEFAULT_RTOL, "Parity: relative L2 error per output vs float32 on real text (LM logits: "
                                    "log-probabilities).")
    # Weight-only mode (weight_only.py; None: its defaults). With a perplexity budget, int4 layers that
    # hurt most go to int8 until it holds.
    bits: int | None = opt(None, "Weight-only: bits per weight (when unset, 4).", choices=(4, 8))
    block_size: int | None = opt(None, "Weight-only: weights per scale along K, a power of two >= 16 (when unset, "
                                       "32).")
    algorithm: str | None = opt(None, "Weight-only int4: rtn (when unset), minmax (each block's exact minimum: "
                                      "lossless on GGUF Q4_1 weights), hqq, gptq (calibrated), awq "
                                      "(activation-aware scaling + rtn).",
                                choices=("rtn", "minmax", "hqq", "gptq", "awq"))
    accuracy_level: int | None = opt(None, "Weight-only: MatMulNBits compute type, 0 unset, 1 fp32, 2 fp16, 3 bf16, "
                                           "4 int8 (when unset, 4).", choices=(0, 1, 2, 3, 4))
    symmetric: bool | None = opt(None, "Weight-only: symmetric weight blocks (when unset, asymmetric).",
                                 off="asymmetric")
    bias_correction: bool | None = opt(None, "Weight-only: add E[x] (W - W_quantized) as each MatMulNBits' bias, "
                                             "E[x] from the calibration text: the rounding error's mean, free at "
                                             "run time (when unset, off).")
    act_order: bool | None = opt(None, "Weight-only gptq: quantize rows largest Hessian diagonal first, each "
                                       "block's grid fitted beforehand (static groups: no g_idx, no run-time "
                                       "cost) (when unset, on).")
    # Needs an unfused embedding (optimize with embed_layer_norm false).
    embedding_bits: int | None = opt(None, "Dynamic/static: embedding tables as 4-bit blocks (GatherBlockQuantized), "
                                           "MatMuls int8.", choices=(4,))

    def __post_init__(self):
        check_target(self.target)
        self._check_weight_only()
        if self.embedding_bits is not None and (self.embedding_bits != 4 or self.mode == "weight-only"):
            raise ValueError("embedding_bits is 4 (or unset), for dynamic and static modes; weight-only mode "
                             "quantizes embeddings to 4 bits by itself")
        if (self.mode == "weight-only" or self.embedding_bits) and get_target(self.target).fusions == "standard":
            raise ValueError(f"target {self.target} runs standard ONNX ops only; weight-only and 4-bit embeddings "
                             "use ONNX Runtime's MatMulNBits / GatherBlockQuantized (CPU EP): use --mode static")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        if self.mode == "dynamic" and (self.activation_type is not None or self.symmetric_activations):
            raise ValueError("dynamic mode quantizes activations to uint8 at run time; "
                             "activation_type and symmetric_activations apply to --mode static")
        if self.calibration_samples < 1 or (self.max_length or 8) < 8 or self.eval_batch_size < 1:
            raise ValueError("calibration_samples and eval_batch_size must be >= 1, max_length >= 8")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError("percentile must be in (50, 100]")
        for name in ("max_accuracy_drop", "max_perplexity_increase"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1): 0.01 is one point / one percent")
        if self.max_accuracy_drop is not None and self.max_perplexity_increase is not None:
            raise ValueError("give max_accuracy_drop (classifiers) or max_perplexity_increase (LMs), not both")
        if self.max_iterations < 1 or not self.rtol > 0:
            raise ValueError("max_iterations must be >= 1 and rtol positive")
        if self.op_types is not None and not self.op_types:
            raise ValueError("op_types must name at least one op type")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise ValueError("max_eval_samples must be at least 1 (leave it unset for all examples)")
        if self.mode == "dynamic" and self.quantize_matmul_outputs:
            raise ValueError("quantize_matmul_outputs applies to --mode static (dynamic int8 has no output scales)")

    def _check_weight_only(self) -> None:
        own = {k: getattr(self, k) for k in ("bits", "block_size", "algorithm", "accuracy_level", "symmetric",
                                             "bias_correction", "act_order")}
        if self.mode != "weight-only":
            given = [k for k, v in own.items() if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} apply to --mode weight-only only")
            return
        int8_only = {"activation_type": self.activation_type, "weight_type": self.weight_type,
                     "reduce_range": self.reduce_range, "symmetric_activations": self.symmetric_activations or None}
        given = [k for k, v in int8_only.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to int8 modes (dynamic, static), not weight-only")
        if self.act_order is not None and self.algorithm != "gptq":
            raise ValueError("act_order is GPTQ's row order: it applies to --algorithm gptq")
        if self.weight_only_spec.bits != 4 and self.budget_limit is not None:
            raise ValueError("the mixed-precision loop moves int4 layers to int8: give --bits 4 with a budget")

    @property
    def weight_only_spec(self) -> weight_only.WeightOnlySpec:
        """Weight-only settings with defaults filled in: embeddings (Gather) are quantized too by default."""
        bits = self.bits or 4
        ops = self.op_types or ("MatMul", "Gather")
        given = {"block_size": self.block_size, "algorithm": self.algorithm, "accuracy_level": self.accuracy_level,
                 "symmetric": self.symmetric, "bias_correction": self.bias_correction}
        if self.act_order is not None:
            given["act_order"] = self.act_order
        return weight_only.WeightOnlySpec(bits=bits, op_types=tuple(ops), **{k: v for k, v in given.items() if v is not None})

    @property
    def budget_limit(self) -> float | None:
        return self.max_accuracy_drop if self.max_accuracy_drop is not None else self.max_perplexity_increase


@dataclass
class _Job:
    """Everything a quantization attempt needs, prepared once and reused by every loop iteration."""

    parent: Artifact
    cfg: QuantizeConfig
    model: Path  # the pre-processed float32 graph the quantizer reads
    work: Path
    settings: dict
    op_types: list[str]
    excluded: dict[str, str]  # node -> why it stays float32 (user, mask guard, activation matmul)
    feeds: list[dict] = field(default_factory=list)
    cache: Path | None = None  # static: calibrated ranges
    mask_tensors: set[str] = field(default_factory=set)  # never calibrated: they hold float-min
    ranged: set[str] = field(default_factory=set)  # tensors with a calibrated range
    integer_nodes: list[tuple[str, str]] = field(default_factory=list)  # static: (name, op) of integer_ops
    integer_ops: tuple[str, ...] = INTEGER_ONLY_OPS  # static: ops given ORT's integer kernels instead of QDQ
    notes: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@writes_output("data")
def quantize(src: str | Path | Artifact, cfg: QuantizeConfig, out: str | Path, *, force: bool = False) -> Artifact:
    """Quantize the ONNX artifact `src` to int8 at `out`; with a budget, keep sensitive nodes in float32.

    >>> quantize("runs/teacher-onnx", QuantizeConfig(mode="static", max_accuracy_drop=0.01), "runs/int8")  # doctest: +SKIP
    """
    t0 = time.time()  # the lineage times the whole stage (`toolchain info`), not only the write
    out = Path(out)
    check_output(out, force)  # fail now, not after calibrating
    parent = onnx_parent(src, "quantize")
    asked = config_to_dict(cfg)  # the record keeps what was asked (a recipe compares it); metrics the length used
    cfg = resolve_max_length(cfg, parent)
    with write_artifact(out, stage="quantize", config=asked, format="onnx", task=parent.task,
                        model_type=parent.manifest.model_type, parent=parent, force=force, started=t0) as o, \
            tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-work-") as work:
        started = time.perf_counter()
        if cfg.mode == "weight-only":
            job = weight_only.prepare(parent, cfg, Path(work))
            chosen, loop_metrics = weight_only.run(job)
        else:
            job = _prepare(parent, cfg, Path(work))
            chosen, loop_metrics = _run(job)
            if cfg.embedding_bits:
                chosen = _embeddings_4bit(chosen, job)
        shutil.copy2(chosen, o.folder / "model.onnx")
        copy_sidecar_files(parent.path, o.folder)
        m = o.record.metrics
        m.update(job.notes, settings=job.settings, quantize_seconds=round(time.perf_counter() - started, 1),
                 max_length=cfg.max_length,
                 **loop_metrics, **_model_metrics(parent.onnx_path, o.folder / "model.onnx"))
        m["fp32_nodes"] = sorted(set(job.excluded) | set(loop_metrics.get("fallback_nodes", []))
                                 | set(job.notes.get("no_calibrated_range", [])))
        m["fp32_reasons"] = _count_reasons(job.excluded)
        m["parity"] = _check(parent, o.folder / "model.onnx", cfg, loop_metrics)
        m["warnings"] = job.warnings
        tgt = get_target(cfg.target)
        m["target"] = tgt.choices(job.settings.get("preset"))  # weight-only has no int8 preset
        if tgt.mobile:
            from ..package import target_readiness

            m["readiness"] = target_readiness(o.folder / "model.onnx", tgt, cfg.max_length)
    return Artifact.load(out)


def resolve_settings(cfg: QuantizeConfig) -> dict:
    """The preset (named, the target's, or detected) with the config's overrides applied, as recorded."""
    tgt = get_target(cfg.target)
    if cfg.mode == "weight-only":  # no preset: MatMulNBits picks its kernels for the CPU at run time
        return {"mode": cfg.mode, "target": tgt.name, **weight_only.spec_dict(cfg.weight_only_spec)}
    if cfg.preset:
        name, detected = cfg.preset, "chosen by the user"
    elif tgt.preset:
        name, detected = tgt.preset, f"target {tgt.name}: {tgt.why['preset']}"
    else:
        name, detected = detect_preset()
    preset = PRESETS[name]
    static = cfg.mode == "static"
    outputs = tgt.matmul_outputs if cfg.quantize_matmul_outputs is None else cfg.quantize_matmul_outputs
    return {"preset": name, "detected": detected, "why": preset.why, "mode": cfg.mode, "target": tgt.name,
            "activation_type": "quint8" if cfg.mode == "dynamic" else cfg.activation_type or preset.activation_type,
            "weight_type": cfg.weight_type or preset.weight_type,
            "reduce_range": preset.reduce_range if cfg.reduce_range is None else cfg.reduce_range,
            "per_channel": tgt.per_channel if cfg.per_channel is None else cfg.per_channel,
            "symmetric_activations": cfg.symmetric_activations, "matmul_outputs": static and outputs,
            # Static int8 for standard-op targets (NNAPI, CoreML): every op QDQ, none of ORT's integer contrib kernels.
            "integer_kernels": tgt.fusions == "contrib"}


def _prepare(parent: Artifact, cfg: QuantizeConfig, work: Path) -> _Job:
    """Refuse quantized input, pre-process, choose op types and float32 nodes, calibrate (static)."""
    import onnx

    refuse_quantized(parent)
    job = _Job(parent, cfg, work / "float.onnx", work, resolve_settings(cfg), [], {})
    if not job.settings["integer_kernels"]:
        job.integer_ops = ()
    tgt = get_target(cfg.target)
    if tgt.int8_mode and tgt.int8_mode != cfg.mode:
        _warn(job.warnings, f"{cfg.mode} int8 runs on ORT's CPU EP only; {', '.join(tgt.providers[:-1])} "
                            f"runs {tgt.int8_mode} int8 (the {tgt.name} target's format)")
    job.notes["shape_inference"] = calibration.preprocess(parent.onnx_path, job.model)
    model = onnx.load(str(job.model))
    job.op_types = _op_types(model, cfg, job.warnings)
    job.excluded = _excluded(model, cfg, job)
    if cfg.mode == "static":
        job.integer_nodes = [(n.name, n.op_type) for n in model.graph.node
                             if n.op_type in job.integer_ops and n.op_type in job.op_types]
        # Recorded, so nobody mistakes these for calibrated ops: their activation scales are set per run.
        job.notes["run_time_scaled"] = dict(Counter(op for _, op in job.integer_nodes))
    if cfg.mode == "static" or cfg.budget_limit is not None:
        job.feeds = _feeds(job)
    if cfg.mode == "static":
        job.cache = _calibrate(job, model)
    return job


def refuse_quantized(parent: Artifact) -> None:
    from ..runtime import check_onnx_file

    already = graph.quantized_ops(check_onnx_file(parent.onnx_path))
    if already:
        raise Unsupported(f"{parent.path} is already quantized ({', '.join(f'{k} x{v}' for k, v in already.items())})",
                          "quantize the float32 ONNX artifact it was made from (see `toolchain info`)")


def _embeddings_4bit(path: Path, job: _Job) -> Path:
    """The int8 model with its embedding tables as 4-bit blocks (weight_only.build on the Gather nodes)."""
    import onnx

    model = onnx.load(str(path))
    if not weight_only.embedding_gathers(model):
        raise Unsupported("embedding_bits 4: the model has no Gather of a constant embedding table "
                          "(a fused EmbedLayerNormalization holds it)",
                          "optimize with --no-embed-layer-norm, or quantize without --embedding-bits")
    spec = weight_only.WeightOnlySpec(bits=4, op_types=("Gather",))
    quantized, notes = weight_only.build(model, spec)
    job.notes["embedding_bits"] = {**weight_only.spec_dict(spec), "nodes": notes["nodes"]["int4_gather"]}
    out = job.work / "embeddings-4bit.onnx"
    onnx.save(quantized, str(out))
    return out


def _op_types(model, cfg: QuantizeConfig, notes: list[str]) -> list[str]:
    """The op types to quantize that the model has; asking for absent or unsupported ones is reported."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    supported = set(QDQRegistry) | set(INTEGER_ONLY_OPS) if cfg.mode == "static" else set(IntegerOpsRegistry)
    supported |= {"Gemm"}
    requested = [op for op in cfg.op_types or DEFAULT_OPS if not (cfg.embedding_bits and op == "Gather")]
    unsupported = [op for op in requested if op not in supported]
    if unsupported:
        raise Unsupported(f"{cfg.mode} quantization has no int8 kernel for {', '.join(unsupported)}",
                          f"choose from: {', '.join(sorted(supported))}")
    present = graph.op_counts(model)
    chosen = [op for op in requested if present[op]]
    if not chosen:
        raise Unsupported(f"the model has none of the op types {', '.join(requested)}",
                          f"its op types are: {', '.join(sorted(present))}")
    missing = [op for op in requested if not present[op]]
    if cfg.op_types and missing:
        _warn(notes, f"op type(s) {', '.join(missing)} do not occur in the model: nothing to quantize there")
    stranded = [op for op in ("Attention", "EmbedLayerNormalization") if present[op] and op not in chosen]
    if stranded:
        _warn(notes, f"{', '.join(stranded)} will keep float32 weights: add them to the op types")
    return chosen


def _excluded(model, cfg: QuantizeConfig, job: _Job) -> dict[str, str]:
    names = [n.name for n in model.graph.node]
    # A name or a glob pattern ('*/mlp/down_proj/*'): a 30-layer LM should not need 30 flags.
    matched = {pat: fnmatch.filter(names, pat) for pat in cfg.exclude_nodes}  # a plain name matches itself
    unknown = [pat for pat, hits in matched.items() if not hits]
    if unknown:
        _warn(job.warnings, f"excluded node(s) not in the graph: {', '.join(unknown[:5])}")
    excluded = {n: "user" for hits in matched.values() for n in hits}
    if cfg.mask_guard:
        guard_nodes, guard_tensors = graph.mask_guard(model)
        job.notes["mask_guard"] = {"nodes": len(guard_nodes), "tensors": len(guard_tensors)}
        job.mask_tensors = guard_tensors
        kinds = set(job.op_types)
        excluded |= {n.name: "attention mask" for n in model.graph.node
                     if n.name in guard_nodes and n.op_type in kinds and n.name not in excluded}
    if not cfg.quantize_activation_matmuls and "MatMul" in job.op_types:
        excluded |= {n: "activation x activation MatMul" for n in graph.activation_matmuls(model) if n not in excluded}
    return excluded


def _feeds(job: _Job) -> list[dict]:
    from ..data import data_spec, load_classification, load_text
    from ..runtime import make_session

    cfg = job.cfg
    n = calibration.check_sample_count(cfg.calibration_samples) if cfg.mode == "static" else []
    job.warnings += n
    tokenizer = parent_tokenizer(job.parent)
    if job.parent.task == "text-generation":
        data = load_text(cfg.data or "hamlet")
    else:
        data = load_classification(data_spec(cfg))
    return calibration.sample_feeds(make_session(job.model), tokenizer, data, cfg.calibration_samples, cfg.max_length)


def _calibrate(job: _Job, model) -> Path:
    from onnxruntime.quantization.calibrate import save_tensors_data

    cfg = job.cfg
    ranges = calibration.calibrate(job.model, job.feeds, cfg.calibration_method, _qdq_ops(job),
                                   cfg.symmetric_activations, cfg.percentile, job.mask_tensors, job.work)
    for name in job.mask_tensors & set(ranges.data):  # MinMax calibrates every tensor it was given
        del ranges.data[name]
    huge = calibration.drop_huge_ranges(ranges)
    if huge:
        readers = {n.name for n in model.graph.node if n.op_type in job.op_types
                   and (set(n.input) & set(huge) or set(n.output) & set(huge))}
        job.excluded |= {n: "unbounded range" for n in readers if n not in job.excluded}
        _warn(job.warnings, f"{len(huge)} tensor(s) had unbounded calibrated ranges (mask fill values?): "
                            f"{len(readers)} node(s) reading them stay float32")
    job.ranged = set(ranges.data)
    cache = job.work / "calibration.json"
    save_tensors_data(ranges, cache)
    job.notes["calibration"] = {"method": cfg.calibration_method, "samples": len(job.feeds),
                                "tensors": len(ranges.data)}
    return cache


def _build(job: _Job, fallback: list[str], dst: Path) -> Path:
    """One quantized graph at `dst`, with the job's excluded nodes and `fallback` kept in float32."""
    from onnxruntime.quantization import quantize_dynamic

    s = job.settings
    exclude = sorted(set(job.excluded) | set(fallback))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if job.cfg.mode == "static":
            return _build_static(job, exclude, dst)
        quantize_dynamic(str(job.model), str(dst), op_types_to_quantize=job.op_types, per_channel=s["per_channel"],
                         reduce_range=s["reduce_range"], weight_type=_qtype(s["weight_type"]),
                         nodes_to_exclude=exclude, extra_options=FLOAT_DEFAULT | {"MatMulConstBOnly": True})
    return dst


def _build_static(job: _Job, exclude: list[str], dst: Path) -> Path:
    """The integer pass for INTEGER_ONLY_OPS, then calibrated QDQ for the rest."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_dynamic, quantize_static

    s = job.settings
    # The integer pass goes first: ORT's dynamic quantizer renames a QDQ graph's tensors into cycles.
    # It splits every Gemm into MatMul + Add (named <gemm>_MatMul); the ones it does not quantize stay float.
    integer_nodes = [f"{n}_MatMul" if op == "Gemm" else n for n, op in job.integer_nodes if n not in exclude]
    exclude = exclude + [f"{n}_MatMul" for n, op in job.integer_nodes if op == "Gemm" and n in exclude]
    source = job.model
    if integer_nodes:
        source = dst.with_suffix(".integer.onnx")
        ops = sorted({op for _, op in job.integer_nodes} | {"MatMul"})
        quantize_dynamic(str(job.model), str(source), op_types_to_quantize=ops, nodes_to_quantize=integer_nodes,
                         per_channel=s["per_channel"], reduce_range=s["reduce_range"],
                         weight_type=_qtype(s["weight_type"]), extra_options=FLOAT_DEFAULT)
    exclude += _unranged(job, source, exclude)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[job.cfg.calibration_method]
    # MatMul outputs stay float: re-quantizing them before the bias add measured cosine 0.88 vs 0.98 on
    # MiniLM, and ONNX Runtime then runs MatMulIntegerToFloat, as fast as QLinearMatMul.
    options = FLOAT_DEFAULT | {"ActivationSymmetric": s["symmetric_activations"],
                               "OpTypesToExcludeOutputQuantization": [] if s["matmul_outputs"] else ["MatMul"]}
    quantize_static(str(source), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=_qdq_ops(job),
                    per_channel=s["per_channel"], reduce_range=s["reduce_range"],
                    activation_type=_qtype(s["activation_type"]), weight_type=_qtype(s["weight_type"]),
                    nodes_to_exclude=exclude, calibrate_method=method, calibration_cache_path=str(job.cache),
                    extra_options=options)
    _keep_float_consumers(job, dst, set(exclude))
    return dst


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}[name]


def _unranged(job: _Job, path: Path, exclude: list[str]) -> list[str]:
    """MatMul/Gemm nodes whose input got no calibrated range (no type information reached it during
    calibration, or the integer pass split a Gemm): the static quantizer would fail on them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consts = graph.constant_tensors(model)
    found = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.op_type in job.op_types
             and n.name not in exclude and n.input[0] not in consts and n.input[0] not in job.ranged]
    if found and "no_calibrated_range" not in job.notes:
        job.notes["no_calibrated_range"] = found
        _warn(job.warnings, f"{len(found)} node(s) got no calibrated input range and stay float32: "
                            f"{', '.join(found[:3])}{'...' if len(found) > 3 else ''}")
    return found


def _keep_float_consumers(job: _Job, path: Path, exclude: set[str]) -> None:
    import onnx

    model = onnx.load(str(path))
    qdq_ops = set(_qdq_ops(job))
    quantized = {n.name for n in model.graph.node if n.op_type in qdq_ops and n.name not in exclude}
    job.notes["float_inputs_restored"] = graph.keep_float_consumers(model, quantized)
    onnx.save(model, str(path))


def _qdq_ops(job: _Job) -> list[str]:
    return [op for op in job.op_types if op not in job.integer_ops]


def _run(job: _Job) -> tuple[Path, dict]:
    """Quantize once, or run the accuracy-aware loop when the config sets a budget."""
    if job.cfg.budget_limit is None:
        return _build(job, [], job.work / "int8.onnx"), {}
    budget, score = _budget(job)
    counter = iter(range(10**6))

    def build(fallback):
        return _build(job, fallback, job.work / f"int8-{next(counter)}.onnx")

    def rank(path):
        owners = _owners(job)
        return loop.rank_activations(job.model, path, job.feeds, owners)

    result, chosen = loop.accuracy_loop(build, score, budget, rank, job.cfg.max_iterations)
    it = result.chosen
    if not it.within_budget:
        _warn(job.warnings, f"{budget.metric} budget not met: best {budget.metric} {it.value:.4g} "
                            f"({budget.metric} cost {it.cost:.4g} > {budget.limit:g}) with {len(it.fp32_nodes)} fp32 nodes")
    metrics = {"budget": {"metric": budget.metric, "parent": budget.parent, "limit": budget.limit,
                          "split": "validation" if budget.metric == "accuracy" else job.cfg.data or "hamlet",
                          "batch_size": job.cfg.eval_batch_size},
               "iterations": [i.as_dict(budget.metric) for i in result.iterations], "chosen_iteration": result.best,
               "within_budget": it.within_budget, "fallback_nodes": it.fp32_nodes,
               "sensitivity": result.ranking[:20]}
    return chosen, metrics


def _owners(job: _Job) -> dict[str, list[str]]:
    """Activation tensor -> the quantized nodes that read (or write) it, in the pre-processed graph."""
    import onnx

    model = onnx.load(str(job.model), load_external_data=False)
    consts = graph.constant_tensors(model)
    owners: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in job.op_types and n.name not in job.excluded:
            for t in list(n.input) + list(n.output):
                if t and t not in consts:
                    owners.setdefault(t, []).append(n.name)
    return owners


def _budget(job: _Job):
    """The loop's budget against the float32 parent and a function scoring a quantized graph."""
    from ..evaluate import eval_config, evaluate

    cfg = job.cfg
    lm = job.parent.task == "text-generation"
    if lm and cfg.max_accuracy_drop is not None or not lm and cfg.max_perplexity_increase is not None:
        raise Unsupported("max_accuracy_drop is for classifiers, max_perplexity_increase for causal LMs",
                          "use the budget that matches the model's task")
    ecfg = eval_config(cfg, "validation", "hamlet" if lm else "rotten-tomatoes", batch_size=cfg.eval_batch_size,
                       max_length=cfg.max_length, max_eval_samples=cfg.max_eval_samples,
                       max_eval_tokens=cfg.max_eval_tokens)
    metric = "perplexity" if lm else "accuracy"
    parent_value = evaluate(job.parent.path, ecfg, record=False)[metric]

    def score(path: Path) -> float:
        trial = job.work / f"trial-{path.stem}"
        with write_artifact(trial, stage="quantize-trial", config={}, format="onnx", task=job.parent.task,
                            model_type=job.parent.manifest.model_type, parent=job.parent) as o:
            shutil.copy2(path, o.folder / "model.onnx")
            copy_sidecar_files(job.parent.path, o.folder)
        value = evaluate(trial, ecfg, record=False)[metric]
        shutil.rmtree(trial, ignore_errors=True)
        return value

    return loop.Budget(metric, parent_value, cfg.budget_limit), score


def _model_metrics(parent: Path, path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    from ..runtime import onnx_file_bytes

    before, after = onnx_file_bytes(parent), onnx_file_bytes(path)
    return {"size_bytes_before": before, "size_bytes_after": after, "size_ratio": round(before / after, 2),
            "quantized_ops": graph.quantized_ops(model), "weights": graph.int8_weight_stats(model)}


def _count_reasons(excluded: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for why in excluded.values():
        out[why] = out.get(why, 0) + 1
    return out


def _check(parent: Artifact, path: Path, cfg: QuantizeConfig, loop_metrics: dict) -> dict:
    """int8 vs float32 on real text: relative L2 error per output (log-probabilities for LMs)."""
    from ..runtime import make_session

    tokenizer = parent_tokenizer(parent)
    result = parity.compare_onnx(make_session(parent.onnx_path), make_session(path), tokenizer, parent.task,
                                 cfg.rtol, relative=True)
    if not result.ok:
        tried = ""
        if loop_metrics.get("iterations"):
            best = loop_metrics["iterations"][loop_metrics["chosen_iteration"]]
            kept = (f"{best['int8_nodes']} layers at int8" if "int8_nodes" in best
                    else f"{best['fp32_nodes']} nodes in float32")
            tried = f"; the accuracy loop's best kept {kept}"
        budget = "--max-accuracy-drop" if parent.task == "text-classification" else "--max-perplexity-increase"
        loop_hint = "more --max-iterations" if tried else f"a {budget} budget"
        other = {"dynamic": "--mode static", "static": "--mode dynamic"}.get(cfg.mode, "--bits 8")
        what = "quantized" if cfg.mode == "weight-only" else "int8"
        raise CheckFailed(f"the {what} model's {result.worst_output!r} differs from float32 by a relative L2 error of "
                          f"{result.max_abs_diff:.3g} (tolerance {cfg.rtol:g}){tried}",
                          f"try {loop_hint}, {other}, or --exclude-node for the sensitive nodes; "
                          "raise --rtol only to inspect the model, not to ship it")
    return result.as_metrics()


def _warn(notes: list[str], message: str) -> None:
    warnings.warn(message)
    notes.append(message)
