"""The `toolchain` command line: a thin click group over the stage functions.

Heavy libraries (torch, onnxruntime) are imported inside commands so `toolchain --help` is instant.
"""

from __future__ import annotations

import functools
import json
import signal
import os
import sys
import threading
import typing

import click

from . import __version__
from .errors import INTERNAL_ERROR_EXIT, ToolchainError, from_exception


def reports_errors(fn):
    """Turn the toolchain's own errors into one clear line, its fix, and the error's exit code.

    SIGTERM (what `kill`, schedulers and containers send) is handled like Ctrl-C: the stage unwinds,
    its partial output is removed, previous artifacts stay as they were.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = _terminate_like_interrupt()
        try:
            return fn(*args, **kwargs)
        except ToolchainError as exc:
            _fail(exc)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: usage errors (printed with the help hint), --help's exit, an aborted prompt
        except Exception as exc:  # noqa: BLE001  every error is one line: a disk full anywhere, or a bug
            if os.environ.get("TOOLCHAIN_DEBUG"):
                raise
            known = from_exception(exc)
            if known is not None:
                _fail(known)
            _fail(ToolchainError(f"internal error: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}",
                                 "this is a bug in toolchain: run again with TOOLCHAIN_DEBUG=1 and report the traceback"),
                  INTERNAL_ERROR_EXIT)
        except KeyboardInterrupt as exc:
            signum = exc.args[0] if exc.args and isinstance(exc.args[0], int) else signal.SIGINT
            click.echo(f"interrupted ({signal.Signals(signum).name}): no new artifact was written; "
                       "earlier ones are untouched", err=True)
            click.echo("  fix: run the same command again (finetune resumes from its last checkpoint)", err=True)
            sys.exit(128 + signum)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _fail(exc: ToolchainError, code: int | None = None):
    click.secho(f"error: {exc.problem}", fg="red", err=True)
    if exc.fix:
        click.echo(f"  fix: {exc.fix}", err=True)
    sys.exit(code or exc.exit_code)


def _terminate_like_interrupt():
    """Make SIGTERM raise KeyboardInterrupt(SIGTERM); returns the handler to restore (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(signum)

    return signal.signal(signal.SIGTERM, handler)


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


def target_option(fn):
    """--target for `run`: where the recipe's models will run (toolchain/targets.py)."""
    from .targets import TARGETS

    return click.option("--target", type=click.Choice(list(TARGETS)),
                        help="Where the model will run: decides fusions, int8 format, fixed shapes and the "
                             ".ort platform (default: each recipe's, else host).")(fn)


def emulate_options(fn):
    """verify's --emulate ARCH, and an --emulate-* option for each other field of EmulateConfig."""
    from .config import config_options
    from .emulate import EmulateConfig

    fn = config_options(EmulateConfig, prefix="emulate_", skip=("arch",))(fn)
    arches = typing.get_args(typing.get_type_hints(EmulateConfig)["arch"])
    return click.option("--emulate", type=click.Choice(arches),
                        help="Also run the bundle on this CPU under qemu: its predict.py and smoke test, compared "
                             "with x86.")(fn)


def stage_options(name: str, *, output: bool = True):
    """A stage's options, one per field of its config (toolchain/stages.py), then --force and --json."""
    from .config import config_options
    from .stages import stage

    def decorate(fn):
        fn = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)
        if output:
            fn = click.option("--force", is_flag=True, help="Replace an existing artifact at OUT.")(fn)
        return config_options(stage(name).config)(fn)

    return decorate


class Command(click.Command):
    """A command that names the new spelling of a renamed option (--lr: --learning-rate) instead of a guess."""

    def parse_args(self, ctx, args):
        from .config import new_names

        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            old = exc.option_name.lstrip("-").replace("-", "_")
            flags = {p.name: p.opts[0] for p in self.params if isinstance(p, click.Option)}
            new = [flags[n] for n in new_names(old) if n in flags]
            if not new:
                raise
            raise click.NoSuchOption(exc.option_name, f"{exc.option_name} was renamed to {new[0]}.", ctx=ctx) from None


