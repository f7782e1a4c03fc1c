"""The run report: every artifact of a folder side by side, and which one to ship.

Reads what the stages stored in the manifests: accuracy or perplexity from `evaluate/...` results,
latency from `bench/<provider>/<workload>` results (the layout of toolchain.bench.results: a dict with
`machine`, `config` and `rows`, each row with artifact, provider, mode, workload, batch, p50_ms,
p90_ms, throughput, throughput_unit, status). Benchmark files made on other machines (`bench --json`)
join as one column group per machine and provider, matched to artifacts by their label (the folder
name). Writes report.md (plots beside it as SVG) and a self-contained report.html.

The recommended artifact: on the Pareto front of quality against latency (or file size where no
latency was measured), within the accuracy budget of the original, the one with the lowest latency.
"""

from __future__ import annotations

import base64
import dataclasses
import html as html_lib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import PLAN_FILE, Artifact
from .errors import CheckFailed, DataError, InputNotFound, IntegrityError, OutputExists

LOCAL = "local"  # the machine label of results stored in the manifests here
# A mobile target's bundle must run on its EP: at least this share of nodes (the bar), in at most
# MAX_PARTITIONS partitions (ORT's usability check calls more partitions not worth the copies between them).
READY_SHARE = 0.9
MAX_PARTITIONS = 2
WEIGHT_SUFFIXES = (".onnx", ".safetensors", ".bin", ".data", ".onnx_data")


@dataclass(frozen=True)
class ReportConfig:
    original: str | None = None  # the artifact ratios compare against; the recipe's first artifact step when None
    # Recommend only artifacts at most this far below the original's accuracy (absolute: 0.01 = one point).
    accuracy_budget: float = 0.01
    perplexity_budget: float = 0.05  # causal LMs: at most this relative perplexity increase over the original
    provider: str = "cpu"  # the execution provider whose latency ranks artifacts
    batch: int = 1  # the batch size whose latency ranks them: 1 is per-request serving

    def __post_init__(self):
        if not 0 <= self.accuracy_budget < 1 or not 0 <= self.perplexity_budget:
            raise ValueError("accuracy_budget must be in [0, 1) and perplexity_budget >= 0")
        if self.batch < 1:
            raise ValueError("batch must be at least 1")


@dataclass
class Speed:
    """One artifact's latency on one machine and provider, at the ranking batch size."""

    p50_ms: float | None
    p90_ms: float | None
    throughput: float | None  # the best over batch sizes
    unit: str
    by_batch: dict[int, float] = field(default_factory=dict)  # batch -> p50 ms


@dataclass
class Row:
    name: str
    stage: str
    format: str
    task: str
    path: Path
    size_mb: float
    quality: float | None = None  # accuracy, or perplexity for causal LMs
    quality_note: str = ""  # split, examples and batch size it was measured at
    speed: dict[tuple[str, str], Speed] = field(default_factory=dict)  # (machine, provider) -> Speed
    pareto: bool = False
    within_budget: bool = False
    int8: str = ""  # quantized artifacts: the int8 format used (preset, mode, target)
    readiness: dict | None = None  # mobile targets: the target EP's share of nodes (toolchain.package.target_readiness)

    @property
    def ready(self) -> bool:
        r = self.readiness
        return bool(r) and r["share"] >= READY_SHARE and 0 < r["partitions"] <= MAX_PARTITIONS


@dataclass
class Report:
    folder: Path
    cfg: ReportConfig
    rows: list[Row]
    original: Row | None
    recommended: Row | None
    metric: str  # "accuracy" or "perplexity"
    cost: str  # what ranks speed: "latency" or "size"
    groups: list[tuple[str, str]]  # (machine, provider) column groups, the ranking one first
    machines: dict[str, dict]  # label -> machine record
    bundles: list[Path]
    notes: list[str] = field(default_factory=list)
    bundle_sources: dict[str, str] = field(default_factory=dict)  # bundle folder name -> artifact it packaged
    description: str = ""
    target: str = "host"  # the recipe's deployment target (toolchain/targets.py)
    baseline: dict | None = None  # the TF-IDF + logistic-regression result on the compared split (classifiers)

    @property
    def primary(self) -> tuple[str, str]:
        return (LOCAL, self.cfg.provider)


