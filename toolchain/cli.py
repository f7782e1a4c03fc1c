"""The `toolchain` command line: a thin click group over the stage functions.

Heavy libraries (torch, onnxruntime) are imported inside commands so `toolchain --help` is instant.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from . import __version__
from .errors import ToolchainError


def reports_errors(fn):
    """Turn the toolchain's own errors into one clear line, its fix, and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ToolchainError as exc:
            click.secho(f"error: {exc.problem}", fg="red", err=True)
            if exc.fix:
                click.echo(f"  fix: {exc.fix}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            sys.exit(130)

    return wrapper


def emit(data, as_json: bool, table=None) -> None:
    """Print `data` as JSON for scripts, or as the human table."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif table is not None:
        click.echo(table)


def format_table(rows: list[list], headers: list[str]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4g}"
    return "" if v is None else str(v)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="toolchain")
def main():
    """Make a Hugging Face transformer smaller and faster, and prove it stayed accurate."""


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--verify/--no-verify", default=True, help="Check every file against its sha256.")
@reports_errors
def info(artifact, as_json, verify):
    """Show what ARTIFACT is and how it was made (its manifest)."""
    from .artifact import Artifact

    art = Artifact.load(artifact)
    problems = art.verify() if verify else []
    data = json.loads(art.manifest.to_json()) | {"path": str(art.path), "content_hash": art.content_hash,
                                                 "size_bytes": art.size_bytes("**/*"), "problems": problems}
    rows = [[r.stage, json.dumps(r.config, sort_keys=True)[:70], f"{r.finished - r.started:.1f}s",
             ", ".join(f"{k}={_fmt(v)}" for k, v in _flat(r.metrics).items())[:90]] for r in art.manifest.lineage]
    head = (f"{art.path}: {art.format} artifact, task {art.task}, model type {art.manifest.model_type}, "
            f"{len(art.manifest.files)} files, {data['size_bytes'] / 1e6:.1f} MB, "
            f"{'verified' if verify and not problems else 'NOT verified' if problems else 'unchecked'}")
    emit(data, as_json, head + "\n" + format_table(rows, ["stage", "config", "time", "metrics"]))
    if problems:
        for p in problems:
            click.secho(f"  {p}", fg="red", err=True)
        sys.exit(9)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


@main.command()
@click.argument("model")
@click.argument("out", type=click.Path())
@click.option("--task", type=click.Choice(["text-classification", "text-generation", "feature-extraction"]),
              help="Task head to export; inferred from the model's architecture when omitted.")
@click.option("--with-past", is_flag=True, help="Export the KV cache as inputs/outputs (text-generation).")
@click.option("--opset", type=int, help="ONNX opset (default: optimum's for the architecture).")
@click.option("--atol", type=float, help="Parity tolerance (max abs diff vs PyTorch).")
@click.option("--trust-remote-code", is_flag=True, help="Run code shipped with a hub model (only if you trust it).")
@click.option("--allow-pickle", is_flag=True, help="Read pickle weights when no safetensors exist.")
@click.option("--force", is_flag=True, help="Replace an existing artifact at OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def export(model, out, task, with_past, opset, atol, trust_remote_code, allow_pickle, force, as_json):
    """Export MODEL (built-in name, folder, torch artifact or hub id) to ONNX at OUT, checked against PyTorch."""
    from .export import ExportConfig, export as run_export

    cfg = _config(ExportConfig, task=task, with_past=with_past, opset=opset, atol=atol,
                  trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    art = run_export(model, cfg, out, force=force)
    m = art.manifest.lineage[-1].metrics
    p = m["parity"]
    emit({"artifact": str(art.path), **m}, as_json,
         f"exported {model} -> {art.onnx_path} ({art.onnx_path.stat().st_size / 1e6:.1f} MB) in {m['export_seconds']:.1f}s\n"
         f"parity vs PyTorch: max abs diff {p['max_abs_diff']:.2e} on {p['worst_output']} "
         f"(tolerance {p['atol']:g}, shapes {p['shapes']}): ok")


def data_options(fn):
    """--data and the column options shared by every command that reads labelled text."""
    for opt in reversed([
        click.option("--data", default="rotten-tomatoes", show_default=True,
                     help="Built-in name, CSV/JSONL/Parquet/.txt path, or hub dataset id (glue/sst2)."),
        click.option("--text-column", default="text", show_default=True),
        click.option("--label-column", default="label", show_default=True),
        click.option("--pair-column", default=None, help="Second text column of sentence-pair tasks."),
    ]):
        fn = opt(fn)
    return fn


@main.command()
@click.argument("model")
@click.argument("out", type=click.Path())
@data_options
@click.option("--epochs", type=float, help="Training epochs (default 3).")
@click.option("--lr", "learning_rate", type=float, help="Learning rate (default 5e-5).")
@click.option("--batch-size", type=int, help="Training batch size (default 32).")
@click.option("--max-length", type=int, help="Tokens per example (default 64).")
@click.option("--seed", type=int, help="Random seed (default 42).")
@click.option("--max-train-samples", type=int, help="Train on the first N examples only.")
@click.option("--trust-remote-code", is_flag=True, help="Run code shipped with a hub model (only if you trust it).")
@click.option("--allow-pickle", is_flag=True, help="Read pickle weights when no safetensors exist.")
@click.option("--force", is_flag=True, help="Replace an existing artifact at OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def finetune(model, out, as_json, force, **options):
    """Fine-tune MODEL into a sequence classifier on --data; best checkpoint by validation accuracy.

    An interrupted run resumes from its last epoch checkpoint when started again with the same options.
    """
    from .finetune import FinetuneConfig, finetune as run_finetune

    art = run_finetune(model, _config(FinetuneConfig, **options), out, force=force)
    results = {k: v for k, v in art.manifest.results.items() if k.startswith("evaluate/")}
    rows = [[k.split("/")[-1], v["accuracy"], v["macro_f1"], v["n"]] for k, v in sorted(results.items())]
    emit({"artifact": str(art.path), **art.manifest.lineage[-1].metrics, "results": results}, as_json,
         f"fine-tuned {model} -> {art.path} in {art.manifest.lineage[-1].metrics['train_seconds']:.0f}s\n"
         + format_table(rows, ["split", "accuracy", "macro F1", "n"]))


@main.command()
@click.argument("artifact")
@data_options
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "validation", "test"]))
@click.option("--reference", help="Another artifact: report how often its predictions agree with ARTIFACT's.")
@click.option("--batch-size", type=int, help="Evaluation batch size (default 32; int8 depends on it).")
@click.option("--max-length", type=int, help="Tokens per example (default 128).")
@click.option("--max-samples", type=int, help="Score only the first N examples.")
@click.option("--window", type=int, help="Causal LM: tokens per perplexity window (default 512).")
@click.option("--stride", type=int, help="Causal LM: tokens scored per window (default 256).")
@click.option("--max-tokens", type=int, help="Causal LM: score only the first N tokens.")
@click.option("--provider", default="cpu", show_default=True, help="ONNX Runtime execution provider.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def evaluate(artifact, reference, provider, as_json, **options):
    """Score ARTIFACT (torch or ONNX) on --data; the result is stored in its manifest.

    Classification: accuracy, macro F1, confusion matrix. Causal LM (use --data hamlet or a .txt):
    perplexity over strided windows, and top-1 agreement with --reference.
    """
    from .evaluate import EvaluateConfig, Runner, evaluate as run_evaluate

    cfg = _config(EvaluateConfig, **options)
    result = run_evaluate(artifact, cfg, reference=reference, runner=Runner(artifact, provider))
    emit(result, as_json, _evaluation_table(artifact, result))


def _evaluation_table(artifact, r: dict) -> str:
    if "perplexity" in r:
        rows = [[artifact, r["perplexity"], r["tokens"], r.get("top1_agreement")]]
        return format_table(rows, ["artifact", "perplexity", "tokens", "top-1 agreement"])
    rows = [[artifact, r["split"], r["accuracy"], r["macro_f1"], r.get("agreement"), r["n"], r["batch_size"]]]
    table = format_table(rows, ["artifact", "split", "accuracy", "macro F1", "agreement", "n", "batch"])
    labels = r["labels"]
    cm = format_table([[labels[i]] + row for i, row in enumerate(r["confusion_matrix"])],
                      ["true \\ predicted"] + labels)
    return table + "\n\n" + cm


def _config(cls, **kwargs):
    """Build a stage config from CLI options; a bad value is a clear error, not a traceback."""
    from .config import config_from_dict

    return config_from_dict(cls, {k: v for k, v in kwargs.items() if v is not None}, where="option")


@main.command()
@click.argument("model")
@click.argument("out", type=click.Path())
@click.option("--sparsity", type=float, help="Unstructured: fraction of in-scope weights to zero, smallest |w| first.")
@click.option("--threshold", type=float, help="Unstructured: zero the in-scope weights with |w| below this.")
@click.option("--granularity", type=click.Choice(["global", "layer"]),
              help="Unstructured: rank |w| across all scoped matrices (global) or within each (layer).")
@click.option("--scope", help="Unstructured: groups to prune: attention,ffn (default), embeddings, classifier.")
@click.option("--modules", help="Unstructured: module names or patterns instead of --scope, comma-separated.")
@click.option("--heads", type=float, help="Structured: fraction of attention heads to remove (GQA: whole groups).")
@click.option("--ffn", type=float, help="Structured: fraction of FFN intermediate neurons to remove.")
@click.option("--heads-per-layer", help="Structured: query heads to keep in each layer, e.g. 9,9,9,9,9,9.")
@click.option("--ffn-per-layer", help="Structured: FFN neurons to keep in each layer, e.g. 768,768,...")
@click.option("--layers", type=int, help="Structured: whole layers to remove, least important first.")
@click.option("--drop-layers", help="Structured: layer indices to remove, e.g. 1,3.")
@click.option("--ranking", type=click.Choice(["layer", "global"]),
              help="Apply ratios within each layer (default, uniform shapes) or rank units across layers.")
@click.option("--importance", type=click.Choice(["magnitude", "taylor", "activation"]),
              help="How units are ranked: weight norms (default) or calibration data (taylor, activation).")
@click.option("--empty-layer", type=click.Choice(["refuse", "drop"]),
              help="A layer left with no heads or no FFN neurons: error (default) or remove the layer.")
@click.option("--data", help="Calibration and recovery data (default rotten-tomatoes, hamlet for LMs).")
@click.option("--samples", type=int, help="Calibration examples for taylor / activation importance (default 32).")
@click.option("--max-length", type=int, help="Tokens per calibration example (default 128).")
@click.option("--recover", is_flag=True, help="Then distil from the unpruned model; the pruned model stays at OUT-pruned.")
@click.option("--recover-epochs", type=int, help="Epochs of recovery distillation (default 1).")
@click.option("--task", type=click.Choice(["text-classification", "text-generation", "feature-extraction"]),
              help="Task head to load; inferred from the model's architecture when omitted.")
@click.option("--trust-remote-code", is_flag=True, help="Run code shipped with a hub model (only if you trust it).")
@click.option("--allow-pickle", is_flag=True, help="Read pickle weights when no safetensors exist.")
@click.option("--force", is_flag=True, help="Replace an existing artifact at OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def prune(model, out, sparsity, threshold, granularity, scope, modules, heads, ffn, heads_per_layer, ffn_per_layer,
          layers, drop_layers, ranking, importance, empty_layer, data, samples, max_length, recover, recover_epochs,
          task, trust_remote_code, allow_pickle, force, as_json):
    """Prune MODEL into a PyTorch artifact at OUT: zero small weights (--sparsity / --threshold), or remove
    attention heads, FFN neurons and layers (--heads / --ffn / --layers), which really shrinks the model."""
    from .prune import PruneConfig, prune as run_prune

    cfg = _config(PruneConfig, sparsity=sparsity, threshold=threshold, granularity=granularity,
                  scope=_items(scope), modules=_items(modules), heads=heads, ffn=ffn,
                  heads_per_layer=_ints(heads_per_layer, "--heads-per-layer"),
                  ffn_per_layer=_ints(ffn_per_layer, "--ffn-per-layer"), layers=layers,
                  drop_layers=_ints(drop_layers, "--drop-layers"), ranking=ranking, importance=importance,
                  empty_layer=empty_layer, data=data, samples=samples, max_length=max_length, recover=recover or None,
                  recover_epochs=recover_epochs, task=task, trust_remote_code=trust_remote_code,
                  allow_pickle=allow_pickle)
    art = run_prune(model, cfg, out, force=force)
    record = art.manifest.lineage[-1]
    m = art.manifest.results.get("prune") or record.metrics
    text = _unstructured_text(m) if m["kind"] == "unstructured" else _structured_text(m)
    if record.stage != "prune":
        text += f"\nrecovered by {record.stage} -> {art.path}: " + ", ".join(
            f"{k}={_fmt(v)}" for k, v in _flat(record.metrics).items())[:300]
    data = {"artifact": str(art.path), **m}
    if record.stage != "prune":
        data["recovery"] = {"stage": record.stage, "metrics": record.metrics}
    emit(data, as_json, f"pruned {model} -> {art.path}\n{text}")


def _items(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str | None, name: str) -> list[int] | None:
    try:
        return None if value is None else [int(v) for v in _items(value)]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint=name) from None


def _structured_text(m: dict) -> str:
    kept = [i for i in range(m["layers_before"]) if i not in m["dropped_layers"]]
    rows = []
    for i in range(m["layers_before"]):
        if i in kept:
            j = kept.index(i)
            rows.append([i, f"{m['heads_before'][i]} -> {m['heads_after'][j]}",
                         f"{m['ffn_before'][i]} -> {m['ffn_after'][j]}", "kept"])
        else:
            rows.append([i, "", "", "removed" + (" (no heads or FFN left)" if i in m["dropped_because_empty"] else "")])
    s, r = m["surgery_check"], m["reload_check"]
    return (f"structured ({m['importance']} importance): {m['params_before'] / 1e6:.2f}M -> "
            f"{m['params_after'] / 1e6:.2f}M params ({1 - m['params_after'] / m['params_before']:.1%} fewer), "
            f"{m['layers_before']} -> {m['layers_after']} layers\n"
            + format_table(rows, ["layer", "heads", "ffn", "layer kept?"])
            + f"\nchecks in float64: shrunk vs the masked original max abs diff {s['max_abs_diff']:.2e} "
              f"(tol {s['atol']:g}); saved and reloaded {r['max_abs_diff']:.2e} (tol {r['atol']:g}): ok")


def _unstructured_text(m: dict) -> str:
    sp = m["sparsity"]
    rows = [[i, f"{v['attention']:.1%}", f"{v['ffn']:.1%}"] for i, v in sp["per_layer"].items()]
    f, src = m["file"], m.get("source_file")
    size = lambda d: (f"{d['bytes'] / 1e6:.1f} MB, gzip {d['gzip_bytes'] / 1e6:.1f} MB, "  # noqa: E731
                      f"zstd {d['zstd_bytes'] / 1e6:.1f} MB")
    return (f"unstructured ({m['granularity']}): {sp['in_scope']:.1%} of the pruned weights are zero "
            f"({sp['whole_model']:.1%} of all parameters)\n" + format_table(rows, ["layer", "attention", "ffn"])
            + f"\nweights: {size(f)}" + (f"\nsource:  {size(src)}" if src else "")
            + f"\nNOTE: {m['note']}")
