"""One line per recipe step saying what came out of it, read from the artifacts' manifests.

    finetune: val 0.8123, test 0.8150, best epoch 2/3
    optimize: fused 6 Attention / 6 BiasGelu / 12 SkipLayerNormalization, 1,071 -> 304 nodes
    quantize: int8 dynamic, preset avx512_vnni, 22.8 -> 5.9 MB, fp32 fallbacks 0

A line that cannot be made (an older manifest, a stage without a formatter) is left out: it
describes the run, it never fails it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .artifact import Artifact


def outcome(stage: str, path: Path, measured: list[str] | None = None, config: dict | None = None) -> str:
    """What `stage` produced at `path` (a transform), or measured in `measured` with `config` (evaluate,
    bench); '' if unknown."""
    try:
        if measured is not None:
            fn = MEASURES.get(stage)
            return fn([_Measured(Artifact.load(p), stage, config) for p in measured]) if fn and measured else ""
        art = Artifact.load(path)
        fn = TRANSFORMS.get(stage)
        return fn(art.manifest.lineage[-1].metrics, art) if fn else ""
    except Exception:  # noqa: BLE001  a summary line must never fail a finished step
        return ""


class _Measured:
    """An artifact's results of one measure step: those stored under its stage with its config."""

    def __init__(self, art: Artifact, stage: str, config: dict | None):
        self.name = art.path.name
        wanted = json.loads(json.dumps(config, sort_keys=True, default=str)) if config is not None else None
        self.results = [r for k, r in art.manifest.results.items() if k.startswith(f"{stage}/") and isinstance(r, dict)
                        and (wanted is None or r.get("config") == wanted)]


def _acc(results: dict, split: str) -> float | None:
    for key, value in results.items():
        if key.startswith("evaluate/") and key.endswith(f"/{split}") and isinstance(value, dict):
            return value.get("accuracy")
    return None


def _best_epoch(schedule: dict) -> str:
    history = schedule.get("validation_by_epoch") or []
    if len(history) < 2:
        return ""
    best = schedule.get("best_epoch") or history.index(max(history)) + 1
    return f"best epoch {best}/{len(history)}" + (" (stopped early)" if schedule.get("stopped_early") else "")


def _join(*parts) -> str:
    return ", ".join(str(p) for p in parts if p)


