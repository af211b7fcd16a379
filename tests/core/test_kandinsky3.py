"""Kandinsky 3's U-Net (diffusers ``Kandinsky3UNet``, tiny, random weights): its joins found by structure, FreeU
against the float64 reference applied at the forward's own ``torch.cat([sample, skip], dim=1)``, bit-exact
identity and removal, per-sample factors and a step window."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import rerandomise_zeros
from reference import TorchWithReferenceCat, official_stage

import freeu
from freeu import FreeUConfig

diffusers = pytest.importorskip("diffusers")

FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)
BASE = 16  # block_out_channels[0]: stage 1 at 64 channels, stage 2 at 32


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = diffusers.Kandinsky3UNet(
        in_channels=4, time_embedding_dim=32, groups=4, attention_head_dim=8, layers_per_block=2,
        block_out_channels=(BASE, 2 * BASE, 4 * BASE, 8 * BASE), cross_attention_dim=32, encoder_hid_dim=24,
    )  # fmt: skip
    return rerandomise_zeros(model).eval()


def _inputs(batch: int = 2, timestep: float | list[float] = 500.0, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t = torch.tensor(timestep if isinstance(timestep, list) else [timestep] * batch)
    return {
        "sample": torch.randn(batch, 4, 32, 32, generator=gen), "timestep": t,
        "encoder_hidden_states": torch.randn(batch, 6, 24, generator=gen),
        "encoder_attention_mask": torch.ones(batch, 6),
    }  # fmt: skip


def _run(unet, inputs) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


def _reference(monkeypatch, unet, inputs, config: FreeUConfig) -> torch.Tensor:
    module = sys.modules[type(unet).__module__]
    proxy = TorchWithReferenceCat(torch, config, lambda caller: caller is unet, official_stage(BASE))
    with monkeypatch.context() as m:
        m.setattr(module, "torch", proxy)
        return _run(unet, inputs)


def test_the_joins_and_their_stages(unet) -> None:
    plans = freeu.plan(unet)
    assert [(p.join.name, p.join.backbone_channels, p.join.skip_channels, p.stage) for p in plans] == [
        ("up_blocks.1", 64, 64, 1), ("up_blocks.2", 32, 32, 2), ("up_blocks.3", 16, 16, None)]  # fmt: skip
    assert [p.stage for p in freeu.plan(unet, "diffusers")] == [1, 2, None]


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_equals_the_reference_and_removal_restores_bit_for_bit(monkeypatch, unet, version) -> None:
    inputs = _inputs()
    before = _run(unet, inputs)
    config = FreeUConfig(**FACTORS, version=version)
    expected = _reference(monkeypatch, unet, inputs, config)
    handle = freeu.apply(unet, config)
    ours = _run(unet, inputs)
    handle.remove()
    assert (ours - before).abs().max() > 1e-3 * before.abs().max()  # FreeU changes the output: the check can fail
    assert (ours.double() - expected.double()).abs().max() < 1e-5 * expected.abs().max()
    assert torch.equal(_run(unet, inputs), before)
    with freeu.apply(unet, b1=1.0, b2=1.0, s1=1.0, s2=1.0):
        assert torch.equal(_run(unet, inputs), before)


def test_per_sample_factors_and_a_window(unet) -> None:
    inputs = _inputs(batch=2)
    plain = _run(unet, inputs)
    config = FreeUConfig(**FACTORS)
    with freeu.apply(unet, config):
        full = _run(unet, inputs)
    with freeu.apply(unet, config.replace(b1=(1.0, 1.5), b2=(1.0, 1.6), s1=(1.0, 0.9), s2=(1.0, 0.2))):
        mixed = _run(unet, inputs)
    assert torch.equal(mixed[0], plain[0])
    assert (mixed[1] - full[1]).abs().max() < 1e-5 * full.abs().max()
    # a window over the second half of the trajectory: t = 100 is inside it, t = 900 outside
    timed = _inputs(batch=2, timestep=[100.0, 900.0])
    plain_t = _run(unet, timed)
    with freeu.apply(unet, config):
        full_t = _run(unet, timed)
    with freeu.apply(unet, config.replace(start=0.5, stop=1.0)):
        windowed = _run(unet, timed)
    assert (windowed[0] - full_t[0]).abs().max() < 1e-5 * full_t.abs().max()
    assert torch.equal(windowed[1], plain_t[1])


def test_freeu_plan_lists_the_full_size_joins_at_the_sizes_a_forward_gives(unet, capsys, tmp_path) -> None:
    from freeu.apps.cli import main

    unet.save_config(tmp_path / "unet")  # a pipeline folder: the U-Net's config.json, its weights never read
    assert main(["plan", str(tmp_path)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [["up_blocks.1", "64", "64", "-", "b1,s1", "b1,s1"],
                    ["up_blocks.2", "32", "32", "-", "b2,s2", "b2,s2"],
                    ["up_blocks.3", "16", "16", "-", "-", "-"]]  # fmt: skip

    assert main(["plan", "kandinsky3"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [["up_blocks.1", "1536", "1536", "16", "b1,s1", "b1,s1"],
                    ["up_blocks.2", "768", "768", "32", "b2,s2", "b2,s2"],
                    ["up_blocks.3", "384", "384", "64", "-", "-"]]  # fmt: skip
    # the table's sizes (latent / 2 ** (levels - 1 - level)) are those of a real forward, here at 32 x 32
    seen = {}

    def size(name):
        return lambda module, args: seen.update({name: args[0].shape[-1]})  # returns None: the inputs stay

    hooks = [p.join.module.register_forward_pre_hook(size(p.join.name)) for p in freeu.plan(unet)]
    _run(unet, _inputs(batch=1))
    for h in hooks:
        h.remove()
    assert seen == {"up_blocks.1": 4, "up_blocks.2": 8, "up_blocks.3": 16}
