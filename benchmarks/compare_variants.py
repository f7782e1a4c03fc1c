"""The models compare.py measures: the toolchain's, built by its own stages, and what a user would pick instead.

The toolchain's variants of the teacher are made by the steps of models/minilm-rotten-tomatoes.yaml
(export, optimize, quantize dynamic, quantize static with the accuracy loop), run on the teacher with
the recipe runner, so they resume like any recipe run. The alternatives are made the way a user would
make them from the libraries' documentation: Optimum's export / ORTOptimizer / ORTQuantizer, and ONNX
Runtime's quantize_static with its defaults. They are written as artifacts (manifest, lineage, hashes)
so that evaluate and bench read them like any other, and the manifest says how they were made.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from toolchain.artifact import Artifact, write_artifact
from toolchain.errors import InputNotFound, ToolchainError
from toolchain.export import MIN_TOP1
from toolchain.modeling import resolve_model, source_hash

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER_RECIPE = ROOT / "models" / "minilm-rotten-tomatoes.yaml"
LM_RECIPE = ROOT / "models" / "smollm2-hamlet.yaml"
DATA = "rotten-tomatoes"
TEACHER_STEPS = ("onnx", "fused", "int8-dynamic", "int8-static")  # the recipe's steps after pruning
LM_STEPS = ("onnx", "int8", "int4")
# Tokenizer and config files beside an ONNX model: what evaluate and bench read besides model.onnx.
SIDECARS = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
            "merges.txt", "vocab.json", "added_tokens.json", "generation_config.json")


@dataclass
class Variant:
    """One row of the comparison: a model to evaluate and time, or why there is none."""

    key: str  # stable id used in the JSON and the plots
    name: str  # what the table calls it
    how: str  # how it was made, in a few words
    path: Path | str | None = None  # an artifact or model folder, or a built-in model name
    torch_int8: bool = False  # the torch model at `path`, through torch.ao dynamic int8 at load time
    error: str | None = None  # why it could not be built (it still gets a table row that says so)
    notes: list[str] = dataclasses.field(default_factory=list)


def teacher_path(teacher: str | None, run: Path | None) -> Path:
    """--teacher, else the recipe run's fine-tuned teacher; a clear error with the command that makes one."""
    if teacher:
        path = Path(teacher)
        if not (path / "config.json").is_file():
            raise InputNotFound(f"{path} is not a model folder (no config.json)", "pass a fine-tuned classifier folder")
        return path
    if run is not None and Artifact.is_artifact(run / "teacher"):
        return run / "teacher"
    raise InputNotFound(
        "no fine-tuned teacher: no --teacher given and no recipe run folder with a teacher step "
        f"({run or 'runs/minilm'}/teacher)",
        "toolchain run models/minilm-rotten-tomatoes.yaml --out runs/minilm   (or pass --teacher PATH)")


def final_variant(run: Path | None, final: str | None) -> Variant:
    """The recipe's final artifact: --final, else the one the run's report recommends (what its bundle ships)."""
    v = Variant("final", "toolchain final", "")
    if final:
        v.path = Path(final)
    elif run is None or not (run / "recipe.json").is_file():
        v.error = "no recipe run folder: toolchain run models/minilm-rotten-tomatoes.yaml --out runs/minilm"
        return v
    else:
        try:
            from toolchain.report import recommend

            v.path = run / recommend(run)
        except ToolchainError as exc:
            v.error = f"{run}: {exc.problem}"
            return v
    v.how = lineage_summary(v.path)
    return v


