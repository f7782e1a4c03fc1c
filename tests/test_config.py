import pytest

from toolchain.config import config_from_dict, config_to_dict
from toolchain.errors import RecipeError
from toolchain.export import ExportConfig


def test_config_round_trips_through_a_dict():
    cfg = ExportConfig(task="text-generation", with_past=True, opset=17)
    assert config_from_dict(ExportConfig, config_to_dict(cfg)) == cfg


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(RecipeError, match="unknown key 'opst'"):
        config_from_dict(ExportConfig, {"opst": 17})


def test_wrong_type_is_an_error():
    with pytest.raises(RecipeError, match="expected int"):
        config_from_dict(ExportConfig, {"opset": "17"})


@pytest.mark.parametrize("bad", [{"opset": 5}, {"atol": -1.0}, {"task": "translation"},
                                 {"task": "text-classification", "with_past": True}])
def test_invalid_values_are_rejected_by_the_config(bad):
    with pytest.raises(RecipeError):
        config_from_dict(ExportConfig, bad)
