"""``freeu analyze``: the paper's Fourier analyses (FREEU.md section 4) on the demo model or any supported pipeline.

Three analyses, each a function that returns plain numbers (dicts of lists; images as tensors under ``"images"``),
kept apart from the figures that draw them:

- :func:`trajectory` (paper Fig. 3 and 4): at every sampling step, the relative log amplitude of the predicted clean
  sample ``x0`` (and of the noisy sample ``x_t`` on request), its split into low and high frequencies
  (:func:`freeu.analysis.frequency_split`), the high part's share of the energy, and how much each part moved since
  the previous step.
- :func:`b_sweep` (Fig. 6): the relative log amplitude of the final samples for several values of a backbone factor
  (``b1`` by default), every other factor 1.
- :func:`features` (Fig. 7): at every skip join, the relative log amplitude of the backbone and skip features going
  in, of what FreeU made of them, and of their concatenation as the decoder sees it, with FreeU off and on. Read
  through ``freeu.apply(..., observer=...)``, the same hooks that apply FreeU.

A :class:`Sampler` runs the model and reports every step; :class:`UNetSampler` drives an unconditional
``UNet2DModel`` with a diffusers scheduler (the bundled demo model), :class:`PipelineSampler` runs a text-to-image
diffusers pipeline and reads each step from its scheduler. :func:`plot_trajectory`, :func:`plot_b_sweep` and
:func:`plot_features` write the PNG figures (matplotlib, imported only there); :func:`add_parser` and :func:`run`
are the command line. The measurement itself is :func:`freeu.analysis.relative_log_amplitude`; ``docs/analyze.md``
states what it computes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import inspect
import json
import logging
import math
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from . import argtypes
from .analysis import frequency_split, relative_log_amplitude
from .config import FreeUConfig
from .hooks import JoinObservation, apply, plan

__all__ = [
    "DEMO_SETTING",
    "KINDS",
    "PipelineSampler",
    "Sampler",
    "StepRecord",
    "UNetSampler",
    "add_parser",
    "b_sweep",
    "demo_sampler",
    "features",
    "high_band",
    "load_sampler",
    "plot_b_sweep",
    "plot_features",
    "plot_trajectory",
    "predicted_x0",
    "run",
    "summary",
    "trajectory",
    "write_json",
]

logger = logging.getLogger(__name__)

Space = Literal["latent", "pixel"]
CurvePath = Literal["diagonal", "radial"]
SweptFactor = Literal["b1", "b2", "both"]
SPACES: tuple[str, ...] = ("latent", "pixel")
PATHS: tuple[str, ...] = ("diagonal", "radial")
PARTS: tuple[str, ...] = ("trajectory", "b", "features")
SWEPT: tuple[str, ...] = ("b1", "b2", "both")

#: The per-join features :func:`features` measures: what goes into the join, what FreeU made of it, and the
#: concatenation the decoder's next block receives (``cat([backbone_out, skip_out])``).
KINDS: tuple[str, ...] = ("backbone_in", "backbone_out", "skip_in", "skip_out", "fused")

#: The "with FreeU" setting on the demo model when no factor is given: the official README's SD 1.4 / SDXL values
#: (b1 1.3, b2 1.4, s1 0.9, s2 0.2), version 2, official convention (which gives the demo U-Net both stages).
DEMO_SETTING = FreeUConfig(1.3, 1.4, 0.9, 0.2)

Progress = Callable[[], None]


# -- sampling -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One sampling step, in the sampler's native space: the noisy input ``sample`` (x_t) and the predicted x0."""

    index: int
    timestep: int
    sample: torch.Tensor
    x0: torch.Tensor


OnStep = Callable[[StepRecord], None]


class Sampler:
    """Runs a model from per-seed noise and reports each step. Subclasses set the attributes and :meth:`sample`.

    ``target`` is what ``freeu.apply`` receives; ``native`` is the space sampling runs in; ``spaces`` lists the
    spaces its samples can be shown in (``pixel`` needs a VAE when ``native`` is ``latent``).
    """

    name: str = "model"
    target: object = None
    native: Space = "pixel"
    spaces: tuple[Space, ...] = ("pixel",)
    #: The "with FreeU" setting to use when none is given, and where it comes from (``None``: ask for the factors).
    default_setting: tuple[FreeUConfig, str] | None = None

    def sample(self, seeds: Sequence[int], steps: int, on_step: OnStep | None = None) -> torch.Tensor:
        """The final samples (native space), one per seed; ``on_step`` sees every step."""
        raise NotImplementedError

    def to_space(self, x: torch.Tensor, space: Space) -> torch.Tensor:
        """``x`` (native space) in ``space``, float32 on the CPU."""
        self.check_space(space)
        if space != self.native:
            raise ValueError(f"{self.name} cannot show {self.native} samples in {space} space")
        return x.detach().float().cpu()

    def check_space(self, space: str) -> None:
        if space not in self.spaces:
            raise ValueError(f"space must be one of {list(self.spaces)} for {self.name}, got {space!r}")


def predicted_x0(
    scheduler: Any, output: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor
) -> torch.Tensor:
    """The clean sample the model predicts at this step: the scheduler's own ``pred_original_sample`` when its step
    returns one (DDIM, DDPM, Euler, ...), otherwise computed from ``alphas_cumprod[t]`` and the prediction type (which
    assumes the variance-preserving sample space, as DPM-Solver's)."""
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is not None:
        return x0
    alphas = getattr(scheduler, "alphas_cumprod", None)
    logger.debug("%s.step gives no pred_original_sample: x0 from alphas_cumprod", type(scheduler).__name__)
    if alphas is None:
        raise ValueError(
            f"{type(scheduler).__name__}.step returns no pred_original_sample and the scheduler has no alphas_cumprod: "
            "the predicted clean sample is unknown; use a DDIM, DDPM or Euler scheduler"
        )
    a = alphas[int(timestep)].to(device=sample.device, dtype=torch.float32)
    kind = scheduler.config.prediction_type
    x, out = sample.float(), model_output.float()
    if kind == "epsilon":
        return (x - (1 - a).sqrt() * out) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out
    if kind == "sample":
        return out
    raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {kind!r}")