class Group(click.Group):
    command_class = Command


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="toolchain")
@click.option("-v", "--verbose", is_flag=True, help="Also show library messages (kept in the run's toolchain.log).")
@click.option("-q", "--quiet", is_flag=True, help="Print results and errors only: no progress, no step lines.")
def main(verbose, quiet):
    """Make a Hugging Face transformer smaller and faster, and prove it stayed accurate."""
    from . import console

    console.set_level(console.QUIET if quiet else console.VERBOSE if verbose else console.NORMAL)
    console.hush_library_warnings()
    calm_openmp()


def calm_openmp() -> None:
    """On a busy machine, let torch's OpenMP threads sleep at barriers instead of spinning for cores that
    other jobs hold: a distillation beside another job ran at 1.1 it/s spinning, 3.3 it/s sleeping.
    OpenMP reads OMP_WAIT_POLICY once, when torch loads, so this acts only before that."""
    if "torch" in sys.modules:
        return
    from .bench.machine import calm_openmp as calm, usable_cores

    calm(usable_cores())


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
    from .console import duration

    rows = [[r.stage, json.dumps(r.config, sort_keys=True)[:70], duration(r.finished - r.started),
             ", ".join(f"{k}={_fmt(v)}" for k, v in _flat(r.metrics).items())[:90]] for r in art.manifest.lineage]
    head = (f"{art.path}: {art.format} artifact, task {art.task}, model type {art.manifest.model_type}, "
            f"{len(art.manifest.files)} files, {data['size_bytes'] / 1e6:.1f} MB, "
            f"{'verified' if verify and not problems else 'NOT verified' if problems else 'unchecked'}")
    emit(data, as_json, head + "\n" + format_table(rows, ["stage", "config", "time", "metrics"]))
    _raise_problems(art.path, problems)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--smoke", is_flag=True, help="Also run one inference on sample text (ONNX artifacts).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@emulate_options
@reports_errors
def verify(path, smoke, as_json, emulate, **emulation):
    """Check every file of the artifact or edge bundle at PATH against its manifest.

    Changed, missing or extra files exit 9. A bundle is also run once (model.onnx and model.ort) and
    compared with the outputs stored when it was packaged. --emulate arm64 then runs the bundle on an
    emulated ARM64 Linux (set up once in ~/.cache/toolchain; needs qemu-user-static) and records the
    verdict in bundle.json. Emulation proves correctness, not speed: no emulated time is kept.
    """
    import dataclasses

    from .verify import verify as run_verify

    report = run_verify(path, smoke=smoke)
    if emulate:
        _raise_problems(report.path, report.problems)
        _verify_emulated(report, path, emulate, emulation)
    head = (f"{report.path}: {report.kind}, {report.files} files, "
            + (f"{len(report.problems)} problem(s)" if report.problems else "every hash matches"))
    if report.smoke and "models" in report.smoke:  # a bundle: diffs against the packaged outputs
        head += "\nsmoke inference: ok (" + ", ".join(
            f"{m} max abs diff {d:.2g}" for m, d in report.smoke["models"].items()) + f", atol {report.smoke['atol']:g})"
    elif report.smoke:
        head += "\nsmoke inference: " + ", ".join(f"{k} {v}" for k, v in report.smoke["outputs"].items()) + ", finite"
    if report.smoke and "emulated" in report.smoke:
        head += "\n" + _emulated_line(report.smoke["emulated"])
    emit(dataclasses.asdict(report), as_json, head)
    _raise_problems(report.path, report.problems)


def _verify_emulated(report, path, arch: str, emulation: dict) -> None:
    """Run the bundle under emulation; the verdict goes into the report's smoke record and bundle.json."""
    from .emulate import EmulateConfig, emulate, root_dir

    cfg = _config(EmulateConfig, arch=arch, **{k.removeprefix("emulate_"): v for k, v in emulation.items()})
    first = "" if (root_dir() / "ready.json").is_file() else "; setting up the arm64 Python first (once, minutes)"
    click.echo(f"running {path} on emulated {cfg.arch} ({cfg.cpu}){first}...", err=True)
    result = emulate(path, cfg)
    report.smoke = (report.smoke or {}) | {"emulated": result}


