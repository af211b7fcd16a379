"""freeu.apply on tiny random diffusers U-Nets, against diffusers' own FreeU and an independent reference."""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from conftest import rerandomise_zeros, run, sd15_unet, sdxl_unet, unet_inputs
from reference import TorchWithReferenceCat, official_stage

import freeu
from freeu import FreeUConfig, UnsupportedModelError
from freeu.apps.plan import LAYOUTS

diffusers = pytest.importorskip("diffusers")
from diffusers.models.unets import unet_2d_blocks  # noqa: E402

FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)


def reference_output(monkeypatch, unet, inputs, config: FreeUConfig) -> torch.Tensor:
    """The model run with the authors' rule applied at each up block's ``torch.cat([hidden, res_hidden], dim=1)``."""
    base = unet.config.block_out_channels[0]
    blocks = list(unet.up_blocks)

    def stage_of(x, block, index):
        if config.convention == "official":
            return official_stage(base)(x, block, index)
        return {0: 1, 1: 2}.get(next(i for i, b in enumerate(blocks) if b is block))

    proxy = TorchWithReferenceCat(torch, config, lambda caller: any(caller is b for b in blocks), stage_of)
    with monkeypatch.context() as m:
        m.setattr(unet_2d_blocks, "torch", proxy)
        return run(unet, inputs)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


MODELS = {"sd15": sd15_unet, "sdxl": sdxl_unet}


@pytest.fixture(scope="module", params=sorted(MODELS))
def unet(request) -> torch.nn.Module:
    return MODELS[request.param]()


# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factors", [FACTORS, dict(b1=1.1, b2=1.2, s1=0.6, s2=0.4)])
def test_diffusers_convention_v1_equals_enable_freeu(unet, factors) -> None:
    inputs = unet_inputs(unet)
    base = run(unet, inputs)
    unet.enable_freeu(**factors)
    try:
        expected = run(unet, inputs)
    finally:
        unet.disable_freeu()
    with freeu.apply(unet, **factors, version=1, convention="diffusers"):
        ours = run(unet, inputs)
    assert max_diff(expected, base) > 1e-2  # FreeU does something on this model
    assert max_diff(ours, expected) < 1e-5


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("convention", ["official", "diffusers"])
@pytest.mark.parametrize("size", [16, 24])
def test_matches_independent_reference(monkeypatch, unet, version, convention, size) -> None:
    config = FreeUConfig(**FACTORS, version=version, convention=convention)
    inputs = unet_inputs(unet, size=size)
    base = run(unet, inputs)
    expected = reference_output(monkeypatch, unet, inputs, config)
    with freeu.apply(unet, config):
        ours = run(unet, inputs)
    assert max_diff(expected, base) > 1e-2
    assert max_diff(ours, expected) < 1e-5


def test_conventions_differ_on_sd15(sd15) -> None:
    inputs = unet_inputs(sd15)
    with freeu.apply(sd15, **FACTORS, version=1, convention="official"):
        official = run(sd15, inputs)
    with freeu.apply(sd15, **FACTORS, version=1, convention="diffusers"):
        diffusers_like = run(sd15, inputs)
    assert max_diff(official, diffusers_like) > 1e-2


def test_remove_restores_bit_exact(unet) -> None:
    inputs = unet_inputs(unet)
    before = run(unet, inputs)
    handle = freeu.apply(unet, preset="sd15")
    patched = run(unet, inputs)
    assert handle.remove() is True
    assert torch.equal(run(unet, inputs), before)
    assert not torch.equal(patched, before)
    assert handle.remove() is False  # idempotent
    assert all(not m._forward_pre_hooks for m in unet.modules())


def test_apply_twice_replaces_instead_of_stacking(sd15) -> None:
    inputs = unet_inputs(sd15)
    before = run(sd15, inputs)
    with freeu.apply(sd15, preset="sdxl"):
        only_sdxl = run(sd15, inputs)
    first = freeu.apply(sd15, preset="sd15")
    second = freeu.apply(sd15, preset="sdxl")
    assert not first.active and second.active
    assert freeu.active_config(sd15) == freeu.get_preset("sdxl").config
    assert torch.equal(run(sd15, inputs), only_sdxl)
    assert first.remove() is False  # a replaced handle no longer owns the model
    assert freeu.remove(sd15) is True  # works without the handle
    assert torch.equal(run(sd15, inputs), before)
    assert freeu.active_config(sd15) is None