# ---------------------------------------------------------------- collecting


def collect(folder: str | Path, others: list[str | Path] = (), cfg: ReportConfig | None = None) -> Report:
    """Read every artifact under `folder` (and benchmark files from other machines) into a Report."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFound(f"{folder} is not a folder", "pass the --out folder of `toolchain run`")
    plan = _plan(folder)
    cfg = cfg or _report_config(plan)
    arts, bundles = _artifacts(folder, plan)
    if not arts:
        raise InputNotFound(f"{folder} holds no artifacts", "run a recipe into it first (toolchain run)")
    key = _evaluation_key([art for _, art in arts], ((plan or {}).get("data") or {}).get("data"))
    rows = [_row(name, art, key) for name, art in arts]
    machines: dict[str, dict] = {}
    for row, (_, art) in zip(rows, arts):
        _local_speed(row, art, cfg, machines)
    notes = []
    for path in others:
        notes += _merge_other(Path(path), rows, bundles, cfg, machines)
    metric = "perplexity" if all(r.task == "text-generation" for r in rows) else "accuracy"
    original = next((r for r in rows if r.name == cfg.original), rows[0]) if rows else None
    groups = _groups(rows, cfg)
    report = Report(folder, cfg, rows, original, None, metric, "latency", groups, machines,
                    [b for _, b in bundles], notes, _bundle_aliases(bundles, rows), (plan or {}).get("description", ""),
                    (plan or {}).get("target") or "host")
    report.baseline = _baseline(arts, key)
    report.notes += _baseline_notes(report)
    _rank(report)
    return report


def _baseline(arts: list[tuple[str, Artifact]], key: str | None) -> dict | None:
    """The baseline scored beside the compared evaluation (the same split and rows), if any artifact holds one."""
    for _, art in arts:
        r = art.manifest.results.get(key) if key else None
        if isinstance(r, dict) and isinstance(r.get("baseline"), dict):
            return r["baseline"]
    return None


def _baseline_notes(report: Report) -> list[str]:
    from .baseline import verdict

    if report.baseline is None or report.metric != "accuracy":
        return []
    return [v for r in report.rows if r.quality is not None and (v := verdict(r.name, r.quality, report.baseline))]


def _plan(folder: Path) -> dict | None:
    path = folder / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        plan = None
    steps = plan.get("steps") if isinstance(plan, dict) else None
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                              and isinstance(s.get("kind"), str) for s in steps):
        raise IntegrityError(f"{path} is not a run plan (corrupt or edited)",
                             "run the recipe into this folder again (toolchain run) to rewrite it")
    return plan


def _report_config(plan: dict | None) -> ReportConfig:
    from .config import config_from_dict

    return config_from_dict(ReportConfig, (plan or {}).get("report"), where="report")


def _artifacts(folder: Path, plan: dict | None) -> tuple[list[tuple[str, Artifact]], list[tuple[str, Path]]]:
    """(name, artifact) in recipe order (or by time made), and the bundles (package outputs) apart."""
    if plan:
        names = [s["name"] for s in plan["steps"] if s["kind"] == "transform"]
    else:
        found = [p for p in folder.iterdir() if p.is_dir() and Artifact.is_artifact(p)]
        names = [p.name for p in sorted(found, key=lambda p: Artifact.load(p).manifest.lineage[-1].finished)]
    arts, bundles = [], []
    for name in names:
        if not Artifact.is_artifact(folder / name):
            continue
        art = Artifact.load(folder / name)
        if art.manifest.lineage and art.manifest.lineage[-1].stage == "package":
            bundles.append((name, art.path))
        else:
            arts.append((name, art))
    return arts, bundles


def model_mb(art: Artifact) -> float:
    """Weights only (ONNX graph and external data, or safetensors), not tokenizer or config files."""
    return sum((art.path / f).stat().st_size for f in art.manifest.files
               if f.endswith(WEIGHT_SUFFIXES) and (art.path / f).is_file()) / 1e6


def _evaluation_key(arts: list[Artifact], data: str | None) -> str | None:
    """The evaluate/<data>/<split> result to compare: the recipe's data, held by most artifacts, test split first."""
    keys = {k for a in arts for k in a.manifest.results if k.startswith("evaluate/")}
    if not keys:
        return None

    def score(k):
        result = next(a.manifest.results[k] for a in arts if k in a.manifest.results)
        held = sum(k in a.manifest.results for a in arts)
        return (result.get("data") == data, held, result.get("split") == "test", k)

    return max(keys, key=score)