def _emulated_line(r: dict) -> str:
    p = r["predict_py"]
    same = (f"labels {p['labels_match']}/{p['texts']} as on x86, logits max abs diff {p['max_abs_diff']:.2g}"
            if "labels_match" in p else "same tokens as on x86" if "tokens_match" in p
            else f"embeddings max abs diff {p['max_abs_diff']:.2g} from x86")
    smoke = ", ".join(f"{m} {d:.2g}" for m, d in r["smoke"]["models"].items())
    return (f"{r['arch']} ({r['cpu']}, {r['emulator']}, onnxruntime {r['guest'].get('onnxruntime')}): ok; "
            f"predict.py: {same}; smoke vs packaged outputs: {smoke} (atol {r['atol']:g}); recorded in bundle.json"
            f"\n  {r['note']}")


def _raise_problems(path, problems: list[str]) -> None:
    """List every changed, missing or extra file, then fail with exit 9 (IntegrityError)."""
    from .errors import IntegrityError

    for p in problems:
        click.secho(f"  {p}", fg="red", err=True)
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise IntegrityError(f"{path} does not match its manifest: {problems[0]}{more}",
                             "rebuild it with the stage that made it; do not ship it")


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
@stage_options("export")
@reports_errors
def export(model, out, force, as_json, **options):
    """Export MODEL (built-in name, folder, torch artifact or hub id) to ONNX at OUT, checked against PyTorch."""
    from .export import ExportConfig, export as run_export

    cfg = _config(ExportConfig, **options)
    art = run_export(model, cfg, out, force=force)
    m = art.manifest.lineage[-1].metrics
    p = m["parity"]
    emit({"artifact": str(art.path), **m}, as_json,
         f"exported {model} -> {art.onnx_path} ({_onnx_mb(art.onnx_path):.1f} MB) in {m['export_seconds']:.1f}s\n"
         f"parity vs PyTorch: {_parity_text(p)} on {p['worst_output']} "
         f"(tolerance {p.get('atol', p.get('rtol')):g}, shapes {p['shapes']}): ok")


def _onnx_mb(path) -> float:
    """model.onnx and its external data (model.onnx.data), in MB."""
    return sum(f.stat().st_size for f in [path, *path.parent.glob(path.name + ".*")]) / 1e6


def _parity_text(p: dict) -> str:
    if "rel_l2_diff" in p:
        return f"relative L2 error of log-probabilities {p['rel_l2_diff']:.3g}"
    return f"max abs diff {p['max_abs_diff']:.2e}"


@main.command()
@click.argument("model")
@click.argument("out", type=click.Path())
@stage_options("finetune")
@reports_errors
def finetune(model, out, as_json, force, **options):
    """Fine-tune MODEL into a sequence classifier on --data; best checkpoint by validation accuracy.

    An interrupted run resumes from its last epoch checkpoint when started again with the same options.
    """
    from .finetune import FinetuneConfig, finetune as run_finetune

    import contextlib

    cfg = _config(FinetuneConfig, **options)
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs on stdout: keep it for the result
        art = run_finetune(model, cfg, out, force=force)
    results = {k: v for k, v in art.manifest.results.items() if k.startswith("evaluate/")}
    rows = [[k.split("/")[-1], v["accuracy"], v["macro_f1"], v["n"]] for k, v in sorted(results.items())]
    emit({"artifact": str(art.path), **art.manifest.lineage[-1].metrics, "results": results}, as_json,
         f"fine-tuned {model} -> {art.path} in {art.manifest.lineage[-1].metrics['train_seconds']:.0f}s\n"
         + format_table(rows, ["split", "accuracy", "macro F1", "n"]))


