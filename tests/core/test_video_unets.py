"""Video U-Nets (frames folded into the batch) and ControlNet-conditioned U-Nets: apply, remove, stages, and the
authors' rule applied at the up blocks' own ``torch.cat([hidden, res_hidden], dim=1)`` (per frame, as the host
folds frames into the batch)."""

from __future__ import annotations

import sys

import pytest
import torch
import video_models
from conftest import run as run_image
from conftest import sd15_unet, unet_inputs
from reference import TorchWithReferenceCat, official_stage

import freeu
from freeu import FreeUConfig

pytest.importorskip("diffusers")

NAMES = ["unet3d", "motion", "i2vgen", "svd", "controlnet-xs"]
FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)


@pytest.fixture(scope="module", params=NAMES)
def named_model(request) -> tuple[str, torch.nn.Module]:
    return request.param, video_models.build(request.param)


def reference_output(monkeypatch, model, kwargs, config: FreeUConfig) -> torch.Tensor:
    blocks = list(model.up_blocks)
    base = freeu.plan(model)[0].join.backbone_channels // 4 if config.convention == "official" else None

    def stage_of(x, block, index):
        if config.convention == "official":
            return official_stage(base)(x, block, index)
        return {0: 1, 1: 2}.get(next(i for i, b in enumerate(blocks) if b is block))

    module = sys.modules[type(blocks[0]).__module__]
    proxy = TorchWithReferenceCat(torch, config, lambda caller: any(caller is b for b in blocks), stage_of)
    with monkeypatch.context() as m:
        m.setattr(module, "torch", proxy)
        return video_models.run(model, kwargs)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("version", [1, 2])
def test_matches_reference_and_restores(monkeypatch, named_model, version) -> None:
    name, model = named_model
    kwargs = video_models.inputs(name)
    before = video_models.run(model, kwargs)
    config = FreeUConfig(**FACTORS, version=version)
    expected = reference_output(monkeypatch, model, kwargs, config)
    with freeu.apply(model, config):
        ours = video_models.run(model, kwargs)
    assert max_diff(ours, before) > 1e-2
    assert max_diff(ours, expected) < 1e-5
    assert torch.equal(video_models.run(model, kwargs), before)


def test_stage_assignment_follows_the_rules(named_model) -> None:
    name, model = named_model
    official = [p.stage for p in freeu.plan(model)]
    by_block = [p.stage for p in freeu.plan(model, "diffusers")]
    if name == "controlnet-xs":  # the SD 1.5 layout: four levels of three joins
        assert official == [1] * 7 + [2] * 3 + [None] * 2
        assert by_block == [1] * 3 + [2] * 3 + [None] * 6
    else:  # widths 32/64/128, two joins per level
        assert official == [1, 1, 1, 2, 2, None]
        assert by_block == [1, 1, 2, 2, None, None]


def test_diffusers_convention_equals_enable_freeu(named_model) -> None:
    name, model = named_model
    if not hasattr(model, "enable_freeu"):
        pytest.skip(f"{type(model).__name__} has no enable_freeu in diffusers (FreeU there is ours only)")
    kwargs = video_models.inputs(name)
    model.enable_freeu(**FACTORS)
    try:
        expected = video_models.run(model, kwargs)
    finally:
        model.disable_freeu()
    with freeu.apply(model, **FACTORS, version=1, convention="diffusers"):
        ours = video_models.run(model, kwargs)
    assert max_diff(ours, expected) < 1e-5


def test_frames_are_treated_like_images(named_model) -> None:
    """One sample of F frames through a join hook gives, per frame, what a single image would get."""
    name, model = named_model
    join = next(p.join for p in freeu.plan(model) if p.stage == 1)
    x = torch.randn(video_models.FRAMES * 2, join.in_channels, 4, 4)
    captured = []
    with freeu.apply(model, **FACTORS, version=2):
        hook = next(iter(join.module._forward_pre_hooks.values()))
        whole = hook(join.module, (x,), {})[0][0]
        for row in x.split(1):
            captured.append(hook(join.module, (row,), {})[0][0])
    assert torch.equal(whole, torch.cat(captured))


def test_controlnet_residuals_are_part_of_the_skip(monkeypatch) -> None:
    """With ControlNet residuals added to the encoder features, FreeU filters the sum, as diffusers and ComfyUI do."""
    from test_diffusers_unet import reference_output as image_reference

    unet = sd15_unet()
    kwargs = unet_inputs(unet)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        shapes = []
        hooks = [
            b.register_forward_hook(lambda m, a, out: shapes.extend(t.shape for t in out[1])) for b in unet.down_blocks
        ]
        unet(**kwargs)
        for h in hooks:
            h.remove()
    first = kwargs["sample"].shape
    residuals = [torch.randn(first[0], 32, *first[2:], generator=gen)] + [torch.randn(s, generator=gen) for s in shapes]
    kwargs["down_block_additional_residuals"] = tuple(residuals)
    kwargs["mid_block_additional_residual"] = torch.randn(first[0], 128, 2, 2, generator=gen)
    config = FreeUConfig(**FACTORS)
    expected = image_reference(monkeypatch, unet, kwargs, config)
    with freeu.apply(unet, config):
        ours = run_image(unet, kwargs)
    without = run_image(unet, kwargs)
    assert max_diff(ours, without) > 1e-2
    assert max_diff(ours, expected) < 1e-5
