import numpy as np
import pytest
import torch

from toolchain import finetune as finetune_module
from toolchain.artifact import Artifact
from toolchain.config import config_from_dict
from toolchain.errors import RecipeError
from toolchain.finetune import FinetuneConfig, finetune


def _dataset(tmp_path, n=80):
    words = {"positive": "good great brilliant fun", "negative": "bad awful boring dull"}
    rows = [f"the film was {words[lab].split()[i % 4]} and {words[lab].split()[(i + 1) % 4]},{lab}"
            for i in range(n) for lab in [("positive", "negative")[i % 2]]]
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def _loss(folder, data_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from toolchain.data import load_classification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    split = load_classification(str(data_path)).split("train")
    labels = torch.tensor([model.config.label2id[n] for n in np.array(["negative", "positive"])[split.labels]])
    enc = tok(split.texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(**enc).logits, labels).item()


def test_finetune_lowers_the_loss_and_records_metrics(tiny, tmp_path):
    data = _dataset(tmp_path)
    before = _loss(tiny("bert"), data)
    cfg = FinetuneConfig(data=str(data), epochs=6, learning_rate=5e-3, batch_size=8, max_length=16)
    art = finetune(tiny("bert"), cfg, tmp_path / "out")
    assert _loss(art.path, data) < before - 0.1  # best checkpoint by validation accuracy, not the last
    assert art.manifest.lineage[-1].stage == "finetune"
    assert {"evaluate/reviews.csv/validation", "evaluate/reviews.csv/test"} <= set(art.manifest.results)
    assert art.verify() == []
    assert not list(tmp_path.glob(".out.checkpoints*")), "checkpoints are removed once the artifact is written"


def test_finetune_resumes_from_its_checkpoints_after_a_crash(tiny, tmp_path, monkeypatch):
    data = _dataset(tmp_path, n=40)
    cfg = FinetuneConfig(data=str(data), epochs=2, batch_size=16, max_length=16)
    real = finetune_module.write_artifact

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(finetune_module, "write_artifact", crash)
    with pytest.raises(OSError):
        finetune(tiny("bert"), cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.glob(".out.checkpoints/checkpoint-*"))
    monkeypatch.setattr(finetune_module, "write_artifact", real)
    art = finetune(tiny("bert"), cfg, tmp_path / "out")
    assert art.manifest.lineage[-1].metrics["resumed"] is True


@pytest.mark.parametrize("edit", ["same labels", "new labels", "config"])
def test_finetune_starts_fresh_when_data_or_config_changed_since_the_crash(tiny, tmp_path, monkeypatch, capsys, edit):
    # Keyed on names only, an edited CSV with the same labels silently resumed training done on the old rows,
    # and one with other labels crashed every re-run (size mismatch) until the hidden checkpoints were deleted.
    data = _dataset(tmp_path, n=40)
    cfg = FinetuneConfig(data=str(data), epochs=2, batch_size=16, max_length=16)
    real = finetune_module.write_artifact

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(finetune_module, "write_artifact", crash)
    with pytest.raises(OSError):
        finetune(tiny("bert"), cfg, tmp_path / "out")
    assert list(tmp_path.glob(".out.checkpoints/checkpoint-*"))
    monkeypatch.setattr(finetune_module, "write_artifact", real)
    if edit == "same labels":
        data.write_text(data.read_text().replace("the film", "this movie"))
    elif edit == "new labels":
        data.write_text(data.read_text() + "".join(f"so so {i},neutral\n" for i in range(10)))
    else:
        cfg = FinetuneConfig(data=str(data), epochs=2, batch_size=16, max_length=16, learning_rate=1e-4)
    capsys.readouterr()
    art = finetune(tiny("bert"), cfg, tmp_path / "out")
    metrics = art.manifest.lineage[-1].metrics
    assert metrics["resumed"] is False
    changed = "config" if edit == "config" else "data"
    assert f"the {changed} changed" in metrics["started_fresh_because"]
    assert f"starting fresh: the {changed} changed" in capsys.readouterr().err
    assert not list(tmp_path.glob(".out.checkpoints*"))


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"max_length": 2}, {"learning_rate": -1.0}, {"epoch": 3},
                                 {"max_train_samples": 0}, {"max_eval_samples": -2}])
def test_bad_finetune_config_is_refused(bad):
    with pytest.raises(RecipeError):
        config_from_dict(FinetuneConfig, bad)


def test_label_mapping_is_saved_in_the_model_config(tiny, tmp_path):
    data = _dataset(tmp_path, n=20)
    art = finetune(tiny("bert"), FinetuneConfig(data=str(data), epochs=1, batch_size=16, max_length=16),
                   tmp_path / "out")
    cfg = Artifact.load(art.path)
    import json

    config = json.loads((cfg.path / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}


@pytest.mark.parametrize("flag, expected", [(None, True), ("--no-group-by-length", False)])
def test_group_by_length_is_on_by_default_and_reaches_the_trainer(tiny, tmp_path, monkeypatch, flag, expected):
    from click.testing import CliRunner

    from toolchain.cli import main

    seen = []
    real = finetune_module._trainer

    def spy(*args):
        trainer, sched = real(*args)
        seen.append(trainer.args.group_by_length)
        return trainer, sched

    monkeypatch.setattr(finetune_module, "_trainer", spy)
    args = ["finetune", str(tiny("bert")), str(tmp_path / "out"), "--data", str(_dataset(tmp_path, n=20)),
            "--epochs", "1", "--batch-size", "16", "--max-length", "16", *([flag] if flag else [])]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert seen == [expected]


def test_the_same_seed_gives_the_same_model(tiny, tmp_path):
    """The new head's init is seeded too (the Trainer seeds only after the model is built)."""
    from safetensors.torch import load_file

    data = tmp_path / "three.csv"  # three labels: the tiny model's 2-label head is replaced by a new one
    data.write_text("text,label\n" + "".join(f"review {i} {w},{w}\n" for i in range(10) for w in ("good", "bad", "meh")))

    def weights(seed, name):
        cfg = FinetuneConfig(data=str(data), epochs=1, batch_size=16, max_length=16, seed=seed)
        return load_file(finetune(tiny("bert"), cfg, tmp_path / name).path / "model.safetensors")

    a, b, c = weights(7, "a"), weights(7, "b"), weights(8, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


def test_an_unset_max_length_is_fitted_to_the_training_texts_and_inherited(tiny, tmp_path):
    """No max_length given and a model with no lineage: the teacher trains at the length that keeps its texts
    whole (not a fixed 64 or 128 that cuts a user's long texts), and records it, so every later stage uses it."""
    data = _dataset(tmp_path, n=20)
    art = finetune(tiny("bert"), FinetuneConfig(data=str(data), epochs=1, batch_size=16), tmp_path / "out")
    metrics = art.manifest.lineage[-1].metrics
    assert art.max_length == metrics["max_length"] == 16 and "fitted to the 16 training texts" in metrics["max_length_why"]
    assert art.manifest.lineage[-1].config["max_length"] is None  # the record keeps what was asked
    again = finetune(art.path, FinetuneConfig(data=str(data), epochs=1, batch_size=16), tmp_path / "again")
    assert again.max_length == 16 and "trained at" in again.manifest.lineage[-1].metrics["max_length_why"]