def test_context_manager_restores_previous_settings(sd15) -> None:
    inputs = unet_inputs(sd15)
    before = run(sd15, inputs)
    outer = freeu.apply(sd15, preset="sd15")
    with_outer = run(sd15, inputs)
    with freeu.apply(sd15, preset="sdxl-sweep") as inner:
        assert inner.active
        assert not torch.equal(run(sd15, inputs), with_outer)
    assert freeu.active_config(sd15) == outer.config
    assert torch.equal(run(sd15, inputs), with_outer)
    freeu.remove(sd15)
    assert torch.equal(run(sd15, inputs), before)


def test_pipeline_and_compiled_wrapper_are_accepted(sd15) -> None:
    inputs = unet_inputs(sd15)
    pipe = types.SimpleNamespace(unet=sd15)
    with freeu.apply(pipe, preset="sd15") as handle:
        assert handle.unet is sd15
        via_pipe = run(sd15, inputs)
    with freeu.apply(sd15, preset="sd15"):
        direct = run(sd15, inputs)
    assert torch.equal(via_pipe, direct)


def test_hooks_do_not_write_into_host_tensors(sd15) -> None:
    seen: list[tuple[torch.Tensor, int]] = []

    def spy(module, args):
        seen.append((args[0], args[0]._version))

    spies = [r.register_forward_pre_hook(spy) for block in sd15.up_blocks for r in block.resnets]
    try:
        with freeu.apply(sd15, preset="sd15", version=2):
            run(sd15, unet_inputs(sd15))
    finally:
        for s in spies:
            s.remove()
    assert len(seen) == 12
    assert all(t._version == v for t, v in seen)


@pytest.mark.parametrize("version", [1, 2])
def test_channels_last_unet_keeps_its_layout_and_the_numbers(monkeypatch, version) -> None:
    """A U-Net moved to torch.channels_last (diffusers' advice for speed) gets FreeU's numbers, and every joined tensor
    FreeU hands on keeps that layout, so the host's next convolution sees the layout it was set up for."""
    unet = sd15_unet().to(memory_format=torch.channels_last)
    inputs = unet_inputs(unet, size=16)
    config = FreeUConfig(**FACTORS, version=version)
    expected = reference_output(monkeypatch, unet, inputs, config)
    handed_on: list[torch.Tensor] = []
    spies = []
    with freeu.apply(unet, config) as handle:
        for p in handle.plans:  # registered after FreeU's hook: sees what FreeU hands on
            if p.stage is not None:
                spies.append(
                    p.join.module.register_forward_pre_hook(
                        lambda m, args, kw: handed_on.append(args[0] if args else kw["input_tensor"]), with_kwargs=True
                    )
                )
        ours = run(unet, inputs)
    for spy in spies:
        spy.remove()
    assert max_diff(ours, expected) < 1e-5
    assert handed_on and all(x.is_contiguous(memory_format=torch.channels_last) for x in handed_on)
    assert not all(x.is_contiguous() for x in handed_on)  # the layouts differ at these sizes


def test_bfloat16_model_keeps_dtype(sdxl) -> None:
    model = sdxl_unet().to(torch.bfloat16)
    inputs = unet_inputs(model)
    base = run(model, inputs)
    with freeu.apply(model, preset="sdxl"):
        out = run(model, inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert max_diff(out, base) > 1e-2


def test_join_input_by_keyword(sd15) -> None:
    """Hosts that call the resnet with input_tensor=... get the same result."""
    resnet = sd15.up_blocks[1].resnets[0]
    x = torch.randn(2, resnet.in_channels, 4, 4)
    temb = torch.randn(2, 128)
    with freeu.apply(sd15, preset="sd15"), torch.no_grad():
        positional = resnet(x, temb)
        keyword = resnet(input_tensor=x, temb=temb)
    assert torch.equal(positional, keyword)


# ---- which join gets which stage: the full-size layouts of docs/method.md section 2, built on the meta device -----


def _stages(config: dict, convention: str) -> list:
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**config)
    return [p.stage for p in freeu.plan(unet, convention)]


