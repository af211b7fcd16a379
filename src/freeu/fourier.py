"""FreeU's skip filter: scale the lowest Fourier frequencies of a feature map, exactly, without an FFT.

Every reference implementation (the authors' code, diffusers, ComfyUI, sd-webui-freeu, Forge) computes
``fftshift(fft2(x))``, multiplies it by a mask that is ``scale`` on the half-open square
``[H//2 - t, H//2 + t) x [W//2 - t, W//2 + t)`` and 1 elsewhere, and keeps the real part of the inverse FFT.

Only ``(2t)^2`` frequency bins change, so that result equals ``x + (scale - 1) * P x``, where ``P x`` is the real
part of the sum of the changed bins' Fourier components. ``P`` has a rank of at most ``2 (2t)^2`` (7 for ``t = 1``
and ``H, W >= 3``), so it is applied here as a projection onto a few real cosine and sine modes: two skinny matrix
products in float32 (float64 for float64 input), no complex dtype and no ``torch.fft``. That works in every float
dtype, on every device that has a matrix product, and costs little more than a copy.

Two extensions keep that form. A rectangle ``[H//2 - th, H//2 + th) x [W//2 - tw, W//2 + tw)`` (``threshold`` as a
pair ``(th, tw)``; sd-webui-freeu's cutoff, a fraction of each half-size, gives one, see :func:`cutoff_threshold`)
changes other bins, projected the same way. A gain ``high`` on every bin outside the square makes the mask ``high``
outside and ``scale`` inside, so the result is ``high * x + (scale - high) * P x``: still one projection.

Square and spectrum: bins of the square that fall outside the spectrum (``t > H//2``) are dropped, so a large ``t``
covers the whole spectrum. The reference code slices with ``H//2 - t`` directly, which for ``t > H//2`` wraps around
as a negative Python index and selects other rows (sometimes none); for every ``t <= H//2``, and for ``t = 1`` at
every size, the two agree.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch

__all__ = ["cutoff_threshold", "fourier_filter", "filtered_frequencies", "low_band"]

FilterMethod = Literal["auto", "projection", "fft"]
_METHODS = ("auto", "projection", "fft")
# Above this many real modes the dense projection costs more than an FFT; "auto" switches over.
_MAX_PROJECTION_MODES = 64


def _axis_frequencies(n: int, threshold: int) -> range:
    """Signed frequencies on one axis that the mask covers: shifted indices ``[n//2 - t, n//2 + t)`` in ``[0, n)``."""
    return range(max(-threshold, -(n // 2)), min(threshold, n - n // 2))


def _pair(threshold: int | tuple[int, int]) -> tuple[int, int]:
    return (threshold, threshold) if isinstance(threshold, int) else (threshold[0], threshold[1])


def filtered_frequencies(height: int, width: int, threshold: int | tuple[int, int] = 1) -> list[tuple[int, int]]:
    """The (row, column) frequencies, in ``[-n//2, n - n//2)``, that the mask scales for an ``height x width`` map;
    ``threshold`` is one half-width or ``(rows, columns)``."""
    rows, cols = _pair(threshold)
    return [(k, m) for k in _axis_frequencies(height, rows) for m in _axis_frequencies(width, cols)]


def cutoff_threshold(height: int, width: int, cutoff: float) -> tuple[int, int]:
    """The ``(rows, columns)`` half-widths of a cutoff given as a fraction of the map (sd-webui-freeu's
    ``skip_cutoff``): ``max(1, floor(n // 2 * cutoff))`` on each axis, so 0 is the published ``threshold = 1`` and 1
    reaches the edges of the spectrum."""
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 <= cutoff <= 1:
        raise ValueError(f"cutoff must be a number in [0, 1] (a fraction of the map), got {cutoff!r}")
    return max(1, math.floor(height // 2 * cutoff)), max(1, math.floor(width // 2 * cutoff))


def _symmetric_bins(height: int, width: int, threshold: tuple[int, int]) -> list[tuple[int, int]]:
    """The bins ``(k mod H, m mod W)`` with ``|k| <= rows`` and ``|m| <= cols``, each once: a square that holds every
    bin's mirror."""
    rows, cols = threshold
    ks = sorted({k % height for k in range(-min(rows, height), min(rows, height) + 1)})
    ms = sorted({m % width for m in range(-min(cols, width), min(cols, width) + 1)})
    return [(k, m) for k in ks for m in ms]


@functools.lru_cache(maxsize=128)
def _mode_basis(
    height: int, width: int, threshold: tuple[int, int], device: torch.device, dtype: torch.dtype,
    symmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Real modes spanning the masked bins: ``(project, reconstruct)``, each ``(modes, height * width)``.

    ``x_flat @ project.T @ reconstruct`` equals ``Re(ifft2(ifftshift(indicator * fftshift(fft2(x)))))`` for real ``x``.
    A bin ``(k, m)`` contributes ``(x . c) c + (x . s) s`` over ``H W``, with ``c, s`` the cosine and sine of
    ``2 pi (k n / H + m w / W)``; a bin and its mirror ``(-k, -m)`` contribute the same, so they share one pair of modes
    with double weight, and a self-mirrored bin (DC, Nyquist) has no sine part. ``symmetric``: the bins of
    :func:`_symmetric_bins` instead of the reference's half-open square (:func:`low_band`).
    """
    weights: dict[tuple[int, int], int] = {}
    bins = _symmetric_bins(height, width, threshold) if symmetric else filtered_frequencies(height, width, threshold)
    for k, m in bins:
        key = (k % height, m % width)
        mirror = ((-k) % height, (-m) % width)
        canonical = min(key, mirror)
        weights[canonical] = weights.get(canonical, 0) + 1

    rows = torch.arange(height, dtype=torch.int64)
    cols = torch.arange(width, dtype=torch.int64)
    modes: list[torch.Tensor] = []
    scales: list[float] = []
    for (k, m), weight in sorted(weights.items()):
        # Reduce the phase modulo one period in integers before going to floats, so large sizes stay accurate.
        phase = ((k * rows) % height).double()[:, None] / height + ((m * cols) % width).double()[None, :] / width
        angle = (2.0 * math.pi) * phase.flatten()
        modes.append(torch.cos(angle))
        scales.append(weight / (height * width))
        self_mirrored = (2 * k) % height == 0 and (2 * m) % width == 0
        if not self_mirrored:
            modes.append(torch.sin(angle))
            scales.append(weight / (height * width))
    project = torch.stack(modes)
    reconstruct = project * torch.tensor(scales, dtype=torch.float64)[:, None]
    return project.to(device=device, dtype=dtype), reconstruct.to(device=device, dtype=dtype)


def _symbolic(height: int, width: int) -> bool:
    """Whether a map's sizes are symbolic (torch.export or torch.compile with dynamic shapes)."""
    return isinstance(height, torch.SymInt) or isinstance(width, torch.SymInt)


def _size_free_modes(threshold: tuple[int, int], symmetric: bool) -> list[tuple[int, int, int, bool]]:
    """The real modes of a square on maps larger than twice its half-widths on each axis, where they do not depend
    on the size: ``(k, m, weight, has_sine)`` per pair of mirrored signed frequencies (the bins ``-t .. t - 1``, or
    ``-t .. t`` when ``symmetric``; a pair's weight is how many of its two bins the square holds)."""
    rows, cols = threshold
    top = 1 if symmetric else 0
    bins = {(k, m) for k in range(-rows, rows + top) for m in range(-cols, cols + top)}
    modes = []
    for k, m in sorted(bins):
        mirror = (-k, -m)
        if mirror in bins and mirror < (k, m):
            continue  # counted with its mirror
        own = mirror == (k, m)
        modes.append((k, m, 1 if own else 1 + (mirror in bins), not own))
    return modes


def _symbolic_basis(
    height: int, width: int, threshold: tuple[int, int], device: torch.device, dtype: torch.dtype, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_mode_basis` for symbolic sizes (an exported graph whose maps vary in size): the same modes, built with
    tensor operations from the sizes, for maps larger than twice the half-widths (checked, so that an exporter records
    it as a constraint; the bins then do not depend on the size)."""
    rows, cols = threshold
    torch._check(height > 2 * rows)
    torch._check(width > 2 * cols)
    r = torch.arange(height, device=device, dtype=torch.int64)
    c = torch.arange(width, device=device, dtype=torch.int64)
    modes, scales = [], []
    for k, m, weight, has_sine in _size_free_modes(threshold, symmetric):
        # |k r / H| < t: no reduction modulo a period needed (an exporter has no remainder by a symbolic size)
        phase = (k * r).double()[:, None] / height + (m * c).double()[None, :] / width
        angle = (2.0 * math.pi) * phase.flatten()
        modes.append(torch.cos(angle))
        scales.append(float(weight))
        if has_sine:
            modes.append(torch.sin(angle))
            scales.append(float(weight))
    project = torch.stack(modes)
    reconstruct = project * (torch.tensor(scales, dtype=torch.float64, device=device)[:, None] / (height * width))
    return project.to(dtype), reconstruct.to(dtype)


def _basis(
    height: int, width: int, threshold: int | tuple[int, int], device: torch.device, dtype: torch.dtype,
    symmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The cached basis in eager mode; under torch.compile the builder is traced (shapes only: it constant-folds),
    and for symbolic sizes built from them in the graph."""
    threshold = _pair(threshold)  # one cache entry for t and (t, t)
    if _symbolic(height, width):
        return _symbolic_basis(height, width, threshold, device, dtype, symmetric)
    if torch.compiler.is_compiling():
        return _mode_basis.__wrapped__(height, width, threshold, device, dtype, symmetric)
    return _mode_basis(height, width, threshold, device, dtype, symmetric)


def low_band(x: torch.Tensor, threshold: int | tuple[int, int] = 1) -> torch.Tensor:
    """The low-frequency part of each ``H x W`` map of ``x`` (``(..., H, W)``): the frequencies ``(k, m)`` with
    ``|k| <= rows`` and ``|m| <= cols`` (``threshold``, one half-width or ``(rows, cols)``; 1 is the 3 x 3 lowest),
    in ``x``'s dtype (accumulated in float32, float64 for float64). The square holds every frequency's mirror, so
    this is a real orthogonal projection: ``low_band(x)`` and ``x - low_band(x)`` are orthogonal and add up to ``x``
    (FreeU's own square, ``-t .. t - 1``, is not symmetric: see the module docstring). No FFT: the same real modes as
    the filter, so it runs in any dtype on any device. Guidance per frequency band (:mod:`freeu.apps.guidance`)
    splits with it."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"low_band: x must be a floating point tensor (..., H, W), got {type(x).__name__} "
                         f"{tuple(getattr(x, 'shape', ()))}")  # fmt: skip
    rows, cols = _check_threshold(threshold)
    height, width = x.shape[-2:]
    if x.numel() == 0:
        return x.clone()
    acc = _accumulation_dtype(x.dtype)
    project, reconstruct = _basis(height, width, (rows, cols), x.device, acc, symmetric=True)
    flat = x.reshape(-1, height * width).to(acc)
    return ((flat @ project.T) @ reconstruct).view(x.shape).to(x.dtype)


@functools.lru_cache(maxsize=256)
def _num_modes(height: int, width: int, threshold: tuple[int, int]) -> int:
    """How many real modes the projection uses (7 for ``threshold = 1`` and ``H, W >= 3``)."""
    weights = {}
    for k, m in filtered_frequencies(height, width, threshold):
        key, mirror = (k % height, m % width), ((-k) % height, (-m) % width)
        weights[min(key, mirror)] = (2 * k) % height == 0 and (2 * m) % width == 0
    return sum(1 if self_mirrored else 2 for self_mirrored in weights.values())


def _check_scale(scale: float | torch.Tensor, name: str = "scale") -> None:
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point():
            raise TypeError(f"fourier_filter: {name} tensor must be floating point, got dtype {scale.dtype}")
        # values are read where that costs nothing (a CPU tensor outside torch.compile); reading an accelerator's
        # tensor would stall it, and the hooks pass factors FreeUConfig has already checked
        readable = scale.device.type == "cpu" and not torch.compiler.is_compiling()
        if readable and (not bool(torch.isfinite(scale).all()) or bool((scale < 0).any())):
            raise ValueError(f"fourier_filter: {name} must hold finite numbers >= 0, got a tensor with NaN, "
                             "infinite or negative values")  # fmt: skip
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"fourier_filter: {name} must be a real number or a tensor, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"fourier_filter: {name} must be a finite number >= 0, got {scale!r}")


def _check_threshold(threshold: int | tuple[int, int]) -> tuple[int, int]:
    """``(rows, columns)`` of a valid threshold: an int >= 1 or a pair of them."""
    parts = threshold if isinstance(threshold, tuple) and len(threshold) == 2 else (threshold,)
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int):
            raise TypeError(f"fourier_filter: threshold must be an int >= 1 or a pair of them, got {threshold!r}")
        if part < 1:
            raise ValueError(f"fourier_filter: threshold must be an int >= 1 or a pair of them, got {threshold!r}")
    return _pair(threshold)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_row_scale(
    scale: float | torch.Tensor, lead: torch.Size, dtype: torch.dtype, high: float = 1.0
) -> float | torch.Tensor:
    """``scale - high`` as a python float, or as a ``(rows, 1)`` tensor for a tensor scale broadcast over ``lead``."""
    if not isinstance(scale, torch.Tensor):
        return float(scale) - high
    try:
        expanded = torch.broadcast_to(scale.to(dtype), lead)
    except RuntimeError as error:
        raise ValueError(
            f"fourier_filter: a scale tensor must broadcast to the input's leading dims {tuple(lead)}, "
            f"got shape {tuple(scale.shape)}"
        ) from error
    return expanded.reshape(-1, 1) - high


def _lead_view(name: str, value: torch.Tensor, lead: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A tensor of values broadcast over the input's leading dims ``lead``, as ``(*lead, 1, 1)`` in ``dtype``."""
    try:
        return torch.broadcast_to(value.to(dtype), lead)[..., None, None]
    except RuntimeError as error:
        raise ValueError(
            f"fourier_filter: a {name} tensor must broadcast to the input's leading dims {tuple(lead)}, "
            f"got shape {tuple(value.shape)}"
        ) from error


def _rows_view(t: torch.Tensor) -> torch.Tensor | None:
    """``(B, C, H * W)`` view of ``t`` whose maps are each contiguous (a channel slice's are), or ``None``."""
    if t.dim() == 4 and t.stride(-1) == 1 and t.stride(-2) == t.shape[-1]:
        return t.flatten(2)
    if t.is_contiguous():
        return t.reshape(1, -1, t.shape[-2] * t.shape[-1])
    return None


def _channels_last_view(t: torch.Tensor) -> torch.Tensor | None:
    """``(B, H * W, C)`` view of a 4-D ``t`` in channels-last layout (a channel slice of one too), or ``None``."""
    if t.dim() == 4 and t.stride(1) == 1 and t.stride(2) == t.shape[3] * t.stride(3):
        return t.permute(0, 2, 3, 1).flatten(1, 2)
    return None


# Elements per piece of the written path: on a CPU a piece stays in cache between the two passes over it (4 MiB of
# float32); elsewhere pieces only bound the float32 temporaries of a half-precision input (16 MiB).
_PIECE_ELEMENTS_CPU = 1 << 20
_PIECE_ELEMENTS = 1 << 22


def channels_per_piece(batch: int, size: int, device: torch.device) -> int:
    """How many channels of ``batch`` maps of ``size`` elements go in one piece (at least one)."""
    budget = _PIECE_ELEMENTS_CPU if device.type == "cpu" else _PIECE_ELEMENTS
    return max(1, budget // (batch * size))


def _filter_projection_into(
    x: torch.Tensor, threshold: tuple[int, int], scale: float | torch.Tensor, out: torch.Tensor | None, high: float
) -> torch.Tensor | None:
    """The projection written straight into ``out`` (a new tensor in ``x``'s layout if ``None``), ``None`` where the
    layouts do not allow it.

    ``x`` and ``out`` both have contiguous maps (``(B, C, H * W)`` rows) or are both channels-last (``(B, H * W, C)``
    rows, as a U-Net moved to ``torch.channels_last`` makes them). Channels go in pieces of a bounded size: per piece,
    one read of ``x`` for the coefficients and one pass that reads ``x`` and writes ``out``. Nothing scales with the
    input but ``out``: a half-precision piece is upcast to float32 on its own, a strided ``x`` is never copied, and on
    a CPU the piece is still in cache for its second pass.
    """
    x3 = _rows_view(x)
    last = x3 is None
    if last:
        x3 = _channels_last_view(x)
        if x3 is None:
            return None
    if out is None:
        out = torch.empty_like(x)  # x's layout: contiguous maps or channels-last
    out3 = _channels_last_view(out) if last else _rows_view(out)
    if out3 is None:
        return None
    height, width = x.shape[-2:]
    acc = _accumulation_dtype(x.dtype)
    project, reconstruct = _basis(height, width, threshold, x.device, acc)
    gain = _per_row_scale(scale, x.shape[:-2], acc, high)
    beta = {} if high == 1 else {"beta": high}  # high * x + (scale - high) * P x
    batch, size, channels = x3.shape[0], height * width, x3.shape[2 if last else 1]
    if isinstance(gain, torch.Tensor):
        gain = gain.view(batch, 1, channels) if last else gain.view(batch, channels, 1)
    # pieces keep a CPU's second pass in cache and bound half precision's float32 temporaries; a float32 input on a
    # GPU has neither need, and goes whole
    whole = x.dtype == acc and x.device.type != "cpu"
    step = max(1, channels) if whole else channels_per_piece(batch, size, x.device)
    basis = (reconstruct.T if last else reconstruct).expand(batch, -1, -1)
    for first in range(0, channels, step):
        piece = (
            (slice(None), slice(None), slice(first, first + step))
            if last
            else (slice(None), slice(first, first + step))
        )
        source = x3[piece]
        if source.dtype != acc:
            source = source.to(acc)  # half precision accumulates in float32, one piece at a time
        # coefficients: (B, piece, modes) from maps in rows, (B, modes, piece) from channels-last rows
        coefficients = torch.matmul(project, source) if last else torch.matmul(source, project.T)
        alpha = gain if isinstance(gain, float) else 1.0  # a number scales inside the product, one op fewer
        if not isinstance(gain, float):
            coefficients = coefficients * gain[piece]
        pair = (basis, coefficients) if last else (coefficients, basis)
        if x.dtype == acc:
            torch.baddbmm(source, *pair, alpha=alpha, out=out3[piece], **beta)
        else:  # the float32 piece is ours: the sum goes into it, then rounds once into out
            out3[piece].copy_(torch.baddbmm(source, *pair, alpha=alpha, out=source, **beta))
    return out


def traced(*values: object) -> bool:
    """Whether autograd (for one of the tensors among ``values``) or torch.compile follows this call: then the work
    is done in plain whole-tensor ops, which both can follow, rather than written in pieces."""
    if torch.compiler.is_compiling():
        return True
    grads = any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)
    return grads and torch.is_grad_enabled()


def _filter_projection(
    x: torch.Tensor, threshold: tuple[int, int], scale: float | torch.Tensor, high: float
) -> torch.Tensor:
    height, width = x.shape[-2:]
    acc = _accumulation_dtype(x.dtype)
    project, reconstruct = _basis(height, width, threshold, x.device, acc)
    flat = x.reshape(-1, height * width)
    if flat.dtype != acc:
        flat = flat.to(acc)
    coefficients = flat @ project.T
    coefficients = coefficients * _per_row_scale(scale, x.shape[:-2], acc, high)
    out = torch.addmm(flat, coefficients, reconstruct, **({} if high == 1 else {"beta": high}))
    return out.view(x.shape).to(x.dtype)


def _filter_fft(x: torch.Tensor, threshold: tuple[int, int], scale: float | torch.Tensor, high: float) -> torch.Tensor:
    height, width = x.shape[-2:]
    acc = _accumulation_dtype(x.dtype)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.to(acc)), dim=(-2, -1))
    inside = torch.zeros(height, width, dtype=acc, device=x.device)
    rows, cols = threshold
    r0, r1 = max(height // 2 - rows, 0), min(height // 2 + rows, height)
    c0, c1 = max(width // 2 - cols, 0), min(width // 2 + cols, width)
    inside[r0:r1, c0:c1] = 1.0
    gain = _per_row_scale(scale, x.shape[:-2], acc, high)
    if isinstance(gain, torch.Tensor):
        gain = gain.view(*x.shape[:-2], 1, 1)
    mask = high + gain * inside
    filtered = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))).real
    return filtered.to(x.dtype)


def fourier_filter(
    x: torch.Tensor,
    threshold: int | tuple[int, int] = 1,
    scale: float | torch.Tensor = 1.0,
    *,
    high: float | torch.Tensor = 1.0,
    method: FilterMethod = "auto",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """FreeU's skip filter: scale the lowest frequencies of each ``H x W`` map of ``x`` by ``scale``.

    Same numbers as the reference ``Fourier_filter`` (see the module docstring), for any ``H x W``, float16,
    bfloat16, float32 or float64, on any device; the result has ``x``'s dtype and shape. ``x`` has shape
    ``(..., H, W)`` and is never modified. ``scale`` is a number ``>= 0`` or a tensor that broadcasts to
    ``x.shape[:-2]`` (e.g. shape ``(B, 1)`` for one value per sample). ``scale == 1`` returns ``x`` itself.

    ``threshold``: the half-width of the square of scaled frequencies (1 in every published setting), or
    ``(rows, columns)`` for a rectangle (:func:`cutoff_threshold` turns a fraction of the map into one).
    ``high``: the gain of every frequency outside the square (sd-webui-freeu's ``skip_high_end_factor``), a number
    ``>= 0`` or, like ``scale``, a tensor that broadcasts to ``x.shape[:-2]``; the default 1 leaves them alone, and
    ``scale == high == 1`` returns ``x`` itself.

    ``method``: ``"projection"`` (real arithmetic, no FFT), ``"fft"`` (the reference algorithm, in float32/64), or
    ``"auto"``: projection unless the square is so large (more than 64 real modes: beyond ``threshold = 4``) that an
    FFT is cheaper, and the projection after all where that FFT fails (a device or dtype without it). Where the square
    holds every bin (a ``2 x 2`` map at ``threshold = 1``) the filter is the product ``x * scale`` for a number
    ``scale``, whatever the method but ``"fft"``.

    Memory: outside autograd and torch.compile the result is written a piece of channels at a time in ``x``'s layout
    (contiguous maps or channels-last); besides the result, the most it holds is one float32 piece (4 MiB on a CPU,
    16 MiB elsewhere), also for half precision, which accumulates in float32.

    ``out``: a tensor of ``x``'s shape and dtype (a channel slice of a larger tensor is fine) to write the result into
    instead of allocating one; it is returned. It may be ``x`` itself (filtering in place) but must not otherwise
    overlap ``x``. Not differentiable.
    """
    # size: about a third is the docstring; the rest checks the arguments once and picks the path (identity, empty,
    # a gain per map, a square that holds the whole map, FFT or projection) in one place, each path a few lines
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fourier_filter: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"fourier_filter: x must be a floating point tensor (float16/bfloat16/32/64), got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"fourier_filter: x must have at least 2 dims (..., H, W), got shape {tuple(x.shape)}")
    threshold = _check_threshold(threshold)
    _check_scale(scale)
    _check_scale(high, "high")
    if method not in _METHODS:
        raise ValueError(f"fourier_filter: method must be one of {_METHODS}, got {method!r}")
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device):
        raise ValueError(
            f"fourier_filter: out must match x's shape, dtype and device {tuple(x.shape)}, {x.dtype}, {x.device}; "
            f"got {tuple(out.shape)}, {out.dtype}, {out.device}"
        )
    if not isinstance(scale, torch.Tensor) and not isinstance(high, torch.Tensor) and scale == 1 and high == 1:
        return x if out is None else out.copy_(x)
    if x.numel() == 0:
        return x.clone() if out is None else out
    if isinstance(high, torch.Tensor):
        # a high gain per map (a step window's ramp weights it per sample): high x + (scale - high) P x, where
        # P x = x - (the filter at scale 0) is the part of x on the square's bins
        acc = _accumulation_dtype(x.dtype)
        outside = _lead_view("high", high, x.shape[:-2], acc)
        inside = _lead_view("scale", scale, x.shape[:-2], acc) if isinstance(scale, torch.Tensor) else float(scale)
        source = x.to(acc)
        square = source - fourier_filter(x, threshold, 0.0, method=method).to(acc)
        result = (source * outside + (inside - outside) * square).to(x.dtype)
        return result if out is None else out.copy_(result)
    height, width = x.shape[-2:]
    rows, cols = threshold
    symbolic = _symbolic(height, width)  # sizes an exported graph varies: maps larger than the square (checked)
    covered = not symbolic and (
        len(_axis_frequencies(height, rows)) == height and len(_axis_frequencies(width, cols)) == width
    )
    if covered and method != "fft" and not isinstance(scale, torch.Tensor):
        # the square holds every bin (a 2 x 2 map at t = 1, say): the filter scales the map, in one rounding
        return torch.mul(x, scale) if out is None else torch.mul(x, scale, out=out)
    chosen = method == "auto"
    if chosen:
        if symbolic:
            modes = sum(2 if sine else 1 for *_, sine in _size_free_modes(threshold, False))
        else:
            count = _num_modes.__wrapped__ if torch.compiler.is_compiling() else _num_modes  # dynamo skips caches
            modes = count(height, width, threshold)
        method = "projection" if modes <= _MAX_PROJECTION_MODES else "fft"
    if method == "fft" and chosen and not torch.compiler.is_compiling():
        try:
            result = _filter_fft(x, threshold, scale, high)
        except RuntimeError:  # a device or dtype without this FFT (MPS, DirectML, ...): the projection is exact too
            method = "projection"
        else:
            return result if out is None else out.copy_(result)
    if method == "projection" and (out is not None or not traced(x, scale)):
        written = _filter_projection_into(x, threshold, scale, out, high)
        if written is not None:
            return written
    filtered = _filter_fft if method == "fft" else _filter_projection
    result = filtered(x, threshold, scale, high)
    return result if out is None else out.copy_(result)
