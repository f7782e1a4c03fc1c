import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import tiny_models
from toolchain.artifact import Artifact
from toolchain.cli import main
from toolchain.config import config_from_dict
from toolchain.data import load_classification
from toolchain.errors import RecipeError
from toolchain.evaluate import EvaluateConfig, evaluate
from toolchain.export import ExportConfig, export
from toolchain.modeling import load_model, resolve_model
from toolchain.optimize import OptimizeConfig, optimize
from toolchain.package import PackageConfig, package
from toolchain.prune import PruneConfig, prune
from toolchain.quantize import QuantizeConfig, quantize
from toolchain.stages import STAGES
from toolchain.trim_vocab import TrimVocabConfig, _held_out, trim_vocab

TASK = {"bert": "text-classification", "distilbert": "text-classification", "roberta": "text-classification",
        "gpt2": "text-generation", "llama": "text-generation"}
# Words the training text never uses: every one of them must still tokenize, as pieces of kept tokens.
UNSEEN = ["brilliant", "charming", "director", "quite"]


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """A labelled CSV whose rows draw on part of tiny_models.WORDS, so held-out rows use words training never saw."""
    rng = random.Random(0)
    words = [w for w in tiny_models.WORDS if w not in UNSEEN]
    rows = [" ".join(rng.sample(words, 6)) + f",{'positive' if i % 2 else 'negative'}" for i in range(60)]
    path = tmp_path_factory.mktemp("trim-data") / "reviews.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory):
    rng = random.Random(1)
    words = [w for w in tiny_models.WORDS if w not in UNSEEN]
    lines = [" ".join(rng.sample(words, 8)) for _ in range(80)] + [" ".join(UNSEEN)] * 3  # the held-out tenth
    path = tmp_path_factory.mktemp("trim-text") / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trimmed(tiny, reviews, lm_text, tmp_path_factory):
    root = tmp_path_factory.mktemp("trimmed")
    made = {}

    def get(name, **kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in made:
            data = str(lm_text if TASK[name] == "text-generation" else reviews)
            made[key] = trim_vocab(str(tiny(name)), TrimVocabConfig(data=data, **kw), root / f"{name}-{len(made)}")
        return made[key]

    return get


def _tokens(folder):
    return AutoTokenizer.from_pretrained(folder)


def _kept_ids(old_tok, new_tok) -> list[int]:
    """The original id of each trimmed id, in order."""
    return old_tok.convert_tokens_to_ids(new_tok.convert_ids_to_tokens(list(range(len(new_tok)))))


@pytest.mark.parametrize("name", ["bert", "distilbert", "roberta", "gpt2", "llama"])
def test_trim_vocab_shrinks_the_embedding_and_keeps_outputs_on_training_text(tiny, trimmed, reviews, lm_text, name):
    art = trimmed(name)
    m = art.manifest.lineage[-1].metrics
    assert art.manifest.lineage[-1].stage == "trim-vocab" and art.format == "torch"
    assert m["vocab_after"] < m["vocab_before"] and m["params_after"] < m["params_before"]
    assert m["train_tokenization"]["identical"] and m["parity"]["max_abs_diff"] <= m["parity"]["atol"]
    # from_pretrained alone (no toolchain) reads it, with the embedding (and a tied or untied head) at the new size.
    cls = AutoModelForCausalLM if TASK[name] == "text-generation" else AutoModelForSequenceClassification
    model = cls.from_pretrained(art.path).eval()
    assert model.get_input_embeddings().weight.shape[0] == m["vocab_after"] == model.config.vocab_size
    if model.get_output_embeddings() is not None:
        assert model.get_output_embeddings().weight.shape[0] == m["vocab_after"]
    old_tok, new_tok = _tokens(tiny(name)), _tokens(art.path)
    assert len(new_tok) == m["vocab_after"]
    original = cls.from_pretrained(tiny(name)).eval()
    if TASK[name] == "text-generation":
        text = lm_text.read_text().splitlines()[0]  # the first line lies in the training nine tenths
    else:
        text = load_classification(str(reviews)).split("train").texts[0]
    with torch.inference_mode():
        a = original(**old_tok(text, return_tensors="pt")).logits
        b = model(**new_tok(text, return_tensors="pt")).logits
    if TASK[name] == "text-generation":  # the head lost the dropped tokens' rows: compare the kept ones
        a = a[..., _kept_ids(old_tok, new_tok)]
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["bert", "roberta", "gpt2"])
def test_unseen_words_tokenize_into_kept_pieces_that_name_the_same_strings(tiny, trimmed, name):
    art = trimmed(name)
    old_tok, new_tok = _tokens(tiny(name)), _tokens(art.path)
    keep = _kept_ids(old_tok, new_tok)
    h = _held_out(old_tok, new_tok, keep, [f"the {w} film" for w in UNSEEN] + ["the film is good"])
    if name == "bert":  # each unseen word is one WordPiece token, and "the film is good" is as before
        assert h["texts_changed_share"] == 0.8 and h["tokens_dropped_share"] == pytest.approx(4 / 16)
    assert h["tokens_dropped_share"] > 0 and h["length_ratio"] > 1 and h["unk_share_after"] == 0
    kept = set(keep)
    for word in UNSEEN:
        before = old_tok.tokenize(" " + word)
        after = new_tok.tokenize(" " + word)
        if all(t in kept for t in old_tok.convert_tokens_to_ids(before)):
            assert after == before  # nothing of it was dropped: the same pieces
        else:
            assert len(after) > len(before)  # split further into kept pieces, never [UNK]
        assert new_tok.unk_token not in after
        assert new_tok.convert_tokens_to_string(after).strip() == word
        assert new_tok.convert_ids_to_tokens(new_tok.convert_tokens_to_ids(after)) == after
    if name != "bert":  # byte-level BPE: any text at all round-trips, all 256 bytes were kept
        text = "Zürich, 東京 and 🙂 — quite brilliant"
        assert new_tok.decode(new_tok(text, add_special_tokens=False)["input_ids"]) == text


