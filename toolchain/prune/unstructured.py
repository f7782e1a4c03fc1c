"""Unstructured magnitude pruning: zero the smallest weights, keep every shape.

The zeros make the file compress better and suit sparse-aware kernels, but a dense runtime
(PyTorch, ONNX Runtime's CPU and CUDA providers) multiplies them all the same: no speedup.
"""

from __future__ import annotations

import fnmatch
import zlib
from pathlib import Path

import torch
from torch import nn

from ..errors import RecipeError
from .families import Family, family_of

NO_SPEEDUP = ("unstructured sparsity leaves every tensor dense: PyTorch and ONNX Runtime do the same work, so it "
              "gives NO speedup; it only makes the file compress smaller. Use structured pruning for speed.")


def scoped_weights(model, scope: tuple[str, ...], modules: tuple[str, ...]) -> dict[str, nn.Parameter]:
    """The weight matrices to prune, by module name: named `modules` (fnmatch patterns) or the `scope` groups."""
    fam = family_of(model)
    names = {m: n for n, m in model.named_modules()}
    prunable = {n: m for n, m in model.named_modules() if _has_matrix(m)}
    if modules:
        chosen = []
        for pattern in modules:
            hits = [n for n in prunable if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                examples = ", ".join(list(prunable)[:4])
                raise RecipeError(f"no layer of this model is named {pattern!r}",
                                  f"name Linear / Embedding modules (patterns allowed), e.g. {examples}")
            chosen += hits
        picked = [prunable[n] for n in dict.fromkeys(chosen)]
    else:
        picked = [m for group in scope for m in _group(fam, model, group)]
    out, seen = {}, set()
    for m in picked:
        if id(m.weight) not in seen:  # tied weights (GPT-2's lm_head is wte) count once
            seen.add(id(m.weight))
            out[names[m]] = m.weight
    return out


def _has_matrix(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    return isinstance(w, nn.Parameter) and w.dim() == 2


def _group(fam: Family, model, group: str) -> list[nn.Module]:
    if group == "embeddings":
        return fam.embeddings(model)
    if group == "classifier":
        return fam.classifier(model)
    pick = _layer_attention if group == "attention" else _layer_ffn
    return [m for layer in fam.layers(model) for m in pick(fam, layer)]


@torch.no_grad()
def prune_magnitude(weights: dict[str, nn.Parameter], sparsity: float | None, threshold: float | None,
                    granularity: str) -> None:
    """Zero, in place, weights below `threshold`, or the `sparsity` fraction with the smallest |w|
    (ranked across all `weights` when granularity is 'global', within each matrix when 'layer')."""
    if threshold is not None:
        for w in weights.values():
            w[w.abs() < threshold] = 0
        return
    if granularity == "layer":
        for w in weights.values():
            k = int(sparsity * w.numel())
            if k:
                w.view(-1)[torch.argsort(w.abs().view(-1), stable=True)[:k]] = 0
        return
    flat = torch.cat([w.abs().view(-1) for w in weights.values()])
    k = int(sparsity * flat.numel())
    if k:
        cut = torch.kthvalue(flat, k).values
        for w in weights.values():
            w[w.abs() <= cut] = 0


def sparsity_report(model, weights: dict[str, nn.Parameter]) -> dict:
    """Fraction of zeros per pruned matrix, per transformer layer (attention / FFN), in scope and overall."""
    fam = family_of(model)
    per_tensor = {n: _zeros(w) / w.numel() for n, w in weights.items()}
    per_layer = {}
    for i, layer in enumerate(fam.layers(model)):
        row = {}
        for kind, mods in (("attention", _layer_attention(fam, layer)), ("ffn", _layer_ffn(fam, layer))):
            ws = [m.weight for m in mods]
            row[kind] = sum(_zeros(w) for w in ws) / sum(w.numel() for w in ws)
        per_layer[str(i)] = row
    scoped = sum(w.numel() for w in weights.values())
    params = {id(p): p for p in model.parameters()}.values()
    return {
        "in_scope": sum(_zeros(w) for w in weights.values()) / max(scoped, 1),
        "whole_model": sum(_zeros(p) for p in params) / sum(p.numel() for p in params),
        "per_layer": per_layer,
        "per_tensor": per_tensor,
        "scoped_weights": scoped,
    }


def _layer_attention(fam: Family, layer) -> list[nn.Module]:
    mods = [m for m, _ in fam.head_outputs(layer, list(range(fam.num_heads(layer))))]
    return list(dict.fromkeys(mods + [fam.head_reader(layer)]))


def _layer_ffn(fam: Family, layer) -> list[nn.Module]:
    return fam.ffn_writers(layer) + [fam.ffn_reader(layer)]


def _zeros(w: torch.Tensor) -> int:
    return int((w == 0).sum())


def compressed_sizes(path: Path) -> dict:
    """The file's size and its gzip (level 6) and zstd (level 3) compressed sizes, in bytes."""
    import zstandard

    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing, as `gzip -6`
    zs = zstandard.ZstdCompressor(level=3).compressobj()
    size = gz_bytes = zs_bytes = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            size += len(chunk)
            gz_bytes += len(gz.compress(chunk))
            zs_bytes += len(zs.compress(chunk))
    gz_bytes += len(gz.flush())
    zs_bytes += len(zs.flush())
    return {"bytes": size, "gzip_bytes": gz_bytes, "zstd_bytes": zs_bytes}
