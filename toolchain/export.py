"""Export a PyTorch model to ONNX with optimum's exporter, then check ONNX Runtime against PyTorch."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from . import parity
from .artifact import TASKS, Artifact, check_output, write_artifact
from .config import config_to_dict, opt
from .errors import CheckFailed, Unsupported
from .guard import writes_output
from .modeling import ModelSource, infer_task, load_model, load_tokenizer, resolve_model, save_tokenizer, source_hash

# Parity tolerances, as optimum's ATOL_FOR_VALIDATION: fp32 graph rewrites move logits by ~1e-6..1e-4;
# deep decoders with 50k-wide logits accumulate more.
# Weight-only int8/int4 graphs (--backend genai --precision int8/int4): relative L2 error of next-token
# log-probabilities, the bound the quantize stage holds int8 to. Their KV cache is not compared (its error
# follows from the weights'); what a graph costs is perplexity, which evaluate measures.
DEFAULT_RTOL = 0.5
# ... and their next token must agree with PyTorch's on most positions: the relative bound alone passed GenAI's
# SmolLM2 int4 graph (relative L2 0.19) whose next token agreed with PyTorch's on 25% of positions.
MIN_TOP1 = 0.6
DEFAULT_ATOL = {"text-classification": 1e-4, "feature-extraction": 1e-4, "text-generation": 1e-3}
OPTIMUM_TASK = {"text-classification": "text-classification", "feature-extraction": "feature-extraction",
                "text-generation": "text-generation"}


@dataclass(frozen=True)
class ExportConfig:
    task: str | None = opt(None, "Task head to export; inferred from the model's architecture when unset.",
                           choices=TASKS)
    with_past: bool = opt(False, "Export the KV cache as inputs/outputs (text-generation).")
    opset: int | None = opt(None, "ONNX opset; when unset, optimum's for the architecture.")
    atol: float | None = opt(None, "Parity tolerance (max abs diff vs PyTorch); when unset, the task's default.")
    trust_remote_code: bool = False
    allow_pickle: bool = False
    # genai: Llama-family causal LMs, fused GroupQueryAttention + rotary, always with the KV cache;
    # toolchain/genai.py says why it runs apart.
    backend: Literal["optimum", "genai"] = opt("optimum", "optimum's exporter (every task), or genai: ONNX Runtime "
                                                          "GenAI's model builder (Llama-family LMs; GQA + rotary, KV "
                                                          "cache, genai_config.json) in its own cached environment.")
    precision: Literal["fp32", "int8", "int4"] = opt("fp32", "--backend genai: weight-only MatMulNBits int8 / int4, "
                                                             "or fp32.")
    accuracy_level: int | None = opt(None, "--backend genai int8/int4: MatMulNBits compute type, 1 fp32 .. 4 int8 "
                                           "(when unset, 4 on CPU).", choices=(1, 2, 3, 4))
    block_size: int = opt(32, "--backend genai int8/int4: weights per quantization block.",
                          choices=(16, 32, 64, 128, 256))
    min_top1: float = opt(MIN_TOP1, "--backend genai int8/int4: least share of positions whose next token must "
                                    "match PyTorch's (0 keeps a graph that computes another model, e.g. to time it).")

    def __post_init__(self):
        if self.backend not in ("optimum", "genai"):
            raise ValueError(f"backend {self.backend!r} is not one of optimum, genai")
        if self.precision not in ("fp32", "int8", "int4"):
            raise ValueError(f"precision {self.precision!r} is not one of fp32, int8, int4")
        if self.backend == "optimum" and (self.precision != "fp32" or self.accuracy_level is not None):
            raise ValueError("precision and accuracy_level apply to backend genai; quantize optimum's graph with "
                             "the quantize stage")
        if self.backend == "genai" and self.task not in (None, "text-generation"):
            raise ValueError("backend genai builds causal LMs (text-generation) only")
        if self.accuracy_level is not None and self.accuracy_level not in (1, 2, 3, 4):
            raise ValueError("accuracy_level must be 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError("block_size must be 16, 32, 64, 128 or 256")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.with_past and self.task not in (None, "text-generation"):
            raise ValueError("with_past applies to text-generation only")
        if self.opset is not None and not 11 <= self.opset <= 21:
            raise ValueError(f"opset {self.opset} is outside the supported 11..21")
        if self.atol is not None and not self.atol > 0:
            raise ValueError("atol must be positive")
        if not 0 <= self.min_top1 <= 1:
            raise ValueError("min_top1 is a share of positions, between 0 and 1")


@writes_output()
def export(src: str | Path | ModelSource, cfg: ExportConfig, out: str | Path, *, force: bool = False) -> Artifact:
    """Export `src` (built-in name, folder, torch artifact or hub id) to an ONNX artifact at `out`.

    >>> export("minilm", ExportConfig(), "runs/minilm-onnx")  # doctest: +SKIP
    """
    t0 = time.time()  # the lineage times the whole stage (`toolchain info`), not only the write
    check_output(Path(out), force)  # fail now, not after loading and exporting
    source = src if isinstance(src, ModelSource) else resolve_model(src, trust_remote_code=cfg.trust_remote_code)
    config = source.config
    task = cfg.task or (source.artifact.task if source.artifact else infer_task(config))
    if cfg.backend == "genai":
        _genai_ready(source, task)
    if cfg.with_past and task != "text-generation":
        raise Unsupported(f"--with-past needs a text-generation model; {source.spec} is {task}", "drop --with-past")
    with_past = cfg.with_past or cfg.backend == "genai"  # the builder's graph always carries the KV cache
    if with_past:
        _check_past_shapes(source, config)
    model = load_model(source, task, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    atol = cfg.atol or DEFAULT_ATOL[task]
    input_hash = source_hash(source)
    with write_artifact(
        out, stage="export", config=config_to_dict(cfg) | {"source": source.spec}, format="onnx", task=task,
        model_type=config.model_type, parent=source.artifact, force=force, started=t0,
    ) as o:
        o.record.input_hash = input_hash
        started = time.perf_counter()
        if cfg.backend == "genai":
            o.record.metrics["genai"] = _genai_export(source, o.folder, cfg)
        else:
            _optimum_export(model, o.folder, task, cfg)
        o.record.metrics["export_seconds"] = round(time.perf_counter() - started, 3)
        save_tokenizer(tokenizer, o.folder)  # an aliased tokenizer.json (trim-vocab --alias) verbatim
        model.config.save_pretrained(o.folder)
        relative = cfg.precision != "fp32"  # weight-only int8/int4: log-probabilities within a relative L2 error
        atol = cfg.atol or (DEFAULT_RTOL if relative else atol)
        try:
            result = check_export(model, tokenizer, o.folder / "model.onnx", task, with_past, atol, relative,
                                  one_token_steps=cfg.backend == "genai")
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types; the builder's graph may not run
            if cfg.backend != "genai":
                raise
            raise CheckFailed(f"onnxruntime cannot run the GenAI builder's graph: {str(exc).splitlines()[0][-300:]}",
                              "export with --backend optimum") from None
        o.record.metrics["parity"] = result.as_metrics() | {"top1_agreement": result.top1_agreement}
        if relative and result.top1_agreement is not None and result.top1_agreement < cfg.min_top1:
            raise CheckFailed(f"export parity failed: the graph's next token agrees with PyTorch's on "
                              f"{result.top1_agreement:.0%} of positions (at least {cfg.min_top1:.0%} wanted)",
                              "try another precision or accuracy level; the graph computes another model")
        o.record.config["with_past"] = with_past
        if not result.ok:
            raise CheckFailed(
                f"export parity failed: output {result.worst_output!r} differs from PyTorch by "
                f"{'a relative L2 error of ' if relative else ''}{result.max_abs_diff:.3g} (tolerance {atol:g})",
                "raise --atol only if this difference is acceptable, or try another --opset"
                + (" or precision" if cfg.backend == "genai" else ""),
            )
    return Artifact.load(out)


def _genai_ready(source: ModelSource, task: str) -> None:
    from . import genai

    if task != "text-generation":
        raise Unsupported(f"--backend genai builds causal LMs; {source.spec} is {task}", "drop --backend genai")
    if not source.local:
        raise Unsupported(f"--backend genai needs a local model folder; {source.spec} is a hub id",
                          "download the model and pass its folder")
    genai.check_supported(source.config)


def _genai_export(source: ModelSource, folder: Path, cfg: ExportConfig) -> dict:
    """The builder in its own environment (see toolchain/genai.py), on the source's safetensors folder."""
    import tempfile

    from . import genai

    python = genai.builder_python()
    with tempfile.TemporaryDirectory(prefix="genai-build-", dir=folder.parent) as tmp:
        cmd = genai.builder_command(python, Path(source.location), Path(tmp) / "out", Path(tmp) / "cache",
                                    cfg.precision, cfg.accuracy_level, cfg.block_size)
        log = genai.run_builder(cmd)
        files = genai.collect(Path(tmp) / "out", folder)
        fixed = genai.fix_cache_dims(folder / "model.onnx")
    return {"builder": genai.BUILDER_PINS[1], "transformers": genai.BUILDER_PINS[2], "precision": cfg.precision,
            "accuracy_level": None if cfg.precision == "fp32" else (cfg.accuracy_level or 4),
            "block_size": None if cfg.precision == "fp32" else cfg.block_size, "files": files,
            "extra_options": cmd[cmd.index("--extra_options") + 1:], "cache_dims_set": fixed,
            "log_tail": [line for line in log.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line][-4:]}