def test_trim_vocab_records_what_it_kept_and_the_score_before_and_after(trimmed):
    m = trimmed("bert").manifest.lineage[-1].metrics
    k = m["kept"]
    assert k["special"] == 5 and k["coverage"] >= 26 * 2 and k["used_in_training_text"] == k["used_total"]
    assert k["special"] + k["coverage"] <= m["vocab_after"] <= k["special"] + k["coverage"] + k["used_total"]
    for key in ("score_before", "score_after"):
        assert 0 <= m[key]["accuracy"] <= 1 and m[key]["split"] == "validation"
    lm = trimmed("gpt2").manifest.lineage[-1].metrics
    assert lm["held_out"]["tokens_dropped_share"] > 0  # the held-out tenth is the unseen words
    assert lm["score_before"]["bits_per_char"] > 0 and lm["score_after"]["bits_per_char"] > 0
    assert lm["kept"]["coverage"] == 256


def test_max_vocab_keeps_the_most_frequent_tokens_within_the_cap(tiny, trimmed):
    full = trimmed("roberta").manifest.lineage[-1].metrics
    cap = full["vocab_after"] - 20
    m = trimmed("roberta", max_vocab=cap).manifest.lineage[-1].metrics
    assert m["vocab_after"] <= cap and m["kept"]["dropped_used_by_cap"] > 0
    assert m["held_out"]["tokens_dropped_share"] >= full["held_out"]["tokens_dropped_share"]


