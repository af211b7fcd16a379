"""The skip filter against an independent float64 FFT reference, closed-form modes, and its contracts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from freeu.fourier import filtered_frequencies, fourier_filter


def reference(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """docs/method.md section 1, literally: fftshift(fft2), half-open square around (H//2, W//2), ifft, real part."""
    x = x.double()
    height, width = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones(height, width, dtype=torch.float64)
    crow, ccol = height // 2, width // 2
    mask[crow - threshold : crow + threshold, ccol - threshold : ccol + threshold] = scale
    return torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real


AWKWARD = [
    (1, 1),
    (1, 7),
    (7, 1),
    (1, 2),
    (2, 1),
    (2, 2),
    (2, 5),
    (3, 3),
    (5, 7),
    (6, 10),
    (8, 8),
    (13, 64),
    (33, 17),
    (64, 64),
    (96, 80),
]


@pytest.mark.parametrize("size", AWKWARD, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scale", [0.0, 0.2, 0.9, 1.6])
def test_matches_fft_reference_float32(size: tuple[int, int], scale: float) -> None:
    gen = torch.Generator().manual_seed(hash(size) % 1000)
    x = torch.randn(2, 3, *size, generator=gen) * 3 + 1
    for threshold in (1, 2, 3):
        # the literal slice is only a square around the centre while threshold <= n // 2 (or n == 1)
        if any(n > 1 and threshold > n // 2 for n in size):
            continue
        out = fourier_filter(x, threshold, scale)
        assert out.dtype == torch.float32 and out.shape == x.shape
        err = (out.double() - reference(x, threshold, scale)).abs().max().item()
        assert err < 1e-5, (size, threshold, scale, err)


def mode(height: int, width: int, k: int, m: int, phase: float = 0.3) -> torch.Tensor:
    n = torch.arange(height, dtype=torch.float64)[:, None]
    w = torch.arange(width, dtype=torch.float64)[None, :]
    return torch.cos(2 * math.pi * (k * n / height + m * w / width) + phase)


@pytest.mark.parametrize(
    ("k", "m", "gain"),
    [
        ((0), (0), "s"),
        (0, 1, "half"),
        (0, -1, "half"),
        (1, 0, "half"),
        (-1, 0, "half"),
        (1, 1, "half"),
        (-1, -1, "half"),
        (1, -1, "one"),
        (-1, 1, "one"),
        (2, 0, "one"),
        (0, 3, "one"),
        (2, 2, "one"),
    ],
)
def test_effective_gain_per_mode(k: int, m: int, gain: str) -> None:
    """docs/method.md 1.2: DC gets s; (0,+-1), (+-1,0), (1,1), (-1,-1) get (1+s)/2; (1,-1), (-1,1), the rest 1."""
    s = 0.3
    x = mode(12, 10, k, m)
    expected = {"s": s, "half": (1 + s) / 2, "one": 1.0}[gain] * x
    out = fourier_filter(x.float(), 1, s).double()
    assert (out - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (4, 6), (5, 8), (7, 7)])
def test_threshold_covering_spectrum_scales_everything(size: tuple[int, int]) -> None:
    """A square that covers every bin scales the whole map: out == s * x (the reference's slice would wrap)."""
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    for threshold in (max(size), max(size) + 3):
        for method in ("projection", "fft"):
            out = fourier_filter(x, threshold, 0.25, method=method)
            assert torch.allclose(out, 0.25 * x, atol=1e-12), (size, threshold, method)


def test_filtered_frequencies() -> None:
    assert filtered_frequencies(8, 8) == [(-1, -1), (-1, 0), (0, -1), (0, 0)]
    assert filtered_frequencies(1, 5) == [(0, -1), (0, 0)]
    assert filtered_frequencies(1, 1) == [(0, 0)]
    assert len(filtered_frequencies(5, 4, threshold=9)) == 20


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("size", [(8, 8), (12, 20), (7, 5), (1, 9)])
def test_keeps_dtype_and_rounds_like_reference(dtype: torch.dtype, size: tuple[int, int]) -> None:
    x = (torch.randn(2, 5, *size) * 4).to(dtype)
    out = fourier_filter(x, 1, 0.4)
    assert out.dtype == dtype and out.shape == x.shape
    exact = reference(x, 1, 0.4)
    # accumulation in float32 (float64 for float64), then one rounding to the dtype: within one unit in the last
    # place of the exact value, plus the accumulation's own error (it matters where the output nearly cancels)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    ulp = torch.finfo(dtype).eps * exact.abs().clamp_min(torch.finfo(dtype).tiny)
    accumulation = 8 * torch.finfo(acc).eps * x.double().abs().max()
    assert ((out.double() - exact).abs() <= ulp + accumulation).all()


def test_scale_one_is_exact_identity() -> None:
    x = torch.randn(2, 3, 9, 11).to(torch.bfloat16)
    for scale in (1, 1.0):
        out = fourier_filter(x, 1, scale)
        assert torch.equal(out, x) and out.dtype == x.dtype


def test_scale_zero_removes_dc() -> None:
    x = torch.randn(3, 4, 16, 16) + 5.0
    out = fourier_filter(x, 1, 0.0)
    assert out.mean(dim=(-2, -1)).abs().max().item() < 1e-5


def test_default_path_uses_no_fft_and_no_complex_dtype() -> None:
    seen: list[str] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            results = out if isinstance(out, (tuple, list)) else [out]
            for r in results:
                if isinstance(r, torch.Tensor) and r.is_complex():
                    seen.append(f"complex result from {func}")
            if "fft" in str(func):
                seen.append(str(func))
            return out

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(2, 6, 13, 24).to(dtype)
        with Recorder():
            fourier_filter(x, 1, 0.5)
            fourier_filter(x, 2, 0.5)
    assert seen == []
    # and the oracle path does go through the FFT, so the recorder can see it
    with Recorder():
        fourier_filter(torch.randn(1, 1, 8, 8), 1, 0.5, method="fft")
    assert seen


def test_methods_agree_and_large_threshold_uses_fft() -> None:
    x = torch.randn(2, 3, 40, 40)
    for threshold in (1, 2, 4, 8, 15):
        a = fourier_filter(x, threshold, 0.3, method="projection")
        b = fourier_filter(x, threshold, 0.3, method="fft")
        assert (a - b).abs().max().item() < 1e-4
        assert (fourier_filter(x, threshold, 0.3) - b).abs().max().item() < 1e-4


def test_input_untouched_and_non_contiguous_input() -> None:
    full = torch.randn(2, 10, 12, 12)
    before = full.clone()
    skip = full[:, 4:]  # a channel slice, as the hooks pass it
    out = fourier_filter(skip, 1, 0.2)
    assert torch.equal(full, before)
    assert (out.double() - reference(skip, 1, 0.2)).abs().max().item() < 1e-5
    transposed = full.transpose(-1, -2)
    assert (fourier_filter(transposed, 1, 0.2).double() - reference(transposed, 1, 0.2)).abs().max() < 1e-5


def test_per_sample_scale_tensor() -> None:
    x = torch.randn(3, 4, 10, 10)
    scales = torch.tensor([0.2, 1.0, 0.7])
    out = fourier_filter(x, 1, scales.view(3, 1))
    for i, s in enumerate(scales.tolist()):
        assert torch.allclose(out[i], fourier_filter(x[i : i + 1], 1, s)[0], atol=1e-6)
    with pytest.raises(ValueError, match="broadcast"):
        fourier_filter(x, 1, torch.tensor([0.1, 0.2]))


def test_autograd_matches_fft_gradient() -> None:
    x = torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fourier_filter(t, 1, 0.3), (x,))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scale": float("nan")}, ValueError, "scale must be a finite number >= 0"),
        ({"scale": float("inf")}, ValueError, "scale must be a finite number >= 0"),
        ({"scale": -0.5}, ValueError, "scale must be a finite number >= 0"),
        ({"scale": True}, TypeError, "scale must be a real number"),
        ({"threshold": 0}, ValueError, "threshold must be an int >= 1"),
        ({"threshold": 1.5}, TypeError, "threshold must be an int >= 1"),
        ({"method": "dct"}, ValueError, "method must be one of"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"threshold": 1, "scale": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        fourier_filter(torch.randn(1, 1, 4, 4), **args)


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="floating point"):
        fourier_filter(torch.ones(1, 1, 4, 4, dtype=torch.int64), 1, 0.5)
    with pytest.raises(ValueError, match="at least 2 dims"):
        fourier_filter(torch.ones(4), 1, 0.5)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fourier_filter([[1.0]], 1, 0.5)


TOL_OUT = {torch.float32: 2e-6, torch.bfloat16: 1.6e-2, torch.float64: 1e-14}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_out_writes_into_a_channel_slice_and_matches(dtype) -> None:
    """The hook writes the filtered skip straight into its slice of the joined tensor (one allocation per join)."""
    x = torch.randn(2, 10, 12, 9).to(dtype)
    joined = torch.zeros(2, 12, 12, 9, dtype=dtype)
    for scale in (0.2, torch.tensor([0.3, 0.9]).view(-1, 1)):
        result = fourier_filter(x[:, 4:], 1, scale, out=joined[:, 6:])
        assert result.data_ptr() == joined[:, 6:].data_ptr()
        expected = fourier_filter(x[:, 4:], 1, scale)  # the same sums, batched differently: within rounding
        torch.testing.assert_close(joined[:, 6:], expected, atol=TOL_OUT[dtype], rtol=0)
        assert torch.equal(joined[:, :6], torch.zeros(2, 6, 12, 9, dtype=dtype))
    with pytest.raises(ValueError, match="out must match x's shape, dtype and device"):
        fourier_filter(x, 1, 0.2, out=torch.empty(2, 10, 12, 8, dtype=dtype))


def test_out_may_be_x_itself() -> None:
    x = torch.randn(2, 6, 12, 9)
    expected = fourier_filter(x, 1, 0.3)
    result = fourier_filter(x, 1, 0.3, out=x)
    assert result is x
    torch.testing.assert_close(x, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["maps", "channels_last"])
def test_pieces_bound_the_temporaries_and_match_the_reference(monkeypatch, dtype, layout) -> None:
    """Channels go in pieces: besides the output, no op makes a tensor larger than one float32 piece, even in half
    precision (which accumulates in float32), and pieces of uneven size and per-sample scales land where they belong;
    in both layouts a U-Net's features come in (contiguous maps, or channels-last), and the result keeps the layout."""
    from freeu import fourier

    piece = 2 * 3 * 12 * 9  # three channels of a batch of two
    monkeypatch.setattr(fourier, "_PIECE_ELEMENTS_CPU", piece)
    full = (torch.randn(2, 17, 12, 9) * 3 + 1).to(dtype).contiguous(memory_format=layout)
    skip = full[:, 7:]  # ten channels: pieces of 3, 3, 3 and 1
    joined = torch.zeros(2, 15, 12, 9, dtype=dtype).contiguous(memory_format=layout)
    assert fourier_filter(full, 1, 0.5).is_contiguous(memory_format=layout)
    largest = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for r in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(r, torch.Tensor) and r.untyped_storage().data_ptr() not in owned:
                    largest.append(r.untyped_storage().nbytes())  # a view counts as what it views
            return out

    acc = torch.float64 if dtype == torch.float64 else torch.float32
    basis = fourier._basis(12, 9, 1, skip.device, acc)  # cached, (modes, H W): it does not grow with B x C
    owned = {t.untyped_storage().data_ptr() for t in (full, joined, *basis)}
    for scale in (0.2, torch.tensor([0.3, 1.4]).view(2, 1)):
        largest.clear()
        with Sizes():
            result = fourier_filter(skip, 1, scale, out=joined[:, 5:])
        assert result.data_ptr() == joined[:, 5:].data_ptr()
        assert max(largest) <= piece * 4, max(largest)
        for i in range(2):
            s = scale if isinstance(scale, float) else scale[i].item()
            exact = reference(skip[i], 1, s)
            ulp = torch.finfo(dtype).eps * exact.abs().clamp_min(torch.finfo(dtype).tiny)
            bound = ulp + 8 * torch.finfo(acc).eps * skip.double().abs().max()
            assert ((joined[i, 5:].double() - exact).abs() <= bound).all()
        assert torch.equal(joined[:, :5], torch.zeros(2, 5, 12, 9, dtype=dtype))
    # without out, and for inputs of other ranks (a video's frames, one map): the same numbers
    full = full.contiguous()
    for x in (skip, full.view(2, 17, 1, 12, 9)[:, :, 0].contiguous(), full.reshape(34, 12, 9), full[0, 0]):
        exact = reference(x, 1, 0.2)
        err = (fourier_filter(x, 1, 0.2).double() - exact).abs()
        assert (err <= torch.finfo(dtype).eps * exact.abs() + 8 * torch.finfo(acc).eps * x.double().abs().max()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_square_over_the_whole_spectrum_scales_the_map(dtype) -> None:
    """A 2 x 2 map at t = 1 (the deepest joins at small latents) has every bin in the square: the filter is x * s,
    computed as one product rounded once; a 3 x 3 map at t = 1 is not covered and is not merely scaled."""
    gen = torch.Generator().manual_seed(4)
    for size, threshold in [((2, 2), 1), ((1, 1), 1), ((1, 2), 1), ((2, 1), 1), ((3, 3), 2), ((4, 4), 2)]:
        x = (torch.randn(2, 5, *size, generator=gen) * 3).to(dtype)
        out = fourier_filter(x, threshold, 0.3)
        assert torch.equal(out, (x.float() * 0.3).to(dtype)), (size, threshold)
        exact = fourier_filter(x.double(), threshold, 0.3, method="fft")  # the literal slice wraps for (3, 3), 2
        assert (out.double() - exact).abs().max().item() <= torch.finfo(dtype).eps * exact.abs().max().item()
        joined = torch.zeros(2, 7, *size, dtype=dtype)
        fourier_filter(x, threshold, 0.3, out=joined[:, 2:])
        assert torch.equal(joined[:, 2:], out)
    x = torch.randn(2, 5, 3, 3, generator=gen)
    assert not torch.allclose(fourier_filter(x, 1, 0.3), x * 0.3, atol=1e-3)


@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf")])
def test_a_tensor_scale_with_nan_negative_or_infinite_values_is_refused(bad) -> None:
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="scale must hold finite numbers >= 0"):
        fourier_filter(x, 1, torch.tensor([0.2, bad]).view(2, 1))


# ---- a rectangle, a cutoff as a fraction of the map, a gain for the high frequencies ------------------------------


def reference_general(x: torch.Tensor, rows: int, cols: int, low: float, high: float) -> torch.Tensor:
    """The reference above with a rectangle and a second gain: float64 FFT, mask ``high`` everywhere and ``low`` on
    ``[H//2 - rows, H//2 + rows) x [W//2 - cols, W//2 + cols)`` (clipped to the spectrum), ifft, real part."""
    x = x.double()
    height, width = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    mask = torch.full((height, width), float(high), dtype=torch.float64)
    crow, ccol = height // 2, width // 2
    mask[max(crow - rows, 0) : crow + rows, max(ccol - cols, 0) : ccol + cols] = low
    return torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real


def sd_webui_freeu_cutoff(height: int, width: int, cutoff: float) -> tuple[int, int]:
    """sd-webui-freeu's skip_cutoff, transcribed: ``crow, ccol = H // 2, W // 2``;
    ``tr = max(1, floor(crow * cutoff))``, ``tc = max(1, floor(ccol * cutoff))``."""
    crow, ccol = height // 2, width // 2
    return max(1, math.floor(crow * cutoff)), max(1, math.floor(ccol * cutoff))


@pytest.mark.parametrize("size", [(8, 8), (13, 64), (33, 17), (64, 64), (96, 80), (9, 11)], ids=str)
@pytest.mark.parametrize("high", [1.0, 0.0, 0.7, 1.3])
@pytest.mark.parametrize("rows, cols", [(1, 1), (1, 3), (3, 2), (4, 4)])
def test_a_rectangle_and_a_high_gain_match_the_fft_reference(size, high, rows, cols) -> None:
    assert rows <= size[0] // 2 and cols <= size[1] // 2  # where the literal slice is a centred rectangle
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, *size, generator=gen) * 3 + 1
    for low in (0.0, 0.2, 1.6):
        expected = reference_general(x, rows, cols, low, high)
        for method in ("projection", "fft", "auto"):
            out = fourier_filter(x, (rows, cols), low, high=high, method=method)
            err = (out.double() - expected).abs().max().item()
            assert err < 2e-5, (method, low, err)