@main.command()
@click.argument("artifact")
@stage_options("evaluate", output=False)
@click.option("--reference", help="Another artifact: report how often its predictions agree with ARTIFACT's.")
@click.option("--provider", default="cpu", show_default=True, help="ONNX Runtime execution provider.")
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
    if "baseline" in r:
        b = r["baseline"]
        rows.append([f"baseline: {b['model']} (C={b['C']:g})", b["split"], b["accuracy"], b["macro_f1"], None,
                     b["n"], None])
    table = format_table(rows, ["artifact", "split", "accuracy", "macro F1", "agreement", "n", "batch"])
    table += "".join(f"\n{line}" for line in (r.get("note"), r.get("baseline_verdict"), r.get("baseline_skipped") and
                                               f"baseline not scored: {r['baseline_skipped']}") if line)
    labels = r["labels"]
    cm = format_table([[labels[i]] + row for i, row in enumerate(r["confusion_matrix"])],
                      ["true \\ predicted"] + labels)
    return table + "\n\n" + cm


@main.command()
@click.argument("artifact")
@click.argument("out", type=click.Path())
@stage_options("optimize")
@reports_errors
def optimize(artifact, out, force, as_json, **options):
    """Fuse ARTIFACT (ONNX) with ONNX Runtime's transformer optimizer into OUT, checked against ARTIFACT."""
    from .optimize import OptimizeConfig, optimize as run_optimize

    cfg = _config(OptimizeConfig, **options)
    art = run_optimize(artifact, cfg, out, force=force)
    m = art.manifest.lineage[-1].metrics
    p = m["parity"]
    diff = p.get("max_abs_diff", p.get("rel_l2_diff"))
    fusions = ", ".join(f"{k} {v}" for k, v in m["fusions"].items()) or "none"
    how = (f"fusions ({m['optimizer_model_type']}): {fusions}" if "optimizer_model_type" in m else
           f"target {m['target']['target']}: standard ONNX ops only; rewrites: "
           + (", ".join(f"{k} {v}" for k, v in m["rewrites"].items()) or "none"))
    ready = m.get("readiness")
    if ready:
        how += (f"\n{ready['ep']} (shapes fixed): {ready['supported_nodes']}/{ready['nodes']} nodes "
                f"({ready['share']:.0%}), {ready['partitions']} partition(s): {ready['suitability']}")
    emit({"artifact": str(art.path), **m}, as_json,
         f"optimized {artifact} -> {art.onnx_path} ({m['size_bytes_after'] / 1e6:.1f} MB, "
         f"{m['nodes_before']} -> {m['nodes_after']} nodes) in {m['optimize_seconds']:.1f}s\n"
         f"{how}\n"
         f"parity vs parent: {'relative L2 error' if 'rtol' in p else 'max abs diff'} {diff:.2e} on {p['worst_output']} "
         f"(tolerance {p.get('atol', p.get('rtol')):g}): ok")


@main.command()
@click.argument("artifact")
@click.argument("out", type=click.Path())
@stage_options("quantize")
@reports_errors
def quantize(artifact, out, force, as_json, **options):
    """Quantize ARTIFACT (ONNX) to int8 at OUT: dynamic, or static QDQ calibrated on task data.

    With --max-accuracy-drop (or --max-perplexity-increase) the most sensitive nodes go back to float32
    until the int8 model is within budget on the validation split; exit code 7 if it never is.
    """
    from .quantize import QuantizeConfig, quantize as run_quantize

    cfg = _config(QuantizeConfig, **options)
    art = run_quantize(artifact, cfg, out, force=force)
    m = art.manifest.lineage[-1].metrics
    emit({"artifact": str(art.path), **m}, as_json, _quantize_report(artifact, art, m))
    if m.get("within_budget") is False:
        which = "perplexity" if cfg.max_perplexity_increase is not None else "accuracy"
        click.secho(f"error: {which} budget not met; the best model found is at {art.path}", fg="red", err=True)
        fix = ("more --max-iterations (more int4 layers go to int8), or --bits 8" if cfg.mode == "weight-only"
               else "use --mode dynamic, or calibrate on more samples")
        click.echo(f"  fix: raise the budget, {fix}", err=True)
        sys.exit(7)


