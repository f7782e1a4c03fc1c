"""The bad-input matrix: every command meets broken, hostile or mistaken input and must answer it with
one error line, a fix line and a distinct exit code, writing nothing.

ROWS is the matrix, one line per case: the command line after `toolchain` with {placeholders}, what is
wrong, the exit code, a fragment of the error line and one of the fix line. Each placeholder names a
SITUATION, built fresh in the test's temporary folder. A new command adds its rows here (one line
each) and, if it needs one, a situation (one builder). tests/test_bad_input.py runs every row, and
`python tests/gen_bad_input_doc.py` writes docs/bad-input.md from this file (a test fails when stale).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MANIFEST = "manifest.json"  # as toolchain.artifact.MANIFEST; not imported so the doc script stays light


@dataclass(frozen=True)
class Row:
    args: str  # command line after `toolchain`, with {placeholders} from SITUATIONS
    situation: str  # what is wrong, in words
    code: int  # expected exit code (toolchain/errors.py; 2 is click's usage error)
    says: str  # a fragment of the error line
    fix: str = ""  # a fragment of the fix line

    @property
    def command(self) -> str:
        return self.args.split()[0]

    @property
    def id(self) -> str:
        return f"{self.command}-{self.situation}".replace(" ", "-")


@dataclass(frozen=True)
class Situation:
    what: str  # shown in the doc's legend
    build: Callable  # (folder to create, Kit) -> None; nothing is built for {missing}-like names


class Kit:
    """What a builder may start from: the shared tiny models and their ONNX exports."""

    def __init__(self, tiny, tiny_onnx, root: Path):
        self.tiny, self.tiny_onnx, self.root = tiny, tiny_onnx, root

    def bert(self, dest: Path) -> None:
        shutil.copytree(self.tiny("bert"), dest)

    def onnx(self, dest: Path) -> None:
        shutil.copytree(self.tiny_onnx("bert").path, dest)

    def torch_artifact(self, dest: Path) -> None:
        from toolchain.artifact import write_artifact

        with write_artifact(dest, stage="finetune", config={}, format="torch", task="text-classification",
                            model_type="bert") as o:
            shutil.copytree(self.tiny("bert"), o.folder, dirs_exist_ok=True)


def rehash(folder: Path) -> None:
    """Make the manifest's hashes match the folder again: corruption that `verify` cannot see."""
    from toolchain.artifact import hash_payload

    data = json.loads((folder / MANIFEST).read_text())
    data["files"] = hash_payload(folder)
    (folder / MANIFEST).write_text(json.dumps(data))


def snapshot(root: Path) -> dict[str, str]:
    """Every path below `root` (hidden ones too) with its content hash or link target: "nothing written"
    means this is the same before and after a command."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _nothing(dest: Path, kit: Kit) -> None:
    pass


def _empty(dest: Path, kit: Kit) -> None:
    dest.mkdir()


def _bert_without(name: str):
    def build(dest: Path, kit: Kit) -> None:
        kit.bert(dest)
        (dest / name).unlink()
    return build


def _bert_then(edit: Callable[[Path], None]):
    def build(dest: Path, kit: Kit) -> None:
        kit.bert(dest)
        edit(dest)
    return build


def _onnx_then(edit: Callable[[Path], None], rehashed: bool):
    def build(dest: Path, kit: Kit) -> None:
        kit.onnx(dest)
        edit(dest)
        if rehashed:
            rehash(dest)
    return build


def _torch_art_then(edit: Callable[[Path], None], rehashed: bool):
    def build(dest: Path, kit: Kit) -> None:
        kit.torch_artifact(dest)
        edit(dest)
        if rehashed:
            rehash(dest)
    return build


def _pickle_weights(dest: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(dest / "model.safetensors"), dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()


class Hostile:
    """Pickles to a call of os.system: what a poisoned checkpoint does. Unpickled, it creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_pickle(dest: Path) -> None:
    import torch

    _pickle_weights(dest)
    state = torch.load(dest / "pytorch_model.bin", weights_only=True)
    state["bert.pooler.dense.bias"] = Hostile(dest.parent / "PICKLE-RAN")
    torch.save(state, dest / "pytorch_model.bin")


CUSTOM_CODE = """import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import BertConfig, BertForSequenceClassification
class EvilConfig(BertConfig):
    model_type = "evil-bert"
class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig
"""


def _custom_code(dest: Path) -> None:
    """A folder whose config asks for its own Python code: running it would create CODE-RAN beside it."""
    (dest / "evil.py").write_text(CUSTOM_CODE.format(marker=str(dest.parent / "CODE-RAN")))
    _edit_json(dest / "config.json", model_type="evil-bert",
               auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"})


def _external_data(location: Callable[[Path], str]):
    """Move one initializer of model.onnx to external data at `location` (relative to the model)."""

    def edit(dest: Path) -> None:
        import onnx

        secret = dest.parent / "secret.bin"
        secret.write_bytes(b"\0" * 4096)  # what the model would read, were the path not refused
        model = onnx.load(str(dest / "model.onnx"))
        tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        n = len(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location(dest)), ("offset", "0"), ("length", str(n))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(dest / "model.onnx"))

    return edit


def _link_outside(dest: Path) -> None:
    (dest.parent / "elsewhere.txt").write_text("not part of the artifact")
    os.symlink(dest.parent / "elsewhere.txt", dest / "vocab-link.txt")


def _manifest_text(text: str):
    return lambda dest: (dest / MANIFEST).write_text(text)


def _manifest_edit(**changes):
    return lambda dest: _edit_json(dest / MANIFEST, **changes)


def _manifest_started_text(dest: Path) -> None:
    data = json.loads((dest / MANIFEST).read_text())
    data["lineage"][-1]["started"] = "yesterday"
    (dest / MANIFEST).write_text(json.dumps(data))


