"""Every toolchain module imports on its own, and no new import cycle creeps in.

Issue 18 removed two cycles (distill <-> kd_trainer, recipe <-> report): a cycle works only while every
caller happens to import its modules in a lucky order, and it hides which way the data flows.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "toolchain"
# Cycles that were here before this test, each a set of modules; a fix removes its line.
KNOWN_CYCLES = [
    {"toolchain.quantize.stage", "toolchain.quantize.weight_only"},  # weight_only reuses stage's helpers
]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The toolchain modules `name` imports anywhere in its file (at the top or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = node.module if not node.level else f"{base}.{node.module}" if node.module else base
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names}
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, out = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while not comp or v not in comp:
                comp.add(stack.pop())
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_new_import_cycles():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    new = [sorted(c) for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not new, f"import cycles: {new}; move the shared name into a module both can import"


def test_the_known_cycles_are_still_cycles():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = cycles(graph)
    assert [c for c in KNOWN_CYCLES if c not in found] == [], "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first, with no toolchain module loaded before it: an order-dependent cycle fails here.

    One interpreter for all (torch and transformers load once); toolchain's modules are dropped between imports.
    """
    # __main__ runs the CLI; bundle_predict/bundle_generate are the scripts a bundle ships (predict.py and
    # generate.py): they run beside each other in a bundle folder, never as toolchain modules.
    skip = {"toolchain.__main__", "toolchain.bundle_predict", "toolchain.bundle_generate"}
    names = [n for n in modules() if n not in skip]
    script = (
        "import importlib, sys, traceback\n"
        f"failed = []\nfor name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'toolchain' or m.startswith('toolchain.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception:\n        failed.append(name + ': ' + traceback.format_exc(limit=-1).strip())\n"
        "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


def test_cycles_finds_a_two_module_loop_and_nothing_else():
    assert cycles({"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"c"}}) == [{"a", "b"}]