def untrimmed_variant(final: Variant, work: Path, quick: bool, echo) -> Variant | None:
    """The final artifact's pipeline without its trim-vocab step: the recipe's steps after trimming, run on
    the artifact trimming read, so the table shows what trimming changed (None when nothing was trimmed)."""
    if final.path is None or not Artifact.is_artifact(final.path):
        return None
    lineage = Artifact.load(final.path).manifest.lineage
    trim = next((r for r in lineage if r.stage == "trim-vocab"), None)
    if trim is None:
        return None
    from toolchain.recipe import load_recipe

    steps = load_recipe(CLASSIFIER_RECIPE, quick=quick).steps
    trim_step = next((s for s in steps if s.stage == "trim-vocab"), None)
    v = Variant("untrimmed", "toolchain final, untrimmed", "the same steps without trim-vocab (the control)")
    names = ("onnx", "fused", final.path.name)
    source = final.path.parent / trim_step.inputs[0] if trim_step and trim_step.inputs else None
    if source is None or not Artifact.is_artifact(source) or final.path.name not in {s.name for s in steps}:
        v.error = f"{final.path} is not a step of {CLASSIFIER_RECIPE.name} run after its trim-vocab step"
        return v
    overrides = {"int8-static": {"max_eval_samples": 200, "calibration_samples": 64}} if quick else None
    made = run_steps(CLASSIFIER_RECIPE, names, str(source), work / ("untrimmed-quick" if quick else "untrimmed"),
                     quick, echo, overrides)
    out = _from_made(v.key, made[final.path.name], v.name, v.how)
    if out.path is not None:
        out.how = lineage_summary(out.path)
    return out


def lineage_summary(path: Path) -> str:
    """The stages that made an artifact, in order (e.g. finetune > distill > prune > export > optimize > quantize)."""
    if not Artifact.is_artifact(path):
        return "model folder"
    records = Artifact.load(path).manifest.lineage

    def name(r) -> str:
        if r.stage == "quantize" and r.config.get("mode"):
            return f"quantize {r.config['mode']}"
        return "prune (+KD recovery)" if r.stage == "prune" and "recovery" in r.metrics else r.stage

    return " > ".join(name(r) for r in records)


def recipe_steps(recipe_file: Path, names: tuple[str, ...], quick: bool, overrides: dict | None = None):
    """Steps `names` of a shipped recipe with their configs, the first re-pointed at the recipe's model."""
    from toolchain.recipe import MODEL, load_recipe

    recipe = load_recipe(recipe_file, quick=quick)
    steps = []
    for step in recipe.steps:
        if step.name not in names:
            continue
        inputs = step.inputs if steps else (MODEL,)  # the first step reads the model we pass
        cfg = dataclasses.replace(step.config, **(overrides or {}).get(step.name, {}))
        steps.append(dataclasses.replace(step, inputs=inputs, config=cfg))
    missing = [n for n in names if n not in {s.name for s in steps}]
    if missing:
        raise ToolchainError(f"{recipe_file} has no step {missing[0]!r}", "restore the shipped recipe")
    return recipe, steps


def run_steps(recipe_file: Path, names: tuple[str, ...], model: str, out: Path, quick: bool,
              echo: Callable[[str], None], overrides: dict | None = None) -> dict[str, Path | str]:
    """Run the recipe's steps `names` on `model` into `out` (resuming); step -> artifact path, or the error."""
    from toolchain.recipe import run

    recipe, steps = recipe_steps(recipe_file, names, quick, overrides)
    made: dict[str, Path | str] = {}
    # One step at a time, so a step that fails (say, the accuracy loop finds no int8 model within its
    # budget) becomes that variant's error and the steps that do not depend on it still run.
    for step in steps:
        if any(isinstance(made.get(i), str) for i in step.inputs):
            made[step.name] = f"its input {step.inputs[0]} failed"
            continue
        one = dataclasses.replace(recipe, model=model, steps=tuple(s for s in steps if s.name in made) + (step,),
                                  report=dataclasses.replace(recipe.report, original=None))
        try:
            run(one, out, echo=echo)
            made[step.name] = out / step.name
        except ToolchainError as exc:
            made[step.name] = exc.problem
            echo(f"{step.name}: failed: {exc.problem}")
    return made