def _row(name: str, art: Artifact, key: str | None) -> Row:
    row = Row(name, art.manifest.lineage[-1].stage if art.manifest.lineage else "?", art.format, art.task,
              art.path, model_mb(art))
    last = art.manifest.lineage[-1].metrics if art.manifest.lineage else {}
    row.readiness = last.get("readiness")
    settings = last.get("settings") or {}
    if row.stage == "quantize" and settings.get("mode") == "weight-only":
        row.int8 = (f"weight-only int{settings.get('bits')} ({settings.get('algorithm')}, blocks of "
                    f"{settings.get('block_size')}, accuracy level {settings.get('accuracy_level')}), "
                    f"target {settings.get('target', 'host')}")
    elif row.stage == "quantize" and settings:
        row.int8 = (f"{settings.get('mode')} int8, preset {settings.get('preset')} ({settings.get('activation_type')} "
                    f"activations, {settings.get('weight_type')} weights, reduce_range {settings.get('reduce_range')})"
                    f", target {settings.get('target', 'host')}")
    r = art.manifest.results.get(key) if key else None
    value = r.get("perplexity" if art.task == "text-generation" else "accuracy") if isinstance(r, dict) else None
    if value is not None:
        row.quality = float(value)
        row.quality_note = (f"{r.get('data')} {r.get('split')}, n={r.get('n', r.get('tokens'))}, "
                            f"batch {r.get('batch_size')}")
    return row


def _local_speed(row: Row, art: Artifact, cfg: ReportConfig, machines: dict) -> None:
    for key, result in art.manifest.results.items():
        if key.startswith("bench/") and isinstance(result, dict):
            machines.setdefault(LOCAL, result.get("machine") or {})
            _add_speed(row, LOCAL, result.get("rows") or [], cfg)


def _add_speed(row: Row, machine: str, rows: list[dict], cfg: ReportConfig) -> None:
    """Fold benchmark rows of one artifact into row.speed, per provider."""
    mode = "decode" if row.task == "text-generation" else "forward"
    ok = [r for r in rows if r.get("status") == "ok" and r.get("mode") == mode and r.get("p50_ms")
          and isinstance(r.get("workload"), str) and isinstance(r.get("batch"), int)]
    for provider in sorted({r["provider"] for r in ok}):
        mine = [r for r in ok if r["provider"] == provider]
        workload = _workload(mine)
        mine = [r for r in mine if r["workload"] == workload]
        by_batch = {int(r["batch"]): float(r["p50_ms"]) for r in mine}
        pick = min(mine, key=lambda r: (abs(int(r["batch"]) - cfg.batch), int(r["batch"])))
        best = max(mine, key=lambda r: r.get("throughput") or 0)
        row.speed[(machine, safe_name(str(provider)))] = Speed(pick["p50_ms"], pick.get("p90_ms"), best.get("throughput"),
                                               best.get("throughput_unit") or "items/s", by_batch)


