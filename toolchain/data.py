"""Datasets: the built-in rotten-tomatoes and hamlet, user CSV / JSONL / Parquet files, hub datasets.

Classification data becomes three fixed splits (train / validation / test) of (text, pair, label)
with a stable label <-> id map. Tokenization pads dynamically per batch; `calibration_batches`
gives later stages (static quantization, pruning importance) samples of the task data.
"""

from __future__ import annotations

import bz2
import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from . import assets
from .errors import DataError, InputNotFound, MissingPackage
from .guard import regular_file

SPLITS = ("train", "validation", "test")
SEED = 42  # the split seed: fixed so every machine sees the same test set
FRACTIONS = (0.8, 0.1, 0.1)
MIN_PER_CLASS = 3  # one example per split at least


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # int64 ids into ClassificationData.label_names
    pairs: list[str] | None = None  # second text of sentence-pair tasks (MRPC, NLI)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int | None) -> "Split":
        """The first n examples (splits are already shuffled), or all when n is None."""
        if n is None or n >= len(self):
            return self
        return Split(self.texts[:n], self.labels[:n], self.pairs[:n] if self.pairs else None)


@dataclass
class ClassificationData:
    name: str
    label_names: list[str]
    splits: dict[str, Split] = field(default_factory=dict)
    origin: str = f"seeded stratified 80/10/10 split (seed {SEED})"  # how the splits were made, for every result

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.label_names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"{self.name} has no split {name!r}", f"use one of: {', '.join(self.splits)}")
        return self.splits[name]

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}


@dataclass(frozen=True)
class DataSpec:
    """What to load: a built-in name, a file, or a hub dataset id, and which columns hold what."""

    source: str = "rotten-tomatoes"
    text_column: str = "text"
    label_column: str = "label"
    pair_column: str | None = None
    validation: str | None = None  # a file of its own for the validation split (then `source` is the train file)
    test: str | None = None  # a file of its own for the test split, scored whole
    split_column: str | None = "split"  # a column naming each row's split (train / validation / test); None: ignore


def load_classification(spec: DataSpec | str, *, whole: bool = False) -> ClassificationData:
    """Load labelled text and split it (seeded, stratified) unless the source has its own splits.

    `whole`: one split, "all", holding every row of `source` as given (a held-out test file scored whole).
    """
    spec = DataSpec(spec) if isinstance(spec, str) else spec
    if whole or spec.validation or spec.test or _has_split_column(spec):
        return load_user_splits(spec, whole=whole)
    if spec.source == "rotten-tomatoes":
        texts, labels = _rotten_tomatoes()
        return _split(spec.source, texts, None, labels, ["rotten", "fresh"])
    if spec.source == "hamlet":
        raise DataError("hamlet is plain text, not a labelled dataset", "use it with a text-generation model")
    path = Path(spec.source).expanduser()
    if path.exists():
        rows = read_rows(path)
        return _from_rows(spec, str(path), rows)
    if spec.source.startswith((".", "/", "~")) or Path(spec.source).suffix in (".csv", ".jsonl", ".json", ".parquet"):
        raise InputNotFound(f"{spec.source} does not exist", "check the path")
    return _from_hub(spec)


