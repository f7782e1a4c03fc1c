"""The edge bundle: everything a phone or board team needs to run and check one ONNX artifact.

A bundle is an artifact folder (its manifest.json holds the sha256 of every file and the whole
lineage, so `toolchain verify` and `toolchain info` work on it) with:

    model.onnx, tokenizer files, config.json   copied from the artifact, after its hashes are checked
    model.onnx.data, genai_config.json          an LM made by ONNX Runtime GenAI's builder: its weights and the
                                               config onnxruntime-genai reads (og.Model(bundle) runs the bundle)
    model.ort, required_operators.config       ORT format for a reduced/mobile onnxruntime build
    labels.json                                classifiers: label id -> name
    predict.py                                 runs the model with onnxruntime, tokenizers and numpy only
    generate.py                                causal LMs: streams a continuation token by token with the KV cache
    mobile_readiness.json / .md                ONNX Runtime's NNAPI / CoreML usability check: what falls back
    bundle.json                                what the model is (opset, IR version, minimum onnxruntime,
                                               inputs/outputs), its metrics and the machines they came from,
                                               sha256 of the other files, and the smoke-test reference outputs
    README.md                                  how to run and check it

The smoke test (`smoke_test`, run by `toolchain verify`) runs predict.py's own code on texts stored in
bundle.json and compares with outputs the toolchain computed from the source artifact when packaging.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .artifact import Artifact, sha256_file, write_artifact
from .config import config_to_dict, opt, resolve_max_length
from .errors import BadModel, CheckFailed, IntegrityError, Unsupported
from .guard import writes_output
from .runtime import check_onnx_file
from .targets import HOST, TARGETS, Target, check_target, target as get_target

BUNDLE_FILE = "bundle.json"
BUNDLE_SCHEMA = 1
PREDICT = Path(__file__).with_name("bundle_predict.py")
GENERATE = Path(__file__).with_name("bundle_generate.py")  # causal LMs: streams tokens, imports predict.py
# ai.onnx opset / IR version -> first onnxruntime release that implements it (onnxruntime's compatibility table).
# Newer than the table: the running version is the only one known to work.
ORT_FOR_OPSET = {13: "1.7", 14: "1.8", 15: "1.9", 16: "1.11", 17: "1.12", 18: "1.14", 19: "1.15", 20: "1.17",
                 21: "1.18"}
ORT_FOR_IR = {7: "1.6", 8: "1.10", 9: "1.15", 10: "1.18"}
SAMPLES = (
    "A gripping, beautifully acted drama that earns every one of its tears.",
    "The plot is thin and the jokes land with a dull thud.",
    "To be, or not to be, that is the question.",
)


@dataclass(frozen=True)
class PackageConfig:
    ort_format: bool = opt(True, "Also write model.ort and required_operators.config (for a reduced onnxruntime "
                                 "build).")
    # model.ort bakes in platform-specific graph optimizations; phones and boards are ARM.
    target_platform: Literal["arm", "amd64"] | None = opt(None, "What model.ort is optimized for; when unset, the "
                                                                "--target's (host: arm).")
    mobile_check: bool = opt(True, "Run ONNX Runtime's NNAPI / CoreML usability check.")
    max_length: int | None = None  # predict.py truncates each text to this many tokens
    smoke_texts: tuple[str, ...] = opt(SAMPLES, "A smoke-test text, run by the bundle and compared with the "
                                                "toolchain's own run (repeatable; causal LMs: the first is the "
                                                "prompt); when unset, a few built-in sentences.",
                                       flag="smoke_text", multiple=True)
    generate_tokens: int = opt(8, "Causal LM smoke test: greedy tokens compared with the toolchain's own decoding.")
    # predict.py and model.ort against the toolchain's ONNX run of the source artifact: same graph, same
    # tokens, so only kernel-order noise (int8 graphs with other fusions move by a quantization step at most).
    atol: float = opt(1e-3, "Smoke test: max abs diff of the bundle's outputs vs the toolchain's run of the "
                            "source artifact.")
    target: str = opt(HOST, choices=tuple(TARGETS))

    def __post_init__(self):
        check_target(self.target)
        if not self.smoke_texts or not all(isinstance(s, str) and s.strip() for s in self.smoke_texts):
            raise ValueError("smoke_texts must be non-empty texts")
        if (self.max_length or 2) < 2 or self.generate_tokens < 1 or not self.atol > 0:
            raise ValueError("max_length must be >= 2, generate_tokens >= 1 and atol > 0")


@writes_output()
def package(src: str | Path, cfg: PackageConfig, out: str | Path, *, force: bool = False) -> Artifact:
    """Check `src`'s hashes, then write the edge bundle for it at `out`.

    >>> package("runs/minilm/int8", PackageConfig(), "runs/minilm/bundle")  # doctest: +SKIP
    """
    t0 = time.time()  # the lineage times the whole stage (`toolchain info`), not only the write
    art = _checked_input(src.path if isinstance(src, Artifact) else src)
    asked = config_to_dict(cfg)  # the record keeps what was asked (a recipe compares it); metrics the length used
    cfg = resolve_max_length(cfg, art)
    if get_target(cfg.target).fixed_shapes and art.task == "text-generation":
        raise Unsupported(f"target {cfg.target} fixes inputs to [1, max_length]; a causal LM decodes one token at "
                          "a time with a growing cache", "package causal LMs for a CPU target (arm64, x86-*)")
    with write_artifact(out, stage="package", config=asked | {"source": str(src)}, format="onnx",
                        task=art.task, model_type=art.manifest.model_type, parent=art, force=force,
                        started=t0) as o:
        tgt = get_target(cfg.target)
        for name in art.manifest.files:
            (o.folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(art.path / name, o.folder / name)
        if tgt.fixed_shapes:
            fix_shapes(o.folder / "model.onnx", o.folder / "model.onnx", cfg.max_length)
        shutil.copy2(PREDICT, o.folder / "predict.py")
        if art.task == "text-generation":
            shutil.copy2(GENERATE, o.folder / "generate.py")
        info = describe(o.folder, art, cfg)
        info["target"] = tgt.choices(_preset_used(art)) | {
            "ort_platform": cfg.target_platform or tgt.ort_platform,
            "max_length": cfg.max_length if tgt.fixed_shapes else None}
        if info["labels"]:
            (o.folder / "labels.json").write_text(json.dumps(dict(enumerate(info["labels"])), indent=2) + "\n")
        if cfg.ort_format:
            convert_to_ort(o.folder / "model.onnx", o.folder, cfg.target_platform or tgt.ort_platform)
        if cfg.mobile_check:
            info["mobile"] = write_mobile_readiness(o.folder, tgt)
            if tgt.mobile:
                info["target"]["readiness"] = target_readiness(o.folder / "model.onnx", tgt)
        info["smoke"] = reference_outputs(art, cfg, info)
        (o.folder / BUNDLE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        checks = smoke_test(o.folder, verify_hashes=False)
        size = sum(p.stat().st_size for p in o.folder.rglob("*") if p.is_file())
        o.record.metrics |= {"max_length": cfg.max_length, "smoke": checks, "files": len(list(o.folder.iterdir())),
                             "bundle_mb": round(size / 1e6, 2), "target": info["target"]}
        (o.folder / "README.md").write_text(_readme(info, Path(out).name))
        info["files"] = _file_hashes(o.folder)
        (o.folder / BUNDLE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if not checks["ok"]:
            raise CheckFailed(f"bundle smoke test failed: {checks['problem']}",
                              "raise atol only if the difference is acceptable; check the tokenizer files")
    return Artifact.load(out)


def _checked_input(src: str | Path) -> Artifact:
    art = Artifact.load(src, verify=True)  # refuses an artifact whose files changed since it was written
    if art.format != "onnx" or not art.onnx_path.is_file():
        raise Unsupported(f"{src} is a {art.format} artifact; a bundle holds an ONNX model",
                          "export it first (toolchain export), then package the ONNX artifact")
    check_onnx_file(art.onnx_path)  # the toolchain's own check: external data outside the folder is exit 10
    if not (art.path / "tokenizer.json").is_file():
        raise BadModel(f"{src} has no tokenizer.json; predict.py needs a fast tokenizer",
                       "export from a model with a fast (Rust) tokenizer")
    return art


def _preset_used(art: Artifact) -> str | None:
    """The int8 preset the artifact's quantize step used (None: not quantized)."""
    for record in reversed(art.manifest.lineage):
        if record.stage == "quantize":
            return (record.metrics.get("settings") or {}).get("preset")
    return None


