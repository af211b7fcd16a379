"""The Fourier measurements on inputs whose spectrum is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from freeu.apps.analyze.measures import frequency_split, normalised_radius, relative_log_amplitude


def image_with_amplitude(amplitude: torch.Tensor) -> torch.Tensor:
    """A real image whose |FFT2| (DC-centred) is ``amplitude`` (which must be point-symmetric about DC)."""
    return torch.fft.ifft2(torch.fft.ifftshift(amplitude.to(torch.complex128), dim=(-2, -1))).real


@pytest.mark.parametrize("size", [16, 17, 32])
def test_diagonal_curve_of_a_known_spectrum(size: int) -> None:
    radius = normalised_radius(size, size)
    amplitude = torch.exp(-3.0 * radius)
    if size % 2 == 0:  # keep the spectrum point-symmetric about DC: the unpaired Nyquist row/column gets its own
        amplitude[0, :] = amplitude[:, 0] = 1e-3
    x = image_with_amplitude(amplitude).expand(2, 3, size, size)
    frequency, values = relative_log_amplitude(x)
    steps = size - size // 2
    assert frequency.shape == values.shape == (steps,)
    assert frequency[0] == 0 and frequency[-1] == pytest.approx(math.pi)
    j = torch.arange(steps, dtype=torch.float64)
    expected = -3.0 * math.sqrt(2.0) * j / (size / 2)  # log exp(-3 r) along (j, j), minus its value at DC
    assert (values - expected).abs().max().item() < 1e-6


def test_radial_curve_of_an_isotropic_spectrum() -> None:
    size = 64
    radius = normalised_radius(size, size)
    amplitude = torch.exp(-2.0 * radius)
    amplitude[0, :] = amplitude[:, 0] = 1e-3
    _, values = relative_log_amplitude(image_with_amplitude(amplitude), path="radial", bins=9)
    expected = -2.0 * torch.linspace(0, 1, 9, dtype=torch.float64)
    # each ring averages radii within half a bin width (1/16) of its centre
    assert (values - expected).abs().max().item() < 2.0 / 16 + 1e-6


def test_more_high_frequency_content_raises_the_curve() -> None:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    smooth = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1)
    _, rough_curve = relative_log_amplitude(noise)
    _, smooth_curve = relative_log_amplitude(smooth)
    assert (smooth_curve[4:] < rough_curve[4:] - 0.5).all()


def test_split_of_a_pure_low_and_a_pure_high_frequency_image() -> None:
    n = torch.arange(32, dtype=torch.float64)
    low_only = 2.0 + torch.cos(2 * math.pi * 2 * n / 32)[:, None] * torch.ones(32, dtype=torch.float64)
    low, high = frequency_split(low_only[None, None], cutoff=0.25)  # frequency 2 of 16: radius 0.125
    assert high.abs().max().item() < 1e-10
    assert (low - low_only).abs().max().item() < 1e-10
    checkerboard = (-1.0) ** (n[:, None] + n[None, :])  # Nyquist on both axes
    low, high = frequency_split(checkerboard[None], cutoff=0.25)
    assert low.abs().max().item() < 1e-10 and (high - checkerboard).abs().max().item() < 1e-10


def test_split_adds_up_and_keeps_dtype() -> None:
    x = torch.randn(2, 3, 20, 24)
    low, high = frequency_split(x, cutoff=0.3)
    assert low.dtype == high.dtype == torch.float32
    assert (low + high - x).abs().max().item() < 1e-5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="path must be 'diagonal' or 'radial'"):
        relative_log_amplitude(torch.randn(4, 4), path="ring")
    with pytest.raises(ValueError, match=r"cutoff must be a fraction of the Nyquist frequency in \(0, sqrt\(2\)\)"):
        frequency_split(torch.randn(4, 4), cutoff=0)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., H, W\)"):
        relative_log_amplitude(torch.randn(4))


def test_observer_sees_every_join_with_and_without_freeu() -> None:
    """Fig. 7's capture reuses the FreeU hooks: identity settings observe without changing anything."""
    pytest.importorskip("diffusers")
    from conftest import run, sd15_unet, unet_inputs

    import freeu

    unet = sd15_unet()
    inputs = unet_inputs(unet)
    base = run(unet, inputs)
    seen: list = []
    with freeu.apply(unet, b1=1, b2=1, s1=1, s2=1, observer=seen.append):
        assert torch.equal(run(unet, inputs), base)
    assert [o.join.name for o in seen] == [p.join.name for p in freeu.plan(unet)]
    assert all(o.backbone_out is o.backbone and o.skip_out is o.skip for o in seen)
    seen.clear()
    with freeu.apply(unet, preset="sd15", version=1, observer=seen.append):
        run(unet, inputs)
    by_stage = {o.join.name: o for o in seen}
    stage1 = by_stage["up_blocks.0.resnets.0"]
    half = stage1.backbone.shape[1] // 2
    assert stage1.stage == 1
    assert torch.allclose(stage1.backbone_out[:, :half], stage1.backbone[:, :half] * 1.5)
    assert torch.allclose(stage1.skip_out, freeu.fourier_filter(stage1.skip, 1, 0.9))
    untouched = by_stage["up_blocks.3.resnets.2"]
    assert untouched.stage is None and untouched.skip_out is untouched.skip
    # the skip filter lowers the lowest frequencies of the skip feature, relative to the rest
    _, before = relative_log_amplitude(stage1.skip, path="radial", bins=3)
    _, after = relative_log_amplitude(stage1.skip_out, path="radial", bins=3)
    assert after[1] > before[1]
