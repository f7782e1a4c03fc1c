"""Trim a model's vocabulary to the tokens its task uses: the embedding (and a tied or untied LM head)
loses the dropped rows, and the tokenizer is rewritten so that ids match the new rows.

What is kept: every special and added token, every token the task's training text produces, and what
makes any text still tokenize: for WordPiece every single character and its `##` continuation that the
original vocabulary holds; for byte-level BPE all 256 byte tokens, plus the merge ancestors of every kept
token (a merge is kept when both its parts and its result are). With a max_vocab the training text does not
fill, the rest of the budget goes to the tokens the original vocabulary ranks most frequent (lowest ids), so
held-out text meets fewer dropped words. A dropped token is then handled as the original tokenizer handles an
out-of-vocabulary word: WordPiece splits the word into the longest kept pieces (down to characters, else
[UNK]); BPE stops merging earlier. So training text tokenizes exactly as before (checked), and held-out text
only differs where it used a dropped token (measured).

>>> trim_vocab("runs/pruned", TrimVocabConfig(data="rotten-tomatoes"), "runs/trimmed")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import TASKS, Artifact, check_output, recovery_scratch, resumable, write_artifact
from .config import config_to_dict, opt, resolve_max_length
from .errors import CheckFailed, RecipeError, Unsupported
from .guard import writes_output
from .modeling import ModelSource, infer_task, load_model, load_tokenizer, resolve_model, source_hash

DEFAULT_DATA = {"text-generation": "hamlet"}  # everything else reads rotten-tomatoes
CHECK_TEXTS = 2000  # training texts whose tokenization is checked to be unchanged, id for id
PARITY_ATOL = 1e-5  # trimmed vs original logits on identically tokenized text: the same rows, gathered
# Token ids a config names; each must stay in the vocabulary and be renumbered.
CONFIG_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
              "decoder_start_token_id", "unk_token_id", "mask_token_id")


@dataclass(frozen=True)
class TrimVocabConfig:
    data: str | None = None  # the task's text
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    validation_data: str | None = None  # the held-out split the accuracy is measured on, in a file of its own
    test_data: str | None = None
    split_column: str | None = "split"
    max_vocab: int | None = opt(None, "Keep at most N rows: specials and characters/bytes first, then the most "
                                      "frequent tokens of the training text.")
    min_count: int = opt(1, "Times a token must occur in the training text to be kept for itself.")
    fill: bool = opt(True, "With max_vocab: fill the rows the training text leaves free with the tokens the original "
                           "vocabulary numbers first (WordPiece and BPE vocabularies are built most frequent first).")
    max_length: int | None = None  # tokens per example when measuring accuracy before and after
    eval_batch_size: int = opt(32, "Batch size when scoring before and after.")
    max_eval_samples: int | None = opt(None, "Score only the first N held-out examples (causal LMs: tokens).")
    alias: bool = opt(False, "Classifiers: keep every dropped token in tokenizer.json, pointing at the kept "
                             "row nearest its embedding (cosine), so any text splits into the same pieces as before.")
    recover: bool = opt(False, "Then distil the trimmed classifier from the untrimmed one on the training text (each "
                               "model reading its own tokens) to win back what the dropped tokens cost.")
    recover_epochs: int = opt(1, "Epochs of recovery distillation.")
    recover_min_steps: int = opt(300, "Raise recovery epochs until this many updates, best epoch kept (0: off).")
    task: str | None = opt(None, choices=TASKS)
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def __post_init__(self):
        if self.max_vocab is not None and self.max_vocab < 2:
            raise ValueError("max_vocab must be at least 2 (or unset: keep every token the text uses)")
        if self.min_count < 1:
            raise ValueError("min_count must be >= 1")
        if self.max_length is not None and self.max_length < 2 or self.eval_batch_size < 1:
            raise ValueError("max_length must be >= 2 and eval_batch_size >= 1")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise ValueError("max_eval_samples must be >= 1")
        if self.recover_epochs < 1 or self.recover_min_steps < 0:
            raise ValueError("recover_epochs must be >= 1 and recover_min_steps >= 0")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {', '.join(TASKS)}")


@writes_output("data")
def trim_vocab(src: str | Path | ModelSource, cfg: TrimVocabConfig, out: str | Path, *,
               force: bool = False) -> Artifact:
    """Trim `src` (torch artifact, model folder, built-in name or hub id) into a torch artifact at `out`.

    With `cfg.recover`, `out` holds the trimmed classifier after a short distillation from the untrimmed one;
    the trimmed model lives in a hidden scratch folder beside `out` (artifact.RECOVER_SCRATCH) until then.
    """
    t0 = time.time()  # the lineage times the whole stage (`toolchain info`), not only the write
    out = Path(out)
    check_output(out, force)
    source = src if isinstance(src, ModelSource) else resolve_model(src, trust_remote_code=cfg.trust_remote_code)
    task = cfg.task or (source.artifact.task if source.artifact else infer_task(source.config))
    if task not in TASKS:
        raise Unsupported(f"unsupported task {task!r}", f"use one of: {', '.join(TASKS)}")
    if cfg.alias and task != "text-classification":
        raise Unsupported(f"trim-vocab --alias maps several tokens to one row, which a {task} model could not decode "
                          "back to text", "drop --alias (it is for classifiers)")
    if cfg.recover and task != "text-classification":
        raise Unsupported(f"trim-vocab --recover distils a classifier's logits, one row per text; this is a {task} "
                          "model, whose loss compares the two vocabularies token by token",
                          "drop --recover (the training text tokenizes exactly as before, so it needs none)")
    asked = config_to_dict(cfg) | {"source": source.spec}  # what was asked: a recipe compares it
    if not cfg.recover:
        return _trim(source, cfg, task, asked, out, force, t0)
    scratch = recovery_scratch(out)
    trimmed = (resumable(scratch, "trim-vocab", source_hash(source), asked)
               or _trim(source, cfg, task, asked, scratch, True, t0))
    from .distill import recover
    from .evaluate import DATA_FIELDS

    cfg = resolve_max_length(cfg, source.artifact)
    recovered = recover(source, trimmed, out, force, data=_data_name(cfg, task), epochs=cfg.recover_epochs,
                        min_steps=cfg.recover_min_steps, max_length=cfg.max_length,
                        **{k: getattr(cfg, k) for k in DATA_FIELDS})
    shutil.rmtree(scratch, ignore_errors=True)  # recovered: the trimmed model's record is in `out`'s lineage
    return recovered


def _trim(source: ModelSource, cfg: TrimVocabConfig, task: str, asked: dict, out: Path, force: bool,
          t0: float) -> Artifact:
    cfg = resolve_max_length(cfg, source.artifact)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    spec = _tokenizer_json(tokenizer)
    text = _texts(cfg, task)
    model = load_model(source, task, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    with write_artifact(out, stage="trim-vocab", config=asked, format="torch", task=task,
                        model_type=source.config.model_type, parent=source.artifact, force=force, started=t0) as o:
        o.record.input_hash = source_hash(source)
        o.record.metrics["max_length"] = cfg.max_length
        started = time.time()
        counts = _count(tokenizer, text.train)
        keep, why = choose(spec, tokenizer, model.config, counts, cfg)
        old_batch, new_batch = _parity_batches(tokenizer, keep, text.train[:8])
        reference = _outputs(model, old_batch)
        before = _score(model, tokenizer, text, task, cfg)
        new_spec = rewrite_tokenizer(spec, keep)
        aliases = _aliases(spec, keep, model.get_input_embeddings().weight.detach().numpy()) if cfg.alias else {}
        merges = spec["model"].get("merges") if aliases else None  # BPE: with every token aliased, every merge stays
        new_tok = _save_tokenizer(tokenizer, new_spec, keep, o.folder, aliases, merges)
        params_before = _params(model)
        shrink_embeddings(model, keep)
        model.save_pretrained(o.folder, safe_serialization=True)
        del model
        trimmed = load_model(ModelSource(str(o.folder), str(o.folder), local=True), task)  # as every later stage will
        o.record.metrics.update({
            "tokenizer": spec["model"]["type"] + (" (byte-level)" if _byte_level(spec) else ""),
            "vocab_before": len(tokenizer), "vocab_after": len(keep), "kept": why,
            "params_before": params_before, "params_after": _params(trimmed),
            "data": _data_name(cfg, task), "train_texts": len(text.train), "train_tokens": int(sum(counts.values())),
            "train_tokenization": _same_tokens(tokenizer, new_tok, keep, text.train[:CHECK_TEXTS]),
            "parity": _parity(reference, _outputs(trimmed, new_batch), keep, task),
            "held_out": _held_out(tokenizer, new_tok, keep, text.held_out, aliases),
            "aliased": len(aliases),
            "score_before": before, "score_after": _score(trimmed, new_tok, text, task, cfg),
            "trim_seconds": round(time.time() - started, 2),
        })
    return Artifact.load(out)


# --- reading the text -------------------------------------------------------------------------------

def _data_name(cfg: TrimVocabConfig, task: str) -> str:
    return cfg.data or DEFAULT_DATA.get(task, "rotten-tomatoes")


@dataclass
class TaskText:
    train: list[str]  # the text whose tokens are kept
    held_out: list[str]  # text never looked at when choosing: what may now tokenize differently
    split: object = None  # a classifier's held-out Split (texts, pairs, labels) for accuracy
    label_names: list[str] | None = None


def _texts(cfg: TrimVocabConfig, task: str) -> TaskText:
    """A classifier's train and validation splits, or plain text cut 90/10 at a line break."""
    from .data import data_spec, load_classification, load_text, training_text

    name = _data_name(cfg, task)
    if task == "text-generation":
        text = load_text(name)
        train = training_text(text)
        return TaskText([line for line in train.splitlines() if line.strip()], [text[len(train):]])
    data = load_classification(data_spec(cfg, name))  # the user's splits: only train texts choose the vocabulary
    train, val = data.split("train"), data.split("validation").subset(cfg.max_eval_samples)
    return TaskText(train.texts + (train.pairs or []), val.texts + (val.pairs or []), val, data.label_names)


