import math

import numpy as np
import pytest

from toolchain.errors import DataError
from toolchain.evaluate import EvaluateConfig, Runner, evaluate, predict, strided_nll
from toolchain.metrics import classification_metrics
from toolchain.data import load_classification


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 1, 1, 1, 0])
    m = classification_metrics(labels, pred, 2)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    # F1: class 0 = 2*1/(2+1+1) = 0.5, class 1 = 2*2/(4+1+1) = 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_torch_and_onnx_give_the_same_predictions(tiny, tiny_onnx):
    cfg = EvaluateConfig(max_eval_samples=40, batch_size=8)
    torch_logits = predict(Runner(tiny("bert")), load_classification("rotten-tomatoes").split("test").subset(40), cfg)
    onnx_logits = predict(Runner(tiny_onnx("bert").path), load_classification("rotten-tomatoes").split("test")
                          .subset(40), cfg)
    assert np.array_equal(torch_logits.argmax(-1), onnx_logits.argmax(-1))
    assert np.abs(torch_logits - onnx_logits).max() < 1e-4


def test_evaluate_records_the_result_and_agreement_in_the_manifest(tiny, tiny_onnx, tmp_path, monkeypatch):
    # The tiny model's labels are negative/positive: evaluate it on a CSV with those names.
    rows = "\n".join(f"the film is {'good' if i % 2 else 'bad'} {i},{'positive' if i % 2 else 'negative'}"
                     for i in range(40))
    (tmp_path / "d.csv").write_text("text,label\n" + rows + "\n")
    art = tiny_onnx("bert")
    result = evaluate(art.path, EvaluateConfig(data=str(tmp_path / "d.csv")), reference=tiny("bert"))
    assert result["agreement"] == 1.0 and result["n"] == 4  # 10% of each class, rounded up
    from toolchain.artifact import Artifact

    stored = Artifact.load(art.path).manifest.results["evaluate/d.csv/test"]
    assert stored["accuracy"] == result["accuracy"] and stored["format"] == "onnx"
    # Per-example correctness and the 95% interval, for the report's paired tests and error bars.
    from toolchain.metrics import unpack_correct, wilson

    correct = unpack_correct(stored["correct"], stored["n"])
    assert correct.mean() == pytest.approx(result["accuracy"])
    assert stored["accuracy_ci95"] == pytest.approx(list(wilson(int(correct.sum()), len(correct))))


def test_label_the_model_never_saw_is_an_error(tiny):
    # rotten-tomatoes labels are rotten/fresh; the tiny model knows negative/positive/neutral.
    import tiny_models

    model = tiny_models.bert_classifier(tiny("bert").parent / "bert3", num_labels=3)
    with pytest.raises(DataError, match="not one the model knows"):
        evaluate(model, EvaluateConfig(max_eval_samples=8))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_perplexity_strided_equals_the_models_own_loss(tiny, name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny(name)).eval()
    tok = AutoTokenizer.from_pretrained(tiny(name))
    ids = np.array(tok("the film is a charming and moving story , one of the best movies of the year "
                       "and the actors are great")["input_ids"], dtype=np.int64)
    runner = Runner(tiny(name))
    # One window covering the text: must equal Hugging Face's mean cross-entropy.
    nll, count, _ = strided_nll(runner.logits, ids, window=len(ids), stride=len(ids))
    with torch.no_grad():
        loss = model(torch.from_numpy(ids)[None], labels=torch.from_numpy(ids)[None]).loss.item()
    assert count == len(ids) - 1
    assert nll / count == pytest.approx(loss, rel=1e-4)
    # Strided windows score every token exactly once too.
    _, count2, top1 = strided_nll(runner.logits, ids, window=8, stride=4)
    assert count2 == len(ids) - 1 and len(top1) == count2


def test_perplexity_of_onnx_with_past_matches_torch(tiny, tiny_onnx):
    cfg = EvaluateConfig(data="hamlet", max_eval_tokens=200, window=64, stride=32)
    torch_r = evaluate(tiny("gpt2"), cfg)
    onnx_r = evaluate(tiny_onnx("gpt2-past").path, cfg, reference=tiny("gpt2"))
    assert onnx_r["perplexity"] == pytest.approx(torch_r["perplexity"], rel=1e-4)
    assert onnx_r["top1_agreement"] == 1.0 and math.isfinite(onnx_r["perplexity"])
