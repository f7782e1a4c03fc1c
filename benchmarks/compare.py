"""The toolchain against what users would pick instead: one teacher, one test split, one machine, one run.

    python benchmarks/compare.py                          # 3-4 min on 2 cores when runs/minilm exists; writes benchmarks/results/
    python benchmarks/compare.py --quick                  # smoke test: subsets, few runs, a few minutes
    python benchmarks/compare.py --run runs/minilm --publish   # and the tables in docs/results.md and README.md

From the fine-tuned teacher of a `toolchain run models/minilm-rotten-tomatoes.yaml` run folder (or
--teacher), it builds what a user would pick instead (PyTorch eager, torch.ao dynamic int8, Optimum's
export / O2 / dynamic-int8 pipeline, ONNX Runtime's quantize_static with defaults) and the toolchain's
own artifacts of the same teacher (the recipe's export, optimize and quantize steps), and takes the
recipe's final artifact from the run folder. Then, for each: test accuracy through toolchain.evaluate
(one code path; batch 1, as per-request serving runs and as dynamic int8 must be scored), file size,
batch-1 latency on real test sentences and batch-32 throughput with dynamic padding through
toolchain.bench (each model in its own worker process, runs interleaved so machine drift lands on all
alike), ratios to the PyTorch teacher and to the Optimum pipeline, and the issue's targets met or not.
Also: latency against sequence length and batch for the teacher and the final artifact (a PNG), and
`smollm2-135m` on `hamlet` (perplexity, size, prefill latency, decode tokens/s: PyTorch vs the
toolchain's fp32 and int8 ONNX). Built models go to --work (runs/compare) and are reused on re-runs.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # this checkout's toolchain, and compare_variants.py

import click  # noqa: E402
import numpy as np  # noqa: E402

from toolchain.cli import reports_errors  # noqa: E402

DATA = "rotten-tomatoes"
PARTS = ("classifier", "scaling", "lm", "genai", "llamacpp")  # what --skip can leave out


@dataclass(frozen=True)
class Plan:
    """How much is measured: the full run, or --quick."""

    eval_samples: int | None  # test sentences scored per classifier (None: all 1,276)
    b1_runs: int  # batch-1 calls per model, each on the next test sentence (real lengths)
    b1_warmup: int
    b32_runs: int  # batch-32 calls per model, consecutive test sentences padded per batch
    b32_warmup: int
    block: int  # calls per model before the next one's turn (interleaving)
    scaling_seq: tuple[int, ...]  # batch 1, fixed lengths
    scaling_batch: tuple[int, ...]  # at scaling_batch_seq tokens
    scaling_batch_seq: int
    scaling_runs: int
    lm_tokens: int  # hamlet tokens scored for perplexity (512-token windows, stride 256)
    lm_prompt: int  # prefill length of the LM benchmark
    lm_decode: int  # greedy steps with the KV cache after each prefill
    lm_runs: int
    calibration_samples: int = 100  # naive static int8: train sentences, as ORT's examples use
    max_length: int = 64  # the recipe's: reviews average ~27 tokens, 64 truncates ~1%
    threads: int | None = None  # intra-op threads of every timed model; set at start by pick_threads
    peak: bool = False  # measure the GEMM peak (cached per machine) for batch 32's % of peak: where time goes
    # Batch 1 switches models every b1_block calls. Each switch starts on caches the other models filled:
    # in blocks of 5 the 16 MB final artifact measured 0.87 ms p50 against 0.74 ms in blocks of 100 (the
    # 23 MB Optimum model 1.91 vs 1.89), so small blocks tax the small, fast models most. A server runs one
    # model all the time; 50 keeps six rounds of interleaving in 300 calls.
    b1_block: int = 50
    # Interleaved workers take turns: one that just ran keeps its onnxruntime threads spinning (its default)
    # on the cores the next one is being timed on (benchmarks/b1_interleave.py measures it). "stop" lets them
    # spin only while a run is on; the self-check times each model alone with onnxruntime's defaults.
    ort_spin: str = "stop"


FULL = Plan(None, 300, 20, 20, 3, 10, (16, 32, 64, 128, 256, 512), (1, 2, 4, 8, 16, 32, 64), 64, 10,
            2048, 128, 16, 10, peak=True)
QUICK = Plan(100, 30, 3, 3, 1, 5, (16, 64, 128), (1, 8, 32), 64, 3, 512, 32, 8, 3)


class Phases:
    """Wall time per phase: where the run's time went."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        click.secho(f"== {name}", bold=True, err=True)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t0, 1)
            click.echo(f"   {name}: {self.seconds[name]:.0f} s", err=True)

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def echo(message: str) -> None:
    click.echo(f"   {message}", err=True)


