"""Opt-in hyperparameter search for finetune and distill: Optuna's seeded TPE sampler, each trial a
full run of the stage, chosen by validation accuracy only (the test split is never read to choose).

    toolchain finetune minilm runs/teacher --data mine.csv --search learning_rate,epochs --trials 6

Before the first trial it times a few training steps of the model on this machine and prints the
expected duration. The best trial's artifact becomes OUT; its lineage record keeps the requested
config (so a recipe re-run skips it), the chosen values, and every trial with its score and time.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable

from .artifact import MANIFEST, Artifact, atomic_write_text, check_output
from .errors import MissingPackage, RecipeError

# search name -> (config field, kind, low, high); "log": log-uniform float, "int", "float", "choice" (low = options).
SPACES = {
    "finetune": {"learning_rate": ("learning_rate", "log", 1e-5, 1e-4), "epochs": ("epochs", "int", 2, 8),
                 "batch_size": ("batch_size", "choice", (16, 32), None),
                 "warmup_ratio": ("warmup_ratio", "float", 0.0, 0.2),
                 "weight_decay": ("weight_decay", "float", 0.0, 0.1)},
    "distill": {"learning_rate": ("learning_rate", "log", 2e-5, 3e-4), "epochs": ("epochs", "int", 2, 12),
                "batch_size": ("batch_size", "choice", (16, 32), None),
                "temperature": ("temperature", "float", 1.0, 8.0),
                "alpha": ("alpha", "float", 0.0, 1.0), "warmup_ratio": ("warmup_ratio", "float", 0.0, 0.2)},
}
TIMED_STEPS = 3  # training steps timed before the search, after one untimed step


def check_params(stage: str, params: tuple[str, ...], trials: int) -> None:
    """Raised from a config's __post_init__: unknown names and a trial count below 2 are config errors."""
    unknown = [p for p in params if p not in SPACES[stage]]
    if unknown and _renamed(unknown[0]) in SPACES[stage]:
        raise ValueError(f"search {unknown[0]!r} was renamed to {_renamed(unknown[0])!r}")
    if unknown:
        raise ValueError(f"search {unknown[0]!r} is not searchable; use some of {', '.join(SPACES[stage])}")
    if params and not 2 <= trials <= 200:
        raise ValueError("trials must be between 2 and 200")


def _renamed(name: str) -> str | None:
    from .config import RENAMED

    return {"warmup": "warmup_ratio"}.get(name) or RENAMED.get(name)


def run_search(stage: str, fn: Callable, src, cfg, out: str | Path, *, force: bool, step_seconds: float,
               steps_per_trial: int, echo: Callable[[str], None] = print) -> Artifact:
    """Run `cfg.trials` trials of `fn(src, trial_cfg, folder)`; the best by validation accuracy becomes `out`."""
    try:
        import optuna
    except ImportError:
        raise MissingPackage("--search needs optuna",
                             "pip install optuna (or pip install 'toolchain[search]')") from None
    out = Path(out)
    check_output(out, force)
    space = {p: SPACES[stage][p] for p in cfg.search}
    minutes = cfg.trials * steps_per_trial * step_seconds / 60
    echo(f"search: {cfg.trials} trials over {', '.join(cfg.search)}, each up to {steps_per_trial} steps at "
         f"~{step_seconds:.2f} s a step (timed now): about {minutes:.0f} min in all, less where early stopping ends "
         "a trial; chosen by validation accuracy")
    work = out.parent / f".{out.name}.search"
    shutil.rmtree(work, ignore_errors=True)
    records: list[dict] = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))

    def objective(trial) -> float:
        values = {field: _suggest(trial, name, kind, low, high) for name, (field, kind, low, high) in space.items()}
        fixed = {"min_steps": 0} if "epochs" in cfg.search else {}  # a searched epoch count is run as sampled
        trial_cfg = dataclasses.replace(cfg, search=(), **values, **fixed)
        started = time.perf_counter()
        art = fn(src, trial_cfg, work / f"trial-{trial.number}", force=True)
        score = float(art.manifest.lineage[-1].metrics["validation"]["accuracy"]
                      if stage == "distill" else _finetune_validation(art))
        records.append({"trial": trial.number, "params": values, "validation_accuracy": round(score, 4),
                        "seconds": round(time.perf_counter() - started, 1)})
        echo(f"search: trial {trial.number + 1}/{cfg.trials} {_fmt(values)}: validation accuracy {score:.4f}")
        return score

    study.optimize(objective, n_trials=cfg.trials)
    best = study.best_trial.number
    return _promote(work / f"trial-{best}", out, cfg, records, best, space, force)


def _suggest(trial, name: str, kind: str, low, high):
    if kind == "log":
        return trial.suggest_float(name, low, high, log=True)
    if kind == "int":
        return trial.suggest_int(name, low, high)
    if kind == "float":
        return trial.suggest_float(name, low, high)
    return trial.suggest_categorical(name, list(low))


def _finetune_validation(art: Artifact) -> float:
    scored = [v for k, v in art.manifest.results.items() if k.startswith("evaluate/") and k.endswith("/validation")]
    if not scored:
        raise RecipeError("a search trial recorded no validation score", "report this: finetune scores validation")
    return scored[0]["accuracy"]


def _promote(best: Path, out: Path, cfg, records: list[dict], number: int, space: dict, force: bool) -> Artifact:
    """Move the best trial's artifact to `out`, recording the search in its last lineage record."""
    from .config import config_to_dict

    art = Artifact.load(best)
    record = art.manifest.lineage[-1]
    chosen = next(r["params"] for r in records if r["trial"] == number)
    record.metrics["search"] = {"params": list(cfg.search), "space": {k: list(v[1:]) for k, v in space.items()},
                                "sampler": f"optuna TPE, seed {cfg.seed}", "chosen_by": "validation accuracy",
                                "best_trial": number, "chosen": chosen, "trials": records}
    # The requested config (search included), so a recipe sees the same step and skips it on re-run.
    record.config = config_to_dict(cfg) | {k: v for k, v in record.config.items() if k not in config_to_dict(cfg)}
    atomic_write_text(best / MANIFEST, art.manifest.to_json())
    if out.exists() and force:
        shutil.rmtree(out)
    best.rename(out)
    shutil.rmtree(best.parent, ignore_errors=True)
    return Artifact.load(out)


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def time_steps(model, examples: list[dict], collate: Callable, batch_size: int, lr: float) -> float:
    """Seconds per training step of `model` on this machine: one untimed step, then TIMED_STEPS timed ones."""
    import copy

    import torch

    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    batches = [collate(examples[i * batch_size:(i + 1) * batch_size] or examples[:batch_size])
               for i in range(TIMED_STEPS + 1)]
    started = 0.0
    for i, batch in enumerate(batches):
        if i == 1:
            started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - started) / TIMED_STEPS


def max_steps_per_trial(stage: str, cfg, examples: int, schedule_plan: Callable) -> int:
    """The most optimizer steps one trial can take: the largest epochs and smallest batch in the space."""
    space = {p: SPACES[stage][p] for p in cfg.search}
    epochs = space["epochs"][3] if "epochs" in space else cfg.epochs
    batch = min(space["batch_size"][2]) if "batch_size" in space else cfg.batch_size
    min_steps = 0 if "epochs" in space else cfg.min_steps
    return schedule_plan(examples, batch, epochs, min_steps, max(cfg.max_epochs, epochs)).steps