def fix_shapes(src: Path, dst: Path, length: int) -> dict:
    """Every [batch, sequence] input fixed to [1, length] (ONNX Runtime's make_dynamic_shape_fixed), output shapes
    inferred: NNAPI compiles only fixed-size graphs, CoreML runs them faster. Returns {input: shape}."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    model = onnx.load(str(src))
    fixed = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 2 and value.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            if all(d.HasField("dim_value") for d in dims):  # fixed already (a bundle's model)
                fixed[value.name] = [d.dim_value for d in dims]
                continue
            make_input_shape_fixed(model.graph, value.name, [1, length])
            fixed[value.name] = [1, length]
    if not fixed:
        raise Unsupported(f"{src} has no [batch, sequence] token inputs to fix", "package it for a CPU target")
    fix_output_shapes(model)
    onnx.save(model, str(dst))
    return fixed


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (BUNDLE_FILE, "manifest.json")}


# ---------------------------------------------------------------- describing the model


def describe(folder: Path, art: Artifact, cfg: PackageConfig) -> dict:
    """bundle.json without smoke and files: what the model is, what it needs, how it measured."""
    import onnx
    import onnxruntime as ort

    from .modeling import ModelSource, load_tokenizer

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    opsets = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    tok = load_tokenizer(ModelSource(str(folder), str(folder), local=True))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    labels = class_labels(config, session) if art.task == "text-classification" else None
    return {
        "format": "toolchain.bundle", "schema_version": BUNDLE_SCHEMA, "task": art.task,
        "model_type": art.manifest.model_type, "labels": labels, "max_length": cfg.max_length,
        # sentence-pair classifiers (NLI, paraphrase): predict.py takes (text, pair) and says which column is which
        "text_pair": list(art.text_columns) if art.task == "text-classification" and art.text_columns else None,
        "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
        "onnx": {"opsets": opsets, "ir_version": model.ir_version, "producer": f"{model.producer_name} "
                 f"{model.producer_version}".strip(), "inputs": _signature(session.get_inputs()),
                 "outputs": _signature(session.get_outputs()),
                 "with_past": any(i.name.startswith("past_key_values") for i in session.get_inputs())},
        "genai": (folder / "genai_config.json").is_file(),  # ONNX Runtime GenAI's builder made it: og.Model runs it
        "min_onnxruntime": min_onnxruntime(opsets.get("ai.onnx"), model.ir_version, cfg.ort_format),
        "source": {"artifact": str(art.path), "content_hash": art.content_hash,
                   "lineage": [{"stage": r.stage, "config": r.config} for r in art.manifest.lineage]},
        **measured(art),
    }


def class_labels(config: dict, session) -> list[str]:
    """One name per logit: config.json's id2label where it has one, transformers' LABEL_<i> where not.

    Many hub classifiers keep transformers' default labels, or save no id2label at all.
    """
    id2label = config.get("id2label") if isinstance(config.get("id2label"), dict) else {}
    logits = next((o for o in session.get_outputs() if o.name == "logits"), None)
    width = logits.shape[-1] if logits is not None and logits.shape else None
    n = width if isinstance(width, int) else config.get("num_labels") or len(id2label) or 2
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def _signature(values) -> list[dict]:
    return [{"name": v.name, "shape": [d if isinstance(d, int) else str(d) for d in v.shape], "dtype": v.type}
            for v in values]


def min_onnxruntime(opset: int | None, ir_version: int, ort_format: bool) -> dict:
    """The oldest onnxruntime that can load model.onnx (by opset and IR version), and model.ort."""
    import onnxruntime as ort

    here = ".".join(ort.__version__.split(".")[:2])
    needs = [ORT_FOR_OPSET.get(opset, here) if opset and opset >= min(ORT_FOR_OPSET) else "1.7",
             ORT_FOR_IR.get(ir_version, here) if ir_version >= min(ORT_FOR_IR) else "1.6"]
    out = {"model.onnx": max(needs, key=lambda v: tuple(int(x) for x in v.split("."))),
           "note": "from the graph's ai.onnx opset and IR version; contrib (com.microsoft) operators of fused or "
                   "quantized graphs may need a build as new as the one that made them"}
    if ort_format:
        out["model.ort"] = here  # ORT format files load in the version that wrote them and newer ones
    return out


def measured(art: Artifact) -> dict:
    """The artifact's stored metrics, and the machines the benchmark numbers came from."""
    evaluation = {k: {m: v[m] for m in ("accuracy", "macro_f1", "perplexity", "n", "tokens", "data", "split",
                                        "batch_size") if m in v}
                  for k, v in art.manifest.results.items() if k.startswith("evaluate/") and isinstance(v, dict)}
    bench, machines = [], {}
    for key, result in art.manifest.results.items():
        if not key.startswith("bench/") or not isinstance(result, dict):
            continue
        machine = result.get("machine") or {}
        label = machine.get("cpu_model", "unknown machine")
        machines[label] = machine
        bench += [{"machine": label, **{k: r.get(k) for k in ("provider", "mode", "workload", "batch", "seq",
                                                              "p50_ms", "p90_ms", "throughput", "throughput_unit")}}
                  for r in result.get("rows") or [] if r.get("status") == "ok"]
    return {"metrics": {"evaluate": evaluation, "bench": bench}, "machines": machines}


