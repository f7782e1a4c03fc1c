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


@main.command("run")
@click.argument("recipe", type=click.Path())
@click.option("--out", required=True, type=click.Path(),
              help="Folder of the run: one artifact per step, and the report.")
@click.option("--dry-run", is_flag=True, help="Print which steps would run or be skipped, and why; run nothing.")
@click.option("--force", is_flag=True, help="Re-run every step, replacing what is there.")
@click.option("--quick", is_flag=True, help="Apply the recipe's `quick:` overrides (less data, fewer epochs).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (progress goes to stderr).")
@reports_errors
def run_recipe(recipe, out, dry_run, force, quick, as_json):
    """Run RECIPE (YAML: model, data, steps) into --out, then write the report.

    A step whose input and config are unchanged since it was built is skipped, so an interrupted run
    resumes where it stopped. Recipes for the built-in models are in models/.
    """
    from .recipe import load_recipe, plan, run
    from .report import as_dict, summary, table, write_report

    r = load_recipe(recipe, quick=quick)
    if dry_run:
        decisions = plan(r, out, force=force)
        rows = [[i, d.step.name, d.step.stage, ", ".join(d.step.inputs), "run" if d.run else "skip", d.reason]
                for i, d in enumerate(decisions, 1)]
        data = [{"step": d.step.name, "stage": d.step.stage, "kind": d.step.kind, "inputs": list(d.step.inputs),
                 "run": d.run, "reason": d.reason, "config": d.step.as_dict()["config"]} for d in decisions]
        emit({"recipe": str(recipe), "out": str(out), "quick": quick, "plan": data}, as_json,
             f"plan for {recipe} -> {out}{' (quick)' if quick else ''}: "
             f"{sum(d.run for d in decisions)} to run, {sum(not d.run for d in decisions)} to skip\n"
             + format_table(rows, ["#", "step", "stage", "input", "action", "why"]))
        return
    steps = run(r, out, force=force, echo=(lambda line: click.echo(line, err=True)) if as_json else click.echo)
    report = write_report(out)
    rows, headers = table(report)
    emit({"steps": steps, "report": as_dict(report)}, as_json,
         "\n" + format_table(rows, headers) + "\n\n" + summary(report).replace("**", "") + "\n" + _where(report))


def _where(report) -> str:
    lines = [f"report: {report.folder / 'report.html'} (and report.md)"]
    lines += [f"bundle: {b} (check it: toolchain verify {b})" for b in report.bundles]
    return "\n".join(lines + [f"note: {n}" for n in report.notes])


@main.command("report")
@click.argument("folder", type=click.Path())
@click.option("--other", multiple=True, type=click.Path(),
              help="A `bench --json` file from another machine (repeatable); the file name names the machine.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@reports_errors
def report_cmd(folder, other, as_json):
    """Write FOLDER/report.md and report.html: every artifact's accuracy, size and speed, and which to ship."""
    from .report import as_dict, summary, table, write_report

    report = write_report(folder, list(other))
    rows, headers = table(report)
    emit(as_dict(report), as_json, format_table(rows, headers) + "\n\n" + summary(report).replace("**", "") + "\n"
         + _where(report))


@main.command("package")
@click.argument("artifact", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--target-platform", type=click.Choice(["arm", "amd64"]),
              help="What model.ort is optimized for (default arm).")
@click.option("--no-ort", is_flag=True, help="Do not write model.ort / required_operators.config.")
@click.option("--no-mobile-check", is_flag=True, help="Skip the NNAPI / CoreML usability check.")
@click.option("--max-length", type=int, help="Tokens predict.py keeps per text (default 128).")
@click.option("--force", is_flag=True, help="Replace an existing bundle at OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def package_cmd(artifact, out, target_platform, no_ort, no_mobile_check, max_length, force, as_json):
    """Package an ONNX ARTIFACT as an edge bundle at OUT: model.onnx/.ort, tokenizer, predict.py, manifest."""
    from .package import BUNDLE_FILE, PackageConfig, package

    cfg = _config(PackageConfig, target_platform=target_platform, ort_format=False if no_ort else None,
                  mobile_check=False if no_mobile_check else None, max_length=max_length)
    art = package(artifact, cfg, out, force=force)
    info = json.loads((art.path / BUNDLE_FILE).read_text())
    rows = [[name, (art.path / name).stat().st_size / 1e6, digest[:12]] for name, digest in info["files"].items()]
    mobile = info.get("mobile") or {}
    lines = [f"bundle {art.path}: {info['task']}, opset {info['onnx']['opsets'].get('ai.onnx')}, "
             f"IR {info['onnx']['ir_version']}, onnxruntime >= {info['min_onnxruntime']['model.onnx']}",
             "mobile: " + ("; ".join(f"{ep} {v['as_is']} (fixed shapes: {v['if_shapes_fixed']})"
                                     for ep, v in mobile.items()) if "error" not in mobile else mobile["error"])
             if mobile else "mobile: not checked",
             f"smoke test: ok (max abs diff {max(art.manifest.lineage[-1].metrics['smoke']['models'].values()):.2g})"]
    emit({"bundle": str(art.path), **info}, as_json,
         "\n".join(lines) + "\n" + format_table(rows, ["file", "MB", "sha256"]))


@main.command()
@click.argument("path", type=click.Path())
@click.option("--no-smoke", is_flag=True, help="Check hashes only; do not run the model.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@reports_errors
def verify(path, no_smoke, as_json):
    """Check every file of an artifact or bundle against its sha256; a bundle also runs a smoke inference."""
    from .artifact import Artifact
    from .package import is_bundle, smoke_test

    art = Artifact.load(path)
    problems = art.verify()
    bundle = is_bundle(art.path)
    smoke = smoke_test(art.path, verify_hashes=False) if bundle and not problems and not no_smoke else None
    data = {"path": str(art.path), "files": len(art.manifest.files), "problems": problems, "bundle": bundle,
            "smoke": smoke, "ok": not problems and (smoke is None or smoke["ok"])}
    text = f"{art.path}: {len(art.manifest.files)} files, " + (f"{len(problems)} problem(s)" if problems else "hashes ok")
    if smoke is not None:
        text += "; smoke inference " + ("ok" if smoke["ok"] else f"FAILED: {smoke['problem']}") + " (" + ", ".join(
            f"{m} max abs diff {d:.2g}" for m, d in smoke["models"].items()) + f", atol {smoke['atol']:g})"
    emit(data, as_json, text)
    for p in problems:
        click.secho(f"  {p}", fg="red", err=True)
    if problems:
        sys.exit(9)
    if smoke is not None and not smoke["ok"]:
        sys.exit(7)