def _reasons(m: dict) -> str:
    why = dict(m["fp32_reasons"]) | ({"accuracy loop": len(m["fallback_nodes"])} if "fallback_nodes" in m else {})
    why = {k: v for k, v in why.items() if v}
    return f" ({', '.join(f'{k}: {v}' for k, v in why.items())})" if why else ""


def _quantize_report(artifact, art, m: dict) -> str:
    s = m["settings"]
    if s["mode"] == "weight-only":
        return _weight_only_report(artifact, art, m)
    ops = ", ".join(f"{k} {v}" for k, v in m["quantized_ops"].items())
    lines = [f"quantized {artifact} -> {art.onnx_path} ({s['mode']}, target {s.get('target', 'host')}, preset "
             f"{s['preset']}: {s['activation_type']} activations, {s['weight_type']} weights, reduce_range "
             f"{s['reduce_range']}, per-channel {s['per_channel']}) in {m['quantize_seconds']:.0f}s",
             f"preset: {s['detected']}",
             f"size {m['size_bytes_before'] / 1e6:.1f} MB -> {m['size_bytes_after'] / 1e6:.1f} MB "
             f"({m['size_ratio']:.2f}x smaller); ops: {ops}",
             f"parity vs float32: relative L2 error {m['parity']['rel_l2_diff']:.3g} on {m['parity']['worst_output']} "
             f"(tolerance {m['parity']['rtol']:g}): ok",
             f"float32 nodes: {len(m['fp32_nodes'])}" + _reasons(m)]
    if m.get("readiness"):
        r = m["readiness"]
        lines.append(f"{r['ep']} (shapes fixed): {r['supported_nodes']}/{r['nodes']} nodes ({r['share']:.0%}), "
                     f"{r['partitions']} partition(s): {r['suitability']}")
    if m.get("run_time_scaled"):
        lines.append("activation scales set per run (integer kernels, no QDQ form): "
                     + ", ".join(f"{k} {v}" for k, v in m["run_time_scaled"].items()))
    if "iterations" in m:
        b = m["budget"]
        rows = [[i, it["fp32_nodes"], it[b["metric"]], it["cost"], "yes" if it["within_budget"] else "no"]
                for i, it in enumerate(m["iterations"])]
        lines += ["", f"accuracy loop on {b['split']} (batch {b['batch_size']}): float32 parent {b['metric']} "
                      f"{b['parent']:.4g}, budget {b['limit']:g}",
                  format_table(rows, ["iteration", "fp32 nodes", b["metric"], "cost", "within budget"])]
    return "\n".join(lines + [f"warning: {w}" for w in m["warnings"]])


def _weight_only_report(artifact, art, m: dict) -> str:
    s, nodes = m["settings"], m["weight_only"]["nodes"]
    layers = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in nodes.items() if v)
    lines = [f"quantized {artifact} -> {art.onnx_path} (weight-only {s['bits']}-bit {s['algorithm']}"
             f"{' act-order' if s.get('act_order') else ''}, block {s['block_size']}, "
             f"{'symmetric' if s['symmetric'] else 'asymmetric'}, accuracy level {s['accuracy_level']}"
             f"{', bias-corrected' if s.get('bias_correction') else ''}) in {m['quantize_seconds']:.0f}s",
             f"size {m['size_bytes_before'] / 1e6:.1f} MB -> {m['size_bytes_after'] / 1e6:.1f} MB "
             f"({m['size_ratio']:.2f}x smaller); layers: {layers}",
             f"parity vs float32: relative L2 error {m['parity']['rel_l2_diff']:.3g} on {m['parity']['worst_output']} "
             f"(tolerance {m['parity']['rtol']:g}): ok"]
    if "iterations" in m:
        b = m["budget"]
        rows = [[i, it["int8_nodes"], it[b["metric"]], it["cost"], "yes" if it["within_budget"] else "no"]
                for i, it in enumerate(m["iterations"])]
        worst = ", ".join(f"{r['node']} {r['sqnr_db']:.1f} dB" for r in m["sensitivity"][:3])
        lines += ["", f"mixed-precision loop on {b['split']}: float32 {b['metric']} {b['parent']:.4g}, budget {b['limit']:g}",
                  format_table(rows, ["iteration", "int8 layers", b["metric"], "cost", "within budget"]),
                  f"most sensitive at int4 (output SQNR): {worst}"]
    return "\n".join(lines + [f"warning: {w}" for w in m["warnings"]])