def teacher_variants(teacher: Path, work: Path, quick: bool, echo) -> list[Variant]:
    """The toolchain's ONNX fp32 export, dynamic int8 and accuracy-aware static int8 of the teacher.

    --quick scores the accuracy loop on part of the validation split, in a folder of its own, so a quick
    run never replaces (or is mistaken for) the full run's artifacts.
    """
    overrides = {"int8-static": {"max_eval_samples": 200, "calibration_samples": 64}} if quick else None
    out = work / ("teacher-quick" if quick else "teacher")
    made = run_steps(CLASSIFIER_RECIPE, TEACHER_STEPS, str(teacher), out, quick, echo, overrides)
    spec = [("tc-onnx", "onnx", "toolchain ONNX fp32", "toolchain export (optimum exporter, parity-checked)"),
            ("tc-int8-dynamic", "int8-dynamic", "toolchain int8 dynamic",
             "toolchain optimize (fusions) > quantize dynamic (CPU preset, per-channel)"),
            ("tc-int8-static", "int8-static", "toolchain int8 static",
             "toolchain optimize > quantize static, accuracy loop (<= 1 point on validation)")]
    return [_from_made(key, made[step], name, how) for key, step, name, how in spec]


def _from_made(key: str, made: Path | str, name: str, how: str) -> Variant:
    if isinstance(made, str):
        return Variant(key, name, how, error=made)
    return Variant(key, name, how, path=made)


def _quantized(v: Variant, parent: Artifact, cfg, out: Path, message: str, echo) -> Variant:
    """`v` pointing at `parent` quantized with `cfg` into `out` (reused when unchanged), or carrying the error."""
    from toolchain.config import config_to_dict
    from toolchain.quantize import quantize

    try:
        if not _reusable(out, "quantize", config_to_dict(cfg), parent):
            echo(message)
            quantize(parent, cfg, out, force=Artifact.is_artifact(out))
    except ToolchainError as exc:
        v.error = exc.problem
        return v
    v.path = out
    return v


def _reusable(out: Path, stage: str, config: dict, parent: Artifact | None) -> bool:
    """An artifact at `out` made by `stage` with `config` from this `parent`, unchanged since: skip rebuilding it."""
    if not Artifact.is_artifact(out):
        return False
    art = Artifact.load(out)
    record = art.manifest.lineage[-1]
    parent_hash = parent.content_hash if parent else None
    return (not art.verify() and record.stage == stage and record.config == config
            and record.input_hash == parent_hash)


def _as_artifact(model_file: Path, sidecars_from: Path, out: Path, stage: str, config: dict, parent: Artifact | None,
                 metrics: dict) -> Artifact:
    """Wrap an ONNX file made outside the toolchain as an artifact whose lineage says how it was made."""
    with write_artifact(out, stage=stage, config=config, format="onnx", task="text-classification",
                        model_type=parent.manifest.model_type if parent else "bert", parent=parent,
                        force=Artifact.is_artifact(out)) as o:
        shutil.copy2(model_file, o.folder / "model.onnx")
        for name in SIDECARS:
            if (sidecars_from / name).is_file():
                shutil.copy2(sidecars_from / name, o.folder / name)
        o.record.metrics.update(metrics)
    return Artifact.load(out)


def optimum_preset(isa: dict, arch: str) -> str:
    """The AutoQuantizationConfig preset that fits this CPU, as Optimum's documentation has users choose it."""
    if arch.lower() in ("arm64", "aarch64") or isa.get("neon"):
        return "arm64"
    if isa.get("avx512") and isa.get("vnni"):
        return "avx512_vnni"
    return "avx512" if isa.get("avx512") else "avx2"


def optimum_variant(teacher: Path, work: Path, preset: str, echo) -> Variant:
    """Optimum as its docs show it: export, ORTOptimizer O2, ORTQuantizer dynamic with the CPU's preset.

    O2 then quantize fails on BERT graphs ("Unable to find data type for weight_name"); a user then
    quantizes the unoptimized export, and so do we, saying so in the row.
    """
    v = Variant("optimum", "Optimum pipeline", f"optimum export > ORTOptimizer O2 > ORTQuantizer {preset} dynamic")
    out = work / "optimum-int8"
    parent = Artifact.load(teacher) if Artifact.is_artifact(teacher) else None
    config = {"export": "ORTModelForSequenceClassification.from_pretrained(export=True)", "optimization": "O2",
              "quantization": f"AutoQuantizationConfig.{preset}(is_static=False, per_channel=True)",
              "teacher_hash": source_hash(resolve_model(str(teacher)))}  # a plain folder has no artifact hash
    try:
        if not _reusable(out, "optimum-pipeline", config, parent):
            model_file, metrics = _run_optimum(teacher, work / "optimum", preset, echo)
            _as_artifact(model_file, teacher, out, "optimum-pipeline", config, parent, metrics)
    except Exception as exc:  # a library failure is this row's result, not the end of the comparison
        v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return v
    v.path = out
    metrics = Artifact.load(out).manifest.lineage[-1].metrics
    if metrics.get("o2_quantize_error"):
        v.how = f"optimum export > ORTQuantizer {preset} dynamic (O2 first failed)"
        v.notes.append(f"ORTQuantizer failed on the O2 graph ({metrics['o2_quantize_error'][:100]}...): "
                       "the unoptimized export was quantized instead, as a user would")
    return v