def _count(tokenizer, texts: list[str]) -> Counter:
    """How often each token id occurs in `texts`, tokenized in full (no truncation, no specials)."""
    counts: Counter = Counter()
    for start in range(0, len(texts), 1000):
        for ids in tokenizer(texts[start:start + 1000], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    return counts


# --- choosing what to keep --------------------------------------------------------------------------

def _tokenizer_json(tokenizer) -> dict:
    if not getattr(tokenizer, "is_fast", False):
        raise Unsupported("trimming needs a fast tokenizer (tokenizer.json)",
                          "save the model's tokenizer with a recent transformers so tokenizer.json is written")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = spec["model"]["type"]
    if kind not in ("WordPiece", "BPE"):
        raise Unsupported(f"trimming knows WordPiece and BPE tokenizers; this one is {kind}",
                          "trim a BERT/DistilBERT/MiniLM (WordPiece) or RoBERTa/GPT-2/Llama-style (BPE) model")
    if kind == "BPE" and not (_byte_level(spec) or spec["model"].get("byte_fallback")):
        raise Unsupported("this BPE tokenizer is neither byte-level nor byte-fallback, so a dropped token could "
                          "leave text it cannot encode", "trim a byte-level BPE model (GPT-2, RoBERTa, Llama 3)")
    return spec


def _byte_level(spec: dict) -> bool:
    return "ByteLevel" in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" in json.dumps(spec.get("decoder"))


def choose(spec: dict, tokenizer, config, counts: Counter, cfg: TrimVocabConfig) -> tuple[list[int], dict]:
    """Old ids to keep, in their original order, and how many were kept for which reason."""
    specials = _specials(spec, tokenizer, config)
    base = specials | _coverage(spec, tokenizer)
    parents = _merge_parents(spec)
    kept = _closure(base, parents)
    if cfg.max_vocab is not None and len(kept) > cfg.max_vocab:
        raise RecipeError(f"max_vocab {cfg.max_vocab} is below the {len(kept)} tokens any text needs "
                          "(special tokens, single characters or bytes)", f"set max_vocab to at least {len(kept)}")
    fixed = len(kept)
    used = [t for t, c in counts.most_common() if c >= cfg.min_count]
    capped = 0
    for t in used:
        if t in kept:
            continue
        new = _closure({t}, parents) - kept
        if cfg.max_vocab is not None and len(kept) + len(new) > cfg.max_vocab:
            capped += 1
            continue
        kept |= new
    ancestors, filled = len(kept) - len(kept & (set(counts) | base)), 0
    if cfg.fill and cfg.max_vocab is not None:
        # Small training text uses a fraction of the budget; held-out text then meets fewer dropped words when
        # the rest goes to the tokens frequent in the corpus the tokenizer was built on (lowest ids first).
        reserved = re.compile(r"^(\[unused\d+\]|<unused\d+>)$")
        for t in sorted(set(spec["model"]["vocab"].values()) - kept):
            if len(kept) >= cfg.max_vocab:
                break
            if reserved.match(tokenizer.convert_ids_to_tokens(t) or ""):
                continue
            new = _closure({t}, parents) - kept
            if len(kept) + len(new) <= cfg.max_vocab:
                kept |= new
                filled += len(new)
    why = {"special": len(specials), "coverage": fixed - len(specials), "filled_by_original_rank": filled,
           "used_in_training_text": len([t for t in counts if t in kept]), "used_total": len(counts),
           "dropped_used_by_cap": capped, "dropped_used_below_min_count": len(counts) - len(used),
           "merge_ancestors": ancestors}
    return sorted(kept), why


def _specials(spec: dict, tokenizer, config) -> set[int]:
    ids = {t["id"] for t in spec.get("added_tokens", [])} | set(tokenizer.all_special_ids)
    ids |= {getattr(config, k) for k in CONFIG_IDS if isinstance(getattr(config, k, None), int)}
    unk = spec["model"].get("unk_token")
    if unk is not None and unk in spec["model"]["vocab"]:
        ids.add(spec["model"]["vocab"][unk])
    return {i for i in ids if 0 <= i < len(tokenizer)}


def _coverage(spec: dict, tokenizer) -> set[int]:
    """Tokens that let any text tokenize: single characters (and `##` continuations), or the 256 bytes."""
    vocab = spec["model"]["vocab"]
    if spec["model"]["type"] == "WordPiece":
        prefix = spec["model"].get("continuing_subword_prefix") or "##"
        return {i for t, i in vocab.items()
                if len(t) == 1 or (t.startswith(prefix) and len(t) == len(prefix) + 1)}
    from tokenizers import pre_tokenizers

    ids = set()
    if _byte_level(spec):
        ids |= {vocab[c] for c in pre_tokenizers.ByteLevel.alphabet() if c in vocab}
    if spec["model"].get("byte_fallback"):
        ids |= {vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab}
        ids |= {i for t, i in vocab.items() if len(t) == 1}
    return ids


def _merges(spec: dict) -> list[tuple[str, str]]:
    """BPE merges as pairs, whichever form tokenizer.json stores them in ("a b" or ["a", "b"])."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"].get("merges") or []]


def _merge_parents(spec: dict) -> dict[int, tuple[int, int]]:
    """Token id -> the ids of the pair whose (first, highest-priority) merge produces it."""
    if spec["model"]["type"] != "BPE":
        return {}
    vocab, prefix = spec["model"]["vocab"], spec["model"].get("continuing_subword_prefix") or ""
    parents: dict[int, tuple[int, int]] = {}
    for a, b in _merges(spec):
        result = a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)
        if result in vocab and a in vocab and b in vocab:
            parents.setdefault(vocab[result], (vocab[a], vocab[b]))
    return parents


def _closure(ids: set[int], parents: dict[int, tuple[int, int]]) -> set[int]:
    """`ids` and every token the merges that build them pass through."""
    out, todo = set(ids), list(ids)
    while todo:
        for p in parents.get(todo.pop(), ()):
            if p not in out:
                out.add(p)
                todo.append(p)
    return out


# --- rewriting the tokenizer ------------------------------------------------------------------------

def rewrite_tokenizer(spec: dict, keep: list[int]) -> dict:
    """tokenizer.json for the kept tokens, renumbered 0..n-1 in their original order."""
    new_id = {old: new for new, old in enumerate(keep)}
    spec = json.loads(json.dumps(spec))
    model = spec["model"]
    vocab = {t: new_id[i] for t, i in model["vocab"].items() if i in new_id}
    if model["type"] == "BPE":
        kept = [m for m in _merges(spec) if all(x in vocab for x in m) and _merge_result(m, model) in vocab]
        model["merges"] = [list(m) for m in kept]
    model["vocab"] = vocab
    for t in spec.get("added_tokens", []):
        t["id"] = new_id[t["id"]]
    _remap_ids(spec.get("post_processor"), new_id)
    if spec.get("padding") and "pad_id" in spec["padding"]:
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    return spec


def _aliases(spec: dict, keep: list[int], embedding) -> dict[str, int]:
    """Each dropped token -> the new id of the kept token nearest it in the untrimmed embedding (cosine).

    With them the trimmed tokenizer splits every text exactly as the original did, and only a dropped token reads
    another row: on the main job's test reviews -0.2 points against the untrimmed model instead of the -1.2 of
    re-splitting half of them (benchmarks/trim_alias.py)."""
    import numpy as np

    unit = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    rows = unit[keep]
    kept = set(keep)
    dropped = [(t, i) for t, i in spec["model"]["vocab"].items() if i not in kept]
    out = {}
    for start in range(0, len(dropped), 2048):
        chunk = dropped[start:start + 2048]
        nearest = (unit[[i for _, i in chunk]] @ rows.T).argmax(1)
        out.update({t: int(j) for (t, _), j in zip(chunk, nearest)})
    return out


def _merge_result(m: tuple[str, str], model: dict) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    return m[0] + (m[1][len(prefix):] if prefix and m[1].startswith(prefix) else m[1])


def _remap_ids(node, new_id: dict[int, int]) -> None:
    """Renumber the token ids a post-processor names (Bert/Roberta pairs, Template special tokens, Sequence)."""
    if isinstance(node, dict):
        for key in ("cls", "sep"):
            if isinstance(node.get(key), list) and len(node[key]) == 2:
                node[key][1] = new_id[node[key][1]]
        if node.get("type") == "TemplateProcessing":
            for tok in node.get("special_tokens", {}).values():
                tok["ids"] = [new_id[i] for i in tok["ids"]]
        for child in node.get("processors") or []:
            _remap_ids(child, new_id)


def _save_tokenizer(tokenizer, spec: dict, keep: list[int], folder: Path, aliases: dict[str, int] | None = None,
                    merges: list | None = None):
    """Save a tokenizer of the same class around the rewritten tokenizer.json, and load it back. `aliases`
    (dropped token -> kept id) go into tokenizer.json as written here; `tokenizers` itself would keep one string
    per id, so that file is written as JSON and vocab.txt (a line per id) is not written."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from .modeling import SLOW_TOKENIZER_FILES, quiet_transformers

    new_id = {old: new for new, old in enumerate(keep)}
    tokenizer.save_pretrained(folder)
    for stale in SLOW_TOKENIZER_FILES:  # the slow files would hold the old ids
        (folder / stale).unlink(missing_ok=True)
    Tokenizer.from_str(json.dumps(spec)).save(str(folder / "tokenizer.json"))
    cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in
                                       (tok_cfg.get("added_tokens_decoder") or {}).items()}
    cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    with quiet_transformers():
        new = AutoTokenizer.from_pretrained(folder)
    new.save_pretrained(folder)  # writes the slow tokenizer's files (vocab.txt / vocab.json + merges.txt) anew
    if aliases:
        spec = json.loads(json.dumps(spec))
        spec["model"]["vocab"] |= aliases
        if merges is not None:  # BPE: the original merges, so every word merges as before
            spec["model"]["merges"] = merges
        (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        for stale in SLOW_TOKENIZER_FILES:  # one line per id: they cannot hold aliases
            (folder / stale).unlink(missing_ok=True)
        with quiet_transformers():
            new = AutoTokenizer.from_pretrained(folder)
    if new.pad_token is None:
        new.pad_token = new.eos_token
    return new


# --- the model --------------------------------------------------------------------------------------

def shrink_embeddings(model, keep: list[int]) -> None:
    """Keep rows `keep` of the input embedding and of the LM head (tied or not); renumber config ids."""
    import torch
    from torch import nn

    idx = torch.tensor(keep, dtype=torch.long)
    new_id = {old: new for new, old in enumerate(keep)}
    old = model.get_input_embeddings()
    pad = new_id.get(old.padding_idx) if old.padding_idx is not None else None
    emb = nn.Embedding(len(keep), old.embedding_dim, padding_idx=pad)
    emb.weight = nn.Parameter(old.weight.detach().index_select(0, idx).clone(), old.weight.requires_grad)
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is old.weight
    model.set_input_embeddings(emb)
    if head is not None:
        if tied:
            head.weight = emb.weight
        else:
            head.weight = nn.Parameter(head.weight.detach().index_select(0, idx).clone())
        if getattr(head, "bias", None) is not None:
            head.bias = nn.Parameter(head.bias.detach().index_select(0, idx).clone())
        head.out_features = len(keep)
    for k in CONFIG_IDS:
        if isinstance(getattr(model.config, k, None), int):
            setattr(model.config, k, new_id[getattr(model.config, k)])
    base = getattr(model.base_model, "embeddings", None)
    if base is not None and isinstance(getattr(base, "padding_idx", None), int):
        base.padding_idx = model.config.pad_token_id  # RoBERTa numbers positions after the pad id
    model.config.vocab_size = len(keep)


def _params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --- the checks -------------------------------------------------------------------------------------

def _same_tokens(old_tok, new_tok, keep: list[int], texts: list[str]) -> dict:
    """Training text tokenizes id for id as before (renumbered) wherever all its tokens were kept: always,
    unless max_vocab or min_count dropped tokens it uses (those texts are counted, not checked)."""
    new_id = {old: new for new, old in enumerate(keep)}
    olds = old_tok(texts, add_special_tokens=True)["input_ids"]
    news = new_tok(texts, add_special_tokens=True)["input_ids"]
    dropped = 0
    for text, o, n in zip(texts, olds, news):
        mapped = [new_id.get(i, -1) for i in o]
        if -1 in mapped:
            dropped += 1
        elif mapped != n:
            raise CheckFailed(f"the trimmed tokenizer splits a training text differently: {text[:60]!r}",
                              "this is a toolchain bug for this tokenizer; please report it with the model")
    return {"texts_checked": len(texts) - dropped, "identical": True, "texts_using_dropped_tokens": dropped}


def _parity_batches(tokenizer, keep: list[int], texts: list[str]) -> tuple[dict, dict]:
    """The same token sequence in old and in new ids: training text (from the parity texts when there is
    none), tokenized by the original, with any token a cap dropped replaced by the (kept) unknown token."""
    from .parity import SAMPLE_TEXTS

    enc = tokenizer(texts or list(SAMPLE_TEXTS), padding=True, truncation=True, max_length=48, return_tensors="np")
    new_id = {old: new for new, old in enumerate(keep)}
    fill = tokenizer.unk_token_id if tokenizer.unk_token_id in new_id else keep[0]
    old_ids = np.where(np.isin(enc["input_ids"], keep), enc["input_ids"], fill)
    old = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()} | {"input_ids": old_ids.astype(np.int64)}
    return old, old | {"input_ids": np.vectorize(new_id.__getitem__)(old_ids).astype(np.int64)}