SD15, SDXL = LAYOUTS["sd15"], LAYOUTS["sdxl"]  # the full-size layouts the CLI builds for `freeu plan`


def test_stage_table_sd15() -> None:
    #                 up_blocks.0   up_blocks.1   2.0 2.1 2.2 3.0   3.1 3.2
    assert _stages(SD15, "official") == [1, 1, 1] + [1, 1, 1] + [1, 2, 2] + [2, None, None]
    assert _stages(SD15, "diffusers") == [1, 1, 1] + [2, 2, 2] + [None] * 3 + [None] * 3


def test_stage_table_sdxl() -> None:
    assert _stages(SDXL, "official") == [1, 1, 1] + [1, 2, 2] + [2, None, None]
    assert _stages(SDXL, "diffusers") == [1, 1, 1] + [2, 2, 2] + [None] * 3


def test_plan_reports_widths() -> None:
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**SD15)
    plans = freeu.plan(unet)
    widths = [(p.join.name, p.join.backbone_channels, p.join.skip_channels) for p in plans]
    assert widths[5] == ("up_blocks.1.resnets.2", 1280, 640)
    assert widths[6] == ("up_blocks.2.resnets.0", 1280, 640)
    assert widths[9] == ("up_blocks.3.resnets.0", 640, 320)


# ---- every up-block type that concatenates skips ----------------------------------------------------------------


def _other_unets() -> dict:
    common = dict(sample_size=16, norm_num_groups=8, layers_per_block=1)
    return {
        "attn-2d": lambda: diffusers.UNet2DModel(
            **common,
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
        ),
        "skip-2d": lambda: diffusers.UNet2DModel(
            sample_size=16,
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64, 128),
            layers_per_block=1,
            down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"),
            up_block_types=("SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"),
            attention_head_dim=8,
            norm_num_groups=8,
            resnet_time_scale_shift="scale_shift",
        ),
        "simple-cross": lambda: diffusers.UNet2DConditionModel(
            **common,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32, 64),
            cross_attention_dim=16,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            attention_head_dim=8,
        ),
    }


@pytest.mark.parametrize("name", ["attn-2d", "skip-2d", "simple-cross"])
@pytest.mark.parametrize("version", [1, 2])
def test_every_concatenating_up_block(monkeypatch, name, version) -> None:
    torch.manual_seed(0)
    model = rerandomise_zeros(_other_unets()[name]())
    inputs = unet_inputs(model)
    before = run(model, inputs)
    config = FreeUConfig(**FACTORS, version=version)
    # stage 1 at backbone width 4x the base width, stage 2 at 2x
    assert {p.stage for p in freeu.plan(model)} == {1, 2, None}
    expected = reference_output(monkeypatch, model, inputs, config)
    handle = freeu.apply(model, config)
    ours = run(model, inputs)
    handle.remove()
    assert max_diff(ours, before) > 1e-3
    assert max_diff(ours, expected) < 1e-5
    assert torch.equal(run(model, inputs), before)


