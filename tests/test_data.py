import json

import numpy as np
import pytest

from toolchain.data import DataSpec, calibration_batches, label_names, load_classification, load_text, pad_batch, \
    tokenize_split
from toolchain.errors import DataError, InputNotFound


def test_rotten_tomatoes_split_is_fixed_stratified_and_disjoint():
    a = load_classification("rotten-tomatoes")
    b = load_classification("rotten-tomatoes")
    assert a.counts() == {"train": 10201, "validation": 1275, "test": 1276}
    assert a.label_names == ["rotten", "fresh"]
    for split in ("train", "validation", "test"):
        assert a.split(split).texts == b.split(split).texts
        assert np.array_equal(a.split(split).labels, b.split(split).labels)
    sets = [set(a.split(s).texts) for s in ("train", "validation", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    fresh = [a.split(s).labels.mean() for s in ("train", "validation", "test")]
    assert max(fresh) - min(fresh) < 0.01  # stratified: the same class balance in every split


def _csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _rows(n=30, labels=("neg", "pos")):
    return [f"sentence number {i},{labels[i % len(labels)]}" for i in range(n)]


def test_label_names_map_stably_and_numerically():
    assert label_names(["pos", "neg", "pos"]) == ["neg", "pos"]
    assert label_names([10, 2, 1]) == ["1", "2", "10"]


def test_csv_jsonl_and_parquet_give_the_same_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"sentence number {i}", "label": ["neg", "pos"][i % 2]} for i in range(30)]
    csv_data = load_classification(str(_csv(tmp_path / "d.csv", _rows())))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    jsonl_data = load_classification(str(tmp_path / "d.jsonl"))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    pq_data = load_classification(str(tmp_path / "d.parquet"))
    for other in (jsonl_data, pq_data):
        assert other.label_names == csv_data.label_names == ["neg", "pos"]
        assert other.split("test").texts == csv_data.split("test").texts


def test_sentence_pairs_keep_their_second_text(tmp_path):
    rows = [f"first {i},second {i},{i % 2}" for i in range(20)]
    data = load_classification(DataSpec(str(_csv(tmp_path / "p.csv", rows, "s1,s2,label")), "s1", "label", "s2"))
    split = data.split("train")
    assert all(p.replace("second", "first") == t for t, p in zip(split.texts, split.pairs))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"text,label\n", "has no rows"),
        (b"sentence,label\na,neg\nb,pos\n", "no column 'text'"),
        (b"text,label\n\xff\xfe bad bytes,neg\n", "not valid UTF-8"),
        (b"text,label\n" + b"".join(b"s%d,neg\n" % i for i in range(10)), "single class"),
        (b"text,label\na,neg\nb,pos\nc,pos\nd,pos\n", "has 1 examples"),
    ],
)
def test_bad_datasets_give_clear_errors(tmp_path, content, message):
    (tmp_path / "d.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_classification(str(tmp_path / "d.csv"))


def test_missing_data_file_is_not_found(tmp_path):
    with pytest.raises(InputNotFound):
        load_classification(str(tmp_path / "nope.csv"))


def test_dynamic_padding_pads_to_the_longest_in_the_batch(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny("bert"))
    data = load_classification("rotten-tomatoes")
    enc = tokenize_split(tok, data.split("test").subset(4), max_length=16)
    batch = pad_batch(tok, enc)
    assert batch["input_ids"].shape == (4, max(len(e["input_ids"]) for e in enc))
    assert batch["input_ids"].dtype == np.int64 and max(len(e["input_ids"]) for e in enc) <= 16


def test_fitted_max_length_keeps_99_percent_of_the_texts_whole_in_multiples_of_16(tiny):
    from transformers import AutoTokenizer

    from toolchain.data import Split, fitted_max_length

    tok = AutoTokenizer.from_pretrained(tiny("bert"))
    short = [" ".join(["a"] * 10)] * 99 + [" ".join(["a"] * 300)]  # 12 tokens with [CLS]/[SEP]; one of 302
    length, why = fitted_max_length(tok, Split(short, np.zeros(100, dtype=np.int64)))
    assert length == 16 and "99% are at most 12 tokens" in why  # the one long text is cut, not padded to
    long = [" ".join(["a"] * n) for n in range(100, 700, 6)]
    length, why = fitted_max_length(tok, Split(long, np.zeros(len(long), dtype=np.int64)), ceiling=512)
    assert length == 512 and "capped at the model's 512 positions" in why
    length, _ = fitted_max_length(tok, Split(long[:10], np.zeros(10, dtype=np.int64)))
    assert length % 16 == 0 and length >= max(len(tok(t)["input_ids"]) for t in long[:9])


def test_calibration_batches_are_single_examples_of_task_data(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny("bert"))
    cal = calibration_batches(tok, load_classification("rotten-tomatoes"), n=5, max_length=32)
    assert len(cal) == 5 and all(b["input_ids"].shape[0] == 1 for b in cal)
    text_cal = calibration_batches(tok, load_text("hamlet"), n=3, max_length=16)
    assert len(text_cal) == 3 and all(b["input_ids"].shape == (1, 16) for b in text_cal)


def test_text_calibration_never_reads_the_held_out_last_tenth():
    """Perplexity on a text's last tenth is on text that no calibration (quantize, prune) saw."""
    from toolchain.data import training_text

    text = "a line of training text\n" * 90 + ("z" * 23 + "\n") * 10  # lines of equal length
    assert training_text(text) == "a line of training text\n" * 90

    def by_char(t):  # a tokenizer of one id per character
        return {"input_ids": [ord(c) for c in t]}

    windows = calibration_batches(by_char, text, n=50, max_length=16)
    assert len(windows) == 50 and ord("z") not in np.concatenate([w["input_ids"][0] for w in windows])


def test_hub_dataset_uses_its_validation_split_as_test(monkeypatch):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    rows = {"sentence": [f"s{i}" for i in range(50)], "label": [i % 2 for i in range(50)]}
    fake = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                                 "validation": datasets.Dataset.from_dict(
                                     {"sentence": ["v0", "v1"], "label": [0, 1]}, features=features)})
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None: fake)
    data = load_classification(DataSpec("glue/sst2", text_column="sentence"))
    assert data.label_names == ["negative", "positive"]
    assert data.counts() == {"train": 45, "validation": 5, "test": 2}
    assert data.split("test").texts == ["v0", "v1"]


