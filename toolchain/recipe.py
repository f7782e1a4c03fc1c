"""Recipes: a model, its data and an ordered list of steps, run into one folder and resumed on re-run.

    model: minilm                  # built-in name, folder or hub id: what the first step reads
    data: rotten-tomatoes          # the `data` of every step whose config has one, unless the step sets it;
                                   # or {source: my.csv, text_column: review, label_column: stars}
                                   # (+ validation: val.csv, test: test.csv, split_column: split)
    target: android-nnapi          # where the model will run (toolchain/targets.py): the `target` of every step
                                   # whose config has one, unless the step sets it; `run --target` overrides it
    report: {original: teacher, accuracy_budget: 0.01}   # see report.ReportConfig
    quick: {teacher: {max_train_samples: 1000}}          # merged into step configs by `run --quick`
    steps:
      - {name: teacher, stage: finetune, config: {epochs: 1}}
      - {name: onnx, stage: export}                  # input: the previous artifact step
      - {name: eval, stage: evaluate}                # a measure: every artifact step before it
      - {name: bundle, stage: package, input: recommended}

Each transform step writes DIR/<name>. It is skipped when the artifact there verifies, its lineage
record holds the same stage and config, and its recorded input hash is that of the input now: so a
run killed mid-stage resumes where it stopped. A measure (evaluate, bench) is skipped for each
artifact that already holds a result measured with the same config. `input: recommended` reads the
measurements made so far and takes the artifact report.recommend picks.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import console
from .artifact import PLAN_FILE, Artifact, atomic_write_text
from .config import config_from_dict, config_to_dict
from .errors import CheckFailed, IntegrityError, OutputExists, RecipeError
from .guard import output_lock, refuse_overlap, regular_file
from .outcome import outcome
from .report import ReportConfig
from .stages import MEASURE, STAGES, TRANSFORM, stage

TOP_KEYS = ("model", "data", "target", "description", "report", "quick", "steps")
STEP_KEYS = ("name", "stage", "input", "config")
# `data:` as a mapping: its key -> the config field it fills in every step that has that field.
DATA_KEYS = {"source": "data", "text_column": "text_column", "label_column": "label_column",
             "pair_column": "pair_column", "validation": "validation_data", "test": "test_data",
             "split_column": "split_column"}
MODEL, RECOMMENDED = "model", "recommended"  # input words that are not step names
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a step name is a folder name
# A recipe is a page of settings: far larger, or more aliases than a hand-written file has, is an attack
# ("billion laughs": nested aliases of a few hundred bytes expand to gigabytes) or a wrong file.
MAX_RECIPE_BYTES = 1 << 20
MAX_NODES = 100_000  # keys and values once aliases are expanded; models/*.yaml have under 200
MAX_DEPTH = 50


@dataclass(frozen=True)
class Step:
    name: str
    stage: str
    kind: str
    config: Any
    inputs: tuple[str, ...]  # step names, MODEL or RECOMMENDED; exactly one for a transform

    def as_dict(self) -> dict:
        return {"name": self.name, "stage": self.stage, "kind": self.kind, "inputs": list(self.inputs),
                "config": config_to_dict(self.config)}


@dataclass(frozen=True)
class Recipe:
    path: Path
    model: str
    data: dict  # config defaults from the recipe's `data:` (data, text_column, ...)
    steps: tuple[Step, ...]
    report: ReportConfig
    description: str = ""
    quick: bool = False
    target: str = "host"  # the deployment target every step with a `target` field gets, unless it sets its own

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def as_dict(self) -> dict:
        return {"recipe": str(self.path), "model": self.model, "data": self.data, "description": self.description,
                "quick": self.quick, "target": self.target, "report": config_to_dict(self.report), "steps": [s.as_dict() for s in self.steps]}


# ---------------------------------------------------------------- reading and validating


class _Lines:
    """Line numbers of a YAML document's keys and items, so every error points into the file."""

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path, self.lines = path, lines

    def error(self, at: tuple, problem: str, fix: str) -> RecipeError:
        where = at
        while where and where not in self.lines:
            where = where[:-1]
        line = self.lines.get(where, 1)
        dotted = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in at).lstrip(".")
        return RecipeError(f"{self.path}:{line}: {dotted + ': ' if dotted else ''}{problem}", fix)