def _config(cls, **kwargs):
    """Build a stage config from CLI options; a bad value is a clear error, not a traceback."""
    from .config import config_from_dict

    return config_from_dict(cls, {k: v for k, v in kwargs.items() if v is not None}, where="option")


@main.command()
@click.argument("artifacts", nargs=-1, required=True)
@stage_options("bench", output=False)
@reports_errors
def bench(artifacts, as_json, **options):
    """Time ARTIFACTS (torch or ONNX) side by side: latency, throughput, memory, fraction of the machine's peak."""
    from tqdm import tqdm

    from .bench import BenchConfig, bench as run_bench
    from .bench.results import table_rows

    cfg = _config(BenchConfig, **options)
    n_shapes = len(cfg.batch) * (1 if cfg.data else len(cfg.seq))
    total = len(cfg.providers) * len(artifacts) * n_shapes * (cfg.runs + cfg.warmup)
    with tqdm(total=total, desc="bench", unit="call", leave=False, disable=None) as bar:
        result = run_bench(list(artifacts), cfg, progress=bar.update)
    rows, headers = table_rows(result)
    emit(result, as_json, _bench_header(result) + "\n" + format_table(rows, headers) + _bench_footer(result))


def _bench_header(result: dict) -> str:
    m = result["machine"]
    isa = " ".join(k.upper().replace("AVX512", "AVX-512") for k, v in m["isa"].items() if v) or "no SIMD flags read"
    gpu = ", ".join(f"{g['name']} (driver {g['driver']})" for g in m["gpu"]) or "no GPU"
    ort = m["onnxruntime"]
    peaks = "; ".join(f"{k} {v['gflops']:.0f} GFLOP/s ({v['source']})" if v.get("gflops") else f"{k}: {v.get('error')}"
                      for k, v in result["peaks"].items())
    return (f"machine: {m['cpu_model']}, {m['cores_usable']} usable cores, {m['threads_used']} threads used, {isa}; "
            f"onnxruntime {ort['version']} ({', '.join(p.replace('ExecutionProvider', '') for p in ort['providers'])}); "
            f"{gpu}\nthreads: {m.get('threads_why', m['threads_used'])}; {m.get('openmp', 'OpenMP default wait policy')}\n"
            f"peak (GEMM): {peaks or 'not measured'}; speedup vs {result['baseline']} (its p50 / p50)\n")


def _bench_footer(result: dict) -> str:
    stored = [f"{a['label']}: {', '.join(a['stored_as'])}" for a in result["artifacts"] if a["stored_as"]]
    return "\nstored in manifests: " + "; ".join(stored) if stored else ""


@main.command()
@click.argument("teacher")
@click.argument("out", type=click.Path())
@stage_options("distill")
@reports_errors
def distill(teacher, out, force, as_json, **options):
    """Distill TEACHER (torch artifact, folder or built-in) into a smaller student at OUT.

    \b
    toolchain distill runs/teacher runs/student --student-layers 0,2,4 -T 2 --alpha 0.5
    torchrun --nproc_per_node 4 -m toolchain distill runs/teacher runs/student --student-layers 3
    """
    import contextlib

    from .distill import DistillConfig, distill as run_distill

    cfg = _config(DistillConfig, **options)
    # Trainer prints its logs on stdout; keep stdout for the result (JSON for scripts).
    with contextlib.redirect_stdout(sys.stderr):
        art = run_distill(teacher, cfg, out, force=force)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, process 0 reports
    m = art.manifest.lineage[-1].metrics
    v, t, s = m["validation"], m["train"], m["student"]
    if "accuracy" in v:
        score = f"validation accuracy {v['accuracy']:.4f}, macro F1 {v['macro_f1']:.4f} ({v['n']} examples)"
    else:
        teacher_ppl = m["teacher"]["validation"]["perplexity"]
        score = f"held-out perplexity {v['perplexity']:.2f} (teacher {teacher_ppl:.2f}, {v['tokens']} tokens)"
    rows = [[i + 1] + [e.get(k) for k in ("total", "ce", "kd", "hidden", "attention")]
            for i, e in enumerate(t["losses_by_epoch"])]
    emit({"artifact": str(art.path), **m}, as_json,
         f"distilled {teacher} -> {art.path}: {s['num_layers']}-layer student, {s['params'] / 1e6:.2f}M params "
         f"(teacher {m['teacher']['params'] / 1e6:.2f}M), trained in {t['wall_seconds']:.1f}s on {t['device']} "
         f"x{t['world_size']}\n{score}\n" + format_table(rows, ["epoch", "loss", "ce", "kd", "hidden", "attention"]))


