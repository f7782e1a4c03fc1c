"""Stage configs: frozen dataclasses that validate themselves and refuse unknown keys."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from typing import Any, TypeVar

from .errors import RecipeError

C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "config") -> C:
    """Build `cls` from a plain dict (a recipe's YAML, a manifest's JSON); unknown keys are errors.

    >>> config_from_dict(ExportConfig, {"opset": 17})  # doctest: +SKIP
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: must be a mapping of option names to values, got {type(data).__name__}",
                          "write the config as `key: value` lines")
    if not all(isinstance(k, str) for k in data):
        raise RecipeError(f"{where}: keys must be text, got {next(k for k in data if not isinstance(k, str))!r}",
                          "write option names as words")
    data = dict(data)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _keyed(_unknown_key(cls, unknown[0], sorted(fields), where), unknown[0])
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        try:
            data[name] = _coerce(value, hints[name], f"{where}.{name}")
        except RecipeError as exc:
            raise _keyed(exc, name) from None
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        error = RecipeError(f"{where}: {exc}", "correct the value in the config")
        # The key the message names, preferring ones the caller set: a recipe points at its line.
        named = [k for k in [*data, *fields] if re.search(rf"\b{re.escape(k)}\b", str(exc))]
        raise (_keyed(error, named[0]) if named else error) from None


def _unknown_key(cls, key: str, fields: list[str], where: str) -> RecipeError:
    """A renamed key names its new name; a misspelt one the closest; else every valid key."""
    new = [n for n in new_names(key) if n in fields]
    if new:
        return RecipeError(f"{where}: {key!r} was renamed to {new[0]!r}", f"write {new[0]}: instead")
    close = difflib.get_close_matches(key, fields, n=1)
    if close:
        return RecipeError(f"{where}: unknown key {key!r} for {cls.__name__}", f"did you mean {close[0]!r}?")
    return RecipeError(f"{where}: unknown key {key!r} for {cls.__name__}", f"use one of: {', '.join(fields)}")


def new_names(old: str) -> tuple[str, ...]:
    """The names an old option name became (RENAMED); () if it was never renamed."""
    new = RENAMED.get(old, ())
    return new if isinstance(new, tuple) else (new,)


def _keyed(exc: RecipeError, key: str) -> RecipeError:
    exc.key = key
    return exc


DEFAULT_MAX_LENGTH = 128  # tokens per example when neither the config nor the input artifact says


def resolve_max_length(cfg: C, source: Any = None) -> C:
    """`cfg` with max_length set: as given, else the length the input artifact `source` was made at, else 128.

    So a model trained at 64 tokens is calibrated, scored, timed and bundled at 64 unless told otherwise.
    A stage records the config as asked (a recipe compares it) and the length it used in its metrics.
    """
    if cfg.max_length is not None:
        return cfg
    recorded = getattr(source, "max_length", None)
    return dataclasses.replace(cfg, max_length=recorded or DEFAULT_MAX_LENGTH)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-ready dict of a config, as stored in the manifest's lineage."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a simple type hint; lists become tuples so configs stay hashable."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except RecipeError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise RecipeError(f"{where}: {value!r} is not one of {list(args)}", "pick one of the listed values")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__}", "write a YAML list")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        # YAML reads .inf and .nan; no setting means them, and int(inf) steps would crash much later.
        raise RecipeError(f"{where}: expected a finite number, got {value!r}", "write a finite number")
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RecipeError(
                f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}",
                f"write a {hint.__name__}",
            )
    return value


# --- One declaration per option -----------------------------------------------------------------------
# A config field is declared once, with its default and help; the click options (config_options), the
# recipe schema (config_from_dict) and docs/cli.md are made from it.

# Help for fields many stages share, so it is written once (a field's own `opt(help=...)` wins).
COMMON_HELP = {
    "data": "Built-in name, CSV/JSONL/Parquet/.txt path, or hub dataset id (glue/sst2).",
    "text_column": "Column holding the text.",
    "label_column": "Column holding the label.",
    "pair_column": "Second text column of sentence-pair tasks.",
    "validation_data": "The validation split in a file of its own (--data is then train).",
    "test_data": "The test split in a file of its own, scored whole.",
    "split_column": "Column naming each row's split: train / validation (dev, val) / test; used when the file has it.",
    "max_length": "Tokens per example; when unset, the length the input artifact was made at (its lineage), "
                  "else 128.",
    "max_train_samples": "Train on the first N examples only.",
    "max_eval_samples": "Score only the first N held-out examples.",
    "max_eval_tokens": "Causal LMs: score only the first N tokens.",
    "calibration_samples": "Task examples to calibrate on.",
    "task": "Task head to load; inferred from the model's architecture when unset.",
    "trust_remote_code": "Run code shipped with a hub model (only if you trust it).",
    "allow_pickle": "Read pickle weights when no safetensors exist.",
    "target": "Where the model will run (toolchain/targets.py): decides fusions, int8 format, fixed shapes and "
              "the .ort platform.",
    "learning_rate": "Peak learning rate (AdamW, linear decay).",
    "weight_decay": "AdamW weight decay.",
    "warmup_ratio": "Share of the optimizer steps spent warming the learning rate up.",
    "batch_size": "Examples per batch.",
    "seed": "Random seed.",
    "epochs": "Training epochs.",
    "min_steps": "Raise the epochs until this many optimizer steps, best epoch kept (0: off).",
    "max_epochs": "The ceiling on epochs when --min-steps raises them.",
    "patience": "Stop after N epochs without a validation gain (the best epoch is kept).",
    "trials": "Search trials, each a full training run.",
    "atol": "Parity tolerance (max abs diff) vs the source.",
}