def _csv(text: str | bytes, name: str = "data.csv"):
    def build(dest: Path, kit: Kit) -> None:
        dest.mkdir()
        content = text if isinstance(text, bytes) else text.encode()
        (dest / name).write_bytes(content)
    return build


def _rows(n: int = 40, labels=("negative", "positive")) -> str:
    words = ("good", "bad", "fun", "dull")
    return "text,label\n" + "".join(f"the film was {words[i % 4]} {i},{labels[i % len(labels)]}\n" for i in range(n))


def _int8(dest: Path, kit: Kit) -> None:
    from toolchain.quantize import QuantizeConfig, quantize

    quantize(kit.tiny_onnx("bert"), QuantizeConfig(), dest)


def _out_with_files(dest: Path, kit: Kit) -> None:
    dest.mkdir()
    (dest / "notes.txt").write_text("my own notes, not an artifact")


def _out_file(dest: Path, kit: Kit) -> None:
    dest.write_text("a file, not a folder")


def _fifo(dest: Path, kit: Kit) -> None:
    dest.mkdir()
    os.mkfifo(dest / "data.csv")  # reading it would block until a writer comes: it must be refused unopened


def _jsonl(*rows: dict) -> Callable:
    return _csv("".join(json.dumps(r) + "\n" for r in rows), "data.jsonl")


def _labelled(n: int = 40) -> list[dict]:
    return [{"text": f"the film was {('good', 'bad')[i % 2]} {i}", "label": ("positive", "negative")[i % 2]}
            for i in range(n)]


def _recipe(text: str) -> Callable:
    def build(dest: Path, kit: Kit) -> None:
        dest.mkdir()
        (dest / "recipe.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    return build


# Nine aliases of nine aliases, nine levels deep: a few hundred bytes that expand to 9**9 values.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
) + "model: minilm\nsteps: [{stage: export}]\n"
RECIPE = "model: {model}\nsteps:\n  - {{name: onnx, stage: export}}\n"


def _run_reading_itself(dest: Path, kit: Kit) -> None:
    """A run folder (dest/run) from an earlier run, and a recipe whose model is that run's own output."""
    kit.bert(dest / "run" / "teacher")
    (dest / "run" / "recipe.json").write_text(json.dumps({"recipe": "r.yaml", "model": "minilm", "steps": []}))
    (dest / "recipe.yaml").write_text(RECIPE.format(model=dest / "run" / "teacher"))


def _recipe_for_bert(dest: Path, kit: Kit) -> None:
    kit.bert(dest / "model")
    (dest / "recipe.yaml").write_text(RECIPE.format(model=dest / "model"))


def _report_folder(edit: Callable[[Path], None] | None = None) -> Callable:
    def build(dest: Path, kit: Kit) -> None:
        kit.onnx(dest / "onnx")
        if edit:
            edit(dest)
    return build


def _bench_json(rows) -> Callable:
    return _csv(json.dumps({"rows": rows, "machine": {}}), "bench.json")


def _bundle_then(edit: Callable[[Path], None]) -> Callable:
    def build(dest: Path, kit: Kit) -> None:
        from toolchain.package import PackageConfig, package

        package(kit.tiny_onnx("bert").path, PackageConfig(ort_format=False, mobile_check=False), dest)
        edit(dest)
        rehash(dest)
    return build


def _no_smoke(dest: Path) -> None:
    info = json.loads((dest / "bundle.json").read_text())
    del info["smoke"]
    (dest / "bundle.json").write_text(json.dumps(info))


def _manifest_link(dest: Path) -> None:
    (dest.parent / "elsewhere.json").write_text((dest / MANIFEST).read_text())
    (dest / MANIFEST).unlink()
    os.symlink(dest.parent / "elsewhere.json", dest / MANIFEST)