# ---------------------------------------------------------------- ORT format and mobile readiness


def convert_to_ort(onnx_path: Path, folder: Path, target_platform: str) -> None:
    """model.ort and required_operators.config, optimized as predict.py runs model.onnx (in a separate process).

    onnxruntime's own converter (onnxruntime.tools.convert_onnx_models_to_ort) cannot disable an optimizer: it
    fused SkipLayerNormalization, whose CPU kernel predict.py avoids as 5-8x slower than Add + LayerNorm, and the
    changed rounding moved a static-int8 student's logits by 0.0046 past the smoke test's atol (1e-3). This does
    what it does (level ALL, NCHWc only for amd64, int8 QDQ fused only for arm) with runtime.CPU_DISABLED_OPTIMIZERS.
    """
    with tempfile.TemporaryDirectory() as tmp:
        # Saving writes scratch files beside the input: give it a copy, not the bundle's folder.
        src = Path(tmp) / "in" / "model.onnx"
        src.parent.mkdir()
        for data in [onnx_path, *onnx_path.parent.glob("model.onnx.*")]:  # the graph and its external data
            shutil.copy2(data, src.parent / data.name)
        produced = Path(tmp) / "model.ort"
        code = f"from toolchain.package import _save_ort; _save_ort({str(src)!r}, {str(produced)!r}, {target_platform!r})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode != 0 or not produced.is_file():
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1][:300]
            raise CheckFailed(f"onnxruntime could not convert the model to ORT format: {last}",
                              "package with ort_format: false (the bundle keeps model.onnx)")
        shutil.copy2(produced, folder / "model.ort")
        config = produced.with_suffix(".required_operators.config").read_text()
        # Its header names the scratch path it was converted at: name the bundle's file instead.
        (folder / "required_operators.config").write_text(config.replace(str(produced), "model.ort"))


