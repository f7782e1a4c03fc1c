"""Knowledge distillation: train a smaller student to imitate a teacher, for classifiers and causal LMs.

The student is built from the teacher (kept layers, optionally narrower: see students.py) or
given ready-made (`student=`, e.g. a pruned artifact to recover). Training runs on the Hugging
Face `Trainer` with `compute_loss` replaced, so the same call runs on one CPU, one GPU, or under
`torchrun` / `accelerate launch` on several, with gradient accumulation and bf16/fp16.

The loss per batch, with weights from the config (formulas in kd_losses.py):

    L = mean_i w_i [alpha * CE(s_i, y_i) + (1 - alpha) * D(s_i, t_i)]
        + hidden_weight * mean_l H(P_l h_s[l], h_t[map(l)]) + attention_weight * mean_l KL(A_t[map(l)] || A_s[l])

- i runs over examples (classifier) or predicted tokens (causal LM: token-level KD);
- D is T^2 * KL(softmax(t/T) || softmax(s/T)) (`logit_loss="kl"`) or the logit MSE (`"mse"`);
- H is the hidden-state MSE or cosine distance; P_l a learned linear projection from the student's
  width to the teacher's (identity when they match), discarded after training; `map` sends each
  student layer to a teacher layer (`layer_map`, default uniform: student layer l of n to teacher
  layer (l+1) * N / n - 1, so the last layers meet, as in TinyBERT);
- boundary-aware weighting: w_i = (1 + beta (1 - m_i)) / mean_j (1 + beta (1 - m_j)), with
  m_i = p_(1) - p_(2) the margin between the teacher's two largest probabilities (T=1) and beta
  = `boundary_weight`; beta = 0 gives w_i = 1. Examples near the teacher's decision boundary
  count up to 1 + beta times as much as the ones it is sure of; the mean weight stays 1.

Teacher outputs come online (the teacher runs beside the student) or cached (teacher_cache.py:
logits computed once, stored on disk keyed by teacher hash, data and max_length; the teacher is
freed before training). `alpha=1` with no feature loss trains on hard labels alone.
"""

from __future__ import annotations

import gc
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from . import students
from .artifact import MANIFEST, Artifact, atomic_write_text, prepare_output, write_artifact
from .config import config_to_dict, opt, resolve_max_length
from .console import epoch_lines, say
from .errors import BadModel, CheckFailed, DataError, RecipeError, Unsupported
from .guard import writes_output
from .modeling import (ModelSource, infer_task, load_model, load_tokenizer, model_inputs, resolve_model, save_tokenizer,
                       source_hash)
from .schedule import MAX_EPOCHS, MIN_STEPS, PATIENCE, best_epoch_callback
from .search import SPACES

LM_VALIDATION_FRACTION = 0.1  # the last tenth of a plain text's windows is held out for perplexity
RELOAD_ATOL = 1e-4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")  # saved-and-reloaded student vs the trained one, fp32 logits


# Small data: perturbed copies of the training texts until the teacher labels this many (distill --augment).
AUGMENT_TARGET, AUGMENT_MAX = 8000, 8


