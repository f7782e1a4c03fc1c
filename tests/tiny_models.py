"""The one shared set of tiny random models for every test: built from configs, nothing downloaded.

Each builder saves a complete Hugging Face folder (config, safetensors weights, tokenizer) so the
code under test meets the same files a user's model folder would hold.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    DistilBertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizerFast,
)

# Enough words that tokenized test sentences are mostly real tokens, not [UNK].
WORDS = (
    "the a an and or but not very quite so too film movie story plot actor actors acting "
    "director script scene scenes good great bad awful boring fun funny sad dull brilliant "
    "moving charming mess waste time love loved hate hated best worst is was are were it this "
    "that of to in on with for as by at its his her their be been one two all more most "
    "little much some no never ever just only even also than then"
).split()

SENTENCES = [
    "the film is a charming and moving story",
    "a boring mess and a waste of time",
    "the actors are great but the script is dull",
    "one of the best movies of the year",
    "never funny , never moving , just awful",
    "brilliant acting and a good plot",
    "the worst film i have ever seen",
    "it was fun , quite sad and very good",
]


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def _wordpiece_tokenizer(folder: Path, cls=BertTokenizerFast) -> BertTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "!", "?", "'", "i"] + WORDS
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = list(dict.fromkeys(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = cls(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    (folder / "vocab.txt").unlink()
    return tok


def _bpe_tokenizer(bos: str = "<|endoftext|>") -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=[bos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES * 4 + [" ".join(WORDS)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=bos, unk_token=bos)


def _roberta_tokenizer() -> RobertaTokenizerFast:
    """Byte-level BPE with RoBERTa's specials (<s>=0, <pad>=1, </s>=2, <unk>=3) and its post-processor."""
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=360, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES * 4 + [" ".join(WORDS)], trainer)
    return RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def bert_classifier(folder: Path, num_labels: int = 2, seed: int = 0) -> Path:
    """A 2-layer, hidden-32 BERT sequence classifier with labels negative/positive."""
    _seed(seed)
    tok = _wordpiece_tokenizer(folder)
    config = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
        id2label={i: n for i, n in enumerate(["negative", "positive", "neutral"][:num_labels])},
        label2id={n: i for i, n in enumerate(["negative", "positive", "neutral"][:num_labels])},
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def distilbert_classifier(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-32 DistilBERT sequence classifier (WordPiece) with labels negative/positive."""
    _seed(seed)
    tok = _wordpiece_tokenizer(folder, DistilBertTokenizerFast)
    config = DistilBertConfig(
        vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128,
        num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )
    model = DistilBertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def roberta_classifier(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-32 RoBERTa sequence classifier with a byte-level BPE tokenizer."""
    _seed(seed)
    tok = _roberta_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=130, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    model = RobertaForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def gpt2_lm(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-32 GPT-2 causal LM with a byte-level BPE tokenizer."""
    _seed(seed)
    tok = _bpe_tokenizer()
    config = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def llama_lm(folder: Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """A 2-layer Llama causal LM with grouped-query attention (4 query heads, 2 key/value heads)."""
    _seed(seed)
    tok = _bpe_tokenizer("<s>")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def llama64_lm(folder: Path, seed: int = 0) -> Path:
    """The tiny Llama at hidden size 64: head size 16, the smallest ONNX Runtime's CPU GroupQueryAttention
    (what ONNX Runtime GenAI's model builder emits) accepts."""
    return llama_lm(folder, seed, hidden_size=64)


BUILDERS = {"bert": bert_classifier, "gpt2": gpt2_lm, "llama": llama_lm, "llama64": llama64_lm,
            "distilbert": distilbert_classifier, "roberta": roberta_classifier}