def test_a_high_gain_with_per_sample_scales_in_every_layout_and_half_precision() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 6, 24, 20, generator=gen) * 2
    scale = torch.tensor([0.3, 1.4]).view(2, 1)
    for dtype, tolerance in ((torch.float32, 2e-5), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)):
        for layout in (torch.contiguous_format, torch.channels_last):
            source = x.to(dtype).contiguous(memory_format=layout)
            out = fourier_filter(source, (2, 3), scale, high=0.8)
            assert out.dtype == dtype and out.is_contiguous(memory_format=layout)
            for i, low in enumerate((0.3, 1.4)):
                expected = reference_general(source[i].double(), 2, 3, low, 0.8)
                assert (out[i].double() - expected).abs().max().item() < tolerance * 8, (dtype, layout)


@pytest.mark.parametrize("cutoff", [0.0, 0.1, 0.25, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("size", [(64, 64), (32, 48), (13, 9), (8, 8), (1, 5)], ids=str)
def test_a_cutoff_fraction_is_sd_webui_freeus_rectangle(cutoff, size) -> None:
    from freeu.fourier import cutoff_threshold

    rows, cols = cutoff_threshold(*size, cutoff)
    assert (rows, cols) == sd_webui_freeu_cutoff(*size, cutoff)
    x = torch.randn(1, 2, *size, generator=torch.Generator().manual_seed(9))
    if rows <= max(size[0] // 2, 1) and cols <= max(size[1] // 2, 1) and min(size) > 1:
        expected = reference_general(x, rows, cols, 0.4, 1.2)
        assert (fourier_filter(x, (rows, cols), 0.4, high=1.2).double() - expected).abs().max().item() < 2e-5


def test_the_defaults_are_bit_identical_and_the_new_controls_are_validated() -> None:
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(10))
    plain = fourier_filter(x, 1, 0.3)
    assert torch.equal(fourier_filter(x, (1, 1), 0.3, high=1.0), plain)
    assert fourier_filter(x, (2, 3), 1.0, high=1.0) is x  # identity: both gains 1
    assert not torch.equal(fourier_filter(x, 1, 1.0, high=0.5), x)  # one gain 1 is not the identity
    for bad, error in (((1, 0), ValueError), ((1, 2, 3), TypeError), ((1.0, 2), TypeError), (0, ValueError)):
        with pytest.raises(error, match="threshold must be an int >= 1 or a pair"):
            fourier_filter(x, bad, 0.3)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="high must be a finite number >= 0"):
            fourier_filter(x, 1, 0.3, high=bad)
    from freeu.fourier import cutoff_threshold

    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match=r"cutoff must be a number in \[0, 1\]"):
            cutoff_threshold(16, 16, bad)


