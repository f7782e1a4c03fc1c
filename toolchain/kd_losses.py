"""Knowledge-distillation losses on plain tensors, one small function each.

Logit losses work on rows: a classifier gives one row per example, a causal LM one row per
predicted token (the caller drops padding and flattens). Each returns one value per row, so
rows can be weighted (boundary-aware weighting) before they are averaged.

- `soft_kl`: T^2 * KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015). The T^2 keeps the
  gradient scale of the soft term independent of T. With `teacher_index` the teacher row holds
  only its top-k logits (a cached large-vocabulary teacher): both distributions are renormalized
  over those k tokens ("top-k KD"), so the term is 0 when the student ranks and weighs the
  teacher's k candidates as it does; the mass outside them is left to the hard-label term.
- `logit_mse`: mean squared difference of raw logits (Ba & Caruana 2014), no temperature.
- `hard_ce`: cross entropy against the true labels.
- `boundary_weights`: w_i = (1 + beta * (1 - m_i)) / mean_j (1 + beta * (1 - m_j)), where
  m_i = p_(1) - p_(2) is the margin between the teacher's two largest probabilities (at T=1)
  for row i. Rows the teacher finds ambiguous (m near 0) get up to 1 + beta times the weight of
  rows it is sure about (m near 1); dividing by the batch mean keeps the loss scale unchanged.

Feature losses average over the valid (non-padding) tokens of a batch:

- `hidden_loss`: MSE (mean over the hidden dimension) or cosine distance 1 - cos(h_s, h_t) per
  token, between a student layer's (projected) hidden states and its mapped teacher layer's.
- `attention_kl`: KL(A_t || A_s) of the attention distributions of each query token, summed
  over keys, averaged over heads and valid queries (TinyBERT / MiniLM). When the head counts
  differ (a pruned or narrower student), the head-averaged maps are compared instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12  # keeps log() finite where an attention probability underflows to 0


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
            teacher_index: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row T^2 * KL(teacher || student) of the temperature-softened distributions."""
    s = student.float()
    if teacher_index is not None:
        s = s.gather(-1, teacher_index.long())
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(teacher.float() / temperature, dim=-1)
    return temperature**2 * (log_pt.exp() * (log_pt - log_ps)).sum(-1)


def logit_mse(student: torch.Tensor, teacher: torch.Tensor, teacher_index: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row mean squared difference of logits (at the teacher's top-k entries when indexed)."""
    s = student.float()
    if teacher_index is not None:
        s = s.gather(-1, teacher_index.long())
    return ((s - teacher.float()) ** 2).mean(-1)


def hard_ce(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row cross entropy against integer labels."""
    return F.cross_entropy(student.float(), labels.long(), reduction="none")


def teacher_margin(teacher: torch.Tensor) -> torch.Tensor:
    """Per-row p_(1) - p_(2): the gap between the teacher's two most likely classes (T=1)."""
    top2 = F.softmax(teacher.float(), dim=-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def boundary_weights(teacher: torch.Tensor, beta: float) -> torch.Tensor:
    """Row weights (1 + beta (1 - margin)) / their mean: up-weights rows near the teacher's boundary."""
    w = 1.0 + beta * (1.0 - teacher_margin(teacher))
    return w / w.mean()


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None, kind: str = "mse") -> torch.Tensor:
    """MSE or cosine distance between [batch, seq, dim] hidden states, averaged over valid tokens."""
    s, t = student.float(), teacher.float()
    if kind == "mse":
        per_token = ((s - t) ** 2).mean(-1)
    elif kind == "cosine":
        per_token = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    else:
        raise ValueError(f"unknown hidden loss {kind!r}")
    return _token_mean(per_token, mask)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """KL(teacher || student) of [batch, heads, query, key] attention maps, mean over heads and valid queries."""
    s, t = student.float(), teacher.float()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    per_query = (t * (torch.log(t + EPS) - torch.log(s + EPS))).sum(-1).mean(1)  # [batch, query]
    return _token_mean(per_query, mask)
