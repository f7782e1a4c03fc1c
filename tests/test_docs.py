"""The README and docs/ stay true: every path and anchor they name exists, the quickstart stays short, and nothing
in the repository points at files outside it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A repository path written out in the text: a top folder, then a file or folder name, with shell braces
# (`compare.{json,md}`); one written after --out or --work is what a command will create, not a kept file.
REPO_PATH = re.compile(r"(?<![\w./-])(?<!--out )(?<!--work )((?:toolchain|tests|benchmarks|models|docs)/[\w./-]*[\w/])"
                       r"(?:\.\{([\w,]+)\})?")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.M)}


def exists(rel: str) -> bool:
    return (ROOT / rel).exists()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_repository_path_a_doc_names_exists(doc):
    named = set()
    for path, braces in REPO_PATH.findall(doc.read_text()):
        named |= {f"{path}.{ext}" for ext in braces.split(",")} if braces else {path}
    missing = sorted(p for p in named if not exists(p))
    assert not missing, f"{doc.name} names paths that are not in the repository: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_of_a_doc_reaches_a_file_and_heading_that_exist(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not exists(rel):
            broken.append(target)
        elif anchor and dest.exists() and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{doc.name} links to missing files or headings: {broken}"


def section(text: str, heading: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"## {heading}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def test_readme_is_short_with_a_quickstart_under_60_lines():
    text = (ROOT / "README.md").read_text()
    quickstart = section(text, "Quickstart")
    assert len(quickstart) < 60, f"the quickstart is {len(quickstart)} lines"
    assert len(text.splitlines()) <= 220
    assert "make demo" in "\n".join(quickstart) and "make test" in "\n".join(quickstart)
    for must in ("## The CLI", "## Results", "## Glossary", "## Repository map", "(docs/cli.md)", "(docs/results.md)"):
        assert must in text


def test_readme_glossary_defines_the_jargon_it_uses():
    glossary = "\n".join(section((ROOT / "README.md").read_text(), "Glossary"))
    for term in ("KD", "QDQ", "GQA", "EP", "Pareto", "VNNI", "ORT", "int8 dynamic", "int8 static"):
        assert f"| {term}" in glossary or f", {term}" in glossary or f"{term} |" in glossary, term


def test_every_result_section_says_how_to_reproduce_it():
    text = (ROOT / "docs" / "results.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert sections and all("Reproduce:" in s for s in sections), [s.splitlines()[0] for s in sections
                                                                     if "Reproduce:" not in s]


def test_nothing_in_the_repository_points_outside_it():
    outside = re.compile(r"DESIGN\.md|STYLE\.md|\.\./shared|shared/DESIGN")
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "Makefile", *DOCS]
    for folder in ("toolchain", "benchmarks", "models", "tests"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".toml")]
    hits = [p.relative_to(ROOT).as_posix() for p in set(files)
            if p != Path(__file__).resolve() and outside.search(p.read_text(errors="replace"))]
    assert not hits, f"these refer to files that are not in the repository: {sorted(hits)}"
