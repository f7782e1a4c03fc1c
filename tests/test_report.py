import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from toolchain.artifact import Artifact
from toolchain.cli import main
from toolchain.render import write_report
from toolchain.report import LOCAL, ReportConfig, collect, recommend

MACHINE = {"cpu_model": "Test CPU", "cores_usable": 2, "threads_used": 2, "isa": {"avx2": True},
           "onnxruntime": {"version": "1.32.0"}}
BUSY = MACHINE | {"threads_used": 1, "threads_why": "1 thread per model: the machine was busy (load 5.1 on 2 cores)"}


def bench_rows(label: str, p50_by_batch: dict, provider: str = "cpu", task: str = "text-classification") -> list:
    """Rows in the bench result layout (toolchain.bench.results): only the keys the report reads, plus identity."""
    mode = "decode" if task == "text-generation" else "forward"
    return [{"artifact": label, "provider": provider, "mode": mode, "workload": "data=rotten-tomatoes", "batch": b,
             "seq": None, "status": "ok", "p50_ms": p50, "p90_ms": p50 * 1.2, "throughput": b / p50 * 1000,
             "throughput_unit": "tokens/s" if mode == "decode" else "items/s"} for b, p50 in p50_by_batch.items()]


def make_run(tiny_onnx, root, spec: dict, metric="accuracy", name="bert"):
    """Copies of a tiny artifact, each given an evaluation and a benchmark result: {name: (quality, p50 ms)}."""
    root.mkdir()
    for label, (quality, p50) in spec.items():
        art = Artifact.load(shutil.copytree(tiny_onnx(name).path, root / label))
        art.record_result("evaluate/rotten-tomatoes/test", {metric: quality, "n": 100, "split": "test",
                                                            "data": "rotten-tomatoes", "batch_size": 1})
        if p50 is not None:
            rows = bench_rows(label, {1: p50, 8: p50 * 4}, task=art.task)
            art.record_result("bench/cpu/data-rotten-tomatoes", {"machine": MACHINE, "config": {}, "rows": rows})
    return root


def test_recommends_the_fastest_on_the_front_within_the_budget(tiny_onnx, tmp_path):
    run = make_run(tiny_onnx, tmp_path / "run", {"a": (0.85, 10.0), "b": (0.845, 5.0), "c": (0.80, 2.0),
                                                  "d": (0.84, 6.0)})
    report = collect(run, cfg=ReportConfig(original="a", accuracy_budget=0.01))
    by = {r.name: r for r in report.rows}
    assert report.recommended is by["b"]
    assert {n for n, r in by.items() if r.pareto} == {"a", "b", "c"}  # d: b is both better and faster
    assert not by["c"].within_budget and report.cost == "latency"
    assert recommend(run, ReportConfig(original="a", accuracy_budget=0.06)) == "c"  # a looser budget admits c


def test_perplexity_lower_is_better(tiny_onnx, tmp_path):
    run = make_run(tiny_onnx, tmp_path / "run", {"fp32": (20.0, 10.0), "int8": (20.8, 4.0), "int4": (30.0, 2.0)},
                   metric="perplexity", name="gpt2-past")
    report = collect(run, cfg=ReportConfig(perplexity_budget=0.05))
    assert report.metric == "perplexity" and report.original.name in ("fp32", "int8", "int4")
    report = collect(run, cfg=ReportConfig(original="fp32", perplexity_budget=0.05))
    assert report.cost == "latency" and report.recommended.name == "int8"  # +4%; int4's +50% is over budget


def test_without_latency_the_ranking_falls_back_to_size_and_says_so(tiny_onnx, tmp_path):
    run = make_run(tiny_onnx, tmp_path / "run", {"a": (0.85, None), "b": (0.85, None)})
    report = collect(run)
    assert report.cost == "size" and any("ranked by model size" in n for n in report.notes)
    assert report.recommended is not None


