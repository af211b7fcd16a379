"""The original Stable Diffusion U-Net (LDM/SGM openaimodel.UNetModel): a self-written stand-in, and the real class
from the LDM package when it is installed. Oracle: the authors' README code, which re-weights each
``cat([h, hs.pop()])`` of UNetModel.forward by the backbone's channel count."""

from __future__ import annotations

import copy

import ldm_standin
import pytest
import torch
from conftest import rerandomise_zeros
from reference import TorchWithReferenceCat, official_stage
from torch import nn

import freeu
from freeu import FreeUConfig

FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)


def reference_output(monkeypatch, module, unet, inputs: dict, config: FreeUConfig, per_level: int) -> torch.Tensor:
    """``module`` is the Python module whose ``th`` the UNetModel.forward uses; ``per_level`` output blocks/level."""

    def stage_of(x, caller, index):
        if config.convention == "official":
            return official_stage(unet.model_channels)(x, caller, index)
        return {0: 1, 1: 2}.get(index // per_level)

    proxy = TorchWithReferenceCat(torch, config, lambda caller: caller is unet, stage_of)
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(module, "th", proxy)
        return unet(**inputs)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def standin() -> torch.nn.Module:
    torch.manual_seed(0)
    return rerandomise_zeros(ldm_standin.UNetModel())


def standin_inputs(size: int = 16) -> dict:
    gen = torch.Generator().manual_seed(3)
    return dict(x=torch.randn(2, 4, size, size, generator=gen), timesteps=torch.tensor([999, 500]))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("convention", ["official", "diffusers"])
@pytest.mark.parametrize("size", [16, 24])
def test_standin_matches_reference(monkeypatch, standin, version, convention, size) -> None:
    config = FreeUConfig(**FACTORS, version=version, convention=convention)
    inputs = standin_inputs(size)
    with torch.no_grad():
        base = standin(**inputs)
    expected = reference_output(monkeypatch, ldm_standin, standin, inputs, config, per_level=3)
    with freeu.apply(standin, config), torch.no_grad():
        ours = standin(**inputs)
    assert max_diff(expected, base) > 1e-2
    assert max_diff(ours, expected) < 1e-5
    with torch.no_grad():
        assert torch.equal(standin(**inputs), base)


def test_standin_stage_table(standin) -> None:
    names = [p.join.name for p in freeu.plan(standin)]
    assert names == [f"output_blocks.{i}.0" for i in range(12)]
    assert [p.stage for p in freeu.plan(standin)] == [1] * 7 + [2] * 3 + [None] * 2
    assert [p.stage for p in freeu.plan(standin, "diffusers")] == [1] * 3 + [2] * 3 + [None] * 6


def test_wrappers_are_unwrapped(standin) -> None:
    wrapper = ldm_standin.LatentDiffusionWrapper(standin)
    inputs = standin_inputs()
    with freeu.apply(wrapper, preset="sd15") as handle, torch.no_grad():
        assert handle.unet is standin
        via_wrapper = standin(**inputs)
    with freeu.apply(standin, preset="sd15"), torch.no_grad():
        direct = standin(**inputs)
    assert torch.equal(via_wrapper, direct)


def test_hosts_that_call_the_layers_directly(standin) -> None:
    """The hook sits on the ResBlock, so a host that bypasses the TimestepEmbedSequential still gets FreeU."""
    block = standin.output_blocks[7]
    x, emb = torch.randn(2, block[0].channels, 8, 8), torch.randn(2, 128)
    with freeu.apply(standin, preset="sd15"), torch.no_grad():
        via_container = block(x, emb)
        h = x
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ldm_standin.ResBlock) else layer(h)
    assert torch.equal(h, via_container)
    with torch.no_grad():
        assert not torch.equal(block(x, emb), via_container)


# ---- the real LDM class ------------------------------------------------------------------------------------------


def _ldm():
    return pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")


def _real_unet(openaimodel, **overrides) -> torch.nn.Module:
    config = dict(
        image_size=16, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2,
        attention_resolutions=[4, 2], channel_mult=(1, 2, 4, 4), num_head_channels=8,
        use_spatial_transformer=True, context_dim=32, legacy=False,
    )  # fmt: skip
    config.update(overrides)
    return openaimodel.UNetModel(**config)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("convention", ["official", "diffusers"])
def test_real_ldm_unet_matches_reference(monkeypatch, version, convention) -> None:
    openaimodel = _ldm()
    torch.manual_seed(0)
    unet = rerandomise_zeros(_real_unet(openaimodel))
    gen = torch.Generator().manual_seed(1)
    inputs = dict(
        x=torch.randn(2, 4, 16, 16, generator=gen),
        timesteps=torch.tensor([999, 400]),
        context=torch.randn(2, 5, 32, generator=gen),
    )
    config = FreeUConfig(**FACTORS, version=version, convention=convention)
    with torch.no_grad():
        base = unet(**inputs)
    expected = reference_output(monkeypatch, openaimodel, unet, inputs, config, per_level=3)
    with freeu.apply(unet, config), torch.no_grad():
        ours = unet(**inputs)
    assert max_diff(expected, base) > 1e-2
    assert max_diff(ours, expected) < 1e-5
    with torch.no_grad():
        assert torch.equal(unet(**inputs), base)


@pytest.mark.parametrize(
    ("config", "official", "diffusers"),
    [
        (  # SD 1.x
            dict(model_channels=320, channel_mult=(1, 2, 4, 4), context_dim=768),
            [1] * 7 + [2] * 3 + [None] * 2,
            [1] * 3 + [2] * 3 + [None] * 6,
        ),
        (  # SDXL's layout: three levels
            dict(model_channels=320, channel_mult=(1, 2, 4), context_dim=2048, attention_resolutions=[4, 2]),
            [1] * 4 + [2] * 3 + [None] * 2,
            [1] * 3 + [2] * 3 + [None] * 3,
        ),
    ],
)
def test_real_ldm_full_size_stage_tables(config, official, diffusers) -> None:
    openaimodel = _ldm()
    with torch.device("meta"):
        unet = _real_unet(openaimodel, num_head_channels=64, **config)
    assert [p.stage for p in freeu.plan(unet)] == official
    assert [p.stage for p in freeu.plan(unet, "diffusers")] == diffusers


def test_the_ldm_layout_is_recognised_by_structure_under_another_class_name() -> None:
    """Forge runs the LDM layout as IntegratedUNet2DConditionModel: same blocks, same joins, another name."""
    original = rerandomise_zeros(ldm_standin.UNetModel())
    renamed = copy.deepcopy(original)
    renamed.__class__ = type("IntegratedUNet2DConditionModel", (nn.Module,), {"forward": ldm_standin.UNetModel.forward})
    assert "UNetModel" not in {c.__name__ for c in type(renamed).__mro__}
    assert [(p.join.name, p.stage) for p in freeu.plan(renamed)] == [
        (p.join.name, p.stage) for p in freeu.plan(original)
    ]
    inputs = {"x": torch.randn(2, 4, 16, 16), "timesteps": torch.tensor([10, 900])}
    with torch.no_grad():
        plain = renamed(**inputs)
        with freeu.apply(renamed, preset="sd15"), freeu.apply(original, preset="sd15"):
            assert torch.equal(renamed(**inputs), original(**inputs))
            assert (renamed(**inputs) - plain).abs().max().item() > 1e-3
        assert torch.equal(renamed(**inputs), plain)