def data_fingerprint(source: str) -> str:
    """What `source` holds, for telling a changed dataset from the same one: a local file's sha256, else its name
    (built-ins change only with their package version; hub datasets are versioned by the hub)."""
    import hashlib

    path = Path(source).expanduser()
    if source in ("rotten-tomatoes", "hamlet") or not path.is_file():
        return f"name:{source}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _rotten_tomatoes() -> tuple[list[str], list[str]]:
    path = assets.asset_file("rotten-tomatoes")
    texts, labels, seen = [], [], set()
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            # The corpus also holds plot summaries ('plot'); only reviews carry a sentiment.
            if row["category"] in ("fresh", "rotten") and row["text"] not in seen:
                seen.add(row["text"])
                texts.append(row["text"])
                labels.append(row["category"])
    return texts, labels


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV, JSONL or Parquet file as dicts; bad encoding and empty files are DataErrors."""
    suffix = path.suffix.lower()
    regular_file(path, DataError, "data file")  # a FIFO or device would block the read forever
    try:
        if suffix in (".csv", ".tsv"):
            # utf-8-sig: spreadsheet programs start a CSV with a byte-order mark, which would prefix the first column name
            with open(path, encoding="utf-8-sig", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        elif suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8-sig") as f:
                rows = [_json_line(line, path, i) for i, line in enumerate(f, 1) if line.strip()]
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            raise DataError(f"{path}: unknown file type {suffix!r}", "use .csv, .tsv, .jsonl or .parquet")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid UTF-8 (byte {exc.start})", "re-save the file as UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read: {exc}", "check the file") from None
    if not rows:
        raise DataError(f"{path} has no rows", "pass a file with a header and at least one row per class and split")
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: every row must be an object with named columns", "write one JSON object per line")
    return rows


def _json_line(line: str, path: Path, number: int):
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # ValueError: bad JSON, or an integer too long to convert
        raise DataError(f"{path}: line {number} is not valid JSON", "write one JSON object per line") from None


def _from_rows(spec: DataSpec, name: str, rows: list[dict]) -> ClassificationData:
    texts, pairs, labels = _columns(spec, name, rows)
    return _split(name, texts, pairs, labels, label_names(labels))


def _columns(spec: DataSpec, name: str, rows: list[dict]) -> tuple[list[str], list[str] | None, list]:
    """(texts, pairs, labels) of `rows`: the named columns present, texts non-empty, labels of one kind."""
    columns = [spec.text_column, spec.label_column] + ([spec.pair_column] if spec.pair_column else [])
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DataError(
            f"{name} has no column {missing[0]!r} (columns: {', '.join(map(str, rows[0]))})",
            "name the right columns with --text-column / --label-column / --pair-column",
        )
    texts = [_text(r.get(spec.text_column), name, i) for i, r in enumerate(rows)]
    pairs = [_text(r.get(spec.pair_column), name, i) for i, r in enumerate(rows)] if spec.pair_column else None
    labels = checked_labels([r.get(spec.label_column) for r in rows], name, spec.label_column)
    return texts, pairs, labels


LABEL_KINDS = {bool: "true/false", int: "a number", float: "a number", str: "text"}


def checked_labels(labels: list, name: str, column: str) -> list:
    """Labels of one kind, none missing: `1`, `"1"` and `true` would otherwise become three classes, and a
    missing label a class "None"."""
    kinds: dict[str, object] = {}
    for i, value in enumerate(labels):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{name}: row {i + 1} has no {column!r} value (a missing label, or a row cut short)",
                            "give every row a label, or remove that row")
        kind = LABEL_KINDS.get(type(value))
        if kind is None:
            raise DataError(f"{name}: row {i + 1} has a label of type {type(value).__name__} ({str(value)[:40]!r})",
                            "labels are text or whole numbers")
        if isinstance(value, float) and not value.is_integer():
            raise DataError(f"{name}: row {i + 1} has the label {value!r}, not a whole number",
                            "labels are text or whole numbers (a regression target is not a class)")
        kinds.setdefault(kind, value)
    if len(kinds) > 1:
        seen = ", ".join(f"{v!r} ({k})" for k, v in kinds.items())
        raise DataError(f"{name}: the {column!r} column mixes label types: {seen}",
                        "write every label the same way (all text or all numbers)")
    return labels


def _text(value, name: str, row: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{name}: row {row + 1} has an empty or non-text value", "remove or fix that row")
    return value


def label_names(labels: list) -> list[str]:
    """A stable order for label values: numeric order when all are integers, else sorted text."""
    values = {str(v).strip() for v in labels}
    if all(re.fullmatch(r"-?\d+", v) for v in values):
        return sorted(values, key=int)
    return sorted(values)


def _split(name: str, texts: list[str], pairs: list[str] | None, labels: list, names: list[str]) -> ClassificationData:
    """Seeded stratified split: per class, shuffle and cut 80/10/10, so every machine gets the same sets."""
    ids = np.array([names.index(str(v).strip()) for v in labels], dtype=np.int64)
    if len(names) < 2:
        raise DataError(f"{name} has a single class ({names[0]!r})", "a classifier needs at least two labels")
    rng = np.random.default_rng(SEED)
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for label in range(len(names)):
        members = np.flatnonzero(ids == label)
        if len(members) < MIN_PER_CLASS:
            raise DataError(
                f"{name}: class {names[label]!r} has {len(members)} examples; the split needs {MIN_PER_CLASS}",
                "add examples of that class, or drop it",
            )
        members = rng.permutation(members)
        n_test = math.ceil(len(members) * FRACTIONS[2])
        n_val = max(1, round(len(members) * FRACTIONS[1]))
        parts["test"] += members[:n_test].tolist()
        parts["validation"] += members[n_test:n_test + n_val].tolist()
        parts["train"] += members[n_test + n_val:].tolist()
    data = ClassificationData(name, names)
    for split, idx in parts.items():
        idx = rng.permutation(np.array(idx, dtype=np.int64))
        data.splits[split] = Split([texts[i] for i in idx], ids[idx], [pairs[i] for i in idx] if pairs else None)
    return data


# ---------------------------------------------------------------- the user's own splits
# Kept apart from the loading above: a split column, separate files per split, or one file scored whole.

SPLIT_NAMES = {  # values of a split column (lower-cased) -> the toolchain's split
    "train": "train", "training": "train", "trn": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "development": "validation", "eval": "validation",
    "test": "test", "testing": "test", "tst": "test", "heldout": "test", "held-out": "test",
}
ALL = "all"  # the split name of `whole` data: every row of the source


def data_spec(cfg, default: str = "rotten-tomatoes") -> DataSpec:
    """The DataSpec of any stage config that reads labelled data (finetune, distill, prune, quantize, ...)."""
    return DataSpec(getattr(cfg, "data", None) or default, getattr(cfg, "text_column", "text"),
                    getattr(cfg, "label_column", "label"), getattr(cfg, "pair_column", None),
                    getattr(cfg, "validation_data", None), getattr(cfg, "test_data", None),
                    getattr(cfg, "split_column", "split"))


def _has_split_column(spec: DataSpec) -> bool:
    path = Path(spec.source).expanduser()
    if not spec.split_column or not path.is_file():
        return False
    return spec.split_column in read_rows(path)[0]


def _file_split(spec: DataSpec, source: str) -> tuple[list[str], list[str] | None, list]:
    """(texts, pairs, labels) of every row of one file, or of a built-in's rows."""
    if source == "rotten-tomatoes":
        texts, labels = _rotten_tomatoes()
        return texts, None, labels
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputNotFound(f"{source} does not exist", "check the path")
    return _columns(spec, source, read_rows(path))