def _workload(rows: list[dict]) -> str:
    """Real data if it was measured, else the middle fixed length: one workload per column group."""
    names = sorted({r["workload"] for r in rows})
    data = [n for n in names if n.startswith("data")]
    if data:
        return data[0]
    by_len = sorted(names, key=lambda n: int(n.split("=")[1]) if n.split("=")[-1].isdigit() else 0)
    return by_len[len(by_len) // 2]


def _merge_other(path: Path, rows: list[Row], bundles: list[tuple[str, Path]], cfg: ReportConfig,
                 machines: dict) -> list[str]:
    """Add a `bench --json` file from another machine as column groups '<file stem>/<provider>'."""
    from .guard import regular_file

    regular_file(path, DataError, "benchmark file (bench --json)")
    try:
        result = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DataError(f"{path} is not JSON", "pass the output of `toolchain bench ... --json`") from None
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise DataError(f"{path} is not a benchmark result (no rows)", "pass the output of `toolchain bench --json`")
    bad = next((i for i, r in enumerate(result["rows"]) if not _bench_row(r)), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad + 1} is not a benchmark row (artifact, provider, batch, seq, times)",
                        "pass the unedited output of `toolchain bench --json`")
    if result.get("machine") is not None and not isinstance(result["machine"], dict):
        raise DataError(f"{path}: its machine record is not a mapping", "pass the unedited output of `toolchain bench --json`")
    machine = safe_name(path.stem)
    machines[machine] = result.get("machine") or {}
    alias = _bundle_aliases(bundles, rows)
    by_name = {r.name: r for r in rows}
    notes = []
    for label in sorted({r.get("artifact") for r in result["rows"]}):
        target = by_name.get(label) or by_name.get(alias.get(label, ""))
        if target is None:
            notes.append(f"{safe_name(path.name)}: artifact {safe_name(label)!r} matches no artifact here; its rows were left out")
            continue
        _add_speed(target, machine, [r for r in result["rows"] if r.get("artifact") == label], cfg)
    return notes


