"""Score any artifact (PyTorch, ONNX fp32, ONNX int8) on real data through one code path.

A `Runner` turns padded numpy inputs into logits, for a torch model or an onnxruntime session;
everything after that (batching, metrics, agreement with a reference) is shared. Classification:
accuracy, macro F1, confusion matrix. Causal LM: perplexity over strided windows and next-token
top-1 agreement.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import Artifact
from .config import config_to_dict, opt, resolve_max_length
from .data import ALL, SPLITS, DataSpec, Split, batches, data_spec, load_classification, load_text
from .errors import DataError, Unsupported
from .metrics import classification_metrics, pack_correct, wilson
from .modeling import ModelSource, infer_task, load_model, load_tokenizer, resolve_model


@dataclass(frozen=True)
class EvaluateConfig:
    data: str = "rotten-tomatoes"
    split: str = opt("test", "The split to score; all: every row of --data as given (a held-out test file, scored "
                             "whole).", choices=("train", "validation", "test", "all"))
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    validation_data: str | None = None
    test_data: str | None = None
    split_column: str | None = "split"
    # Dynamic int8 computes activation scales per batch, so the batch size changes int8 accuracy:
    # evaluate the way the model will be deployed (1 for per-request serving).
    batch_size: int = opt(32, "Evaluation batch size (dynamic int8 accuracy depends on it).")
    max_length: int | None = None
    max_eval_samples: int | None = None  # first N examples of the split, for quick checks
    window: int = opt(512, "Causal LMs: tokens per perplexity window (capped at the model's context).")
    stride: int = opt(256, "Causal LMs: new tokens scored per window; the rest is context.")
    max_eval_tokens: int | None = None
    # Classifiers: also score a TF-IDF + logistic-regression baseline on the same split (toolchain/baseline.py),
    # so every result says whether the transformer is worth its cost. Stages scoring internally turn it off.
    baseline: bool = opt(True, "Classifiers: also score TF-IDF + logistic regression on the same split.")

    def __post_init__(self):
        if self.batch_size < 1 or (self.max_length or 2) < 2:
            raise ValueError("batch_size must be >= 1 and max_length >= 2")
        if not 0 < self.stride <= self.window:
            raise ValueError("stride must be in (0, window]")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise ValueError("max_eval_samples must be >= 1")
        if self.split not in (*SPLITS, ALL):
            raise ValueError(f"split must be one of {', '.join((*SPLITS, ALL))}, got {self.split!r}")

    @property
    def spec(self) -> DataSpec:
        return data_spec(self)


class Runner:
    """Logits for padded numpy inputs, from a torch model or an onnxruntime session."""

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None):
        self.path = Path(path)  # its name labels the progress bar
        # Hashes are checked first: a score of a file that is not the one the manifest describes means nothing.
        self.artifact = Artifact.load(path, verify=True) if Artifact.is_artifact(Path(path)) else None
        src = ModelSource(str(path), str(path), local=True, artifact=self.artifact) if self.artifact else None
        if self.artifact is not None and self.artifact.format == "onnx":
            from .runtime import make_session

            self.task = self.artifact.task
            self.tokenizer = load_tokenizer(src)
            self.config = src.config
            self.session = make_session(self.artifact.onnx_path, provider, threads)
            self.inputs = {i.name: i for i in self.session.get_inputs()}
        else:
            src = src or resolve_model(path)
            self.task = src.artifact.task if src.artifact else infer_task(src.config)
            self.tokenizer = load_tokenizer(src)
            self.model = load_model(src, self.task)
            self.config = self.model.config
            self.forward_args = set(inspect.signature(self.model.forward).parameters)
            self.session = None

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        if self.session is not None:
            return self._onnx(batch)
        import torch

        kwargs = {k: torch.from_numpy(v) for k, v in batch.items() if k in self.forward_args}
        with torch.inference_mode():
            return self.model(**kwargs).logits.float().numpy()

    def _onnx(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        from .parity import empty_past, onnx_feeds

        past = {n: empty_past(i, batch["input_ids"].shape[0]) for n, i in self.inputs.items()
                if n.startswith("past_key_values")}
        feeds = onnx_feeds(self.session, batch, past)
        return self.session.run(["logits"], feeds)[0].astype(np.float32)


def evaluate(path: str | Path, cfg: EvaluateConfig, *, reference: str | Path | None = None,
             record: bool = True, runner: Runner | None = None) -> dict:
    """Evaluate the model at `path` on `cfg.data`; store the result in its manifest when it is an artifact."""
    runner = runner or Runner(path)
    used = resolve_max_length(cfg, runner.artifact)  # the result keeps the config as asked: a recipe compares it
    if runner.task == "text-classification":
        result = _classification(runner, used, reference)
    elif runner.task == "text-generation":
        result = _perplexity(runner, used, reference)
    else:
        raise Unsupported(f"{path} is a {runner.task} model; evaluation needs a classifier or a causal LM",
                          "fine-tune a classification head first (toolchain finetune)")
    # The config it ran under, so a recipe can tell this measurement is already done.
    result |= {"data": cfg.data, "split": cfg.split, "batch_size": cfg.batch_size, "max_length": used.max_length,
               "format": runner.artifact.format if runner.artifact else "torch", "config": config_to_dict(cfg)}
    if record and runner.artifact is not None:
        runner.artifact.record_result(result_key(cfg), result)
    return result


DATA_FIELDS = ("text_column", "label_column", "pair_column", "validation_data", "test_data", "split_column")


def eval_config(cfg, split: str, default: str = "rotten-tomatoes", **kwargs) -> EvaluateConfig:
    """An EvaluateConfig on the same data, columns and split files as a stage's config `cfg`."""
    fields = {k: getattr(cfg, k) for k in DATA_FIELDS if hasattr(cfg, k)}
    return EvaluateConfig(data=getattr(cfg, "data", None) or default, split=split, **fields,
                          **{"baseline": False, **kwargs})