def load_user_splits(spec: DataSpec, *, whole: bool = False) -> ClassificationData:
    """Splits as the user gave them: a split column, or a file per split; a missing validation or test
    split is cut from train (seeded, stratified, a tenth of it) and the origin says so."""
    parts: dict[str, tuple] = {}
    if whole:
        parts[ALL] = _file_split(spec, spec.source)
        origin = f"every row of {Path(spec.source).name} (split 'all')"
    elif _has_split_column(spec):
        parts = _by_split_column(spec)
        origin = f"the file's {spec.split_column!r} column"
    else:
        parts["train"] = _file_split(spec, spec.source)
        given = (("train", spec.source), ("validation", spec.validation), ("test", spec.test))
        origin = "files: " + ", ".join(f"{k} {Path(v).name}" for k, v in given if v)
    for split, source in (("validation", spec.validation), ("test", spec.test)):
        if source and not whole:
            parts[split] = _file_split(spec, source)
    names = label_names([y for _, _, labels in parts.values() for y in labels])
    if len(names) < 2 and not whole:
        raise DataError(f"{spec.source} has a single class ({names[0]!r})", "a classifier needs at least two labels")
    data = ClassificationData(spec.source, names, origin=origin)
    for split, (texts, pairs, labels) in parts.items():
        ids = np.array([names.index(str(v).strip()) for v in labels], dtype=np.int64)
        data.splits[split] = Split(texts, ids, pairs)
    if not whole:
        _cut_missing(data)
        # Train is shuffled (seeded): a file sorted by class would otherwise give max_train_samples, calibration
        # and pruning importance one class. Validation and test keep the file's order.
        train = data.splits.get("train")
        if train is not None:
            data.splits["train"] = _take(train, np.random.default_rng(SEED).permutation(len(train)))
    return data


