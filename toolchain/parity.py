"""Numerical checks of a converted model against its source, on real tokenized text.

Every conversion (export, optimization, quantization) compares outputs on at least two
batch/sequence shapes and records the max abs difference and the tolerance it was held to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Real sentences, so attention patterns and logits look like deployment, not like random ids.
SAMPLE_TEXTS = [
    "A gripping, beautifully acted drama that earns every one of its tears.",
    "The plot is thin and the jokes land with a dull thud.",
    "To be, or not to be, that is the question.",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune,",
    "It is a charming, funny and moving film about growing up.",
    "An overlong, self-satisfied mess that wastes a good cast.",
]
# (batch, sequence length): one single short sentence, one padded batch.
SHAPES = ((1, 8), (4, 24))
PAST_PREFIX = 6  # tokens run through PyTorch first to make the KV cache that the ONNX model is fed


@dataclass
class ParityResult:
    max_abs_diff: float
    atol: float
    worst_output: str
    per_output: dict[str, float]
    # Relative results (int8, fp16) hold ||a - b|| / ||a|| per output in the same fields; atol is then relative.
    relative: bool = False

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.atol

    def as_metrics(self) -> dict:
        diff, tol = ("rel_l2_diff", "rtol") if self.relative else ("max_abs_diff", "atol")
        return {diff: self.max_abs_diff, tol: self.atol, "worst_output": self.worst_output,
                "per_output": self.per_output, "shapes": [list(s) for s in SHAPES]}


def tokenize(tokenizer, batch: int, seq: int) -> dict[str, np.ndarray]:
    texts = [SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(batch)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], atol: float,
            relative: bool = False) -> ParityResult:
    """Max abs difference over the outputs both sides produced; with `relative`, the relative L2 error
    ||ref - cand|| / ||ref|| per output instead, so one tolerance fits int8 and fp16 outputs of any scale
    and one outlier element does not decide (the error ORT's qdq_loss_debug reports as SQNR)."""
    per = {}
    for name, ref in reference.items():
        if name in candidate:
            ref = np.asarray(ref, dtype=np.float64)
            cand = np.asarray(candidate[name], dtype=np.float64)
            if not ref.size:
                per[name] = 0.0
            elif relative:
                per[name] = float(np.linalg.norm(ref - cand) / max(float(np.linalg.norm(ref)), 1e-12))
            else:
                per[name] = float(np.max(np.abs(ref - cand)))
    if not per:
        raise ValueError(f"no common outputs: reference {list(reference)}, candidate {list(candidate)}")
    worst = max(per, key=lambda k: per[k] if np.isfinite(per[k]) else np.inf)
    return ParityResult(per[worst], atol, worst, per, relative)


def merge(results: list[ParityResult]) -> ParityResult:
    """The worst of several shapes' results."""
    worst = max(results, key=lambda r: r.max_abs_diff if np.isfinite(r.max_abs_diff) else np.inf)
    per = {}
    for r in results:
        for k, v in r.per_output.items():
            per[k] = max(per.get(k, 0.0), v)
    return ParityResult(worst.max_abs_diff, worst.atol, worst.worst_output, per, worst.relative)


def onnx_feeds(session, enc: dict[str, np.ndarray], past: dict[str, np.ndarray] | None = None) -> dict:
    """Inputs for `session` from tokenizer output, adding position ids and past key/values it declares."""
    feeds = {}
    names = [i.name for i in session.get_inputs()]
    total = enc["attention_mask"].shape[1]
    seq = enc["input_ids"].shape[1]
    for name in names:
        if name in enc:
            feeds[name] = enc[name]
        elif name == "position_ids":
            feeds[name] = position_ids(enc["attention_mask"])[:, total - seq:]
        elif name == "token_type_ids":
            feeds[name] = np.zeros_like(enc["input_ids"])
        elif past is not None and name in past:
            feeds[name] = past[name]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ValueError(f"cannot build ONNX input(s) {missing}")
    return feeds


def position_ids(mask: np.ndarray) -> np.ndarray:
    """Positions that skip padding, as Hugging Face generation computes them."""
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)