def classifier_variants(teacher: Path, run: Path | None, final: str | None, work: Path, plan: Plan,
                        quick: bool, isa: dict, arch: str) -> list:
    """Every classifier in the table, built (or reused from --work) in the order the table lists them."""
    import compare_variants as vs

    base = vs.Variant("teacher", "PyTorch eager fp32", "the fine-tuned teacher (the baseline)", path=teacher,
                      notes=[f"teacher: {vs.lineage_summary(teacher)} at {teacher}"])
    int8 = vs.Variant("torch-int8", "PyTorch dynamic int8", "torch.ao.quantization.quantize_dynamic (Linear)",
                      path=teacher, torch_int8=True)
    optimum = vs.optimum_variant(teacher, work, vs.optimum_preset(isa, arch), echo)
    ours = vs.teacher_variants(teacher, work, quick, echo)
    naive = vs.naive_static_variant(ours[0], work, plan.calibration_samples, plan.max_length, echo)
    final_v = vs.final_variant(run, final)
    untrimmed = vs.untrimmed_variant(final_v, work, quick, echo)  # what trimming changed, when it was used
    return [base, int8, optimum, naive, *ours, *([untrimmed] if untrimmed else []), final_v]


def evaluate_all(variants: list, cfg) -> dict[str, dict]:
    """key -> evaluation (or its error), every model through toolchain.evaluate with the same config."""
    from toolchain.bench.worker import torch_dynamic_int8
    from toolchain.errors import ToolchainError
    from toolchain.evaluate import Runner, evaluate

    out = {}
    for v in variants:
        if v.path is None:
            continue
        echo(f"evaluate {v.name}")
        t0 = time.perf_counter()
        try:
            runner = Runner(v.path)
            if v.torch_int8:
                runner.model = torch_dynamic_int8(runner.model)
            out[v.key] = evaluate(v.path, cfg, record=False, runner=runner)
        except ToolchainError as exc:
            out[v.key] = {"error": exc.problem}
        except Exception as exc:  # noqa: BLE001 - a model that cannot be scored is that row's result
            out[v.key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        out[v.key]["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def bench_variants(variants: list, cfg) -> dict:
    """One toolchain.bench run over every built variant; the result with `keys` beside its artifacts."""
    from tqdm.auto import tqdm

    from toolchain.bench import bench
    from toolchain.bench.workload import resolve_target, torch_dynamic_int8_target

    live = [v for v in variants if v.path is not None]
    specs = [torch_dynamic_int8_target(resolve_target(str(v.path))) if v.torch_int8 else str(v.path) for v in live]
    shapes = len(cfg.batch) * (1 if cfg.data else len(cfg.seq))
    with tqdm(total=len(live) * shapes * (cfg.runs + cfg.warmup), desc="bench", leave=False) as bar:
        result = bench(specs, cfg, progress=bar.update)
    result["keys"] = {a["label"]: v.key for a, v in zip(result["artifacts"], live)}
    return result


def classifier_benches(variants: list, plan: Plan, phases: Phases) -> dict[str, dict]:
    """Batch 1 on real sentence lengths, then batch 32 with dynamic padding: two interleaved runs."""
    from toolchain.bench import BenchConfig

    common = dict(data=DATA, max_length=plan.max_length, store=False, threads=plan.threads)
    out = {}
    interleaved = common | {"ort_spin": plan.ort_spin}
    with phases("bench batch 1 (real test sentences)"):
        out["b1"] = bench_variants(variants, BenchConfig(batch=(1,), runs=plan.b1_runs, warmup=plan.b1_warmup,
                                                         block=min(plan.b1_block, plan.b1_runs), peak=False,
                                                         **interleaved))
    with phases("bench batch 1 alone (self-check)"):
        # Each model again with no other worker alive: the check on the interleaved figures above, whose
        # b1 p50s once read 1.4-2.5x a plain one-model-per-process loop (compare_report.SELF_CHECK).
        alone = BenchConfig(batch=(1,), runs=plan.b1_runs, warmup=plan.b1_warmup, block=plan.b1_runs, peak=False,
                            **common)
        out["b1_alone"] = [bench_variants([v], alone) for v in variants if v.path is not None]
    with phases("bench batch 32 (dynamic padding)"):
        # The GEMM peak gives the % of peak: where the time goes at batch 32. Measured afresh in this run,
        # under this run's load, so that it and the models' figures share the machine's state.
        out["b32"] = bench_variants(variants, BenchConfig(batch=(32,), runs=plan.b32_runs, warmup=plan.b32_warmup,
                                                          block=plan.block, peak=plan.peak, refresh_peak=plan.peak,
                                                          **interleaved))
    return out


def scaling(variants: list, plan: Plan) -> dict[str, dict]:
    """Latency of the teacher and the final artifact against sequence length (batch 1) and batch size."""
    from toolchain.bench import BenchConfig

    pair = [v for v in variants if v.key in ("teacher", "final") and v.path is not None]
    common = dict(runs=plan.scaling_runs, warmup=2, block=2, store=False, peak=False, threads=plan.threads,
                  ort_spin=plan.ort_spin)
    return {"seq": bench_variants(pair, BenchConfig(batch=(1,), seq=plan.scaling_seq, **common)),
            "batch": bench_variants(pair, BenchConfig(batch=plan.scaling_batch, seq=(plan.scaling_batch_seq,),
                                                      **common))}


def causal_lm(lm: str, lm_run: Path | None, work: Path, plan: Plan, quick: bool, skipped: set[str]) -> dict:
    """smollm2-135m (or --lm) on hamlet: perplexity, size, prefill latency, decode tokens/s."""
    import compare_variants as vs

    from toolchain.bench import BenchConfig
    from toolchain.evaluate import EvaluateConfig

    models = vs.lm_variants(lm, lm_run, work, quick, echo, genai="genai" not in skipped)
    evals = evaluate_all(models, EvaluateConfig(data="hamlet", max_eval_tokens=plan.lm_tokens, window=512, stride=256))
    cfg = BenchConfig(batch=(1,), seq=(plan.lm_prompt,), decode_tokens=plan.lm_decode, runs=plan.lm_runs, warmup=1,
                      block=2, store=False, peak=False, threads=plan.threads, ort_spin=plan.ort_spin)
    # llama.cpp runs in its own process, half its runs before the toolchain.bench run and half after, so a
    # drift of the shared machine during the run lands on it as on the interleaved ONNX rows.
    cpp = LlamaCpp(lm, models, plan, "llamacpp" in skipped)
    first = cpp.measure(plan.lm_runs - plan.lm_runs // 2, perplexity=True)
    bench = bench_variants(models, cfg)
    second = cpp.measure(plan.lm_runs // 2, perplexity=False)
    return {"variants": [asdict(v) for v in models], "evaluate": evals, "bench": bench,
            "llamacpp": cpp.result(first, second)}


class LlamaCpp:
    """llama.cpp (llama-cpp-python) on the GGUF file the built-in ships: same prompt ids, threads, decode steps
    and perplexity tokens as the ONNX rows, measured by benchmarks/llamacpp_worker.py in its own process."""

    def __init__(self, lm: str, models: list, plan: Plan, skip: bool = False):
        import importlib.util

        self.plan, self.error, self.req = plan, None, None
        onnx = next((m.path for m in models if m.key == "lm-onnx" and m.path), None)
        if skip:
            self.error = "left out (--skip llamacpp)"
        elif lm != "smollm2-135m":
            self.error = f"--lm {lm} is not the built-in: no GGUF file to run"
        elif importlib.util.find_spec("llama_cpp") is None:
            self.error = "llama-cpp-python is not installed here (pip install llama-cpp-python: it compiles llama.cpp)"
        elif onnx is None:
            self.error = "no toolchain ONNX export to take the tokenizer from"
        if self.error:
            return
        from toolchain.assets import asset_file
        from toolchain.bench.workload import TokenizerJson, synthetic_workload
        from toolchain.data import load_text
        from toolchain.modeling import ModelSource, load_tokenizer

        tok = TokenizerJson(Path(onnx), left_pad=True)
        prompt = synthetic_workload(tok, 1, plan.lm_prompt).batches[0]["input_ids"][0]
        hf = load_tokenizer(ModelSource(str(onnx), str(onnx), local=True))
        ppl_ids = list(hf(load_text("hamlet"))["input_ids"][: plan.lm_tokens])
        self.gguf = asset_file("smollm2-135m")
        self.req = {"gguf": str(self.gguf), "prompt": prompt, "steps": plan.lm_decode, "threads": plan.threads or 1,
                    "warmup": 1, "n_ctx": 512 + 64, "ppl_ids": ppl_ids, "window": 512, "stride": 256}

    def measure(self, runs: int, perplexity: bool) -> dict:
        import json
        import subprocess
        import tempfile

        if self.error or not (runs or perplexity):
            return {}
        echo(f"llama.cpp: {runs} runs" + (" and perplexity" if perplexity else ""))
        req = self.req | {"runs": runs, "ppl_ids": self.req["ppl_ids"] if perplexity else None}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(req, f)
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "llamacpp_worker.py"), f.name],
                              capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(req["threads"])))
        os.unlink(f.name)
        if done.returncode != 0:
            self.error = f"llama.cpp failed: {(done.stderr.strip().splitlines() or ['no output'])[-1][:200]}"
            return {}
        return json.loads(done.stdout.strip().splitlines()[-1])

    def result(self, first: dict, second: dict) -> dict | None:
        if self.error == "left out (--skip llamacpp)":
            return None
        if self.error:
            return {"error": self.error}
        prefill = first.get("prefill_s", []) + second.get("prefill_s", [])
        steps = [t for run in first.get("decode_s", []) + second.get("decode_s", []) for t in run]
        return {"gguf": self.gguf.name, "file_mb": self.gguf.stat().st_size / 1e6, "library": first.get("library"),
                "system_info": first.get("system_info"), "evaluate": first.get("evaluate", {}),
                "prefill_ms": float(np.median(prefill)) * 1e3 if prefill else None,
                "prompt_tokens": len(self.req["prompt"]), "runs": len(prefill),
                "decode_tokens_s": len(steps) / sum(steps) if steps else None, "threads": self.req["threads"]}