def _by_split_column(spec: DataSpec) -> dict[str, tuple]:
    rows = read_rows(Path(spec.source).expanduser())
    _columns(spec, spec.source, rows)  # every row checked once, whatever its split
    grouped: dict[str, list[dict]] = {}
    for i, row in enumerate(rows):
        value = str(row.get(spec.split_column) or "").strip().lower()
        if value not in SPLIT_NAMES:
            raise DataError(f"{spec.source}: row {i + 1} has split {row.get(spec.split_column)!r} in column "
                            f"{spec.split_column!r}", "use train, validation (dev, val) or test in that column")
        grouped.setdefault(SPLIT_NAMES[value], []).append(row)
    if "train" not in grouped and "test" not in grouped:
        raise DataError(f"{spec.source}: the {spec.split_column!r} column names no train or test rows",
                        "mark rows as train, validation or test")
    return {split: _columns(spec, f"{spec.source} ({split})", rows) for split, rows in grouped.items()}


def _cut_missing(data: ClassificationData) -> None:
    """A split the user did not give is cut from train: seeded and stratified, a tenth of train each."""
    rng = np.random.default_rng(SEED)
    for split in ("test", "validation"):
        if split in data.splits:
            continue
        train = data.splits.get("train")
        if train is None:  # a test-only file: nothing to cut from; asking for the split says it is missing
            continue
        cut = []
        for label in np.unique(train.labels):
            members = rng.permutation(np.flatnonzero(train.labels == label))
            cut += members[:max(1, round(len(members) * FRACTIONS[2]))].tolist() if len(members) > 1 else []
        keep = np.setdiff1d(np.arange(len(train)), cut)
        data.splits[split] = _take(train, rng.permutation(np.array(cut, dtype=np.int64)))
        data.splits["train"] = _take(train, keep)
        data.origin += f"; {split} cut from train (seeded, a tenth per class)"


def _take(split: Split, idx: np.ndarray) -> Split:
    pairs = [split.pairs[i] for i in idx] if split.pairs else None
    return Split([split.texts[i] for i in idx], split.labels[idx], pairs)


def _from_hub(spec: DataSpec) -> ClassificationData:
    """A hub dataset such as glue/sst2 or glue/mrpc (needs internet); its test labels are hidden, so
    its validation split serves as test and a tenth of train as validation."""
    try:
        import datasets
    except ImportError:
        raise MissingPackage("hub datasets need the package datasets", "pip install datasets") from None
    path, _, config = spec.source.partition("/")
    try:
        ds = datasets.load_dataset(path, config or None)
    except Exception as exc:  # datasets raises many types for 'not found' and 'offline'
        raise InputNotFound(
            f"{spec.source!r} is not a built-in dataset (rotten-tomatoes), a local file, or a reachable hub dataset "
            f"({type(exc).__name__})",
            "check the name, or pass a CSV / JSONL / Parquet file",
        ) from None
    pair = spec.pair_column
    text_col = spec.text_column if spec.text_column in ds["train"].column_names else ds["train"].column_names[0]
    feature = ds["train"].features.get(spec.label_column)
    names = list(getattr(feature, "names", None) or label_names(ds["train"][spec.label_column]))
    data = ClassificationData(spec.source, names, origin="the hub dataset's validation split as test, a seeded "
                                                        "tenth of its train split as validation")

    def split_of(rows, idx):
        labels = np.array([rows[spec.label_column][i] for i in idx], dtype=np.int64)
        return Split([rows[text_col][i] for i in idx], labels, [rows[pair][i] for i in idx] if pair else None)

    train = ds["train"][:]
    order = np.random.default_rng(SEED).permutation(len(ds["train"]))
    n_val = len(order) // 10
    data.splits["train"] = split_of(train, order[n_val:])
    data.splits["validation"] = split_of(train, order[:n_val])
    test = ds["validation"][:]
    data.splits["test"] = split_of(test, range(len(ds["validation"])))
    return data


HELD_OUT_SHARE = 0.1  # plain text (LMs): the last tenth is held out; calibration and vocabulary read the rest


def training_text(text: str) -> str:
    """A plain text without its last tenth (cut at a line end): what calibration (quantize, prune) and
    trim-vocab read, so that perplexity on the last tenth is on text none of them saw (distill holds out
    the last tenth of its windows alike)."""
    keep = int(len(text) * (1 - HELD_OUT_SHARE))
    return text[:text.rfind("\n", 0, keep) + 1 or keep]


