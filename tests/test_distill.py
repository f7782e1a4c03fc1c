import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertModel

from toolchain import kd_losses, students
from toolchain.artifact import Artifact
from toolchain.config import config_from_dict
from toolchain.distill import Collator, DistillConfig, distill, prepare_data
from toolchain.errors import BadModel, DataError, RecipeError, Unsupported
from toolchain.kd_trainer import KDObjective, StudentWithProjections
from toolchain.modeling import load_model, load_tokenizer, resolve_model
from toolchain.stages import STAGES
from toolchain.teacher_cache import build as build_cache

ROOT = Path(__file__).resolve().parents[1]
WORDS = {"positive": "good great brilliant fun charming", "negative": "bad awful boring dull mess"}


def _reviews(folder: Path, labels=("positive", "negative"), n: int = 60) -> Path:
    rows = []
    for i in range(n):
        lab = labels[i % 2]
        words = WORDS.get(lab, WORDS["positive"]).split()
        rows.append(f"the film was {words[i % 5]} and {words[(i + 2) % 5]},{lab}")
    path = folder / f"reviews-{'-'.join(labels)}.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    return _reviews(tmp_path_factory.mktemp("reviews"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    import tiny_models

    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(" ".join(tiny_models.SENTENCES * 12))
    return path


@pytest.fixture(scope="module")
def sharp_teacher(tiny, reviews, tmp_path_factory):
    """The tiny classifier trained briefly on the reviews: confident, input-dependent predictions to imitate
    (a random BERT's outputs barely depend on its input)."""
    from toolchain.data import load_classification

    source = resolve_model(str(tiny("bert")))
    model, tokenizer = load_model(source, "text-classification").train(), load_tokenizer(source)
    split = load_classification(str(reviews)).split("train")
    enc = tokenizer(split.texts, padding=True, return_tensors="pt")
    labels = torch.as_tensor(split.labels)  # negative=0, positive=1: the tiny model's own label order
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        model(**enc, labels=labels).loss.backward()
        opt.step()
    folder = tmp_path_factory.mktemp("sharp") / "teacher"
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _metrics(art: Artifact) -> dict:
    return art.manifest.lineage[-1].metrics


# ------------------------------------------------------------------------------------ losses by hand


def test_soft_kl_matches_hand_computed_value():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher probabilities 0.75 / 0.25 at T=1
    at_1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_losses.soft_kl(s, t, 1.0).item() == pytest.approx(at_1, rel=1e-6)
    p = math.sqrt(3) / (1 + math.sqrt(3))  # softmax([ln 3 / 2, 0])
    at_2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))  # scaled by T^2
    assert kd_losses.soft_kl(s, t, 2.0).item() == pytest.approx(at_2, rel=1e-6)


def test_soft_kl_on_top_k_renormalizes_both_distributions():
    s = torch.tensor([[0.0, math.log(3.0), 5.0]])
    values, index = torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([[1, 0]])
    # over tokens {1, 0}: teacher 0.75 / 0.25, student 0.75 / 0.25 -> no divergence; token 2 is outside.
    assert kd_losses.soft_kl(s, values, 1.0, index).item() == pytest.approx(0.0, abs=1e-6)
    s2 = torch.tensor([[0.0, 0.0, 5.0]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_losses.soft_kl(s2, values, 1.0, index).item() == pytest.approx(expected, rel=1e-6)


def test_logit_mse_and_hard_ce_match_hand_computed_values():
    s, t = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert kd_losses.logit_mse(s, t).tolist() == pytest.approx([2.5, 4.5])
    assert kd_losses.logit_mse(s, t[:, :1], torch.tensor([[1], [0]])).tolist() == pytest.approx([4.0, 0.0])
    assert kd_losses.hard_ce(torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]), torch.tensor([0, 0])).tolist() == \
        pytest.approx([math.log(2.0), math.log(4 / 3)])