def _save_ort(src: str, dst: str, target_platform: str) -> None:
    """Save `src` as an ORT-format model at `dst` (and dst's required_operators.config); run by convert_to_ort."""
    import onnxruntime as ort
    from onnxruntime.tools.ort_format_model import create_config_from_models

    from .runtime import CPU_DISABLED_OPTIMIZERS

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = dst
    opts.add_session_config_entry("session.save_model_format", "ORT")
    # As the converter: ARM kernels run int8 QDQ units as int8; x86 ones want uint8 activations.
    opts.add_session_config_entry("session.qdqisint8allowed", "1" if target_platform == "arm" else "0")
    # NCHWc layouts are x86-only: an ARM model.ort must not hold them.
    disabled = [*CPU_DISABLED_OPTIMIZERS, *(["NchwcTransformer"] if target_platform != "amd64" else [])]
    ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
    create_config_from_models([Path(dst)], Path(dst).with_suffix(".required_operators.config"), False)


EPS = {"NNAPI": None, "CoreML NeuralNetwork": "coreml_supported_neuralnetwork_ops.md",
       "CoreML MLProgram": "coreml_supported_mlprogram_ops.md"}
# ORT's CoreML EP refuses a node whose input has a dimension above this (Core ML fails to load it:
# coremltools issue 1003), e.g. BERT's 30,522-row embedding; ORT's Python usability check does not model it.
COREML_MAX_DIM = 16384


