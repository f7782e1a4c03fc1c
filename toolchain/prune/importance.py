"""How much each head, FFN neuron and layer matters, and which ones a pruning target keeps.

Three criteria, each a small function returning `Scores` (higher = more important):

- `magnitude`: the squared L2 norm of all weights and biases that belong to the unit; no data.
- `taylor`: first-order Taylor estimate of the loss change when the unit is removed,
  |sum(w * dL/dw)| over the input columns of the projection that reads the unit (zeroing those
  columns is exactly removing the unit), averaged over calibration batches.
- `activation`: the mean norm of what the unit adds to the residual stream on calibration data;
  for a layer, 1 - cosine(input, output) of its hidden states (how much the layer changes them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import RecipeError
from .families import Family, Plan, family_of, grad_in_out, weight_in_out


@dataclass
class Scores:
    heads: list[torch.Tensor]  # per layer, one score per query head
    neurons: list[torch.Tensor]  # per layer, one score per FFN neuron
    layers: torch.Tensor  # one score per layer


def _out_sq(m, idx: torch.Tensor) -> torch.Tensor:
    total = weight_in_out(m)[:, idx].pow(2).sum()
    return total + (m.bias[idx].pow(2).sum() if m.bias is not None else 0)


@torch.no_grad()
def magnitude(model) -> Scores:
    """Squared weight norm of every head (its q/k/v rows and output columns) and FFN neuron."""
    fam = family_of(model)
    heads, neurons = [], []
    for layer in fam.layers(model):
        nh, hd = fam.num_heads(layer), fam.head_dim(layer)
        h = torch.tensor([sum(float(_out_sq(m, i)) for m, i in fam.head_outputs(layer, [q])) for q in range(nh)])
        h += weight_in_out(fam.head_reader(layer)).pow(2).sum(1).view(nh, hd).sum(1)
        n = weight_in_out(fam.ffn_reader(layer)).pow(2).sum(1)
        for w in fam.ffn_writers(layer):
            n = n + weight_in_out(w).pow(2).sum(0) + (w.bias.pow(2) if w.bias is not None else 0)
        heads.append(h.float())
        neurons.append(n.float())
    return Scores(heads, neurons, torch.stack([h.sum() + n.sum() for h, n in zip(heads, neurons)]))


def taylor(model, batches: list[dict], labels: list | None, progress=None) -> Scores:
    """First-order Taylor importance from `batches` (labels: class ids, or None for next-token loss)."""
    fam = family_of(model)
    layers = fam.layers(model)
    readers = [(fam.head_reader(la), fam.ffn_reader(la)) for la in layers]
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for pair in readers:
        for m in pair:
            m.weight.requires_grad_(True)
            if m.bias is not None:
                m.bias.requires_grad_(True)
    heads = [torch.zeros(fam.num_heads(la)) for la in layers]
    neurons = [torch.zeros(fam.ffn_size(la)) for la in layers]
    layer_scores = torch.zeros(len(layers))
    try:
        for i, batch in enumerate(progress(batches) if progress else batches):
            model.zero_grad(set_to_none=True)
            _loss(model, batch, None if labels is None else labels[i]).backward()
            with torch.no_grad():
                for li, (la, (attn_r, ffn_r)) in enumerate(zip(layers, readers)):
                    wg_a = (weight_in_out(attn_r) * grad_in_out(attn_r)).sum(1)
                    wg_f = (weight_in_out(ffn_r) * grad_in_out(ffn_r)).sum(1)
                    heads[li] += wg_a.view(fam.num_heads(la), -1).sum(1).abs()
                    neurons[li] += wg_f.abs()
                    bias = sum(float((m.bias * m.bias.grad).sum()) for m in (attn_r, ffn_r) if m.bias is not None)
                    layer_scores[li] += abs(float(wg_a.sum() + wg_f.sum()) + bias)
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in saved.items():
            p.requires_grad_(flag)
    n = max(len(batches), 1)
    return Scores([h / n for h in heads], [x / n for x in neurons], layer_scores / n)


def _loss(model, batch: dict, label) -> torch.Tensor:
    feeds = {k: torch.as_tensor(v) for k, v in batch.items()}
    if label is None:
        return model(**feeds, labels=feeds["input_ids"]).loss
    return model(**feeds, labels=torch.as_tensor([int(label)])).loss


@torch.no_grad()
def activation(model, batches: list[dict], progress=None) -> Scores:
    """Mean norm of each unit's contribution to the residual stream; layers by 1 - cos(in, out)."""
    fam = family_of(model)
    layers = fam.layers(model)
    heads = [torch.zeros(fam.num_heads(la)) for la in layers]
    neurons = [torch.zeros(fam.ffn_size(la)) for la in layers]
    change = torch.zeros(len(layers))
    tokens = [0]
    handles = []
    for li, la in enumerate(layers):
        handles.append(fam.head_reader(la).register_forward_pre_hook(_head_hook(fam, la, heads[li])))
        handles.append(fam.ffn_reader(la).register_forward_pre_hook(_neuron_hook(fam.ffn_reader(la), neurons[li])))
        handles.append(la.register_forward_hook(_change_hook(change, li), with_kwargs=True))
    try:
        for batch in progress(batches) if progress else batches:
            model(**{k: torch.as_tensor(v) for k, v in batch.items()})
            tokens[0] += int(torch.as_tensor(batch["attention_mask"]).sum())
    finally:
        for h in handles:
            h.remove()
    n = max(tokens[0], 1)
    return Scores([h / n for h in heads], [x / n for x in neurons], change / n)