# Data situations are folders holding one file; a row names the file as {name}/data.csv (see DATA_FILE).
SITUATIONS: dict[str, Situation] = {
    "missing": Situation("a path that does not exist", _nothing),
    "out": Situation("a fresh output path (must still not exist afterwards)", _nothing),
    "empty": Situation("an empty folder", _empty),
    "bert": Situation("a valid tiny BERT classifier folder (tests/tiny_models.py)", _bert_then(lambda d: None)),
    "no_config": Situation("the BERT folder without config.json", _bert_without("config.json")),
    "bad_config": Situation("config.json that is not JSON",
        _bert_then(lambda d: (d / "config.json").write_text("{oops"))),
    "shape_mismatch": Situation("config.json says intermediate_size 48; the safetensors hold 64",
                                _bert_then(lambda d: _edit_json(d / "config.json", intermediate_size=48))),
    "trunc_safetensors": Situation("model.safetensors cut in half",
        _bert_then(lambda d: _truncate(d / "model.safetensors"))),
    "bad_tokenizer": Situation("tokenizer.json replaced by random bytes",
        _bert_then(lambda d: _random(d / "tokenizer.json"))),
    "pickle_only": Situation("weights only as pytorch_model.bin (a pickle)", _bert_then(_pickle_weights)),
    "hostile_pickle": Situation("pytorch_model.bin whose pickle calls os.system", _bert_then(_hostile_pickle)),
    "custom_code": Situation("config.json with auto_map to Python code in the folder", _bert_then(_custom_code)),
    "torch_art": Situation("a valid torch artifact of the tiny BERT", lambda d, k: k.torch_artifact(d)),
    "torch_art_trunc": Situation("torch artifact, model.safetensors truncated, manifest hashes updated",
                                 _torch_art_then(lambda d: _truncate(d / "model.safetensors"), rehashed=True)),
    "torch_art_trunc_stale": Situation("torch artifact, model.safetensors truncated, manifest hashes not updated",
                                       _torch_art_then(lambda d: _truncate(d / "model.safetensors"), rehashed=False)),
    "onnx_art": Situation("a valid ONNX artifact of the tiny BERT", lambda d, k: k.onnx(d)),
    "lm_onnx": Situation("a valid ONNX artifact of the tiny GPT-2 (causal LM)",
                         lambda d, k: shutil.copytree(k.tiny_onnx("gpt2").path, d)),
    "onnx_trunc": Situation("ONNX artifact, model.onnx truncated, manifest hashes updated",
                            _onnx_then(lambda d: _truncate(d / "model.onnx"), rehashed=True)),
    "onnx_trunc_stale": Situation("ONNX artifact, model.onnx truncated, manifest hashes not updated",
                                  _onnx_then(lambda d: _truncate(d / "model.onnx"), rehashed=False)),
    "onnx_random": Situation("ONNX artifact, model.onnx random bytes, manifest hashes updated",
                             _onnx_then(lambda d: _random(d / "model.onnx"), rehashed=True)),
    "onnx_random_stale": Situation("ONNX artifact, model.onnx random bytes, manifest hashes not updated",
                                   _onnx_then(lambda d: _random(d / "model.onnx"), rehashed=False)),
    "onnx_no_config": Situation("ONNX artifact without config.json, manifest hashes updated",
                                _onnx_then(lambda d: (d / "config.json").unlink(), rehashed=True)),
    "onnx_extdata_up": Situation("ONNX artifact whose weights point at ../secret.bin (hashes updated)",
                                 _onnx_then(_external_data(lambda d: "../secret.bin"), rehashed=True)),
    "onnx_extdata_abs": Situation("ONNX artifact whose weights point at an absolute path (hashes updated)",
                                  _onnx_then(_external_data(lambda d: str(d.parent / "secret.bin")), rehashed=True)),
    "onnx_link": Situation("ONNX artifact holding a symlink to a file outside it",
                           _onnx_then(_link_outside, rehashed=False)),
    "art_missing_file": Situation("ONNX artifact with vocab.txt deleted",
                                  _onnx_then(lambda d: (d / "vocab.txt").unlink(), rehashed=False)),
    "art_extra_file": Situation("ONNX artifact with an extra file dropped in",
                                _onnx_then(lambda d: (d / "payload.sh").write_text("echo hi"), rehashed=False)),
    "manifest_not_json": Situation("manifest.json that is not JSON", _onnx_then(_manifest_text("{\"schema"), False)),
    "manifest_escape": Situation("manifest.json listing ../../etc/passwd",
                                 _onnx_then(_manifest_edit(files={"../../etc/passwd": "0" * 64}), False)),
    "manifest_future": Situation("manifest.json of schema version 99", _onnx_then(_manifest_edit(schema_version=99),
        False)),
    "manifest_types": Situation("manifest.json whose lineage start time is a string",
                                _onnx_then(_manifest_started_text, False)),
    "data": Situation("a valid CSV: 40 rows, labels negative/positive", _csv(_rows())),
    "data_missing": Situation("a CSV path that does not exist", _nothing),
    "data_no_column": Situation("a CSV without the text column (header sentence,label)",
                                _csv(_rows().replace("text,label", "sentence,label", 1))),
    "data_no_rows": Situation("a CSV with a header and no rows", _csv("text,label\n")),
    "data_not_utf8": Situation("a CSV with Latin-1 bytes",
        _csv(_rows().encode() + "caf\u00e9,positive\n".encode("latin-1"))),
    "data_one_class": Situation("a CSV whose rows are all one label", _csv(_rows(labels=("positive",)))),
    "data_tiny_class": Situation("a CSV where one label has a single example",
                                 _csv(_rows(labels=("positive",)) + "awful,negative\n")),
    "data_bad_jsonl": Situation("a JSONL file with a broken line",
                                _csv('{"text": "good", "label": "positive"}\n{"text": oops\n', "data.jsonl")),
    "data_xlsx": Situation("a file of an unknown type (.xlsx)", _csv(b"PK\x03\x04", "data.xlsx")),
    "data_empty_text": Situation("a CSV with an empty text value", _csv(_rows() + ",negative\n")),
    "data_bad_split": Situation("a CSV whose split column says 'holdout' in one row",
                                _csv(_rows().replace("text,label\n", "text,label,split\n", 1)
                                     .replace("\n", ",train\n").replace("label,split,train", "label,split", 1)
                                     + "the film was fine,positive,holdout\n")),
    "onnx_int8": Situation("an ONNX artifact of the tiny BERT that is already int8 (dynamic)", _int8),
    "out_artifact": Situation("an output folder that already holds an artifact", lambda d, k: k.torch_artifact(d)),
    "out_files": Situation("an output folder holding a user's own files", _out_with_files),
    "out_file": Situation("an output path that is a file", _out_file),
    "data_fifo": Situation("a FIFO (named pipe) where the data file should be", _fifo),
    "data_null_label": Situation("a JSONL file where one row has `label: null`",
                                 _jsonl(*_labelled(), {"text": "so so", "label": None})),
    "data_no_label": Situation("a JSONL file where one row has no label key", _jsonl(*_labelled(), {"text": "so so"})),
    "data_mixed_labels": Situation("a JSONL file whose labels mix 1, \"1\" and true",
                                   _jsonl(*[{"text": f"film {i}", "label": (1, "1", True, 0)[i % 4]} for i in range(40)])),
    "data_short_row": Situation("a CSV whose last row has no label field", _csv(_rows() + "a row cut short\n")),
    "data_bom_sentiment": Situation("a CSV saved with a byte-order mark (header text,label)",
                                    _csv(b"\xef\xbb\xbf" + _rows().encode())),
    "data_dir": Situation("a folder where the data file should be", lambda d, k: (d.mkdir(), (d / "data.csv").mkdir())),
    "data_lm_csv": Situation("a CSV given as a language model's plain text", _csv(_rows())),
    "data_short_text": Situation("a one-word .txt file as a language model's text", _csv("Hello", "data.txt")),
    "run_bad_plan_out": Situation("a folder whose recipe.json is not JSON", _csv("{not json", "recipe.json")),
    "gpt2": Situation("a valid tiny GPT-2 folder", lambda d, k: shutil.copytree(k.tiny("gpt2"), d)),
    "huge_layers": Situation("config.json claims 200,000 layers; the weights hold 2",
                             _bert_then(lambda d: _edit_json(d / "config.json", num_hidden_layers=200_000))),
    "huge_hidden": Situation("config.json claims hidden_size 10,000,000", _bert_then(
        lambda d: _edit_json(d / "config.json", hidden_size=10_000_000))),
    "no_tokenizer": Situation("the BERT folder without any tokenizer file", _bert_then(
        lambda d: [p.unlink() for p in list(d.iterdir()) if p.name.startswith(("tokenizer", "vocab", "special"))])),
    "manifest_link": Situation("manifest.json is a symlink to a file outside the artifact",
                               _onnx_then(_manifest_link, False)),
    "recipe_bomb": Situation("a recipe of nested YAML aliases (a billion laughs)", _recipe(ALIAS_BOMB)),
    "recipe_recursive": Situation("a recipe with a recursive YAML alias", _recipe("a: &a [*a]\nmodel: minilm\n")),
    "recipe_latin1": Situation("a recipe with Latin-1 bytes", _recipe(b"model: caf\xe9\nsteps: []\n")),
    "recipe": Situation("a valid recipe (the tiny BERT, one export step)", _recipe_for_bert),
    "run_self": Situation("a run folder (run/) and a recipe whose model is run/teacher", _run_reading_itself),
    "run_bad_plan": Situation("a run folder whose recipe.json is not JSON", _report_folder(
        lambda d: (d / "recipe.json").write_text("{not json"))),
    "report_dir": Situation("a folder holding one ONNX artifact", _report_folder()),
    "report_user_md": Situation("a folder holding one ONNX artifact and the user's own report.md", _report_folder(
        lambda d: (d / "report.md").write_text("# my notes\n"))),
    "bench_bad_rows": Situation("a bench JSON file whose rows are numbers", _bench_json([1, 2])),
    "bundle_no_smoke": Situation("an edge bundle whose bundle.json lost its smoke section (hashes updated)",
                                 _bundle_then(_no_smoke)),
    "bundle_trunc": Situation("an edge bundle with model.onnx truncated (hashes updated)",
                              _bundle_then(lambda d: _truncate(d / "model.onnx"))),
}