def mobile_readiness(onnx_path: Path) -> dict:
    """ONNX Runtime's usability check for NNAPI and CoreML: per EP, which operators would fall back to the CPU.

    Checked as the graph is (dynamic shapes count against NNAPI) and as if its shapes were fixed.
    """
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        basic = Path(tmp) / "model.onnx"
        optimize_model(onnx_path, basic, use_external_initializers=True)  # BASIC level, as ORT's own check does
        model = ModelProtoWithShapeInfo(basic).model_with_shape_info
        out = {}
        for ep, ops_file in EPS.items():
            check = ((lambda m, fixed: uc.check_nnapi_partitions(m, fixed)) if ops_file is None else
                     (lambda m, fixed, f=ops_file: uc.check_coreml_partitions(m, fixed, f)))
            out[ep] = _partition_summary(check(model, True), model) | {
                "if_shapes_fixed": _partition_summary(check(model, False), model)}
            if ep.startswith("CoreML"):
                out[ep]["over_16384"] = coreml_dim_blockers(model)
    return out


def coreml_dim_blockers(model) -> list[dict]:
    """Nodes CoreML cannot take because a stored tensor they read has a dimension over COREML_MAX_DIM."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    return [{"node": n.name, "op": n.op_type, "input": i, "shape": shapes[i]} for n in model.graph.node
            for i in n.input if any(d > COREML_MAX_DIM for d in shapes.get(i, ()))]


def _partition_summary(info, model) -> dict:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        op = f"{node.domain or 'ai.onnx'}:{node.op_type}"
        if op in info.unsupported_ops:
            counts[op] = counts.get(op, 0) + 1
    return {"suitability": info.suitability().name, "nodes": info.num_nodes,
            "supported_nodes": info.num_supported_nodes, "partitions": info.num_partitions,
            "fallback_ops": dict(sorted(counts.items())),
            "unsupported_for_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input}


def write_mobile_readiness(folder: Path, tgt: Target | None = None) -> dict:
    """mobile_readiness.json and .md in `folder`; returns the per-EP verdicts for bundle.json."""
    try:
        report = mobile_readiness(folder / "model.onnx")
    except Exception as exc:  # the checker is advisory: record why it could not run instead of failing the bundle
        report = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    blocking = blockers(folder / "model.onnx") if "error" not in report else {}
    (folder / "mobile_readiness.json").write_text(json.dumps(report | {"blockers": blocking}, indent=2) + "\n")
    (folder / "mobile_readiness.md").write_text(_mobile_markdown(report, blocking, tgt))
    if "error" in report:
        return report
    return {ep: {"as_is": r["suitability"], "if_shapes_fixed": r["if_shapes_fixed"]["suitability"]}
            for ep, r in report.items()}


def _mobile_markdown(report: dict, blocking: dict | None = None, tgt: Target | None = None) -> str:
    lines = ["# Mobile readiness (ONNX Runtime usability check)", ""]
    if "error" in report:
        return "\n".join(lines + [f"The check could not run: {report['error']}", ""])
    if tgt is not None and tgt.mobile:
        r = report[tgt.readiness_ep]
        lines += [f"Built for **{tgt.name}** ({tgt.runs_on}): {tgt.readiness_ep} takes {r['supported_nodes']} of "
                  f"{r['nodes']} nodes ({r['supported_nodes'] / max(r['nodes'], 1):.0%}) in {r['partitions']} "
                  f"partition(s): {r['suitability']}.", ""]
    lines += ["| execution provider | verdict | nodes on EP | partitions | verdict if shapes fixed "
              "| falls back to CPU |", "|---|---|---|---|---|---|"]
    for ep, r in report.items():
        fixed = r["if_shapes_fixed"]
        falls = ", ".join(f"{op.split(':')[1]} x{n}" for op, n in fixed["fallback_ops"].items()) or "nothing"
        lines.append(f"| {ep} | {r['suitability']} | {r['supported_nodes']}/{r['nodes']} | {r['partitions']} | "
                     f"{fixed['suitability']} ({fixed['supported_nodes']}/{fixed['nodes']}) | {falls} |")
    over = {b["input"]: b["shape"] for r in report.values() for b in r.get("over_16384", [])}
    if over:
        lines += ["", "CoreML also leaves on the CPU every node that reads a tensor with a dimension over 16,384 "
                  "(ORT's CoreML EP refuses it; the usability check above does not count it): "
                  + ", ".join(f"`{name}` {shape}" for name, shape in over.items())
                  + ". An embedding that large shrinks with `toolchain trim-vocab`."]
    lines += ["", "YES / MAYBE / NO is ONNX Runtime's verdict on whether the EP is worth trying. NNAPI needs fixed "
              "input shapes (`python -m onnxruntime.tools.make_dynamic_shape_fixed`); operators listed as falling "
              "back run on the CPU EP, and every switch between EP and CPU costs a copy.", ""]
    for ep, items in (blocking or {}).items():
        if items:
            lines += [f"What still blocks {ep} (the check above counts operator types only):", ""]
            lines += [f"- {b['problem']}. Fix: {b['fix']}" for b in items] + [""]
    return "\n".join(lines)


# CoreML's largest tensor dimension (its NeuralNetwork and ML Program formats alike).
COREML_MAX_DIM = 16384


def blockers(onnx_path: Path) -> dict[str, list[dict]]:
    """What keeps each mobile EP from running nodes the operator-type check counts as supported, with the fix."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    big = [(name, dims) for name, dims in inits.items() if any(d > COREML_MAX_DIM for d in dims)]
    coreml, nnapi = [], []
    for name, dims in big:
        coreml.append({"problem": f"tensor {name} has a dimension of {max(dims):,} (CoreML allows {COREML_MAX_DIM:,})",
                       "fix": "trim the vocabulary to the tokens the task uses (`toolchain trim-vocab`, issue 17), "
                              "or keep the embedding lookup on the CPU EP"})
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        coreml.append({"problem": "QuantizeLinear / DequantizeLinear: ORT's CoreML EP has no kernel for them, so an "
                                  "int8 QDQ graph runs its quantized parts on the CPU EP",
                       "fix": "ship the float32 standard-op graph for CoreML (CoreML computes in float16 on the GPU "
                              "and Neural Engine), or quantize weights in Core ML itself (coremltools)"})
    ids = [i for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.INT64]
    if ids:
        nnapi.append({"problem": f"int64 inputs ({', '.join(i.name for i in ids)}): NNAPI has no 64-bit integer "
                                 "tensors, so the embedding lookups and mask ops that read them stay on the CPU EP",
                      "fix": "export with int32 token inputs; until then that work runs on the CPU at the start "
                             "of the graph, before one NNAPI partition"})
    consts = set(inits) | {o for n in model.graph.node if n.op_type in ("Constant", "DequantizeLinear")
                           and all(i in inits for i in n.input) for o in n.output}
    act_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in consts]
    if act_matmuls:
        nnapi.append({"problem": f"{len(act_matmuls)} MatMul(s) of two activations (attention scores, context), "
                                 "and MatMuls on [1, length, hidden] activations: NNAPI runs these as BATCH_MATMUL, "
                                 "from feature level 6 (Android 13) on",
                      "fix": "target Android 13+ devices; on older ones those products run on the CPU EP"})
    return {"NNAPI": nnapi, "CoreML MLProgram": coreml}


