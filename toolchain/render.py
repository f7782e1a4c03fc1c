"""Lay a Report (toolchain/report.py: the data and the recommendation) out as report.md, report.html and plots.

Both pages come from one list of blocks (heading, paragraph, list, code, table, figure) whose text holds
`Code` and `Strong` spans instead of Markdown, so the Markdown writer adds backticks and the HTML writer
adds <code>, and neither page shows the other's markup. Nothing here decides what to recommend.
"""

from __future__ import annotations

import base64
import html as html_lib
import time
from dataclasses import dataclass
from pathlib import Path

from .report import Report, ReportConfig, Row, _machine_line, collect, interval_text, summary, table, times

# The mark of a file `report` wrote: one without it is the user's, and never replaced.
MARK = "<!-- written by toolchain report; replaced on every run -->"
# tab10 without its orange (the recommended artifact's), then tab20b's dark tones: a recipe with a branch has 11+
# artifacts, and a repeated colour makes two of them one in the legend.
COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#d62728",
          "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#5254a3"]
RECOMMENDED = "#ff7f0e"


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Strong:
    text: str


# Inline text: a str or a list of str / Code / Strong. A block: (kind, ...) with kind one of
# h1, h2, p, ul (a list of inline texts), pre (plain text), table (headers, rows), figure (name, title, caption).


def _spans(text) -> list:
    return [text] if isinstance(text, (str, Code, Strong)) else list(text)


# ---------------------------------------------------------------- the document


def document(report: Report, plot_titles: dict[str, tuple[str, str]]) -> list[tuple]:
    """The page as blocks, in reading order: verdict, table, how it was measured, plots, bundle, notes."""
    rows, headers = table(report)
    blocks = [("h1", f"Report: {report.folder.name}")]
    blocks += [("p", report.description)] if report.description else []
    blocks += [("summary", [Strong("Recommended:"), " " + summary(report)] if report.recommended else summary(report))]
    blocks += [("table", headers, rows), ("ul", _legend(report))]
    blocks += [("h2", "How it was measured"), ("ul", _measured(report))]
    if plot_titles:
        blocks += [("h2", "Plots")] + [("figure", n, t, c) for n, (t, c) in plot_titles.items()]
    blocks += [("h2", "Use this bundle")] + _use_bundle(report)
    if report.notes:
        blocks += [("h2", "Notes"), ("ul", list(report.notes))]
    return blocks


def _legend(report: Report) -> list:
    cost = "p50 latency" if report.cost == "latency" else "model size"
    orig = report.original.name if report.original else "?"
    items = [[Strong("★"), f" recommended: on the Pareto front of {report.metric} against {cost}, within the budget "
              f"of the original ({orig}), the lowest {cost} among ONNX artifacts (what a bundle holds)"
              + (f"; p50s within {report.cfg.speed_tie:.0%} of it tie, and a tie goes to the smaller file, then the "
                 f"better {report.metric}. " if report.cost == "latency" and report.cfg.speed_tie else ". "),
              Strong("front"), ": on the Pareto front."]]
    if report.metric == "accuracy":
        items.append("95% interval: the Wilson score interval of the accuracy over the test examples; two artifacts "
                     "whose intervals overlap may not differ at all.")
        items.append("vs original: the accuracy difference in points; on the same examples, McNemar's exact test on "
                     "the examples only one of the two gets right says whether it is more than noise "
                     "(within noise: p >= 0.05).")
    items.append(f"Latency at batch {report.cfg.batch} (nearest measured); throughput is the best over batch sizes; "
                 "size is the weights file(s).")
    return items