# What a shared field left unset (None) means, where the stage decides.
COMMON_UNSET = {"data": "When unset, the task's: rotten-tomatoes for classifiers, hamlet for causal LMs."}

# Old option names -> the one name used now (Hugging Face's where it has one).
RENAMED = {
    "lr": "learning_rate",
    "max_train_examples": "max_train_samples",
    "max_eval_examples": "max_eval_samples",
    "max_samples": "max_eval_samples",
    "eval_max_samples": "max_eval_samples",
    "max_tokens": "max_eval_tokens",
    "eval_max_tokens": "max_eval_tokens",
    "samples": ("calibration_samples", "smoke_texts"),  # prune's calibration examples, package's smoke texts
    "baseline": "speedup_baseline",  # bench's; evaluate's `baseline` is the TF-IDF baseline
}


def opt(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, off: str | None = None,
        short: str | None = None, choices: tuple | None = None, multiple: bool = False):
    """A config field with its help and CLI spelling: the one place an option is declared.

    flag: the option's name when it is not the field's (`exclude_node` for a repeatable `exclude_nodes`);
    off: a bool's negative flag (`per-tensor`; default `no-<flag>`); choices: allowed values of a non-Literal
    field; multiple: a repeatable option instead of a comma list. Every field is an option (tests/test_options.py).
    """
    meta = {"help": help, "flag": flag, "off": off, "short": short, "choices": choices, "multiple": multiple}
    return dataclasses.field(default=default, metadata=meta)


def field_help(f: dataclasses.Field) -> str:
    if f.metadata.get("help"):
        return f.metadata["help"]
    unset = COMMON_UNSET.get(f.name) if f.default is None else None
    return COMMON_HELP.get(f.name, "") + (f" {unset}" if unset else "")


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` that are CLI options: all it takes."""
    return [f for f in dataclasses.fields(cls) if f.init]


def flag_name(f: dataclasses.Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def shows_default(f: dataclasses.Field) -> bool:
    """Whether help ends with "(default: X)": not for unset (None), off flags, empty lists or repeatables."""
    return not (f.default is dataclasses.MISSING or f.default is None or f.default is False or f.default == ()
                or f.metadata.get("multiple"))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def config_options(cls, *, skip: tuple[str, ...] = (), prefix: str = ""):
    """Decorator: one click option per field of `cls` (those not in `skip`), typed from the field's hint.

    Every option defaults to None, so a value the user did not give is left to the config's own default,
    which the help shows once as "(default: X)". A `prefix` ("emulate_") names the options of a config a
    command uses beside its main one: --emulate-cpu, passed as emulate_cpu.
    """
    import click

    hints = typing.get_type_hints(cls)
    options = [_click_option(click, f, hints[f.name], prefix) for f in cli_fields(cls) if f.name not in skip]

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _click_option(click, f: dataclasses.Field, hint: Any, prefix: str = ""):
    meta = f.metadata
    flag = "--" + prefix.replace("_", "-") + flag_name(f)[2:]
    names = [flag] + ([meta["short"]] if meta.get("short") else [])
    help_text = field_help(f)
    if shows_default(f):
        help_text += f" (default: {_show(f.default)})"
    kind, args = _kind(hint)
    extra: dict[str, Any] = {"default": None}
    if kind is bool and f.default is False:  # off unless asked: a plain flag
        extra["is_flag"] = True
    elif kind is bool:
        names[0] = f"{flag}/--{meta.get('off') or 'no-' + flag[2:]}"
    elif kind is typing.Literal or meta.get("choices"):
        values = meta.get("choices") or args
        extra["type"] = click.Choice([str(v) for v in values])
        if all(isinstance(v, int) for v in values):
            extra["callback"] = lambda ctx, param, v: None if v is None else int(v)
    elif kind in (int, float, str):
        extra["type"] = kind
    elif meta.get("multiple"):
        extra |= {"multiple": True, "default": (), "callback": lambda ctx, param, v: tuple(v) or None}
    else:  # a comma list: tuple[int, ...], tuple[str, ...], or `int | tuple[int, ...]` (a count or indices)
        extra["callback"] = functools.partial(_parse_list, int_or_list=kind == "int_or_list",
                                              item=int if args and args[0] is int else str)
        extra["metavar"] = "N,N,..." if args and args[0] is int else "A,B,..."
    return click.option(*names, prefix + f.name, help=help_text, show_default=False, **extra)


def _kind(hint: Any) -> tuple[Any, tuple]:
    """The CLI kind of a type hint, Optional removed: bool, int, float, str, Literal, tuple or int_or_list."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _kind(inner[0])
        if int in inner and any(typing.get_origin(a) is tuple for a in inner):
            return "int_or_list", (int,)
        raise TypeError(f"no CLI option for {hint}")
    if origin is typing.Literal:
        return typing.Literal, args
    if origin in (tuple, list):
        return tuple, args
    return hint, ()


def _parse_list(ctx, param, value: str | None, *, int_or_list: bool, item: type):
    """'0,2,4' -> (0, 2, 4); with int_or_list a bare '3' is the count 3; bad text is a usage error."""
    import click

    if value is None:
        return None
    try:
        if int_or_list and "," not in value:
            return int(value)
        return tuple(item(v.strip()) for v in value.split(",") if v.strip())
    except ValueError:
        wanted = "a number or comma-separated integers" if int_or_list else "comma-separated integers"
        raise click.BadParameter(f"{value!r} is not {wanted}", ctx=ctx, param=param) from None