def target_readiness(onnx_path: Path, tgt: Target, length: int = 128) -> dict | None:
    """The target EP's share of nodes and partitions, checked on a copy with fixed shapes (None: a CPU target)."""
    if not tgt.mobile:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "model.onnx"
        fix_shapes(onnx_path, fixed, length)
        r = mobile_readiness(fixed)[tgt.readiness_ep]
    return {"ep": tgt.readiness_ep, "nodes": r["nodes"], "supported_nodes": r["supported_nodes"],
            "share": round(r["supported_nodes"] / max(r["nodes"], 1), 4), "partitions": r["partitions"],
            "suitability": r["suitability"], "fallback_ops": r["fallback_ops"]}


# ---------------------------------------------------------------- smoke test


def reference_outputs(art: Artifact, cfg: PackageConfig, info: dict) -> dict:
    """What the toolchain's own ONNX path (transformers tokenizer, full recompute) gives on the samples."""
    from .evaluate import Runner

    runner = Runner(art.path)
    runner.tokenizer.model_max_length = cfg.max_length
    smoke = {"atol": cfg.atol, "texts": list(cfg.smoke_texts)}
    if art.task == "text-generation":
        return smoke | reference_generation(runner, cfg.smoke_texts[0], cfg.generate_tokens, info["eos_token_id"])
    pairs = None
    if info.get("text_pair"):  # each smoke text paired with the next one
        pairs = smoke["pairs"] = list(cfg.smoke_texts[1:] + cfg.smoke_texts[:1])
    enc = runner.tokenizer(list(cfg.smoke_texts), pairs, padding=True, truncation=True, max_length=cfg.max_length,
                           return_tensors="np")
    batch = {k: v.astype(np.int64) for k, v in enc.items()}
    if art.task == "text-classification":
        smoke["logits"] = runner.logits(batch).astype(float).tolist()
    else:
        hidden = runner.session.run(["last_hidden_state"], _feeds(runner, batch))[0]
        mask = batch["attention_mask"][..., None]
        smoke["embeddings"] = ((hidden * mask).sum(1) / mask.sum(1)).astype(float).tolist()
    return smoke