def _measured(report: Report) -> list:
    """Where and on what: machines (threads and why, load, day), test data, target, int8 formats, the date."""
    items = [[f"Machine {label}: ", _machine_line(m)] for label, m in report.machines.items() if m]
    if not items:
        items.append("No benchmark was run: no machine, and the ranking is by model size.")
    notes = {r.quality_note for r in report.rows if r.quality_note}
    if len(notes) == 1:
        items.append(f"{report.metric.capitalize()} of every artifact on {notes.pop()}.")
    else:
        items += [[f"{report.metric.capitalize()} of ", Code(r.name), f" on {r.quality_note}."]
                  for r in report.rows if r.quality_note]
    items.append(_target_line(report))
    items += [["Quantized ", Code(r.name), f": {r.int8} (the preset follows the target; ", Code("host"),
               " detects it from the building CPU)."] for r in report.rows if r.int8]
    items.append(f"Report written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    return items


def _target_line(report: Report) -> list:
    from .targets import TARGETS

    t = TARGETS.get(report.target)
    if t is None:
        return ["Target: ", Code(report.target), "."]
    return ["Target: ", Code(t.name), f", {t.runs_on}; fusions {t.fusions}, "
            f"{'inputs fixed to [1, max_length]' if t.fixed_shapes else 'dynamic shapes'}, .ort for {t.ort_platform}, "
            f"providers {', '.join(t.providers)}."]


def _use_bundle(report: Report) -> list[tuple]:
    """How to run each packaged bundle: the commands, then its files."""
    if not report.bundle_info:
        name = report.recommended.name if report.recommended else "ARTIFACT"
        return [("p", ["This run packaged no bundle. Package the recommended artifact with ",
                       Code(f"toolchain package {report.folder}/{name} BUNDLE"), "."])]
    blocks = []
    for b in report.bundle_info:
        source = f" (packaged from {b.source})" if b.source else ""
        blocks += [("p", [Strong(b.path.name), f"{source}: a {b.task} bundle that needs only ",
                          Code("pip install onnxruntime tokenizers numpy"), ". In its folder:"]),
                   ("pre", _bundle_commands(b, report.folder)),
                   ("ul", [[Code(name), f" {file_size(mb)}" + (f": {FILES[name]}" if name in FILES else "")]
                           for name, mb in b.files])]
    return blocks


FILES = {
    "model.onnx": "the model", "model.ort": "ORT format, for a reduced or mobile onnxruntime build",
    "predict.py": "runs the model (onnxruntime, tokenizers, numpy only)",
    "generate.py": "streams a continuation token by token",
    "bundle.json": "inputs, outputs, metrics, sha256 of every file, smoke-test outputs",
    "labels.json": "label id -> name", "tokenizer.json": "the tokenizer", "README.md": "how to run and check it",
    "mobile_readiness.md": "what NNAPI / CoreML would run", "manifest.json": "lineage: how it was made",
}


def file_size(mb: float) -> str:
    return f"{mb:.3g} MB" if mb >= 0.1 else f"{mb * 1000:.3g} KB" if mb >= 0.001 else "under 1 KB"


def _bundle_commands(b, folder: Path) -> str:
    names = {name for name, _ in b.files}
    if b.task == "text-generation":
        lines = ['python predict.py --tokens 20 "To be, or not to be"        # greedy continuation']
        if "generate.py" in names:
            lines.append('python generate.py --tokens 64 "To be, or not to be"   # streams tokens')
    else:
        lines = ['python predict.py "A charming, moving film." "A waste of two hours."   # label + probabilities']
    if "model.ort" in names:
        lines.append('python predict.py --model model.ort --json "..."   # the ORT-format model, JSON out')
    lines.append("python predict.py --smoke    # this machine gives the outputs stored in bundle.json")
    lines.append(f"toolchain verify {folder / b.path.name}    # from here: hashes and smoke inference")
    return "\n".join(lines)


# ---------------------------------------------------------------- Markdown and HTML


def markdown(report: Report, plot_svgs: dict[str, str]) -> str:
    lines = []
    for block in document(report, plot_titles(report, plot_svgs)):
        lines += _md_block(block) + [""]
    return "\n".join(lines)


def _md_inline(text) -> str:
    def one(s):
        if isinstance(s, Code):
            return f"`{s.text}`"
        return f"**{s.text}**" if isinstance(s, Strong) else s

    return "".join(one(s) for s in _spans(text))


def _md_block(block: tuple) -> list[str]:
    kind = block[0]
    if kind in ("h1", "h2"):
        return [f"{'#' * int(kind[1])} {block[1]}"]
    if kind in ("p", "summary"):
        return [_md_inline(block[1])]
    if kind == "ul":
        return [f"- {_md_inline(item)}" for item in block[1]]
    if kind == "pre":
        return ["```", block[1], "```"]
    if kind == "table":
        _, headers, rows = block
        return (["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                + ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows])  # | splits cells
    _, name, title, caption = block
    return [f"![{title}]({plot_file(name)})", "", f"*{caption}*"]


def html(report: Report, plot_svgs: dict[str, str]) -> str:
    """One self-contained page: the table, the plots inline (base64 SVG images), no external assets."""
    esc = html_lib.escape
    body = "\n".join(_html_block(b, plot_svgs) for b in document(report, plot_titles(report, plot_svgs)))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>toolchain report: {esc(report.folder.name)}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td {{ white-space: nowrap; }} td:nth-child(2) {{ white-space: normal; }}
th {{ background: #f3f3f3; }} td:nth-child(2), td:nth-child(3), td:nth-child(4) {{ text-align: left; }}
tr.rec td {{ background: #fff3e0; font-weight: 600; }}
.summary {{ font-size: 16px; padding: .8em 1em; background: #fff3e0; border-left: 4px solid #ff7f0e; }}
code, pre {{ font-family: ui-monospace, monospace; background: #f5f5f5; }}
pre {{ padding: .6em 1em; overflow-x: auto; }}
figure {{ display: inline-block; margin: 1em; vertical-align: top; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; max-width: 640px; }}
</style></head><body>
{body}
</body></html>
"""


def _html_inline(text) -> str:
    def one(s):
        if isinstance(s, Code):
            return f"<code>{html_lib.escape(s.text)}</code>"
        return f"<strong>{html_lib.escape(s.text)}</strong>" if isinstance(s, Strong) else html_lib.escape(s)

    return "".join(one(s) for s in _spans(text))


def _html_block(block: tuple, plot_svgs: dict[str, str]) -> str:
    kind, esc = block[0], html_lib.escape
    if kind in ("h1", "h2"):
        return f"<{kind}>{esc(block[1])}</{kind}>"
    if kind in ("p", "summary"):
        return f"<p{' class=summary' if kind == 'summary' else ''}>{_html_inline(block[1])}</p>"
    if kind == "ul":
        return "<ul>" + "".join(f"<li>{_html_inline(item)}</li>" for item in block[1]) + "</ul>"
    if kind == "pre":
        return f"<pre><code>{esc(block[1])}</code></pre>"
    if kind == "table":
        _, headers, rows = block
        head = "".join(f"<th>{esc(h)}</th>" for h in headers)
        body = "".join(f"<tr{' class=rec' if r[0] == '★' else ''}>" + "".join(f"<td>{esc(str(c))}</td>" for c in r)
                       + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    _, name, title, caption = block
    data = base64.b64encode(plot_svgs[name].encode()).decode()
    return (f"<figure><img alt='{esc(title)}' src='data:image/svg+xml;base64,{data}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


# ---------------------------------------------------------------- plots


def plot_titles(report: Report, plot_svgs: dict[str, str]) -> dict[str, tuple[str, str]]:
    """name -> (title, caption) in words, for the plots that were drawn."""
    g = report.primary
    cost = f"p50 latency (batch {report.cfg.batch}, {g[1]})" if report.cost == "latency" else "model size"
    words = {
        "quality-vs-speed": (f"{report.metric.capitalize()} against {cost}",
                             f"Each artifact's {report.metric} against its {cost}"
                             + (", with its 95% interval as an error bar" if report.metric == "accuracy" else "")
                             + "; the line joins the Pareto front, the dashed line is the budget, the star the "
                               "recommended artifact."),
        "size-by-stage": ("Model size of each artifact", "Weights on disk, in MB, and how much smaller than the "
                                                          "original each artifact is."),
        "latency-by-batch": ("Latency by batch size", "p50 latency of one call at each measured batch size "
                                                      "(log scales), one panel per machine and provider."),
    }
    return {n: words[n] for n in plot_svgs}


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


def _color(report: Report, r: Row) -> str:
    return RECOMMENDED if r is report.recommended else COLORS[report.rows.index(r) % len(COLORS)]


def _plot_tradeoff(report: Report):
    """Quality against cost. Names go in the legend, not beside the points: close points never overlap."""
    import matplotlib.pyplot as plt

    rows = [r for r in report.rows if r.quality is not None]
    if not rows:
        return None
    g = report.primary
    x = (lambda r: r.speed[g].p50_ms) if report.cost == "latency" else (lambda r: r.size_mb)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    front = sorted((r for r in rows if r.pareto), key=x)
    ax.plot([x(r) for r in front], [r.quality for r in front], "-", color="#bbb", zorder=1, label="Pareto front")
    for r in rows:
        err = [[r.quality - r.ci95[0]], [r.ci95[1] - r.quality]] if r.ci95 else None
        ax.errorbar([x(r)], [r.quality], yerr=err, fmt="*" if r is report.recommended else "o",
                    ms=14 if r is report.recommended else 7, color=_color(report, r), capsize=4, zorder=3,
                    label=f"{r.name}: {r.quality:.3f}" + (f" ({interval_text(r.ci95)})" if r.ci95 else "")
                    + (" recommended" if r is report.recommended else ""))
    _budget_line(ax, report)
    ax.set_xlabel(f"p50 latency, ms (batch {report.cfg.batch}, {g[1]})" if report.cost == "latency"
                  else "model size, MB")
    ax.set_ylabel(report.metric + (" (bars: 95% interval)" if report.metric == "accuracy" else ""))
    _log_axis(ax.xaxis, ax.set_xscale)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    ax.grid(alpha=0.3)
    ax.set_title(plot_titles(report, {"quality-vs-speed": ""})["quality-vs-speed"][0])
    return fig


def _budget_line(ax, report: Report) -> None:
    o = report.original
    if o is None or o.quality is None:
        return
    limit = (o.quality * (1 + report.cfg.perplexity_budget) if report.metric == "perplexity"
             else o.quality - report.cfg.accuracy_budget)
    ax.axhline(limit, ls="--", color="#d62728", lw=1, label=f"budget: {limit:.3f}")


def _plot_sizes(report: Report):
    import matplotlib.pyplot as plt

    o = report.original
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(report.rows) + 1.2))
    ax.barh([f"{r.name} ({r.stage})" for r in report.rows], [r.size_mb for r in report.rows],
            color=[_color(report, r) for r in report.rows])
    for i, r in enumerate(report.rows):
        ratio = "original" if r is o else times(o.size_mb if o else None, r.size_mb, "smaller", "larger")
        ax.text(r.size_mb, i, f" {file_size(r.size_mb)}" + (f", {ratio}" if ratio else ""), va="center", fontsize=8)
    ax.set_xlim(0, max(r.size_mb for r in report.rows) * 1.45 or 1)  # room for the text after the longest bar
    ax.invert_yaxis()
    ax.set_xlabel("model size, MB")
    ax.set_title("Model size of each artifact")
    return fig


def _plot_batches(report: Report):
    import matplotlib.pyplot as plt

    if not report.groups:
        return None
    fig, axes = plt.subplots(1, len(report.groups), figsize=(5.5 * len(report.groups), 4), squeeze=False)
    for ax, g in zip(axes[0], report.groups):
        for r in report.rows:
            s = r.speed.get(g)
            if s and s.by_batch:
                batches = sorted(s.by_batch)
                ax.plot(batches, [s.by_batch[b] for b in batches], "-o", label=r.name, color=_color(report, r))
        _log_axis(ax.xaxis, ax.set_xscale, base=2)
        _log_axis(ax.yaxis, ax.set_yscale)
        ax.set_xlabel("batch size")
        ax.set_ylabel("p50 latency per call, ms")
        ax.set_title(f"Latency by batch size: {'this machine' if g[0] == 'local' else g[0]}, {g[1]}")
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


def plot_file(name: str) -> str:
    return f"report-{name}.svg"


# ---------------------------------------------------------------- writing


def write_report(folder: str | Path, others: list[str | Path] = (), cfg: ReportConfig | None = None) -> Report:
    """Write report.md (with its SVG plots) and report.html into `folder`; returns the Report."""
    from .artifact import atomic_write_text
    from .guard import output_lock
    from .recipe import is_run_folder

    report = collect(folder, others, cfg)
    svgs = plots(report)
    files = {plot_file(name): _marked_svg(svg) for name, svg in svgs.items()}
    files |= {"report.md": markdown(report, svgs) + MARK + "\n",
              "report.html": html(report, svgs).replace("<!doctype html>\n", f"<!doctype html>\n{MARK}\n", 1)}
    run_folder = is_run_folder(report.folder)  # reports written before the mark existed are the run's own
    with output_lock(report.folder):  # a `run` writing this folder holds it too (and re-enters it here)
        for name in files:
            _refuse_foreign(report.folder / name, run_folder)
        for name, text in files.items():
            atomic_write_text(report.folder / name, text)
    return report


def _marked_svg(svg: str) -> str:
    head, sep, rest = svg.partition("\n")
    return f"{head}\n{MARK}\n{rest}" if head.startswith("<?xml") else f"{MARK}\n{svg}"


def _refuse_foreign(path: Path, run_folder: bool) -> None:
    """Refuse to replace a file that is not a report this command wrote (a user's report.md, a link, a folder)."""
    from .errors import OutputExists

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