def _seed_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One noise tensor per seed, each from its own CPU generator (sample i depends only on seeds[i])."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


class UNetSampler(Sampler):
    """An unconditional ``UNet2DModel`` (pixel space) with a diffusers scheduler; DDIM runs with ``eta = 0``.

    The initial noise is drawn per seed like :func:`freeu.demo.train.sample_ddim`, so the final samples equal it.
    """

    def __init__(self, unet: torch.nn.Module, scheduler: Any, name: str) -> None:
        self.unet, self.scheduler, self.name, self.target = unet, scheduler, name, unet

    def sample(self, seeds: Sequence[int], steps: int, on_step: OnStep | None = None) -> torch.Tensor:
        scheduler = copy.deepcopy(self.scheduler)  # set_timesteps and step keep state: leave the caller's alone
        scheduler.set_timesteps(steps)
        config = self.unet.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        parameter = next(self.unet.parameters())
        x = _seed_noise(seeds, (config.in_channels, size, size)) * scheduler.init_noise_sigma
        x = x.to(device=parameter.device, dtype=parameter.dtype)
        accepts = inspect.signature(scheduler.step).parameters
        kwargs: dict[str, Any] = {}
        if "eta" in accepts:
            kwargs["eta"] = 0.0
        if "generator" in accepts:  # ancestral samplers draw noise at each step: from the first seed, reproducibly
            kwargs["generator"] = torch.Generator().manual_seed(int(seeds[0]))
        for i, t in enumerate(scheduler.timesteps):
            with torch.no_grad():
                out = self.unet(scheduler.scale_model_input(x, t), t).sample
            step = scheduler.step(out, t, x, **kwargs)
            if on_step is not None:
                on_step(StepRecord(i, int(t), x, predicted_x0(scheduler, step, out, t, x)))
            x = step.prev_sample
        return x


