"""One source of truth for options: every config field is exactly one CLI option, one name per idea."""

import dataclasses
import re
import sys
import types
import typing
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from toolchain.cli import main
from toolchain.config import RENAMED, _show, config_from_dict, field_help, shows_default
from toolchain.distill import DistillConfig
from toolchain.errors import RecipeError
from toolchain.recipe import load_recipe
from toolchain.stages import STAGES

sys.path.insert(0, str(Path(__file__).parent))
import gen_cli_doc  # noqa: E402

# Ideas that were spelt several ways; now one name each (the first), in every command and recipe.
# bench's `baseline` became speedup_baseline; the name stays, for evaluate's TF-IDF baseline only.
REUSED = {"baseline"}
OLD = {old: n if isinstance(n, tuple) else (n,) for old, n in RENAMED.items() if old not in REUSED}
SYNONYMS = [{new, *(old for old, n in OLD.items() if new in n)} for new in {n for v in OLD.values() for n in v}]
SYNONYMS += [{"smoke_texts", "texts"}, {"learning_rate", "lr"}]


def _options(name: str) -> list[click.Option]:
    return [p for p in main.commands[name].params if isinstance(p, click.Option)]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_config_field_has_exactly_one_option(name):
    cls = STAGES[name][0]
    params = [p.name for p in _options(name)]
    for f in dataclasses.fields(cls):
        assert params.count(f.name) == 1, f"{name}: config field {f.name} has {params.count(f.name)} CLI options"
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = set(params) - fields - {"force", "as_json", "reference", "provider"}
    assert not extra, f"{name}: options that are no config field: {extra}"


def test_verify_has_an_option_for_every_emulation_setting():
    from toolchain.emulate import EmulateConfig

    params = [p.name for p in _options("verify")]
    assert params.count("emulate") == 1  # --emulate ARCH, the field `arch`, turns emulation on
    for f in dataclasses.fields(EmulateConfig):
        assert f.name == "arch" or params.count(f"emulate_{f.name}") == 1, f.name


@pytest.mark.parametrize("name", sorted(STAGES))
def test_option_flag_is_the_field_name(name):
    for p in _options(name):
        if p.name in {f.name for f in dataclasses.fields(STAGES[name][0])} and not p.multiple:
            assert p.opts[0] == "--" + p.name.replace("_", "-"), f"{name}: {p.opts[0]} for {p.name}"


def test_one_name_per_idea_across_commands_and_configs():
    used = {p.name for c in main.commands for p in _options(c)}
    used |= {f.name for cls, *_ in STAGES.values() for f in dataclasses.fields(cls)}
    for ideas in SYNONYMS:
        assert len(ideas & used) <= 1, f"one idea, several names: {sorted(ideas & used)}"
    assert not set(OLD) & used, f"old names still in use: {set(OLD) & used}"


def test_one_name_means_one_thing_in_every_config():
    """A field name shared by configs has the same kind of type (up to None): one name, one idea."""
    kinds: dict[str, set] = {}
    for cls, *_ in STAGES.values():
        for name, hint in typing.get_type_hints(cls).items():
            kinds.setdefault(name, set()).add(_kind(hint))
    mixed = {k: v for k, v in kinds.items() if len(v) > 1}
    assert not mixed, f"one name, several types: {mixed}"


def _kind(hint) -> str:
    """int, str, Literal, tuple...: a hint's kind, Optional removed (two Literals of one idea may differ in values)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _kind(inner[0]) if len(inner) == 1 else str(hint)
    return str(typing.get_origin(hint) or hint)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_help_shows_the_config_default_once(name):
    cls = STAGES[name][0]
    by_name = {p.name: p for p in _options(name)}
    for f in dataclasses.fields(cls):
        text = by_name[f.name].help
        assert text, f"{name} --{f.name} has no help"
        assert text == text.strip() and len(re.findall(r"\bdefault\b", text)) <= 1, text
        if shows_default(f):
            assert text.endswith(f"(default: {_show(f.default)})"), f"{name} --{f.name}: {text!r}"
        else:
            assert "(default" not in text, f"{name} --{f.name} restates a default: {text!r}"
        assert field_help(f) in text


def test_unset_options_leave_the_config_defaults(tmp_path, monkeypatch):
    """Nothing on the command line: the stage gets exactly its config's defaults."""
    import toolchain.export as export

    seen = {}

    def fake(model, cfg, out, force):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(export, "export", fake)
    CliRunner().invoke(main, ["export", "bert", str(tmp_path / "x")])
    assert seen["cfg"] == export.ExportConfig()


def test_bool_options_read_naturally():
    flags = {o for c in main.commands for p in _options(c) for o in [*p.opts, *p.secondary_opts]}
    assert {"--no-ort-format", "--per-tensor", "--no-mask-guard", "--no-peak", "--fp16-io", "--asymmetric",
            "--no-baseline", "--no-group-by-length"} <= flags
    assert not {f for f in flags if f.startswith("--no-") and f[5:] in ("trust-remote-code", "fp16", "recover")}


