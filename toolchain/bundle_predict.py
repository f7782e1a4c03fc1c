"""Run this bundle's model with onnxruntime, tokenizers and numpy only (no torch, no transformers).

    python predict.py "A charming, moving film." "A waste of two hours."   # classifier: label + probabilities
    cat reviews.txt | python predict.py -          # one text per line from stdin (or --file reviews.txt)
    python predict.py "A man sleeps." "A person rests."   # a sentence-pair classifier: (text, pair) two at a time
    python predict.py --file pairs.tsv             # ... or one pair a line, text<TAB>pair
    python predict.py --tokens 20 "To be, or not to be"                     # causal LM: greedy continuation
    python predict.py --model model.ort --json "..."                        # the ORT-format model, JSON out
    python predict.py --smoke                  # this machine gives the outputs stored in bundle.json (exit 1 if not)
    python predict.py --help                   # this bundle's task, labels and options, read from bundle.json

Everything it needs to know about the model is in bundle.json beside it. `toolchain package` copies
this file into every bundle as predict.py; `toolchain verify` runs the same code as its smoke test.
A problem (a missing file, empty text, a model onnxruntime cannot load) is one `error:` line and one
`fix:` line on stderr with a non-zero exit code (EXIT_CODES); TOOLCHAIN_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

try:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer
except ImportError as missing:  # run as a script where its three packages are not installed: one line, not a traceback
    if __name__ != "__main__":
        raise
    sys.stderr.write(f"error: predict.py needs the Python package {missing.name}, which is not installed\n"
                     "  fix: pip install onnxruntime tokenizers numpy\n")
    sys.exit(11)

HERE = pathlib.Path(__file__).resolve().parent
DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32}


class Predictor:
    """The bundle's model and tokenizer, with the inputs its graph declares built from text."""

    def __init__(self, folder: str | pathlib.Path = HERE, model: str = "model.onnx", threads: int | None = None):
        folder = pathlib.Path(folder)
        self.info = json.loads((folder / "bundle.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.info["max_length"])
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        # ORT's CPU SkipLayerNormalization kernel is 5-8x slower than the Add + LayerNorm it would fuse: keep them.
        self.session = ort.InferenceSession(str(folder / model), opts, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=["SkipLayerNormFusion"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        # Mobile bundles (NNAPI, CoreML) fix their inputs to [1, max_length]: one text per call, padded to it.
        shape = self.inputs["input_ids"].shape if "input_ids" in self.inputs else []
        self.fixed_length = shape[1] if len(shape) == 2 and all(isinstance(d, int) for d in shape) else None

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Token ids, attention mask and token types, right-padded to the longest text (or the fixed length);
        with `pairs`, each text and its pair as one input ([CLS] text [SEP] pair [SEP] for BERT)."""
        encs = self.tokenizer.encode_batch(list(zip(texts, pairs)) if pairs is not None else list(texts))
        width = self.fixed_length or max(len(e.ids) for e in encs)
        pad = self.info.get("pad_token_id") or 0
        batch = {"input_ids": np.full((len(encs), width), pad, dtype=np.int64),
                 "attention_mask": np.zeros((len(encs), width), dtype=np.int64),
                 "token_type_ids": np.zeros((len(encs), width), dtype=np.int64)}
        for i, e in enumerate(encs):
            n = len(e.ids)
            batch["input_ids"][i, :n] = e.ids
            batch["attention_mask"][i, :n] = 1
            batch["token_type_ids"][i, :n] = e.type_ids
        return {k: v for k, v in batch.items() if k in self.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(feeds.values())))
        if self.fixed_length is None or n == 1:
            return dict(zip(self.outputs, self.session.run(None, feeds)))
        rows = [self.session.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
        return {name: np.concatenate([r[j] for r in rows]) for j, name in enumerate(self.outputs)}

    def classify(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
        """Label and probability of every label for each text (and its pair, for sentence-pair models)."""
        if self.info.get("text_pair") and pairs is None:
            raise BundleError("this model classifies pairs of texts: a text alone is not its input",
                              "give each text with its pair (classify(texts, pairs))", "usage")
        logits = self.run(self.encode(texts, pairs))["logits"].astype(np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        labels = self.info.get("labels") or [f"LABEL_{i}" for i in range(logits.shape[-1])]
        out = [{"text": t, "label": labels[int(p.argmax())], "probabilities": dict(zip(labels, map(float, p))),
                "logits": [float(v) for v in row]} for t, p, row in zip(texts, probs, logits)]
        for row, pair in zip(out, pairs or []):
            row["pair"] = pair
        return out

    def embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled last hidden state per text (feature-extraction models)."""
        feeds = self.encode(texts)
        hidden = self.run(feeds)["last_hidden_state"]
        mask = feeds["attention_mask"][..., None].astype(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def generate(self, prompt: str, tokens: int) -> dict:
        """Greedy continuation of `prompt`: `tokens` new tokens, with the KV cache when the graph has one."""
        new, first_logits = [], None
        for token, logits in self.stream(list(self.tokenizer.encode(prompt).ids), tokens):
            first_logits = logits if first_logits is None else first_logits
            new.append(token)
        top5 = [int(i) for i in np.argsort(-first_logits)[:5]] if first_logits is not None else []
        return {"prompt": prompt, "text": self.tokenizer.decode(new), "token_ids": new, "first_logits_top5": top5}

    def stream(self, ids: list[int], tokens: int, pick=None, stop: set[int] | None = None):
        """Yield (token id, its step's logits) for up to `tokens` new tokens after `ids`: the prompt in one call,
        then one token a call with the KV cache (the whole sequence again when the graph has none).

        `pick(logits) -> id` chooses each token (greedy when None); a token in `stop` (default: the EOS id) ends.
        """
        ids = list(ids)
        stop = {self.info.get("eos_token_id")} if stop is None else stop
        past, step_ids = self._empty_past(), ids
        for _ in range(tokens):
            out = self.run(self._lm_feeds(step_ids, len(ids), past))
            logits = out["logits"][0, -1]
            nxt = int(np.argmax(logits)) if pick is None else int(pick(logits))
            ids.append(nxt)
            if past is not None:
                past = {name.replace("present", "past_key_values"): v for name, v in out.items()
                        if name.startswith("present")}
                step_ids = [nxt]
            else:
                step_ids = ids
            yield nxt, logits
            if nxt in stop:
                break

    def _empty_past(self) -> dict[str, np.ndarray] | None:
        names = [n for n in self.inputs if n.startswith("past_key_values")]
        if not names:
            return None
        past = {}
        for n in names:
            i = self.inputs[n]
            dims = [1 if k == 0 else (d if isinstance(d, int) else 0) for k, d in enumerate(i.shape)]
            past[n] = np.zeros(dims, dtype=DTYPES.get(i.type, np.float32))
        return past

    def _lm_feeds(self, step_ids: list[int], total: int, past) -> dict[str, np.ndarray]:
        n = len(step_ids)
        feeds = {"input_ids": np.array([step_ids], dtype=np.int64),
                 "attention_mask": np.ones((1, total), dtype=np.int64),
                 "position_ids": np.arange(total - n, total, dtype=np.int64)[None]}
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        return feeds | (past or {})


def smoke_diff(p: Predictor, smoke: dict) -> tuple[float, str]:
    """Max abs difference of `p`'s outputs on the smoke texts from the stored ones, and a note: inf when the
    greedy tokens differ, with the token where they part."""
    texts, task = smoke["texts"], p.info["task"]
    if task == "text-classification":
        got = np.array([r["logits"] for r in p.classify(texts, smoke.get("pairs"))])
        return float(np.abs(got - np.array(smoke["logits"])).max()), ""
    if task == "text-generation":
        want = smoke["token_ids"]
        out = p.generate(texts[0], len(want))
        if out["token_ids"] != want:
            at = next((i for i, (a, b) in enumerate(zip(out["token_ids"], want)) if a != b),
                      min(len(out["token_ids"]), len(want)))
            return float("inf"), (f"greedy tokens differ from the packaged reference's ({smoke.get('decode', 'full')} "
                                  f"decode) from token {at + 1} of {len(want)}")
        ids = list(p.tokenizer.encode(texts[0]).ids)
        logits = p.run(p._lm_feeds(ids, len(ids), p._empty_past()))["logits"][0, -1]
        return float(np.abs(logits[smoke["first_top5"]] - np.array(smoke["first_top5_logits"])).max()), ""
    return float(np.abs(p.embed(texts) - np.array(smoke["embeddings"])).max()), ""


def smoke_check(folder: str | pathlib.Path = HERE, threads: int | None = 1) -> dict:
    """The smoke test on this machine: model.onnx (and model.ort) against the outputs stored in bundle.json.

    Returns {"ok", "problem", "models": {file: max abs diff}, "atol"}.
    """
    folder = pathlib.Path(folder)
    smoke = json.loads((folder / "bundle.json").read_text())["smoke"]
    checked = {name: smoke_diff(Predictor(folder, name, threads=threads), smoke)
               for name in ("model.onnx", "model.ort") if (folder / name).is_file()}
    models = {name: diff for name, (diff, _) in checked.items()}
    bad = [(m, d) for m, d in models.items() if not d <= smoke["atol"]]
    problem = ((f"{bad[0][0]} {checked[bad[0][0]][1]}" if checked[bad[0][0]][1] else
                f"{bad[0][0]} differs from the packaged reference by {bad[0][1]:.3g} (atol {smoke['atol']:g})")
               if bad else "")
    return {"ok": not bad, "problem": problem, "models": models, "atol": smoke["atol"]}


# The toolchain's exit codes for the same kinds of problem, so scripts can tell them apart.
EXIT_CODES = {"usage": 2, "not found": 3, "not a usable model": 4, "bad input": 5, "missing package": 11,
              "bug": 70}
TASK_WORDS = {"text-classification": "classify", "text-generation": "continue", "feature-extraction": "embed"}


class BundleError(Exception):
    """A problem the user can fix: printed as `error: problem` and `  fix: fix`, exit code by kind."""

    def __init__(self, problem: str, fix: str, kind: str):
        super().__init__(problem)
        self.problem, self.fix, self.code = problem, fix, EXIT_CODES[kind]


def report(err: BundleError) -> int:
    """Print `err` as the toolchain does (two short lines on stderr) and return its exit code."""
    sys.stderr.write(f"error: {err.problem}\n  fix: {err.fix}\n")
    return err.code


def read_info(folder: pathlib.Path = HERE) -> dict:
    """bundle.json, or a BundleError saying the bundle is incomplete."""
    path = folder / "bundle.json"
    if not path.is_file():
        raise BundleError(f"{path} is missing: this script runs only beside its bundle's files",
                          "run the predict.py of a complete bundle (toolchain package ARTIFACT OUT writes one)",
                          "not found")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} cannot be read ({e})", "toolchain verify BUNDLE says what changed; "
                          "re-package it", "not a usable model") from None
    if not isinstance(info, dict) or not isinstance(info.get("task"), str):
        raise BundleError(f"{path} has no task: not a toolchain bundle.json", "re-package the bundle",
                          "not a usable model")
    return info


def require_files(folder: pathlib.Path, model: str) -> None:
    """A BundleError naming the first of `model` and tokenizer.json that is not in `folder`, with the fix."""
    for name in (model, "tokenizer.json"):
        if not (folder / name).is_file():
            have = sorted(p.name for p in folder.glob("*.onnx")) + sorted(p.name for p in folder.glob("*.ort"))
            fix = (f"use --model with one of {', '.join(have)}" if name == model and have else
                   "copy the whole bundle folder (toolchain verify BUNDLE lists what is missing)")
            raise BundleError(f"{name} not found in {folder}", fix, "not found")


def open_predictor(folder: pathlib.Path, model: str, threads: int | None) -> Predictor:
    """A Predictor on `model`, or a BundleError naming the missing or unloadable file."""
    require_files(folder, model)
    try:
        return Predictor(folder, model, threads)
    except Exception as e:  # onnxruntime and tokenizers raise their own types; all mean "this file does not load"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise BundleError(f"{model} does not load in onnxruntime {ort.__version__}: {first}",
                          "toolchain verify BUNDLE checks every file's hash; a newer onnxruntime may be needed "
                          "(bundle.json: min_onnxruntime)", "not a usable model") from None


def read_texts(texts: list[str], file: str | None, stdin=None) -> list[str]:
    """The texts to run: the arguments, `-` for one text per line of stdin, or one per line of `file`.

    Refuses empty text (an argument, a blank line, an empty stream): a model answers anything, so a
    blank line would come back as a confident label for nothing.
    """
    if file is not None and texts:
        raise BundleError("give texts or --file, not both", "drop the texts, or drop --file", "usage")
    if "-" in texts and len(texts) > 1:
        raise BundleError("- (read stdin) given with other texts", "give - alone, or texts alone", "usage")
    if file is not None:
        source, lines = file, _lines_of(file)
    elif texts == ["-"]:
        source, lines = "stdin", _decode((stdin or sys.stdin.buffer).read(), "stdin").splitlines()
    else:
        for i, t in enumerate(texts, 1):
            if not t.strip():
                raise BundleError(f"text {i} is empty", "give non-empty text (or - to read stdin)", "bad input")
        return texts
    if not lines:
        raise BundleError(f"no text in {source}", "give one text per line", "bad input")
    for i, t in enumerate(lines, 1):
        if not t.strip():
            raise BundleError(f"line {i} of {source} is empty", "remove blank lines: one text per line", "bad input")
    return lines


def split_pairs(texts: list[str], from_lines: bool, columns: list[str]) -> tuple[list[str], list[str]]:
    """(texts, pairs) for a sentence-pair model: arguments two at a time, or lines as text<TAB>pair."""
    first, second = columns
    if from_lines:
        rows = [t.split("\t", 1) for t in texts]
        for i, row in enumerate(rows, 1):
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise BundleError(f"line {i} is not a pair: this model classifies ({first}, {second}) pairs",
                                  f"write each line as {first}<TAB>{second}", "bad input")
        return [r[0] for r in rows], [r[1] for r in rows]
    if len(texts) % 2:
        raise BundleError(f"{len(texts)} text(s) given: this model classifies ({first}, {second}) pairs",
                          "give the texts two at a time: TEXT PAIR [TEXT PAIR ...]", "usage")
    return texts[0::2], texts[1::2]


def _lines_of(file: str) -> list[str]:
    path = pathlib.Path(file)
    if not path.is_file():
        raise BundleError(f"--file {file}: no such file", "give the path of a text file, one text per line",
                          "not found")
    try:
        return _decode(path.read_bytes(), f"--file {file}").splitlines()
    except OSError as e:
        raise BundleError(f"--file {file} cannot be read ({e.strerror})", "check its permissions",
                          "not found") from None


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a byte-order mark is not part of the first text
    except UnicodeDecodeError as e:
        raise BundleError(f"{source} is not UTF-8 text (byte {e.start})", "convert it to UTF-8", "bad input") from None


def describe(info: dict) -> str:
    """What --help says about this bundle: task, model, labels, token limit."""
    task = info.get("task", "?")
    lines = [f"Run this bundle's model ({info.get('model_type') or 'model'}, {task}) on text: "
             f"{TASK_WORDS.get(task, 'run')} it with onnxruntime, tokenizers and numpy only."]
    if info.get("labels"):
        lines.append(f"Labels: {', '.join(map(str, info['labels']))}.")
    if info.get("text_pair"):
        first, second = info["text_pair"]
        lines.append(f"Each input is a pair of texts ({first}, {second}): give them two at a time, or one pair a "
                     "line as text<TAB>pair.")
    if info.get("max_length"):
        lines.append(f"Each {'pair' if info.get('text_pair') else 'text'} is cut to {info['max_length']} tokens.")
    target = (info.get("target") or {}).get("target")
    if target:
        lines.append(f"Built for {target}.")
    return " ".join(lines)


def build_parser(info: dict | None) -> argparse.ArgumentParser:
    """The options that apply to this bundle's task (bundle.json's `task`); all of them when it is unreadable."""
    task = (info or {}).get("task")
    epilog = ("exit codes: 0 ok, 1 --smoke found a difference, "
              + ", ".join(f"{c} {k}" for k, c in EXIT_CODES.items()))
    parser = argparse.ArgumentParser(prog="predict.py", epilog=epilog, description=describe(info) if info else
                                     "Run this bundle's model on text (bundle.json is missing or unreadable).")
    what = {"text-classification": "texts to classify", "text-generation": "the prompt to continue (the "
            "words are joined)", "feature-extraction": "texts to embed"}.get(task, "texts to run")
    per_line = "one text per line"
    if (info or {}).get("text_pair"):
        what, per_line = "text pairs to classify, two at a time (TEXT PAIR TEXT PAIR ...)", "one text<TAB>pair per line"
    parser.add_argument("texts", nargs="*", metavar="TEXT", help=f"{what}; - reads {per_line} from stdin")
    parser.add_argument("--file", metavar="F", help=f"read {per_line} from F (UTF-8)")
    if task in (None, "text-generation"):
        parser.add_argument("--tokens", type=_positive, default=20, help="new tokens to generate (default 20)")
    parser.add_argument("--model", default="model.onnx", help=f"the model file: {' or '.join(model_files(info))}")
    parser.add_argument("--threads", type=_positive, help="intra-op threads (default: onnxruntime's)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--smoke", action="store_true", help="check this machine against bundle.json's stored outputs")
    return parser


def model_files(info: dict | None) -> list[str]:
    """The model files bundle.json lists (model.onnx, and model.ort when the bundle has one)."""
    listed = [name for name in (info or {}).get("min_onnxruntime") or {} if name.endswith((".onnx", ".ort"))]
    return listed or ["model.onnx"]


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(value)


def run_task(p: Predictor, texts: list[str], tokens: int, pairs: list[str] | None = None) -> tuple[list, list[str]]:
    """(JSON-able results, text lines) of this bundle's task on `texts` (and their `pairs`)."""
    task = p.info["task"]
    if task == "text-classification":
        out = p.classify(texts, pairs)
        return out, ["\t".join([r["label"], f"{r['probabilities'][r['label']]:.3f}", r["text"]]
                               + ([r["pair"]] if "pair" in r else [])) for r in out]
    if task == "text-generation":
        out = [p.generate(t, tokens) for t in texts]
        return out, [r["prompt"] + r["text"] for r in out]
    vectors = p.embed(texts)
    return ([{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors)],
            [f"{t}\t[{', '.join(f'{x:.4f}' for x in v[:4])}, ...] ({len(v)} dims)" for t, v in zip(texts, vectors)])


def main(argv: list[str] | None = None) -> int:
    """predict.py's command line; returns the exit code (errors are reported, never raised)."""
    try:
        info, problem = read_info(HERE), None
    except BundleError as e:
        info, problem = None, e
    parser = build_parser(info)
    args = parser.parse_args(argv)
    try:
        if problem:
            raise problem
        return _main(args, info)
    except BundleError as e:
        return report(e)
    except Exception as e:  # a bug, not the user's input: one line too, the traceback on request
        if os.environ.get("TOOLCHAIN_DEBUG"):
            raise
        return report(BundleError(f"predict.py failed: {type(e).__name__}: {e}",
                                  "TOOLCHAIN_DEBUG=1 shows the traceback to report", "bug"))


def _main(args: argparse.Namespace, info: dict) -> int:
    if args.smoke:
        require_files(HERE, "model.onnx")  # the same clean error as a normal run when a file is missing
        result = smoke_check(HERE, args.threads or 1)
        diffs = ", ".join(f"{m} max abs diff {d:.2g}" for m, d in result["models"].items())
        verdict = "ok: " if result["ok"] else f"FAILED: {result['problem']}: "
        print(json.dumps(result, indent=2) if args.json else f"{verdict}{diffs} (atol {result['atol']:g})")
        return 0 if result["ok"] else 1
    if not args.texts and args.file is None:
        raise BundleError("no text given", "give texts, - to read stdin, or --file F (or --smoke)", "usage")
    texts = read_texts(args.texts, args.file)
    if info["task"] == "text-generation" and args.texts and args.texts != ["-"]:
        texts = [" ".join(texts)]  # the words of one prompt, as a shell splits them
    pairs = None
    if info["task"] == "text-classification" and info.get("text_pair"):
        texts, pairs = split_pairs(texts, args.file is not None or args.texts == ["-"], info["text_pair"])
    p = open_predictor(HERE, args.model, args.threads)
    out, lines = run_task(p, texts, getattr(args, "tokens", 20), pairs)
    print(json.dumps(out, indent=2) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