def test_other_machines_join_as_column_groups(tiny_onnx, tmp_path):
    run = make_run(tiny_onnx, tmp_path / "run", {"a": (0.85, 10.0), "b": (0.845, 5.0)})
    other = tmp_path / "pixel7.json"
    other.write_text(json.dumps({"kind": "toolchain.bench", "machine": MACHINE | {"cpu_model": "Tensor G2"},
                                 "rows": bench_rows("a", {1: 40.0}) + bench_rows("b", {1: 12.0})
                                 + bench_rows("b", {1: 3.0}, provider="nnapi") + bench_rows("zzz", {1: 1.0})}))
    report = collect(run, [other], ReportConfig(original="a"))
    assert report.groups == [(LOCAL, "cpu"), ("pixel7", "cpu"), ("pixel7", "nnapi")]
    b = next(r for r in report.rows if r.name == "b")
    assert b.speed[("pixel7", "cpu")].p50_ms == 12.0 and b.speed[("pixel7", "nnapi")].p50_ms == 3.0
    assert any("'zzz' matches no artifact" in n for n in report.notes)
    r = CliRunner().invoke(main, ["report", str(run), "--other", str(other)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "pixel7/cpu p50 ms" in r.output and "pixel7/nnapi p50 ms" in r.output
    assert "Tensor G2" in (run / "report.md").read_text()


def test_report_files_are_written_and_the_html_is_self_contained(tiny_onnx, tmp_path):
    run = make_run(tiny_onnx, tmp_path / "run", {"a": (0.85, 10.0), "b": (0.845, 5.0)})
    report = write_report(run, cfg=ReportConfig(original="a"))
    page = (run / "report.html").read_text()
    assert page.count("data:image/svg+xml;base64,") == 3  # trade-off, size by stage, latency by batch
    assert not re.search(r"""(src|href)=["']?(https?:|//|[\w./-]+\.(svg|png|css|js))""", page)
    md = (run / "report.md").read_text()
    row_b = next(line for line in md.splitlines() if "| b |" in line)
    assert row_b.startswith("| ★ |") and "2.0x faster" in row_b  # twice as fast as a
    assert "**Recommended:** Ship b" in md
    data = json.loads(CliRunner().invoke(main, ["report", str(run), "--json"]).output)
    assert data["recommended"] == report.recommended.name


def test_report_of_a_folder_without_artifacts_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 3 and "holds no artifacts" in r.output


def test_recommends_an_onnx_artifact_since_a_bundle_holds_one(tiny, tiny_onnx, tmp_path):
    from toolchain.artifact import write_artifact

    run = make_run(tiny_onnx, tmp_path / "run", {"onnx": (0.85, 10.0)})
    with write_artifact(run / "torch", stage="finetune", config={}, format="torch", task="text-classification",
                        model_type="bert") as o:
        shutil.copytree(tiny("bert"), o.folder, dirs_exist_ok=True)
    art = Artifact.load(run / "torch")
    art.record_result("evaluate/rotten-tomatoes/test", {"accuracy": 0.86, "split": "test", "data": "rotten-tomatoes"})
    art.record_result("bench/cpu/data-rotten-tomatoes", {"machine": MACHINE, "rows": bench_rows("torch", {1: 1.0})})
    report = collect(run)
    assert next(r for r in report.rows if r.name == "torch").pareto  # faster and better, but not shippable
    assert report.recommended.name == "onnx"


def test_other_file_names_cannot_break_or_inject_into_the_report(tiny_onnx, tmp_path):
    run = make_run(tiny_onnx, tmp_path / "run", {"a": (0.85, 10.0), "b": (0.845, 5.0)})
    other = tmp_path / "x|y<script>alert(1)<.json"
    other.write_text(json.dumps({"kind": "toolchain.bench", "machine": MACHINE,
                                 "rows": bench_rows("a", {1: 40.0}) + bench_rows("<b>|z", {1: 1.0})}))
    r = CliRunner().invoke(main, ["report", str(run), "--other", str(other)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for name in ("report.md", "report.html"):
        text = (run / name).read_text()
        assert "<script>" not in text and "x|y" not in text and "<b>|z" not in text
    assert "x_y_script_alert_1_" in (run / "report.md").read_text()


def test_report_rewrites_its_own_files_but_never_a_users(tiny_onnx, tmp_path):
    run = make_run(tiny_onnx, tmp_path / "run", {"a": (0.85, 10.0), "b": (0.845, 5.0)})
    write_report(run, cfg=ReportConfig(original="a"))
    write_report(run, cfg=ReportConfig(original="a"))  # its own report: replaced
    (run / "report.html").write_text("<p>my page</p>")
    r = CliRunner().invoke(main, ["report", str(run)], catch_exceptions=False)
    assert r.exit_code == 6 and "was not written by toolchain report" in r.output
    assert (run / "report.html").read_text() == "<p>my page</p>"


def score(run, name: str, correct: np.ndarray) -> None:
    """Give artifact `name` an evaluation with per-example correctness (what evaluate stores)."""
    from toolchain.metrics import pack_correct, wilson

    art = Artifact.load(run / name)
    art.record_result("evaluate/rotten-tomatoes/test", {
        "accuracy": float(correct.mean()), "n": len(correct), "correct": pack_correct(correct),
        "accuracy_ci95": list(wilson(int(correct.sum()), len(correct))), "split": "test", "data": "rotten-tomatoes",
        "batch_size": 1})


def swapped(correct: np.ndarray, lose: int, win: int) -> np.ndarray:
    """`correct` with its first `lose` right answers made wrong and its first `win` wrong ones made right."""
    out = correct.copy()
    out[np.flatnonzero(correct)[:lose]] = False
    out[np.flatnonzero(~correct)[:win]] = True
    return out


def test_accuracy_has_its_interval_and_a_paired_verdict_against_the_original(tiny_onnx, tmp_path):
    from toolchain.metrics import mcnemar_exact, wilson

    run = make_run(tiny_onnx, tmp_path / "run", {"a": (0.8, 10.0), "b": (0.8, 5.0), "c": (0.8, 4.0), "d": (0.8, 20.0)})
    orig = np.arange(1000) % 5 != 0  # 800 of 1,000 right
    score(run, "a", orig)
    score(run, "b", swapped(orig, 6, 3))  # -0.3 points: 9 examples differ, 6 against b: chance
    score(run, "c", swapped(orig, 40, 10))  # -3 points, 40 against 10: not chance
    report = collect(run, cfg=ReportConfig(original="a", accuracy_budget=0.01))  # d keeps make_run's n=100 result
    by = {r.name: r for r in report.rows}
    assert by["a"].ci95 == pytest.approx(wilson(800, 1000))
    assert by["b"].vs_original["p"] == pytest.approx(mcnemar_exact(3, 6)) and by["b"].vs_original["within_noise"]
    assert by["c"].vs_original["p"] < 0.001 and not by["c"].vs_original["within_noise"]
    assert by["d"].vs_original["p"] is None  # scored on other examples: no paired test
    assert by["d"].ci95 == pytest.approx(wilson(80, 100))  # the interval from accuracy and n alone
    rows, headers = collect_table(report)
    assert rows["b"][headers.index("vs original")] == "-0.3 pt, within noise (p 0.51)"
    assert rows["c"][headers.index("vs original")] == "-3.0 pt, worse (p < 0.001)"
    assert rows["d"][headers.index("vs original")] == "+0.0 pt (not paired)"
    assert rows["a"][headers.index("95% interval")] == "0.774-0.824"
    assert report.recommended.name == "b"  # within the budget; c is 3 points below it
    from toolchain.report import table

    compact, short_headers = table(report, compact=True)  # the terminal's: what decides, ~110 columns
    assert "95% interval" not in short_headers and not any("p90" in h or "throughput" in h for h in short_headers)
    short = {r[1]: r for r in compact}
    assert short["b"][short_headers.index("vs original")] == "-0.3 pt (p 0.51)"
    assert short["c"][short_headers.index("vs original")] == "-3.0 pt, worse (p < 0.001)"
    assert all(len(r) == len(short_headers) for r in compact)
    text = summary_of(report)
    assert "95% interval 0.771-0.821) vs 0.8000 for the original a, -0.3 pt, within noise (p 0.51)" in text


def collect_table(report):
    from toolchain.report import table

    rows, headers = table(report)
    return {r[1]: r for r in rows}, headers


def summary_of(report):
    from toolchain.report import summary

    return summary(report)


def test_the_page_is_real_html_with_the_machine_and_one_way_to_say_size(tiny_onnx, tmp_path):
    run = make_run(tiny_onnx, tmp_path / "run", {"a": (0.85, 10.0), "b": (0.845, 5.0)})
    art = Artifact.load(run / "b")
    art.record_result("bench/cpu/data-rotten-tomatoes", {"machine": BUSY, "created": 1764748800.0,  # 2025-12-03
                                                        "rows": bench_rows("b", {1: 5.0, 8: 20.0})})
    write_report(run, cfg=ReportConfig(original="a"))
    page, md = (run / "report.html").read_text(), (run / "report.md").read_text()
    body = page.split("<body>")[1]
    assert "<table>" in body and "<ul>" in body and "<li>" in body and "<code>" in body
    assert "`" not in body and "**" not in body and not re.search(r"(^|>)- ", body, re.M)  # no Markdown leaks
    assert "Ship b" in body and "<strong>Recommended:</strong> Ship b" in body
    # The machine, how many threads and why (the load), and the day it was measured, in words.
    assert "1 thread per model: the machine was busy (load 5.1 on 2 cores)" in body
    assert "measured 2025-12-03 (UTC)" in body and "Test CPU" in body
    # One way to say size and speed: "N.Nx smaller/faster", never a bare fraction such as 0.16x.
    for text in (body, md):
        assert not re.search(r"\b0\.\d+x\b", text)
    assert "1.0x" not in body and "same" in body and "2.0x faster" in body
    # Plot titles in words, not code names; the bundle section says how to make one when the run has none.
    assert "Accuracy against p50 latency (batch 1, cpu)" in body and ">quality-vs-speed<" not in body
    assert "Use this bundle" in body and f"toolchain package {run}/b BUNDLE" in body


def test_use_this_bundle_says_how_to_run_the_packaged_bundle(tiny_run):
    run, _, _ = tiny_run
    page = (run / "report.html").read_text()
    use = page.split("<h2>Use this bundle</h2>")[1]
    assert "python predict.py &quot;A charming, moving film.&quot;" in use and "python predict.py --smoke" in use
    assert f"toolchain verify {run / 'bundle'}" in use
    assert "<li><code>predict.py</code>" in use and "<li><code>model.onnx</code>" in use
    assert "<strong>bundle</strong> (packaged from onnx): a text-classification bundle" in use


def test_trade_off_plot_names_each_artifact_once_in_its_legend_not_beside_its_point(tiny_onnx, tmp_path):
    from toolchain.render import plots

    run = make_run(tiny_onnx, tmp_path / "run", {"fused": (0.816, 5.0), "fusedonnx": (0.815, 5.1)})
    svg = plots(collect(run))["quality-vs-speed"]
    # matplotlib writes each text as a comment before its glyphs: one legend entry per artifact, nothing more.
    assert len(re.findall(r"<!-- fusedonnx: ", svg)) == 1 and len(re.findall(r"<!-- fused: ", svg)) == 1
    assert "<!-- fusedonnx -->" not in svg and "<!-- fused -->" not in svg


def test_baseline_notes_name_every_artifact_once_and_say_within_noise():
    from types import SimpleNamespace as NS

    from toolchain.report import _baseline_notes

    rows = [NS(name="teacher", quality=0.82, ci95=(0.80, 0.84)), NS(name="student", quality=0.79, ci95=(0.77, 0.81)),
            NS(name="int8", quality=0.785, ci95=(0.76, 0.81)), NS(name="fused", quality=0.75, ci95=(0.72, 0.78))]
    report = NS(metric="accuracy", rows=rows, baseline={"accuracy": 0.78, "split": "test", "n": 1066})
    below, noise = _baseline_notes(report)
    assert below.startswith("fused does not beat the TF-IDF + logistic regression baseline (0.7800 on test, n=1066)")
    assert noise.startswith("student, int8 beat the TF-IDF") and "within noise" in noise
    assert "teacher" not in below + noise
    assert _baseline_notes(NS(metric="perplexity", rows=rows, baseline=report.baseline)) == []


def test_nothing_within_the_budget_is_said_plainly_with_the_best_and_its_gap(tiny_onnx, tmp_path):
    """Small data (benchmarks/small_data.py, rt-1600): the PyTorch teacher is the original and no ONNX artifact
    came within 2 points; the error names the best and its gap, and the recipe key to change."""
    from toolchain.artifact import MANIFEST
    from toolchain.errors import CheckFailed

    run = make_run(tiny_onnx, tmp_path / "run", {"teacher": (0.78, 10.0), "int8": (0.73, 1.0), "fp32": (0.72, 2.0)})
    manifest = json.loads((run / "teacher" / MANIFEST).read_text())
    manifest["format"] = "torch"  # the fine-tuned teacher: a bundle holds an ONNX model, so it cannot ship
    (run / "teacher" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckFailed, match=r"the best, int8, has 0\.7300 \(-5\.0 points\)") as err:
        recommend(run, ReportConfig(original="teacher", accuracy_budget=0.02))
    assert "accuracy_budget" in err.value.fix and "2 points from the original teacher" in err.value.problem


def test_latencies_within_the_speed_tie_go_to_the_smaller_file_then_the_better_one(tiny_onnx, tmp_path):
    run = make_run(tiny_onnx, tmp_path / "run", {"orig": (0.85, 10.0), "fast": (0.845, 5.0), "close": (0.85, 5.1)})
    report = collect(run, cfg=ReportConfig(original="orig", accuracy_budget=0.02))
    assert report.recommended.name == "close"  # as small, 2% slower: a tie the more accurate wins
    assert any("close is recommended over the fastest, fast" in n and "higher accuracy" in n for n in report.notes)
    assert recommend(run, ReportConfig(original="orig", accuracy_budget=0.02, speed_tie=0)) == "fast"
    # a smaller file wins a tie even against a more accurate one: what a device downloads and holds
    from toolchain.quantize import QuantizeConfig, quantize

    small = quantize(run / "orig", QuantizeConfig(mode="dynamic"), run / "small")
    small.record_result("evaluate/rotten-tomatoes/test", {"accuracy": 0.84, "n": 100, "split": "test",
                                                          "data": "rotten-tomatoes", "batch_size": 1})
    small.record_result("bench/cpu/data-rotten-tomatoes", {"machine": MACHINE, "config": {},
                                                           "rows": bench_rows("small", {1: 5.2, 8: 20.8})})
    report = collect(run, cfg=ReportConfig(original="orig", accuracy_budget=0.02))
    assert report.recommended.name == "small" and any("small is recommended" in n and "smaller" in n
                                                      for n in report.notes)
    assert collect(run, cfg=ReportConfig(original="orig", accuracy_budget=0.02, speed_tie=0.01)).recommended.name \
        == "fast"
    with pytest.raises(ValueError, match="speed_tie"):
        ReportConfig(speed_tie=1.5)


def test_a_bundle_that_holds_another_artifact_than_the_recommended_one_is_noted(tiny_onnx, tmp_path):
    from toolchain.package import PackageConfig, package

    run = make_run(tiny_onnx, tmp_path / "run", {"a": (0.85, 10.0), "b": (0.85, 5.0)})
    package(run / "a", PackageConfig(mobile_check=False, ort_format=False), run / "bundle")
    report = collect(run, cfg=ReportConfig(original="a"))
    assert report.recommended.name == "b" and report.bundle_info[0].source == "a"
    assert any("the bundle bundle holds a, while this report recommends b" in n and "--force" in n
               for n in report.notes)