@pytest.mark.parametrize("old, new, cls", [("lr", "learning_rate", DistillConfig),
                                           ("max_train_examples", "max_train_samples", DistillConfig),
                                           ("max_samples", "max_eval_samples", STAGES["evaluate"][0]),
                                           ("eval_max_samples", "max_eval_samples", STAGES["quantize"][0]),
                                           ("samples", "calibration_samples", STAGES["prune"][0]),
                                           ("samples", "smoke_texts", STAGES["package"][0])])
def test_old_key_names_its_new_name(old, new, cls):
    with pytest.raises(RecipeError, match=f"'{old}' was renamed to '{new}'") as info:
        config_from_dict(cls, {old: 1})
    assert info.value.fix == f"write {new}: instead" and info.value.key == old


@pytest.mark.parametrize("command, old, new", [("finetune", "--lr", "--learning-rate"),
                                               ("quantize", "--eval-max-samples", "--max-eval-samples"),
                                               ("prune", "--samples", "--calibration-samples"),
                                               ("bench", "--baseline", "--speedup-baseline")])
def test_old_flag_names_its_new_spelling(command, old, new):
    positional = ["a"] if command == "bench" else ["a", "b"]
    r = CliRunner().invoke(main, [command, *positional, old, "1"])
    assert r.exit_code == 2 and f"{old} was renamed to {new}" in r.output


def test_misspelt_key_suggests_the_closest():
    with pytest.raises(RecipeError, match="unknown key 'temprature'") as info:
        config_from_dict(DistillConfig, {"temprature": 2.0})
    assert info.value.fix == "did you mean 'temperature'?"


def test_recipe_with_an_old_key_points_at_its_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: bert-tiny\nsteps:\n  - name: student\n    stage: distill\n    input: model\n"
                      "    config: {lr: 1.0e-4}\n")
    with pytest.raises(RecipeError, match="renamed to 'learning_rate'"):
        load_recipe(recipe)


def test_old_search_names_are_renamed():
    with pytest.raises(ValueError, match="'lr' was renamed to 'learning_rate'"):
        DistillConfig(search=("lr",))


def test_list_options_parse_from_the_command_line():
    ctx = main.commands["distill"].make_context("distill", ["t", "o", "--student-layers", "3", "--layer-map", "1,3"])
    assert ctx.params["student_layers"] == 3 and ctx.params["layer_map"] == (1, 3)
    ctx = main.commands["quantize"].make_context("quantize", ["a", "o", "--exclude-node", "x", "--exclude-node", "y",
                                                              "--op-types", "MatMul,Gather", "--bits", "8"])
    assert ctx.params["exclude_nodes"] == ("x", "y") and ctx.params["op_types"] == ("MatMul", "Gather")
    assert ctx.params["bits"] == 8 and ctx.params["mode"] is None
    with pytest.raises(click.BadParameter, match="'1,x' is not comma-separated integers"):
        main.commands["bench"].make_context("bench", ["a", "--batch", "1,x"])


def test_cli_doc_is_generated_from_the_commands():
    assert gen_cli_doc.DOC.read_text() == gen_cli_doc.render(), "run: python tests/gen_cli_doc.py"


def _trained_at(art, length: int, tmp_path):
    """A copy of `art` whose lineage says it was fine-tuned at `length` tokens."""
    import shutil

    from toolchain.artifact import MANIFEST, Artifact, StageRecord

    folder = tmp_path / "trained"
    shutil.copytree(art.path, folder)
    copy = Artifact.load(folder)
    copy.manifest.lineage.insert(0, StageRecord("finetune", {"max_length": None}, None, 0.0, 1.0,
                                                {"max_length": length}))
    (folder / MANIFEST).write_text(copy.manifest.to_json())
    return Artifact.load(folder)


def test_unset_max_length_is_the_length_the_input_was_made_at(tiny_onnx, tmp_path):
    from toolchain.config import resolve_max_length
    from toolchain.evaluate import EvaluateConfig, evaluate

    assert tiny_onnx("bert").max_length is None  # exported from a plain folder: nothing recorded
    art = _trained_at(tiny_onnx("bert"), 64, tmp_path)
    assert art.max_length == 64
    for name, (cls, *_) in STAGES.items():
        for f in dataclasses.fields(cls):
            assert f.name != "max_length" or f.default is None, f"{name}: max_length has one default, resolved late"
    assert resolve_max_length(EvaluateConfig(), art).max_length == 64
    assert resolve_max_length(EvaluateConfig(max_length=32), art).max_length == 32
    assert resolve_max_length(EvaluateConfig(), None).max_length == 128
    rows = "\n".join(f"the film is {'good' if i % 2 else 'bad'} {i},{'positive' if i % 2 else 'negative'}"
                     for i in range(20))
    (tmp_path / "d.csv").write_text("text,label\n" + rows + "\n")  # the tiny model's labels
    result = evaluate(art.path, EvaluateConfig(data=str(tmp_path / "d.csv")), record=False)
    assert result["max_length"] == 64 and result["config"]["max_length"] is None  # as asked: a recipe compares it