# A data situation is used as a file inside its folder.
DATA_FILE = {"data_bad_jsonl": "data.jsonl", "data_xlsx": "data.xlsx", "data_null_label": "data.jsonl",
             "data_no_label": "data.jsonl", "data_mixed_labels": "data.jsonl", "data_short_text": "data.txt"}

ROWS: list[Row] = [
    # export MODEL OUT
    Row("export {missing} {out}", "model path does not exist", 3, "does not exist", "check the path"),
    Row("export not-a-builtin-xyz {out}", "unknown name, hub unreachable", 3, "not a built-in model", "check the name"),
    Row("export {empty} {out}", "empty model folder", 4, "is empty", "save_pretrained"),
    Row("export {no_config} {out}", "model folder without config.json", 4, "has no config.json", "save_pretrained"),
    Row("export {bad_config} {out}", "config.json is not JSON", 4, "could not be loaded", "check the folder"),
    Row("export {shape_mismatch} {out}", "safetensors shapes disagree with config.json", 4,
        "another shape than config.json", "re-save"),
    Row("export {trunc_safetensors} {out}", "truncated model.safetensors", 4, "corrupt or truncated",
        "save the model again"),
    Row("export {bad_tokenizer} {out}", "corrupt tokenizer.json", 4, "no usable tokenizer", "save the tokenizer"),
    Row("export {pickle_only} {out}", "pickle weights only, no --allow-pickle", 10, "only pickle weights",
        "--allow-pickle"),
    Row("export {hostile_pickle} {out} --allow-pickle", "hostile pickle, even with --allow-pickle", 10,
        "would run code when unpickled (it calls posix.system)", "safetensors"),
    Row("export {custom_code} {out}", "model needs its own code, no --trust-remote-code", 10, "needs custom code",
        "--trust-remote-code"),
    Row("export {onnx_art} {out}", "input is an ONNX artifact", 12, "is an ONNX artifact", "torch artifact"),
    Row("export {onnx_trunc_stale} {out}", "truncated model.onnx, stale hash", 9, "changed file model.onnx", "rebuild"),
    Row("export {torch_art_trunc} {out}", "torch artifact, truncated safetensors, hash updated", 4,
        "corrupt or truncated", "save the model again"),
    Row("export {torch_art_trunc_stale} {out}", "torch artifact, truncated safetensors, stale hash", 9,
        "changed file model.safetensors", "rebuild"),
    Row("export {bert} {out_artifact}", "output already holds an artifact", 6, "already holds an artifact", "--force"),
    Row("export {bert} {out_files} --force", "output holds other files, even with --force", 6,
        "not a toolchain artifact", "only replaces artifacts"),
    Row("export {bert} {out_file}", "output path is a file", 6, "is a file", "another output folder"),
    Row("export {bert} {out} --opset 3", "opset out of range", 8, "opset 3 is outside", "correct the value"),
    Row("export {bert} {out} --with-past", "--with-past on a classifier", 12, "needs a text-generation model",
        "--with-past"),
    Row("export {bert} {out} --task translation", "unknown --task", 2, "'translation' is not one of", "Try"),
    Row("export {bert} {out} --backend genai", "--backend genai on a classifier", 12, "builds causal LMs",
        "--backend genai"),
    Row("export {bert} {out} --precision int4", "--precision without --backend genai", 8,
        "apply to backend genai", "correct the value"),
    # finetune MODEL OUT --data FILE
    Row("finetune {missing} {out} --data {data}", "model path does not exist", 3, "does not exist", "check the path"),
    Row("finetune {empty} {out} --data {data}", "empty model folder", 4, "is empty", "save_pretrained"),
    Row("finetune {no_config} {out} --data {data}", "model folder without config.json", 4, "has no config.json",
        "save_pretrained"),
    Row("finetune {shape_mismatch} {out} --data {data}", "safetensors shapes disagree with config.json", 4,
        "another shape than config.json", "re-save"),
    Row("finetune {trunc_safetensors} {out} --data {data}", "truncated model.safetensors", 4, "corrupt or truncated",
        "save the model again"),
    Row("finetune {pickle_only} {out} --data {data}", "pickle weights only, no --allow-pickle", 10,
        "only pickle weights", "--allow-pickle"),
    Row("finetune {custom_code} {out} --data {data}", "model needs its own code", 10, "needs custom code",
        "--trust-remote-code"),
    Row("finetune {onnx_art} {out} --data {data}", "input is an ONNX artifact", 12, "is an ONNX artifact",
        "torch artifact"),
    Row("finetune {onnx_trunc_stale} {out} --data {data}", "truncated model.onnx, stale hash", 9,
        "changed file model.onnx", "rebuild"),
    Row("finetune {bert} {out} --data {data_missing}", "data file does not exist", 3, "does not exist",
        "check the path"),
    Row("finetune {bert} {out} --data {data_no_column}", "data without the text column", 5, "no column 'text'",
        "--text-column"),
    Row("finetune {bert} {out} --data {data} --label-column sentiment", "--label-column names no column", 5,
        "no column 'sentiment'", "--label-column"),
    Row("finetune {bert} {out} --data {data_no_rows}", "data with no rows", 5, "has no rows", "at least one row"),
    Row("finetune {bert} {out} --data {data_not_utf8}", "data not UTF-8", 5, "not valid UTF-8", "UTF-8"),
    Row("finetune {bert} {out} --data {data_one_class}", "data with a single class", 5, "single class", "two labels"),
    Row("finetune {bert} {out} --data {data_tiny_class}", "a class too small to split", 5, "has 1 examples",
        "add examples"),
    Row("finetune {bert} {out} --data {data_bad_jsonl}", "broken JSONL line", 5, "line 2 is not valid JSON",
        "one JSON object per line"),
    Row("finetune {bert} {out} --data {data_xlsx}", "unknown data file type", 5, "unknown file type '.xlsx'", ".csv"),
    Row("finetune {bert} {out} --data {data_empty_text}", "a row with empty text", 5, "row 41 has an empty",
        "fix that row"),
    Row("finetune {bert} {out_artifact} --data {data}", "output already holds an artifact", 6,
        "already holds an artifact", "--force"),
    Row("finetune {bert} {out} --data {data} --epochs 0", "zero epochs", 8, "must be positive", "correct the value"),
    Row("finetune {bert} {out} --data {data_bad_split}", "a split column with an unknown split name", 5,
        "has split 'holdout'", "train, validation (dev, val) or test"),
    Row("finetune {bert} {out} --data {data} --test-data {data_missing}", "--test-data file does not exist", 3,
        "does not exist", "check the path"),
    Row("finetune {bert} {out} --data {data} --search depth", "--search names no searchable setting", 8,
        "is not searchable", "correct the value"),
    Row("finetune {bert} {out} --data {data} --search learning_rate --trials 1", "a search of one trial", 8,
        "trials must be between 2 and 200", "correct the value"),
    Row("finetune {bert} {out} --data {data} --min-steps -1", "negative minimum steps", 8,
        "min_steps must be >= 0", "correct the value"),
    Row("finetune {bert} {out} --data {data} --max-length 4", "max length too short", 8,
        "max_length must be at least 8", "correct the value"),
    # evaluate ARTIFACT --data FILE
    Row("evaluate {missing} --data {data}", "model path does not exist", 3, "does not exist", "check the path"),
    Row("evaluate {empty} --data {data}", "empty model folder", 4, "is empty", "save_pretrained"),
    Row("evaluate {no_config} --data {data}", "model folder without config.json", 4, "has no config.json",
        "save_pretrained"),
    Row("evaluate {shape_mismatch} --data {data}", "safetensors shapes disagree with config.json", 4,
        "another shape than config.json", "re-save"),
    Row("evaluate {onnx_trunc} --data {data}", "truncated model.onnx, hash updated", 4, "not a valid ONNX model",
        "re-export"),
    Row("evaluate {onnx_trunc_stale} --data {data}", "truncated model.onnx, stale hash", 9, "changed file model.onnx",
        "rebuild"),
    Row("evaluate {onnx_random} --data {data}", "random-bytes model.onnx, hash updated", 4, "not a valid ONNX model",
        "re-export"),
    Row("evaluate {onnx_random_stale} --data {data}", "random-bytes model.onnx, stale hash", 9,
        "changed file model.onnx", "rebuild"),
    Row("evaluate {onnx_no_config} --data {data}", "ONNX artifact without config.json, hash updated", 4,
        "has no config.json", "save_pretrained"),
    Row("evaluate {onnx_extdata_up} --data {data}", "external data at ../secret.bin", 10, "outside the model's folder",
        "beside them"),
    Row("evaluate {onnx_extdata_abs} --data {data}", "external data at an absolute path", 10,
        "outside the model's folder", "beside them"),
    Row("evaluate {onnx_link} --data {data}", "a symlink inside the artifact", 9, "link vocab-link.txt", "rebuild"),
    Row("evaluate {torch_art_trunc} --data {data}", "torch artifact, truncated safetensors, hash updated", 4,
        "corrupt or truncated", "save the model again"),
    Row("evaluate {onnx_art} --data {data_missing}", "data file does not exist", 3, "does not exist", "check the path"),
    Row("evaluate {onnx_art} --data {data_no_column}", "data without the text column", 5, "no column 'text'",
        "--text-column"),
    Row("evaluate {onnx_art} --data {data_no_rows}", "data with no rows", 5, "has no rows", "at least one row"),
    Row("evaluate {onnx_art} --data {data_not_utf8}", "data not UTF-8", 5, "not valid UTF-8", "UTF-8"),
    Row("evaluate {onnx_art} --data {data_one_class}", "data with a single class", 5, "single class", "two labels"),
    Row("evaluate {onnx_art} --data {data} --batch-size 0", "batch size 0", 8, "batch_size must be >= 1",
        "correct the value"),
    Row("evaluate {onnx_art} --data {data} --provider cuda", "execution provider not installed", 11,
        "cuda is not available", "onnxruntime-gpu"),
    Row("evaluate {onnx_art} --data {data} --split dev", "unknown --split", 2, "'dev' is not one of", "Try"),
    # optimize ARTIFACT OUT
    Row("optimize {missing} {out}", "artifact path does not exist", 3, "does not exist", "check the path"),
    Row("optimize {bert} {out}", "a model folder, not an artifact", 4, "not a toolchain artifact", "export the model"),
    Row("optimize {torch_art} {out}", "input is a torch artifact", 12, "is a torch artifact", "export it first"),
    Row("optimize {onnx_trunc_stale} {out}", "truncated model.onnx, stale hash", 9, "changed file model.onnx",
        "rebuild"),
    Row("optimize {onnx_random} {out}", "model.onnx random bytes, hash updated", 4, "not a valid ONNX model",
        "re-export"),
    Row("optimize {onnx_art} {out_artifact}", "output already holds an artifact", 6, "already holds an artifact",
        "--force"),
    Row("optimize {onnx_art} {out} --model-type mamba", "unknown optimizer model type", 12,
        "no transformer-optimizer model type 'mamba'", "--model-type"),
    Row("optimize {onnx_art} {out} --atol -1", "negative parity tolerance", 8, "atol must be positive",
        "correct the value"),
    # quantize ARTIFACT OUT
    Row("quantize {missing} {out}", "artifact path does not exist", 3, "does not exist", "check the path"),
    Row("quantize {torch_art} {out}", "input is a torch artifact", 12, "is a torch artifact", "export it first"),
    Row("quantize {onnx_trunc_stale} {out}", "truncated model.onnx, stale hash", 9, "changed file model.onnx",
        "rebuild"),
    Row("quantize {onnx_random} {out}", "model.onnx random bytes, hash updated", 4, "not a valid ONNX model",
        "re-export"),
    Row("quantize {onnx_int8} {out}", "model already quantized", 12, "is already quantized (DequantizeLinear",
        "float32 ONNX artifact"),
    Row("quantize {onnx_art} {out} --mode static --calibration-samples 4", "too few calibration samples", 5,
        "4 calibration samples are too few", "--calibration-samples 64"),
    Row("quantize {onnx_art} {out} --op-types Conv", "an op type the model does not have", 12,
        "none of the op types Conv", "its op types are"),
    Row("quantize {onnx_art} {out} --op-types MatMul,Softmax", "an op type with no int8 kernel", 12,
        "no int8 kernel for Softmax", "choose from"),
    Row("quantize {onnx_art} {out} --activation-type qint8", "activation type in dynamic mode", 8,
        "dynamic mode quantizes activations", "correct the value"),
    Row("quantize {onnx_art} {out} --mode static --data {data_no_column}", "calibration data without the text column",
        5, "no column 'text'", "--text-column"),
    Row("quantize {onnx_art} {out} --max-perplexity-increase 0.05 --data {data}", "LM budget on a classifier", 12,
        "max_perplexity_increase for causal LMs", "matches the model's task"),
    Row("quantize {onnx_art} {out} --target pixel-9", "unknown deployment target", 2, "'pixel-9' is not one of",
        ""),
    Row("optimize {onnx_art} {out} --target android-nnapi --fp16", "fp16 fusions for a standard-op target", 8,
        "keeps standard ONNX ops", "correct the value"),
    Row("quantize {onnx_art} {out} --mode weight-only --bits 8 --algorithm hqq", "hqq asked for 8-bit weights", 8,
        "hqq is a 4-bit algorithm", "correct the value"),
    Row("quantize {onnx_art} {out} --bits 4", "weight-only option in dynamic mode", 8,
        "bits apply to --mode weight-only only", "correct the value"),
    Row("quantize {onnx_art} {out} --mode weight-only --block-size 24", "block size not a power of two", 8,
        "block_size must be a power of two", "correct the value"),
    Row("quantize {onnx_art} {out_files}", "output holds other files", 6, "not a toolchain artifact",
        "only replaces artifacts"),
    # trim-vocab MODEL OUT
    Row("trim-vocab {missing} {out} --data {data}", "model path does not exist", 3, "does not exist", "check the path"),
    Row("trim-vocab {onnx_art} {out} --data {data}", "input is an ONNX artifact", 12, "is an ONNX artifact",
        "torch artifact"),
    Row("trim-vocab {bad_tokenizer} {out} --data {data}", "tokenizer.json is random bytes", 4, "no usable tokenizer",
        "save the tokenizer"),
    Row("trim-vocab {bert} {out} --data {data_no_column}", "data without the text column", 5, "no column 'text'",
        "--text-column"),
    Row("trim-vocab {bert} {out} --data {data} --max-vocab 3", "--max-vocab below the characters every text needs",
        8, "max_vocab 3 is below the", "at least"),
    Row("trim-vocab {bert} {out} --data {data} --min-count 0", "min count 0", 8, "min_count must be >= 1",
        "correct the value"),
    Row("trim-vocab {gpt2} {out} --data {data} --recover", "--recover on a causal LM", 12,
        "distils a classifier's logits", "drop --recover"),
    Row("trim-vocab {bert} {out_artifact} --data {data}", "output already holds an artifact", 6,
        "already holds an artifact", "--force"),
    # info ARTIFACT
    Row("info {missing}", "path does not exist", 3, "does not exist", "check the path"),
    Row("info {empty}", "empty folder", 4, "not a toolchain artifact", "toolchain stage"),
    Row("info {bert}", "a model folder, not an artifact", 4, "not a toolchain artifact", "toolchain stage"),
    Row("info {onnx_trunc_stale}", "truncated model.onnx, stale hash", 9, "changed file model.onnx", "rebuild"),
    Row("info {manifest_not_json}", "manifest.json is not JSON", 9, "is not valid JSON", "re-run the stage"),
    Row("info {manifest_escape}", "manifest lists a file outside the folder", 9, "outside its folder",
        "do not use this artifact"),
    Row("info {manifest_future}", "manifest of another schema version", 9, "schema version 99", "re-run the stage"),
    Row("info {manifest_types}", "manifest field of the wrong type", 9, "fields of the wrong type", "re-run the stage"),
    # verify PATH
    Row("package {lm_onnx} {out} --target android-nnapi", "a causal LM for a fixed-shape mobile target", 12,
        "decodes one token at a time", "CPU target"),
    Row("verify {missing}", "path does not exist", 3, "does not exist", "check the path"),
    Row("verify {empty}", "empty folder", 4, "not a toolchain artifact", "toolchain stage"),
    Row("verify {onnx_trunc_stale}", "truncated model.onnx, stale hash", 9, "changed file model.onnx", "rebuild"),
    Row("verify {onnx_random_stale}", "random-bytes model.onnx, stale hash", 9, "changed file model.onnx", "rebuild"),
    Row("verify {art_missing_file}", "a payload file deleted", 9, "missing file vocab.txt", "rebuild"),
    Row("verify {art_extra_file}", "a file added", 9, "extra file payload.sh", "rebuild"),
    Row("verify {onnx_link}", "a symlink inside the artifact", 9, "link vocab-link.txt", "rebuild"),
    Row("verify {onnx_trunc}", "truncated model.onnx, hash updated", 4, "not a valid ONNX model", "re-export"),
    Row("verify {onnx_random}", "random-bytes model.onnx, hash updated", 4, "not a valid ONNX model", "re-export"),
    Row("verify {onnx_extdata_up}", "external data at ../secret.bin", 10, "outside the model's folder", "beside them"),
    Row("verify {manifest_not_json}", "manifest.json is not JSON", 9, "is not valid JSON", "re-run the stage"),
    Row("verify {manifest_escape}", "manifest lists a file outside the folder", 9, "outside its folder",
        "do not use this artifact"),
    # issue 16: outputs inside inputs, inputs that hang or blow up, values of the wrong kind, damaged caches
    Row("quantize {onnx_art} {onnx_art}/int8", "output inside the input", 6, "is inside the input",
        "outside the input"),
    Row("quantize {onnx_art} {onnx_art} --force", "output is the input, with --force", 6, "is inside the input",
        "outside the input"),
    Row("export {bert} {bert}/onnx", "export into the model folder", 6, "is inside the input", "outside the input"),
    Row("optimize {onnx_art} {onnx_art}/opt", "optimize into the input artifact", 6, "is inside the input",
        "outside the input"),
    Row("package {onnx_art} {onnx_art}/bundle", "package into the input artifact", 6, "is inside the input",
        "outside the input"),
    Row("finetune {bert} {data} --data {data}", "output path is the data file", 6, "is inside the input",
        "outside the input"),
    Row("optimize {report_dir}/onnx {report_dir} --force", "output folder holds the input artifact", 6,
        "is inside the output", "does not hold the input"),
    Row("finetune {bert} {out} --data {data_fifo}", "data is a FIFO (would hang)", 5, "is a FIFO", "regular data file"),
    Row("finetune {bert} {out} --data {data_dir}", "data is a folder", 5, "is a folder", "regular data file"),
    Row("finetune {bert} {out} --data {data_null_label}", "JSONL row with label null", 5, "row 41 has no 'label'",
        "give every row a label"),
    Row("finetune {bert} {out} --data {data_no_label}", "JSONL row without its label", 5, "row 41 has no 'label'",
        "give every row a label"),
    Row("finetune {bert} {out} --data {data_mixed_labels}", "labels mix 1, \"1\" and true", 5, "mixes label types",
        "the same way"),
    Row("finetune {bert} {out} --data {data_short_row}", "a CSV row cut short (no label)", 5, "row 41 has no 'label'",
        "give every row a label"),
    Row("finetune {bert} {out} --data {data_bom_sentiment} --label-column sentiment", "BOM CSV, wrong label column",
        5, "(columns: text, label)", "--label-column"),
    Row("finetune {bert} {out} --data {data} --max-train-samples 0", "zero training samples", 8,
        "max_train_samples must be at least 1", "correct the value"),
    Row("finetune {bert} {out} --data {data} --max-train-samples -5", "negative training samples", 8,
        "max_train_samples must be at least 1", "correct the value"),
    Row("finetune {huge_layers} {out} --data {data}", "config claims 200,000 layers", 4, "gives 200000 layers",
        "re-save"),
    Row("export {huge_layers} {out}", "config claims 200,000 layers", 4, "gives 200000 layers", "re-save"),
    Row("export {huge_hidden} {out}", "config claims a hidden size no weight has", 4, "hidden_size 10000000",
        "re-save"),
    Row("export {no_tokenizer} {out}", "model folder without tokenizer files", 4, "has no tokenizer files",
        "tokenizer.save_pretrained"),
    Row("quantize {onnx_art} {out} --max-eval-samples -2", "negative evaluation samples", 8,
        "max_eval_samples must be at least 1", "correct the value"),
    Row("evaluate {gpt2} --data {data_lm_csv}", "a CSV as a language model's text", 5, "is a table (.csv)",
        "pass a .txt file"),
    Row("evaluate {gpt2} --data {data_short_text}", "a one-word text for perplexity", 5,
        "a perplexity needs at least 16", "pass a longer text"),
    Row("bench {onnx_art} --batch 1000000", "batch size beyond any machine", 8, "batch needs values from 1 to 4096",
        "correct the value"),
    Row("bench {onnx_art} --seq 1000 --runs 1 --warmup 0 --no-peak --no-store", "sequence longer than the model's positions", 8,
        "seq 1000 is longer than", "--seq values up to 128"),
    Row("info {manifest_link}", "manifest.json is a symlink", 9, "is a link", "rebuild the artifact"),
    Row("verify {manifest_link}", "manifest.json is a symlink", 9, "is a link", "rebuild the artifact"),
    Row("package {onnx_extdata_up} {out}", "external data outside the artifact", 10, "outside the model's folder",
        "beside them"),
    Row("verify {bundle_no_smoke}", "bundle.json without its smoke section, hashes updated", 9, "no smoke section",
        "rebuild the bundle"),
    Row("verify {bundle_trunc}", "bundle model.onnx truncated, hashes updated", 4, "not a valid ONNX model",
        "re-export"),
    Row("run {recipe_bomb}/recipe.yaml --out {out}", "YAML alias bomb (billion laughs)", 8, "alias bomb",
        "without nested aliases"),
    Row("run {recipe_recursive}/recipe.yaml --out {out}", "recursive YAML alias", 8, "refers to its own parent",
        "instead of the alias"),
    Row("run {empty} --out {out}", "recipe path is a folder", 8, "is a folder, not a regular recipe file",
        "regular recipe file"),
    Row("run {recipe_latin1}/recipe.yaml --out {out}", "recipe not UTF-8", 8, "is not UTF-8 text", "save the recipe"),
    Row("run {recipe}/recipe.yaml --out {out_file}", "--out is a file", 6, "is a file", "choose a folder"),
    Row("run {recipe}/recipe.yaml --out {out_artifact}", "--out is an existing artifact", 6,
        "is an artifact, not a run folder", "new or empty folder"),
    Row("run {recipe}/recipe.yaml --out {out_files}", "--out holds a user's files", 6,
        "holds files that no recipe run wrote", "new or empty folder"),
    Row("run {recipe}/recipe.yaml --out {out_files} --dry-run", "--dry-run, --out holds a user's files", 6,
        "holds files that no recipe run wrote", "new or empty folder"),
    Row("run {recipe}/recipe.yaml --out {run_bad_plan_out}", "--out holds a corrupt recipe.json", 6,
        "is not a run plan", "delete its recipe.json"),
    Row("run {run_self}/recipe.yaml --out {run_self}/run", "recipe reads its own output as its model", 6,
        "is inside the run folder", "does not hold the input"),
    Row("report {run_bad_plan}", "run folder with a corrupt recipe.json", 9, "is not a run plan",
        "run the recipe into this folder again"),
    Row("report {report_dir} --other {empty}", "--other is a folder", 5, "is a folder", "regular benchmark file"),
    Row("report {report_dir} --other {bench_bad_rows}/bench.json", "--other rows are not benchmark rows", 5,
        "row 1 is not a benchmark row", "unedited output"),
    Row("report {report_user_md}", "the folder holds the user's own report.md", 6,
        "was not written by toolchain report", "move or rename"),
    Row("verify {onnx_art} --emulate arm64", "emulation of an artifact that is not a bundle", 12,
        "not an edge bundle", "toolchain package"),
    Row("verify {onnx_art} --emulate riscv64", "an architecture it cannot emulate", 2, "riscv64", ""),
]