@dataclass(frozen=True)
class DistillConfig:
    # The student: a ready model, or one built from the teacher.
    student: str | None = opt(None, "A ready student (folder, torch artifact, built-in), e.g. a pruned model to "
                                    "recover; when unset, one is built from the teacher.")
    # DistilBERT-style evenly spaced layers by default; None keeps half of the teacher's.
    student_layers: int | tuple[int, ...] | None = opt(
        None, "Layers to keep: a count (3: evenly spaced) or teacher indices (0,2,4); when unset, half.")
    student_hidden_size: int | None = opt(None, "Narrower student hidden size; when unset, the teacher's.")
    student_intermediate_size: int | None = opt(None, "Narrower student FFN size; when unset, the teacher's.")
    student_num_heads: int | None = opt(None, "Student attention heads; when unset, the teacher's head size is kept.")
    student_init: Literal["copy", "random"] = opt("copy", "Copy the kept teacher layers (cut to width), or random.")
    # Data: classification splits, or plain text for a causal LM.
    data: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    validation_data: str | None = None
    test_data: str | None = None
    split_column: str | None = "split"
    max_length: int | None = None  # tokens per example (classifier) or per text window (causal LM)
    max_train_samples: int | None = None  # cap for quick runs; None trains on the whole train split
    max_eval_samples: int | None = None  # cap on validation examples; None uses them all
    # Optimization (Hugging Face Trainer).
    epochs: float = 2.0
    max_steps: int | None = opt(None, "Stop after N optimizer steps (overrides --epochs and --min-steps).")
    # Small data: epochs are raised until this many optimizer steps, the best epoch on validation kept
    # (classifiers; toolchain/schedule.py). 0 keeps `epochs` as they are.
    min_steps: int = MIN_STEPS
    max_epochs: float = MAX_EPOCHS
    patience: int = PATIENCE  # classifiers only
    batch_size: int = opt(32, "Examples per batch, per device.")
    grad_accum: int = opt(1, "Gradient accumulation steps: effective batch = batch size x steps x devices.")
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16", "fp16"] = opt("auto", "auto: bf16 (or fp16) on CUDA, fp32 on CPU.")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "Where to train; auto: CUDA when present.")
    # Losses.
    temperature: float = opt(2.0, "Softmax temperature of the soft targets (the KL term is scaled by T^2).",
                             short="-T")
    alpha: float = opt(0.5, "Weight of the hard-label loss; 1 - alpha goes to the soft loss (1: hard labels only).")
    logit_loss: Literal["kl", "mse"] = opt("kl", "Soft logit loss.")
    hidden_weight: float = opt(0.0, "Weight of the hidden-state loss (0: off).")
    hidden_loss: Literal["mse", "cosine"] = opt("mse", "Hidden-state loss.")
    attention_weight: float = opt(0.0, "Weight of the attention-map KL (0: off).")
    layer_map: tuple[int, ...] | None = opt(None, "Teacher layer per student layer for feature losses, e.g. 1,3,5; "
                                                  "when unset, spread uniformly.")
    boundary_weight: float = opt(0.0, "Up-weight examples near the teacher's decision boundary (beta; 0: off).")
    augment: int | None = opt(None, "Classifiers: add N perturbed copies of each training text (words masked or "
                                    "dropped), which the teacher labels; when unset, enough that the teacher labels "
                                    f"{AUGMENT_TARGET:,} texts (none on larger data).")
    # Opt-in search (toolchain/search.py, classifiers), `trials` runs chosen by validation accuracy.
    search: tuple[str, ...] = opt((), "Search these by validation accuracy (Optuna, classifiers): "
                                      f"{','.join(SPACES['distill'])}.")
    trials: int = 6
    # Teacher outputs. auto: cached, except for feature losses and causal LMs without cache_top_k (a
    # full-vocabulary cache would be tens of GB).
    teacher_mode: Literal["auto", "online", "cached"] = opt("auto", "Teacher beside the student (online), or its "
                                                                    "logits cached on disk (cached).")
    cache_dir: str | None = opt(None, "Where cached teacher logits live; when unset, $TOOLCHAIN_CACHE/teacher-logits.")
    cache_top_k: int | None = opt(None, "Cache only the teacher's top-k logits per row (large vocabularies).")
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def __post_init__(self):
        self._check_student()
        positive = {"max_length": self.max_length or 1, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "temperature": self.temperature, "learning_rate": self.learning_rate}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("max_train_samples", "max_eval_samples", "max_steps", "cache_top_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError("epochs must be positive")
        if self.augment is not None and not 0 <= self.augment <= 32:
            raise ValueError("augment is a number of copies per training text, 0..32")
        if self.min_steps < 0 or self.patience < 1 or not self.max_epochs > 0:
            raise ValueError("min_steps must be >= 0, patience >= 1 and max_epochs positive")
        from .search import check_params

        check_params("distill", self.search, self.trials)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        for name in ("hidden_weight", "attention_weight", "boundary_weight", "weight_decay", "warmup_ratio"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.teacher_mode == "cached" and self.needs_features:
            raise ValueError("hidden-state and attention losses need the teacher online: set teacher_mode=online")
        if self.layer_map is not None and not self.needs_features:
            raise ValueError("layer_map applies to the feature losses: set hidden_weight or attention_weight")
        if self.cache_top_k == 1 and self.boundary_weight > 0:
            raise ValueError("boundary weighting needs the teacher's top 2 logits: cache_top_k >= 2")

    def _check_student(self):
        if self.student is not None:
            built = ("student_layers", "student_hidden_size", "student_intermediate_size", "student_num_heads")
            given = [n for n in built if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{given[0]} builds a student from the teacher; it cannot be combined with student")
        for name in ("student_hidden_size", "student_intermediate_size", "student_num_heads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if isinstance(self.student_layers, int) and self.student_layers < 1:
            raise ValueError("student_layers must be at least 1")

    @property
    def needs_features(self) -> bool:
        return self.hidden_weight > 0 or self.attention_weight > 0

    @property
    def needs_teacher(self) -> bool:
        """Whether training reads the teacher at all (hard labels alone do not)."""
        return self.alpha < 1.0 or self.needs_features

    def mode_for(self, task: str) -> str:
        """online or cached; auto caches unless a feature loss needs the teacher, or an LM's full vocabulary would."""
        if not self.needs_teacher:
            return "unused"
        if self.teacher_mode != "auto":
            return self.teacher_mode
        if self.needs_features or (task == "text-generation" and self.cache_top_k is None):
            return "online"
        return "cached"



@writes_output("data", "cache_dir", "student")
def distill(src: str | Path | ModelSource, cfg: DistillConfig, out: str | Path, *, force: bool = False,
            progress: bool = True) -> Artifact:
    """Distill the teacher `src` (built-in, folder, torch artifact or hub id) into a student artifact at `out`.

    >>> distill("runs/teacher", DistillConfig(student_layers=(0, 2, 4), epochs=2), "runs/student")  # doctest: +SKIP
    """
    import torch
    from transformers import set_seed

    started = time.time()
    source = src if isinstance(src, ModelSource) else resolve_model(src)
    prepare_output(Path(out), force)  # fail before training, not after
    task = teacher_task(source)
    if cfg.search:
        return _search(source, cfg, out, force, task)
    asked = config_to_dict(cfg)  # the record keeps what was asked (a recipe compares it); metrics the length used
    cfg = resolve_max_length(cfg, source.artifact)
    mode = cfg.mode_for(task)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    data = prepare_data(cfg, tokenizer, source.config, task)
    sched = plan_schedule(cfg, len(data.train))
    args = training_args(cfg, task, sched)
    set_seed(cfg.seed)
    teacher = load_model(source, task, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    student, kept, s_tokenizer = make_student(teacher, cfg, task, tokenizer)
    # A student with a vocabulary of its own (trim-vocab) reads the same rows in its own tokens; the cached
    # teacher logits (one row per example) are looked up by row, whatever the tokens.
    s_data = data if s_tokenizer is tokenizer else prepare_data(cfg, s_tokenizer, source.config, task)
    teacher_info = {"mode": mode, "params": sum(p.numel() for p in teacher.parameters()),
                    "num_layers": students.num_layers(teacher.config)}
    if task == "text-generation":
        teacher_info["validation"] = held_out_perplexity(torch_logits(teacher), data, cfg.max_length)
    cache = None
    if mode == "cached":
        with args.main_process_first(local=False, desc="teacher logits"):
            cache, info = cached_teacher(cfg, source, teacher, tokenizer, data, task, args.device, progress)
        teacher_info |= info
    if mode != "online":
        teacher = None  # not in memory while the student trains
        gc.collect()
    train_metrics = train(cfg, task, student, teacher, s_tokenizer, s_data, cache, args, label=Path(out).name,
                          progress=progress)
    metrics = {"teacher": teacher_info, "student": student_summary(student, kept), "train": train_metrics,
               "max_length": cfg.max_length, "augment": s_data.augment}
    if args.process_index == 0:
        write_student(source, cfg, asked, out, force, task, student, s_tokenizer, s_data, metrics, started=started)
    if args.world_size > 1:
        torch.distributed.barrier()  # the other processes return the artifact process 0 wrote
    return Artifact.load(out)


def recover(teacher: ModelSource, changed: Artifact, out: Path, force: bool, **config) -> Artifact:
    """Distil a model a stage changed (pruned, vocabulary-trimmed) from the model it was made from, as part of
    that stage: the result's lineage ends in the changed model's own record (so a recipe sees the step it ran
    and resumes it), with the recovery distillation inside it. `changed` is scratch, removed by the caller:
    its hash in the record says which model was recovered."""
    spec = teacher.location if teacher.local else teacher.spec
    recovered = distill(spec, DistillConfig(student=str(changed.path), **config), out, force=force)
    distilled = recovered.manifest.lineage[-1]
    record = replace(changed.manifest.lineage[-1], finished=time.time())
    record.metrics = {**record.metrics, "recovery": {"teacher": spec, "before_recovery": changed.content_hash,
                                                     "config": distilled.config, "metrics": distilled.metrics}}
    recovered.manifest.lineage = [*changed.manifest.lineage[:-1], record]
    atomic_write_text(recovered.path / MANIFEST, recovered.manifest.to_json())
    return recovered


def _search(source: ModelSource, cfg: DistillConfig, out, force: bool, task: str) -> Artifact:
    """`cfg.trials` distillations over `cfg.search`, the student's steps timed first; the best on validation wins."""
    from . import schedule, search

    if task != "text-classification":
        raise Unsupported("--search chooses by validation accuracy: it is for classifiers",
                          "distill a causal LM without --search")
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    # Timed at the length the trials will use (each resolves it again: its record keeps what was asked).
    data = prepare_data(resolve_max_length(cfg, source.artifact), tokenizer, source.config, task)
    teacher = load_model(source, task, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    student, _, _ = make_student(teacher, cfg, task, tokenizer)
    del teacher
    collate = Collator(tokenizer.pad_token_id, task)
    step = search.time_steps(student, [{k: v for k, v in e.items() if k != "idx"} for e in data.train],
                             collate, cfg.batch_size, cfg.learning_rate)
    steps = search.max_steps_per_trial("distill", cfg, len(data.train), schedule.plan)
    return search.run_search("distill", distill, source, cfg, out, force=force, step_seconds=step,
                             steps_per_trial=steps, echo=say)


def teacher_task(source: ModelSource) -> str:
    """The teacher's task; only classifiers and causal LMs have outputs to imitate."""
    task = source.artifact.task if source.artifact else infer_task(source.config)
    if task not in ("text-classification", "text-generation"):
        raise Unsupported(
            f"{source.spec} is a bare encoder ({task}) with no classification or language-model head to imitate",
            "fine-tune it on the task first, then distill the fine-tuned model",
        )
    return task


def student_summary(student, kept) -> dict:
    return {"teacher_layers_kept": list(kept) if kept else None, "params": sum(p.numel() for p in student.parameters()),
            "num_layers": students.num_layers(student.config), "hidden_size": student.config.hidden_size}


# ---------------------------------------------------------------------------------------------- data


@dataclass
class DistillData:
    source: str
    train: list[dict]  # token lists + "label" (classifier) + "idx" (row of the teacher cache)
    validation: list[dict]
    augment: dict | None = None  # classifiers: perturbed copies added to train, and why


def prepare_data(cfg: DistillConfig, tokenizer, teacher_config, task: str) -> DistillData:
    """Tokenized train and validation examples for the teacher's task."""
    if task == "text-generation":
        if cfg.augment:  # unset or 0: nothing to refuse
            raise RecipeError("augment perturbs a classifier's training texts; a causal LM learns from windows of "
                              "its text", "drop augment for a causal LM")
        return _text_data(cfg, tokenizer)
    return _classification_data(cfg, tokenizer, teacher_config)


def _classification_data(cfg: DistillConfig, tokenizer, teacher_config) -> DistillData:
    from .data import data_spec, load_classification, tokenize_split
    from .evaluate import map_labels

    spec = data_spec(cfg)
    data = load_classification(spec)
    to_teacher = map_labels(data.label_names, teacher_config)  # the teacher's ids, matched by label name

    train = data.split("train").subset(cfg.max_train_samples)
    copies, why = augment_copies(cfg.augment, len(train))
    if copies:
        train = augmented(train, copies, cfg.seed, tokenizer.mask_token)
    enc = tokenize_split(tokenizer, train, cfg.max_length)
    rows = [e | {"label": to_teacher[int(y)], "idx": i} for i, (e, y) in enumerate(zip(enc, train.labels))]
    val = data.split("validation").subset(cfg.max_eval_samples)
    val_rows = [e | {"label": to_teacher[int(y)]} for e, y in zip(tokenize_split(tokenizer, val, cfg.max_length),
                                                                   val.labels)]
    return DistillData(spec.source, rows, val_rows, {"copies": copies, "texts": len(train), "why": why})


AUGMENT_MASK, AUGMENT_DROP = 0.1, 0.1  # per word: replaced by the mask token / removed


def augment_copies(asked: int | None, examples: int) -> tuple[int, str]:
    """Perturbed copies per training text, and why. Unset: enough that the teacher labels AUGMENT_TARGET
    texts, at most AUGMENT_MAX copies (rt-1600: a 3-layer student 3.1 points below its teacher without
    copies, 0.2 below with 4; docs/results.md, small data)."""
    if asked is not None:
        return asked, "as asked"
    copies = min(max(math.ceil(AUGMENT_TARGET / max(examples, 1)) - 1, 0), AUGMENT_MAX)
    if not copies:
        return 0, f"{examples} training texts: at least {AUGMENT_TARGET:,}, no copies needed"
    return copies, (f"{examples} training texts: {copies} perturbed copies each, so the teacher labels "
                    f"{examples * (copies + 1):,} (small data: the student learns from the teacher's soft targets)")


def augmented(split, copies: int, seed: int, mask: str | None):
    """`split` followed by `copies` perturbed copies of each text (each word masked or dropped at random,
    seeded). The teacher's soft targets on a perturbed text are what the student learns from it (TinyBERT's
    augmentation, without its embedding search); the copy keeps the text's label for the hard loss."""
    import numpy as np

    from .data import Split

    rng = np.random.default_rng(seed)

    def perturb(text: str) -> str:
        out = []
        for word in text.split():
            r = rng.random()
            if r < AUGMENT_DROP:
                continue
            out.append(mask if mask and r < AUGMENT_DROP + AUGMENT_MASK else word)
        return " ".join(out) or text

    texts = list(split.texts) + [perturb(t) for _ in range(copies) for t in split.texts]
    pairs = (list(split.pairs) + [perturb(t) for _ in range(copies) for t in split.pairs]) if split.pairs else None
    return Split(texts, np.concatenate([split.labels] * (copies + 1)), pairs)


def _text_data(cfg: DistillConfig, tokenizer) -> DistillData:
    """Plain text cut into windows of max_length tokens; the last tenth is validation."""
    from .data import load_text

    source = cfg.data or "hamlet"
    ids = tokenizer(load_text(source), verbose=False)["input_ids"]
    windows = [ids[i:i + cfg.max_length] for i in range(0, len(ids), cfg.max_length)]
    windows = [w for w in windows if len(w) >= 2]  # a window of one token predicts nothing
    if len(windows) < 2:
        raise DataError(f"{source} has {len(ids)} tokens: too few for {cfg.max_length}-token train and validation "
                        "windows", "use a longer text or a smaller max_length")
    n_val = max(1, round(len(windows) * LM_VALIDATION_FRACTION))
    train, val = windows[:-n_val], windows[-n_val:]
    train = train[:cfg.max_train_samples] if cfg.max_train_samples else train
    val = val[:cfg.max_eval_samples] if cfg.max_eval_samples else val
    return DistillData(source, [{"input_ids": w, "idx": i} for i, w in enumerate(train)], [{"input_ids": w} for w in val])


class Collator:
    """Pads a list of examples into a batch; adds cached teacher rows when given a cache.

    Always right padding, whatever the tokenizer's padding side: cached LM rows are stored from
    position 0, and a token's prediction sits at the position before it.
    """

    def __init__(self, pad_id: int, task: str, cache=None):
        self.pad_id, self.task, self.cache = pad_id, task, cache

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        longest = max(len(e["input_ids"]) for e in examples)

        def pad(key: str, value: int):
            return torch.tensor([e[key] + [value] * (longest - len(e[key])) for e in examples], dtype=torch.long)

        batch = {"input_ids": pad("input_ids", self.pad_id),
                 "attention_mask": torch.tensor([[1] * len(e["input_ids"]) + [0] * (longest - len(e["input_ids"]))
                                                 for e in examples], dtype=torch.long)}
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = pad("token_type_ids", 0)
        if self.task == "text-classification":
            batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        else:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        if self.cache is not None and "idx" in examples[0]:
            batch |= self._teacher_rows(examples, longest)
        return batch

    def _teacher_rows(self, examples: list[dict], longest: int) -> dict:
        import torch

        rows = [self.cache.rows(e["idx"]) for e in examples]
        if self.task == "text-classification":
            out = {"teacher_logits": torch.cat([v for v, _ in rows])}
            if rows[0][1] is not None:
                out["teacher_index"] = torch.cat([i for _, i in rows]).long()
            return out
        width = rows[0][0].shape[-1]
        values = torch.zeros(len(rows), longest, width)
        index = torch.zeros(len(rows), longest, width, dtype=torch.long) if rows[0][1] is not None else None
        for b, (v, i) in enumerate(rows):
            values[b, :len(v)] = v
            if index is not None:
                index[b, :len(i)] = i
        return {"teacher_logits": values} | ({"teacher_index": index} if index is not None else {})


# ------------------------------------------------------------------------------------------- student


def make_student(teacher, cfg: DistillConfig, task: str, tokenizer):
    """(student, the teacher layers it was built from or None for a ready one, the student's tokenizer)."""
    if cfg.student:
        student, s_tokenizer = load_student(cfg, teacher, task, tokenizer)
        return student, None, s_tokenizer
    kept = students.resolve_layers(cfg.student_layers, students.num_layers(teacher.config))
    student = students.build_student(teacher, kept, hidden=cfg.student_hidden_size, ffn=cfg.student_intermediate_size,
                                     heads=cfg.student_num_heads, init=cfg.student_init)
    return student, kept, tokenizer


def load_student(cfg: DistillConfig, teacher, task: str, tokenizer):
    """A ready student (e.g. a structurally pruned or vocabulary-trimmed model), checked against the teacher's
    task, vocabulary and labels; with the tokenizer it reads (the teacher's, or its own)."""
    source = resolve_model(cfg.student)
    s_task = source.artifact.task if source.artifact else infer_task(source.config)
    if s_task != task:
        raise BadModel(f"the student {cfg.student} is a {s_task} model, but the teacher is {task}",
                       "pass a student with the same kind of head as the teacher")
    student = load_model(source, task, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    s_tokenizer = student_tokenizer(student, teacher, source, tokenizer, cfg, task)
    if task == "text-classification":
        check_labels(student.config, teacher.config)
    return student, s_tokenizer


def student_tokenizer(student, teacher, source: ModelSource, tokenizer, cfg: DistillConfig, task: str):
    """The tokenizer the student reads. The teacher's when the student has none or the same vocabulary. A
    classifier student with a vocabulary of its own (a trimmed one) reads its own: cached teacher logits are
    one row per example, whatever the tokens. Position-by-position losses (an LM's logits, hidden states,
    attentions) compare token by token, so there teacher and student must share the token ids."""
    s, t = student.config.vocab_size, teacher.config.vocab_size
    fix = "use a student that shares the teacher's tokenizer (e.g. one built from the teacher: --student-layers)"
    if source.local and not any((Path(source.location) / f).is_file() for f in TOKENIZER_FILES):
        if s != t:
            raise BadModel(f"the student's vocabulary has {s} tokens, the teacher's {t}, and it has no tokenizer "
                           "of its own", fix)
        return tokenizer  # a student folder without a tokenizer uses the teacher's
    own = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    if own.get_vocab() == tokenizer.get_vocab() and s == t:
        return tokenizer
    if task != "text-classification":
        raise BadModel("the student's tokenizer maps tokens to other ids than the teacher's, and a causal LM's "
                       "loss compares their logits token by token", fix)
    if cfg.mode_for(task) != "cached":
        raise BadModel("the student's tokenizer maps tokens to other ids than the teacher's, and hidden-state / "
                       "attention losses or an online teacher compare them token by token",
                       "drop the feature losses and leave teacher_mode at auto (cached logits)")
    if len(own) > s:
        raise BadModel(f"the student's tokenizer has {len(own)} tokens but its embedding {s} rows",
                       "save the student with the tokenizer it was trained with")
    return own


def check_labels(s_config, t_config) -> None:
    s = [str(s_config.id2label[i]) for i in range(s_config.num_labels)]
    t = [str(t_config.id2label[i]) for i in range(t_config.num_labels)]
    generic = [f"LABEL_{i}" for i in range(len(s))]
    if len(s) != len(t) or (s != t and s != generic and t != generic):
        raise BadModel(f"the student predicts labels {s}, the teacher {t}",
                       "pass a student whose classification head has the teacher's labels, in the same order")


def feature_layer_map(cfg: DistillConfig, n_teacher: int, n_student: int) -> tuple[int, ...]:
    """Teacher layer matched to each student layer: the config's, or uniform with the last layers aligned."""
    if cfg.layer_map is None:
        return tuple((layer + 1) * n_teacher // n_student - 1 for layer in range(n_student))
    if len(cfg.layer_map) != n_student:
        raise RecipeError(f"layer_map has {len(cfg.layer_map)} entries for a {n_student}-layer student",
                          "give one teacher layer per student layer")
    bad = [i for i in cfg.layer_map if not 0 <= i < n_teacher]
    if bad:
        raise RecipeError(f"layer_map names teacher layer {bad[0]}, but the teacher has layers 0..{n_teacher - 1}",
                          f"use indices between 0 and {n_teacher - 1}")
    return tuple(cfg.layer_map)


# ------------------------------------------------------------------------------------------- teacher


def cached_teacher(cfg: DistillConfig, source: ModelSource, teacher, tokenizer, data: DistillData, task: str,
                   device, progress: bool):
    """The teacher's logits on the training set from the disk cache, computed first if missing."""
    from . import assets, teacher_cache

    t_hash = source_hash(source) or weights_hash(teacher)
    key = teacher_cache.cache_key(t_hash, data.source, cfg.max_length, data.train, cfg.cache_top_k)
    folder = (Path(cfg.cache_dir).expanduser() if cfg.cache_dir else assets.cache_dir() / "teacher-logits") / key[:32]
    started = time.perf_counter()
    cache = teacher_cache.TeacherCache.load(folder, examples=len(data.train))
    hit = cache is not None
    rebuilt = not hit and folder.exists()  # a damaged cache is rebuilt, never trusted
    if cache is None:
        teacher.to(device)
        collate = Collator(tokenizer.pad_token_id, task)
        rows = lambda examples: teacher_rows(teacher, collate, examples, cfg.cache_top_k, device)  # noqa: E731
        cache = teacher_cache.build(folder, rows, data.train, cfg.batch_size * 2, progress)
        teacher.to("cpu")
    info = {"cache_dir": str(folder), "cache_key": key, "cache_hit": hit, "cache_rebuilt": rebuilt,
            "cache_seconds": round(time.perf_counter() - started, 2)}
    return cache, info


def weights_hash(model) -> str:
    """sha256 over a model's tensors: the cache key of a hub teacher with no local files to hash."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def teacher_rows(teacher, collate: Collator, examples: list[dict], top_k: int | None, device) -> list[tuple]:
    """(values, index) rows of each example: its logits (one row, or one per token), top-k if asked."""
    import torch

    batch = collate(examples)
    with torch.no_grad():
        logits = teacher(**{k: v.to(device) for k, v in model_inputs(teacher, batch).items()}).logits.float()
    index = None
    if top_k:
        logits, index = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
    out = []
    for b, e in enumerate(examples):
        if logits.ndim == 2:
            v, i = logits[b:b + 1], (index[b:b + 1] if index is not None else None)
        else:
            n = len(e["input_ids"])
            v, i = logits[b, :n], (index[b, :n] if index is not None else None)
        out.append((v.cpu(), i.cpu() if i is not None else None))
    return out


# ------------------------------------------------------------------------------------------ training


def resolve_precision(cfg: DistillConfig, cuda: bool) -> str:
    """fp32 / bf16 / fp16: auto takes bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    if cfg.precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if cfg.precision == "fp16" and not cuda:
        raise Unsupported("fp16 training needs a CUDA device", "use precision=bf16 or fp32 on a CPU")
    return cfg.precision


def plan_schedule(cfg: DistillConfig, examples: int):
    """The epochs to train: the config's, raised to min_steps updates on small data (None under max_steps)."""
    from . import schedule

    if cfg.max_steps:
        return None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return schedule.plan(examples, cfg.batch_size * cfg.grad_accum * world, cfg.epochs, cfg.min_steps, cfg.max_epochs)


def training_args(cfg: DistillConfig, task: str, sched=None):
    """TrainingArguments for the config; under torchrun / accelerate launch they set up the process group."""
    import torch
    from transformers import TrainingArguments

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise Unsupported("device=cuda, but no CUDA device is visible", "use device=cpu or auto")
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    precision = resolve_precision(cfg, cuda)
    return TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="toolchain-distill-"),  # Trainer wants one; nothing is saved there
        num_train_epochs=sched.epochs if sched else cfg.epochs, max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type="linear", seed=cfg.seed, data_seed=cfg.seed,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not cuda,
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        # Validation runs once, after training, through evaluate.py on the saved student.
        eval_strategy="no", save_strategy="no", logging_strategy="steps", logging_steps=0.1, report_to=[],
        # epoch_lines draws the bar (naming the artifact) and sends the loss records to the run's log.
        disable_tqdm=True, log_level="warning", remove_unused_columns=False, label_names=["labels"],
        # Batches of similar length pad less (short reviews: ~2x faster); LM windows are all one length.
        group_by_length=task == "text-classification", dataloader_pin_memory=cuda,
    )


def train(cfg: DistillConfig, task: str, student, teacher, tokenizer, data: DistillData, cache, args,
          label: str = "distill", progress: bool = True) -> dict:
    """Run the Trainer; returns the training metrics for the lineage record (wall time, losses)."""
    import shutil

    from .kd_trainer import DistillTrainer, KDObjective, StudentWithProjections, use_eager_attention

    layer_map = None
    if cfg.needs_features:
        layer_map = feature_layer_map(cfg, students.num_layers(teacher.config), students.num_layers(student.config))
    if cfg.attention_weight > 0:
        use_eager_attention(student)
        use_eager_attention(teacher)
    width = teacher.config.hidden_size if cfg.hidden_weight > 0 else None
    model = StudentWithProjections(student, width, attentions=cfg.attention_weight > 0)
    if teacher is not None:
        teacher.to(args.device).eval()
    # Classifiers keep their best epoch on validation; a causal LM trains its epochs (held-out perplexity after).
    lines, best = epoch_lines(label, args.num_train_epochs, show_bar=progress), None
    if task == "text-classification" and not cfg.max_steps and data.validation:
        def score(_model) -> float:  # the epoch's line is printed as it is scored
            return lines.report(validation_accuracy(student, tokenizer, task, data, cfg.batch_size * 2))

        best = best_epoch_callback(score, cfg.patience)
    trainer = DistillTrainer(model=model, args=args, train_dataset=data.train,
                             data_collator=Collator(tokenizer.pad_token_id, task, cache),
                             objective=KDObjective(cfg, task, teacher, layer_map),
                             callbacks=[best, lines] if best else [lines])
    started = time.perf_counter()
    state = trainer.train()
    wall = time.perf_counter() - started
    trainer.close_epoch()  # a max_steps run can stop inside an epoch
    epochs = best.restore(model) if best else {}
    sched = plan_schedule(cfg, len(data.train))
    shutil.rmtree(args.output_dir, ignore_errors=True)
    student.to("cpu")
    return {"wall_seconds": round(wall, 2), "steps": trainer.state.global_step, "epochs": cfg.epochs,
            "schedule": (sched.as_dict() if sched else {"reason": f"max_steps {cfg.max_steps}"}) | epochs,
            "examples": len(data.train), "world_size": args.world_size,
            "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32", "device": str(args.device),
            "final_loss": round(state.training_loss, 5), "losses_by_epoch": trainer.epoch_losses,
            "layer_map": list(layer_map) if layer_map else None}


# ------------------------------------------------------------------------------------------- writing


def validation_accuracy(student, tokenizer, task: str, data: DistillData, batch_size: int) -> float:
    """The student's accuracy on the validation examples (labels already in the teacher's ids)."""
    import torch

    device = next(student.parameters()).device
    was_training, right = student.training, 0
    student.eval()
    collate = Collator(tokenizer.pad_token_id, task)
    with torch.inference_mode():
        for i in range(0, len(data.validation), batch_size):
            batch = collate(data.validation[i:i + batch_size])
            labels = batch.pop("labels")
            inputs = {k: v.to(device) for k, v in model_inputs(student, batch).items()}
            right += int((student(**inputs).logits.argmax(-1).cpu() == labels).sum())
    student.train(was_training)
    return right / len(data.validation)


def write_student(source: ModelSource, cfg: DistillConfig, asked: dict, out, force: bool, task: str, student,
                  tokenizer, data: DistillData, metrics: dict, *, started: float) -> None:
    """Save the student (HF folder + tokenizer) as a torch artifact, reloaded and scored on validation data."""
    from .evaluate import Runner

    student = student.float().eval()
    with write_artifact(out, stage="distill", config=asked | {"teacher": source.spec}, format="torch",
                        task=task, model_type=student.config.model_type, parent=source.artifact, force=force,
                        started=started) as o:  # the lineage times the whole stage, training included
        o.record.input_hash = source_hash(source)
        student.save_pretrained(o.folder, safe_serialization=True)
        save_tokenizer(tokenizer, o.folder)
        runner = Runner(o.folder)  # the saved folder, loaded as any user would load it
        o.record.metrics.update(metrics)
        o.record.metrics["reload"] = check_reload(student, runner.model, task, data, tokenizer)
        o.record.metrics["validation"] = validate(o.folder, runner, cfg, task, data)


def check_reload(student, reloaded, task: str, data: DistillData, tokenizer) -> dict:
    """The saved-and-reloaded student must give the trained student's logits (its config captures its structure)."""
    import torch

    batch = Collator(tokenizer.pad_token_id, task)(data.validation[:8])
    with torch.no_grad():
        a = student(**model_inputs(student, batch)).logits
        b = reloaded(**model_inputs(reloaded, batch)).logits
    mask = batch["attention_mask"].bool()
    diff = float((a - b).abs()[mask].max()) if task == "text-generation" else float((a - b).abs().max())
    if not diff <= RELOAD_ATOL:
        raise CheckFailed(f"the saved student does not reproduce the trained one (max abs diff {diff:.3g})",
                          "report this: the student's structure is not captured by its config")
    return {"max_abs_diff": diff, "atol": RELOAD_ATOL}


def validate(folder: Path, runner, cfg: DistillConfig, task: str, data: DistillData) -> dict:
    """Validation accuracy / macro F1 (classifier) or held-out perplexity (causal LM), through evaluate.py."""
    from .evaluate import eval_config, evaluate

    if task == "text-generation":
        return held_out_perplexity(runner.logits, data, cfg.max_length)
    ecfg = eval_config(cfg, "validation", max_length=cfg.max_length, max_eval_samples=cfg.max_eval_samples)
    result = evaluate(folder, ecfg, record=False, runner=runner)
    return {k: result[k] for k in ("accuracy", "macro_f1", "n", "split_origin")}


def held_out_perplexity(logits_fn, data: DistillData, window: int) -> dict:
    """Perplexity on the held-out tail of the text, scored in the training windows' length."""
    import numpy as np

    from .evaluate import strided_nll

    ids = np.array([t for e in data.validation for t in e["input_ids"]], dtype=np.int64)
    nll, count, _ = strided_nll(logits_fn, ids, window, window)
    return {"perplexity": round(math.exp(nll / count), 4), "tokens": int(count), "window": window}


def torch_logits(model):
    """A numpy-in, numpy-out logits function of a torch model, as evaluate.Runner.logits is."""
    import torch

    device = next(model.parameters()).device

    def logits(batch: dict):
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).to(device) for k, v in model_inputs(model, batch).items()}
            return model(**inputs).logits.float().cpu().numpy()

    return logits