# ---- bad input: clear errors, model left as it was -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(FACTORS, b1=float("nan")), ValueError, "b1 must be a finite number >= 0"),
        (dict(FACTORS, b2=float("inf")), ValueError, "b2 must be a finite number >= 0"),
        (dict(FACTORS, s1=-0.1), ValueError, "s1 must be a finite number >= 0"),
        (dict(FACTORS, s2="0.2"), TypeError, "s2 must be a real number"),
        (dict(FACTORS, version=3), ValueError, r"version must be one of \(1, 2\)"),
        (dict(FACTORS, convention="comfy"), ValueError, r"convention must be one of \('official', 'diffusers'\)"),
        (dict(FACTORS, threshold=0), ValueError, "threshold must be an int >= 1"),
        (dict(preset="sd16"), ValueError, r"preset must be one of \['modelscope', 'sd14', .*'sdxl-sweep'\]"),
        (dict(b1=1.2, s1=0.9), TypeError, "missing: b2, s2"),
    ],
)
def test_bad_settings_leave_model_as_it_was(sd15, kwargs, error, match) -> None:
    inputs = unet_inputs(sd15)
    before = run(sd15, inputs)
    with pytest.raises(error, match=match):
        freeu.apply(sd15, **kwargs)
    assert freeu.active_config(sd15) is None
    assert torch.equal(run(sd15, inputs), before)
    # and a patched model keeps its settings
    with freeu.apply(sd15, preset="sd15"):
        patched = run(sd15, inputs)
        with pytest.raises(error, match=match):
            freeu.apply(sd15, **kwargs)
        assert freeu.active_config(sd15) == freeu.get_preset("sd15").config
        assert torch.equal(run(sd15, inputs), patched)


def test_unsupported_models_name_what_is_supported() -> None:
    for model in (torch.nn.Linear(2, 2), types.SimpleNamespace(unet="not a module"), object()):
        with pytest.raises(UnsupportedModelError, match="Supported: diffusers UNet2DConditionModel and UNet2DModel"):
            freeu.apply(model, preset="sd15")


def test_unsupported_up_block_is_named() -> None:
    model = _other_unets()["attn-2d"]()
    model.up_blocks[1] = diffusers.models.unets.unet_2d_blocks.UpDecoderBlock2D(64, 32, num_layers=1, resnet_groups=8)
    with pytest.raises(UnsupportedModelError, match=r"up_blocks\.1 is a UpDecoderBlock2D.*supported up blocks"):
        freeu.apply(model, preset="sd15")
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_width_mismatch_is_named() -> None:
    model = sd15_unet()
    model.up_blocks[2].resnets[1].in_channels = 999
    with pytest.raises(UnsupportedModelError, match=r"up_blocks\.2\.resnets\.1: backbone width 64 \+ skip width"):
        freeu.apply(model, preset="sd15")
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_runtime_shape_check_names_the_join(sd15) -> None:
    resnet = sd15.up_blocks[1].resnets[0]
    with freeu.apply(sd15, preset="sd15"), pytest.raises(RuntimeError, match=r"up_blocks\.1\.resnets\.0"):
        resnet(torch.randn(1, 7, 4, 4), torch.randn(1, 128))


def test_diffusers_freeu_already_enabled_is_refused(sd15) -> None:
    sd15.enable_freeu(**FACTORS)
    try:
        with pytest.raises(ValueError, match="disable_freeu"):
            freeu.apply(sd15, preset="sd15")
    finally:
        sd15.disable_freeu()
    assert freeu.active_config(sd15) is None


def test_zero_factor_is_applied_not_ignored(sd15) -> None:
    """diffusers tests factors for truthiness, so s2=0.0 switches its FreeU off; here 0 means 0."""
    inputs = unet_inputs(sd15)
    with freeu.apply(sd15, **dict(FACTORS, s2=0.0), version=1, convention="diffusers"):
        zero = run(sd15, inputs)
    with freeu.apply(sd15, **dict(FACTORS, s2=0.01), version=1, convention="diffusers"):
        near_zero = run(sd15, inputs)
    assert max_diff(zero, near_zero) < 1e-2
    with freeu.apply(sd15, **dict(FACTORS, s2=1.0), version=1, convention="diffusers"):
        assert max_diff(run(sd15, inputs), zero) > 1e-3


def test_official_convention_without_matching_widths() -> None:
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 24),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    with pytest.raises(ValueError, match=r"assigns no skip join.*backbone widths \[16, 24\]"):
        freeu.apply(model, preset="sd15")
    assert freeu.apply(model, preset="sd15", convention="diffusers").active
    freeu.remove(model)


def test_stage_without_joins_warns() -> None:
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    with pytest.warns(UserWarning, match="stage 1 matches no skip join"), freeu.apply(model, preset="sd15"):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with freeu.apply(model, b1=1.0, s1=1.0, b2=1.4, s2=0.5):
            pass