def mask_padding(outputs: dict, valid: np.ndarray, full: np.ndarray | None = None) -> dict:
    """Zero positions that are padding: their values are unconstrained and differ between runtimes.

    `full` is the whole sequence's mask, for KV-cache outputs (batch, heads, positions, dim).
    """
    out = {}
    for k, v in outputs.items():
        v = np.asarray(v)
        # The cache first: with one key/value head, (batch, 1) would also match a 1-token step's `valid`.
        if full is not None and v.ndim == 4 and (v.shape[0], v.shape[2]) == full.shape:
            v = v * full[:, None, :, None]
        elif v.ndim >= 2 and v.shape[:2] == valid.shape:
            v = v * valid.reshape(valid.shape + (1,) * (v.ndim - 2))
        out[k] = v
    return out


def compare_onnx(reference, candidate, tokenizer, task: str, atol: float, relative: bool = False) -> ParityResult:
    """Compare two ONNX Runtime sessions of the same model (before and after a graph rewrite) on real
    text at each of SHAPES. With-past graphs first run a prefix through `reference` to make the cache
    that both are then fed, so the cache path is checked too."""
    if task == "text-generation":
        tokenizer.padding_side = "left"  # how batched generation pads
    results = []
    for batch, seq in SHAPES:
        enc = tokenize(tokenizer, batch, seq)
        if _implicit_positions(reference):
            enc = _unpadded(enc)
        feeds, valid = _onnx_step(reference, enc)
        ref = _run(reference, feeds)
        got = _run(candidate, {k: v for k, v in feeds.items() if k in {i.name for i in candidate.get_inputs()}})
        if relative and task == "text-generation":
            ref, got = _log_probs(ref), _log_probs(got)
        full = enc["attention_mask"]
        results.append(compare(mask_padding(ref, valid, full), mask_padding(got, valid, full), atol, relative))
    return merge(results)


def _log_probs(outputs: dict) -> dict:
    """Next-token log-probabilities in place of logits: softmax ignores a shift of all logits, and int8
    moves them by one (measured on SmolLM2: relative logit error 0.57, log-probability error 0.10)."""
    if "logits" not in outputs:
        return outputs
    z = np.asarray(outputs["logits"], dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    return outputs | {"logits": z - np.log(np.exp(z).sum(-1, keepdims=True))}


def _implicit_positions(session) -> bool:
    """A with-past graph without position ids (GroupQueryAttention, ORT GenAI's builder): it places a row's
    tokens at 0..length-1 from the mask's sum, so it takes right padding only and steps one token at a time."""
    names = {i.name for i in session.get_inputs()}
    return "position_ids" not in names and any(n.startswith("past_key_values") for n in names)


def _unpadded(enc: dict) -> dict:
    """Every row cut to the shortest row's length: no padding at all."""
    shortest = max(int(enc["attention_mask"].sum(1).min()), 2)
    if enc["attention_mask"][:, :shortest].all():  # right padding
        return {k: v[:, :shortest] for k, v in enc.items()}
    return {k: v[:, -shortest:] for k, v in enc.items()}  # left padding


def _onnx_step(session, enc: dict) -> tuple[dict, np.ndarray]:
    """Feeds for one step; for a with-past session, the step after a PAST_PREFIX-token prefix (a graph with
    implicit positions: a one-token step after the rest of the row)."""
    past_names = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values")]
    if not past_names:
        return onnx_feeds(session, enc), enc["attention_mask"]
    p = enc["input_ids"].shape[1] - 1 if _implicit_positions(session) else PAST_PREFIX
    empty = {i.name: empty_past(i, enc["input_ids"].shape[0]) for i in session.get_inputs() if i.name in past_names}
    prefix = {"input_ids": enc["input_ids"][:, :p], "attention_mask": enc["attention_mask"][:, :p]}
    first = _run(session, onnx_feeds(session, prefix, empty))
    past = {n: first[n.replace("past_key_values", "present")] for n in past_names}
    step = {"input_ids": enc["input_ids"][:, p:], "attention_mask": enc["attention_mask"]}
    return onnx_feeds(session, step, past), enc["attention_mask"][:, p:]


def empty_past(inp, batch: int) -> np.ndarray:
    """A zero-length KV cache for session input `inp`, so a with-past graph runs a sequence from scratch."""
    dims = [batch if i == 0 else (d if isinstance(d, int) else 0) for i, d in enumerate(inp.shape)]
    return np.zeros(dims, dtype=np.float16 if "float16" in inp.type else np.float32)


def _run(session, feeds: dict) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))