def _optimum_export(model, folder: Path, task: str, cfg: ExportConfig) -> None:
    from optimum.exporters.onnx import onnx_export_from_model

    optimum_task = OPTIMUM_TASK[task] + ("-with-past" if cfg.with_past else "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow are expected
        # optimum validates too, but on random ids and only one shape; we check real text below.
        onnx_export_from_model(model, folder, task=optimum_task, opset=cfg.opset, do_validation=False)
    model.eval()  # the TorchScript exporter can leave modules in train mode (dropout on)


def check_export(model, tokenizer, onnx_path: Path, task: str, with_past: bool, atol: float,
                 relative: bool = False, one_token_steps: bool = False) -> parity.ParityResult:
    """Compare ONNX Runtime with PyTorch on real text at each of parity.SHAPES (relative: log-probabilities by
    relative L2 error, for weight-only quantized graphs).

    `one_token_steps`: the graph takes several tokens only from an empty cache and one token a call after
    (ONNX Runtime's GroupQueryAttention, as GenAI's builder emits it: "batch_size must be 1 when sequence_length
    > 1 and past context is given"), so each shape checks the prompt from an empty cache and a 1-token step.
    That graph has no position_ids: GroupQueryAttention reads the attention mask as each row's length only
    (seqlens_k = its sum - 1), placing a row's tokens at positions 0..length-1 and attending to keys below its
    length, so a padded batch must be padded on the right. Left padding (how Hugging Face batches generation)
    makes it attend to the padding and miss the row's last tokens: SmolLM2's fp32 graph, exact on unpadded rows,
    was off by 28.6 on the left-padded batch (the tiny test models fill every row, so they never showed it).
    """
    from .runtime import make_session

    session = make_session(onnx_path)
    if task == "text-generation":  # how batched generation pads; GroupQueryAttention's graph: see above
        tokenizer.padding_side = "right" if one_token_steps else "left"
    results, same, scored = [], 0, 0
    for batch, seq in parity.SHAPES:
        enc = parity.tokenize(tokenizer, batch, seq)
        checks = []
        if with_past and one_token_steps:
            checks.append(_torch_last_token_step(model, enc, session))
        elif with_past:
            checks.append(_torch_with_past(model, enc, session, parity.PAST_PREFIX) + (None,))
        if one_token_steps or not with_past:
            past = {i.name: parity.empty_past(i, batch) for i in session.get_inputs()
                    if i.name.startswith("past_key_values")}
            feeds = parity.onnx_feeds(session, enc, past)
            plain = {k: v for k, v in feeds.items() if not k.startswith("past_key_values")}
            checks.append((_torch_outputs(model, plain, task), feeds, enc["attention_mask"], None))
        names = [o.name for o in session.get_outputs()]
        for ref, feeds, valid, full in checks:
            got = dict(zip(names, session.run(None, feeds)))
            if task == "text-generation":  # next-token agreement at every real position
                keep = valid.astype(bool)
                same += int((ref["logits"].argmax(-1) == got["logits"].argmax(-1))[keep].sum())
                scored += int(keep.sum())
            if relative:  # held on what the model outputs; its KV cache is its own state (see DEFAULT_RTOL)
                ref, got = parity._log_probs({"logits": ref["logits"]}), parity._log_probs(got)
            results.append(parity.compare(parity.mask_padding(ref, valid, full), parity.mask_padding(got, valid, full),
                                          atol, relative))
    merged = parity.merge(results)
    merged.top1_agreement = same / scored if scored else None  # causal LMs; export holds quantized graphs to it
    return merged


def _torch_outputs(model, feeds: dict, task: str) -> dict:
    import torch

    kwargs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.inference_mode():
        out = model(**kwargs)
    if task == "feature-extraction":
        return {"last_hidden_state": out.last_hidden_state.numpy()}
    return {"logits": out.logits.numpy()}


def _torch_with_past(model, enc: dict, session, p: int):
    """Run a `p`-token prefix through PyTorch to build the cache, then compare the next tokens' step."""
    import torch

    mask = enc["attention_mask"]
    pos = parity.position_ids(mask)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with torch.inference_mode():
        first = model(input_ids=t(enc["input_ids"][:, :p]), attention_mask=t(mask[:, :p]),
                      position_ids=t(pos[:, :p]), use_cache=True)
        past = {}
        for i, (k, v) in enumerate(_legacy(first.past_key_values)):
            past[f"past_key_values.{i}.key"] = k.numpy().copy()
            past[f"past_key_values.{i}.value"] = v.numpy().copy()
        second = model(input_ids=t(enc["input_ids"][:, p:]), attention_mask=t(mask), position_ids=t(pos[:, p:]),
                       past_key_values=first.past_key_values, use_cache=True)
    ref = {"logits": second.logits.numpy()}
    for i, (k, v) in enumerate(_legacy(second.past_key_values)):
        ref[f"present.{i}.key"], ref[f"present.{i}.value"] = k.numpy(), v.numpy()
    step = {"input_ids": enc["input_ids"][:, p:], "attention_mask": mask}
    feeds = parity.onnx_feeds(session, step, past)
    return ref, feeds, mask[:, p:]


def _torch_last_token_step(model, enc: dict, session):
    """The 1-token step of a right-padded batch, as GroupQueryAttention takes it: each row's last real token,
    fed with the cache of the tokens before it and the row's attention mask (its length), against PyTorch's
    logits at that token and its cache; the cache is compared where the mask is 1, the row's own positions."""
    import torch

    ids, mask = enc["input_ids"], enc["attention_mask"]
    last = mask.sum(1) - 1  # right padding: a row's tokens are 0..last
    if not (mask == (np.arange(mask.shape[1]) <= last[:, None])).all():
        raise ValueError("the 1-token step check needs a right-padded batch")
    rows = np.arange(len(ids))
    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), use_cache=True)
    ref = {"logits": out.logits.numpy()[rows, last][:, None]}
    past = {}
    for i, (k, v) in enumerate(_legacy(out.past_key_values)):
        ref[f"present.{i}.key"], ref[f"present.{i}.value"] = k.numpy(), v.numpy()
        # Entries at and after a row's last token are not read: the step writes its own there.
        past[f"past_key_values.{i}.key"] = k.numpy()[:, :, :-1].copy()
        past[f"past_key_values.{i}.value"] = v.numpy()[:, :, :-1].copy()
    step = {"input_ids": np.ascontiguousarray(ids[rows, last][:, None]), "attention_mask": mask}
    feeds = parity.onnx_feeds(session, step, past)
    return ref, feeds, np.ones((len(ids), 1), dtype=mask.dtype), mask


def _legacy(cache):
    if hasattr(cache, "to_legacy_cache"):
        return cache.to_legacy_cache()
    return cache


def _check_past_shapes(source: ModelSource, config) -> None:
    from .prune.families import with_past_problem

    problem = with_past_problem(config)
    if problem:
        raise Unsupported(f"{source.spec} cannot be exported with its KV cache: {problem}",
                          "export without --with-past, or prune a Llama model with the same head count in every "
                          "layer (toolchain prune --ranking layer)")