@main.command()
@click.argument("model")
@click.argument("out", type=click.Path())
@stage_options("prune")
@reports_errors
def prune(model, out, force, as_json, **options):
    """Prune MODEL into a PyTorch artifact at OUT: zero small weights (--sparsity / --threshold), or remove
    attention heads, FFN neurons and layers (--heads / --ffn / --layers), which really shrinks the model."""
    from .prune import PruneConfig, prune as run_prune

    cfg = _config(PruneConfig, **options)
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


@main.command("trim-vocab")
@click.argument("model")
@click.argument("out", type=click.Path())
@stage_options("trim-vocab")
@reports_errors
def trim_vocab(model, out, as_json, force, **options):
    """Trim MODEL's vocabulary to the tokens its task text uses: a smaller embedding (and LM head), a
    rewritten tokenizer, the same outputs on that text; held-out text is measured before and after."""
    from .trim_vocab import TrimVocabConfig, trim_vocab as run_trim

    cfg = _config(TrimVocabConfig, **options)
    art = run_trim(model, cfg, out, force=force)
    m = art.manifest.lineage[-1].metrics
    emit({"artifact": str(art.path), **m}, as_json, f"trimmed {model} -> {art.path}\n" + _trim_text(m))


def _trim_text(m: dict) -> str:
    k, h, p = m["kept"], m["held_out"], m["parity"]
    lines = [f"{m['tokenizer']} vocabulary {m['vocab_before']} -> {m['vocab_after']} rows "
             f"({k['special']} special, {k['coverage']} characters/bytes, {k['used_in_training_text']} of the "
             f"{k['used_total']} tokens the training text uses" + (f", {k['merge_ancestors']} merge steps"
                                                                   if k["merge_ancestors"] else "")
             + (f"; {k['dropped_used_by_cap']} used tokens dropped by --max-vocab" if k["dropped_used_by_cap"] else "")
             + ")",
             f"params {m['params_before'] / 1e6:.2f}M -> {m['params_after'] / 1e6:.2f}M "
             f"({1 - m['params_after'] / m['params_before']:.1%} fewer)",
             f"held-out text ({h['texts']} texts, {h['tokens']} tokens): {h['tokens_dropped_share']:.2%} of tokens "
             f"dropped, {h['texts_changed_share']:.1%} of texts tokenize differently, "
             f"{h['length_ratio'] - 1:+.2%} tokens, [UNK] {h['unk_share_before']:.2%} -> {h['unk_share_after']:.2%}"]
    before, after = m["score_before"], m["score_after"]
    if before:
        metric = "accuracy" if "accuracy" in before else "bits_per_char"
        lines.append(f"{metric} on {before['split']}: {before[metric]:.4f} -> {after[metric]:.4f}")
    lines.append(f"checks: {m['train_tokenization']['texts_checked']} training texts tokenize id for id as before; "
                 f"saved and reloaded model vs original max abs diff {p['max_abs_diff']:.2e} (tol {p['atol']:g}): ok")
    return "\n".join(lines)


@main.command("run")
@click.argument("recipe", type=click.Path())
@click.option("--out", required=True, type=click.Path(),
              help="Folder of the run: one artifact per step, and the report.")