def reference_generation(runner, prompt: str, tokens: int, eos: int | None) -> dict:
    """Greedy tokens by the decode path the bundle ships: the prompt in one call, then one token a call with the KV
    cache (the whole sequence again each call when the graph has no cache), as predict.py and generate.py do.

    The reference must decode the same way: dynamic int8 computes its activation scales per call, so a 1-token
    cached step and a full recompute of the sequence round differently, and SmolLM2's int8 greedy tokens parted
    after ~10 tokens. A no-cache reference tested that rounding, not the bundle. What the check still tests:
    predict.py's tokenizer (tokenizers vs transformers), its feeds (positions, mask, cache plumbing), model.ort.
    """
    from .parity import empty_past, onnx_feeds

    session, names = runner.session, [o.name for o in runner.session.get_outputs()]
    ids = list(runner.tokenizer(prompt)["input_ids"])
    past = {n: empty_past(i, 1) for n, i in runner.inputs.items() if n.startswith("past_key_values")} or None
    step, new, first = ids, [], None
    for _ in range(tokens):
        enc = {"input_ids": np.array([step], dtype=np.int64),
               "attention_mask": np.ones((1, len(ids) + len(new)), dtype=np.int64)}
        out = dict(zip(names, session.run(None, onnx_feeds(session, enc, past))))
        logits = out["logits"][0, -1].astype(np.float32)
        first = logits if first is None else first
        new.append(int(logits.argmax()))
        if past is not None:
            past = {n: out[n.replace("past_key_values", "present")] for n in past}
            step = new[-1:]
        else:
            step = ids + new
        if new[-1] == eos:
            break
    top = np.argsort(-first)[:5]
    return {"token_ids": new, "first_top5": top.tolist(), "first_top5_logits": first[top].astype(float).tolist(),
            "decode": "kv-cache" if past is not None else "full-recompute"}


def _feeds(runner, batch: dict) -> dict:
    from .parity import onnx_feeds

    return onnx_feeds(runner.session, batch)


def is_bundle(path: str | Path) -> bool:
    """An artifact folder written by `package` (what `verify` checks with a smoke inference too)."""
    return Artifact.is_artifact(Path(path)) and (Path(path) / BUNDLE_FILE).is_file()


def smoke_test(bundle: str | Path, verify_hashes: bool = True) -> dict:
    """Check a bundle: its hashes, then predict.py's code on model.onnx (and model.ort) against the stored outputs.

    Returns {"ok", "problem", "models": {file: max abs diff}, "atol"}; runs only the toolchain's own copy of
    the predict code, never the bundle's predict.py, so checking a bundle runs no code from it.
    """
    from . import bundle_predict

    bundle = Path(bundle)
    if verify_hashes:
        problems = Artifact.load(bundle).verify()
        if problems:
            raise IntegrityError(f"{bundle}: {problems[0]}", "rebuild the bundle; do not ship it")
    _bundle_info(bundle)  # a damaged bundle.json is an IntegrityError, not a KeyError
    check_onnx_file(bundle / "model.onnx")  # before ONNX Runtime opens it: external data stays in the bundle
    # The same function runs on the target itself (`python predict.py --smoke`) and under emulation.
    try:
        return bundle_predict.smoke_check(bundle, threads=1)
    except Exception as exc:  # noqa: BLE001  onnxruntime and tokenizers raise their own types
        raise BadModel(f"{bundle} does not load or run: {(str(exc).splitlines() or [''])[0][:200]}",
                       "rebuild the bundle with toolchain package; do not ship it") from None


