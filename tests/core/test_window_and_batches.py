"""Step window (read from the timestep the U-Net receives) and per-sample factors (one batch, many settings)."""

from __future__ import annotations

import ldm_standin
import pytest
import torch
import video_models
from conftest import run, sd15_unet, unet_inputs

import freeu
from freeu import FreeUConfig
from freeu.join import window_weight

pytest.importorskip("diffusers")

FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return sd15_unet()


def with_timesteps(inputs: dict, timesteps) -> dict:
    return {**inputs, "timestep": timesteps}


# ---- step window --------------------------------------------------------------------------------------------------


def test_window_weight_shape() -> None:
    p = torch.tensor([0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.75, 0.8, 0.9, 1.0])
    hard = window_weight(p, 0.2, 0.8, 0.0)
    assert hard.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    ramp = window_weight(p, 0.2, 0.8, 0.1)
    expected = [0, 0, 0, 0.5, 1, 1, 1, 0.5, 0, 0, 0]
    assert ramp.tolist() == pytest.approx(expected, abs=1e-6)


def test_outside_the_window_is_bit_identical(unet) -> None:
    inputs = unet_inputs(unet)
    noisy = with_timesteps(inputs, torch.tensor([999, 999]))  # progress 0.001: before the window
    late = with_timesteps(inputs, torch.tensor([100, 100]))  # progress 0.9: inside it
    base_noisy, base_late = run(unet, noisy), run(unet, late)
    with freeu.apply(unet, preset="sd15"):
        full_late = run(unet, late)
    with freeu.apply(unet, preset="sd15", start=0.5, stop=1.0):
        assert torch.equal(run(unet, noisy), base_noisy)
        assert torch.equal(run(unet, late), full_late)
    assert not torch.equal(full_late, base_late)
    with freeu.apply(unet, preset="sd15", start=0.0, stop=0.5):
        assert torch.equal(run(unet, late), base_late)


def test_window_per_sample_timesteps(unet) -> None:
    """Samples at different steps in one batch (img2img, hires passes): each gets its own window weight."""
    inputs = with_timesteps(unet_inputs(unet), torch.tensor([999, 100]))
    base = run(unet, inputs)
    with freeu.apply(unet, preset="sd15"):
        full = run(unet, inputs)
    with freeu.apply(unet, preset="sd15", start=0.5):
        windowed = run(unet, inputs)
    assert torch.equal(windowed[0], base[0])
    assert (windowed[1] - full[1]).abs().max().item() < 1e-5


@pytest.mark.parametrize("timestep", [100, 100.0, torch.tensor(100), torch.tensor([100])])
def test_scalar_timesteps_are_read(unet, timestep) -> None:
    inputs = unet_inputs(unet)
    with freeu.apply(unet, preset="sd15"):
        full = run(unet, with_timesteps(inputs, timestep))
    with freeu.apply(unet, preset="sd15", start=0.5):
        assert torch.equal(run(unet, with_timesteps(inputs, timestep)), full)
    with freeu.apply(unet, preset="sd15", stop=0.5):
        assert not torch.equal(run(unet, with_timesteps(inputs, timestep)), full)


def test_ramp_scales_the_factors(unet) -> None:
    """Halfway up the ramp, FreeU acts like factors halfway between 1 and the configured ones."""
    inputs = with_timesteps(unet_inputs(unet), torch.tensor([700, 700]))  # progress 0.3
    with freeu.apply(unet, **FACTORS, start=0.2, stop=1.0, ramp=0.2):
        ramped = run(unet, inputs)
    halfway = {k: 1 + 0.5 * (v - 1) for k, v in FACTORS.items()}
    with freeu.apply(unet, **halfway):
        expected = run(unet, inputs)
    assert (ramped - expected).abs().max().item() < 1e-5


def test_window_on_the_ldm_unet_reads_timesteps() -> None:
    torch.manual_seed(0)
    model = ldm_standin.UNetModel().eval()
    x = torch.randn(2, 4, 16, 16)
    early, late = torch.tensor([950, 950]), torch.tensor([500, 500])  # progress 0.05 and 0.5
    with torch.no_grad():
        base_early, base_late = model(x, timesteps=early), model(x, late)
        with freeu.apply(model, preset="sd15", start=0.2):
            assert torch.equal(model(x, timesteps=early), base_early)  # keyword, before the window
            assert (model(x, late) - base_late).abs().max().item() > 1e-2  # positional, inside it


def test_window_validation() -> None:
    with pytest.raises(ValueError, match="start must be < stop"):
        FreeUConfig(**FACTORS, start=0.6, stop=0.4)
    with pytest.raises(ValueError, match=r"stop must be a fraction of the denoising trajectory in \[0, 1\]"):
        FreeUConfig(**FACTORS, stop=1.5)
    with pytest.raises(ValueError, match="ramp must be at most half the window"):
        FreeUConfig(**FACTORS, start=0.4, stop=0.6, ramp=0.2)


