"""The bundle's predict.py and generate.py as a user runs them: a subprocess in the bundle's folder."""

import json
import shutil
import subprocess
import sys

import pytest

from toolchain.bundle_predict import BundleError, Predictor
from toolchain.package import BUNDLE_FILE, PackageConfig, package


@pytest.fixture(scope="module")
def classifier(tiny_run, tmp_path_factory):
    """A private copy of the tiny run's classifier bundle (labels negative, positive)."""
    return shutil.copytree(tiny_run[0] / "bundle", tmp_path_factory.mktemp("predict") / "bundle")


@pytest.fixture(scope="module")
def lm(tiny_onnx, tmp_path_factory):
    """A tiny Llama bundle with its KV cache, model.onnx only."""
    cfg = PackageConfig(mobile_check=False, ort_format=False, generate_tokens=4)
    return package(tiny_onnx("llama-past").path, cfg, tmp_path_factory.mktemp("generate") / "bundle").path


def run(folder, script, *args, stdin=None):
    """`python -I script args` in `folder`, as a user runs it (text stdin, or bytes)."""
    return subprocess.run([sys.executable, "-I", script, *map(str, args)], cwd=folder, capture_output=True,
                          input=stdin.encode() if isinstance(stdin, str) else stdin)


def out(done) -> str:
    return done.stdout.decode()


def err(done) -> str:
    return done.stderr.decode()


def assert_refused(done, code, *words):
    """Exit `code`, an `error:` and a `fix:` line naming `words`, no traceback, nothing on stdout."""
    text = err(done)
    assert done.returncode == code, text
    assert "Traceback" not in text and not done.stdout
    assert text.startswith("error: ") and "\n  fix: " in text and len(text.strip().splitlines()) == 2, text
    assert all(w in text for w in words), text


def labels_of(done) -> list[str]:
    return [r["label"] for r in json.loads(out(done))]


def test_predict_py_reads_one_text_a_line_from_stdin_with_a_dash(classifier):
    done = run(classifier, "predict.py", "--json", "-", stdin="a fine film\na dull mess\n")
    assert done.returncode == 0, err(done)
    assert [r["text"] for r in json.loads(out(done))] == ["a fine film", "a dull mess"]
    direct = run(classifier, "predict.py", "--json", "a fine film", "a dull mess")
    assert labels_of(done) == labels_of(direct)


def test_predict_py_reads_one_text_a_line_from_a_file(classifier, tmp_path):
    texts = tmp_path / "reviews.txt"
    texts.write_bytes("\ufeffa fine film\r\ncafé noir\n".encode())  # a byte-order mark and CRLF, as editors save
    done = run(classifier, "predict.py", "--file", texts)
    assert done.returncode == 0, err(done)
    lines = out(done).splitlines()
    assert [line.split("\t")[2] for line in lines] == ["a fine film", "café noir"]
    assert all(line.split("\t")[0] in ("negative", "positive") for line in lines)


@pytest.mark.parametrize("args, stdin, words", [
    (["a film", ""], None, "text 2 is empty"),
    (["   "], None, "text 1 is empty"),
    (["-"], "", "no text in stdin"),
    (["-"], "a film\n\nanother\n", "line 2 of stdin is empty"),
])
def test_predict_py_refuses_empty_text(classifier, args, stdin, words):
    assert_refused(run(classifier, "predict.py", *args, stdin=stdin), 5, words)


def test_predict_py_refuses_a_missing_file_and_text_that_is_not_utf8(classifier, tmp_path):
    assert_refused(run(classifier, "predict.py", "--file", tmp_path / "nope.txt"), 3, "nope.txt", "no such file")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    assert_refused(run(classifier, "predict.py", "--file", tmp_path / "latin1.txt"), 5, "not UTF-8", "byte 3")
    assert_refused(run(classifier, "predict.py", "-", stdin=b"\xff\xfe\x00"), 5, "stdin is not UTF-8")