def _outputs(model, batch: dict) -> dict:
    import torch

    with torch.inference_mode():
        r = model(**{k: torch.from_numpy(v) for k, v in batch.items()
                     if k in ("input_ids", "attention_mask", "token_type_ids")})
    value = getattr(r, "logits", None)
    return {"logits": (value if value is not None else r.last_hidden_state).float().numpy()}


def _parity(reference: dict, candidate: dict, keep: list[int], task: str) -> dict:
    """The original model on the original ids vs the saved and reloaded trimmed model on the trimmed ids
    (an LM's logits: the kept tokens' columns; the dropped ones are gone from the head)."""
    from . import parity

    if task == "text-generation":
        reference = {"logits": reference["logits"][..., keep]}
    result = parity.compare(reference, candidate, PARITY_ATOL)
    if not result.ok:
        raise CheckFailed(f"trimmed model vs original on identically tokenized text: outputs differ by "
                          f"{result.max_abs_diff:.3g} (tolerance {PARITY_ATOL:g})",
                          "this is a toolchain bug for this architecture; please report it with the model config")
    return {"max_abs_diff": result.max_abs_diff, "atol": PARITY_ATOL, "texts": len(reference["logits"]),
            "reloaded": True}


def _held_out(old_tok, new_tok, keep: list[int], texts: list[str], aliases: dict[str, int] | None = None) -> dict:
    """How held-out text fares: the share of its tokens that were dropped, of texts that now tokenize
    differently, the length change. Checked: every trimmed id names the token string its row came from,
    and a text whose tokens were all kept tokenizes exactly as before (aliased: every text, dropped tokens
    reading their alias's row)."""
    new_id = {old: new for new, old in enumerate(keep)}
    if aliases:  # an aliased id decodes to any of its strings: check every string through the vocabulary
        old_vocab = old_tok.backend_tokenizer.get_vocab()
        new_id |= {old_vocab[t]: i for t, i in aliases.items()}
        vocab = new_tok.backend_tokenizer.get_vocab()
        if any(vocab.get(t) != new_id[i] for t, i in old_vocab.items()):
            raise CheckFailed("the aliased tokenizer.json lost or moved a token",
                              "this is a toolchain bug for this tokenizer; please report it with the model")
    else:
        old_strings = old_tok.convert_ids_to_tokens(keep)
        new_strings = new_tok.convert_ids_to_tokens(list(range(len(keep))))
        if old_strings != new_strings:
            bad = next(i for i, (a, b) in enumerate(zip(old_strings, new_strings)) if a != b)
            raise CheckFailed(f"trimmed id {bad} is {new_strings[bad]!r} but its embedding row is "
                              f"{old_strings[bad]!r}",
                              "this is a toolchain bug for this tokenizer; please report it with the model")
    kept = set(keep)
    olds = old_tok(texts, add_special_tokens=False)["input_ids"]
    news = new_tok(texts, add_special_tokens=False)["input_ids"]
    n_old = sum(len(o) for o in olds)
    dropped = changed = 0
    for text, o, n in zip(texts, olds, news):
        mapped = [new_id.get(i, -1) for i in o]
        dropped += sum(i not in kept for i in o)
        if -1 not in mapped and mapped != n:
            raise CheckFailed(f"a held-out text whose tokens were all kept tokenizes differently: {text[:60]!r}",
                              "this is a toolchain bug for this tokenizer; please report it with the model")
        changed += mapped != n
    return {"texts": len(texts), "tokens": n_old, "tokens_dropped_share": dropped / max(n_old, 1),
            "texts_changed_share": changed / max(len(texts), 1),
            "length_ratio": sum(len(n) for n in news) / max(n_old, 1),
            "unk_share_before": _share(olds, old_tok.unk_token_id),
            "unk_share_after": _share(news, new_tok.unk_token_id)}