def safe_name(text: str) -> str:
    """A file name as it may appear in report.md and report.html: letters, digits and . _ - only, so a name
    such as `a|b<script>` can neither break the table nor inject markup."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80] or "_"


def _bench_row(row) -> bool:
    from numbers import Real

    return (isinstance(row, dict) and isinstance(row.get("artifact"), str) and isinstance(row.get("provider"), str)
            and all(row.get(k) is None or (isinstance(row[k], Real) and not isinstance(row[k], bool))
                    for k in ("batch", "seq", "p50_ms", "p90_ms", "throughput")))


def _bundle_aliases(bundles: list[tuple[str, Path]], rows: list[Row]) -> dict[str, str]:
    """A bundle benchmarked on a device stands for the artifact it packaged (same input hash)."""
    hashes = {Artifact.load(r.path).content_hash: r.name for r in rows}
    out = {}
    for name, path in bundles:
        parent = Artifact.load(path).manifest.lineage[-1].input_hash
        if parent in hashes:
            out[name] = hashes[parent]
    return out


def _groups(rows: list[Row], cfg: ReportConfig) -> list[tuple[str, str]]:
    found = {g for r in rows for g in r.speed}
    primary = (LOCAL, cfg.provider)
    return ([primary] if primary in found else []) + sorted(g for g in found if g != primary)


# ---------------------------------------------------------------- ranking


def _rank(report: Report) -> None:
    """Mark the Pareto front and the budget, then pick the recommended artifact."""
    rows = [r for r in report.rows if r.quality is not None]
    if not rows:
        report.notes.append("no artifact was evaluated: nothing to recommend (add an evaluate step)")
        return
    cost = _cost_fn(report, rows)
    lower_is_better = report.metric == "perplexity"
    loss = (lambda r: r.quality) if lower_is_better else (lambda r: -r.quality)
    for r in rows:
        r.pareto = not _dominated(r, rows, loss, cost)
    ref = report.original.quality if report.original and report.original.quality is not None else None
    if ref is None:
        ref = min(r.quality for r in rows) if lower_is_better else max(r.quality for r in rows)
        report.notes.append("the original was not evaluated: the budget counts from the best artifact instead")
    for r in rows:
        r.within_budget = (r.quality <= ref * (1 + report.cfg.perplexity_budget) if lower_is_better
                           else r.quality >= ref - report.cfg.accuracy_budget - 1e-12)
    # A bundle holds an ONNX model: recommend among ONNX artifacts when there are any.
    shippable = [r for r in rows if r.format == "onnx"] or rows
    if _mobile(report):
        ready = [r for r in shippable if r.ready]
        if not ready:
            report.notes.append(f"no artifact runs >= {READY_SHARE:.0%} of its nodes on the {report.target} EP in "
                                f"<= {MAX_PARTITIONS} partitions: recommending among all ONNX artifacts")
        shippable = ready or shippable
    fits = [r for r in shippable if r.within_budget and not _dominated(r, shippable, loss, cost)]
    report.recommended = min(fits, key=lambda r: (cost(r), loss(r))) if fits else None


def _mobile(report: Report) -> bool:
    from .targets import TARGETS

    return report.target in TARGETS and TARGETS[report.target].mobile


def _dominated(r: Row, rows: list[Row], loss, cost) -> bool:
    """Another row is at least as good on both axes and better on one."""
    return any(loss(o) <= loss(r) and cost(o) <= cost(r) and (loss(o), cost(o)) != (loss(r), cost(r))
               for o in rows if o is not r)


def _cost_fn(report: Report, rows: list[Row]):
    group = report.primary
    if _mobile(report):
        report.cost = "size"
        report.notes.append(f"target {report.target}: ranked by model size, not by CPU latency here, which does not "
                            "predict the phone's accelerator (int8 is what NPUs run fastest, and what ships smallest)")
        return lambda r: r.size_mb
    if all(group in r.speed and r.speed[group].p50_ms for r in rows):
        return lambda r: r.speed[group].p50_ms
    report.cost = "size"
    report.notes.append(f"not every evaluated artifact has a {group[1]} latency here (add a bench step): "
                        "ranked by model size instead")
    return lambda r: r.size_mb


def recommend(folder: str | Path, cfg: ReportConfig | None = None) -> str:
    """The name of the artifact the report recommends for `folder`; CheckFailed when none qualifies."""
    report = collect(folder, cfg=cfg)
    if report.recommended is None:
        raise CheckFailed(f"no artifact in {folder} is both measured and within the budget"
                          + (f" ({report.notes[-1]})" if report.notes else ""),
                          "add evaluate (and bench) steps before the step whose input is `recommended`")
    return report.recommended.name


# ---------------------------------------------------------------- tables


def table(report: Report) -> tuple[list[list], list[str]]:
    """Rows and headers of the artifact table (the terminal and the Markdown share them)."""
    headers = ["", "artifact", "stage", "format", report.metric, "size MB", "size vs orig"]
    mobile = _mobile(report)
    if mobile:
        headers.append(f"{report.target} EP nodes")
    for i, (machine, provider) in enumerate(report.groups):
        g = f"{machine}/{provider}"
        headers += [f"{g} p50 ms", f"{g} p90 ms", f"{g} throughput"] + (["speedup"] if i == 0 else [])
    orig = report.original
    out = []
    for r in report.rows:
        mark = "★" if r is report.recommended else ("front" if r.pareto else "")
        cells = [mark, r.name, r.stage, r.format, _num(r.quality), _num(r.size_mb),
                 _ratio(r.size_mb, orig.size_mb if orig else None)]
        if mobile:
            x = r.readiness
            cells.append(f"{x['share']:.0%} ({x['partitions']} part.)" if x else "")
        for i, g in enumerate(report.groups):
            s = r.speed.get(g)
            cells += [_num(s.p50_ms if s else None), _num(s.p90_ms if s else None),
                      f"{_num(s.throughput)} {s.unit}" if s and s.throughput else ""]
            if i == 0:
                base = orig.speed.get(g) if orig else None
                cells.append(_ratio(base.p50_ms if base else None, s.p50_ms if s else None))
        out.append(cells)
    if report.baseline is not None and report.metric == "accuracy":
        b = report.baseline
        out.append(["", f"baseline ({b['model']}, C={b['C']:g})", "baseline", "sklearn", _num(b["accuracy"])]
                   + [""] * (len(headers) - 5))
    return out, headers


def _num(v) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else ""


def summary(report: Report) -> str:
    """One sentence: what to ship, and how it compares with the original."""
    r, o = report.recommended, report.original
    if r is None:
        return "No artifact can be recommended: " + ("; ".join(report.notes) or "none is within the budget")
    budget = (f"accuracy budget {report.cfg.accuracy_budget:g}" if report.metric == "accuracy"
              else f"perplexity budget +{report.cfg.perplexity_budget:.0%}")
    parts = [f"Ship **{r.name}** ({r.stage}, {r.format}): {report.metric} {_num(r.quality)}"]
    if o is not None and o is not r:
        parts[0] += f" vs {_num(o.quality)} for the original {o.name} ({budget})"
        if r.size_mb and o.size_mb:
            ratio = o.size_mb / r.size_mb
            smaller = f"{ratio:.1f}x smaller" if ratio >= 1 else f"{1 / ratio:.1f}x larger"
            parts.append(f"{r.size_mb:.1f} MB, {smaller}")
        g = report.primary
        if g in r.speed and g in o.speed and r.speed[g].p50_ms and o.speed[g].p50_ms:
            parts.append(f"p50 {r.speed[g].p50_ms:.2f} ms at batch {report.cfg.batch} on {g[1]}, "
                         f"{o.speed[g].p50_ms / r.speed[g].p50_ms:.1f}x faster")
    elif o is r:
        parts.append("no smaller or faster artifact stayed within the budget")
    if report.target != "host" or r.int8:
        parts.append(f"target {report.target}" + (f", {r.int8.split(', target')[0]}" if r.int8 else ""))
    if r.readiness:
        x = r.readiness
        parts.append(f"{x['ep']} runs {x['supported_nodes']}/{x['nodes']} nodes in {x['partitions']} partition(s)")
    return "; ".join(p for p in parts if p) + "."


def markdown(report: Report, plots: dict[str, str]) -> str:
    rows, headers = table(report)
    lines = [f"# Report: {report.folder.name}", ""] + ([report.description, ""] if report.description else [])
    lines += [summary(report), ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", _legend(report), ""]
    lines += _detail_lines(report)
    for name, _ in plots.items():
        lines += [f"![{name}]({_plot_file(name)})", ""]
    return "\n".join(lines) + "\n"


def _legend(report: Report) -> str:
    cost = "p50 latency" if report.cost == "latency" else "model size"
    return (f"★ recommended: on the Pareto front of {report.metric} against {cost}, within the budget of the "
            f"original ({report.original.name if report.original else '?'}), lowest {cost}, ONNX (what a bundle "
            f"holds). `front`: on the "
            f"Pareto front. Latency at batch {report.cfg.batch} (nearest measured); throughput is the best over "
            "batch sizes; size is the weights file.")


def _detail_lines(report: Report) -> list[str]:
    out = []
    if report.bundles:
        src = report.bundle_sources
        out += ["Bundles: " + ", ".join(f"`{b}`" + (f" (packaged from {src[b.name]})" if b.name in src else "")
                                        for b in report.bundles), ""]
    notes = [f"- {r.name}: {report.metric} on {r.quality_note}"
             for r in report.rows if r.quality_note]
    if notes:
        out += ["Measured on:", *notes, ""]
    from .targets import TARGETS

    if report.target in TARGETS:
        t = TARGETS[report.target]
        out += [f"Target: `{t.name}`, {t.runs_on}; fusions {t.fusions}, "
                f"{'inputs fixed to [1, max_length]' if t.fixed_shapes else 'dynamic shapes'}, .ort for {t.ort_platform}, "
                f"promises {', '.join(t.providers)}.", ""]
    int8 = [f"- {r.name}: {r.int8}" for r in report.rows if r.int8]
    if int8:
        out += ["int8 formats (the preset follows the target; `host` detects it from the building CPU):", *int8, ""]
    for label, m in report.machines.items():
        if m:
            out.append(f"- machine `{label}`: {_machine_line(m)}")
    if report.machines:
        out.append("")
    out += [f"> note: {n}" for n in report.notes]
    return out + ([""] if report.notes else [])


def _machine_line(m: dict) -> str:
    isa = " ".join(k for k, v in (m.get("isa") or {}).items() if v)
    ort = (m.get("onnxruntime") or {}).get("version", "?")
    busy = m.get("threads_why", "") if "busy" in m.get("threads_why", "") else ""
    return (f"{m.get('cpu_model', '?')}, {m.get('cores_usable', '?')} usable cores, {m.get('threads_used', '?')} "
            f"threads, {isa or 'no ISA flags'}, onnxruntime {ort}" + (f"; {busy}" if busy else ""))


# ---------------------------------------------------------------- plots and HTML


def plots(report: Report) -> dict[str, str]:
    """name -> SVG text of each plot (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    out = {}
    for name, fn in (("quality-vs-speed", _plot_tradeoff), ("size-by-stage", _plot_sizes),
                     ("latency-by-batch", _plot_batches)):
        fig = fn(report)
        if fig is not None:
            out[name] = _svg(fig)
    return out


def _svg(fig) -> str:
    import io

    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buf.getvalue()


def _plot_tradeoff(report: Report):
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.quality is not None]
    if not rows:
        return None
    g = report.primary
    x = (lambda r: r.speed[g].p50_ms) if report.cost == "latency" else (lambda r: r.size_mb)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([x(r) for r in rows], [r.quality for r in rows], color="#888", zorder=2)
    front = sorted((r for r in rows if r.pareto), key=x)
    ax.plot([x(r) for r in front], [r.quality for r in front], "-o", color="#1f77b4", label="Pareto front", zorder=3)
    for r in rows:
        ax.annotate(r.name, (x(r), r.quality), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if report.original and report.original.quality is not None:
        o = report.original.quality
        limit = (o * (1 + report.cfg.perplexity_budget) if report.metric == "perplexity"
                 else o - report.cfg.accuracy_budget)
        ax.axhline(limit, ls="--", color="#d62728", lw=1, label="budget")
    if report.recommended:
        r = report.recommended
        ax.scatter([x(r)], [r.quality], marker="*", s=300, color="#ff7f0e", zorder=4, label=f"recommended: {r.name}")
    ax.set_xlabel(f"p50 latency, ms (batch {report.cfg.batch}, {g[1]})" if report.cost == "latency"
                  else "model size, MB")
    ax.set_ylabel(report.metric)
    _log_axis(ax.xaxis, ax.set_xscale)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"{report.metric} against {'latency' if report.cost == 'latency' else 'size'}")
    return fig