def test_max_vocab_below_what_any_text_needs_is_a_config_error(tiny, reviews, tmp_path):
    with pytest.raises(RecipeError, match="max_vocab 10 is below the"):
        trim_vocab(str(tiny("bert")), TrimVocabConfig(data=str(reviews), max_vocab=10), tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_trim_vocab_config_validates_and_is_a_recipe_stage():
    assert STAGES["trim-vocab"] == (TrimVocabConfig, trim_vocab)
    with pytest.raises(RecipeError, match="max_vocab"):
        config_from_dict(TrimVocabConfig, {"max_vocab": 1})
    with pytest.raises(RecipeError, match="unknown key"):
        config_from_dict(TrimVocabConfig, {"vocab": 100})


def test_trimmed_roberta_round_trips_through_every_stage(trimmed, reviews, tmp_path):
    """trim -> prune -> export -> optimize -> quantize -> evaluate -> package, each with its own checks."""
    art = trimmed("roberta")
    pruned = prune(str(art.path), PruneConfig(heads=0.25, ffn=0.5), tmp_path / "pruned")
    onnx = export(str(pruned.path), ExportConfig(), tmp_path / "onnx")
    assert onnx.manifest.lineage[-1].metrics["parity"]["max_abs_diff"] < 1e-4
    fused = optimize(str(onnx.path), OptimizeConfig(), tmp_path / "fused")
    int8 = quantize(str(fused.path), QuantizeConfig(mode="dynamic"), tmp_path / "int8")
    stages = [r.stage for r in int8.manifest.lineage]
    assert stages == ["trim-vocab", "prune", "export", "optimize", "quantize"]
    result = evaluate(int8.path, EvaluateConfig(data=str(reviews), batch_size=1))
    assert 0 <= result["accuracy"] <= 1
    bundle = package(str(int8.path), PackageConfig(mobile_check=False), tmp_path / "bundle")
    assert (bundle.path / "bundle.json").is_file()
    vocab = art.manifest.lineage[-1].metrics["vocab_after"]
    import onnx as onnx_lib

    shapes = [list(t.dims) for t in onnx_lib.load(str(onnx.path / "model.onnx")).graph.initializer]
    assert [vocab, 32] in shapes  # the exported embedding has the trimmed row count


def test_trim_after_pruning_reloads_and_a_trimmed_gpt2_exports(tiny, trimmed, reviews, tmp_path):
    pruned = prune(str(tiny("bert")), PruneConfig(heads=0.25, ffn=0.5), tmp_path / "pruned")
    art = trim_vocab(str(pruned.path), TrimVocabConfig(data=str(reviews)), tmp_path / "trimmed")
    assert [r.stage for r in art.manifest.lineage] == ["prune", "trim-vocab"]
    model = load_model(resolve_model(str(art.path)), "text-classification")  # the pruned shapes and the new vocab
    assert model.config.vocab_size == art.manifest.lineage[-1].metrics["vocab_after"]
    onnx = export(str(trimmed("gpt2").path), ExportConfig(), tmp_path / "gpt2-onnx")
    assert onnx.manifest.lineage[-1].metrics["parity"]["max_abs_diff"] < 1e-3


def test_cli_trim_vocab_prints_what_it_kept(tiny, reviews, tmp_path):
    out = tmp_path / "t"
    result = CliRunner().invoke(main, ["trim-vocab", str(tiny("distilbert")), str(out), "--data", str(reviews)])
    assert result.exit_code == 0, result.output
    assert "WordPiece vocabulary" in result.output and "held-out text" in result.output
    assert "tokenize id for id as before" in result.output and "accuracy on validation" in result.output
    assert Artifact.load(out, verify=True).manifest.lineage[-1].stage == "trim-vocab"
    result = CliRunner().invoke(main, ["trim-vocab", str(tiny("bert")), str(tmp_path / "u"), "--data", str(reviews),
                                       "--max-vocab", "3"])
    assert result.exit_code == 8 and "fix: set max_vocab to at least" in result.output
    data = json.loads(CliRunner().invoke(main, ["info", str(out), "--json"]).output)
    assert data["lineage"][-1]["metrics"]["vocab_after"] < data["lineage"][-1]["metrics"]["vocab_before"]


def test_a_recipe_trims_with_its_own_data_then_exports_and_resumes(tiny, reviews, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""\
model: {tiny("bert")}
data: {reviews}
steps:
  - name: trimmed
    stage: trim-vocab
    config: {{max_length: 32}}
  - name: onnx
    stage: export
""")
    args = ["run", str(recipe), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    art = Artifact.load(tmp_path / "run" / "onnx")
    assert [r.stage for r in art.manifest.lineage] == ["trim-vocab", "export"]
    assert art.manifest.lineage[0].config["data"] == str(reviews)  # the recipe's data reached the stage
    again = CliRunner().invoke(main, args + ["--json"], catch_exceptions=False)
    assert [s["action"] for s in json.loads(again.stdout)["steps"]] == ["skipped", "skipped"]


def test_a_unigram_tokenizer_is_unsupported_with_what_is():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from toolchain.errors import Unsupported
    from toolchain.trim_vocab import _tokenizer_json

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0)))
    with pytest.raises(Unsupported, match="WordPiece and BPE tokenizers; this one is Unigram"):
        _tokenizer_json(tok)


def test_recover_distils_the_trimmed_classifier_from_the_untrimmed_one_in_its_own_tokens(tiny, reviews, tmp_path):
    cfg = TrimVocabConfig(data=str(reviews), recover=True, recover_min_steps=0)
    art = trim_vocab(str(tiny("bert")), cfg, tmp_path / "out")
    record = art.manifest.lineage[-1]  # one trim-vocab record with the recovery inside: a recipe resumes this step
    assert [r.stage for r in art.manifest.lineage] == ["trim-vocab"] and record.config["recover"] is True
    rec = record.metrics["recovery"]
    assert rec["config"]["student"] == str(tmp_path / ".out.before-recovery") and len(rec["before_recovery"]) == 64
    assert rec["metrics"]["train"]["steps"] > 0 and 0 <= rec["metrics"]["validation"]["accuracy"] <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the trimmed model before recovery was scratch
    # The student trained and was saved in the trimmed vocabulary, with the trimmed tokenizer beside it.
    model = AutoModelForSequenceClassification.from_pretrained(art.path)
    assert model.config.vocab_size == record.metrics["vocab_after"] == len(_tokens(art.path)) < len(_tokens(tiny("bert")))
    assert art.verify() == []


def test_interrupted_trim_recovery_resumes_from_the_hidden_trimmed_model(tiny, reviews, tmp_path, monkeypatch):
    import toolchain.distill
    import toolchain.trim_vocab as trim_module

    cfg = TrimVocabConfig(data=str(reviews), recover=True, recover_min_steps=0)
    real_distill = toolchain.distill.distill

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(toolchain.distill, "distill", killed)
    with pytest.raises(KeyboardInterrupt):
        trim_vocab(str(tiny("bert")), cfg, tmp_path / "out")
    scratch = tmp_path / ".out.before-recovery"
    assert not (tmp_path / "out").exists() and Artifact.load(scratch).verify() == []
    trimmed_hash = Artifact.load(scratch).content_hash
    monkeypatch.setattr(toolchain.distill, "distill", real_distill)
    monkeypatch.setattr(trim_module, "_trim", lambda *a, **k: pytest.fail("trimmed again instead of resuming"))
    art = trim_vocab(str(tiny("bert")), cfg, tmp_path / "out")
    assert art.manifest.lineage[-1].metrics["recovery"]["before_recovery"] == trimmed_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_recover_is_refused_for_a_causal_lm_with_the_reason(tiny, lm_text, tmp_path):
    from toolchain.errors import Unsupported

    with pytest.raises(Unsupported, match="token by token"):
        trim_vocab(str(tiny("gpt2")), TrimVocabConfig(data=str(lm_text), recover=True), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_distilling_into_a_trimmed_student_with_feature_losses_is_refused(tiny, trimmed, reviews, tmp_path):
    from toolchain.distill import DistillConfig, distill
    from toolchain.errors import BadModel

    cfg = DistillConfig(student=str(trimmed("bert").path), data=str(reviews), hidden_weight=1.0)
    with pytest.raises(BadModel, match="token by token"):
        distill(str(tiny("bert")), cfg, tmp_path / "s", progress=False)


def test_max_vocab_left_free_by_the_training_text_is_filled_with_the_originally_most_frequent_tokens(tiny, trimmed):
    plain = trimmed("bert").manifest.lineage[-1].metrics
    budget = plain["vocab_after"] + 3  # the tiny vocabulary has a few words the training text never uses
    art = trimmed("bert", max_vocab=budget)
    m = art.manifest.lineage[-1].metrics
    assert m["vocab_after"] == budget and m["kept"]["filled_by_original_rank"] == 3
    old_tok, new_tok = _tokens(tiny("bert")), _tokens(art.path)
    extra = sorted(set(_kept_ids(old_tok, new_tok)) - set(_kept_ids(old_tok, _tokens(trimmed("bert").path))))
    free = sorted(set(range(len(old_tok))) - set(_kept_ids(old_tok, _tokens(trimmed("bert").path))))
    assert extra == [i for i in free if not old_tok.convert_ids_to_tokens(i).startswith("[unused")][:3]
    unfilled = trimmed("bert", max_vocab=budget, fill=False).manifest.lineage[-1].metrics
    assert unfilled["vocab_after"] == plain["vocab_after"] and unfilled["kept"]["filled_by_original_rank"] == 0


def test_alias_keeps_every_texts_pieces_and_survives_export_and_the_bundle(tiny, trimmed, reviews, tmp_path):
    """--alias: dropped tokens stay in tokenizer.json, each pointing at its nearest kept row, so held-out text splits
    as before; the later stages' save_pretrained (one string per id) must not lose them: export, fuse, int8 and the
    bundle carry the file byte for byte, without a vocab.txt that could not hold it."""
    from toolchain.modeling import aliased_tokenizer_json

    art = trimmed("bert", alias=True)
    m = art.manifest.lineage[-1].metrics
    assert m["aliased"] == m["vocab_before"] - m["vocab_after"] > 0
    assert aliased_tokenizer_json(art.path / "tokenizer.json") and not (art.path / "vocab.txt").exists()
    old_tok, new_tok = _tokens(tiny("bert")), _tokens(art.path)
    texts = [f"the {w} film" for w in UNSEEN]
    assert [new_tok.tokenize(t) for t in texts] == [old_tok.tokenize(t) for t in texts]  # the same pieces
    assert m["held_out"]["texts_changed_share"] == 0 and m["held_out"]["tokens_dropped_share"] > 0
    ids = new_tok(texts[0])["input_ids"]
    assert max(ids) < m["vocab_after"]  # every id is a row of the trimmed embedding
    onnx_art = export(str(art.path), ExportConfig(), tmp_path / "onnx")
    fused = optimize(str(onnx_art.path), OptimizeConfig(), tmp_path / "fused")
    int8 = quantize(str(fused.path), QuantizeConfig(mode="dynamic"), tmp_path / "int8")
    bundle = package(str(int8.path), PackageConfig(max_length=16), tmp_path / "bundle")
    for folder in (onnx_art.path, fused.path, int8.path, bundle.path):
        assert (folder / "tokenizer.json").read_bytes() == (art.path / "tokenizer.json").read_bytes(), folder
        assert not (folder / "vocab.txt").exists()


def test_alias_keeps_a_byte_level_bpe_classifiers_pieces(tiny, trimmed):
    art = trimmed("roberta", alias=True)
    m = art.manifest.lineage[-1].metrics
    assert m["aliased"] > 0 and m["held_out"]["texts_changed_share"] == 0
    old_tok, new_tok = _tokens(tiny("roberta")), _tokens(art.path)
    texts = [f"the {w} film" for w in UNSEEN] + ["Zürich, quite brilliant"]
    # BPE names a token by its id, and an aliased id has several names: compare ids, each old token's string
    # looked up in the new vocabulary (the same merges, so the same pieces)
    string_of = {i: t for t, i in old_tok.backend_tokenizer.get_vocab().items()}
    new_vocab = new_tok.backend_tokenizer.get_vocab()
    for t in texts:
        old_ids = old_tok(t, add_special_tokens=False)["input_ids"]
        assert new_tok(t, add_special_tokens=False)["input_ids"] == [new_vocab[string_of[i]] for i in old_ids]
    assert max(max(new_tok(t)["input_ids"]) for t in texts) < m["vocab_after"]
    assert not any((art.path / f).exists() for f in ("vocab.json", "merges.txt"))


def test_alias_is_refused_for_a_causal_lm(tiny, lm_text, tmp_path):
    from toolchain.errors import Unsupported

    with pytest.raises(Unsupported, match="--alias"):
        trim_vocab(str(tiny("gpt2")), TrimVocabConfig(data=str(lm_text), alias=True), tmp_path / "out")