def result_key(cfg: EvaluateConfig) -> str:
    """Where an evaluation is stored in a manifest's results (named by the file the split came from)."""
    own = {"test": cfg.test_data, "validation": cfg.validation_data}.get(cfg.split)
    return f"evaluate/{Path(own or cfg.data).name}/{cfg.split}"
def evaluate_artifacts(paths: list[str | Path], cfg: EvaluateConfig) -> dict:
    """Evaluate several artifacts with one config (the recipe's measure step); path -> result."""
    return {str(p): evaluate(p, cfg) for p in paths}


def predict(runner: Runner, split: Split, cfg: EvaluateConfig, progress: bool = True) -> np.ndarray:
    """Logits for every example of `split`, in order, batched with dynamic padding."""
    from . import console
    from .console import bar

    out = []
    total = math.ceil(len(split) / cfg.batch_size)
    max_length = resolve_max_length(cfg, getattr(runner, "artifact", None)).max_length
    what = f"evaluate {console.artifact_name(runner.path)} ({cfg.split})" if hasattr(runner, "path") else "evaluate"
    for batch, _ in bar(batches(runner.tokenizer, split, cfg.batch_size, max_length), total=total,
                        desc=what, unit="batch", show=progress):
        out.append(runner.logits(batch))
    return np.concatenate(out)


def _classification(runner: Runner, cfg: EvaluateConfig, reference) -> dict:
    data = load_classification(cfg.spec, whole=cfg.split == ALL)
    split = data.split(cfg.split).subset(cfg.max_eval_samples)
    labels = map_labels(data.label_names, runner.config)[split.labels]
    pred = predict(runner, split, cfg).argmax(-1)
    result = classification_metrics(labels, pred, runner.config.num_labels)
    # Per-example correctness, so the report can test two artifacts on the same examples (McNemar), and the
    # interval that says how far this n lets the accuracy be trusted.
    correct = labels == pred
    result |= {"correct": pack_correct(correct), "accuracy_ci95": list(wilson(int(correct.sum()), len(correct)))}
    result |= split_facts(data, cfg.split)
    result["labels"] = [runner.config.id2label[i] for i in range(runner.config.num_labels)]
    if reference is not None:
        ref = predict(Runner(reference), split, cfg).argmax(-1)
        result["agreement"] = float((ref == pred).mean())
        result["reference"] = str(reference)
    if cfg.baseline:
        result |= _against_baseline(cfg, result["accuracy"], runner)
    return result


