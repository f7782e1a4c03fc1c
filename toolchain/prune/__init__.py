"""Prune a transformer: unstructured magnitude sparsity, or structured removal of heads, FFN neurons
and whole layers that physically shrinks the tensors.

Structured pruning is checked twice before anything is written: the shrunk model must compute
what the original computes with the same units masked (zeroed), and the saved folder must reload
through `toolchain.modeling.load_model` to the same outputs. Unstructured pruning reports its
sparsity and compressed file size, and says that dense runtimes gain no speed from it.

>>> prune("runs/teacher", PruneConfig(heads=0.25, ffn=0.5), "runs/pruned")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..artifact import TASKS, Artifact, check_output, recovery_scratch, resumable, write_artifact
from ..config import config_to_dict, opt, resolve_max_length
from ..errors import CheckFailed, DataError, Unsupported
from ..guard import writes_output
from ..modeling import ModelSource, infer_task, load_model, load_tokenizer, resolve_model, save_tokenizer, source_hash

# Both checks run in float64, where summing the same terms in another order (a narrower GEMM, a
# different attention kernel) moves outputs by ~1e-12: anything near these tolerances is a real bug.
# In float32 the same reordering moves SmolLM2's logits by ~2e-3, too close to a real error to tell.
SURGERY_ATOL = 1e-6  # shrunk model vs the original with the same units masked
RELOAD_ATOL = 1e-6  # saved and reloaded through load_model vs the model in memory
SCOPES = ("attention", "ffn", "embeddings", "classifier")  # unstructured.py's groups
DEFAULT_DATA = {"text-generation": "hamlet"}  # everything else calibrates on rotten-tomatoes


@dataclass(frozen=True)
class PruneConfig:
    # Unstructured: set sparsity or threshold. Zeros shrink the compressed file, never the runtime.
    sparsity: float | None = opt(None, "Unstructured: fraction of in-scope weights to zero, smallest |w| first.")
    threshold: float | None = opt(None, "Unstructured: zero the in-scope weights with |w| below this.")
    granularity: Literal["global", "layer"] = opt("global", "Unstructured: rank |w| across all scoped matrices "
                                                            "(global) or within each (layer).")
    # Embeddings and classifier hurt accuracy most, so they are opt-in.
    scope: tuple[str, ...] = opt(("attention", "ffn"), f"Unstructured: groups to prune, some of {', '.join(SCOPES)}.")
    modules: tuple[str, ...] = opt((), "Unstructured: module names or fnmatch patterns to prune instead of --scope.")
    # Structured: units are physically removed, so dense runtimes do get faster.
    heads: float = opt(0.0, "Structured: fraction of attention heads to remove (GQA: whole key/value groups).")
    ffn: float = opt(0.0, "Structured: fraction of FFN intermediate neurons to remove.")
    heads_per_layer: tuple[int, ...] | None = opt(None, "Structured: query heads to keep in each layer, e.g. "
                                                        "9,9,9,9,9,9 (instead of --heads).")
    ffn_per_layer: tuple[int, ...] | None = opt(None, "Structured: FFN neurons to keep in each layer (instead of "
                                                      "--ffn).")
    layers: int = opt(0, "Structured: whole layers to remove, least important first.")
    drop_layers: tuple[int, ...] = opt((), "Structured: layer indices to remove, e.g. 1,3 (instead of --layers).")
    ranking: Literal["layer", "global"] = opt("layer", "Apply ratios within each layer (uniform shapes) or rank "
                                                       "units across layers.")
    importance: Literal["magnitude", "taylor", "activation"] = opt(
        "magnitude", "How units are ranked: weight norms, or calibration data (taylor, activation).")
    empty_layer: Literal["refuse", "drop"] = opt("refuse", "A layer left with no heads or no FFN neurons: error "
                                                           "(refuse) or remove the layer (drop).")
    data: str | None = None  # calibration and recovery data
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    validation_data: str | None = None  # recovery's validation split, in a file of its own
    test_data: str | None = None
    split_column: str | None = "split"
    # A few batches suffice for a ranking.
    calibration_samples: int = opt(32, "Calibration examples for taylor / activation importance.")
    max_length: int | None = None  # tokens per calibration example (and recovery)
    recover: bool = opt(False, "Then distil from the unpruned model to win back accuracy; the pruned model stays "
                               "at OUT-pruned.")
    recover_epochs: int = opt(1, "Epochs of recovery distillation (the student starts from the teacher's weights).")
    # Rotten-tomatoes' one epoch is 319 updates already (toolchain/schedule.py).
    recover_min_steps: int = opt(300, "Raise recovery epochs until this many updates, best epoch kept (0: off).")
    task: str | None = opt(None, choices=TASKS)
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @property
    def kind(self) -> str:
        return "unstructured" if self.sparsity is not None or self.threshold is not None else "structured"

    def __post_init__(self):
        for name in ("sparsity", "heads", "ffn"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} {value} is outside [0, 1): it is the fraction to remove")
        if self.sparsity is not None and self.threshold is not None:
            raise ValueError("set sparsity or threshold, not both")
        if self.threshold is not None and not self.threshold >= 0:
            raise ValueError("threshold must be >= 0")
        bad = [s for s in self.scope if s not in SCOPES]
        if bad or not (self.scope or self.modules):
            raise ValueError(f"scope {bad[0] if bad else '()'!r} is not one of {', '.join(SCOPES)}")
        self._check_structured()
        if not 1 <= self.calibration_samples <= 10_000 or not 8 <= (self.max_length or 128) <= 8192:
            raise ValueError("calibration_samples must be in 1..10000 and max_length in 8..8192")
        if self.recover_epochs < 1:
            raise ValueError("recover_epochs must be at least 1")

    def _check_structured(self):
        structured = bool(self.heads or self.ffn or self.layers or self.drop_layers
                          or self.heads_per_layer is not None or self.ffn_per_layer is not None)
        if self.kind == "unstructured" and structured:
            raise ValueError("one kind of pruning per run: sparsity/threshold, or heads/ffn/layers; chain two stages")
        if self.kind == "structured" and not structured:
            raise ValueError("nothing to prune: set sparsity or threshold, or heads, ffn or layers")
        if self.kind == "unstructured" and self.recover:
            raise ValueError("recovery training would refill the zeroed weights; prune after distilling instead")
        for ratio, counts in (("heads", "heads_per_layer"), ("ffn", "ffn_per_layer")):
            if getattr(self, ratio) and getattr(self, counts) is not None:
                raise ValueError(f"set {ratio} (a ratio) or {counts} (counts to keep), not both")
            if any(c < 0 for c in getattr(self, counts) or ()):
                raise ValueError(f"{counts} holds a negative count")
        if self.layers < 0 or (self.layers and self.drop_layers):
            raise ValueError("layers must be >= 0, and not combined with drop_layers")


@writes_output("data")
def prune(src: str | Path | ModelSource, cfg: PruneConfig, out: str | Path, *, force: bool = False) -> Artifact:
    """Prune `src` (torch artifact, model folder, built-in name or hub id) into a torch artifact at `out`.

    With `cfg.recover`, `out` holds the pruned model after a short distillation from the unpruned one; the
    pruned model lives in a hidden scratch folder beside `out` (artifact.RECOVER_SCRATCH) only until then.
    """
    t0 = time.time()  # the lineage times the whole stage, recovery included
    source = src if isinstance(src, ModelSource) else resolve_model(src)
    config = source.config
    task = cfg.task or (source.artifact.task if source.artifact else infer_task(config))
    if task not in TASKS:
        raise Unsupported(f"unsupported task {task!r}", f"use one of: {', '.join(TASKS)}")
    if cfg.recover and importlib.util.find_spec("toolchain.distill") is None:
        raise Unsupported("--recover needs the distillation stage (toolchain.distill), which this build lacks",
                          "drop --recover, or update the toolchain")
    asked = config_to_dict(cfg)  # the record keeps what was asked (a recipe compares it); metrics the length used
    cfg = resolve_max_length(cfg, source.artifact)
    model = load_model(source, task, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    out = Path(out)
    record = asked | {"source": source.spec}  # what was asked: a recipe compares it
    if not cfg.recover:
        return _prune(model, tokenizer, source, cfg, task, out, force, t0, record)
    check_output(out, force)  # fail now, not after pruning
    scratch = recovery_scratch(out)
    pruned = (resumable(scratch, "prune", source_hash(source), record)
              or _prune(model, tokenizer, source, cfg, task, scratch, True, t0, record))
    del model
    recovered = _recover(source, pruned, cfg, out, force)
    shutil.rmtree(scratch, ignore_errors=True)  # recovered: the pruned model's record is in `out`'s lineage
    return recovered


def _prune(model, tokenizer, source: ModelSource, cfg: PruneConfig, task: str, target: Path, force: bool,
           t0: float, record: dict) -> Artifact:
    with write_artifact(target, stage="prune", config=record, format="torch", task=task,
                        model_type=source.config.model_type, parent=source.artifact, force=force, started=t0) as o:
        o.record.input_hash = source_hash(source)
        run = _unstructured if cfg.kind == "unstructured" else _structured
        o.record.metrics.update(run(model, tokenizer, source, cfg, task, o.folder), max_length=cfg.max_length)
    return Artifact.load(target)


def _structured(model, tokenizer, source: ModelSource, cfg: PruneConfig, task: str, folder: Path) -> dict:
    from .families import apply_plan, current_shapes, family_of, mask_plan
    from .importance import Targets, choose

    family_of(model)  # an unsupported architecture fails before any calibration work
    before, params_before = current_shapes(model), _params(model)
    scores = _scores(model, tokenizer, cfg, task)
    targets = Targets(cfg.heads, cfg.ffn, cfg.heads_per_layer, cfg.ffn_per_layer, cfg.layers, cfg.drop_layers,
                      cfg.ranking, cfg.empty_layer)
    plan, notes = choose(model, scores, targets)
    reference = copy.deepcopy(model)
    mask_plan(reference, plan)
    apply_plan(model, plan)
    surgery = _check(reference, model, tokenizer, SURGERY_ATOL, "shrunk model vs the masked original")
    del reference
    reload = _save_and_reload(model, tokenizer, folder, task)
    after = current_shapes(model)
    metrics = {
        "kind": "structured", "importance": cfg.importance, "ranking": cfg.ranking,
        "params_before": params_before, "params_after": _params(model),
        "layers_before": len(before["num_heads"]), "layers_after": len(after["num_heads"]), **notes,
        "heads_before": before["num_heads"], "heads_after": after["num_heads"],
        "kv_heads_after": after["num_key_value_heads"],
        "ffn_before": before["intermediate_size"], "ffn_after": after["intermediate_size"],
        "surgery_check": surgery, "reload_check": reload, "file_bytes": _weights_bytes(folder),
    }
    if cfg.importance != "magnitude":
        metrics["calibration"] = {"data": _data_name(cfg, task), "samples": cfg.calibration_samples,
                                  "max_length": cfg.max_length}
    return metrics


def _unstructured(model, tokenizer, source: ModelSource, cfg: PruneConfig, task: str, folder: Path) -> dict:
    from .unstructured import NO_SPEEDUP, compressed_sizes, prune_magnitude, scoped_weights, sparsity_report

    weights = scoped_weights(model, cfg.scope, cfg.modules)
    prune_magnitude(weights, cfg.sparsity, cfg.threshold, cfg.granularity)
    report = sparsity_report(model, weights)
    reload = _save_and_reload(model, tokenizer, folder, task)
    metrics = {"kind": "unstructured", "granularity": cfg.granularity, "params": _params(model),
               "sparsity": report, "reload_check": reload, "note": NO_SPEEDUP,
               "file": _sum_sizes(compressed_sizes(p) for p in sorted(folder.glob("*.safetensors")))}
    src_files = sorted(Path(source.location).glob("*.safetensors")) if source.local else []
    if src_files:
        metrics["source_file"] = _sum_sizes(compressed_sizes(p) for p in src_files)
    return metrics


def _scores(model, tokenizer, cfg: PruneConfig, task: str):
    from ..console import bar as progress_bar
    from . import importance

    if cfg.importance == "magnitude":
        return importance.magnitude(model)
    batches, labels = _calibration(model, tokenizer, cfg, task)
    bar = lambda it: progress_bar(it, desc=f"prune: {cfg.importance} importance", unit="batch")  # noqa: E731
    if cfg.importance == "activation":
        return importance.activation(model, batches, progress=bar)
    if task == "feature-extraction":
        raise Unsupported("taylor importance needs a loss; a feature-extraction model has none",
                          "use --importance activation or magnitude, or prune the fine-tuned classifier")
    return importance.taylor(model, batches, labels, progress=bar)


def _calibration(model, tokenizer, cfg: PruneConfig, task: str) -> tuple[list[dict], list | None]:
    """`cfg.calibration_samples` single-example batches of the task data (and class ids for a classifier's loss)."""
    from ..data import calibration_batches, data_spec, load_classification, load_text

    name = _data_name(cfg, task)
    accepted = set(inspect.signature(model.forward).parameters)
    if task == "text-generation":
        raw = calibration_batches(tokenizer, load_text(name), cfg.calibration_samples, cfg.max_length)
        labels = None
    else:
        data = load_classification(data_spec(cfg, name))
        raw = calibration_batches(tokenizer, data, cfg.calibration_samples, cfg.max_length)
        labels = _label_ids(model, data, len(raw)) if task == "text-classification" else None
    return [{k: v for k, v in b.items() if k in accepted} for b in raw], labels


def _data_name(cfg: PruneConfig, task: str) -> str:
    return cfg.data or DEFAULT_DATA.get(task, "rotten-tomatoes")


def _label_ids(model, data, n: int) -> list[int]:
    """The calibration examples' labels in the model's own label ids (matched by name when they match)."""
    ids = data.split("train").labels[:n].tolist()
    if model.config.num_labels != len(data.label_names):
        raise DataError(f"{data.name} has {len(data.label_names)} labels; the model predicts {model.config.num_labels}",
                        "calibrate on the model's own task data (--data)")
    own = {str(k).lower(): v for k, v in (model.config.label2id or {}).items()}
    if set(own) == {n.lower() for n in data.label_names}:
        return [own[data.label_names[i].lower()] for i in ids]
    return ids


def _check(reference, candidate, tokenizer, atol: float, what: str) -> dict:
    """Compare two models' outputs on the parity texts, in float64 (both are restored afterwards)."""
    import torch

    from .. import parity

    dtypes = [next(m.parameters()).dtype for m in (reference, candidate)]
    try:
        ref = _outputs(reference.to(torch.float64), tokenizer)
        result = parity.compare(ref, _outputs(candidate.to(torch.float64), tokenizer), atol)
    finally:
        reference.to(dtypes[0])
        candidate.to(dtypes[1])
    if not result.ok:
        raise CheckFailed(f"{what}: outputs differ by {result.max_abs_diff:.3g} (tolerance {atol:g})",
                          "this is a toolchain bug for this architecture; please report it with the model config")
    return {"max_abs_diff": result.max_abs_diff, "atol": atol, "dtype": "float64",
            "shapes": [list(s) for s in parity.SHAPES]}


def _outputs(model, tokenizer) -> dict:
    """Logits (or hidden states) on the parity texts at each of parity.SHAPES."""
    import torch

    from .. import parity

    accepted = set(inspect.signature(model.forward).parameters)
    out = {}
    for batch, seq in parity.SHAPES:
        enc = parity.tokenize(tokenizer, batch, seq)
        with torch.inference_mode():
            r = model(**{k: torch.from_numpy(v) for k, v in enc.items() if k in accepted})
        value = getattr(r, "logits", None)
        out[f"{batch}x{seq}"] = (value if value is not None else r.last_hidden_state).numpy()
    return out


def _save_and_reload(model, tokenizer, folder: Path, task: str) -> dict:
    """Save the pruned model, load it back through the toolchain's loader, and demand the same outputs."""
    model.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(tokenizer, folder)
    reloaded = load_model(ModelSource(str(folder), str(folder), local=True), task)
    return _check(model, reloaded, tokenizer, RELOAD_ATOL, "saved and reloaded pruned model")


def _recover(source: ModelSource, pruned: Artifact, cfg: PruneConfig, out: Path, force: bool) -> Artifact:
    """Distil the pruned student from the unpruned model, through the distillation stage."""
    from ..distill import recover
    from ..evaluate import DATA_FIELDS

    return recover(source, pruned, out, force, data=_data_name(cfg, pruned.task), epochs=cfg.recover_epochs,
                   min_steps=cfg.recover_min_steps, max_length=cfg.max_length,
                   **{k: getattr(cfg, k) for k in DATA_FIELDS})


def _params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _sum_sizes(sizes) -> dict:
    total: dict = {}
    for s in sizes:
        for k, v in s.items():
            total[k] = total.get(k, 0) + v
    return total