def read_yaml(path: Path) -> tuple[Any, _Lines]:
    """The document and the line of every key and list item (composed nodes keep their marks)."""
    import yaml

    text = _recipe_text(path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        _check_aliases(node, path)
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise RecipeError(f"{path}: nested too deep to read", "a recipe is a few levels of keys: check the file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise RecipeError(f"{path}:{line}: not valid YAML ({getattr(exc, 'problem', exc)})",
                          "fix the YAML syntax (indentation, colons, quotes)") from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}
    _walk(node, (), lines, path)
    return data, _Lines(path, lines)


def _recipe_text(path: Path) -> str:
    """The recipe file's text: a regular UTF-8 file of at most MAX_RECIPE_BYTES."""
    from .errors import InputNotFound

    if not path.exists() and not path.is_symlink():
        raise InputNotFound(f"recipe {path} does not exist",
                            "check the path (recipes for the built-ins are in models/)")
    regular_file(path, RecipeError, "recipe file (YAML)")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path} is {path.stat().st_size / 1e6:.1f} MB; a recipe is at most "
                          f"{MAX_RECIPE_BYTES >> 20} MB", "pass the recipe's YAML file (see models/)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path} is not UTF-8 text (byte {exc.start})", "save the recipe as UTF-8 YAML") from None


def _check_aliases(node, path: Path) -> None:
    """Refuse recursive aliases and documents whose aliases expand past MAX_NODES, before anything is built.

    PyYAML shares an aliased object, so loading a "billion laughs" is cheap; walking or copying it is not.
    """
    import yaml

    sizes: dict[int, int] = {}

    def size(item, ancestors: frozenset, depth: int) -> int:
        if not isinstance(item, (yaml.MappingNode, yaml.SequenceNode)):
            return 1
        if id(item) in ancestors:
            raise RecipeError(f"{path}:{item.start_mark.line + 1}: an alias refers to its own parent (recursive)",
                              "write the values out instead of the alias")
        if depth > MAX_DEPTH:
            raise RecipeError(f"{path}:{item.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep",
                              "a recipe is a few levels of keys: check the file")
        if id(item) not in sizes:
            children = [v for kv in item.value for v in kv] if isinstance(item, yaml.MappingNode) else item.value
            inner = ancestors | {id(item)}
            sizes[id(item)] = 1 + sum(size(c, inner, depth + 1) for c in children)
            if sizes[id(item)] > MAX_NODES:
                raise RecipeError(f"{path}: its aliases expand to more than {MAX_NODES} values (an alias bomb)",
                                  "write the recipe without nested aliases")
        return sizes[id(item)]

    if node is not None:
        size(node, frozenset(), 0)