def test_window_needs_the_unet_forward(unet) -> None:
    resnet = unet.up_blocks[0].resnets[0]
    with freeu.apply(unet, preset="sd15", start=0.5), pytest.raises(RuntimeError, match="outside the U-Net's forward"):
        resnet(torch.randn(1, resnet.in_channels, 2, 2), torch.randn(1, 128))


# ---- per-sample factors -------------------------------------------------------------------------------------------


def test_per_sample_factors_with_guidance_doubling(unet) -> None:
    """Three settings in one pipeline batch; the U-Net sees 6 rows ([uncond x3, cond x3]) as under CFG."""
    gen = torch.Generator().manual_seed(7)
    latents = torch.randn(3, 4, 16, 16, generator=gen)
    states = torch.randn(6, 5, 32, generator=gen)
    inputs = dict(sample=torch.cat([latents, latents]), timestep=torch.tensor(500), encoder_hidden_states=states)
    settings = [dict(b1=1.0, b2=1.0, s1=1.0, s2=1.0), FACTORS, dict(b1=1.2, b2=1.1, s1=0.5, s2=0.0)]
    per_sample = {k: [s[k] for s in settings] for k in FACTORS}
    with freeu.apply(unet, **per_sample, version=2):
        batched = run(unet, inputs)
    rows = [0, 1, 2, 3, 4, 5]
    for i, setting in enumerate(settings):
        with freeu.apply(unet, **setting, version=2):
            single = run(unet, inputs)
        for row in (rows[i], rows[i + 3]):
            assert (batched[row] - single[row]).abs().max().item() < 1e-5, (i, row)
    assert (batched[0] - run(unet, inputs)[0]).abs().max().item() < 1e-5  # the identity setting


def test_per_sample_factors_on_video_frames() -> None:
    model = video_models.build("unet3d")
    kwargs = video_models.inputs("unet3d")
    with freeu.apply(model, b1=[1.0, 1.5], b2=[1.0, 1.6], s1=[1.0, 0.9], s2=[1.0, 0.2]):
        batched = video_models.run(model, kwargs)
    base = video_models.run(model, kwargs)
    with freeu.apply(model, **FACTORS):
        full = video_models.run(model, kwargs)
    assert (batched[0] - base[0]).abs().max().item() < 1e-5
    assert (batched[1] - full[1]).abs().max().item() < 1e-5
    assert (batched[1] - base[1]).abs().max().item() > 1e-2


def test_per_sample_length_must_divide_the_batch(unet) -> None:
    inputs = unet_inputs(unet, batch=2)
    with (
        freeu.apply(unet, b1=[1.1, 1.2, 1.3], b2=1.4, s1=0.9, s2=0.2),
        pytest.raises(ValueError, match="per-sample b1 has 3 values, but the U-Net batch is 2"),
    ):
        run(unet, inputs)


def test_per_sample_lengths_must_agree() -> None:
    with pytest.raises(ValueError, match=r"same length, got lengths \[2, 3\]"):
        FreeUConfig(b1=[1.0, 1.1], b2=[1.0, 1.1, 1.2], s1=0.9, s2=0.2)
    with pytest.raises(ValueError, match=r"s1\[1\] must be a finite number >= 0"):
        FreeUConfig(b1=1.1, b2=1.2, s1=[0.9, float("nan")], s2=0.2)


def test_per_sample_and_window_together(unet) -> None:
    inputs = with_timesteps(unet_inputs(unet), torch.tensor([999, 100]))
    base = run(unet, inputs)
    with freeu.apply(unet, b1=[1.5, 1.5], b2=[1.6, 1.6], s1=[0.9, 0.9], s2=[0.2, 0.2], start=0.5):
        out = run(unet, inputs)
    with freeu.apply(unet, **FACTORS):
        full = run(unet, inputs)
    assert torch.equal(out[0], base[0])
    assert (out[1] - full[1]).abs().max().item() < 1e-5


def test_threads_sharing_a_patched_unet_see_their_own_timesteps(unet) -> None:
    """Each thread's forward reads its own timestep: the call state is per thread."""
    import threading

    inputs = unet_inputs(unet)
    early, late = with_timesteps(inputs, torch.tensor([999, 999])), with_timesteps(inputs, torch.tensor([100, 100]))
    with freeu.apply(unet, preset="sd15", start=0.5):
        expected = {"early": run(unet, early), "late": run(unet, late)}
        results: dict[str, list[torch.Tensor]] = {"early": [], "late": []}

        def work(name: str, kwargs: dict) -> None:
            for _ in range(3):
                results[name].append(run(unet, kwargs))

        threads = [threading.Thread(target=work, args=a) for a in (("early", early), ("late", late))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for name, outs in results.items():
        # the two settings differ by > 1e-2 (test_outside_the_window_is_bit_identical); allow thread-order rounding
        assert len(outs) == 3 and all((o - expected[name]).abs().max().item() < 1e-5 for o in outs), name
