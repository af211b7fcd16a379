"""Forge's U-Net (IntegratedUNet2DConditionModel: the LDM layout under another class name) under ``freeu``, in
Forge's own Python (tests/hosts/forge_probe.py): ``freeu.plan`` finds the joins and stages of the LDM UNetModel of
the same config, and ``freeu.apply`` on it equals the same settings as an output-block patch called by Forge's own
forward, and removes bit for bit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from forge_host import subprocess_env

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def probed(forge, tmp_path_factory) -> dict:
    forge_dir, python = forge
    scratch = tmp_path_factory.mktemp("forge-hf")
    done = subprocess.run([str(python), str(HERE / "forge_probe.py"), str(forge_dir)], capture_output=True,
                          text=True, timeout=600, env=subprocess_env(scratch))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ldm_plan(convention: str) -> list[list]:
    """``freeu.plan`` of the original LDM UNetModel with the probe's config (attention at the middle two levels)."""
    openaimodel = pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")
    import freeu

    torch.manual_seed(0)
    unet = openaimodel.UNetModel(
        image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2,
        attention_resolutions=[4, 2], channel_mult=(1, 2, 4, 4), num_head_channels=8,
        use_spatial_transformer=True, context_dim=32, legacy=False,
    )  # fmt: skip
    plans = freeu.plan(unet, convention)
    return [[p.join.name, p.join.backbone_channels, p.join.skip_channels, p.stage] for p in plans]


@pytest.mark.parametrize("convention", ["official", "diffusers"])
def test_plan_on_forges_unet_lists_the_joins_and_stages_of_the_ldm_unet(probed, convention) -> None:
    assert probed["class"] == "IntegratedUNet2DConditionModel"
    expected = _ldm_plan(convention)
    assert probed["plan"][convention] == expected
    assert len(expected) == 12 and {row[3] for row in expected} == {1, 2, None}


def test_apply_on_forges_unet_equals_the_host_patch_and_removes_bit_exactly(probed) -> None:
    cases = probed["cases"]
    assert [(c["version"], c["convention"]) for c in cases] == [
        (1, "official"), (1, "diffusers"), (2, "official"), (2, "diffusers")
    ]  # fmt: skip
    for case in cases:
        assert case["apply_vs_patch"] <= 1e-6, case
        assert case["change"] > 0.1, case  # FreeU acts: the two paths agree on something
        assert case["restored"], case


@pytest.fixture(scope="module")
def probed_transformers(forge, tmp_path_factory) -> dict:
    forge_dir, python = forge
    scratch = tmp_path_factory.mktemp("forge-hf-dits")
    script = HERE.parents[1] / "integrations" / "forge" / "scripts" / "freeu_forge.py"
    done = subprocess.run([str(python), str(HERE / "forge_probe_dits.py"), str(forge_dir), str(script)],
                          capture_output=True, text=True, timeout=600, env=subprocess_env(scratch))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "key, name",
    [("flux", "IntegratedFluxTransformer2DModel"), ("chroma", "IntegratedChromaTransformer2DModel"), ("sd3", "MMDiTX")],
)
def test_forges_transformers_are_refused_by_the_library_and_the_script_naming_the_class(
    probed_transformers, key, name
) -> None:
    """Forge's Flux, Chroma and SD3 classes have no skip joins: ``freeu.apply`` and ``freeu.plan`` refuse them naming
    the class, and the enabled script refuses before sampling, naming the class, and writes why into the infotext
    (Forge samples on without a script that raised)."""
    probed = probed_transformers[key]
    assert probed["class"] == name
    for call in ("apply", "plan"):
        assert probed[call]["type"] == "UnsupportedModelError", probed[call]
        assert name in probed[call]["message"] and "no skip joins" in probed[call]["message"], probed[call]
    script = probed["script"]
    assert script["type"] == "ValueError" and name in script["message"] and "which has none" in script["message"]
    assert script["infotext"] == {"FreeU error": script["message"]}


def test_the_script_accepts_forges_unet_in_the_same_stand_in(probed_transformers) -> None:
    """The same stand-in request on Forge's U-Net passes ``process`` and writes the settings: the refusals above are
    the transformers', not the stand-in's."""
    probed = probed_transformers["unet"]
    assert probed["apply"]["type"] is None and probed["plan"]["type"] is None
    assert probed["script"]["type"] is None and probed["script"]["infotext"]["FreeU preset"] == "sd15"
    assert "FreeU error" not in probed["script"]["infotext"]
