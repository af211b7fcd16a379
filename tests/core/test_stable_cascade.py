"""Stable Cascade's U-Net (diffusers ``StableCascadeUNet``, tiny, random weights): its joins inside the decoder's
residual blocks found by structure, FreeU against the float64 reference applied at the block's own
``torch.cat([x, x_skip], dim=1)`` (version 2's map from the block's input), bit-exact identity and removal, every
repeat of a repeated level, per-sample factors and a window on the timestep ratio."""

from __future__ import annotations

import inspect
import sys
import types

import pytest
import torch
from conftest import rerandomise_zeros
from reference import reference_stage

import freeu
from freeu import FreeUConfig

diffusers = pytest.importorskip("diffusers")

FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)
#: stage of each joining level's width: the widest join (32) is stage 1, so the base width is 8
STAGES = {32: 1, 16: 2}


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = diffusers.StableCascadeUNet(
        in_channels=4, out_channels=4, timestep_ratio_embedding_dim=8, conditioning_dim=16,
        block_out_channels=(16, 32, 64), num_attention_heads=(2, 2, 2), down_num_layers_per_block=(1, 1, 1),
        up_num_layers_per_block=(1, 1, 1), down_blocks_repeat_mappers=(1, 1, 1),
        # the middle level runs its blocks twice: its join with the same skip runs twice per forward
        up_blocks_repeat_mappers=(1, 2, 1),
        block_types_per_layer=(("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),) * 3,
        clip_text_pooled_in_channels=12, clip_seq=2, dropout=(0.0, 0.0, 0.0), timestep_conditioning_type=("sca",),
    )  # fmt: skip
    return rerandomise_zeros(model).eval()


def _inputs(batch: int = 2, ratio: list[float] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, 4, 16, 24, generator=gen),
        "timestep_ratio": torch.tensor(ratio or [0.5] * batch),
        "clip_text_pooled": torch.randn(batch, 1, 12, generator=gen),
    }


def _run(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


class _BlockReferenceCat:
    """Stands in for ``torch`` in the model's module: a residual block's ``cat([x, x_skip], dim=1)`` gets the
    reference's stage (by the backbone's width), with version 2's map from the block's input (``x_res`` in the
    block's forward); every join counted."""

    def __init__(self, config: FreeUConfig) -> None:
        self.config, self.joins = config, []

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def cat(self, tensors, dim=0, **kwargs):
        frame = inspect.currentframe().f_back
        if dim == 1 and len(tensors) == 2 and "x_res" in frame.f_locals:
            x, h = tensors
            stage = STAGES[x.shape[1]]
            self.joins.append(x.shape[1])
            structure = frame.f_locals["x_res"]
            tensors = reference_stage(x, h, self.config.stage(stage), self.config.version, self.config.threshold,
                                      structure=structure)  # fmt: skip
        return torch.cat(tensors, dim=dim, **kwargs)


def _reference(monkeypatch, unet, inputs, config: FreeUConfig) -> tuple[torch.Tensor, list[int]]:
    proxy = _BlockReferenceCat(config)
    with monkeypatch.context() as m:
        m.setattr(sys.modules[type(unet).__module__], "torch", proxy)
        return _run(unet, inputs), proxy.joins


def test_the_joins_and_their_stages(unet) -> None:
    plans = freeu.plan(unet)
    joins = [(p.join.name, p.join.backbone_channels, p.join.skip_channels, p.join.channels_last, p.stage)
             for p in plans]  # fmt: skip
    assert joins == [("up_blocks.1.0.channelwise", 32, 32, True, 1), ("up_blocks.2.0.channelwise", 16, 16, True, 2)]
    assert [p.stage for p in freeu.plan(unet, "diffusers")] == [1, 2]


def test_freeu_plan_lists_the_published_layouts_and_a_model_folder(unet, tmp_path, capsys) -> None:
    """Stage C's two 2048-wide levels have one join, stage 1; stage B grows as SD does (320, 640, 1280) and its
    1280 and 640 joins are stages 1 and 2 under both conventions; the sizes and repeats are measured by a forward
    (at 1024 px). A pipeline folder is read from its decoder's config.json."""
    from freeu.apps.cli import main

    def table(argv: list[str]) -> tuple[list[list[str]], str]:
        assert main(["plan", *argv]) == 0
        text = capsys.readouterr().out
        return [line.split() for line in text.splitlines() if line.startswith("up_blocks")], text

    rows, _ = table(["stable-cascade-c"])
    assert rows == [["up_blocks.1.0.channelwise", "2048", "2048", "24", "b1,s1", "b1,s1"]]
    rows, text = table(["stable-cascade-b"])
    assert rows == [["up_blocks.1.0.channelwise", "1280", "1280", "32", "b1,s1", "b1,s1"],
                    ["up_blocks.2.0.channelwise", "640", "640", "64", "b2,s2", "b2,s2"],
                    ["up_blocks.3.0.channelwise", "320", "320", "128", "-", "-"]]  # fmt: skip
    assert "up_blocks.1.0.channelwise x3, up_blocks.2.0.channelwise x2" in text
    unet.save_config(tmp_path / "decoder")
    rows, text = table([str(tmp_path)])
    assert rows == [["up_blocks.1.0.channelwise", "32", "32", "-", "b1,s1", "b1,s1"],
                    ["up_blocks.2.0.channelwise", "16", "16", "-", "b2,s2", "b2,s2"]]  # fmt: skip
    assert f"{tmp_path / 'decoder'}: StableCascadeUNet (from its config.json)" in text


def test_at_the_join_the_backbone_is_normalised_so_version_2_reads_the_blocks_input(unet) -> None:
    """Why version 2's map comes from the block's input: the backbone the join receives has been normalised over its
    channels at every pixel, so its channel mean (the map FreeU would take) is zero up to rounding."""
    block = unet.up_blocks[1][0]
    x = torch.randn(2, 32, 8, 12) * 3 + 1
    with torch.no_grad():
        joined = block.norm(block.depthwise(x))
    assert joined.mean(dim=1).abs().max() < 1e-5 < x.mean(dim=1).abs().max()


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_equals_the_reference_and_removal_restores_bit_for_bit(monkeypatch, unet, version) -> None:
    inputs = _inputs()
    before = _run(unet, inputs)
    config = FreeUConfig(**FACTORS, version=version)
    expected, joins = _reference(monkeypatch, unet, inputs, config)
    assert joins == [32, 32, 16]  # the repeated level joins on each of its two runs
    seen = []
    handle = freeu.apply(unet, config, observer=lambda o: seen.append(o.join.backbone_channels))
    ours = _run(unet, inputs)
    handle.remove()
    assert seen == joins
    assert (ours - before).abs().max() > 1e-3 * before.abs().max()  # FreeU changes the output: the check can fail
    assert (ours.double() - expected.double()).abs().max() < 1e-5 * expected.abs().max()
    assert torch.equal(_run(unet, inputs), before)
    with freeu.apply(unet, b1=1.0, b2=1.0, s1=1.0, s2=1.0):
        assert torch.equal(_run(unet, inputs), before)


def test_version_2_is_refused_on_a_join_layer_called_alone(unet) -> None:
    block = unet.up_blocks[1][0]
    with freeu.apply(unet, **FACTORS), pytest.raises(RuntimeError, match="reads its map from the input of the block"):
        block.channelwise(torch.randn(1, 4, 4, 64))
    with freeu.apply(unet, **FACTORS, version=1), torch.no_grad():  # version 1 needs no map
        assert block.channelwise(torch.randn(1, 4, 4, 64)).shape == (1, 4, 4, 32)


def test_per_sample_factors_and_a_window_on_the_timestep_ratio(unet) -> None:
    inputs = _inputs(batch=2)
    plain = _run(unet, inputs)
    config = FreeUConfig(**FACTORS)
    with freeu.apply(unet, config):
        full = _run(unet, inputs)
    with freeu.apply(unet, config.replace(b1=(1.0, 1.5), b2=(1.0, 1.6), s1=(1.0, 0.9), s2=(1.0, 0.2))):
        mixed = _run(unet, inputs)
    assert torch.equal(mixed[0], plain[0])
    assert (mixed[1] - full[1]).abs().max() < 1e-5 * full.abs().max()
    # the U-Net takes the timestep as a ratio (1: noise): a window over the second half of the trajectory takes
    # ratio 0.1 (inside) and leaves 0.9 (outside) alone, given num_train_timesteps=1
    with pytest.raises(ValueError, match="give num_train_timesteps=1"):
        freeu.apply(unet, config.replace(start=0.5, stop=1.0))
    timed = _inputs(batch=2, ratio=[0.1, 0.9])
    plain_t = _run(unet, timed)
    with freeu.apply(unet, config):
        full_t = _run(unet, timed)
    with freeu.apply(unet, config.replace(start=0.5, stop=1.0, num_train_timesteps=1)):
        windowed = _run(unet, timed)
    assert (windowed[0] - full_t[0]).abs().max() < 1e-5 * full_t.abs().max()
    assert torch.equal(windowed[1], plain_t[1])


def test_a_pipeline_holding_one_u_net_is_found_and_the_combined_one_refused(unet) -> None:
    decoder_pipe = types.SimpleNamespace(decoder=unet, scheduler=None)
    prior_pipe = types.SimpleNamespace(prior=unet, scheduler=None)
    for pipe in (decoder_pipe, prior_pipe):
        assert freeu.models.find_unet(pipe) is unet
    combined = types.SimpleNamespace(prior_pipe=prior_pipe, decoder_pipe=decoder_pipe, decoder=unet)
    with pytest.raises(freeu.UnsupportedModelError, match="pipe.prior_pipe or pipe.decoder_pipe"):
        freeu.apply(combined, **FACTORS)
