"""torch.compile(fullgraph=True), autograd and gradient checkpointing through a patched U-Net."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import rerandomise_zeros, sd15_unet, unet_inputs

import freeu
from freeu import scale_backbone

diffusers = pytest.importorskip("diffusers")


def small_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=8,
    )  # fmt: skip
    return rerandomise_zeros(model)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inductor_fullgraph_equals_eager(dtype) -> None:
    model = small_unet().to(dtype)
    x = torch.randn(2, 3, 16, 16).to(dtype)
    t = torch.tensor([10, 900])
    with freeu.apply(model, preset="sd15"), torch.no_grad():
        eager = model(x, t).sample
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)(x, t).sample
    with torch.no_grad():
        base = model(x, t).sample
    assert compiled.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    assert (compiled.float() - eager.float()).abs().max().item() < tolerance
    assert (eager.float() - base.float()).abs().max().item() > 10 * tolerance


@pytest.mark.slow
def test_fullgraph_with_window_and_per_sample_factors() -> None:
    """The U-Net-level hook that reads the timestep and batch is traced too: no graph break, same numbers."""
    model = sd15_unet()
    inputs = unet_inputs(model)
    inputs["timestep"] = torch.tensor([999, 100])
    with freeu.apply(model, b1=[1.2, 1.5], b2=[1.3, 1.6], s1=0.9, s2=0.2, start=0.3), torch.no_grad():
        eager = model(**inputs).sample
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert (compiled(**inputs).sample - eager).abs().max().item() < 1e-5
        swapped = dict(inputs, timestep=torch.tensor([100, 999]))
        assert (compiled(**swapped).sample - model(**swapped).sample).abs().max().item() < 1e-5


def test_gradients_and_checkpointing() -> None:
    model = small_unet().train()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 900])

    def grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(x, t).sample
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    base_out, base_grads = grads()
    with freeu.apply(model, preset="sd15"):
        out, plain = grads()
        model.enable_gradient_checkpointing()
        try:
            ckpt_out, checkpointed = grads()
        finally:
            model.disable_gradient_checkpointing()
    assert (out - base_out).abs().max().item() > 1e-3
    assert all(torch.isfinite(g).all() for g in plain)
    assert max((a - b).abs().max().item() for a, b in zip(plain, base_grads, strict=True)) > 1e-6
    assert (ckpt_out - out).abs().max().item() < 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(checkpointed, plain, strict=True)) < 1e-5


def test_backbone_gradcheck() -> None:
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    for version in (1, 2):
        assert torch.autograd.gradcheck(lambda t, v=version: scale_backbone(t, 1.4, version=v), (x,))


@pytest.mark.slow
def test_applying_through_a_compiled_wrapper_is_never_silently_dropped() -> None:
    """Compiled graphs do not see hooks added later; FreeU resets them when it is given the compiled module."""
    model = small_unet()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    holder = type("Pipe", (), {})()
    holder.unet = compiled
    with torch.no_grad():
        base = compiled(x, t).sample
        for settings in (dict(preset="sd15"), dict(preset="sd15", b1=1.1), dict(preset="sdxl", version=1)):
            handle = freeu.apply(holder, **settings)
            expected = model(x, t).sample
            assert (compiled(x, t).sample - expected).abs().max().item() < 1e-5
            assert (expected - base).abs().max().item() > 1e-2
        handle.remove()
        assert (compiled(x, t).sample - base).abs().max().item() < 1e-5


def test_a_second_unet_compiled_after_a_plain_one_keeps_freeu() -> None:
    """Dynamo does not guard on module hooks by default, so the patched twin would reuse the plain twin's graph."""
    plain = small_unet()
    patched = copy.deepcopy(plain)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        base = plain(x, t).sample
        freeu.apply(patched, preset="sd15")
        expected = patched(x, t).sample
        assert (expected - base).abs().max().item() > 1e-2
        assert (torch.compile(plain, fullgraph=True, backend="aot_eager")(x, t).sample - base).abs().max() < 1e-5
        twin = torch.compile(patched, fullgraph=True, backend="aot_eager")
        assert (twin(x, t).sample - expected).abs().max().item() < 1e-5


def test_applying_to_the_bare_module_after_compiling_is_seen() -> None:
    model = small_unet()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    freeu.apply(model, preset="sd15").remove()  # the hook guards are switched on at the first apply in a process
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        base = compiled(x, t).sample
        with freeu.apply(model, preset="sd15"):  # the module itself, not the compiled wrapper
            expected = model(x, t).sample
            assert (compiled(x, t).sample - expected).abs().max().item() < 1e-5
        assert (compiled(x, t).sample - base).abs().max().item() < 1e-5


def test_toggling_freeu_on_a_compiled_unet_recompiles_nothing_else() -> None:
    """Other compiled models (a VAE, a text encoder) keep their graphs while FreeU goes on, changes and comes off
    the compiled U-Net: dynamo's count of compiled graphs grows only by the U-Net's new settings."""
    from torch._dynamo.utils import counters

    model = small_unet()
    freeu.apply(model, preset="sd15").remove()  # the hook guards are on from the first apply in a process
    torch.compiler.reset()  # earlier tests' U-Net graphs would count against dynamo's per-function recompile limit
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    other = torch.compile(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.SiLU()), backend="aot_eager")
    holder = type("Pipe", (), {})()
    holder.unet = compiled
    with torch.no_grad():
        base, first = compiled(x, t).sample, other(x)
        graphs = counters["stats"]["unique_graphs"]
        for n, settings in enumerate((dict(preset="sd15"), dict(preset="sd15", b1=1.1), dict(preset="sdxl")), 1):
            handle = freeu.apply(holder, **settings)
            assert (compiled(x, t).sample - model(x, t).sample).abs().max().item() < 1e-5
            assert torch.equal(other(x), first)
            assert counters["stats"]["unique_graphs"] == graphs + n  # the U-Net's new graph, and nothing else
        handle.remove()
        assert (compiled(x, t).sample - base).abs().max().item() < 1e-5  # its first graph, from the cache
        assert counters["stats"]["unique_graphs"] == graphs + 3


def test_the_first_apply_drops_compiled_graphs_only_where_some_exist() -> None:
    """The switch to hook guards drops graphs compiled without them, once per process, and only if there are any."""
    script = """
import torch, freeu
from torch import nn
resets = []
torch.compiler.reset = lambda: resets.append(1)
conv = nn.Conv2d(64, 8, 1)
layout = freeu.CustomUNet(joins={"0": 32}, base_channels=8)
model = nn.Sequential(conv)
freeu.apply(model, b1=1.2, b2=1, s1=0.9, s2=1, layout=layout).remove()
assert resets == [], resets  # nothing was compiled before: nothing to drop
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