def test_boundary_weights_up_weight_examples_near_the_boundary():
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # margins 0.5 and 0
    w = kd_losses.boundary_weights(teacher, beta=1.0)  # raw 1.5 and 2.0, mean 1.75
    assert w.tolist() == pytest.approx([1.5 / 1.75, 2.0 / 1.75])
    assert kd_losses.boundary_weights(teacher, beta=0.0).tolist() == pytest.approx([1.0, 1.0])


def test_hidden_loss_mse_and_cosine_skip_padding():
    s = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])
    t = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])
    assert kd_losses.hidden_loss(s, t, mask, "mse").item() == pytest.approx(2.5)
    s2, t2 = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]), torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    assert kd_losses.hidden_loss(s2, t2, torch.tensor([[1, 1]]), "cosine").item() == pytest.approx(0.5)


def test_attention_kl_matches_hand_computed_value():
    t = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # [batch, head, query, key]
    s = torch.tensor([[[[0.25, 0.75], [1.0, 0.0]]]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # second query: identical rows
    assert kd_losses.attention_kl(s, t, torch.tensor([[1, 0]])).item() == pytest.approx(expected, rel=1e-5)
    assert kd_losses.attention_kl(s, t, torch.tensor([[1, 1]])).item() == pytest.approx(expected / 2, rel=1e-5)
    two_heads = torch.cat([s, s], dim=1)  # head counts differ: head-averaged maps are compared
    assert kd_losses.attention_kl(two_heads, t, torch.tensor([[1, 0]])).item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------ students


def test_resolve_layers_counts_are_evenly_spaced_and_indices_checked():
    assert students.resolve_layers(3, 6) == (0, 2, 4)
    assert students.resolve_layers(2, 6) == (0, 3)
    assert students.resolve_layers(None, 6) == (0, 2, 4)
    assert students.resolve_layers((1, 5), 6) == (1, 5)
    with pytest.raises(RecipeError, match="out of range"):
        students.resolve_layers((0, 6), 6)
    with pytest.raises(RecipeError, match="distinct and increasing"):
        students.resolve_layers((2, 2), 6)
    with pytest.raises(RecipeError, match="teacher has 6 layers"):
        students.resolve_layers(7, 6)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_student_from_chosen_layers_reproduces_the_teachers_weights(tiny, name):
    task = "text-classification" if name == "bert" else "text-generation"
    teacher = load_model(resolve_model(str(tiny(name))), task)
    student = students.build_student(teacher, (1,))
    prefix = students.layer_prefix(teacher)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    layer_keys = [k for k in s_state if k.startswith(prefix + ".0.")]
    assert layer_keys
    for k in layer_keys:  # student block 0 is teacher block 1
        assert torch.equal(s_state[k], t_state[k.replace(prefix + ".0.", prefix + ".1.", 1)]), k
    for k in s_state:
        if not k.startswith(prefix):
            assert torch.equal(s_state[k], t_state[k]), k
    assert student.config.num_hidden_layers == 1 and type(student) is type(teacher)


def test_narrower_student_keeps_the_leading_part_of_each_tensor(tiny):
    teacher = load_model(resolve_model(str(tiny("gpt2"))), "text-generation")
    student = students.build_student(teacher, (0,), hidden=16, ffn=32)
    assert student.config.hidden_size == 16 and student.config.num_attention_heads == 2  # head size 8 kept
    assert torch.equal(student.transformer.wte.weight, teacher.transformer.wte.weight[:, :16])
    # GPT-2 fuses q, k, v in c_attn: each part is cut on its own.
    t_qkv, s_qkv = teacher.transformer.h[0].attn.c_attn.weight, student.transformer.h[0].attn.c_attn.weight
    for part in range(3):
        assert torch.equal(s_qkv[:, part * 16:(part + 1) * 16], t_qkv[:16, part * 32:part * 32 + 16])
    assert student(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == teacher.config.vocab_size


def test_student_wider_than_teacher_is_refused_for_a_layer_copy(tiny):
    teacher = load_model(resolve_model(str(tiny("bert"))), "text-classification")
    with pytest.raises(RecipeError, match="wider than the teacher"):
        students.build_student(teacher, (0,), hidden=64)
    wide = students.build_student(teacher, (0,), hidden=64, init="random")  # a fresh model may be any width
    assert wide.config.hidden_size == 64


# ----------------------------------------------------------------------------- teacher: cached vs online


@pytest.mark.parametrize("name, top_k", [("bert", None), ("gpt2", None), ("llama", 16)])
def test_cached_and_online_teacher_give_the_same_loss_on_a_batch(tiny, reviews, text_file, tmp_path, name, top_k):
    task = "text-classification" if name == "bert" else "text-generation"
    cfg = DistillConfig(data=str(reviews if name == "bert" else text_file), max_length=16, cache_top_k=top_k,
                        boundary_weight=1.0)
    source = resolve_model(str(tiny(name)))
    teacher, tokenizer = load_model(source, task), load_tokenizer(source)
    data = prepare_data(cfg, tokenizer, teacher.config, task)
    student = StudentWithProjections(students.build_student(teacher, (0,))).train()
    examples = data.train[:6]

    from toolchain.distill import teacher_rows

    cache = build_cache(tmp_path / "cache", lambda ex: teacher_rows(teacher, Collator(0, task), ex, top_k, "cpu"),
                        examples, batch_size=4, progress=False)
    torch.manual_seed(0)  # the same dropout masks in both calls
    online, _, _ = KDObjective(cfg, task, teacher)(student, Collator(tokenizer.pad_token_id, task)(examples))
    torch.manual_seed(0)
    batch = Collator(tokenizer.pad_token_id, task, cache)(examples)
    cached, parts, _ = KDObjective(cfg, task, None)(student, batch)
    assert "teacher_logits" in batch and len(cache) == len(examples)
    assert parts["kd"] > 0
    assert cached.item() == pytest.approx(online.item(), rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------- whole stage


def test_distill_classifier_writes_a_checked_artifact_and_reuses_the_cache(tiny, reviews, tmp_path):
    cfg = DistillConfig(student_layers=1, data=str(reviews), max_length=16, epochs=1, batch_size=8, grad_accum=2,
                        cache_dir=str(tmp_path / "cache"), min_steps=0)  # one epoch as configured
    art = distill(str(tiny("bert")), cfg, tmp_path / "s1", progress=False)
    m = _metrics(art)
    assert art.verify() == [] and art.format == "torch" and art.task == "text-classification"
    assert art.manifest.lineage[-1].stage == "distill" and art.manifest.lineage[-1].input_hash
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(art.manifest.files)
    assert m["teacher"]["mode"] == "cached" and m["teacher"]["cache_hit"] is False
    assert m["student"]["num_layers"] == 1 and m["student"]["params"] < m["teacher"]["params"]
    assert m["train"]["steps"] == math.ceil(m["train"]["examples"] / 16)  # batch 8 x accumulation 2
    assert 0.0 <= m["validation"]["accuracy"] <= 1.0 and m["validation"]["n"] > 0
    assert m["reload"]["max_abs_diff"] <= m["reload"]["atol"]
    record = art.manifest.lineage[-1]
    assert record.finished - record.started >= m["train"]["wall_seconds"]  # the record spans the training
    reloaded = load_model(resolve_model(str(art.path)), "text-classification")
    assert reloaded.config.num_hidden_layers == 1
    again = _metrics(distill(str(tiny("bert")), cfg, tmp_path / "s2", progress=False))
    assert again["teacher"]["cache_hit"] is True and again["teacher"]["cache_key"] == m["teacher"]["cache_key"]
    longer = distill(str(tiny("bert")), dataclasses.replace(cfg, max_length=12), tmp_path / "s3", progress=False)
    assert _metrics(longer)["teacher"]["cache_key"] != m["teacher"]["cache_key"]


def _small_cache(folder):
    import torch

    rows = lambda examples: [(torch.full((1, 2), float(e["n"])), None) for e in examples]  # noqa: E731
    return build_cache(folder, rows, [{"n": i} for i in range(5)], batch_size=2, progress=False)


def _edit_meta(folder, **changes):
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(meta | changes))


@pytest.mark.parametrize("damage", ["truncated shard", "shard elsewhere", "absolute shard", "linked shard",
                                    "meta not json", "rows do not add up", "other version"])
def test_a_damaged_teacher_cache_is_never_read(tmp_path, damage):
    from toolchain.teacher_cache import TeacherCache

    folder = tmp_path / "cache" / "key"
    cache = _small_cache(folder)
    assert len(cache) == 5 and TeacherCache.load(folder, examples=5) is not None
    shard = folder / "shard-00000.safetensors"
    secret = tmp_path / "elsewhere.safetensors"
    shutil.copy(shard, secret)
    if damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:40])
    elif damage == "shard elsewhere":
        _edit_meta(folder, shards=["../../elsewhere.safetensors"])
    elif damage == "absolute shard":
        _edit_meta(folder, shards=[str(secret)])
    elif damage == "linked shard":
        shard.unlink()
        shard.symlink_to(secret)
    elif damage == "meta not json":
        (folder / "meta.json").write_text("{")
    elif damage == "rows do not add up":
        _edit_meta(folder, examples=7)
    else:
        _edit_meta(folder, version=99)
    assert TeacherCache.load(folder, examples=5) is None  # not an exception: the caller rebuilds it


def test_distill_rebuilds_a_corrupt_teacher_cache(tiny, reviews, tmp_path):
    cfg = DistillConfig(student_layers=1, data=str(reviews), max_length=16, epochs=1, batch_size=8,
                        cache_dir=str(tmp_path / "cache"), max_train_samples=16)
    first = _metrics(distill(str(tiny("bert")), cfg, tmp_path / "s1", progress=False))["teacher"]
    for shard in Path(first["cache_dir"]).glob("shard-*"):
        shard.write_bytes(b"\0" * 10)  # every later distillation crashed on this
    again = _metrics(distill(str(tiny("bert")), cfg, tmp_path / "s2", progress=False))["teacher"]
    assert again["cache_hit"] is False and again["cache_rebuilt"] is True
    third = _metrics(distill(str(tiny("bert")), cfg, tmp_path / "s3", progress=False))["teacher"]
    assert third["cache_hit"] is True


def test_tiny_distillation_lowers_the_kd_loss(sharp_teacher, reviews, tmp_path):
    # A narrower student cut from the trained teacher, with every loss on: KD, hidden states through
    # a learned projection (width 16 -> 32), attention maps, and boundary weighting.
    cfg = DistillConfig(student_layers=1, student_hidden_size=16, data=str(reviews), max_length=16, epochs=3,
                        batch_size=8, learning_rate=3e-3, warmup_ratio=0.0, alpha=0.1, hidden_weight=0.1,
                        attention_weight=0.1,
                        boundary_weight=1.0, min_steps=0)  # the three epochs as configured
    m = _metrics(distill(str(sharp_teacher), cfg, tmp_path / "s", progress=False))
    epochs = m["train"]["losses_by_epoch"]
    assert len(epochs) == 3 and {"kd", "ce", "hidden", "attention", "total"} <= set(epochs[0])
    assert epochs[-1]["kd"] < 0.5 * epochs[0]["kd"]
    assert m["teacher"]["mode"] == "online" and m["train"]["layer_map"] == [1]


@pytest.mark.parametrize("name, mode", [("llama", "cached"), ("gpt2", "online")])
def test_distill_causal_lm_reports_perplexity(tiny, text_file, tmp_path, name, mode):
    cfg = DistillConfig(student_layers=(1,), data=str(text_file), max_length=32, max_steps=3, batch_size=4,
                        teacher_mode=mode, cache_top_k=16 if mode == "cached" else None,
                        hidden_weight=1.0 if mode == "online" else 0.0, cache_dir=str(tmp_path / "cache"))
    art = distill(str(tiny(name)), cfg, tmp_path / "s", progress=False)
    m = _metrics(art)
    assert art.task == "text-generation" and m["teacher"]["mode"] == mode
    assert m["validation"]["perplexity"] > 1.0 and m["validation"]["tokens"] > 0
    assert m["teacher"]["validation"]["tokens"] == m["validation"]["tokens"]
    assert m["reload"]["max_abs_diff"] <= m["reload"]["atol"]
    assert load_model(resolve_model(str(art.path)), "text-generation").config.num_hidden_layers == 1


def test_structurally_pruned_student_loads_and_trains(tiny, reviews, tmp_path):
    pruned = load_model(resolve_model(str(tiny("bert"))), "text-classification")
    pruned.prune_heads({0: [0, 1], 1: [3]})
    pruned.bert.encoder.layer = pruned.bert.encoder.layer[:1]
    pruned.config.num_hidden_layers = 1
    pruned.config.pruned_heads = {0: [0, 1]}
    pruned.save_pretrained(tmp_path / "pruned")
    cfg = DistillConfig(student=str(tmp_path / "pruned"), data=str(reviews), max_length=16, max_steps=2, batch_size=8,
                        attention_weight=1.0, hidden_weight=1.0)
    art = distill(str(tiny("bert")), cfg, tmp_path / "s", progress=False)
    student = load_model(resolve_model(str(art.path)), "text-classification")
    assert student.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    assert _metrics(art)["student"]["teacher_layers_kept"] is None


# ----------------------------------------------------------------------------------------- bad input


def test_layer_index_out_of_range_is_a_clear_error(tiny, reviews, tmp_path):
    cfg = DistillConfig(student_layers=(0, 2), data=str(reviews), max_length=16)
    with pytest.raises(RecipeError, match="teacher layer index 2 is out of range"):
        distill(str(tiny("bert")), cfg, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_student_wider_than_teacher_is_a_clear_error(tiny, reviews, tmp_path):
    cfg = DistillConfig(student_layers=1, student_intermediate_size=128, data=str(reviews))
    with pytest.raises(RecipeError, match="FFN size 128 is wider than the teacher's 64"):
        distill(str(tiny("bert")), cfg, tmp_path / "s", progress=False)


def test_student_with_another_vocabulary_is_refused(tiny, reviews, tmp_path):
    other = load_model(resolve_model(str(tiny("bert"))), "text-classification")
    other.resize_token_embeddings(other.config.vocab_size + 7)
    other.save_pretrained(tmp_path / "other")
    cfg = DistillConfig(student=str(tmp_path / "other"), data=str(reviews))
    with pytest.raises(BadModel, match="vocabulary"):
        distill(str(tiny("bert")), cfg, tmp_path / "s", progress=False)


def test_mismatched_label_sets_are_refused(tiny, tmp_path):
    data = _reviews(tmp_path, labels=("fresh", "rotten"))
    with pytest.raises(DataError, match="label 'fresh' in the data is not one the model knows"):
        distill(str(tiny("bert")), DistillConfig(data=str(data)), tmp_path / "s", progress=False)
    three = tmp_path / "three"
    import tiny_models

    tiny_models.bert_classifier(three, num_labels=3)
    with pytest.raises(BadModel, match="student predicts labels"):
        distill(str(tiny("bert")), DistillConfig(student=str(three), data=str(_reviews(tmp_path))), tmp_path / "s",
                progress=False)


def test_bare_encoder_teacher_is_unsupported(tiny, tmp_path):
    BertModel.from_pretrained(tiny("bert")).save_pretrained(tmp_path / "encoder")
    load_tokenizer(resolve_model(str(tiny("bert")))).save_pretrained(tmp_path / "encoder")
    with pytest.raises(Unsupported, match="bare encoder"):
        distill(str(tmp_path / "encoder"), DistillConfig(), tmp_path / "s", progress=False)


@pytest.mark.parametrize("data, message", [
    ({"teacher_mode": "cached", "hidden_weight": 1.0}, "need the teacher online"),
    ({"student": "x", "student_layers": 2}, "cannot be combined with student"),
    ({"alpha": 1.5}, "alpha"),
    ({"layer_map": [1, 2]}, "layer_map applies to the feature losses"),
    ({"student_layers": "two"}, "expected"),
])
def test_bad_config_is_a_recipe_error(data, message):
    with pytest.raises(RecipeError, match=message):
        config_from_dict(DistillConfig, data)


def test_distill_is_a_registered_stage():
    assert STAGES["distill"] == (DistillConfig, distill)


# ------------------------------------------------------------------------------------------------ CLI


def test_distill_through_the_cli_prints_json(tiny, reviews, tmp_path):
    from click.testing import CliRunner

    from toolchain.cli import main

    r = CliRunner().invoke(main, ["distill", str(tiny("bert")), str(tmp_path / "s"), "--data", str(reviews),
                                  "--student-layers", "1,", "--max-length", "16", "--max-steps", "2",
                                  "--batch-size", "8", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["student"]["teacher_layers_kept"] == [1] and "accuracy" in data["validation"]


@pytest.mark.parametrize("args, code, message", [
    (["--student-layers", "0,9"], 8, "out of range"),
    (["--student-layers", "1", "--student-hidden-size", "64"], 8, "wider than the teacher"),
    (["--student-layers", "x"], 2, "not a number"),
    (["--teacher-mode", "cached", "--hidden-weight", "1"], 8, "online"),
])
def test_distill_cli_bad_input_gives_one_clear_error(tiny, reviews, tmp_path, args, code, message):
    from click.testing import CliRunner

    from toolchain.cli import main

    r = CliRunner().invoke(main, ["distill", str(tiny("bert")), str(tmp_path / "s"), "--data", str(reviews), *args])
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output


def test_distill_under_torchrun_with_two_gloo_processes(tiny, reviews, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "toolchain", "distill", str(tiny("bert")), str(tmp_path / "s"), "--data", str(reviews),
           "--student-layers", "1", "--max-length", "16", "--max-steps", "2", "--batch-size", "4",
           "--teacher-mode", "online", "--hidden-weight", "1", "--device", "cpu", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout)  # one report: process 0's
    assert data["train"]["world_size"] == 2
    assert Artifact.load(tmp_path / "s").verify() == []


# ----------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_distill_smollm2_to_a_third_of_its_layers(tmp_path):
    cfg = DistillConfig(student_layers=10, max_length=64, max_steps=20, batch_size=4, cache_top_k=64,
                        max_train_samples=80, teacher_mode="cached", cache_dir=str(tmp_path / "cache"))
    m = _metrics(distill("smollm2-135m", cfg, tmp_path / "s", progress=False))
    assert m["student"]["num_layers"] == 10
    assert m["validation"]["perplexity"] > m["teacher"]["validation"]["perplexity"] > 1.0


def test_augment_adds_perturbed_copies_the_teacher_labels(tiny, reviews, tmp_path):
    import numpy as np

    from toolchain.data import Split, load_classification
    from toolchain.distill import augmented

    split = Split(["the film is good and moving", "a boring mess"], np.array([1, 0]))
    out = augmented(split, 3, seed=0, mask="[MASK]")
    assert len(out) == 8 and out.texts[:2] == split.texts and out.labels.tolist() == [1, 0] * 4
    assert any(t != split.texts[i % 2] for i, t in enumerate(out.texts[2:]))
    assert augmented(split, 3, 0, "[MASK]").texts == out.texts  # seeded
    art = distill(str(tiny("bert")), DistillConfig(student_layers=1, data=str(reviews), augment=2, max_steps=2),
                  tmp_path / "s", progress=False)
    m = art.manifest.lineage[-1].metrics
    assert m["train"]["examples"] == 3 * len(load_classification(str(reviews)).split("train"))
    assert art.manifest.lineage[-1].config["augment"] == 2


def test_augment_default_makes_small_data_up_to_8000_texts_and_leaves_larger_data_alone(monkeypatch):
    from toolchain import distill as distill_module
    from toolchain.distill import augment_copies

    monkeypatch.setattr(distill_module, "AUGMENT_TARGET", 8000)  # the default (the suite pins it to 0: conftest)
    assert augment_copies(None, 1600)[0] == 4 and "8,000" in augment_copies(None, 1600)[1]
    assert augment_copies(None, 491)[0] == 8  # capped
    assert augment_copies(None, 8530) == (0, "8530 training texts: at least 8,000, no copies needed")
    assert augment_copies(2, 8530) == (2, "as asked")
