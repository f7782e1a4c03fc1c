"""Every row of the bad-input matrix (tests/bad_inputs.py): exit code, one error line with its fix
line, no traceback, and nothing written anywhere in the test's folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import bad_inputs
from bad_inputs import CONFIG_ROWS, DATA_FILE, ROWS, SITUATIONS, Kit, snapshot
from toolchain.cli import main

PLACEHOLDER = re.compile(r"\{(\w+)\}")
REPORTS = {"info", "verify"}  # commands whose report (what they found) precedes the error


def materialize(row: bad_inputs.Row, root: Path, kit: Kit) -> list[str]:
    """Build each situation the row names under `root`; return its argv with real paths."""
    paths = {}
    for name in dict.fromkeys(PLACEHOLDER.findall(row.args)):
        folder = root / name
        SITUATIONS[name].build(folder, kit)
        paths[name] = str(folder / DATA_FILE.get(name, "data.csv")) if name.startswith("data") else str(folder)
    return [PLACEHOLDER.sub(lambda m: paths[m.group(1)], a) for a in row.args.split()]


@pytest.fixture
def kit(tiny, tiny_onnx, tmp_path):
    return Kit(tiny, tiny_onnx, tmp_path)


def test_matrix_has_at_least_25_rows_with_distinct_situations():
    assert len(ROWS) >= 25
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert {r.command for r in ROWS} >= {"export", "finetune", "evaluate", "info", "verify"}
    used = {n for r in ROWS for n in PLACEHOLDER.findall(r.args)}
    assert used <= set(SITUATIONS), used - set(SITUATIONS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_row(row, kit, tmp_path):
    args = materialize(row, tmp_path, kit)
    before = snapshot(tmp_path)
    # catch_exceptions=False: an exception that escapes the CLI fails the test with its traceback.
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    out = result.output
    assert result.exit_code == row.code, out
    assert "Traceback" not in out
    if row.code == 2:  # click's usage errors: its own format, with the help hint as the fix
        assert "Error:" in out and row.says in out and row.fix in out
    else:
        lines = out.rstrip("\n").splitlines()
        errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
        assert len(errors) == 1, out
        assert row.says in lines[errors[0]], out
        assert errors[0] + 1 < len(lines) and lines[errors[0] + 1].startswith("  fix: "), out
        assert row.fix in lines[errors[0] + 1], out
        assert len(lines) == errors[0] + 2, out  # the fix is the last line
        if row.command not in REPORTS:
            assert len(lines) == 2, out  # nothing but the error and its fix
    assert snapshot(tmp_path) == before, "a failed command wrote or changed something"


@pytest.mark.parametrize("stage, data, says", CONFIG_ROWS, ids=[f"{s}-{m}" for s, _, m in CONFIG_ROWS])
def test_bad_stage_config_is_a_recipe_error(stage, data, says):
    from toolchain.config import config_from_dict
    from toolchain.errors import RecipeError
    from toolchain.stages import STAGES

    with pytest.raises(RecipeError) as info:
        config_from_dict(STAGES[stage][0], data, where=f"stages[0].{stage}")
    assert says in info.value.problem and info.value.fix


@pytest.mark.parametrize("name", ["shape_mismatch", "custom_code"])
def test_bad_input_in_a_real_process_prints_only_the_error(name, kit, tmp_path):
    # In-process runs cannot see what libraries log to the real stderr; a subprocess can.
    row = next(r for r in ROWS if r.args.startswith(f"export {{{name}}}"))
    args = materialize(row, tmp_path, kit)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parent.parent, timeout=300)
    assert proc.returncode == row.code
    assert proc.stdout == ""
    lines = proc.stderr.rstrip("\n").splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("  fix: "), proc.stderr


def test_bad_input_doc_is_generated_from_the_rows():
    import gen_bad_input_doc

    doc = Path(__file__).parent.parent / "docs" / "bad-input.md"
    assert doc.read_text() == gen_bad_input_doc.render(), "run: python tests/gen_bad_input_doc.py"
