import json
import re
import shutil

from click.testing import CliRunner

from toolchain.artifact import Artifact
from toolchain.cli import main
from toolchain.render import write_report
from toolchain.report import LOCAL, ReportConfig, collect, recommend

MACHINE = {"cpu_model": "Test CPU", "cores_usable": 2, "threads_used": 2, "isa": {"avx2": True},
           "onnxruntime": {"version": "1.32.0"}}


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