def test_auto_falls_back_to_the_projection_where_the_fft_fails(monkeypatch) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    expected = reference_general(x, 6, 6, 0.3, 1.2)  # a square beyond 64 modes: auto would take the FFT

    def broken(*args, **kwargs):
        raise RuntimeError("this device has no FFT")

    monkeypatch.setattr(torch.fft, "fft2", broken)
    out = fourier_filter(x, 6, 0.3, high=1.2)
    assert (out.double() - expected).abs().max().item() < 2e-5
    with pytest.raises(RuntimeError, match="no FFT"):  # asked for by name, the FFT's error is the caller's
        fourier_filter(x, 6, 0.3, method="fft")


def test_a_high_gain_per_sample_equals_each_samples_own_filter() -> None:
    x = torch.randn(2, 4, 20, 24, generator=torch.Generator().manual_seed(12))
    scale, high = torch.tensor([0.3, 1.4]).view(2, 1), torch.tensor([0.8, 1.2]).view(2, 1)
    for dtype, tolerance in ((torch.float32, 2e-5), (torch.bfloat16, 1e-1)):
        out = fourier_filter(x.to(dtype), (2, 3), scale, high=high)
        assert out.dtype == dtype
        for i, (low, gain) in enumerate(((0.3, 0.8), (1.4, 1.2))):
            expected = reference_general(x[i].to(dtype).double(), 2, 3, low, gain)
            assert (out[i].double() - expected).abs().max().item() < tolerance, (dtype, i)
    with pytest.raises(ValueError, match="a high tensor must broadcast to the input's leading dims"):
        fourier_filter(x, 1, 0.3, high=torch.ones(3))
    with pytest.raises(ValueError, match="high must hold finite numbers >= 0"):
        fourier_filter(x, 1, 0.3, high=torch.tensor([-1.0, 1.0]).view(2, 1))