def test_predict_py_refuses_mixed_or_missing_input(classifier, tmp_path):
    assert_refused(run(classifier, "predict.py"), 2, "no text given", "--file")
    assert_refused(run(classifier, "predict.py", "a film", "-"), 2, "- (read stdin)")
    assert_refused(run(classifier, "predict.py", "a film", "--file", tmp_path / "x.txt"), 2, "not both")


def test_predict_py_names_a_missing_model_file_and_the_ones_there(classifier, tmp_path):
    bundle = shutil.copytree(classifier, tmp_path / "b")
    assert_refused(run(bundle, "predict.py", "--model", "model.int4.onnx", "a film"), 3,
                   "model.int4.onnx not found", "--model with one of model.onnx, model.ort")
    (bundle / "model.onnx").unlink()
    (bundle / "model.ort").unlink()
    assert_refused(run(bundle, "predict.py", "a film"), 3, "model.onnx not found", "whole bundle")
    assert_refused(run(bundle, "predict.py", "--smoke"), 3, "model.onnx not found")


def test_predict_py_says_when_the_model_does_not_load(classifier, tmp_path):
    bundle = shutil.copytree(classifier, tmp_path / "b")
    (bundle / "model.onnx").write_bytes(b"not an onnx model")
    assert_refused(run(bundle, "predict.py", "a film"), 4, "model.onnx does not load", "toolchain verify")


def test_predict_py_without_bundle_json_says_so(classifier, tmp_path):
    bundle = shutil.copytree(classifier, tmp_path / "b")
    (bundle / BUNDLE_FILE).unlink()
    assert_refused(run(bundle, "predict.py", "a film"), 3, "bundle.json is missing", "toolchain package")
    done = run(bundle, "predict.py", "--help")  # help still answers
    assert done.returncode == 0 and "bundle.json is missing" in out(done)


def test_predict_py_help_of_a_classifier_lists_its_labels_and_no_lm_option(classifier):
    done = run(classifier, "predict.py", "--help")
    assert done.returncode == 0, err(done)
    text = " ".join(out(done).split())  # argparse wraps lines
    assert "text-classification" in text and "Labels: negative, positive." in text
    assert "texts to classify" in text and "--file" in text and "- reads one text per line from stdin" in text
    assert "--tokens" not in text and "model.onnx or model.ort" in text and "5 bad input" in text
    usage = run(classifier, "predict.py", "--tokens", "5", "a film")
    assert usage.returncode == 2 and "--tokens" in err(usage)


def test_predict_py_of_a_causal_lm_offers_tokens_and_continues_stdin(lm):
    text = " ".join(out(run(lm, "predict.py", "--help")).split())
    assert "text-generation" in text and "--tokens" in text and "Labels" not in text
    smoke = json.loads((lm / BUNDLE_FILE).read_text())["smoke"]
    done = run(lm, "predict.py", "--json", "--tokens", len(smoke["token_ids"]), "-", stdin=smoke["texts"][0] + "\n")
    assert done.returncode == 0, err(done)
    assert json.loads(out(done))[0]["token_ids"] == smoke["token_ids"]
    bad = run(lm, "predict.py", "--tokens", "0", "a")
    assert bad.returncode == 2 and "not a positive whole number" in err(bad)


def test_generate_py_reads_stdin_refuses_an_empty_prompt_and_describes_its_bundle(lm, tmp_path):
    smoke = json.loads((lm / BUNDLE_FILE).read_text())["smoke"]
    args = ["--tokens", len(smoke["token_ids"]), "--threads", "1"]
    from_stdin = run(lm, "generate.py", *args, "-", stdin=smoke["texts"][0] + "\n")
    from_args = run(lm, "generate.py", *args, smoke["texts"][0])
    assert from_stdin.returncode == 0, err(from_stdin)
    assert out(from_stdin) == out(from_args) and out(from_stdin).startswith(smoke["texts"][0])
    assert_refused(run(lm, "generate.py", "-", stdin="\n\n"), 5, "the prompt is empty")
    assert_refused(run(lm, "generate.py"), 2, "no prompt given")
    assert_refused(run(lm, "generate.py", "--model", "model.ort", "a"), 3, "model.ort not found", "model.onnx")
    text = " ".join(out(run(lm, "generate.py", "--help")).split())
    assert "text-generation" in text and "--temperature" in text and "Stops at token" in text
    bad = run(lm, "generate.py", "--top-p", "1.5", "a")
    assert bad.returncode == 2 and "--top-p" in err(bad)


