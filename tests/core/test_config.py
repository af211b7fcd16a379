"""Settings: validation messages that name the parameter, and the published presets."""

from __future__ import annotations

import pytest

import freeu
from freeu import PRESETS, FreeUConfig, get_preset


def test_presets_match_the_published_table() -> None:
    table = {  # docs/method.md section 4: (b1, b2, s1, s2)
        "sd14": (1.3, 1.4, 0.9, 0.2),
        "sd15": (1.5, 1.6, 0.9, 0.2),
        "sd21": (1.4, 1.6, 0.9, 0.2),
        "sdxl": (1.3, 1.4, 0.9, 0.2),
        "sdxl-sweep": (1.1, 1.2, 0.6, 0.4),
        "sd14-v1": (1.2, 1.4, 0.9, 0.2),
        "sd21-v1": (1.1, 1.2, 0.9, 0.2),
        "modelscope": (1.2, 1.4, 0.9, 0.2),
    }
    assert set(PRESETS) == set(table)
    for name, factors in table.items():
        c = get_preset(name).config
        assert (c.b1, c.b2, c.s1, c.s2) == factors
        assert get_preset(name).source
    assert get_preset("sd15").config.version == 2
    assert get_preset("sd21-v1").config.version == 1


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(ValueError, match=r"preset must be one of \['modelscope', 'sd14', 'sd14-v1', 'sd15'"):
        get_preset("sd3")


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"b1": float("nan")}, ValueError, "b1 must be a finite number >= 0, got nan"),
        ({"s2": -1}, ValueError, "s2 must be a finite number >= 0, got -1.0"),
        ({"b2": True}, TypeError, "b2 must be a real number >= 0, got bool"),
        ({"version": 0}, ValueError, r"version must be one of \(1, 2\), got 0"),
        ({"version": True}, ValueError, r"version must be one of \(1, 2\)"),
        ({"convention": "a1111"}, ValueError, r"convention must be one of \('official', 'diffusers'\), got 'a1111'"),
        ({"threshold": 2.0}, ValueError, "threshold must be an int >= 1, got 2.0"),
    ],
)
def test_config_validation_names_the_parameter(changes, error, match) -> None:
    with pytest.raises(error, match=match):
        FreeUConfig(1.2, 1.4, 0.9, 0.2).replace(**changes)


def test_config_normalises_to_float_and_compares_by_value() -> None:
    c = FreeUConfig(1, 2, 1, 0)
    assert c.b1 == 1.0 and isinstance(c.b1, float)
    assert c == FreeUConfig(1.0, 2.0, 1.0, 0.0)
    assert c.stage_factors(1) == (1.0, 1.0) and c.stage_factors(2) == (2.0, 0.0)


def test_public_api_is_exported() -> None:
    for name in freeu.__all__:
        assert hasattr(freeu, name), name


@pytest.mark.parametrize(("field", "value"), [("b1", 1e30), ("s1", 1e300), ("b1", 10**400), ("s2", 100.5)])
def test_huge_finite_factors_are_refused_naming_the_parameter(field, value) -> None:
    with pytest.raises(ValueError, match=f"{field} must be at most 100"):
        FreeUConfig(**{"b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0, field: value})
    assert FreeUConfig(**{"b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0, field: 100}).to_dict()[field] == 100.0