def test_unreachable_hub_dataset_is_a_clear_error():
    with pytest.raises(InputNotFound, match="not a built-in dataset"):
        load_classification("no-such-org/no-such-dataset")


def test_a_csv_with_a_byte_order_mark_reads_its_first_column_by_name(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "text,label\n".encode() + "\n".join(_rows()).encode() + b"\n")
    data = load_classification(str(path))
    assert data.label_names == ["neg", "pos"] and sum(data.counts().values()) == 30


def test_labels_that_look_like_numbers_but_are_not_stay_text():
    assert label_names(["--1", "1", "-2"]) == ["--1", "-2", "1"]  # not all integers: sorted as text
    assert label_names(["-1", "10", "2"]) == ["-1", "2", "10"]


@pytest.mark.parametrize("labels, says", [
    ([1, "1", True], "mixes label types"),
    (["pos", None], "row 2 has no 'label' value"),
    (["pos", "  "], "row 2 has no 'label' value"),
    ([0.5, 1.0], "not a whole number"),
    ([[1], [0]], "type list"),
])
def test_labels_of_mixed_types_or_missing_are_refused(labels, says):
    from toolchain.data import checked_labels

    with pytest.raises(DataError) as info:
        checked_labels(labels, "data.jsonl", "label")
    assert says in info.value.problem and info.value.fix


def test_labels_of_one_kind_pass(tmp_path):
    from toolchain.data import checked_labels

    assert checked_labels([1, 0, 1], "d", "label") == [1, 0, 1]
    assert checked_labels([True, False], "d", "label") == [True, False]


def test_a_fifo_as_data_is_refused_without_opening_it(tmp_path):
    import os

    os.mkfifo(tmp_path / "data.csv")
    with pytest.raises(DataError, match="is a FIFO"):
        load_classification(str(tmp_path / "data.csv"))  # a read would block forever: this must return
    with pytest.raises(DataError, match="is a FIFO"):
        load_text(str(tmp_path / "data.csv"))


def test_lm_text_that_is_a_table_is_refused(tmp_path):
    _csv(tmp_path / "lines.csv", _rows())
    with pytest.raises(DataError, match="not plain text"):
        load_text(str(tmp_path / "lines.csv"))
