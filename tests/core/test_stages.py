"""More stages than the paper's two, and the controls beyond b and s (sd-webui-freeu's high-frequency gain, cutoff
and backbone channel window), through freeu.apply and the host patch: against the independent reference of
tests/reference.py and a transcription of sd-webui-freeu's stage rule; the paper's settings stay bit-identical."""

from __future__ import annotations

import ldm_standin
import pytest
import torch
from conftest import rerandomise_zeros, run, sd15_unet, unet_inputs
from reference import TorchWithReferenceCat

import freeu
from freeu import FreeUConfig, Stage

diffusers = pytest.importorskip("diffusers")
from diffusers.models.unets import unet_2d_blocks  # noqa: E402

from freeu.apps.plan import LAYOUTS  # noqa: E402


def sd_webui_freeu_stage(width: int, widths: tuple[int, ...] = (1280, 640, 320)) -> int | None:
    """sd-webui-freeu's rule, transcribed: the stage of a join is ``[1280, 640, 320].index(h.shape[1])`` (here
    counted from 1), and a width not in the list is left alone."""
    return widths.index(width) + 1 if width in widths else None


CONTROLS = [
    Stage(1.3, 0.9, high=1.1),
    Stage(1.4, 0.2, window=(0.25, 0.5), cutoff=0.3),
    Stage(1.2, 0.6, high=0.9, window=(0.75, 0.5), cutoff=0.0),
]


@pytest.mark.parametrize("layout", ["sd15", "sd21", "sdxl"])
def test_three_official_stages_are_the_joins_of_sd_webui_freeus_literal_widths(layout) -> None:
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**LAYOUTS[layout])
    three = freeu.plan(unet, "official", stages=3)
    assert [p.stage for p in three] == [sd_webui_freeu_stage(p.join.backbone_channels) for p in three]
    assert {p.stage for p in three} == {1, 2, 3}
    # the paper's two stages are today's plan: the third stage's joins were left alone
    two = [p.stage for p in freeu.plan(unet, "official")]
    assert two == [None if p.stage == 3 else p.stage for p in three]


def reference_output(monkeypatch, unet, inputs, config: FreeUConfig, stage_of) -> torch.Tensor:
    blocks = list(unet.up_blocks)
    proxy = TorchWithReferenceCat(torch, config, lambda caller: any(caller is b for b in blocks), stage_of)
    with monkeypatch.context() as m:
        m.setattr(unet_2d_blocks, "torch", proxy)
        return run(unet, inputs)


@pytest.fixture(scope="module")
def sd15() -> torch.nn.Module:
    return sd15_unet()


@pytest.mark.parametrize("version", [1, 2])
def test_three_stages_with_every_control_match_the_reference_at_sd_webui_freeus_joins(monkeypatch, sd15, version):
    inputs = unet_inputs(sd15)
    plain = run(sd15, inputs)
    config = FreeUConfig.from_stages(CONTROLS, version=version)
    # the tiny SD 1.5 layout's widths 128, 64, 32 are SD's 1280, 640, 320 at a tenth
    widths = (128, 64, 32)
    expected = reference_output(
        monkeypatch, sd15, inputs, config, lambda x, caller, i: sd_webui_freeu_stage(x.shape[1], widths)
    )
    with freeu.apply(sd15, config) as handle:
        ours = run(sd15, inputs)
        assert "7 at stage 1, 3 at stage 2, 2 at stage 3, 0 untouched" in repr(handle)
    assert (ours - expected).abs().max().item() < 1e-5
    assert (ours - plain).abs().max().item() > 1e-2
    assert torch.equal(run(sd15, inputs), plain)  # removed bit for bit


def test_the_papers_settings_given_as_stages_are_bit_identical(sd15) -> None:
    inputs = unet_inputs(sd15)
    with freeu.apply(sd15, FreeUConfig(1.3, 1.4, 0.9, 0.2)):
        paper = run(sd15, inputs)
    for stages in ([Stage(1.3, 0.9), Stage(1.4, 0.2)], [Stage(1.3, 0.9), Stage(1.4, 0.2), Stage()]):
        config = FreeUConfig.from_stages(stages)
        with freeu.apply(sd15, config):
            assert torch.equal(run(sd15, inputs), paper), stages
    assert FreeUConfig.from_stages([Stage(1.3, 0.9), Stage(1.4, 0.2)]) == FreeUConfig(1.3, 1.4, 0.9, 0.2)
    assert (
        FreeUConfig(1.3, 1.4, 0.9, 0.2).to_dict()
        == FreeUConfig.from_stages([Stage(1.3, 0.9), Stage(1.4, 0.2)]).to_dict()
    )  # so eval's image keys and old PNG metadata stay the same