class PipelineSampler(Sampler):
    """A text-to-image diffusers pipeline (Stable Diffusion 1.x/2.x/XL shaped: ``prompt``, ``latents``,
    ``output_type="latent"``). Each step is read from the pipeline's scheduler (its ``step`` is wrapped for the
    duration of one call and restored after); latents are decoded with the pipeline's VAE for the pixel space."""

    native: Space = "latent"

    def __init__(
        self,
        pipe: Any,
        prompt: str,
        *,
        name: str,
        guidance: float = 7.5,
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        from .models import find_unet

        self.pipe, self.prompt, self.name, self.guidance, self.target = pipe, prompt, name, guidance, pipe
        self.unet = find_unet(pipe)
        factor = int(getattr(pipe, "vae_scale_factor", 1) or 1)
        sample = self.unet.config.sample_size
        sample = sample if isinstance(sample, int) else sample[0]
        self.height, self.width = height or sample * factor, width or sample * factor
        self.factor = factor
        self.spaces = ("latent", "pixel") if getattr(pipe, "vae", None) is not None else ("latent",)

    def sample(self, seeds: Sequence[int], steps: int, on_step: OnStep | None = None) -> torch.Tensor:
        scheduler = self.pipe.scheduler
        original = scheduler.step
        had_own = "step" in vars(scheduler)
        index = [0]

        def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            if on_step is not None:
                x0 = predicted_x0(scheduler, out, model_output, timestep, sample)
                on_step(StepRecord(index[0], int(timestep), sample, x0))
            index[0] += 1
            return out if return_dict else out.to_tuple()

        shape = (self.unet.config.in_channels, self.height // self.factor, self.width // self.factor)
        latents = _seed_noise(seeds, shape).to(device=self.pipe.device, dtype=self.unet.dtype)
        scheduler.step = step
        try:
            result = self.pipe(
                prompt=[self.prompt] * len(seeds), num_inference_steps=steps, guidance_scale=self.guidance,
                height=self.height, width=self.width, latents=latents, output_type="latent",
            )  # fmt: skip
        finally:
            if had_own:
                scheduler.step = original
            else:
                del scheduler.step
        return result.images

    def to_space(self, x: torch.Tensor, space: Space) -> torch.Tensor:
        self.check_space(space)
        if space == "latent":
            return x.detach().float().cpu()
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = x.detach().to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor + shift
        with torch.no_grad():
            image = vae.decode(z, return_dict=False)[0]
        return image.float().clamp(-1, 1).cpu()


def demo_sampler(directory: str | Path | None = None, dtype: torch.dtype = torch.float32) -> UNetSampler:
    """The bundled demo model (or one exported in its format: ``unet.safetensors`` + ``config.json``) with DDIM."""
    from .demo.model import WEIGHTS_DIR, build_scheduler, load_exported

    unet, config = load_exported(WEIGHTS_DIR if directory is None else directory, dtype=dtype)
    name = "bundled demo model" if directory is None else f"demo-format model {directory}"
    sampler = UNetSampler(unet, build_scheduler("ddim", config["scheduler"]), name)
    sampler.default_setting = (DEMO_SETTING, "the demo default (official README SD 1.4 / SDXL values)")
    return sampler


def _is_demo_format(folder: Path) -> bool:
    return (folder / "unet.safetensors").is_file() and (folder / "config.json").is_file()


def load_sampler(
    model: str | None,
    *,
    prompt: str | None = None,
    guidance: float | None = None,
    size: tuple[int, int] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> Sampler:
    """The sampler for ``--model``: ``None`` is the bundled demo model; a folder with ``unet.safetensors`` and
    ``config.json`` a model in the demo's format; anything else a diffusers pipeline (local, never downloaded).
    ``prompt``, ``guidance`` and ``size`` are for text-to-image pipelines (guidance default 7.5); giving them to an
    unconditional model is an error rather than silently ignored."""
    from .pipelines import downsampling, is_video, load_pipeline

    def unconditional(what: str) -> None:
        for name, value in (("--prompt", prompt), ("--guidance", guidance), ("--size", size)):
            if value is not None:
                raise ValueError(f"{name}: {what} is unconditional and samples at its own size; leave {name} out")

    if model is None or _is_demo_format(Path(model).expanduser()):
        unconditional("the demo model")
        sampler = demo_sampler(None if model is None else Path(model).expanduser(), getattr(torch, dtype))
        sampler.unet.to(device)
        return sampler
    pipe = load_pipeline(model, dtype, device)
    if is_video(pipe):
        raise ValueError(f"{model}: freeu analyze handles image models; video pipelines are not supported yet")
    unet_class = type(pipe.unet).__name__ if hasattr(pipe, "unet") else ""
    if unet_class == "UNet2DModel":
        unconditional(f"{model} (a UNet2DModel)")
        return UNetSampler(pipe.unet, pipe.scheduler, str(model))
    if "prompt" not in inspect.signature(pipe.__call__).parameters:
        raise ValueError(f"{model}: {type(pipe).__name__} takes no prompt; freeu analyze runs text-to-image pipelines")
    if prompt is None:
        raise ValueError(f"--prompt is required for the text-to-image pipeline {model}")
    step = downsampling(pipe)
    if size is not None and (size[0] % step or size[1] % step):
        raise ValueError(f"--size {size[0]}x{size[1]} must be a multiple of {step} for {model} (its downsampling)")
    pipe.set_progress_bar_config(disable=True)
    height, width = (size[1], size[0]) if size is not None else (None, None)
    guidance = 7.5 if guidance is None else guidance
    return PipelineSampler(pipe, prompt, name=str(model), guidance=guidance, height=height, width=width)


# -- measurements ---------------------------------------------------------------------------------------------------


def _check(path: str, bins: int | None, cutoff: float | None = None) -> None:
    if path not in PATHS:
        raise ValueError(f"path must be one of {list(PATHS)}, got {path!r}")
    if bins is not None and path != "radial":
        raise ValueError(f"bins (--bins) counts the rings of path='radial'; the diagonal has none, got bins={bins!r}")
    if cutoff is not None and not 0.0 < cutoff < math.sqrt(2.0):
        raise ValueError(f"cutoff must be a fraction of the Nyquist frequency in (0, sqrt(2)), got {cutoff!r}")


def _spaces(sampler: Sampler, spaces: Sequence[str] | None) -> list[Space]:
    chosen = list(sampler.spaces if spaces is None else spaces)
    if not chosen:
        raise ValueError("spaces must name at least one space")
    for space in chosen:
        sampler.check_space(space)
    return chosen  # type: ignore[return-value]


def _curve(x: torch.Tensor, path: str, bins: int | None) -> tuple[list[float], list[float]]:
    frequency, values = relative_log_amplitude(x, path=path, bins=bins)  # type: ignore[arg-type]
    return frequency.tolist(), values.tolist()


def high_band(frequency: Sequence[float], values: Sequence[float], start: float = math.pi / 2) -> float | None:
    """Mean of a relative log amplitude curve over frequencies ``>= start`` (default the upper half, pi/2 .. pi);
    ``None`` for a curve with no point there (a 2x2 or smaller map, whose diagonal holds DC alone)."""
    picked = [v for f, v in zip(frequency, values, strict=True) if f >= start - 1e-12]
    return sum(picked) / len(picked) if picked else None


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not ``None`` (``None`` if none is)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def high_fraction(x: torch.Tensor, high: torch.Tensor) -> float:
    """Share of ``x``'s energy (each map's mean removed) that lies in its high-frequency part ``high``.

    The ideal masks of :func:`frequency_split` are orthogonal projections and DC lies in the low part, so this is
    ``sum(high^2) / sum((x - mean)^2)``, in ``[0, 1]``.
    """
    x = x.to(torch.float64)
    centred = x - x.mean(dim=(-2, -1), keepdim=True)
    total = float((centred**2).sum())
    return float((high.to(torch.float64) ** 2).sum()) / total if total > 0 else 0.0


def _rms(x: torch.Tensor) -> float:
    return float(x.to(torch.float64).pow(2).mean().sqrt())


def strip_steps(steps: int, columns: int) -> list[int]:
    """Up to ``columns`` step indices spread evenly over ``0 .. steps - 1``, first and last included."""
    if columns < 1:
        raise ValueError(f"columns must be an int >= 1, got {columns!r}")
    if columns >= steps:
        return list(range(steps))
    if columns == 1:
        return [steps - 1]
    return sorted({round(i * (steps - 1) / (columns - 1)) for i in range(columns)})


def _settings(config: FreeUConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "num_train_timesteps"}


def _applied(sampler: Sampler, config: FreeUConfig | None) -> Any:
    """A context with FreeU ``config`` on the sampler's U-Net (``None``: nothing installed)."""
    return contextlib.nullcontext() if config is None else apply(sampler.target, config)


def _chain(*callbacks: Callable[..., None] | None) -> Callable[..., None]:
    def call(*args: Any) -> None:
        for callback in callbacks:
            if callback is not None:
                callback(*args)

    return call


def trajectory(
    sampler: Sampler,
    seeds: Sequence[int],
    steps: int,
    *,
    cutoff: float = 0.25,
    path: CurvePath = "diagonal",
    bins: int | None = None,
    spaces: Sequence[Space] | None = None,
    noisy: bool = False,
    columns: int = 8,
    config: FreeUConfig | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The denoising trajectory (paper Fig. 3 and 4), with FreeU ``config`` (``None``: the plain model).

    Per space and step: ``x0`` (the relative log amplitude curve of the predicted clean samples of all seeds),
    ``x0_high_fraction`` (:func:`high_fraction` of the ``cutoff`` split), ``x0_low_change``/``x0_high_change`` (RMS of
    the low/high part's change since the previous step, one entry per step from the second), and the same under
    ``xt`` for the noisy samples when ``noisy``. ``images[space]`` holds the first seed's ``x0``, low and high parts
    (and ``xt`` ones) at the ``columns`` steps of :func:`strip_steps`.
    """
    _check(path, bins, cutoff)
    chosen = _spaces(sampler, spaces)
    shown = strip_steps(steps, columns)
    which = ["x0", "xt"] if noisy else ["x0"]
    numbers: dict[str, dict[str, Any]] = {s: {"frequency": None} for s in chosen}
    for entry in numbers.values():
        for w in which:
            for key in ("", "_high_fraction", "_low_change", "_high_change"):
                entry[w + key] = []
    images: dict[str, dict[str, list[torch.Tensor]]] = {s: {} for s in chosen}
    previous: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    timesteps: list[int] = []

    def on_step(record: StepRecord) -> None:
        timesteps.append(record.timestep)
        for space in chosen:
            entry = numbers[space]
            for w in which:
                x = sampler.to_space(record.x0 if w == "x0" else record.sample, space)
                entry["frequency"], curve = _curve(x, path, bins)
                entry[w].append(curve)
                low, high = frequency_split(x.to(torch.float64), cutoff)
                entry[f"{w}_high_fraction"].append(high_fraction(x, high))
                if (space, w) in previous:
                    low_before, high_before = previous[(space, w)]
                    entry[f"{w}_low_change"].append(_rms(low - low_before))
                    entry[f"{w}_high_change"].append(_rms(high - high_before))
                previous[(space, w)] = (low, high)
                if record.index in shown:
                    for name, part in ((w, x), (f"{w}_low", low), (f"{w}_high", high)):
                        images[space].setdefault(name, []).append(part[0].float())

    with _applied(sampler, config):
        sampler.sample(seeds, steps, _chain(on_step, progress and (lambda _r: progress())))
    if len(timesteps) != steps:
        raise RuntimeError(f"{sampler.name} reported {len(timesteps)} steps, expected {steps}")
    return {
        "seeds": [int(s) for s in seeds],
        "steps": steps,
        "timesteps": timesteps,
        "strip_steps": shown,
        "cutoff": cutoff,
        "path": path,
        "bins": bins,
        "noisy": noisy,
        "freeu": None if config is None else _settings(config),
        "spaces": numbers,
        "images": {s: {k: torch.stack(v) for k, v in parts.items()} for s, parts in images.items()},
    }


def _swept(base: FreeUConfig, factor: str, value: float) -> FreeUConfig:
    if factor == "both":
        return base.replace(b1=value, b2=value)
    return base.replace(**{factor: value})


def b_sweep(
    sampler: Sampler,
    seeds: Sequence[int],
    steps: int,
    values: Sequence[float] = (1.0, 1.2, 1.4, 1.6),
    *,
    factor: SweptFactor = "b1",
    base: FreeUConfig | None = None,
    path: CurvePath = "diagonal",
    bins: int | None = None,
    spaces: Sequence[Space] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Relative log amplitude of the final samples for each backbone factor in ``values`` (paper Fig. 6).

    ``factor`` is the factor varied (``b1``, ``b2`` or ``both`` together); every other field comes from ``base``
    (default: all factors 1, version 2, official convention, i.e. only the varied ``b`` acts, ``s = 1``). Per space:
    ``curves`` (one per value), ``at_pi`` (each curve's last point) and ``high_band`` (:func:`high_band`). Pixel
    samples are clamped to ``[-1, 1]`` as images are when saved; latents are used as they are.
    """
    _check(path, bins)
    if factor not in SWEPT:
        raise ValueError(f"factor must be one of {list(SWEPT)}, got {factor!r}")
    if not values:
        raise ValueError("values must hold at least one b")
    base = FreeUConfig(1.0, 1.0, 1.0, 1.0) if base is None else base
    configs = [_swept(base, factor, float(v)) for v in values]  # validated before any sampling
    chosen = _spaces(sampler, spaces)
    numbers: dict[str, dict[str, Any]] = {
        s: {"frequency": None, "curves": [], "at_pi": [], "high_band": []} for s in chosen
    }
    images: dict[str, list[torch.Tensor]] = {s: [] for s in chosen}
    for config in configs:
        with _applied(sampler, config):
            final = sampler.sample(seeds, steps, progress and (lambda _r: progress()))
        for space in chosen:
            x = sampler.to_space(final, space)
            if space == "pixel":
                x = x.clamp(-1, 1)
            frequency, curve = _curve(x, path, bins)
            entry = numbers[space]
            entry["frequency"] = frequency
            entry["curves"].append(curve)
            entry["at_pi"].append(curve[-1])
            entry["high_band"].append(high_band(frequency, curve))
            images[space].append(x[0])
    return {
        "seeds": [int(s) for s in seeds],
        "steps": steps,
        "factor": factor,
        "values": [float(v) for v in values],
        "base": _settings(base),
        "path": path,
        "bins": bins,
        "spaces": numbers,
        "images": {s: torch.stack(v) for s, v in images.items()},
    }


class _JoinCurves:
    """An observer that reduces every observation at once to relative log amplitude curves, summed per join."""

    def __init__(self, path: str, bins: int | None) -> None:
        self.path, self.bins = path, bins
        self.joins: dict[str, dict[str, Any]] = {}

    def __call__(self, obs: JoinObservation) -> None:
        with torch.no_grad():
            tensors = {"backbone_in": obs.backbone, "skip_in": obs.skip}
            curves = {k: relative_log_amplitude(t.detach(), self.path, self.bins) for k, t in tensors.items()}
            for kind, out, source in (
                ("backbone_out", obs.backbone_out, "backbone_in"),
                ("skip_out", obs.skip_out, "skip_in"),
            ):
                same = out is tensors[source]
                curves[kind] = curves[source] if same else relative_log_amplitude(out.detach(), self.path, self.bins)
        frequency = curves["backbone_in"][0]
        cb, cs = obs.backbone_out.shape[1], obs.skip_out.shape[1]
        # log |FFT| is averaged over every (sample, channel) map, so the concatenation's curve is the channel-weighted
        # mean of its two parts' curves, exactly (no second FFT of the wide tensor)
        values = {k: v for k, (_, v) in curves.items()}
        values["fused"] = (cb * values["backbone_out"] + cs * values["skip_out"]) / (cb + cs)
        entry = self.joins.get(obs.join.name)
        if entry is None:
            entry = self.joins[obs.join.name] = {
                "name": obs.join.name, "backbone_channels": cb, "skip_channels": cs,
                "size": list(obs.backbone.shape[-2:]), "frequency": frequency, "calls": 0,
                "sums": {k: torch.zeros_like(v) for k, v in values.items()},
            }  # fmt: skip
        for kind, v in values.items():
            entry["sums"][kind] += v
        entry["calls"] += 1

    def means(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                **{k: v for k, v in e.items() if k != "sums"},
                "curves": {k: (s / e["calls"]) for k, s in e["sums"].items()},
            }
            for name, e in self.joins.items()
        }


def features(
    sampler: Sampler,
    seeds: Sequence[int],
    steps: int,
    config: FreeUConfig,
    *,
    path: CurvePath = "diagonal",
    bins: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Relative log amplitude of the features at every skip join (paper Fig. 7), with FreeU off and with ``config``.

    Each forward pass's features are reduced at once to one curve per :data:`KINDS` entry and averaged over every
    U-Net call of the sampling run (all steps, and both classifier-free-guidance branches where the pipeline has
    them); features live in the U-Net's own space. "Off" observes through ``config`` with every factor 1 (no FreeU
    operator runs; ``*_out`` equals ``*_in``). Per join: ``stage``, widths, ``size``, ``frequency``, and ``off``/``on``
    dicts of curves. ``stages`` averages :func:`high_band` of each kind over the joins of each stage (key ``"none"``
    for joins FreeU leaves alone).
    """
    _check(path, bins)
    if not isinstance(config, FreeUConfig):
        raise TypeError(f"config must be a freeu.FreeUConfig, got {type(config).__name__}")
    off_config = config.replace(b1=1.0, b2=1.0, s1=1.0, s2=1.0)
    # the stage each join gets under this convention (observations of joins left alone report no stage)
    stage_of = {p.join.name: p.stage for p in plan(sampler.target, config.convention)}
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for label, setting in (("off", off_config), ("on", config)):
        observer = _JoinCurves(path, bins)
        with apply(sampler.target, setting, observer=observer):
            sampler.sample(seeds, steps, progress and (lambda _r: progress()))
        runs[label] = observer.means()
    joins = []
    for name, off in runs["off"].items():
        on = runs["on"][name]
        joins.append({
            "name": name, "stage": stage_of[name], "backbone_channels": off["backbone_channels"],
            "skip_channels": off["skip_channels"], "size": off["size"], "calls": off["calls"],
            "frequency": off["frequency"].tolist(),
            "off": {k: v.tolist() for k, v in off["curves"].items()},
            "on": {k: v.tolist() for k, v in on["curves"].items()},
        })  # fmt: skip
    stages: dict[str, dict[str, dict[str, float]]] = {}
    for stage in sorted({j["stage"] for j in joins}, key=lambda s: (s is None, s)):
        members = [j for j in joins if j["stage"] == stage]
        stages["none" if stage is None else str(stage)] = {
            label: {kind: _mean([high_band(j["frequency"], j[label][kind]) for j in members]) for kind in KINDS}
            for label in ("off", "on")
        }
    return {
        "seeds": [int(s) for s in seeds],
        "steps": steps,
        "freeu": _settings(config),
        "path": path,
        "bins": bins,
        "joins": joins,
        "stages": stages,
    }


# -- output ---------------------------------------------------------------------------------------------------------


def _without_images(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_images(v) for k, v in value.items() if k != "images"}
    if isinstance(value, list):
        return [_without_images(v) for v in value]
    return value


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """Every number of ``results`` (the images under ``"images"`` left out) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_without_images(results), indent=1, allow_nan=False) + "\n")
    return path


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("freeu analyze's figures need matplotlib: pip install 'freeu[plots]'") from error
    return matplotlib, Figure


def _setting_label(config: dict[str, Any] | None) -> str:
    if config is None:
        return "FreeU off"
    return (
        f"FreeU b1={config['b1']:g} b2={config['b2']:g} s1={config['s1']:g} s2={config['s2']:g} "
        f"(v{config['version']}, {config['convention']})"
    )


def _display(x: torch.Tensor, space: str, centred: bool) -> Any:
    """``(N, C, H, W)`` as RGB/grey arrays in ``[0, 1]``: pixels by ``(x + 1) / 2``; high parts (``centred``) and
    latents stretched to the row's full range, the same stretch for every column so they stay comparable."""
    x = x.float()
    if x.shape[1] > 3:
        x = x[:, :3]
    if centred:
        scale = float(x.abs().max()) or 1.0
        x = 0.5 + x / (2 * scale)
    elif space == "pixel":
        x = (x + 1) / 2
    else:
        low, high = float(x.min()), float(x.max())
        x = (x - low) / ((high - low) or 1.0)
    x = x.clamp(0, 1)
    if x.shape[1] == 1:
        return x[:, 0].numpy()
    if x.shape[1] == 2:
        x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
    return x.permute(0, 2, 3, 1).numpy()


def plot_trajectory(result: dict[str, Any], out: str | Path, model: str) -> list[Path]:
    """Per space: ``trajectory-strip-SPACE.png`` (rows x0, low, high and the x_t ones; columns the strip steps) and
    ``trajectory-amplitude-SPACE.png`` (the curves per step, coloured by step, and the high-frequency share and the
    per-step change of the low and high parts)."""
    _, figure_class = _matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    setting = _setting_label(result["freeu"])
    which = ["x0", "xt"] if result["noisy"] else ["x0"]
    names = {"x0": "predicted x0", "xt": "noisy x_t"}
    for space, numbers in result["spaces"].items():
        title = f"{model} | {setting} | path {result['path']}, {space} space, cutoff {result['cutoff']:g} x Nyquist"
        images = result["images"][space]
        rows = [(f"{w}{p}", f"{w}{label}") for w in which for p, label in
                (("", ""), ("_low", " low"), ("_high", " high\n(stretched)"))]  # fmt: skip
        cols = result["strip_steps"]
        width = max(6.0, 1.4 * len(cols) + 1.5)
        fig = figure_class(figsize=(width, 1.5 * len(rows) + 1.2), layout="constrained")
        axes = fig.subplots(len(rows), len(cols), squeeze=False)
        for r, (key, label) in enumerate(rows):
            shown = _display(images[key], space, centred=key.endswith("_high"))
            for c, step in enumerate(cols):
                ax = axes[r][c]
                ax.imshow(shown[c], cmap="gray" if shown.ndim == 3 else None, vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"step {step + 1}\nt={result['timesteps'][step]}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(label, fontsize=8)
        heading = f"Denoising trajectory, seed {result['seeds'][0]}: {title}"
        fig.suptitle(textwrap.fill(heading, width=int(width * 12)), fontsize=9)
        written.append(out / f"trajectory-strip-{space}.png")
        fig.savefig(written[-1], dpi=110)

        fig = figure_class(figsize=(6 * len(which) + 5, 4.6), layout="constrained")
        axes = fig.subplots(1, len(which) + 1, squeeze=False)[0]
        import matplotlib.cm as cm

        steps = len(numbers[which[0]])
        for ax, w in zip(axes, which, strict=False):
            for k, curve in enumerate(numbers[w]):
                label = f"step {k + 1}" if k in (0, steps - 1) or k in cols else None
                ax.plot(numbers["frequency"], curve, color=cm.viridis(k / max(steps - 1, 1)), lw=1.2, label=label)
            ax.set_xlabel("frequency (0 .. pi)")
            ax.set_ylabel("relative log amplitude (log |F| - log |F(0)|)")
            ax.set_title(f"{names[w]}, per step (mean over {len(result['seeds'])} seeds and channels)", fontsize=9)
            ax.legend(fontsize=7, title="sampling step", title_fontsize=7)
            ax.grid(alpha=0.3)
        ax = axes[-1]
        x = list(range(1, steps + 1))
        for w, style in zip(which, ("-", "--"), strict=False):
            ax.plot(x, numbers[f"{w}_high_fraction"], style, color="C3", label=f"{w}: high-frequency energy share")
            ax.plot(x[1:], numbers[f"{w}_low_change"], style, color="C0", label=f"{w}: RMS change of low part")
            ax.plot(x[1:], numbers[f"{w}_high_change"], style, color="C1", label=f"{w}: RMS change of high part")
        ax.set_xlabel("sampling step")
        ax.set_ylabel("share (0..1) / RMS change (sample units)")
        ax.set_title(f"low/high split at {result['cutoff']:g} x Nyquist", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.suptitle(f"Relative log amplitude along the trajectory\n{title}", fontsize=9)
        written.append(out / f"trajectory-amplitude-{space}.png")
        fig.savefig(written[-1], dpi=110)
    return written


def plot_b_sweep(result: dict[str, Any], out: str | Path, model: str) -> list[Path]:
    """Per space, ``b-sweep-SPACE.png``: the final samples' curve for each ``b``, and the first seed's samples."""
    _, figure_class = _matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    base = result["base"]
    varied = "b1 = b2" if result["factor"] == "both" else result["factor"]
    others = ", ".join(f"{k}={base[k]:g}" for k in ("b1", "b2", "s1", "s2") if k not in (varied, "b1 = b2"))
    if result["factor"] == "both":
        others = f"s1={base['s1']:g}, s2={base['s2']:g}"
    import matplotlib.cm as cm

    for space, numbers in result["spaces"].items():
        values = result["values"]
        fig = figure_class(figsize=(11, 5.2), layout="constrained")
        grid = fig.add_gridspec(2, max(len(values), 1), height_ratios=[3, 1])
        ax = fig.add_subplot(grid[0, :])
        for k, (b, curve) in enumerate(zip(values, numbers["curves"], strict=True)):
            color = cm.plasma(k / max(len(values) - 1, 1) * 0.85)
            ax.plot(numbers["frequency"], curve, color=color, lw=1.5, label=f"{varied} = {b:g}")
        ax.set_xlabel("frequency (0 .. pi)")
        ax.set_ylabel("relative log amplitude (log |F| - log |F(0)|)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        shown = _display(result["images"][space], space, centred=False)
        for k, b in enumerate(values):
            small = fig.add_subplot(grid[1, k])
            small.imshow(shown[k], cmap="gray" if shown.ndim == 3 else None, vmin=0, vmax=1, interpolation="nearest")
            small.set_xticks([])
            small.set_yticks([])
            small.set_xlabel(f"{varied}={b:g}, seed {result['seeds'][0]}", fontsize=7)
        fig.suptitle(
            f"Final samples vs backbone factor ({others}, v{base['version']}, {base['convention']}; "
            f"{len(result['seeds'])} seeds)\n{model} | path {result['path']}, {space} space",
            fontsize=9,
        )
        written.append(out / f"b-sweep-{space}.png")
        fig.savefig(written[-1], dpi=110)
    return written


def plot_features(result: dict[str, Any], out: str | Path, model: str) -> list[Path]:
    """``features.png``: one panel per skip join, backbone / skip / fused curves, FreeU off dashed and on solid."""
    _, figure_class = _matplotlib()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    joins = result["joins"]
    cols = min(4, len(joins))
    rows = -(-len(joins) // cols)
    fig = figure_class(figsize=(3.6 * cols, 3.0 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    shown = (("backbone_out", "backbone", "C0"), ("skip_out", "skip", "C1"), ("fused", "fused", "C2"))
    for ax, join in zip(axes.flat, joins, strict=False):
        for kind, label, color in shown:
            ax.plot(join["frequency"], join["off"][kind], "--", color=color, lw=1.2, label=f"{label}, FreeU off")
            ax.plot(join["frequency"], join["on"][kind], "-", color=color, lw=1.5, label=f"{label}, FreeU on")
        stage = "untouched" if join["stage"] is None else f"stage {join['stage']}"
        h, w = join["size"]
        ax.set_title(
            f"{join['name']} ({stage})\n"
            f"backbone {join['backbone_channels']} + skip {join['skip_channels']} ch, {h}x{w}",
            fontsize=8,
        )
        ax.set_xlabel("frequency (0 .. pi)", fontsize=8)
        ax.set_ylabel("relative log amplitude", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(joins) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(
        f"Skip-join features (FreeU's output at each join; 'fused' = cat(backbone, skip) as the decoder sees it)\n"
        f"{model} | {_setting_label(result['freeu'])} | path {result['path']}, U-Net's own space, mean over "
        f"{result['steps']} steps x {len(result['seeds'])} seeds",
        fontsize=9,
    )
    path = out / "features.png"
    fig.savefig(path, dpi=110)
    return [path]


def _fmt(value: float | None, sign: bool = True) -> str:
    return "n/a" if value is None else f"{value:+.3f}" if sign else f"{value:.3f}"


def _change(before: float | None, after: float | None) -> str:
    return "n/a" if before is None or after is None else f"{after - before:+.3f}"


def summary(results: dict[str, Any]) -> list[str]:
    """Short lines of text on what the numbers of :func:`trajectory`, :func:`b_sweep` and :func:`features` say."""
    lines = []
    traj = results.get("trajectory")
    if traj is not None:
        for space, n in traj["spaces"].items():
            fractions = n["x0_high_fraction"]
            picks = sorted({0, len(fractions) // 2, len(fractions) - 1})
            shares = ", ".join(f"step {k + 1}: {fractions[k]:.3f}" for k in picks)
            lines.append(f"trajectory ({space}): high-frequency share of x0 (> {traj['cutoff']:g} x Nyquist) {shares}")
            if n["x0_low_change"]:
                low = sum(n["x0_low_change"]) / len(n["x0_low_change"])
                high = sum(n["x0_high_change"]) / len(n["x0_high_change"])
                lines.append(
                    f"trajectory ({space}): mean RMS change of x0 per step: low part {low:.4f}, high part {high:.4f}"
                )
    sweep = results.get("b")
    if sweep is not None:
        v = sweep["values"]
        for space, n in sweep["spaces"].items():
            at_pi, band = n["at_pi"], n["high_band"]
            lines.append(
                f"b sweep ({space}): {sweep['factor']} {v[0]:g} -> {v[-1]:g}: relative log amplitude at pi "
                f"{_fmt(at_pi[0])} -> {_fmt(at_pi[-1])} ({_change(at_pi[0], at_pi[-1])}), mean over pi/2..pi "
                f"{_fmt(band[0])} -> {_fmt(band[-1])} ({_change(band[0], band[-1])})"
            )
    feats = results.get("features")
    if feats is not None:
        for stage, numbers in feats["stages"].items():
            off, on = numbers["off"], numbers["on"]
            name = "joins FreeU leaves alone" if stage == "none" else f"stage {stage} joins"
            lines.append(
                f"features, {name}, mean relative log amplitude over pi/2..pi (off -> on): "
                + ", ".join(f"{k} {_fmt(off[k])} -> {_fmt(on[k])}" for k in ("backbone_out", "skip_out", "fused"))
            )
    return lines


# -- command line ---------------------------------------------------------------------------------------------------


_positive_int = argtypes.positive_int
_factor = argtypes.non_negative
_size = argtypes.size


def _cutoff(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < math.sqrt(2.0):
        raise argparse.ArgumentTypeError(f"must be a fraction of the Nyquist frequency in (0, 1.414), got {text!r}")
    return value


def _b_values(text: str) -> list[float]:
    from .commands import parse_values

    try:
        values = parse_values("b-values", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--b-values ")) from None
    if not values or any(not (math.isfinite(v) and v >= 0) for v in values):
        raise argparse.ArgumentTypeError(f"must be finite numbers >= 0, got {text!r}")
    return values


def _only(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {','.join(PARTS)}, got {text!r}")
    return [p for p in PARTS if p in parts]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``analyze`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``); returns its parser."""
    p = subparsers.add_parser(
        "analyze",
        help="the paper's Fourier analyses: denoising trajectory, b sweep, skip-join features",
        description="Reproduce FreeU's Fourier analyses (paper Fig. 3, 4, 6, 7) on the bundled demo model or a "
        "pipeline; writes PNG figures and analysis.json into --out and prints a summary.",
    )
    g = p.add_argument_group("model and sampling")
    g.add_argument("--model", default=None, help="a diffusers pipeline folder / cached hub id, or a folder with "
                   "unet.safetensors + config.json in the demo's format (default: the bundled demo model)")  # fmt: skip
    g.add_argument("--prompt", default=None, help="text prompt (text-to-image pipelines only)")
    g.add_argument("--guidance", type=_factor, default=None, help="classifier-free guidance, pipelines (default 7.5)")
    g.add_argument("--size", type=_size, default=None, help="SIZE or WIDTHxHEIGHT, pipelines (default: the model's)")
    g.add_argument("--seed", type=int, default=0, help="first seed; seeds are seed .. seed+count-1 (default 0)")
    g.add_argument("--count", type=_positive_int, default=None,
                   help="samples per run (default 8 on the demo model, 2 on pipelines)")  # fmt: skip
    g.add_argument("--steps", type=_positive_int, default=25, help="sampling steps (default 25)")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="default float32")
    a = p.add_argument_group("analysis")
    a.add_argument("--only", type=_only, default=list(PARTS), help="subset of trajectory,b,features (default: all)")
    a.add_argument("--path", choices=PATHS, default="diagonal",
                   help="diagonal: the paper's half-diagonal from DC (default); radial: mean over rings")  # fmt: skip
    a.add_argument("--bins", type=_positive_int, default=None, help="rings for --path radial (default: as diagonal)")
    a.add_argument("--space", choices=[*SPACES, "both"], default=None,
                   help="latent, pixel or both (default: both where a VAE exists, else pixel)")  # fmt: skip
    a.add_argument("--cutoff", type=_cutoff, default=0.25,
                   help="low/high split radius, a fraction of Nyquist (default 0.25)")  # fmt: skip
    a.add_argument("--noisy", action="store_true", help="trajectory: also analyse the noisy sample x_t")
    a.add_argument("--columns", type=_positive_int, default=8, help="steps shown in the trajectory strip (default 8)")
    a.add_argument("--b-values", type=_b_values, default=[1.0, 1.2, 1.4, 1.6],
                   help="b values for the sweep: list or start:stop:step (default 1.0,1.2,1.4,1.6)")  # fmt: skip
    a.add_argument("--b-factor", choices=SWEPT, default="b1",
                   help="factor the sweep varies, all others 1 (default b1)")  # fmt: skip
    f = p.add_argument_group("FreeU for the 'with FreeU' runs (features; version/convention also for the sweep)")
    defaults = "default: demo model 1.3/1.4/0.9/0.2 (b1/b2/s1/s2), pipelines the preset of their layout"
    for name in ("b1", "b2", "s1", "s2"):
        f.add_argument(f"--{name}", type=_factor, default=None, help=defaults)
    f.add_argument("--version", type=int, choices=[1, 2], default=None, help="1 or 2 (default 2)")
    f.add_argument("--convention", choices=["official", "diffusers"], default=None, help="default official")
    p.add_argument("--out", default="freeu-analysis", help="output folder (default freeu-analysis)")
    return p


def _freeu_setting(sampler: Sampler, args: argparse.Namespace) -> tuple[FreeUConfig, str]:
    """The "with FreeU" setting: the model's default (the demo's, or the preset of a pipeline's layout) overridden
    by the factors given; all four factors are needed when there is no default and the features are analysed."""
    from .config import get_preset
    from .pipelines import detect_preset

    default = sampler.default_setting
    if default is None and isinstance(sampler, PipelineSampler):
        try:
            name, evidence = detect_preset(sampler.pipe)
            default = get_preset(name).config, f"preset {name!r} ({evidence})"
        except ValueError:
            default = None
    given = {k: getattr(args, k) for k in ("b1", "b2", "s1", "s2", "version", "convention")}
    given = {k: v for k, v in given.items() if v is not None}
    if default is None:
        missing = [f"--{k}" for k in ("b1", "b2", "s1", "s2") if k not in given]
        if missing and "features" in args.only:
            raise ValueError(
                f"no preset matches {sampler.name}'s U-Net: give --b1, --b2, --s1 and --s2 for the features "
                f"(missing: {', '.join(missing)})"
            )
        return FreeUConfig(**{"b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0, **given}), "the factors given"
    config, source = default
    if given:
        source += " with " + ", ".join(f"{k}={v}" for k, v in given.items())
    return config.replace(**given), source


def run(args: argparse.Namespace) -> int:
    """``freeu analyze``: every part of ``args.only`` into ``args.out``; prints a summary. 0 on success, 1 when the
    model cannot be loaded, 2 on a value the model rejects."""
    from .pipelines import ModelLoadError

    try:
        _matplotlib()
    except ImportError as error:
        print(f"freeu analyze: {error}", file=sys.stderr)
        return 1
    try:
        print(f"loading {args.model or 'the bundled demo model'} ...", flush=True)
        sampler = load_sampler(
            args.model, prompt=args.prompt, guidance=args.guidance, size=args.size, device=args.device,
            dtype=args.dtype,
        )  # fmt: skip
    except (ModelLoadError, FileNotFoundError) as error:
        print(f"freeu analyze: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"freeu analyze: error: {error}", file=sys.stderr)
        return 2
    try:
        spaces = list(sampler.spaces) if args.space in (None, "both") else [args.space]
        if args.space == "both" and len(sampler.spaces) < 2:
            raise ValueError(f"--space both needs a VAE; {sampler.name} only has {sampler.spaces[0]} space")
        for space in spaces:
            sampler.check_space(space)
        config, source = _freeu_setting(sampler, args)
        sweep_base = FreeUConfig(1.0, 1.0, 1.0, 1.0, version=config.version, convention=config.convention)
    except ValueError as error:
        print(f"freeu analyze: error: {error}", file=sys.stderr)
        return 2
    count = args.count or (8 if isinstance(sampler, UNetSampler) else 2)
    seeds = list(range(args.seed, args.seed + count))
    runs = {"trajectory": 1, "b": len(args.b_values), "features": 2}
    total = sum(runs[p] for p in args.only) * args.steps
    print(f"with FreeU: {_setting_label(_settings(config))}, from {source}")
    print(f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), {args.steps} steps, path {args.path}, spaces {spaces}")

    from tqdm.auto import tqdm

    out = Path(args.out)
    results: dict[str, Any] = {
        "model": sampler.name, "freeu": _settings(config), "freeu_source": source, "seeds": seeds,
        "steps": args.steps, "path": args.path, "bins": args.bins, "spaces": spaces,
    }  # fmt: skip
    written: list[Path] = []
    common = dict(path=args.path, bins=args.bins)
    try:
        with tqdm(total=total, desc="sampling", unit="step", leave=False) as bar:
            tick = lambda: bar.update()  # noqa: E731
            if "trajectory" in args.only:
                bar.set_description("trajectory")
                results["trajectory"] = trajectory(
                    sampler, seeds, args.steps, cutoff=args.cutoff, spaces=spaces, noisy=args.noisy,
                    columns=args.columns, progress=tick, **common,
                )  # fmt: skip
            if "b" in args.only:
                bar.set_description("b sweep")
                results["b"] = b_sweep(
                    sampler, seeds, args.steps, args.b_values, factor=args.b_factor, base=sweep_base, spaces=spaces,
                    progress=tick, **common,
                )  # fmt: skip
            if "features" in args.only:
                bar.set_description("features")
                results["features"] = features(sampler, seeds, args.steps, config, progress=tick, **common)
    except ValueError as error:
        print(f"freeu analyze: error: {error}", file=sys.stderr)
        return 2
    if "trajectory" in results:
        written += plot_trajectory(results["trajectory"], out, sampler.name)
    if "b" in results:
        written += plot_b_sweep(results["b"], out, sampler.name)
    if "features" in results:
        written += plot_features(results["features"], out, sampler.name)
    written.append(write_json(results, out / "analysis.json"))
    lines = summary(results)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    written.append(out / "summary.txt")
    for line in lines:
        print(line)
    for path in written:
        print(f"wrote {path}")
    return 0