def _params(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


def _mb(n: int | float | None) -> str:
    return "" if n is None else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def finetune(m: dict, art: Artifact) -> str:
    val, test = _acc(art.manifest.results, "validation"), _acc(art.manifest.results, "test")
    return _join(val is not None and f"val {val:.4f}", test is not None and f"test {test:.4f}",
                 _best_epoch(m.get("schedule") or {}))


def distill(m: dict, art: Artifact) -> str:
    student, teacher, v = m.get("student") or {}, m.get("teacher") or {}, m.get("validation") or {}
    score = ("accuracy" in v and f"val {v['accuracy']:.4f}") or \
        ("perplexity" in v and f"perplexity {v['perplexity']:.2f}")
    layers = student.get("num_layers")
    return _join(f"{layers} layer{'s' if layers != 1 else ''}, params {_params(teacher.get('params'))} -> "
                 f"{_params(student.get('params'))}", score, _best_epoch((m.get("train") or {}).get("schedule") or {}))


def prune(m: dict, art: Artifact) -> str:
    if m.get("kind") == "unstructured":
        return f"sparsity {m['sparsity']['in_scope']:.1%} of pruned weights (zeros: file smaller, not faster)"
    heads = f"heads {sum(m['heads_before'])} -> {sum(m['heads_after'])}"
    ffn = f"ffn {sum(m['ffn_before'])} -> {sum(m['ffn_after'])}"
    layers = m["layers_before"] != m["layers_after"] and f"layers {m['layers_before']} -> {m['layers_after']}"
    return _join(f"params {_params(m['params_before'])} -> {_params(m['params_after'])}", heads, ffn, layers,
                 _recovered(m))


def _recovered(m: dict) -> str | bool:
    """prune / trim-vocab --recover: validation accuracy after the recovery distillation."""
    rec = ((m.get("recovery") or {}).get("metrics") or {}).get("validation") or {}
    return "accuracy" in rec and f"recovered val {rec['accuracy']:.4f}"


def trim_vocab(m: dict, art: Artifact) -> str:
    before, after = m.get("score_before") or {}, m.get("score_after") or {}
    score = "accuracy" in after and f"val {before.get('accuracy', 0):.4f} -> {after['accuracy']:.4f}"
    return _join(f"vocab {m['vocab_before']:,} -> {m['vocab_after']:,}",
                 f"params {_params(m['params_before'])} -> {_params(m['params_after'])}", score, _recovered(m))


def export(m: dict, art: Artifact) -> str:
    p = m.get("parity") or {}
    diff = "max_abs_diff" in p and f"parity {p['max_abs_diff']:.1e} (tol {p['atol']:g})"
    return _join(f"model.onnx {_mb(art.onnx_path.stat().st_size)}", diff)


def optimize(m: dict, art: Artifact) -> str:
    fused = " / ".join(f"{n} {op}" for op, n in (m.get("fusions") or {}).items())
    rewrites = " / ".join(f"{k} {v}" for k, v in (m.get("rewrites") or {}).items() if v)
    warn = m.get("warnings") and f"{len(m['warnings'])} warning(s)"
    return _join(f"fused {fused}" if fused else f"rewrote {rewrites}" if rewrites else "nothing fused",
                 f"nodes {m['nodes_before']:,} -> {m['nodes_after']:,}", warn)


def quantize(m: dict, art: Artifact) -> str:
    s = m.get("settings") or {}
    if s.get("mode") == "weight-only":
        kind = f"weight-only int{s.get('bits')} ({s.get('algorithm')})"
    else:
        kind = f"int8 {s.get('mode')}, preset {s.get('preset')}"
    tried = m.get("iterations") or []
    chosen = tried[m.get("chosen_iteration", -1)] if tried else {}
    score = ("accuracy" in chosen and f"val acc {chosen['accuracy']:.4f}"
             or "perplexity" in chosen and f"perplexity {chosen['perplexity']:.2f}")
    kept = (f"int8 layers {len(m.get('int8_nodes') or [])}" if s.get("mode") == "weight-only" and s.get("bits") == 4
            else f"fp32 fallbacks {len(m.get('fp32_nodes') or [])}")
    return _join(kind, f"{_mb(m.get('size_bytes_before'))} -> {_mb(m.get('size_bytes_after'))}", score, kept)


def package(m: dict, art: Artifact) -> str:
    smoke = m.get("smoke") or {}
    source = Path(str(art.manifest.lineage[-1].config.get("source", ""))).name
    return _join(source and f"from {source}", f"bundle {m.get('bundle_mb')} MB, {m.get('files')} files",
                 "smoke test ok" if smoke.get("ok") else smoke and "smoke test FAILED")


def evaluate(arts: list[_Measured]) -> str:
    scores = {}
    for art in arts:
        for r in art.results:
            if "accuracy" in r:
                scores[art.name] = (r["accuracy"], r.get("split"), r.get("n"))
    if not scores:
        return f"{len(arts)} artifact(s) measured"
    (hi, _), (lo, _) = max(scores.items(), key=lambda kv: kv[1][0]), min(scores.items(), key=lambda kv: kv[1][0])
    _, split, n = scores[hi]
    return _join(f"{len(scores)} artifact(s) on {split} (n={n})", f"best {hi} {scores[hi][0]:.4f}",
                 len(scores) > 1 and f"lowest {lo} {scores[lo][0]:.4f}")


def bench(arts: list[_Measured]) -> str:
    p50 = {}
    for art in arts:
        for r in art.results:
            for row in r.get("rows") or []:
                if row.get("artifact") == art.name and row.get("p50_ms") and row.get("batch") == 1:
                    p50[art.name] = row["p50_ms"]
    if not p50:
        return f"{len(arts)} artifact(s) measured"
    fast, slow = min(p50, key=p50.get), max(p50, key=p50.get)
    return _join(f"p50 at batch 1: fastest {fast} {p50[fast]:.2f} ms",
                 len(p50) > 1 and f"slowest {slow} {p50[slow]:.2f} ms")


TRANSFORMS: dict[str, Callable[[dict, Artifact], str]] = {
    "finetune": finetune, "distill": distill, "prune": prune, "trim-vocab": trim_vocab, "export": export,
    "optimize": optimize, "quantize": quantize, "package": package,
}
MEASURES: dict[str, Callable[[list[_Measured]], str]] = {"evaluate": evaluate, "bench": bench}