# Stage configs as a recipe gives them (toolchain.config.config_from_dict): (stage, config, error fragment).
# `toolchain run` rows (unknown stage, unknown key, wrong type in a recipe file) join ROWS once it exists.
CONFIG_ROWS: list[tuple[str, object, str]] = [
    ("optimize", {"fp16": "yes"}, "expected bool, got str"),
    ("optimize", {"opt_level": 3}, "opt_level 3 is not one of"),
    ("quantize", {"mode": "fast"}, "'fast' is not one of"),
    ("quantize", {"calibration_samples": "all"}, "expected int, got str"),
    ("quantize", {"max_accuracy_drop": 1.5}, "must be in [0, 1)"),
    ("quantize", {"op_types": "MatMul"}, "expected a list"),
    ("quantize", {"target": "pixel-9"}, "target 'pixel-9' is not one of"),
    ("package", {"target": "x86"}, "target 'x86' is not one of"),
    ("export", {"opst": 17}, "unknown key 'opst'"),
    ("export", {"opset": "17"}, "expected int, got str"),
    ("export", {"opset": 17.0}, "expected int, got float"),
    ("export", {"with_past": "yes"}, "expected bool, got str"),
    ("export", {"task": "translation"}, "task 'translation' is not one of"),
    ("export", {"atol": float("nan")}, "finite number"),
    ("export", [("opset", 17)], "must be a mapping"),
    ("export", {1: 17}, "keys must be text"),
    ("finetune", {"epochs": float("inf")}, "finite number"),
    ("finetune", {"batch_size": True}, "expected int, got bool"),
    ("finetune", {"learning_rate": -1.0}, "must be positive"),
    ("finetune", {"max_train_samples": "all"}, "expected int, got str"),
    ("finetune", "epochs: 3", "must be a mapping"),
]
