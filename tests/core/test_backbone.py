"""Backbone scaling (versions 1 and 2) against a reference written from docs/method.md section 1."""

from __future__ import annotations

import pytest
import torch

from freeu.backbone import scale_backbone, scaled_half, structure_factor


def reference_v2(x: torch.Tensor, b: float) -> torch.Tensor:
    """Per sample: channel mean, min-max normalised over positions to [0, 1], alpha = (b - 1) * m + 1 on [0, C/2)."""
    out = x.double().clone()
    half = x.shape[1] // 2
    for i in range(x.shape[0]):
        mean = x[i].double().mean(dim=0)
        norm = (mean - mean.min()) / (mean.max() - mean.min())
        out[i, :half] = out[i, :half] * ((b - 1) * norm + 1)
    return out


@pytest.mark.parametrize("channels", [4, 5, 64])
def test_version1_scales_first_half_only(channels: int) -> None:
    x = torch.randn(2, channels, 6, 7)
    out = scale_backbone(x, 1.4, version=1)
    half = channels // 2
    assert torch.equal(out[:, :half], x[:, :half] * 1.4)
    assert torch.equal(out[:, half:], x[:, half:])


@pytest.mark.parametrize("size", [(8, 8), (3, 5), (1, 2)])
def test_version2_matches_reference(size: tuple[int, int]) -> None:
    x = torch.randn(3, 10, *size)
    out = scale_backbone(x, 1.6, version=2)
    assert out.dtype == x.dtype
    assert (out.double() - reference_v2(x, 1.6)).abs().max().item() < 1e-5


def test_version2_factor_runs_from_one_to_b() -> None:
    x = torch.randn(2, 8, 9, 9)
    factor = structure_factor(x, 1.5)
    assert factor.shape == (2, 1, 9, 9)
    for i in range(2):
        assert factor[i].min().item() == pytest.approx(1.0, abs=1e-6)
        assert factor[i].max().item() == pytest.approx(1.5, abs=1e-6)
        mean = x[i].mean(dim=0)
        assert factor[i, 0].flatten()[mean.flatten().argmax()].item() == pytest.approx(1.5, abs=1e-6)


def test_version2_constant_mean_map_gets_full_b_not_nan() -> None:
    x = torch.randn(2, 6, 1, 1)  # a 1x1 map: the authors' code divides 0 by 0 here
    out = scale_backbone(x, 1.3, version=2)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, scale_backbone(x, 1.3, version=1))