def default_run(run: str | None) -> Path | None:
    if run:
        return Path(run)
    return Path("runs/minilm") if Path("runs/minilm/recipe.json").is_file() else None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run", "run_dir", help="recipe run folder of models/minilm-rotten-tomatoes.yaml [runs/minilm]")
@click.option("--teacher", help="fine-tuned PyTorch classifier [RUN/teacher]")
@click.option("--final", help="the toolchain's final artifact [the one RUN's report recommends]")
@click.option("--lm", default="smollm2-135m", show_default=True, help="causal LM (built-in name or folder)")
@click.option("--lm-run", help="run folder of models/smollm2-hamlet.yaml to reuse (its onnx and int8 steps)")
@click.option("--work", default="runs/compare", show_default=True, help="where built variants go (reused)")
@click.option("--out", default=str(ROOT / "benchmarks" / "results"), show_default=True, help="JSON, Markdown, PNG")
@click.option("--publish", is_flag=True,
              help="put the full table in docs/results.md and the short one in README.md (between their markers)")
@click.option("--quick", is_flag=True, help="subsets and few runs: a smoke test, not a measurement")
@click.option("--eval-samples", type=int, help="test sentences per classifier (default: all; --quick: 100)")
@click.option("--skip", default="", help="comma-separated parts to leave out: classifier (an LM-only run), scaling, "
              "lm, genai (the GenAI builder rows and the weight-only rows of its graph), llamacpp")