def _share(seqs, token_id) -> float:
    total = sum(len(s) for s in seqs)
    return 0.0 if token_id is None or not total else sum(s.count(token_id) for s in seqs) / total


class _InMemory:
    """What evaluate.predict needs from a runner, for a model already in memory."""

    def __init__(self, model, tokenizer):
        import inspect

        self.model, self.tokenizer = model, tokenizer
        self.args = set(inspect.signature(model.forward).parameters)

    def logits(self, batch: dict) -> np.ndarray:
        import torch

        with torch.inference_mode():
            r = self.model(**{k: torch.from_numpy(v) for k, v in batch.items() if k in self.args})
        return r.logits.float().numpy()


def _score(model, tokenizer, text: TaskText, task: str, cfg: TrimVocabConfig) -> dict | None:
    """Held-out accuracy (classifiers) or perplexity (causal LMs); None for a model without a task head."""
    from .evaluate import EvaluateConfig, map_labels, predict, strided_nll
    from .metrics import classification_metrics

    runner = _InMemory(model, tokenizer)
    if task == "text-classification":
        ecfg = EvaluateConfig(batch_size=cfg.eval_batch_size, max_length=cfg.max_length)
        labels = map_labels(text.label_names, model.config)[text.split.labels]
        pred = predict(runner, text.split, ecfg, progress=False).argmax(-1)
        m = classification_metrics(labels, pred, model.config.num_labels)
        return {"split": "validation", "examples": len(labels), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    if task == "text-generation":
        ids = np.array(tokenizer(text.held_out[0])["input_ids"], dtype=np.int64)[: cfg.max_eval_samples]
        window = min(512, getattr(model.config, "max_position_embeddings", 512) or 512)
        nll, count, _ = strided_nll(runner.logits, ids, window, window // 2)
        # Per character, not per token: a trimmed tokenizer may cut the same text into more tokens.
        chars = len(tokenizer.decode(ids, skip_special_tokens=True))
        return {"split": "last tenth of the text", "tokens": int(count), "perplexity": float(np.exp(nll / count)),
                "bits_per_char": float(nll / np.log(2) / max(chars, 1))}
    return None