def load_text(source: str = "hamlet") -> str:
    """Plain text for language-model perplexity: the built-in hamlet or a UTF-8 .txt file."""
    if source == "hamlet":
        path = assets.asset_file("hamlet")
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise InputNotFound(f"{source} does not exist", "pass hamlet or a path to a .txt file")
        _plain_text_file(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid UTF-8 (byte {exc.start})", "re-save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path} is empty", "pass a file with text in it")
    return text


def _plain_text_file(path: Path) -> None:
    """A language model's text is one plain file: a table's header and commas would be read as prose."""
    regular_file(path, DataError, "text file")
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".parquet"):
        raise DataError(f"{path} is a table ({path.suffix}), not plain text: its header and separators would be "
                        "scored as text", "pass a .txt file (save the text column as plain text, one passage per line)")


def tokenize_split(tokenizer, split: Split, max_length: int) -> list[dict[str, list[int]]]:
    """One unpadded encoding per example; padding happens per batch (dynamic padding)."""
    enc = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length)
    return [{k: enc[k][i] for k in enc.keys()} for i in range(len(split))]


COVER = 0.99  # share of the training texts a fitted max_length keeps whole
LENGTH_STEP = 16  # fitted lengths are multiples of this: a handful of distinct shapes, fewer kernel variants


def fitted_max_length(tokenizer, split: Split, ceiling: int = 512) -> tuple[int, str]:
    """(max_length, why) for training on `split` when nobody chose one: the smallest multiple of 16 that
    keeps 99% of its texts whole, at most `ceiling` (the model's positions).

    A fixed 64 or 128 is a guess about someone else's data: rotten-tomatoes reviews fit in 64 (99% are at
    most 55 tokens), but a third of the 2016 debate statements are longer than 64, and the teacher that read
    them whole scored 4-8 points more (docs/results.md, Small data).
    """
    lengths = np.array([len(ids) for ids in tokenizer(split.texts, split.pairs, verbose=False)["input_ids"]])
    if not len(lengths):
        return min(128, ceiling), "no training texts to fit it to"
    need = int(np.quantile(lengths, COVER, method="inverted_cdf"))  # a real text's length
    length = int(min(max(LENGTH_STEP, -(-need // LENGTH_STEP) * LENGTH_STEP), ceiling))
    cut = float((lengths > length).mean())
    why = (f"fitted to the {len(lengths):,} training texts: {COVER:.0%} are at most {need} tokens"
           + (f"; capped at the model's {ceiling} positions, {cut:.1%} are cut" if length < need else "")
           + "; pass max_length to choose")
    return length, why


def pad_batch(tokenizer, examples: list[dict[str, list[int]]]) -> dict[str, np.ndarray]:
    """Pad a list of encodings to the longest one: int64 numpy arrays for torch and onnxruntime."""
    # Padding pre-tokenized examples is what dynamic padding is; silence the fast tokenizer's advice.
    tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
    batch = tokenizer.pad(examples, padding="longest", return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in batch.items()}


def batches(tokenizer, split: Split, batch_size: int, max_length: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(padded inputs, labels) in split order, padded per batch."""
    encoded = tokenize_split(tokenizer, split, max_length)
    for start in range(0, len(encoded), batch_size):
        yield pad_batch(tokenizer, encoded[start:start + batch_size]), split.labels[start:start + batch_size]


def calibration_batches(tokenizer, data: ClassificationData | str, n: int, max_length: int = 128,
                        split: str = "train") -> list[dict[str, np.ndarray]]:
    """`n` single-example batches of task data, the same for every stage that calibrates on them.

    Classification data gives its first n examples of `split`; plain text gives n windows spread over its
    training text (all but the last tenth, held out for perplexity).
    """
    if isinstance(data, str):
        ids = tokenizer(training_text(data) if split == "train" else data)["input_ids"]
        window = max_length
        starts = range(0, max(1, len(ids) - window), max(1, (len(ids) - window) // max(n, 1)))
        out = [{"input_ids": np.array([ids[s:s + window]], dtype=np.int64),
                "attention_mask": np.ones((1, len(ids[s:s + window])), dtype=np.int64)} for s in starts]
        return out[:n]
    examples = tokenize_split(tokenizer, data.split(split).subset(n), max_length)
    return [pad_batch(tokenizer, [e]) for e in examples]
