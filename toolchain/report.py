"""The run report: every artifact of a folder side by side, and which one to ship.

Reads what the stages stored in the manifests: accuracy or perplexity from `evaluate/...` results,
latency from `bench/<provider>/<workload>` results (the layout of toolchain.bench.results: a dict with
`machine`, `config` and `rows`, each row with artifact, provider, mode, workload, batch, p50_ms,
p90_ms, throughput, throughput_unit, status). Benchmark files made on other machines (`bench --json`)
join as one column group per machine and provider, matched to artifacts by their label (the folder
name). This module is the data: rows, intervals, paired tests, the recommendation; toolchain/render.py
turns a Report into report.md (plots beside it as SVG) and a self-contained report.html.

The recommended artifact: on the Pareto front of quality against latency (or file size where no
latency was measured), within the accuracy budget of the original, the one with the lowest latency;
latencies within `speed_tie` of it count as a tie, which the smaller file wins, then the better quality.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifact import PLAN_FILE, Artifact
from .errors import CheckFailed, DataError, InputNotFound, IntegrityError
from .metrics import paired, unpack_correct, wilson

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
    # Medians on a shared machine move by a few percent from run to run: latencies this close to the fastest's
    # count as a tie, won by the smaller file (what a device downloads and holds), then the better quality.
    speed_tie: float = 0.05

    def __post_init__(self):
        if not 0 <= self.accuracy_budget < 1 or not 0 <= self.perplexity_budget:
            raise ValueError("accuracy_budget must be in [0, 1) and perplexity_budget >= 0")
        if not 0 <= self.speed_tie < 1:
            raise ValueError("speed_tie must be in [0, 1): the fraction of the fastest p50 that counts as a tie")
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
    n: int | None = None  # examples (or tokens) the quality was measured on
    ci95: tuple[float, float] | None = None  # accuracy: the Wilson 95% interval over those n examples
    correct: np.ndarray | None = field(default=None, repr=False)  # accuracy: per-example correctness, when stored
    # Against the original: diff (accuracy points as a fraction), and on the same examples the McNemar p and
    # within_noise; p is None when the two were not scored example by example on the same rows.
    vs_original: dict | None = None
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
class Bundle:
    """A package step's output, as the report's "Use this bundle" section describes it."""

    path: Path
    task: str
    source: str | None  # the artifact it packaged
    files: list[tuple[str, float]]  # (file name, MB)


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
    bundle_info: list[Bundle] = field(default_factory=list)

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
    report.bundle_info = [_bundle(path, report.bundle_sources.get(path.name)) for path in report.bundles]
    _compare(report)
    _rank(report)
    rec = report.recommended
    for b in report.bundle_info:
        if rec is not None and b.source and b.source != rec.name:  # a new budget or new timings since packaging
            report.notes.append(f"the bundle {b.path.name} holds {b.source}, while this report recommends {rec.name}: "
                                f"re-run the recipe (its package step follows the recommendation) or `toolchain "
                                f"package {folder}/{rec.name} {folder}/{b.path.name} --force` to ship {rec.name}")
    return report


def _compare(report: Report) -> None:
    """Each row's accuracy against the original's: paired on the same examples when both stored them."""
    o = report.original
    if report.metric != "accuracy" or o is None or o.quality is None:
        return
    for r in report.rows:
        if r is o or r.quality is None:
            continue
        if r.correct is not None and o.correct is not None and len(r.correct) == len(o.correct):
            r.vs_original = paired(r.correct, o.correct)
        else:
            r.vs_original = {"diff": r.quality - o.quality, "p": None, "within_noise": None}


def _bundle(path: Path, source: str | None) -> Bundle:
    art = Artifact.load(path)
    files = [(f, (path / f).stat().st_size / 1e6) for f in sorted(art.manifest.files) if (path / f).is_file()]
    return Bundle(path, art.task, source, files)


def _baseline(arts: list[tuple[str, Artifact]], key: str | None) -> dict | None:
    """The baseline scored beside the compared evaluation (the same split and rows), if any artifact holds one."""
    for _, art in arts:
        r = art.manifest.results.get(key) if key else None
        if isinstance(r, dict) and isinstance(r.get("baseline"), dict):
            return r["baseline"]
    return None


def _baseline_notes(report: Report) -> list[str]:
    """One sentence for every artifact that does not beat the TF-IDF baseline: below it, or with the baseline
    inside its 95% interval (within noise), instead of one repeated sentence per artifact."""
    from .baseline import NAME

    base = report.baseline
    if base is None or report.metric != "accuracy":
        return []
    below = [r.name for r in report.rows if r.quality is not None and r.quality <= base["accuracy"]]
    noise = [r.name for r in report.rows if r.quality is not None and r.quality > base["accuracy"]
             and r.ci95 is not None and r.ci95[0] <= base["accuracy"]]
    where = f"{base['accuracy']:.4f} on {base['split']}, n={base['n']}"
    notes = []
    if below:
        notes.append(f"{', '.join(below)} do{'es' if len(below) == 1 else ''} not beat the {NAME} baseline "
                     f"({where}): not worth {'its' if len(below) == 1 else 'their'} cost on this data")
    if noise:
        notes.append(f"{', '.join(noise)} beat{'s' if len(noise) == 1 else ''} the {NAME} baseline ({where}) "
                     "only within noise: the baseline is inside the 95% interval")
    return notes


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
        row.int8 = (f"weight-only int{settings.get('bits')} ({settings.get('algorithm')}"
                    f"{' act-order' if settings.get('act_order') else ''}, blocks of "
                    f"{settings.get('block_size')}, accuracy level {settings.get('accuracy_level')}"
                    f"{', bias-corrected' if settings.get('bias_correction') else ''}), "
                    f"target {settings.get('target', 'host')}")
    elif row.stage == "quantize" and settings:
        row.int8 = (f"{settings.get('mode')} int8, preset {settings.get('preset')} ({settings.get('activation_type')} "
                    f"activations, {settings.get('weight_type')} weights, reduce_range {settings.get('reduce_range')})"
                    f", target {settings.get('target', 'host')}")
    r = art.manifest.results.get(key) if key else None
    value = r.get("perplexity" if art.task == "text-generation" else "accuracy") if isinstance(r, dict) else None
    if value is not None:
        row.quality = float(value)
        n = r.get("n", r.get("tokens"))
        row.n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
        row.quality_note = f"{r.get('data')} {r.get('split')}, n={n}, batch {r.get('batch_size')}"
        if art.task != "text-generation" and row.n:
            row.ci95, row.correct = _interval(r, row.quality, row.n), _correct(r, row.n)
    return row


def _interval(result: dict, accuracy: float, n: int) -> tuple[float, float]:
    """The stored 95% interval, or the Wilson interval of a result evaluated before evaluate stored one."""
    ci = result.get("accuracy_ci95")
    if isinstance(ci, list) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return float(ci[0]), float(ci[1])
    return wilson(round(accuracy * n), n)


def _correct(result: dict, n: int) -> np.ndarray | None:
    """Per-example correctness, if the result holds it (evaluations since issue 18) and it is intact."""
    try:
        return unpack_correct(result["correct"], n)
    except (KeyError, TypeError, ValueError):  # absent, not a string, or not n bits (binascii.Error is a ValueError)
        return None


def _local_speed(row: Row, art: Artifact, cfg: ReportConfig, machines: dict) -> None:
    for key, result in art.manifest.results.items():
        if key.startswith("bench/") and isinstance(result, dict):
            machines.setdefault(LOCAL, dict(result.get("machine") or {}))
            _add_date(machines[LOCAL], result.get("created"))
            _add_speed(row, LOCAL, result.get("rows") or [], cfg)


def _add_date(machine: dict, created) -> None:
    """Note the UTC day a benchmark on `machine` was made (its result's `created` time), once per day."""
    if machine and isinstance(created, (int, float)) and not isinstance(created, bool):
        day = time.strftime("%Y-%m-%d", time.gmtime(created))
        machine["measured"] = sorted(set(machine.get("measured", [])) | {day})


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
    machines[machine] = dict(result.get("machine") or {})
    _add_date(machines[machine], result.get("created"))
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
    if report.recommended is not None and report.cost == "latency":
        report.recommended = _break_tie(report, [r for r in shippable if r.within_budget], cost, loss)


def _break_tie(report: Report, candidates: list[Row], cost, loss) -> Row:
    """The fastest artifact, unless others within `speed_tie` of its latency (a tie: timing noise) are
    smaller, or as small and better: then the smallest of them, the best of those; the run notes why."""
    fastest, tol = report.recommended, report.cfg.speed_tie
    size = lambda r: r.size_mb if r.size_mb else float("inf")  # noqa: E731
    tied = [r for r in candidates if cost(r) <= cost(fastest) * (1 + tol)]
    small = min(size(r) for r in tied)
    pick = min((r for r in tied if size(r) <= small * (1 + tol)), key=lambda r: (loss(r), cost(r)))
    if pick is not fastest:
        why = (f"smaller ({pick.size_mb:.3g} MB against {fastest.size_mb:.3g})" if size(pick) < size(fastest) / (1 + tol)
               else f"{'lower' if report.metric == 'perplexity' else 'higher'} {report.metric} "
                    f"({_quality(pick.quality, report.metric)} against {_quality(fastest.quality, report.metric)})")
        report.notes.append(f"{pick.name} is recommended over the fastest, {fastest.name}: their p50s "
                            f"({cost(pick):.3g} and {cost(fastest):.3g} ms) are within {tol:.0%}, a tie on a shared "
                            f"machine, and {pick.name} is {why} (report: speed_tie)")
    return pick


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
        over = _over_budget(report)
        if over:
            raise CheckFailed(*over)
        raise CheckFailed(f"no artifact in {folder} is both measured and within the budget"
                          + (f" ({report.notes[-1]})" if report.notes else ""),
                          "add evaluate (and bench) steps before the step whose input is `recommended`")
    return report.recommended.name


def _over_budget(report: Report) -> tuple[str, str] | None:
    """(problem, fix) when artifacts were measured but none a bundle can hold is within the budget: the run
    says so plainly and ships nothing, rather than an artifact that lost more than the user allowed."""
    rows = [r for r in report.rows if r.quality is not None and r.format == "onnx"]
    if not rows or report.original is None or report.original.quality is None:
        return None
    perplexity = report.metric == "perplexity"
    best = min(rows, key=lambda r: r.quality) if perplexity else max(rows, key=lambda r: r.quality)
    ref = report.original.quality
    if perplexity:
        gap, budget = f"{best.quality / ref - 1:+.1%}", f"+{report.cfg.perplexity_budget:.1%} perplexity"
        key = "perplexity_budget"
    else:
        gap, budget = f"{(best.quality - ref) * 100:+.1f} points", f"{report.cfg.accuracy_budget * 100:g} points"
        key = "accuracy_budget"
    return (f"no ONNX artifact is within the budget ({budget} from the original {report.original.name}, "
            f"{report.metric} {ref:.4f}): the best, {best.name}, has {best.quality:.4f} ({gap})",
            f"raise report: {key} in the recipe if that loss is acceptable, or give the student more to learn "
            f"from (more data, longer schedules: docs/guide.md); nothing is packaged over budget")


# ---------------------------------------------------------------- table and summary (plain text: the terminal,
# report.md and report.html all show these cells; toolchain/render.py lays them out)


def table(report: Report, compact: bool = False) -> tuple[list[list], list[str]]:
    """Rows and headers of the artifact table. `compact` (the terminal) keeps what decides, about 110
    characters wide: no format, interval, p90 or throughput columns (report.md and .html have them)."""
    accuracy = report.metric == "accuracy"
    headers = ["", "artifact", "stage"] + ([] if compact else ["format"]) + [report.metric]
    headers += ([] if compact else ["95% interval"]) + ["vs original"] if accuracy else []
    headers += ["size MB", "size vs original"]
    mobile = _mobile(report)
    if mobile:
        headers.append(f"{report.target} EP nodes")
    for i, (machine, provider) in enumerate(report.groups):
        g = f"{machine}/{provider}"
        headers += [f"{g} p50 ms"] + ([] if compact else [f"{g} p90 ms", f"{g} throughput"])
        headers += ["speed vs original"] if i == 0 else []
    orig = report.original
    out = []
    for r in report.rows:
        mark = "★" if r is report.recommended else ("front" if r.pareto else "")
        cells = [mark, r.name, r.stage] + ([] if compact else [r.format]) + [_quality(r.quality, report.metric)]
        cells += ([] if compact else [interval_text(r.ci95)]) + [vs_original_text(r, report, short=compact)] \
            if accuracy else []
        cells += [_num(r.size_mb), times(orig.size_mb if orig else None, r.size_mb, "smaller", "larger")
                  if r is not orig else "original"]
        if mobile:
            x = r.readiness
            cells.append(f"{x['share']:.0%} ({x['partitions']} part.)" if x else "")
        for i, g in enumerate(report.groups):
            s = r.speed.get(g)
            cells += [_num(s.p50_ms if s else None)]
            cells += [] if compact else [_num(s.p90_ms if s else None),
                                         f"{_num(s.throughput)} {s.unit}" if s and s.throughput else ""]
            if i == 0:
                base = orig.speed.get(g) if orig else None
                cells.append("original" if r is orig else
                             times(base.p50_ms if base else None, s.p50_ms if s else None, "faster", "slower"))
        out.append(cells)
    if report.baseline is not None and accuracy:
        b = report.baseline
        ci = wilson(round(b["accuracy"] * b["n"]), b["n"]) if isinstance(b.get("n"), int) and b["n"] > 0 else None
        name = f"TF-IDF baseline (C={b['C']:g})" if compact else f"baseline ({b['model']}, C={b['C']:g})"
        cells = ["", name, "baseline"] + ([] if compact else ["sklearn"]) + [_quality(b["accuracy"])]
        cells += [] if compact else [interval_text(ci)]
        out.append(cells + [""] * (len(headers) - len(cells)))
    return out, headers


def _num(v) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _quality(v, metric: str = "accuracy") -> str:
    """Accuracy always with four decimals (1.0000, not 1), so a column of them lines up."""
    return f"{v:.4f}" if v is not None and metric == "accuracy" else _num(v)


def times(before, after, fewer: str, more: str) -> str:
    """One way to say a ratio of sizes or latencies: '6.1x smaller', '1.3x slower', 'same'."""
    if not before or not after:
        return ""
    ratio = before / after
    if round(ratio, 1) == 1.0:
        return "same"
    return f"{ratio:.1f}x {fewer}" if ratio > 1 else f"{1 / ratio:.1f}x {more}"


def interval_text(ci: tuple[float, float] | None) -> str:
    return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else ""


def vs_original_text(r: Row, report: Report, short: bool = False) -> str:
    """'-0.4 pt, within noise (p 0.52)': the difference in points, and what the paired test says of it
    (`short`: '-0.4 pt (p 0.52)' when within noise)."""
    if r is report.original:
        return "original"
    v = r.vs_original
    if not v:
        return ""
    diff = f"{v['diff'] * 100:+.1f} pt"
    if v["p"] is None:
        return f"{diff} (not paired)"
    verdict = "within noise" if v["within_noise"] else ("worse" if v["diff"] < 0 else "better")
    if short and v["within_noise"]:
        return f"{diff} ({p_text(v['p'])})"
    return f"{diff}, {verdict} ({p_text(v['p'])})"


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p {p:.3f}" if p < 0.01 else f"p {p:.2f}"


def summary(report: Report) -> str:
    """One sentence: what to ship, and how it compares with the original."""
    r, o = report.recommended, report.original
    if r is None:
        return "No artifact can be recommended: " + ("; ".join(report.notes) or "none is within the budget")
    points = report.cfg.accuracy_budget * 100
    budget = (f"budget {points:g} point{'' if points == 1 else 's'}" if report.metric == "accuracy"
              else f"budget +{report.cfg.perplexity_budget:.0%}")
    ci = f" (95% interval {interval_text(r.ci95)})" if r.ci95 else ""
    parts = [f"Ship {r.name} ({r.stage}, {r.format}): {report.metric} {_quality(r.quality, report.metric)}{ci}"]
    if o is not None and o is not r:
        parts[0] += f" vs {_quality(o.quality, report.metric)} for the original {o.name}"
        if r.vs_original:
            parts[0] += f", {vs_original_text(r, report)}"
        parts[0] += f"; {budget}"
        smaller = times(o.size_mb, r.size_mb, "smaller", "larger")
        parts.append(f"{r.size_mb:.3g} MB, {'the same size' if smaller == 'same' else smaller}" if r.size_mb else "")
        g = report.primary
        if g in r.speed and g in o.speed and r.speed[g].p50_ms and o.speed[g].p50_ms:
            parts.append(f"p50 {r.speed[g].p50_ms:.2f} ms at batch {report.cfg.batch} on {g[1]}, "
                         + times(o.speed[g].p50_ms, r.speed[g].p50_ms, "faster", "slower").replace("same", "as fast"))
    elif o is r:
        parts.append("no smaller or faster artifact stayed within the budget")
    if report.target != "host" or r.int8:
        parts.append(f"target {report.target}" + (f", {r.int8.split(', target')[0]}" if r.int8 else ""))
    if r.readiness:
        x = r.readiness
        parts.append(f"{x['ep']} runs {x['supported_nodes']}/{x['nodes']} nodes in {x['partitions']} partition(s)")
    return "; ".join(p for p in parts if p) + "."


def _machine_line(m: dict) -> str:
    """CPU, cores, threads and why that many (the load it saw), ISA, onnxruntime, the day(s) measured."""
    isa = " ".join(k for k, v in (m.get("isa") or {}).items() if v)
    ort = (m.get("onnxruntime") or {}).get("version", "?")
    threads = m.get("threads_why") or f"{m.get('threads_used', '?')} thread(s) per model"
    days = ", ".join(m.get("measured") or [])
    return (f"{m.get('cpu_model', '?')}, {m.get('cores_usable', '?')} usable cores; {threads}; "
            f"{isa or 'no ISA flags'}; onnxruntime {ort}" + (f"; measured {days} (UTC)" if days else ""))


def as_dict(report: Report) -> dict:
    """The report as JSON-ready data (for --json)."""
    return {
        "folder": str(report.folder), "metric": report.metric, "ranked_by": report.cost,
        "original": report.original.name if report.original else None,
        "recommended": report.recommended.name if report.recommended else None,
        "summary": summary(report), "config": dataclasses.asdict(report.cfg),
        "target": report.target,
        "rows": [{"name": r.name, "stage": r.stage, "format": r.format, "task": r.task, "path": str(r.path),
                  report.metric: r.quality, "measured_on": r.quality_note, "n": r.n,
                  "ci95": list(r.ci95) if r.ci95 else None, "vs_original": r.vs_original,
                  "size_mb": r.size_mb, "pareto": r.pareto,
                  "within_budget": r.within_budget, "int8": r.int8, "readiness": r.readiness,
                  "speed": {f"{m}/{p}": dataclasses.asdict(s) for (m, p), s in r.speed.items()}} for r in report.rows],
        "machines": report.machines, "bundles": [str(b) for b in report.bundles], "notes": report.notes,
        "baseline": report.baseline,
        "files": {"html": str(report.folder / "report.html"), "markdown": str(report.folder / "report.md")},
    }