def _run_optimum(teacher: Path, scratch: Path, preset: str, echo) -> tuple[Path, dict]:
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig

    shutil.rmtree(scratch, ignore_errors=True)
    metrics, t0 = {}, time.perf_counter()
    echo("optimum: export")
    ORTModelForSequenceClassification.from_pretrained(teacher, export=True).save_pretrained(scratch / "export")
    metrics["export_s"] = round(time.perf_counter() - t0, 1)
    echo("optimum: ORTOptimizer O2")
    ORTOptimizer.from_pretrained(scratch / "export").optimize(AutoOptimizationConfig.O2(), scratch / "o2")
    qconfig = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=True)
    echo(f"optimum: ORTQuantizer {preset} dynamic")
    try:
        quantizer = ORTQuantizer.from_pretrained(scratch / "o2", file_name="model_optimized.onnx")
        return quantizer.quantize(qconfig, scratch / "o2-int8") / "model_optimized_quantized.onnx", metrics
    except Exception as exc:  # noqa: BLE001 - the documented failure: record it, fall back as a user would
        metrics["o2_quantize_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    echo("optimum: O2 model failed to quantize; quantizing the unoptimized export")
    quantizer = ORTQuantizer.from_pretrained(scratch / "export")
    quantizer.quantize(qconfig, scratch / "int8")
    metrics["quantize_s"] = round(time.perf_counter() - t0 - metrics["export_s"], 1)
    return scratch / "int8" / "model_quantized.onnx", metrics


def naive_static_variant(onnx_export: Variant, work: Path, samples: int, max_length: int, echo) -> Variant:
    """ONNX Runtime's quantize_static with every default (QDQ, MinMax, all ops) on ~100 train sentences."""
    v = Variant("ort-static", "ORT static int8 (naive)",
                f"ORT quantize_static, defaults (QDQ, MinMax, all ops), {samples} train sentences")
    if onnx_export.path is None:
        v.error = f"needs the teacher's ONNX export ({onnx_export.error})"
        return v
    parent = Artifact.load(onnx_export.path)
    out = work / "ort-static-int8"
    config = {"quantize_static": "defaults", "calibrate_method": "MinMax", "samples": samples,
              "max_length": max_length, "data": f"{DATA} train"}
    try:
        if not _reusable(out, "ort-static-naive", config, parent):
            echo(f"ORT quantize_static on {samples} calibration sentences")
            model_file, metrics = _run_naive_static(parent, work / "ort-static", samples, max_length)
            _as_artifact(model_file, parent.path, out, "ort-static-naive", config, parent, metrics)
    except Exception as exc:  # noqa: BLE001 - a failure is this row's result
        v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return v
    v.path = out
    return v


def _run_naive_static(parent: Artifact, scratch: Path, samples: int, max_length: int) -> tuple[Path, dict]:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    from toolchain.data import calibration_batches, load_classification
    from toolchain.modeling import ModelSource, load_tokenizer

    tok = load_tokenizer(ModelSource(str(parent.path), str(parent.path), local=True))
    names = {i.name for i in onnx.load(str(parent.onnx_path), load_external_data=False).graph.input}
    feeds = [{k: v for k, v in b.items() if k in names}
             for b in calibration_batches(tok, load_classification(DATA), samples, max_length)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    t0 = time.perf_counter()
    quantize_static(str(parent.onnx_path), str(scratch / "model.onnx"), Reader())
    return scratch / "model.onnx", {"quantize_s": round(time.perf_counter() - t0, 1), "calibration_samples": len(feeds)}


def lm_variants(lm: str, lm_run: Path | None, work: Path, quick: bool, echo, genai: bool = True) -> list[Variant]:
    """PyTorch eager, the toolchain's fp32 ONNX export (with KV cache) and its int8, from models/smollm2-hamlet.yaml;
    with `genai`, ONNX Runtime GenAI's builder at fp32 / int8 / int4 and the toolchain's weight-only int8 / int4
    of the builder's fp32 graph.

    When the recipe's int8 step fails its parity check, that row says so, and one more row measures the
    same quantization built with the check loosened: what int8 would have cost, never what ships.
    """
    if lm_run is not None and all(Artifact.is_artifact(lm_run / s) for s in LM_STEPS):
        made: dict[str, Path | str] = {s: lm_run / s for s in LM_STEPS}
    else:
        made = run_steps(LM_RECIPE, LM_STEPS, lm, work / "lm", quick, echo)
    rows = [Variant("lm-torch", "PyTorch eager fp32", "transformers, eager (the baseline)", path=lm),
            _from_made("lm-onnx", made["onnx"], "toolchain ONNX fp32", "toolchain export with KV cache"),
            _from_made("lm-int8", made["int8"], "toolchain int8",
                       "the smollm2 recipe's int8 step: quantize --mode weight-only --bits 8 on the optimum export "
                       "(one shared table for the tied embedding)"),
            _from_made("lm-int4", made["int4"], "toolchain int4",
                       "the smollm2 recipe's int4 step: minmax int4 on the optimum export, the tied head at int8 "
                       "(the loop's first round)")]
    if rows[2].error and "differs from float32" in rows[2].error and rows[1].path is not None:
        rows.append(_loosened_int8(Path(rows[1].path), work / "lm" / f"int8-rtol{LOOSE_RTOL:g}", quick, echo))
    if not genai:
        return rows
    rows += [genai_variant(lm, p, work / "lm" / f"genai-{p}", echo) for p in GENAI_PRECISIONS]
    base = rows[-len(GENAI_PRECISIONS)]  # GenAI's fp32 graph: what the toolchain's weight-only rows quantize
    return rows + [weight_only_variant(base, key, name, cfg, work / "lm" / key, echo)
                   for key, (name, cfg) in WEIGHT_ONLY.items()]


# The toolchain's weight-only quantization (toolchain/quantize/weight_only.py) of GenAI's fp32 graph: the
# fused GroupQueryAttention graph decodes faster than optimum's, so it is the export worth quantizing.
# int4: minmax keeps each block's minimum exactly, so the built-in's GGUF Q4_1 weights come back as they were
# (hqq's float zero points ran ~70x slower in ORT 1.32's CPU kernel: not a decode contender). The tied head was
# Q8_0 in the GGUF: "head int8" lets the loop's first round (the lowest output SQNR) put it at 8 bits. minmax's
# extra nodes (the minima) cost decode speed; "gptq" is int4 with integer zero points and no extra node, as GenAI's
# int4, in blocks of 64: a scale and zero point per 64 weights instead of 32, 11% fewer bytes than block 32, which
# decodes at parity with GenAI's int4 (act-order GPTQ; --bias-correction would add 0.05 perplexity points for ~3%
# of decode speed: docs/results.md).
WEIGHT_ONLY = {"lm-wo-int8": ("toolchain weight-only int8", {"mode": "weight-only", "bits": 8}),
               "lm-wo-int4": ("toolchain weight-only int4", {"mode": "weight-only", "bits": 4, "algorithm": "minmax"}),
               "lm-wo-int4-head8": ("toolchain weight-only int4, head int8",
                                    {"mode": "weight-only", "bits": 4, "algorithm": "minmax",
                                     "max_perplexity_increase": 0.02, "max_eval_tokens": 1024, "max_iterations": 2}),
               "lm-wo-int4-gptq": ("toolchain weight-only int4, gptq, block 64",
                                   {"mode": "weight-only", "bits": 4, "algorithm": "gptq", "block_size": 64})}


def weight_only_variant(base: Variant, key: str, name: str, settings: dict, out: Path, echo) -> Variant:
    """toolchain quantize --mode weight-only on GenAI's fp32 graph (reused when built with this config)."""
    from toolchain.quantize import QuantizeConfig

    bits, algo = settings["bits"], settings.get("algorithm", "rtn")
    loop = settings.get("max_perplexity_increase")
    v = Variant(key, name,
                f"toolchain quantize --mode weight-only --bits {bits}" + (f" --algorithm {algo}" if bits == 4 else "")
                + (f" --block-size {settings['block_size']}" if settings.get("block_size") else "")
                + (" --bias-correction" if settings.get("bias_correction") else "")
                + (f" --max-perplexity-increase {loop:g}" if loop else "") + " on GenAI's fp32 graph")
    if base.path is None:
        v.error = f"no GenAI fp32 graph to quantize ({base.error})"
        return v
    return _quantized(v, Artifact.load(base.path), QuantizeConfig(**settings), out, f"build {v.name}", echo)


GENAI_PRECISIONS = ("fp32", "int8", "int4")
GENAI_HOW = {"fp32": "onnxruntime-genai 0.18 model builder, fp32 (GQA + rotary, KV cache)",
             "int8": "the builder's weight-only int8 (MatMulNBits, RTN, block 32, accuracy level 4)",
             "int4": "the builder's weight-only int4 (MatMulNBits, default RTN, block 32, accuracy level 4)"}


def genai_variant(lm: str, precision: str, out: Path, echo) -> Variant:
    """ONNX Runtime GenAI's model builder at `precision`, as toolchain export --backend genai builds it (parity
    checked against PyTorch, a manifest like every artifact); reused when already built with that config."""
    from toolchain.export import ExportConfig, export

    v = Variant(f"lm-genai-{precision}", f"ORT GenAI builder {precision}", GENAI_HOW[precision])
    cfg = ExportConfig(backend="genai", precision=precision)
    try:
        if not _built(out, precision):
            echo(f"build {v.name}")
            try:
                export(lm, cfg, out, force=Artifact.is_artifact(out))
            except ToolchainError as exc:
                if "next token agrees" not in exc.problem:
                    raise
                # The builder's int4 of SmolLM2 computes another model (its weights were 4-bit already and are
                # rounded again): still what a GenAI user would ship, so it is timed and scored, marked as such.
                echo(f"{v.name}: {exc.problem}; building it again without that check, to measure it")
                export(lm, dataclasses.replace(cfg, min_top1=0.0), out, force=Artifact.is_artifact(out))
    except ToolchainError as exc:
        v.error = exc.problem
        return v
    top1 = (Artifact.load(out).manifest.lineage[-1].metrics.get("parity") or {}).get("top1_agreement")
    if top1 is not None and top1 < MIN_TOP1:
        v.how += f"; fails the export's next-token check ({top1:.0%} agree with PyTorch): measured, not shippable"
    v.path = out
    return v


def _built(out: Path, precision: str) -> bool:
    """A GenAI export of this precision already at `out`, intact."""
    if not Artifact.is_artifact(out) or Artifact.load(out).verify():
        return False
    config = Artifact.load(out).manifest.lineage[-1].config
    return {k: config.get(k) for k in ("backend", "precision")} == {"backend": "genai", "precision": precision}


LOOSE_RTOL = 2.0  # the quantize stage's parity tolerance is relative L2 error 0.5 per output


def _loosened_int8(onnx: Path, out: Path, quick: bool, echo) -> Variant:
    """The recipe's int8 step with its parity tolerance at LOOSE_RTOL, to measure what it would cost."""
    v = Variant("lm-int8-loose", f"toolchain int8, parity check at {LOOSE_RTOL:g}",
                f"the same quantize step with rtol {LOOSE_RTOL:g}: failed the default check, not shippable")
    _, (step,) = recipe_steps(LM_RECIPE, ("int8",), quick)
    cfg = dataclasses.replace(step.config, rtol=LOOSE_RTOL)
    return _quantized(v, Artifact.load(onnx), cfg, out,
                      f"int8 failed its parity check: building it again with rtol {LOOSE_RTOL:g} to measure it", echo)
