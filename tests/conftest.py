"""Fixtures shared by every test file: the tiny models of tiny_models.py, built once per session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Tests never reach a model hub: set before transformers / huggingface_hub read it at import.
os.environ["HF_HUB_OFFLINE"] = "1"
# Remote code a test loads on purpose is copied here by transformers, not into ~/.cache/huggingface.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="toolchain-test-hf-modules-"))

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402


# What the suite pins so that no test reads the host's CPU: int8 preset detection sees an AVX-512 VNNI
# machine on every host (AVX2-only, AVX-512, VNNI, ARM64). Detection itself is tested on given flags, and
# test_quantize.py runs the quantize assertions under every preset with detection overridden.
PINNED_PRESET = ("avx512_vnni", "pinned by tests/conftest.py: tests never read the host's CPU")


@pytest.fixture(scope="session", autouse=True)
def pinned_int8_preset():
    """Session-wide, so session fixtures that quantize (recipes) see it too."""
    from toolchain.quantize import stage

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage, "detect_preset", lambda: PINNED_PRESET)
        yield PINNED_PRESET


@pytest.fixture(scope="session", autouse=True)
def no_default_augmentation():
    """distill's default adds perturbed copies until the teacher labels 8,000 texts: on the tests' 20-60-row CSVs
    that is 8 copies, and the suite 7x slower. Tests that mean it ask for it (augment=N), and
    test_distill.py tests the default's arithmetic."""
    from toolchain import distill

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill, "AUGMENT_TARGET", 0)
        yield


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A function name -> folder of a saved tiny model: 'bert', 'distilbert', 'roberta' (classifiers), 'gpt2', 'llama'."""
    root = tmp_path_factory.mktemp("tiny-models")
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tiny_models.BUILDERS[name](root / name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_onnx(tiny, tmp_path_factory):
    """A function name -> exported ONNX artifact of a tiny model (with_past for 'gpt2-past'/'llama-past')."""
    from toolchain.export import ExportConfig, export

    root = tmp_path_factory.mktemp("tiny-onnx")
    built = {}

    def get(name: str):
        if name not in built:
            base, _, past = name.partition("-")
            built[name] = export(tiny(base), ExportConfig(with_past=bool(past)), root / name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_run(tiny, tmp_path_factory):
    """The tiny recipe (export -> evaluate -> package) run once through the CLI: (run folder, recipe, output)."""
    from click.testing import CliRunner

    import recipe_helpers
    from toolchain.cli import main

    root = tmp_path_factory.mktemp("tiny-run")
    recipe = root / "recipe.yaml"
    recipe.write_text(recipe_helpers.tiny_recipe(tiny("bert"), recipe_helpers.write_csv(root / "reviews.csv")))
    result = CliRunner().invoke(main, ["run", str(recipe), "--out", str(root / "run")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "run", recipe, result.output
