"""Independent references for FreeU, written from docs/method.md (not from the library): the authors' filter and
backbone scaling, applied where the authors' code applies them, at the decoder's ``cat([backbone, skip], dim=1)``;
and a plain DDIM loop for the applications' sampler."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from freeu import FreeUConfig


def reference_fourier(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """fftshift(fftn) in float32, the half-open square around (H//2, W//2) set to ``scale``, ifft, real part."""
    dtype = x.dtype
    x = x.float()
    height, width = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    mask = torch.ones_like(spectrum.real)
    crow, ccol = height // 2, width // 2
    mask[..., crow - threshold : crow + threshold, ccol - threshold : ccol + threshold] = scale
    out = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(dtype)


def reference_backbone(x: torch.Tensor, b: float, version: int) -> torch.Tensor:
    """Version 1: first half of the channels times b. Version 2: times (b - 1) * min-max-normalised mean + 1."""
    x = x.clone()
    half = x.shape[1] // 2
    if version == 1:
        x[:, :half] = x[:, :half] * b
        return x
    mean = x.mean(1).unsqueeze(1)
    batch = mean.shape[0]
    high = mean.view(batch, -1).max(dim=-1, keepdim=True).values[..., None, None]
    low = mean.view(batch, -1).min(dim=-1, keepdim=True).values[..., None, None]
    mean = (mean - low) / (high - low)
    x[:, :half] = x[:, :half] * ((b - 1) * mean + 1)
    return x


def reference_stage(
    x: torch.Tensor, h: torch.Tensor, stage, version: int, threshold: int, structure: torch.Tensor | None = None
) -> tuple:
    """A :class:`freeu.Stage` from docs/method.md section 1, in float64: the backbone channels
    ``[floor(o C), floor((o + w) C))`` (continued from channel 0) times ``b`` (version 2: the map from the mean over
    all channels, of ``structure`` where given); the skip's FFT with mask ``high`` everywhere and ``s`` on the
    half-open rectangle around ``(H//2, W//2)`` of half-widths ``max(1, floor(n // 2 * cutoff))`` (or
    ``threshold``), ifft, real part."""
    import math

    dtype = x.dtype
    x64, h64 = x.double(), h.double()
    source = x64 if structure is None else structure.double()
    channels = x.shape[1]
    offset, width = stage.window
    begin, end = math.floor(offset * channels + 1e-9), math.floor((offset + width) * channels + 1e-9)
    inside = [begin <= i < end or begin <= i + channels < end for i in range(channels)]
    if version == 1:
        factor = torch.tensor(float(stage.b), dtype=torch.float64)
    else:
        mean = source.mean(1, keepdim=True)
        low = mean.flatten(1).min(1).values.view(-1, 1, 1, 1)
        high = mean.flatten(1).max(1).values.view(-1, 1, 1, 1)
        factor = (stage.b - 1) * (mean - low) / (high - low) + 1
    out = x64.clone()
    for i in range(channels):
        if inside[i]:
            out[:, i : i + 1] = x64[:, i : i + 1] * factor
    height, width_ = h.shape[-2:]
    crow, ccol = height // 2, width_ // 2
    if stage.cutoff is None:
        rows = cols = threshold
    else:
        rows, cols = max(1, math.floor(crow * stage.cutoff)), max(1, math.floor(ccol * stage.cutoff))
    spectrum = torch.fft.fftshift(torch.fft.fftn(h64, dim=(-2, -1)), dim=(-2, -1))
    mask = torch.full((height, width_), float(stage.high), dtype=torch.float64)
    mask[crow - rows : crow + rows, ccol - cols : ccol + cols] = float(stage.s)
    filtered = torch.fft.ifftn(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(dtype), filtered.to(dtype)


class TorchWithReferenceCat:
    """Stands in for the ``torch`` module inside a host's model code; only ``cat`` of a decoder skip pair differs.

    ``is_join(caller_self)`` says whether a 2-tensor ``cat(dim=1)`` made by that object is a skip join;
    ``stage_of(backbone, caller_self, index)`` gives its stage (1, 2 or None), ``index`` counting the joins of the
    current forward pass (reset by :meth:`reset`).
    """

    def __init__(
        self,
        torch_module,
        config: FreeUConfig,
        is_join: Callable[[object], bool],
        stage_of: Callable[[torch.Tensor, object, int], int | None],
    ):
        self._torch, self._config, self._is_join, self._stage_of = torch_module, config, is_join, stage_of
        self.index = 0

    def __getattr__(self, name: str):
        return getattr(self._torch, name)

    def reset(self) -> None:
        self.index = 0

    def cat(self, tensors, dim=0, **kwargs):
        caller = inspect.currentframe().f_back.f_locals.get("self")
        if dim == 1 and len(tensors) == 2 and self._is_join(caller):
            x, h = tensors
            stage = self._stage_of(x, caller, self.index)
            self.index += 1
            if stage is not None and self._config.stages:  # the controls beyond b and s, or a third stage
                x, h = reference_stage(x, h, self._config.stage(stage), self._config.version, self._config.threshold)
            elif stage is not None:
                b, s = self._config.stage_factors(stage)
                x = reference_backbone(x, b, self._config.version)
                h = reference_fourier(h, self._config.threshold, s)
            tensors = [x, h]
        return self._torch.cat(tensors, dim=dim, **kwargs)


def official_stage(base_channels: int) -> Callable[[torch.Tensor, object, int], int | None]:
    """The authors' rule: 1280 (4x the base width of 320) is stage 1, 640 (2x) is stage 2."""
    return lambda x, caller, index: {4 * base_channels: 1, 2 * base_channels: 2}.get(x.shape[1])


def reference_ddim(unet: torch.nn.Module, seeds, steps: int, scheduler_config: dict | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta 0) written out plainly as a user would: one noise draw per seed from its own CPU
    generator, then ``unet -> scheduler.step`` per timestep; images in ``[0, 1]``. An oracle for the runtime's
    sampler, independent of it (it shares only diffusers' scheduler)."""
    from diffusers import DDIMScheduler

    from freeu.apps.demo_model import SCHEDULER_CONFIG

    scheduler = DDIMScheduler(**(scheduler_config or SCHEDULER_CONFIG))
    scheduler.set_timesteps(steps)
    size = unet.config.sample_size
    weight = next(unet.parameters())
    x = torch.stack(
        [torch.randn(unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(s)) for s in seeds]
    ).to(weight)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()