def _walk(node, at: tuple, lines: dict, path: Path) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            if at + (k,) in lines:
                raise RecipeError(f"{path}:{key.start_mark.line + 1}: key {k!r} appears twice",
                                  "keep one of them: YAML would silently use the last")
            lines[at + (k,)] = key.start_mark.line + 1
            _walk(value, at + (k,), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[at + (i,)] = item.start_mark.line + 1
            _walk(item, at + (i,), lines, path)


def load_recipe(path: str | Path, *, quick: bool = False, target: str | None = None) -> Recipe:
    """Read and validate a recipe; every error names the key and its line in the file.

    `target` (the CLI's --target) replaces the recipe's own `target:`.
    """
    path = Path(path)
    doc, lines = read_yaml(path)
    if not isinstance(doc, dict):
        raise lines.error((), "a recipe is a mapping with `model` and `steps`", "see models/custom-csv.yaml")
    for key in doc:
        if key not in TOP_KEYS:
            raise lines.error((key,), f"unknown key {key!r}", f"use one of: {', '.join(TOP_KEYS)}")
    model = _text(doc, "model", lines, required=True)
    data = _data(doc.get("data"), lines)
    chosen = _target(target if target is not None else doc.get("target"), lines, from_cli=target is not None)
    if chosen != "host":
        data = data | {"target": chosen}  # filled in like the data: into every step config with a `target`
    quick_block = _mapping(doc.get("quick"), ("quick",), lines)
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise lines.error(("steps",), "`steps` must be a non-empty list", "list the steps: - {name, stage, config}")
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        name = raw.get("name", raw.get("stage")) if isinstance(raw, dict) else None
        overrides = _mapping(quick_block.get(name), ("quick", name), lines) if quick and isinstance(name, str) else {}
        steps.append(_step(raw, i, steps, data, overrides, lines))
    for name in quick_block:
        if name not in {s.name for s in steps}:
            raise lines.error(("quick", name), f"quick names no step {name!r}",
                              f"use a step name: {', '.join(s.name for s in steps)}")
    report = _report(doc.get("report"), steps, lines)
    data = {k: v for k, v in data.items() if k != "target"}
    return Recipe(path, model, data, tuple(steps), report, _text(doc, "description", lines) or "", quick, chosen)


def _target(value, lines: _Lines, from_cli: bool) -> str:
    from .targets import TARGETS

    if value is None:
        return "host"
    if not isinstance(value, str) or value not in TARGETS:
        problem = f"target {value!r} is not one of {', '.join(TARGETS)}"
        if from_cli:
            raise RecipeError(f"--target: {problem}", f"use one of: {', '.join(TARGETS)}")
        raise lines.error(("target",), problem, f"use one of: {', '.join(TARGETS)}")
    return value


def _text(doc: dict, key: str, lines: _Lines, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise lines.error((key,), f"`{key}` must be a non-empty string" + ("" if value is not None else " (missing)"),
                          f"write `{key}: ...`")
    return value


def _data(value, lines: _Lines) -> dict[str, str]:
    """The recipe's data as config defaults: a name or path, or a mapping that also names the columns."""
    if value is None:
        return {}
    if isinstance(value, str) and value.strip():
        return {"data": value}
    if isinstance(value, dict):
        for key, v in value.items():
            if key not in DATA_KEYS:
                raise lines.error(("data", key), f"unknown data key {key!r}", f"use one of: {', '.join(DATA_KEYS)}")
            if not isinstance(v, str) or not v.strip():
                raise lines.error(("data", key), f"`{key}` must be a non-empty string", f"write `{key}: ...`")
        if "source" not in value:
            raise lines.error(("data",), "data needs a `source` (built-in name, file or hub id)", "add `source: ...`")
        return {DATA_KEYS[k]: v for k, v in value.items()}
    raise lines.error(("data",), "`data` must be a name, a path, or a mapping with source and columns",
                      "write `data: rotten-tomatoes` or `data: {source: my.csv, text_column: review}`")


def _mapping(value, at: tuple, lines: _Lines) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise lines.error(at, f"expected a mapping of keys to values, got {type(value).__name__}",
                          "write `key: value` lines indented under it")
    return value


def _step(raw, i: int, earlier: list[Step], data: dict, overrides: dict, lines: _Lines) -> Step:
    at = ("steps", i)
    if not isinstance(raw, dict):
        raise lines.error(at, "a step is a mapping with `stage` (and `name`, `input`, `config`)",
                          "write - {name: ..., stage: ..., config: {...}}")
    for key in raw:
        if key not in STEP_KEYS:
            raise lines.error(at + (key,), f"unknown step key {key!r}", f"use one of: {', '.join(STEP_KEYS)}")
    stage_name = raw.get("stage")
    if stage_name not in STAGES:
        raise lines.error(at + ("stage",), f"unknown stage {stage_name!r}" if stage_name else "missing `stage`",
                          f"use one of: {', '.join(STAGES)}")
    name = raw.get("name", stage_name)
    _check_name(name, at + ("name",) if "name" in raw else at + ("stage",), earlier, lines)
    entry = stage(stage_name)
    cfg = _config(entry.config, raw, name, data, overrides, at, lines)
    inputs = _inputs(raw.get("input"), entry.kind, at, earlier, lines)
    return Step(name, stage_name, entry.kind, cfg, inputs)


def _check_name(name, at: tuple, earlier: list[Step], lines: _Lines) -> None:
    if not isinstance(name, str) or not NAME.match(name):
        raise lines.error(at, f"step name {name!r} is not a plain folder name",
                          "use letters, digits, '.', '_' and '-' only")
    if name in (MODEL, RECOMMENDED, PLAN_FILE, "report.md", "report.html"):
        raise lines.error(at, f"{name!r} is reserved (an input word or a file of the run folder)",
                          "choose another name")
    if any(s.name == name for s in earlier):
        raise lines.error(at, f"a step named {name!r} already exists", "give each step its own name")


def _config(cls, raw: dict, name: str, data: dict, overrides: dict, at: tuple, lines: _Lines):
    values = dict(_mapping(raw.get("config"), at + ("config",), lines))
    origin = {k: at + ("config", k) for k in values}
    fields = {f.name for f in dataclasses.fields(cls)}
    source_key = {v: k for k, v in DATA_KEYS.items()} | {"target": "target"}
    for key, value in data.items():  # the recipe's data and target, where the stage reads them and did not set them
        if key in fields and key not in values:
            at_data = ("target",) if key == "target" else ("data", source_key[key])
            values[key], origin[key] = value, at_data if at_data in lines.lines or key == "target" else ("data",)
    for k, v in overrides.items():
        values[k], origin[k] = v, ("quick", name, k)
    try:
        return config_from_dict(cls, values, where=f"step {name!r}")
    except RecipeError as exc:
        raise lines.error(origin.get(exc.key, at + ("config",)), exc.problem, exc.fix or "correct the config") from None


def _inputs(value, kind: str, at: tuple, earlier: list[Step], lines: _Lines) -> tuple[str, ...]:
    made = [s.name for s in earlier if s.kind == TRANSFORM]
    measured = any(s.kind == MEASURE for s in earlier)
    if value is None:
        if kind == MEASURE:
            if not made:
                raise lines.error(at, "a measurement needs an earlier step that makes an artifact",
                                  "put it after an export or another artifact step")
            return tuple(made)
        return (made[-1] if made else MODEL,)
    names = value if kind == MEASURE and isinstance(value, list) else [value]
    for j, v in enumerate(names):
        where = at + ("input", j) if isinstance(value, list) else at + ("input",)
        if not isinstance(v, str):
            raise lines.error(where, f"input must be a step name, got {type(v).__name__}", "write input: <step name>")
        if (kind == TRANSFORM and v == MODEL) or v in made:
            continue
        if kind == TRANSFORM and v == RECOMMENDED and measured:
            continue
        raise lines.error(where, _bad_input(v, kind, earlier, measured), f"use one of: {', '.join(made) or MODEL}")
    return tuple(names)


def _bad_input(v: str, kind: str, earlier: list[Step], measured: bool) -> str:
    if v == RECOMMENDED:
        return ("`recommended` needs an earlier measurement (evaluate, bench) to choose from" if kind == TRANSFORM
                else "a measurement takes step names, not `recommended`")
    if v == MODEL:
        return "a measurement records into artifacts: name an artifact step, not the model"
    if any(s.name == v for s in earlier):
        return f"input {v!r} is a measurement step; name the artifact step it measured"
    return f"input {v!r} names no earlier step"


def _report(value, steps: list[Step], lines: _Lines) -> ReportConfig:
    try:
        cfg = config_from_dict(ReportConfig, _mapping(value, ("report",), lines), where="report")
    except RecipeError as exc:
        raise lines.error(("report", exc.key) if exc.key else ("report",), exc.problem, exc.fix or "") from None
    made = [s.name for s in steps if s.kind == TRANSFORM]
    if cfg.original is not None and cfg.original not in made:
        raise lines.error(("report", "original"), f"original {cfg.original!r} names no artifact step",
                          f"use one of: {', '.join(made)}")
    return cfg


# ---------------------------------------------------------------- deciding what to run


@dataclass
class Decision:
    step: Step
    run: bool
    reason: str
    inputs: list[str]  # what the step reads: a model spec or artifact paths (measures: only those to measure)


def plan(recipe: Recipe, out: str | Path, *, force: bool = False) -> list[Decision]:
    """What `run` would do now, step by step, without running anything (the --dry-run)."""
    out, pending, decisions = Path(out), set(), []
    for step in recipe.steps:
        waiting = [i for i in step.inputs if i in pending or (i == RECOMMENDED and pending)]
        if waiting:
            d = Decision(step, True, f"input {waiting[0]} is rebuilt first" if waiting[0] != RECOMMENDED
                         else "input is the recommended artifact, chosen once the measurements are in", [])
        else:
            try:
                d = decide(step, recipe, out, force=force)
            except CheckFailed as exc:  # `recommended` with nothing measured yet
                d = Decision(step, True, f"input to be chosen at run time ({exc.problem})", [])
        if d.run:
            pending.add(step.name)
        decisions.append(d)
    return decisions


def decide(step: Step, recipe: Recipe, out: Path, *, force: bool = False) -> Decision:
    """Whether `step` must run given what is in `out` now, and why."""
    if step.kind == MEASURE:
        return _decide_measure(step, out, force)
    src = _source(step.inputs[0], recipe, out)
    target = out / step.name
    if not Artifact.is_artifact(target):
        return Decision(step, True, "not built yet", [src])
    if force:
        return Decision(step, True, "--force", [src])
    try:
        art = Artifact.load(target)
    except IntegrityError as exc:
        return Decision(step, True, f"its manifest is unreadable ({exc.problem})", [src])
    problems = art.verify()
    if problems:
        return Decision(step, True, f"its files changed since it was written ({problems[0]})", [src])
    record = art.manifest.lineage[-1]
    if record.stage != step.stage:
        return Decision(step, True, f"it was made by stage {record.stage!r}", [src])
    defaults = {f.name: f.default for f in dataclasses.fields(step.config) if f.default is not dataclasses.MISSING}
    changed = config_change(config_to_dict(step.config), record.config, defaults)
    if changed:
        return Decision(step, True, f"config changed: {changed}", [src])
    if not _same_input(src, record):
        what = f"{RECOMMENDED} ({Path(src).name})" if step.inputs[0] == RECOMMENDED else step.inputs[0]
        return Decision(step, True, f"input {what} changed since it was built", [src])
    return Decision(step, False, "input and config unchanged", [src])


def _source(name: str, recipe: Recipe, out: Path) -> str:
    if name == MODEL:
        return recipe.model
    if name == RECOMMENDED:
        from .report import recommend

        return str(out / recommend(out, recipe.report))
    return str(out / name)


def _same_input(src: str, record) -> bool:
    from .modeling import resolve_model, source_hash

    expected = Artifact.load(src).content_hash if Artifact.is_artifact(Path(src)) else source_hash(resolve_model(src))
    if expected is None:  # a hub id: nothing local to hash, so the name must match
        return record.input_hash is None and record.config.get("source") == src
    return record.input_hash == expected


def config_change(wanted: dict, recorded: dict, defaults: dict | None = None) -> str | None:
    """The first config key whose recorded value differs, as 'key: old -> new'; None when all match.

    A key the record lacks counts as unchanged when the wanted value is the field's default: the artifact was
    made before that field existed, and the default keeps what it did then.
    """
    wanted, recorded, defaults = _plain(wanted), _plain(recorded), _plain(defaults or {})
    for key, value in wanted.items():
        if key not in recorded and key in defaults and defaults[key] == value:
            continue
        if recorded.get(key, "<unset>") != value:
            return f"{key}: {recorded.get(key, '<unset>')!r} -> {value!r}"
    return None


def _plain(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def _decide_measure(step: Step, out: Path, force: bool) -> Decision:
    wanted = _plain(config_to_dict(step.config))
    todo, why = [], []
    for name in step.inputs:
        path = out / name
        if force or not Artifact.is_artifact(path):
            todo.append(str(path))
            why.append("--force" if force else f"{name} not built yet")
            continue
        try:
            results = Artifact.load(path).manifest.results
        except IntegrityError:
            results = {}  # an unreadable manifest: the transform before re-runs it, or the stage reports it
        done = any(k.startswith(f"{step.stage}/") and isinstance(v, dict) and _plain(v.get("config") or {}) == wanted
                   for k, v in results.items())
        if not done:
            todo.append(str(path))
            why.append(f"{name} not measured with this config")
    if not todo:
        return Decision(step, False, "already measured with this config", [])
    reason = why[0] if len(why) == 1 else f"{len(why)} artifacts to measure ({why[0]}, ...)"
    return Decision(step, True, reason, todo)


# ---------------------------------------------------------------- running


def check_run_folder(recipe: Recipe, out: str | Path) -> None:
    """Refuse an --out that is not new, empty or an earlier run folder, and a recipe that reads inside it.

    A recipe writes recipe.json, report.md and a folder per step: in a folder it did not make, those
    would replace a user's files; reading its own output as its model, it would compound on each re-run.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"--out {out} is a file", "choose a folder for the run (new or empty)")
    if out.is_dir() and any(out.iterdir()):
        if Artifact.is_artifact(out):
            raise OutputExists(f"--out {out} is an artifact, not a run folder",
                               "choose a new or empty folder for the run; the artifact can be the recipe's model")
        if (out / PLAN_FILE).exists() and not is_run_folder(out):
            raise OutputExists(f"--out {out} holds a {PLAN_FILE} that is not a run plan (corrupt, or not written "
                               "by toolchain run)", f"choose a new folder; if it is an earlier run of yours, delete "
                               f"its {PLAN_FILE} and run again")
        if not is_run_folder(out):
            raise OutputExists(f"--out {out} holds files that no recipe run wrote (no run plan {PLAN_FILE} in it)",
                               "choose a new or empty folder for the run")
    reads = [recipe.model, recipe.data.get("data"), *(getattr(s.config, "data", None) for s in recipe.steps)]
    refuse_overlap(out, reads, what="run folder")


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` holds the plan (recipe.json) that `run` writes: the mark of a run folder."""
    try:
        plan = json.loads((Path(folder) / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(plan, dict) and {"recipe", "model", "steps"} <= set(plan) and isinstance(plan["steps"], list)


def run(recipe: Recipe, out: str | Path, *, force: bool = False, echo: Callable[[str], None] = print) -> list[dict]:
    """Run the recipe into `out`, skipping what is already done: a line as each step starts, one saying
    what came out of it (with elapsed time and an ETA), and library chatter in DIR/toolchain.log.

    Returns one record per step: name, stage, action (ran / skipped), reason, seconds, path.
    """
    out = Path(out)
    with output_lock(out):
        check_run_folder(recipe, out)
        return _run(recipe, out, force, echo)


def _run(recipe: Recipe, out: Path, force: bool, echo: Callable[[str], None]) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PLAN_FILE, json.dumps(recipe.as_dict(), indent=2, default=str) + "\n")
    with console.log_to(out / console.LOG_FILE) as log_file:
        return _steps(recipe, out, force, _Echo(echo), log_file)


class _Echo:
    """The run's own lines: to `echo` unless -q, and always into the log."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo

    def __call__(self, msg: str, at: int = console.NORMAL) -> None:
        console.log.info(msg)
        if console.shows(at):
            self.echo(msg)


def _steps(recipe: Recipe, out: Path, force: bool, tell: _Echo, log_file: Path) -> list[dict]:
    done, n, times, t0 = [], len(recipe.steps), StepTimes(out, recipe.quick), time.perf_counter()
    tell(f"run {recipe.path.name} -> {out}: {n} steps{' (quick)' if recipe.quick else ''}; "
         f"library messages go to {log_file}")
    for i, step in enumerate(recipe.steps, 1):
        tag = f"[{i}/{n}] {step.name} ({step.stage})"
        d = decide(step, recipe, out, force=force)
        if not d.run:
            tell(f"{tag}: skipped, {d.reason}")
            done.append(_record(step, "skipped", d.reason, 0.0, out))
            continue
        last = times.get(step.name)
        tell(f"{tag}: running, {d.reason}" + (f" (took {console.duration(last)} last time)" if last else ""))
        started = time.perf_counter()
        try:
            with console.capture():
                _execute(step, d, out, force)
        except BaseException:
            console.log.exception(f"{tag} failed")
            tell(f"{tag}: failed after {console.duration(time.perf_counter() - started)} (log: {log_file})",
                 console.QUIET)
            raise
        seconds = time.perf_counter() - started
        times.record(step, seconds)
        measured = [str(out / name) for name in step.inputs] if step.kind == MEASURE else None
        what = outcome(step.stage, out / step.name, measured, config_to_dict(step.config))
        eta = times.eta(recipe.steps[i:])
        tell(f"    done in {console.duration(seconds)}" + (f": {what}" if what else "")
             + f"  [elapsed {console.duration(time.perf_counter() - t0)}"
             + (f", ETA ~{console.duration(eta)}]" if eta else "]"))
        done.append(_record(step, "ran", d.reason, seconds, out))
    ran = sum(r["action"] == "ran" for r in done)
    tell(f"finished {n} steps ({ran} ran, {n - ran} skipped) in {console.duration(time.perf_counter() - t0)}")
    return done


STEP_TIMES = "step-times.json"  # in DIR: how long each step took when it last ran, for the next run's ETA
# A step never run in this folder: rough full-size times on a 2-core machine (models/minilm-rotten-tomatoes.yaml).
ROUGH_SECONDS = {"finetune": 420.0, "distill": 240.0, "prune": 120.0, "bench": 120.0, "quantize": 30.0}
ROUGH_OTHER = 20.0


class StepTimes:
    """Seconds each step took when it last ran in this run folder, kept apart for --quick runs."""

    def __init__(self, out: Path, quick: bool):
        self.path, self.kind = out / STEP_TIMES, "quick" if quick else "full"
        try:
            self.all = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.all = {}
        if not isinstance(self.all, dict) or not isinstance(self.all.get(self.kind, {}), dict):
            self.all = {}
        self.seconds = self.all.setdefault(self.kind, {})
        self.rough, self.actual = 0.0, 0.0  # steps of this run with no earlier time: rough guess vs what they took

    def get(self, name: str) -> float | None:
        value = self.seconds.get(name)
        return float(value) if isinstance(value, (int, float)) else None

    def record(self, step: Step, seconds: float) -> None:
        if self.get(step.name) is None:
            self.rough += ROUGH_SECONDS.get(step.stage, ROUGH_OTHER)
            self.actual += seconds
        self.seconds[step.name] = round(seconds, 1)
        atomic_write_text(self.path, json.dumps(self.all, indent=2, sort_keys=True) + "\n")

    def eta(self, remaining) -> float:
        """Seconds the remaining steps took last time; for those never run here, the rough defaults scaled by
        how the steps run so far compared with theirs (a tiny model or --quick is far below full size)."""
        scale = self.actual / self.rough if self.rough else 1.0
        total = 0.0
        for step in remaining:
            known = self.get(step.name)
            total += known if known is not None else scale * ROUGH_SECONDS.get(step.stage, ROUGH_OTHER)
        return total


def _execute(step: Step, d: Decision, out: Path, force: bool) -> None:
    entry = stage(step.stage)
    if step.kind == MEASURE:
        entry.fn(d.inputs, step.config)
        return
    target = out / step.name
    # The recipe owns DIR: a stale artifact of this step is replaced; anything else needs --force.
    entry.fn(d.inputs[0], step.config, target, force=force or Artifact.is_artifact(target))


def _record(step: Step, action: str, reason: str, seconds: float, out: Path) -> dict:
    return {"step": step.name, "stage": step.stage, "kind": step.kind, "action": action, "reason": reason,
            "seconds": round(seconds, 2), "path": str(out / step.name) if step.kind == TRANSFORM else None}