def _bundle_info(bundle: Path) -> dict:
    """bundle.json, checked for what the smoke test reads: a damaged one is an IntegrityError, not a KeyError."""
    if not (bundle / BUNDLE_FILE).is_file():
        raise BadModel(f"{bundle} is not a bundle (no {BUNDLE_FILE})", "make one with toolchain package")
    try:
        info = json.loads((bundle / BUNDLE_FILE).read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        info = None
    smoke = info.get("smoke") if isinstance(info, dict) else None
    if not isinstance(smoke, dict) or not {"texts", "atol"} <= set(smoke) or not isinstance(info.get("task"), str):
        raise IntegrityError(f"{bundle / BUNDLE_FILE} is damaged: no smoke section with texts and atol",
                             "rebuild the bundle with toolchain package; do not ship it")
    return info


def _readme(info: dict, name: str) -> str:
    task = info["task"]
    example = ('python predict.py "A charming, moving film." "A waste of two hours."' if task == "text-classification"
               else 'python predict.py --tokens 20 "To be, or not to be"' if task == "text-generation"
               else 'python predict.py "some text"')
    if info.get("text_pair"):  # a sentence-pair classifier: (text, pair) two at a time, or text<TAB>pair lines
        first, second = info["text_pair"]
        example = (f'python predict.py "A man is sleeping." "A person rests."   # ({first}, {second}) pairs, two '
                   "at a time\n    python predict.py --file pairs.tsv   # one text<TAB>pair per line; - reads them "
                   "from stdin")
    else:
        example += "\n    python predict.py --file texts.txt   # one text per line; - reads them from stdin"
    example += "\n    python predict.py --help             # this bundle's labels and options"
    ort_line = ("- `model.ort` + `required_operators.config`: ORT format for a reduced build "
                "(`--include_ops_by_config required_operators.config`), onnxruntime >= "
                f"{info['min_onnxruntime'].get('model.ort')}\n" if "model.ort" in info["min_onnxruntime"] else "")
    t = info.get("target") or {}
    target = (f"Built for `{t['target']}` ({t['runs_on']}): create the session with "
              f"{', '.join(f'`{p}`' for p in t['providers'])}"
              + (f"; inputs are fixed to [1, {t['max_length']}] (one text per call, padded)" if t.get("max_length")
                 else "") + (f"; int8 preset {t['preset']}" if t.get("preset") else "") + ".\n\n" if t else "")
    if task == "text-generation":
        example += ('\n    python generate.py --tokens 64 "To be, or not to be"   # streams tokens with the KV cache'
                    '\n    python generate.py --temperature 0.7 --top-p 0.9 --seed 1 "Once upon a time"')
    genai_line = ("- `genai_config.json`: made by ONNX Runtime GenAI's model builder; `onnxruntime-genai` runs this "
                  "folder as it is (`og.Model('.')`)\n" if info.get("genai") else "")
    return (f"# {name}: {task} bundle\n\n{target}"
            f"Needs only `pip install onnxruntime tokenizers numpy` (onnxruntime >= "
            f"{info['min_onnxruntime']['model.onnx']} for model.onnx).\n\n    {example}\n\n"
            f"- `model.onnx`: opset {info['onnx']['opsets'].get('ai.onnx')}, IR version {info['onnx']['ir_version']}\n"
            f"{ort_line}{genai_line}- `bundle.json`: inputs/outputs, metrics and the machines they were measured on, sha256 of "
            "every file\n- `mobile_readiness.md`: what NNAPI / CoreML would run and what falls back to the CPU\n\n"
            "Check it: `toolchain verify .` (hashes + smoke inference), or `sha256sum` against bundle.json's "
            "`files`.\n")
