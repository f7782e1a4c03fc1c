"""Fine-tune an encoder into a sequence classifier with the Hugging Face Trainer: the teacher maker.

Seeded, keeps the best checkpoint by validation accuracy, and resumes after an interrupt from the
checkpoints it keeps beside the output folder until the artifact is written.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import Artifact, atomic_write_text, check_output, write_artifact
from .config import config_to_dict, opt, resolve_max_length
from .console import epoch_lines, say
from .data import data_fingerprint, data_spec, fitted_max_length, load_classification, tokenize_split
from .evaluate import Runner, eval_config, evaluate, result_key
from .guard import writes_output
from .modeling import ModelSource, load_model, load_tokenizer, resolve_model, save_tokenizer, source_hash
from .schedule import MAX_EPOCHS, MIN_STEPS, PATIENCE
from .search import SPACES


@dataclass(frozen=True)
class FinetuneConfig:
    data: str = "rotten-tomatoes"
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    validation_data: str | None = None
    test_data: str | None = None
    split_column: str | None = "split"
    epochs: float = 3.0  # minilm on rotten-tomatoes: test 0.816-0.832 over seeds (README, "Measured")
    # Small data: epochs are raised until this many optimizer steps (toolchain/schedule.py); 0 keeps `epochs`.
    min_steps: int = MIN_STEPS
    max_epochs: float = MAX_EPOCHS
    patience: int = PATIENCE
    learning_rate: float = 5e-5
    batch_size: int = 32
    # Unset: fitted to the training texts (rotten-tomatoes: 64, as 99% of its reviews are at most 55 tokens).
    max_length: int | None = opt(None, "Tokens per example; when unset, the length the input model was trained "
                                       "at, else the multiple of 16 that keeps 99% of the training texts whole "
                                       "(at most 512).")
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 42
    # Batches of similar-length reviews pad less: 0.62 vs 1.17 s a step on 1 CPU thread here, and validation
    # accuracy the same within a review (benchmarks/results/finetune_seeds.md).
    group_by_length: bool = opt(True, "Batch examples of similar length: less padding, ~1.9x faster on CPU.")
    # Opt-in search (toolchain/search.py), `trials` runs chosen by validation accuracy with Optuna's seeded TPE.
    search: tuple[str, ...] = opt((), "Search these by validation accuracy (Optuna): "
                                      f"{','.join(SPACES['finetune'])}.")
    trials: int = 6
    max_train_samples: int | None = None  # a subset for quick runs and tests
    max_eval_samples: int | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def __post_init__(self):
        if not self.epochs > 0 or not self.learning_rate > 0 or self.batch_size < 1:
            raise ValueError("epochs, learning_rate and batch_size must be positive")
        if self.max_length is not None and self.max_length < 8:
            raise ValueError("max_length must be at least 8")
        for name in ("max_train_samples", "max_eval_samples"):  # 0 or -5 would slice the data, not cap it
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (leave it unset for all examples)")
        if self.min_steps < 0 or self.patience < 1 or not self.max_epochs > 0:
            raise ValueError("min_steps must be >= 0, patience >= 1 and max_epochs positive")
        from .search import check_params

        check_params("finetune", self.search, self.trials)


@writes_output("data")
def finetune(src: str | Path | ModelSource, cfg: FinetuneConfig, out: str | Path, *, force: bool = False) -> Artifact:
    """Train a classification head (and the encoder under it) on `cfg.data`; returns a torch artifact.

    >>> finetune("minilm", FinetuneConfig(), "runs/teacher")  # doctest: +SKIP
    """
    from transformers import set_seed

    t0 = time.time()  # the lineage times the whole stage: loading, training and scoring
    out = Path(out)
    check_output(out, force)  # fail now, not after training
    source = src if isinstance(src, ModelSource) else resolve_model(src, trust_remote_code=cfg.trust_remote_code)
    if cfg.search:
        return _search(source, cfg, out, force)
    asked = config_to_dict(cfg)  # the record keeps what was asked (a recipe compares it); metrics the length used
    data = load_classification(data_spec(cfg))
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    # The new head's random init must come from the seed too: the Trainer seeds only when it is built,
    # after the model exists, and two runs of seed 42 scored 0.8182 and 0.8299 on test that way.
    set_seed(cfg.seed)
    model = load_model(source, "text-classification", trust_remote_code=cfg.trust_remote_code,
                       allow_pickle=cfg.allow_pickle, new_head=True, num_labels=len(data.label_names),
                       id2label=data.id2label, label2id=data.label2id)
    cfg, length_why = _resolve_length(cfg, source, tokenizer, data)  # said once the model has loaded
    checkpoints, fresh_because = _checkpoint_dir(out, source, cfg)
    started = time.perf_counter()
    trainer, sched = _trainer(model, tokenizer, data, cfg, checkpoints, out.name)
    resume = last_complete_checkpoint(checkpoints)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_seconds = time.perf_counter() - started
    with write_artifact(out, stage="finetune", config=asked | {"source": source.spec},
                        format="torch", task="text-classification", model_type=model.config.model_type,
                        parent=source.artifact, force=force, started=t0) as o:
        o.record.input_hash = source_hash(source)  # a plain folder too, so a recipe can tell it changed
        trainer.model.eval().save_pretrained(o.folder, safe_serialization=True)
        save_tokenizer(tokenizer, o.folder)
        o.record.metrics |= {"train_seconds": round(train_seconds, 1), "resumed": resume is not None,
                             "max_length": cfg.max_length, "max_length_why": length_why,
                             "started_fresh_because": fresh_because,
                             "train_examples": len(trainer.train_dataset), "splits": data.origin,
                             "schedule": sched.as_dict() | _epochs_run(trainer),
                             "best_checkpoint": Path(trainer.state.best_model_checkpoint or "").name}
        # Scored before the rename, so the artifact appears with its results or not at all.
        runner = Runner(o.folder)
        for split in ("validation", "test"):
            ecfg = eval_config(cfg, split, max_length=cfg.max_length, max_eval_samples=cfg.max_eval_samples)
            o.results[result_key(ecfg)] = evaluate(o.folder, ecfg, runner=runner, record=False)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the artifact is complete: nothing left to resume
    return Artifact.load(out)


def _search(source: ModelSource, cfg: FinetuneConfig, out: Path, force: bool) -> Artifact:
    """`cfg.trials` fine-tunes over `cfg.search`, timed first; the best on validation becomes `out`."""
    from transformers import DataCollatorWithPadding, set_seed

    from . import schedule, search

    data = load_classification(data_spec(cfg))
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    set_seed(cfg.seed)
    model = load_model(source, "text-classification", trust_remote_code=cfg.trust_remote_code,
                       allow_pickle=cfg.allow_pickle, new_head=True, num_labels=len(data.label_names),
                       id2label=data.id2label, label2id=data.label2id)
    max_length = _resolve_length(cfg, source, tokenizer, data)[0].max_length  # each trial resolves it again
    train = _examples(tokenizer, data.split("train").subset(cfg.max_train_samples), max_length)
    step = search.time_steps(model, train, DataCollatorWithPadding(tokenizer), cfg.batch_size, cfg.learning_rate)
    del model
    steps = search.max_steps_per_trial("finetune", cfg, len(train), schedule.plan)
    return search.run_search("finetune", finetune, source, cfg, out, force=force, step_seconds=step,
                             steps_per_trial=steps, echo=say)


def _resolve_length(cfg: FinetuneConfig, source: ModelSource, tokenizer, data) -> tuple[FinetuneConfig, str]:
    """`cfg` with max_length set, and why: as given, else as the input artifact was trained, else fitted to
    the training texts (data.fitted_max_length) within the model's positions."""
    if cfg.max_length is not None:
        return cfg, "as given"
    if getattr(source.artifact, "max_length", None):
        return resolve_max_length(cfg, source.artifact), "the length the input model was trained at"
    positions = getattr(source.config, "max_position_embeddings", None) or 512
    train = data.split("train").subset(cfg.max_train_samples)
    length, why = fitted_max_length(tokenizer, train, ceiling=min(512, positions))
    say(f"    max_length {length}: {why}")
    return dataclasses.replace(cfg, max_length=length), why


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that was written to the end; ones a kill cut short are removed.

    The Trainer writes a checkpoint in place, trainer_state.json last, so a run killed while saving
    leaves a newer folder without it (or with it half-written) that it would otherwise resume from.
    """
    steps = {int(m.group(1)): p for p in folder.glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))}
    for ckpt in (steps[k] for k in sorted(steps, reverse=True)):
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            if (ckpt / "model.safetensors").is_file():
                return ckpt
        except (OSError, ValueError):
            pass
        shutil.rmtree(ckpt, ignore_errors=True)
    return None


RESUME_KEY = "resume-key.json"  # what the checkpoints beside an output were trained on


def _checkpoint_dir(out: Path, source: ModelSource, cfg: FinetuneConfig) -> tuple[Path, str | None]:
    """The checkpoint folder beside `out`, and why earlier checkpoints there were dropped (None: kept or none).

    Checkpoints resume only the same training: the same model and data by content (a CSV edited after an
    interrupt is another run, not a continuation) and the same config. Anything else starts fresh.
    """
    key = {"model": source_hash(source) or source.spec, "data": [data_fingerprint(d) for d in (cfg.data, cfg.validation_data, cfg.test_data) if d],
           "config": config_to_dict(cfg)}
    folder = out.parent / f".{out.name}.checkpoints"
    for stale in out.parent.glob(f".{out.name}.checkpoints-*"):  # the earlier layout, keyed by names only
        shutil.rmtree(stale, ignore_errors=True)
    why = None
    if folder.exists():
        try:
            recorded = json.loads((folder / RESUME_KEY).read_text())
        except (OSError, ValueError):
            recorded = {}
        changed = [k for k in key if not isinstance(recorded, dict) or recorded.get(k) != key[k]]
        if changed:
            why = f"the {' and '.join(changed)} changed since the interrupted run"
            say(f"    not resuming the interrupted fine-tune, starting fresh: {why}")
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / RESUME_KEY, json.dumps(key, sort_keys=True, default=str))
    return folder, why


def _trainer(model, tokenizer, data, cfg: FinetuneConfig, checkpoints: Path, label: str = "finetune"):
    import torch
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from . import schedule

    train = _examples(tokenizer, data.split("train").subset(cfg.max_train_samples), cfg.max_length)
    sched = schedule.plan(len(train), cfg.batch_size, cfg.epochs, cfg.min_steps, cfg.max_epochs)
    steps = sched.steps
    val = _examples(tokenizer, data.split("validation").subset(cfg.max_eval_samples), cfg.max_length)
    args = TrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=sched.epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=64, weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio, seed=cfg.seed, data_seed=cfg.seed,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="accuracy", greater_is_better=True, logging_steps=max(1, min(50, steps // 10)),
        # The Trainer's own bar and loss dicts would print hundreds of lines: epoch_lines prints one a
        # epoch and a bar naming the artifact, and sends the loss records to the run's log.
        report_to=[], disable_tqdm=True, log_level="warning",
        group_by_length=cfg.group_by_length, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), save_safetensors=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=_accuracy,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience),
                                 epoch_lines(label, sched.epochs)])
    trainer.remove_callback(PrinterCallback)
    return trainer, sched


def _epochs_run(trainer) -> dict:
    """What the schedule became: epochs run, validation accuracy after each, whether it stopped early."""
    evals = [h for h in trainer.state.log_history if "eval_accuracy" in h]
    run = round(trainer.state.epoch or 0, 2)
    return {"epochs_run": run, "validation_by_epoch": [round(h["eval_accuracy"], 4) for h in evals],
            "stopped_early": run < trainer.args.num_train_epochs - 1e-6}


def _examples(tokenizer, split, max_length: int) -> list[dict]:
    return [e | {"labels": int(y)} for e, y in zip(tokenize_split(tokenizer, split, max_length), split.labels)]


def _accuracy(pred) -> dict:
    logits, labels = pred
    return {"accuracy": float((np.argmax(logits, -1) == labels).mean())}
