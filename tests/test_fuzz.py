"""Property and fuzz tests: the manifest and stage-config parsers and the ONNX loader meet arbitrary
input and answer with a result or the toolchain's own error, never a library exception.

A few dozen examples each in the default run (seconds); more with TOOLCHAIN_FUZZ_EXAMPLES=5000.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolchain.artifact import MANIFEST, Artifact, Manifest, StageRecord
from toolchain.config import config_from_dict, config_to_dict
from toolchain.errors import RecipeError, ToolchainError

LONG = int(os.environ.get("TOOLCHAIN_FUZZ_EXAMPLES", "0"))


def examples(default: int):
    """Hypothesis settings: `default` examples, or TOOLCHAIN_FUZZ_EXAMPLES when set; no example database."""
    return settings(max_examples=LONG or default, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


text = st.text(max_size=12)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12)
finite = st.floats(allow_nan=False, allow_infinity=False)
digests = st.text("0123456789abcdef", min_size=64, max_size=64)
rel_paths = st.lists(st.text("abcxyz_-.0123", min_size=1, max_size=6).filter(lambda p: p not in (".", "..")),
                     min_size=1, max_size=3).map("/".join)
records = st.builds(StageRecord, stage=text, config=st.dictionaries(text, json_values, max_size=3),
                    input_hash=st.none() | digests, started=finite | st.integers(), finished=finite | st.integers(),
                    metrics=st.dictionaries(text, json_values, max_size=3),
                    versions=st.dictionaries(text, text, max_size=3))
manifests = st.builds(Manifest, format=st.sampled_from(["torch", "onnx"]), task=text, model_type=text,
                      files=st.dictionaries(rel_paths, digests, max_size=4), lineage=st.lists(records, max_size=3),
                      results=st.dictionaries(text, json_values, max_size=3))


@examples(60)
@given(manifests)
def test_manifest_round_trips_through_json(manifest):
    assert Manifest.from_json(manifest.to_json()) == manifest


@examples(100)
@given(json_values)
def test_manifest_from_arbitrary_json_is_a_manifest_or_our_error(value):
    parsed = _parse_or_our_error(json.dumps(value))
    assert parsed is None or isinstance(parsed, Manifest)


@examples(100)
@given(st.binary(max_size=300))
def test_manifest_from_arbitrary_bytes_is_a_manifest_or_our_error(data):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / MANIFEST).write_bytes(data)
        try:
            loaded = Artifact.load(folder)
        except ToolchainError as exc:
            assert exc.exit_code > 1 and exc.problem  # one of ours, with a message
        else:
            assert isinstance(loaded.manifest, Manifest)


@examples(100)
@given(manifests, st.data())
def test_manifest_with_one_field_replaced_is_usable_or_our_error(manifest, data):
    # Valid manifests with one value, anywhere in the tree, swapped for arbitrary JSON: the deep type
    # checks either refuse it, or everything that reads a manifest (info, verify) works on it.
    tree = json.loads(manifest.to_json())
    path = data.draw(st.sampled_from(_paths(tree)))
    _set(tree, path, data.draw(json_values))
    parsed = _parse_or_our_error(json.dumps(tree))
    if parsed is not None:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / MANIFEST).write_text(parsed.to_json())
            result = CliRunner().invoke(_main(), ["info", folder], catch_exceptions=False)
            assert result.exit_code in (0, 9), result.output


def _parse_or_our_error(text_: str) -> Manifest | None:
    try:
        return Manifest.from_json(text_)
    except ToolchainError:
        return None


def _main():
    from toolchain.cli import main

    return main


def _paths(tree, prefix=()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, prefix + (i,))
    return out


def _set(tree, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _stage_configs():
    from toolchain.evaluate import EvaluateConfig
    from toolchain.stages import STAGES

    return [entry[0] for entry in STAGES.values()] + [EvaluateConfig]


@pytest.mark.parametrize("cls", _stage_configs(), ids=lambda c: c.__name__)
@examples(80)
@given(data=st.data())
def test_stage_config_from_arbitrary_dict_is_a_config_or_a_recipe_error(cls, data):
    names = [f.name for f in dataclasses.fields(cls)]
    keys = st.sampled_from(names) | text
    values = json_values | st.floats() | st.integers(min_value=-(2**70), max_value=2**70)
    raw = data.draw(st.dictionaries(keys, values, max_size=5) | json_values)
    try:
        cfg = config_from_dict(cls, raw)
    except RecipeError:
        return
    assert isinstance(cfg, cls)
    assert config_from_dict(cls, config_to_dict(cfg)) == cfg  # what a manifest stores reloads the same


@pytest.fixture(scope="module")
def onnx_bytes(tiny_onnx) -> bytes:
    return tiny_onnx("bert").onnx_path.read_bytes()


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: flip bytes, truncate, insert random bytes, or repeat a slice; as a corrupt download would."""
    kind = rng.choice(["flip", "truncate", "insert", "splice"])
    b = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "truncate":
        del b[rng.randrange(len(b)):]
    elif kind == "insert":
        at = rng.randrange(len(b))
        b[at:at] = rng.randbytes(rng.randint(1, 64))
    else:
        start = rng.randrange(len(b))
        b[start:start] = b[start:start + rng.randint(1, 256)]
    return bytes(b)


@examples(25)
@given(seed=st.integers(0, 2**32 - 1))
def test_onnx_loader_on_mutated_bytes_gives_a_session_or_our_error(onnx_bytes, seed):
    from toolchain.runtime import make_session

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(_mutate(onnx_bytes, random.Random(seed)))
        try:
            session = make_session(path)  # check_onnx_file first, then onnxruntime
        except ToolchainError as exc:
            assert exc.exit_code > 1 and exc.problem  # one of ours, with a message
        else:
            assert session.get_inputs()