@click.option("--dry-run", is_flag=True, help="Print which steps would run or be skipped, and why; run nothing.")
@click.option("--force", is_flag=True, help="Re-run every step, replacing what is there.")
@click.option("--quick", is_flag=True, help="Apply the recipe's `quick:` overrides (less data, fewer epochs).")
@target_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (progress goes to stderr).")
@reports_errors
def run_recipe(recipe, out, dry_run, force, quick, target, as_json):
    """Run RECIPE (YAML: model, data, steps) into --out, then write the report.

    A step whose input and config are unchanged since it was built is skipped, so an interrupted run
    resumes where it stopped. Recipes for the built-in models are in models/.
    """
    from .guard import output_lock
    from .recipe import check_run_folder, load_recipe, plan, run
    from .render import write_report
    from .report import as_dict, summary, table

    r = load_recipe(recipe, quick=quick, target=target)
    if dry_run:
        check_run_folder(r, out)
        decisions = plan(r, out, force=force)
        rows = [[i, d.step.name, d.step.stage, ", ".join(d.step.inputs), "run" if d.run else "skip", d.reason]
                for i, d in enumerate(decisions, 1)]
        data = [{"step": d.step.name, "stage": d.step.stage, "kind": d.step.kind, "inputs": list(d.step.inputs),
                 "run": d.run, "reason": d.reason, "config": d.step.as_dict()["config"]} for d in decisions]
        emit({"recipe": str(recipe), "out": str(out), "quick": quick, "target": r.target, "plan": data}, as_json,
             f"plan for {recipe} -> {out}{' (quick)' if quick else ''}, target {r.target}: "
             f"{sum(d.run for d in decisions)} to run, {sum(not d.run for d in decisions)} to skip\n"
             + format_table(rows, ["#", "step", "stage", "input", "action", "why"]))
        return
    with output_lock(out):  # the report too: another run must not write the folder in between
        steps = run(r, out, force=force, echo=(lambda line: click.echo(line, err=True)) if as_json else click.echo)
        report = write_report(out)
    rows, headers = table(report, compact=True)
    emit({"steps": steps, "report": as_dict(report)}, as_json,
         "\n" + format_table(rows, headers) + "\n\n" + summary(report).replace("**", "") + "\n" + _where(report))


def _where(report) -> str:
    from .report import _machine_line

    lines = [f"target: {report.target}"]
    lines += [f"quantized {r.name}: {r.int8}" for r in report.rows if r.int8]
    lines += [f"machine {label}: {_machine_line(m)}" for label, m in report.machines.items() if m]
    lines += [f"report: {report.folder / 'report.html'} (and report.md: every column, 95% intervals, p90, throughput)"]
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
    from .render import write_report
    from .report import as_dict, summary, table

    report = write_report(folder, list(other))
    rows, headers = table(report, compact=True)
    emit(as_dict(report), as_json, format_table(rows, headers) + "\n\n" + summary(report).replace("**", "") + "\n"
         + _where(report))


@main.command("package")
@click.argument("artifact", type=click.Path())
@click.argument("out", type=click.Path())
@stage_options("package")
@reports_errors
def package_cmd(artifact, out, force, as_json, **options):
    """Package an ONNX ARTIFACT as an edge bundle at OUT: model.onnx/.ort, tokenizer, predict.py, manifest."""
    from .package import BUNDLE_FILE, PackageConfig, package

    cfg = _config(PackageConfig, **options)
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
    t = info["target"]
    lines.insert(1, f"target {t['target']}: promises {', '.join(t['providers'])}; .ort for {t['ort_platform']}"
                    + (f"; inputs fixed to [1, {t['max_length']}]" if t.get("max_length") else "")
                    + (f"; int8 preset {t['preset']}" if t.get("preset") else ""))
    if t.get("readiness"):
        r = t["readiness"]
        lines.insert(2, f"{r['ep']}: {r['supported_nodes']}/{r['nodes']} nodes ({r['share']:.0%}) in "
                        f"{r['partitions']} partition(s): {r['suitability']}")
    emit({"bundle": str(art.path), **info}, as_json,
         "\n".join(lines) + "\n" + format_table(rows, ["file", "MB", "sha256"]))