def _head_hook(fam: Family, layer, acc: torch.Tensor):
    def hook(module, args):
        x = args[0].reshape(-1, fam.num_heads(layer), fam.head_dim(layer))  # (tokens, heads, head_dim)
        w = weight_in_out(module).view(fam.num_heads(layer), fam.head_dim(layer), -1)
        acc.add_(torch.einsum("thd,hdo->tho", x, w).norm(dim=-1).sum(0))
    return hook


def _neuron_hook(module, acc: torch.Tensor):
    col_norm = weight_in_out(module).norm(dim=1)

    def hook(mod, args):
        acc.add_((args[0].reshape(-1, args[0].shape[-1]).abs() * col_norm).sum(0))
    return hook


def _change_hook(acc: torch.Tensor, li: int):
    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        y = output[0] if isinstance(output, tuple) else output
        cos = torch.nn.functional.cosine_similarity(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), dim=-1)
        acc[li] += (1 - cos).sum()
    return hook


# --- from scores and targets to a plan -------------------------------------------------------------

@dataclass(frozen=True)
class Targets:
    """What to remove; built from PruneConfig (see there for the meaning of each field)."""

    heads: float = 0.0
    ffn: float = 0.0
    heads_per_layer: tuple[int, ...] | None = None
    ffn_per_layer: tuple[int, ...] | None = None
    layers: int = 0
    drop_layers: tuple[int, ...] = ()
    ranking: str = "layer"
    empty_layer: str = "refuse"


def choose(model, scores: Scores, t: Targets) -> tuple[Plan, dict]:
    """The plan that meets targets `t`, keeping the highest-scoring units; and notes on what it did."""
    fam = family_of(model)
    layers = fam.layers(model)
    n = len(layers)
    reps = [fam.group(la) for la in layers]
    group_scores = [s.view(-1, r).sum(1) for s, r in zip(scores.heads, reps)]
    keep_g = _keep(group_scores, t.heads, _per_layer(t.heads_per_layer, reps, n, "heads_per_layer"), t.ranking)
    heads = [[g * r + j for g in kept for j in range(r)] for kept, r in zip(keep_g, reps)]
    neurons = _keep(scores.neurons, t.ffn, _per_layer(t.ffn_per_layer, [1] * n, n, "ffn_per_layer"), t.ranking)
    dropped = set(_dropped_layers(scores.layers, t, n))
    empty = [i for i in range(n) if i not in dropped and (not heads[i] or not neurons[i])]
    if empty and t.empty_layer == "refuse":
        what = ", ".join(f"{i} ({'no heads' if not heads[i] else 'no FFN neurons'})" for i in empty)
        raise RecipeError(f"pruning would leave layer(s) {what} with zero width",
                          "prune less, or set empty_layer: drop (--empty-layer drop) to remove such layers whole")
    dropped |= set(empty)
    if len(dropped) == n:
        raise RecipeError(f"pruning would remove all {n} layers", "prune fewer layers, heads or neurons")
    kept = [i for i in range(n) if i not in dropped]
    return Plan(heads, neurons, kept), {"dropped_layers": sorted(dropped), "dropped_because_empty": empty}


def _per_layer(counts, reps: list[int], n: int, name: str) -> list[int] | None:
    """Per-layer keep counts, converted to key/value groups; checked against the model."""
    if counts is None:
        return None
    if len(counts) != n:
        raise RecipeError(f"{name} lists {len(counts)} layers; the model has {n}", f"give {n} counts, one per layer")
    bad = [i for i, (c, r) in enumerate(zip(counts, reps)) if c % r]
    if bad:
        raise RecipeError(f"{name}: layer {bad[0]} keeps {counts[bad[0]]} query heads, not a multiple of the "
                          f"{reps[bad[0]]} heads that share a key/value head",
                          "keep whole grouped-query groups")
    return [c // r for c, r in zip(counts, reps)]


def _keep(scores: list[torch.Tensor], ratio: float, per_layer: list[int] | None, ranking: str) -> list[list[int]]:
    sizes = [len(s) for s in scores]
    if per_layer is not None:
        over = [i for i, (k, s) in enumerate(zip(per_layer, sizes)) if k > s]
        if over:
            raise RecipeError(f"layer {over[0]} has only {sizes[over[0]]} units to keep {per_layer[over[0]]} of",
                              "keep at most as many as the layer has")
        return [_top(s, k) for s, k in zip(scores, per_layer)]
    if ranking == "layer":
        return [_top(s, len(s) - int(ratio * len(s) + 0.5)) for s in scores]
    flat = torch.cat(scores)
    n_remove = int(ratio * len(flat) + 0.5)
    order = torch.argsort(flat, stable=True)[:n_remove]  # lowest first; ties by position
    removed = set(order.tolist())
    out, start = [], 0
    for size in sizes:
        out.append([j for j in range(size) if start + j not in removed])
        start += size
    return out


def _top(s: torch.Tensor, k: int) -> list[int]:
    if k >= len(s):
        return list(range(len(s)))
    order = torch.argsort(-s, stable=True)[:k]
    return sorted(order.tolist())


def _dropped_layers(layer_scores: torch.Tensor, t: Targets, n: int) -> list[int]:
    bad = [i for i in t.drop_layers if not 0 <= i < n]
    if bad:
        raise RecipeError(f"drop_layers names layer {bad[0]}; the model has layers 0..{n - 1}",
                          f"name layers between 0 and {n - 1}")
    if t.layers >= n:
        raise RecipeError(f"cannot remove {t.layers} of {n} layers", f"remove at most {n - 1}")
    if t.layers:
        return sorted(torch.argsort(layer_scores, stable=True)[: t.layers].tolist())
    return sorted(set(t.drop_layers))

