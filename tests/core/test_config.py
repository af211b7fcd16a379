"""Settings: validation messages that name the parameter, and the published presets."""

from __future__ import annotations

import pytest
import torch

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


def test_a_preset_file_reads_every_setting_and_refuses_what_it_does_not_know(tmp_path) -> None:
    pytest.importorskip("tomllib")
    path = tmp_path / "mine.toml"
    path.write_text(
        'model = "my fine-tune"\nsource = "by hand"\n[freeu]\nb1 = 1.2\nb2 = 1.3\ns1 = 0.8\ns2 = 0.5\nversion = 1\n'
        'convention = "diffusers"\nstart = 0.2\n[[freeu.stages]]\nb = 1.2\ns = 0.8\nhigh = 1.1\n[[freeu.stages]]\n'
        "b = 1.3\ns = 0.5\n[[freeu.stages]]\nb = 1.1\ns = 0.9\nwindow = [0.25, 0.5]\n[tune]\nmetric = 'swd'\n"
    )
    preset = get_preset(str(path))
    expected = FreeUConfig(1.2, 1.3, 0.8, 0.5, version=1, convention="diffusers", start=0.2).with_stages(
        {1: {"high": 1.1}, 3: {"b": 1.1, "s": 0.9, "window": (0.25, 0.5)}}
    )
    assert preset.config == expected and get_preset(path) == preset  # a str or a Path
    assert (preset.name, preset.model, preset.source) == ("mine", "my fine-tune", "by hand")
    bad = {
        "x = 1\n[freeu]\nb1 = 1\nb2 = 1\ns1 = 1\ns2 = 1\n": r"unknown key\(s\) \['x'\]; allowed: name, model",
        "[freeu]\nb1 = 1\nb2 = 1\ns1 = 1\n": r"\[freeu\] missing s2",
        "[freeu]\nb1 = 1\nb2 = 1\ns1 = 1\ns2 = 1\nb3 = 2\n": r"\[freeu\] unknown key\(s\) \['b3'\]",
        "[freeu]\nb1 = -1\nb2 = 1\ns1 = 1\ns2 = 1\n": r"\[freeu\] b1 must be a finite number >= 0, got -1",
        "[freeu]\nb1 = 1\nb2 = 1\ns1 = 1\ns2 = 1\nversion = 3\n": r"version must be one of \(1, 2\), got 3",
        "name = 3\n[freeu]\nb1 = 1\nb2 = 1\ns1 = 1\ns2 = 1\n": "name must be a string, not int",
        "name = 'x'\n": "needs a \\[freeu\\] table with b1, b2, s1, s2",
        "[freeu\nb1 = ": "not valid TOML",
    }
    for text, message in bad.items():
        path.write_text(text)
        with pytest.raises(ValueError, match=f"preset file {path}: .*{message}"):
            get_preset(str(path))
    with pytest.raises(ValueError, match="missing.toml: cannot read it"):
        freeu.apply(torch.nn.Linear(2, 2), preset=str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match=r"or a preset file \(.toml\), got 'mine.yaml'"):
        get_preset("mine.yaml")