def _plot_sizes(report: Report):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(report.rows) + 1))
    names = [f"{r.name} ({r.stage})" for r in report.rows]
    colors = ["#ff7f0e" if r is report.recommended else "#1f77b4" for r in report.rows]
    ax.barh(names, [r.size_mb for r in report.rows], color=colors)
    for i, r in enumerate(report.rows):
        ax.text(r.size_mb, i, f" {r.size_mb:.1f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("model size, MB")
    ax.set_title("size by stage")
    return fig


def _plot_batches(report: Report):
    import matplotlib.pyplot as plt

    if not report.groups:
        return None
    fig, axes = plt.subplots(1, len(report.groups), figsize=(5 * len(report.groups), 4), squeeze=False)
    for ax, g in zip(axes[0], report.groups):
        for r in report.rows:
            s = r.speed.get(g)
            if s and s.by_batch:
                batches = sorted(s.by_batch)
                ax.plot(batches, [s.by_batch[b] for b in batches], "-o", label=r.name)
        _log_axis(ax.xaxis, ax.set_xscale, base=2)
        _log_axis(ax.yaxis, ax.set_yscale)
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 latency per call, ms")
        ax.set_title(f"{g[0]} / {g[1]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _log_axis(axis, set_scale, base: int = 10) -> None:
    """A log scale labelled with plain numbers (2, 5, 10), not powers (2x10^0)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    set_scale("log", base=base)
    axis.set_major_locator(LogLocator(base=base, subs=(1.0, 2.0, 5.0) if base == 10 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _plot_file(name: str) -> str:
    return f"report-{name}.svg"


def html(report: Report, plot_svgs: dict[str, str]) -> str:
    """One self-contained page: the table, the plots inline (base64 SVG images), no external assets."""
    rows, headers = table(report)
    esc = html_lib.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        f"<tr class='{'rec' if r[0] == '★' else ''}'>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>"
        for r in rows)
    imgs = "".join(
        f"<figure><img alt='{esc(n)}' src='data:image/svg+xml;base64,{base64.b64encode(s.encode()).decode()}'>"
        f"<figcaption>{esc(n)}</figcaption></figure>" for n, s in plot_svgs.items())
    details = "".join(f"<p>{esc(line)}</p>" for line in _detail_lines(report) if line)
    summ = esc(summary(report)).replace("**", "")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>toolchain report: {esc(report.folder.name)}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:nth-child(2), td:nth-child(3), td:nth-child(4) {{ text-align: left; }}
tr.rec td {{ background: #fff3e0; font-weight: 600; }}
.summary {{ font-size: 16px; padding: .8em 1em; background: #fff3e0; border-left: 4px solid #ff7f0e; }}
figure {{ display: inline-block; margin: 1em; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>toolchain report: {esc(report.folder.name)}</h1>
<p>{esc(report.description)}</p>
<p class="summary">{summ}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p>{esc(_legend(report))}</p>
{imgs}
{details}
</body></html>
"""


def write_report(folder: str | Path, others: list[str | Path] = (), cfg: ReportConfig | None = None) -> Report:
    """Write report.md (with its SVG plots) and report.html into `folder`; returns the Report."""
    from .artifact import atomic_write_text

    report = collect(folder, others, cfg)
    svgs = plots(report)
    files = {_plot_file(name): _marked_svg(svg) for name, svg in svgs.items()}
    files |= {"report.md": markdown(report, svgs) + MARK + "\n",
              "report.html": html(report, svgs).replace("<!doctype html>\n", f"<!doctype html>\n{MARK}\n", 1)}
    from .guard import output_lock
    from .recipe import is_run_folder

    run_folder = is_run_folder(report.folder)  # reports written before the mark existed are the run's own
    with output_lock(report.folder):  # a `run` writing this folder holds it too (and re-enters it here)
        for name in files:
            _refuse_foreign(report.folder / name, run_folder)
        for name, text in files.items():
            atomic_write_text(report.folder / name, text)
    return report


# The mark of a file `report` wrote: one without it is the user's, and never replaced.
MARK = "<!-- written by toolchain report; replaced on every run -->"


def _marked_svg(svg: str) -> str:
    head, sep, rest = svg.partition("\n")
    return f"{head}\n{MARK}\n{rest}" if head.startswith("<?xml") else f"{MARK}\n{svg}"


def _refuse_foreign(path: Path, run_folder: bool) -> None:
    """Refuse to replace a file that is not a report this command wrote (a user's report.md, a link, a folder)."""
    if not path.exists() and not path.is_symlink():
        return
    try:
        ours = path.is_file() and not path.is_symlink() and (
            run_folder or MARK in path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        ours = False
    if not ours:
        raise OutputExists(f"{path} exists and was not written by toolchain report",
                           "move or rename that file, then run the report again")


def as_dict(report: Report) -> dict:
    """The report as JSON-ready data (for --json)."""
    return {
        "folder": str(report.folder), "metric": report.metric, "ranked_by": report.cost,
        "original": report.original.name if report.original else None,
        "recommended": report.recommended.name if report.recommended else None,
        "summary": summary(report).replace("**", ""), "config": dataclasses.asdict(report.cfg),
        "target": report.target,
        "rows": [{"name": r.name, "stage": r.stage, "format": r.format, "task": r.task, "path": str(r.path),
                  report.metric: r.quality, "measured_on": r.quality_note, "size_mb": r.size_mb, "pareto": r.pareto,
                  "within_budget": r.within_budget, "int8": r.int8, "readiness": r.readiness,
                  "speed": {f"{m}/{p}": dataclasses.asdict(s) for (m, p), s in r.speed.items()}} for r in report.rows],
        "machines": report.machines, "bundles": [str(b) for b in report.bundles], "notes": report.notes,
        "baseline": report.baseline,
        "files": {"html": str(report.folder / "report.html"), "markdown": str(report.folder / "report.md")},
    }
