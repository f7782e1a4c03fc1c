"""FLOPs of one inference, computed from the model's config.json and the input shapes.

Only matrix products are counted (2 FLOPs per multiply-add): the linear layers (about 2 x the
layer weights per token) and the attention score and value products, which grow with the square
of the sequence. Embedding lookups, layer norms, softmax and activations are elementwise and
left out: on every transformer here they are a few percent of the work. Padded positions are
counted, because the hardware computes them; that is what achieved GFLOP/s must be measured on.
Pruned heads (`pruned_heads` in a BERT config) shrink the attention of their layer, and the prune
stage's per-layer widths (`toolchain_shapes` in config.json) replace the uniform ones.
"""

from __future__ import annotations

from dataclasses import dataclass

# Decoders whose MLP is gated (gate, up and down projections: three matrices instead of two).
GATED_MLP = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text", "olmo", "smollm3"}
_KEYS = {
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "heads": ("num_attention_heads", "n_head", "n_heads"),
    "ffn": ("intermediate_size", "n_inner", "hidden_dim", "ffn_dim"),
}


@dataclass(frozen=True)
class Shape:
    """What one layer computes on: hidden width, attention width per layer, FFN width, vocabulary."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    head_dim: int
    kv_heads: int
    ffn: int
    vocab: int
    num_labels: int
    pruned: dict  # layer -> number of heads removed
    per_layer: dict  # the prune stage's per-layer widths: intermediate_size, num_heads, num_key_value_heads lists

    def attn_width(self, layer: int) -> int:
        heads = self.per_layer.get("num_heads")
        return (heads[layer] if heads else self.heads - self.pruned.get(layer, 0)) * self.head_dim

    def kv_width(self, layer: int) -> int:
        kv = self.per_layer.get("num_key_value_heads")
        return (kv[layer] if kv else self.kv_heads) * self.head_dim

    def ffn_width(self, layer: int) -> int:
        ffn = self.per_layer.get("intermediate_size")
        return ffn[layer] if ffn else self.ffn


def model_shape(config: dict) -> Shape:
    """The dimensions FLOPs depend on, from a config.json dict; KeyError names what is missing."""

    def get(name):
        for key in _KEYS[name]:
            if config.get(key) is not None:
                return int(config[key])
        if name == "ffn":
            return 4 * get("hidden")  # GPT-2 writes n_inner: null for 4 x hidden
        raise KeyError(f"config.json has none of {', '.join(_KEYS[name])}")

    hidden, heads = get("hidden"), get("heads")
    pruned = {int(k): len(v) for k, v in (config.get("pruned_heads") or {}).items()}
    return Shape(
        model_type=config.get("model_type", ""), hidden=hidden, layers=get("layers"), heads=heads,
        head_dim=int(config.get("head_dim") or hidden // heads),
        kv_heads=int(config.get("num_key_value_heads") or heads), ffn=get("ffn"),
        vocab=int(config.get("vocab_size") or 0), num_labels=len(config.get("id2label") or {0: 0, 1: 1}),
        pruned=pruned, per_layer=dict(config.get("toolchain_shapes") or {}),
    )


def encoder_flops(s: Shape, batch: int, seq: int, task: str) -> float:
    """One forward pass of a bidirectional encoder on a (batch, seq) padded input."""
    tokens = batch * seq
    total = 0.0
    for layer in range(s.layers):
        a = s.attn_width(layer)
        total += 2 * tokens * (3 * s.hidden * a + a * s.hidden)  # Q, K, V and output projections
        total += 2 * tokens * 2 * s.hidden * s.ffn_width(layer)  # FFN up and down
        total += 2 * 2 * batch * seq * seq * a  # Q K^T and scores x V, over all heads
    if task == "text-classification":
        total += 2 * batch * (s.hidden * s.hidden + s.hidden * s.num_labels)  # pooler + classifier
    return total


def decoder_flops(s: Shape, batch: int, new: int, context: int) -> float:
    """A causal-LM forward over `new` tokens attending to `context` positions (cache included).

    Prefill of a length-L prompt is new = context = L; one decode step is new = 1, context = L + t.
    Dense attention kernels compute the whole new x context score block (masked, not skipped), so
    it is counted whole. Logits are computed for every new position, as Hugging Face and the export do.
    """
    tokens = batch * new
    matrices = 3 if s.model_type in GATED_MLP else 2
    per_token = attention = 0
    for layer in range(s.layers):
        q, kv = s.attn_width(layer), s.kv_width(layer)
        per_token += s.hidden * q + 2 * s.hidden * kv + q * s.hidden + matrices * s.hidden * s.ffn_width(layer)
        attention += 2 * 2 * batch * new * context * q
    return 2 * tokens * per_token + attention + 2 * tokens * s.hidden * s.vocab


def inference_flops(config: dict, task: str, batch: int, seq: int, mode: str = "forward", context: int | None = None) -> float:
    """FLOPs of one call: an encoder forward, a causal-LM prefill, or one decode step (`mode`).

    >>> inference_flops(minilm_config, "feature-extraction", batch=1, seq=128)  # doctest: +SKIP
    2.9e9
    """
    s = model_shape(config)
    if task == "text-generation":
        if mode == "decode":
            return decoder_flops(s, batch, 1, context if context is not None else seq)
        return decoder_flops(s, batch, seq, seq)
    return encoder_flops(s, batch, seq, task)