def test_a_windowed_three_stage_setting_with_per_sample_factors_equals_its_scalar_runs(sd15) -> None:
    inputs = unet_inputs(sd15, batch=2)
    stages = [Stage((1.3, 1.1), (0.9, 0.5), high=1.2), Stage((1.4, 1.0), (0.2, 0.7)), Stage((1.2, 1.5), (0.6, 1.0))]
    batched = FreeUConfig.from_stages(stages, start=0.0, stop=0.8, ramp=0.2)
    with freeu.apply(sd15, batched):
        both = run(sd15, inputs)
    for i in range(2):
        one = [Stage(s.b[i], s.s[i], high=s.high) for s in stages]
        with freeu.apply(sd15, FreeUConfig.from_stages(one, start=0.0, stop=0.8, ramp=0.2)):
            alone = run(sd15, {k: v[i : i + 1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
        assert (both[i : i + 1] - alone).abs().max().item() < 1e-5, i


@pytest.mark.parametrize("convention", ["official", "diffusers"])
def test_the_host_patch_gives_the_hooks_numbers_with_three_stages_and_controls(convention) -> None:
    torch.manual_seed(0)
    unet = rerandomise_zeros(ldm_standin.UNetModel(num_res_blocks=2))
    gen = torch.Generator().manual_seed(3)
    x, timesteps = torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([10, 900])
    config = FreeUConfig.from_stages(CONTROLS, convention=convention)
    patch = freeu.output_block_patch(config, model_channels=32, num_res_blocks=2)
    with torch.no_grad():
        patched = unet(x, timesteps, transformer_options={"patches": {"output_block_patch": [patch]}})
        with freeu.apply(unet, config):
            hooked = unet(x, timesteps)
        plain = unet(x, timesteps)
    assert (patched - hooked).abs().max().item() <= 1e-6
    assert (patched - plain).abs().max().item() > 1e-3


def test_diffusers_convention_stage_k_is_up_block_k_minus_one() -> None:
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**LAYOUTS["sd15"])
    for stages in (1, 2, 3, 4, 5):
        plans = freeu.plan(unet, "diffusers", stages=stages)
        assert [p.stage for p in plans] == [p.join.block + 1 if p.join.block < stages else None for p in plans]


def _like(kind: str) -> torch.nn.Module:
    """Tiny diffusers U-Nets with the published block types and width ladder (1x, 2x, 3x, 4x the base) of the
    Kandinsky 2.2 decoder and of DeepFloyd IF's first stage (pixels in, learned variance out)."""
    torch.manual_seed(0)
    common = dict(
        sample_size=16, layers_per_block=1, block_out_channels=(16, 32, 48, 64), cross_attention_dim=16,
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
        up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", resnet_time_scale_shift="scale_shift", attention_head_dim=8,
        norm_num_groups=8,
    )  # fmt: skip
    channels = dict(kandinsky=(4, 8), deepfloyd_if=(3, 6))[kind]
    unet = diffusers.UNet2DConditionModel(**common, in_channels=channels[0], out_channels=channels[1])
    return rerandomise_zeros(unet)


@pytest.mark.parametrize("kind", ["kandinsky", "deepfloyd_if"])
def test_kandinsky_and_if_like_unets_plan_apply_and_remove_bit_exactly(kind) -> None:
    unet = _like(kind)
    official = {p.join.backbone_channels: p.stage for p in freeu.plan(unet, "official", stages=3)}
    # 4x, 2x and 1x the base width are stages 1, 2, 3; the 3x width (48) has no official stage
    assert official == {64: 1, 48: None, 32: 2, 16: 3}
    levels = [p.stage for p in freeu.plan(unet, "diffusers", stages=4)]
    assert set(levels) == {1, 2, 3, 4}  # by decoder level every join is reached
    inputs = unet_inputs(unet)
    plain = run(unet, inputs)
    for config in (
        FreeUConfig(1.3, 1.4, 0.9, 0.2),
        FreeUConfig.from_stages([*CONTROLS, Stage(1.1, 0.8)], convention="diffusers"),
    ):
        with freeu.apply(unet, config):
            ours = run(unet, inputs)
        assert torch.isfinite(ours).all() and (ours - plain).abs().max().item() > 1e-3
        assert torch.equal(run(unet, inputs), plain)


def test_stage_settings_are_validated_naming_the_field() -> None:
    cases = [
        (dict(high=-1.0), "high must be a finite number >= 0"),
        (dict(window=(1.0, 0.5)), r"window offset must be in \[0, 1\)"),
        (dict(window=(0.0, 2.0)), r"window width must be in \[0, 1\]"),
        (dict(window=(0.5,)), r"window must be \(offset, width\)"),
        (dict(cutoff=1.5), r"cutoff must be in \[0, 1\]"),
        (dict(b=float("nan")), "b must be a finite number"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            Stage(**kwargs)
    with pytest.raises(ValueError, match="b1=1.5 disagrees with stage 1's b=1.3"):
        FreeUConfig(1.5, 1.4, 0.9, 0.2, stages=(Stage(1.3, 0.9), Stage(1.4, 0.2)))
    with pytest.raises(ValueError, match="stages must list stages 1 and 2"):
        FreeUConfig(1.3, 1.4, 0.9, 0.2, stages=(Stage(1.3, 0.9),))
    with pytest.raises(ValueError, match=r"stages\[2\] has unknown keys \['bee'\]"):
        FreeUConfig(1.3, 1.4, 0.9, 0.2, stages=({"b": 1.3, "s": 0.9}, {"b": 1.4, "s": 0.2}, {"bee": 1}))
    with pytest.raises(ValueError, match="must all have the same length"):
        FreeUConfig.from_stages([Stage((1.3, 1.2), 0.9), Stage(1.4, 0.2), Stage((1.0, 1.1, 1.2), 1.0)])
    config = FreeUConfig.from_stages(CONTROLS)
    assert FreeUConfig(**config.to_dict()) == config  # metadata round trip
    assert "stage 3: b=1.2 s=0.6 high=0.9 window=0.75/0.5 cutoff=0" in config.label()