@pytest.mark.parametrize("version", [1, 2])
def test_per_sample_factor_equals_scalar_runs(version: int) -> None:
    x = torch.randn(3, 6, 5, 5)
    bs = [1.0, 1.3, 1.8]
    out = scale_backbone(x, torch.tensor(bs), version=version)
    for i, b in enumerate(bs):
        assert torch.allclose(out[i], scale_backbone(x[i : i + 1], b, version=version)[0], atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_dtype(dtype: torch.dtype) -> None:
    x = torch.randn(2, 8, 6, 6).to(dtype)
    for version in (1, 2):
        out = scale_backbone(x, 1.4, version=version)
        assert out.dtype == dtype
    ref = reference_v2(x, 1.4)
    ulp = torch.finfo(dtype).eps * ref.abs().clamp_min(torch.finfo(dtype).tiny)  # subnormal results round absolutely
    assert ((scale_backbone(x, 1.4, version=2).double() - ref).abs() <= 2 * ulp).all()


def test_input_is_not_modified() -> None:
    x = torch.randn(2, 8, 4, 4)
    before = x.clone()
    for version in (1, 2):
        scale_backbone(x, 1.5, version=version)
    assert torch.equal(x, before)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="version must be 1 or 2"):
        scale_backbone(torch.randn(1, 4, 2, 2), 1.2, version=3)
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\)"):
        scale_backbone(torch.randn(4, 2, 2), 1.2)
    with pytest.raises(ValueError, match="per-sample factor must have shape"):
        scale_backbone(torch.randn(2, 4, 2, 2), torch.tensor([1.0, 1.1, 1.2]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_goes_in_pieces(monkeypatch, dtype: torch.dtype) -> None:
    """Written into ``out``, a half-precision backbone is scaled a few channels at a time, and version 2's channel
    mean accumulates in float32 the same way: no allocation as large as the feature in float32 (``mean(dtype=...)``
    and a mixed-precision ``mul`` each make one inside), and the same numbers."""
    from freeu import fourier

    x = (torch.randn(2, 40, 16, 16, generator=torch.Generator().manual_seed(3)) * 3 + 1).to(dtype)
    monkeypatch.setattr(fourier, "_PIECE_ELEMENTS_CPU", 2 * 3 * 16 * 16)  # 3 channels at a time: uneven pieces
    out = torch.empty(2, 20, 16, 16, dtype=dtype)
    for version, b in ((2, 1.5), (1, torch.tensor([1.2, 1.7]))):
        with torch.profiler.profile(profile_memory=True) as prof:
            scaled_half(x, b, version, out=out)
        allocations = [e.cpu_memory_usage for e in prof.events() if e.name in ("aten::empty_strided", "aten::empty")]
        assert max(allocations) <= 2 * 3 * 16 * 16 * 4, (version, max(allocations))
        factor = structure_factor(x, 1.5) if version == 2 else b.view(2, 1, 1, 1)
        assert torch.equal(out, (x[:, :20].float() * factor).to(dtype))
    factor = structure_factor(x, 1.5)
    mean = x.double().mean(dim=1, keepdim=True)
    low, high = mean.amin(dim=(2, 3), keepdim=True), mean.amax(dim=(2, 3), keepdim=True)
    expected = 0.5 * (mean - low) / (high - low) + 1
    assert factor.dtype == torch.float32
    assert (factor.double() - expected).abs().max().item() < 1e-5
    ref = reference_v2(x, 1.5)
    ulp = torch.finfo(dtype).eps * ref.abs().clamp_min(torch.finfo(dtype).tiny)  # subnormal results round absolutely
    assert ((scale_backbone(x, 1.5, version=2).double() - ref).abs() <= 2 * ulp).all()


# ---- a channel window (sd-webui-freeu's backbone offset and width) ---------------------------------------------------


def reference_window(x: torch.Tensor, b: float, offset: float, width: float, version: int) -> torch.Tensor:
    """float64, per channel: scaled when its index i has ``floor(o C) <= i' < floor((o + w) C)`` for i' = i or
    i + C (the window continues from channel 0); version 2's map from the mean over all channels."""
    import math

    x64 = x.double()
    channels = x.shape[1]
    begin, end = math.floor(offset * channels), math.floor((offset + width) * channels)
    inside = [begin <= i < end or begin <= i + channels < end for i in range(channels)]
    out = x64.clone()
    for n in range(x.shape[0]):
        if version == 1:
            factor = torch.tensor(b, dtype=torch.float64)
        else:
            mean = x64[n].mean(dim=0)
            factor = (b - 1) * (mean - mean.min()) / (mean.max() - mean.min()) + 1
        for i in range(channels):
            if inside[i]:
                out[n, i] = x64[n, i] * factor
    return out


def sd_webui_freeu_channels(channels: int, offset: float, width: float) -> set[int]:
    """sd-webui-freeu's region, transcribed for 0 <= offset, 0 <= width, offset + width <= 1: channels
    ``round(offset * n)`` to ``round((offset + width) * n)``, both included (Python's round)."""
    return set(range(round(offset * channels), round((offset + width) * channels) + 1))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    "offset, width", [(0.0, 0.5), (0.25, 0.5), (0.5, 0.5), (0.1, 0.2), (0.75, 0.5), (0.0, 1.0), (0.6, 0.0)]
)
@pytest.mark.parametrize("channels", [10, 13, 64])
def test_a_channel_window_matches_the_reference(version, offset, width, channels) -> None:
    x = torch.randn(2, channels, 5, 6, generator=torch.Generator().manual_seed(channels))
    out = scale_backbone(x, 1.4, version, window=(offset, width))
    assert (out.double() - reference_window(x, 1.4, offset, width, version)).abs().max().item() < 1e-5
    assert not torch.equal(x, out) or width == 0 or channels * width < 1


def test_the_default_window_is_bit_identical_and_sd_webui_freeus_default_is_reproducible() -> None:
    from freeu.backbone import channel_window

    x = torch.randn(2, 1280, 4, 4, generator=torch.Generator().manual_seed(1))
    for version in (1, 2):
        assert torch.equal(scale_backbone(x, 1.3, version, window=(0.0, 0.5)), scale_backbone(x, 1.3, version))
    assert channel_window(1280) == [(0, 640)] and channel_window(13) == [(0, 6)]
    # sd-webui-freeu's default (offset 0, width 0.5) scales 641 of 1280 channels (its end is included): the same
    # channels as offset round(o n) / n and width (round((o + w) n) - round(o n) + 1) / n here, at each stage's width
    for n, offset, width in ((1280, 0.0, 0.5), (640, 0.0, 0.5), (320, 0.1, 0.3), (1280, 0.3, 0.25)):
        theirs = sd_webui_freeu_channels(n, offset, width)
        ours_offset = round(offset * n) / n
        ours_width = (round((offset + width) * n) - round(offset * n) + 1) / n
        [(begin, end)] = channel_window(n, ours_offset, ours_width)
        assert set(range(begin, end)) == theirs, (n, offset, width)
    assert len(sd_webui_freeu_channels(1280, 0.0, 0.5)) == 641


def test_a_bad_channel_window_is_refused_naming_the_field() -> None:
    x = torch.randn(1, 8, 2, 2)
    for window, field in (((1.0, 0.5), "offset"), ((-0.1, 0.5), "offset"), ((0.0, 1.5), "width"),
                          ((0.0, float("nan")), "width")):  # fmt: skip
        with pytest.raises(ValueError, match=f"channel window's {field} must be in"):
            scale_backbone(x, 1.2, 1, window=window)