def _against_baseline(cfg: EvaluateConfig, accuracy: float, runner: Runner) -> dict:
    """The TF-IDF baseline on the same rows, and a plain verdict when the model does not beat it."""
    from .baseline import tfidf_baseline, verdict

    try:
        base = tfidf_baseline(cfg.spec, cfg.split, cfg.max_eval_samples)
    except DataError as exc:  # split 'all' (nothing to train on), or data too small to split
        return {"baseline_skipped": exc.problem}
    name = runner.artifact.path.name if runner.artifact else "the model"
    out = {"baseline": base, "beats_baseline": accuracy > base["accuracy"]}
    text = verdict(name, accuracy, base)
    return out | ({"baseline_verdict": text} if text else {})


def split_facts(data, split: str) -> dict:
    """Which rows a score counts: how the split was made and how many rows the source has in all."""
    total = sum(len(s) for s in data.splits.values())
    facts = {"split_origin": data.origin, "rows_in_source": total}
    if data.origin.startswith("seeded") and split != ALL and Path(data.name).is_file():
        facts["note"] = (f"scored the {split} cut of {Path(data.name).name} ({len(data.split(split))} of {total} "
                         "rows); a held-out test file is scored whole with --split all (or --test-data FILE)")
    return facts


def map_labels(names: list[str], config) -> np.ndarray:
    """data label id -> model label id, by name; generic LABEL_i names are taken in order."""
    model_names = [str(config.id2label[i]) for i in range(config.num_labels)]
    if all(n == f"LABEL_{i}" for i, n in enumerate(model_names)) and len(names) == len(model_names):
        return np.arange(len(names))
    unseen = [n for n in names if n not in model_names]
    if unseen:
        raise DataError(f"label {unseen[0]!r} in the data is not one the model knows ({', '.join(model_names)})",
                        "evaluate on data with the model's labels, or fine-tune on this data")
    return np.array([model_names.index(n) for n in names])


MIN_PERPLEXITY_TOKENS = 16


def _perplexity(runner: Runner, cfg: EvaluateConfig, reference) -> dict:
    text = load_text(cfg.data)
    ids = np.array(runner.tokenizer(text)["input_ids"], dtype=np.int64)[: cfg.max_eval_tokens]
    if len(ids) < MIN_PERPLEXITY_TOKENS:  # a perplexity of one or two scored tokens is noise, not a measurement
        raise DataError(f"{cfg.data} has {len(ids)} tokens; a perplexity needs at least {MIN_PERPLEXITY_TOKENS}",
                        "pass a longer text")
    window = min(cfg.window, getattr(runner.config, "max_position_embeddings", cfg.window) or cfg.window)
    nll, count, top1 = strided_nll(runner.logits, ids, window, min(cfg.stride, window))
    result = {"perplexity": float(math.exp(nll / count)), "tokens": int(count), "window": window,
              "stride": min(cfg.stride, window)}
    if reference is not None:
        _, _, ref_top1 = strided_nll(Runner(reference).logits, ids, window, min(cfg.stride, window))
        result["top1_agreement"] = float((ref_top1 == top1).mean())
        result["reference"] = str(reference)
    return result


def strided_nll(logits_fn, ids: np.ndarray, window: int, stride: int) -> tuple[float, int, np.ndarray]:
    """Summed negative log-likelihood of `ids`, each token scored once with up to `window` tokens of
    context (the Hugging Face strided-perplexity scheme); also each scored position's top-1 token."""
    from .console import bar

    total, count, top1 = 0.0, 0, []
    prev_end = 0
    starts = list(range(0, len(ids) - 1, stride))
    for begin in bar(starts, desc="perplexity", unit="window"):
        end = min(begin + window, len(ids))
        new = end - max(prev_end, begin + 1)  # tokens not yet scored in this window
        chunk = ids[begin:end][None]
        logits = logits_fn({"input_ids": chunk, "attention_mask": np.ones_like(chunk)})[0]
        logp = logits[:-1] - _logsumexp(logits[:-1])
        targets = chunk[0, 1:]
        scored = slice(len(targets) - new, len(targets))
        total -= float(logp[np.arange(len(targets)), targets][scored].sum())
        top1.append(logits[:-1].argmax(-1)[scored])
        count += new
        prev_end = end
        if end == len(ids):
            break
    return total, count, np.concatenate(top1)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))