@click.option("--threads", type=click.IntRange(min=1), help="threads per timed model [all cores; 1 on a busy machine]")
@reports_errors
def main(run_dir, teacher, final, lm, lm_run, work, out, publish, quick, eval_samples, skip, threads):
    """Measure the toolchain's artifacts against PyTorch, torch.ao, Optimum and naive ORT static int8."""
    import compare_report as report
    import compare_variants as vs

    from toolchain.bench.machine import calm_openmp, machine_record, pick_threads, usable_cores
    from toolchain.errors import RecipeError
    from toolchain.evaluate import EvaluateConfig

    skipped = {s.strip() for s in skip.split(",") if s.strip()}
    if skipped - set(PARTS):
        raise RecipeError(f"--skip {skip!r}: unknown part", f"use some of {', '.join(PARTS)}")
    if quick and publish:
        raise RecipeError("--quick results are a smoke test, not a measurement: they are never published",
                          "drop --publish, or run without --quick")
    plan = QUICK if quick else FULL
    if eval_samples:
        plan = replace(plan, eval_samples=eval_samples)
    if "classifier" in skipped and (publish or "lm" in skipped):
        raise RecipeError("--skip classifier measures the causal LM alone: it needs the lm part and writes no "
                          "README table", "drop --publish (and lm from --skip)")
    run = default_run(run_dir)
    teacher_dir = None if "classifier" in skipped else vs.teacher_path(teacher, run)
    work = Path(work)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    phases, load_start = Phases(), os.getloadavg()
    openmp = calm_openmp(usable_cores())
    n_threads, threads_why = pick_threads(threads, usable_cores())
    plan = replace(plan, threads=n_threads)
    machine = machine_record(n_threads)
    cfg = EvaluateConfig(data=DATA, split="test", batch_size=1, max_length=plan.max_length,
                         max_eval_samples=plan.eval_samples)
    variants, evals, benches, scaled = [], {}, {"b1": None, "b32": None}, None
    if teacher_dir is not None:
        with phases("build the variants"):
            variants = classifier_variants(teacher_dir, run, final, work, plan, quick, machine["isa"], machine["arch"])
        with phases("evaluate (test split, batch 1)"):
            evals = evaluate_all(variants, cfg)
        benches = classifier_benches(variants, plan, phases)
        if "scaling" not in skipped:
            with phases("scaling (sequence length, batch)"):
                scaled = scaling(variants, plan)
    lm_result = None
    if "lm" not in skipped:
        with phases("causal LM"):
            lm_result = causal_lm(lm, Path(lm_run) if lm_run else None, work, plan, quick, skipped)
    result = report.assemble(variants, evals, benches, scaled, lm_result, machine=machine, plan=asdict(plan),
                             quick=quick, phases=phases.seconds, wall_s=phases.total,
                             load=[load_start, os.getloadavg()], eval_config=asdict(cfg), openmp=openmp,
                             threads=threads_why)
    written = report.write(result, Path(out) / ("quick" if quick else ""), root=ROOT if publish else None)
    click.echo(report.console_table(result))
    click.echo("\n".join(f"wrote {p}" for p in written) + f"\nwall time {result['wall_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