def test_generate_py_refuses_a_classifier_bundle(classifier, tmp_path):
    bundle = shutil.copytree(classifier, tmp_path / "b")
    from toolchain.package import GENERATE

    shutil.copy2(GENERATE, bundle / "generate.py")  # as if a classifier bundle carried one
    assert_refused(run(bundle, "generate.py", "a film"), 2, "text-classification", "use predict.py")


@pytest.fixture(scope="module")
def pair_classifier(tiny, tmp_path_factory):
    """A tiny BERT fine-tuned on (premise, hypothesis) pairs, exported and packaged."""
    from toolchain.export import ExportConfig, export
    from toolchain.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("pairs")
    rows = [f"the film is {'good' if i % 2 else 'bad'} {i},it is {'fine' if i % 3 else 'dull'},"
            f"{'positive' if i % 2 else 'negative'}" for i in range(48)]
    (root / "pairs.csv").write_text("premise,hypothesis,verdict\n" + "\n".join(rows) + "\n")
    cfg = FinetuneConfig(data=str(root / "pairs.csv"), text_column="premise", pair_column="hypothesis",
                         label_column="verdict", epochs=1, min_steps=0, batch_size=16, max_length=24)
    model = finetune(tiny("bert"), cfg, root / "model")
    onnx = export(model.path, ExportConfig(), root / "onnx")
    return package(onnx.path, PackageConfig(mobile_check=False, ort_format=False), root / "bundle").path


def test_a_sentence_pair_bundle_classifies_pairs_and_says_how_to_give_them(pair_classifier):
    info = json.loads((pair_classifier / BUNDLE_FILE).read_text())
    assert info["text_pair"] == ["premise", "hypothesis"]
    assert len(info["smoke"]["pairs"]) == len(info["smoke"]["texts"])  # the smoke test runs pairs too
    assert run(pair_classifier, "predict.py", "--smoke").returncode == 0
    helped = out(run(pair_classifier, "predict.py", "--help"))
    assert "pair of texts (premise, hypothesis)" in " ".join(helped.split())
    assert "predict.py --file pairs.tsv" in (pair_classifier / "README.md").read_text()

    direct = run(pair_classifier, "predict.py", "--json", "a good film", "it is fine", "a bad film", "it is dull")
    assert direct.returncode == 0, err(direct)
    rows = json.loads(out(direct))
    assert [(r["text"], r["pair"]) for r in rows] == [("a good film", "it is fine"), ("a bad film", "it is dull")]
    lines = run(pair_classifier, "predict.py", "--json", "-", stdin="a good film\tit is fine\na bad film\tit is dull\n")
    assert json.loads(out(lines)) == rows
    # both texts reach the model as BERT reads a pair (second segment typed 1), and a text alone is refused
    p = Predictor(pair_classifier)
    feeds = p.encode(["a good film"], ["it is fine"])
    assert feeds["token_type_ids"].max() == 1 and (feeds["input_ids"] == p.tokenizer.token_to_id("[SEP]")).sum() == 2
    with pytest.raises(BundleError, match="pairs of texts"):
        p.classify(["a good film"])


@pytest.mark.parametrize("args, stdin, code, words", [
    (["a good film", "it is fine", "a bad film"], None, 2, ["3 text(s)", "two at a time"]),
    (["-"], "a good film\n", 5, ["line 1 is not a pair", "premise<TAB>hypothesis"]),
    (["-"], "a good film\t \n", 5, ["line 1 is not a pair"]),
])
def test_a_sentence_pair_bundle_refuses_a_text_without_its_pair(pair_classifier, args, stdin, code, words):
    assert_refused(run(pair_classifier, "predict.py", *args, stdin=stdin), code, *words)
