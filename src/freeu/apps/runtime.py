"""The one runtime of the applications: load a model, sample a list of seeds, report every step.

Every command (``generate``, ``sweep``, ``analyze``, ``eval``, ``ui``, ``demo``) and the demo's training loop use
it, so that they cannot drift apart:

- :func:`load_model` turns what the user names into a :class:`Model`: ``None`` or ``"demo-classes"`` is the
  bundled class-conditional demo model (guided; its class is the prompt), ``"demo"`` the bundled unconditional one,
  a folder with ``unet.safetensors`` and a demo ``config.json`` is a model exported in the demo's format,
  anything else is a diffusers pipeline from a local folder or the local Hugging Face cache (never downloaded). A
  pipeline whose U-Net is an unconditional ``UNet2DModel`` (``DDPMPipeline``, say) runs like the demo model.
- :meth:`Model.sample` samples a list of seeds with an optional prompt, guidance and size (a :class:`Request`),
  optionally with FreeU applied for the duration, and calls ``on_step`` after every denoising step with a
  :class:`Step` (the noisy sample and the predicted clean sample).
- :func:`seed_noise` is the one seeded-noise function: sample ``i`` starts from noise drawn on the CPU from its own
  generator seeded with ``seeds[i]``, so an image depends only on its seed, never on the batch or the device.
- Sizes are :class:`Size` ``(height, width)`` everywhere inside; the command line reads and prints ``WIDTHxHEIGHT``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from freeu.config import FreeUConfig
from freeu.hooks import JoinObservation, apply
from freeu.models import class_names, find_unet
from freeu.settings import VIDEO_UNETS, detect_preset

from .errors import ModelLoadError
from .schedule import GuidanceSchedule, scheduled_guidance

__all__ = [
    "DEMO",
    "DEFAULT_MODEL",
    "DEMO_CLASSES",
    "DTYPES",
    "MODEL_HELP",
    "Model",
    "ModelLoadError",
    "PipelineModel",
    "Request",
    "Size",
    "Step",
    "UNetModel",
    "default_device",
    "is_demo_folder",
    "load_model",
    "peek_classes",
    "peek_downsampling",
    "peek_takes_prompt",
    "predicted_x0",
    "seed_noise",
    "timestep_number",
    "to_pil",
    "to_unit_range",
]

logger = logging.getLogger(__name__)

#: What ``--model`` names for the bundled unconditional demo model.
DEMO = "demo"
#: What ``--model`` names for the bundled class-conditional demo model (its class is the prompt; guided).
DEMO_CLASSES = "demo-classes"
#: The model of ``demo``, ``analyze``, ``eval`` and ``ui`` when ``--model`` is not given (``None`` means it too).
DEFAULT_MODEL = DEMO_CLASSES
#: What the commands say of their ``--model`` (the bundled models, exported weights, a pipeline).
MODEL_HELP = (
    f"{DEMO_CLASSES} (the bundled class-conditional demo model; its class is the prompt), {DEMO} (the bundled "
    "unconditional one), a folder of exported demo weights, or a local diffusers pipeline folder / cached hub id "
    "(never downloaded)"
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Space = Literal["latent", "pixel"]
Output = Literal["pil", "tensor"]


class Size(NamedTuple):
    """An image size in pixels. Build it by keyword (``Size(height=..., width=...)``); it prints as ``WxH``."""

    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def default_device() -> str:
    """``cuda``, else ``mps``, else ``cpu``: every command's default ``--device``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def seed_noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """``(len(seeds), *shape)`` standard normal noise; sample ``i`` from a CPU generator seeded with ``seeds[i]``."""
    return seed_streams(seeds, shape)[0]


def seed_streams(seeds: Sequence[int], shape: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """:func:`seed_noise` and, per sample, its CPU generator after drawing that noise: a stochastic sampler that draws
    its later noise from these gives each sample one random stream from its own seed, whatever the batch."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]), generators


def timestep_number(timestep: Any) -> int | float:
    """A scheduler's timestep (a number, or a tensor of one value per sample: the first) as a plain number: an
    integer where it is whole (the usual 0..999), else a float (Stable Cascade's ratio in [0, 1], Euler's
    fractional timesteps)."""
    value = float(torch.as_tensor(timestep).flatten()[0])
    return int(value) if value.is_integer() else value


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Pixel-space samples (``[-1, 1]``, any dtype or device) as float32 images in ``[0, 1]`` on the CPU."""
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


def to_pil(image: torch.Tensor) -> Any:
    """One ``(3, H, W)`` image in ``[0, 1]`` as an 8-bit PIL image (rounded, as the pipelines' own output is)."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array)


@dataclass(frozen=True)
class Request:
    """What to sample, besides the seeds: ``None`` means "not given" (the model's own size, no prompt).

    ``guidance`` is the classifier-free guidance scale of guided pipelines; ``frames`` the clip length of video
    pipelines. ``schedule``: guidance per step or per frequency band (:mod:`freeu.apps.schedule`), which the
    sampler, still run at ``guidance`` (above 1), is made to follow. :meth:`Model.check` refuses what the model
    cannot take and fills in its size.
    """

    steps: int = 25
    prompt: str | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    size: Size | None = None
    frames: int | None = None
    schedule: GuidanceSchedule | None = None


class Step:
    """One denoising step as the sampler saw it: its index, the timestep, the noisy input ``sample`` (x_t) and the
    clean sample the model predicts, ``x0`` (computed when first read)."""

    def __init__(self, index: int, timestep: int | float, sample: torch.Tensor, x0: Callable[[], torch.Tensor]) -> None:
        self.index, self.timestep, self.sample = index, timestep, sample
        self._x0: Callable[[], torch.Tensor] | torch.Tensor = x0

    @property
    def x0(self) -> torch.Tensor:
        if callable(self._x0):
            self._x0 = self._x0()
        return self._x0


OnStep = Callable[[Step], None]


def predicted_x0(
    scheduler: Any, output: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor
) -> torch.Tensor:
    """The clean sample the model predicts at this step: the scheduler's own ``pred_original_sample`` when its step
    returns one (DDIM, DDPM, Euler, ...), otherwise computed from ``alphas_cumprod[t]`` and the prediction type (which
    assumes the variance-preserving sample space, as DPM-Solver's)."""
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is not None:
        return x0
    continuous = getattr(scheduler, "_alpha_cumprod", None)
    if getattr(scheduler, "alphas_cumprod", None) is None and callable(continuous):
        # Stable Cascade's (Wuerstchen's) scheduler: a cosine schedule over a timestep ratio in [0, 1] and a noise
        # (epsilon) prediction, one ratio per sample
        t = torch.as_tensor(timestep, dtype=torch.float32).flatten().to(sample.device)
        a = continuous(t.expand(sample.shape[0]) if t.numel() == 1 else t, sample.device).float()
        a = a.view(-1, *[1] * (sample.dim() - 1))
        return (sample.float() - (1 - a).sqrt() * model_output.float()) / a.sqrt()
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


def _refuse_non_finite(module: torch.nn.Module, args: Any, output: Any) -> None:
    """A U-Net forward hook for the applications' sampling: an output with NaN or infinite values stops the run
    (the picture would be black or noise, written as if all were well)."""
    sample = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
    if isinstance(sample, torch.Tensor) and not bool(torch.isfinite(sample).all()):
        raise ValueError(
            f"the U-Net's output is not finite (NaN or inf) in {str(sample.dtype).replace('torch.', '')}: the samples "
            "would be meaningless. In float16, large FreeU factors (or the model itself) overflow: use --dtype "
            "float32 or bfloat16, or smaller factors"
        )


class Model:
    """A model the applications can sample. Subclasses set the attributes and implement :meth:`_sample`.

    ``name`` is what the user gave (``"demo"``, a folder, a hub id); ``description`` a line for reports;
    ``fingerprint`` identifies the weights and sampler class for resumable runs; ``target`` is what ``freeu.apply``
    receives; ``native`` is the space sampling runs in and ``spaces`` those its samples can be shown in; ``size`` is
    the model's own output size. ``classes`` are a class-conditional model's classes (its prompts), with
    ``default_prompt`` the one the commands take when no ``--prompt`` is given; ``default_guidance`` is the
    guidance scale of guided models when none is given.
    """

    kind: Literal["demo", "unet", "pipeline"] = "unet"
    name: str = "model"
    description: str = "model"
    fingerprint: str = "model"
    target: Any = None
    unet: torch.nn.Module
    native: Space = "pixel"
    spaces: tuple[Space, ...] = ("pixel",)
    takes_prompt: bool = False
    guided: bool = False
    video: bool = False
    size: Size = Size(height=0, width=0)
    classes: tuple[str, ...] | None = None
    default_prompt: str | None = None
    default_guidance: float = 7.5
    #: the order of a classifier-free-guidance batch: the unconditional half first (diffusers' usual), or not
    unconditional_first: bool = True

    # -- what the model can do ----------------------------------------------------------------------------------

    def preset(self) -> tuple[str, str]:
        """``(preset name, the structural evidence)`` for ``--preset auto`` (:func:`freeu.settings.detect_preset`
        of the U-Net); ``ValueError`` where none fits."""
        return detect_preset(self.unet)

    def check(self, request: Request) -> Request:
        """``request`` with the model's size filled in; ``ValueError`` naming the flag the model cannot take."""
        raise NotImplementedError

    def check_space(self, space: str) -> None:
        if space not in self.spaces:
            raise ValueError(f"space must be one of {list(self.spaces)} for {self.name}, got {space!r}")

    def sampler_name(self, steps: int) -> str:
        """The sampler in words, e.g. ``DDIM 25 steps, eta 0``."""
        scheduler = getattr(self, "scheduler", None)
        name = type(scheduler).__name__
        if name == "DDIMScheduler":
            return f"DDIM {steps} steps, eta 0"
        return f"{name} {steps} steps"

    # -- sampling -----------------------------------------------------------------------------------------------

    def sample(
        self,
        seeds: Sequence[int],
        request: Request,
        *,
        freeu: FreeUConfig | None = None,
        observer: Callable[[JoinObservation], None] | None = None,
        on_step: OnStep | None = None,
        output: Output = "pil",
        batch_size: int | None = None,
    ) -> Any:
        """One sample per seed (a seed may repeat: a grid of FreeU settings from one noise).

        ``freeu`` (and ``observer``, see :func:`freeu.apply`) are installed for this call only. ``output="pil"``
        gives PIL images (a list of frames per sample for video pipelines); ``"tensor"`` the final samples in the
        model's native space (pixels in ``[-1, 1]`` or latents). ``batch_size`` caps the samples per model call.
        """
        schedule = request.schedule
        request = self.check(request)
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds must name at least one seed")
        if freeu is None and observer is None:
            context: Any = contextlib.nullcontext()
        else:
            context = apply(self.target, freeu if freeu is not None else FreeUConfig(1, 1, 1, 1), observer=observer)
        unet = getattr(self, "unet", None)  # a model that replays recorded samples has none
        scheduled: Any = contextlib.nullcontext()
        if schedule is not None:
            if not self.guided or not isinstance(unet, torch.nn.Module):
                raise ValueError(f"a guidance schedule needs a model sampled with classifier-free guidance; "
                                 f"{self.name} takes no guidance scale")  # fmt: skip
            scheduled = scheduled_guidance(unet, float(request.guidance or 0.0), schedule,
                                           unconditional_first=self.unconditional_first)  # fmt: skip
        finite = unet.register_forward_hook(_refuse_non_finite) if isinstance(unet, torch.nn.Module) else None
        try:
            with context, scheduled:
                return self._sample(seeds, request, on_step, output, batch_size or len(seeds))
        finally:
            if finite is not None:
                finite.remove()

    def _sample(self, seeds: list[int], request: Request, on_step: OnStep | None, output: Output,
                batch_size: int) -> Any:  # fmt: skip
        raise NotImplementedError

    def to_space(self, x: torch.Tensor, space: Space) -> torch.Tensor:
        """``x`` (native space) in ``space``, float32 on the CPU."""
        self.check_space(space)
        if space != self.native:
            raise ValueError(f"{self.name} cannot show {self.native} samples in {space} space")
        return x.detach().float().cpu()


class UNetModel(Model):
    """A pixel-space ``UNet2DModel`` with a diffusers scheduler (DDIM runs with ``eta = 0``): the bundled demo model,
    one exported in its format, or the U-Net of a ``DDPMPipeline``-like pipeline.

    With ``classes`` it is class-conditional: the U-Net takes ``class_labels``, the index of the class (its name is
    the request's ``prompt``) or ``len(classes)`` for no class, and with ``guidance`` above 1 each step runs the
    no-class and the class half of one batch and follows ``eps_u + guidance * (eps_c - eps_u)`` (classifier-free
    guidance, the unconditional half first, as diffusers' pipelines do); at 1 or below, the class half alone.
    ``guidance`` is its default scale, ``default_class`` (default: the first class) its ``default_prompt``.
    """

    def __init__(self, unet: torch.nn.Module, scheduler: Any, name: str, *, kind: Literal["demo", "unet"] = "unet",
                 description: str | None = None, fingerprint: str | None = None,
                 classes: Sequence[str] | None = None, guidance: float = 2.0,
                 default_class: str | None = None) -> None:  # fmt: skip
        # size: one keyword per fact a loader may know of the model (kind, description, fingerprint, classes, default
        # guidance and class), each optional; the demo loader, the pipeline loader and the training's evaluation
        # each pass only the few they know
        self.unet, self.scheduler, self.name, self.target, self.kind = unet, scheduler, name, unet, kind
        #: The demo's ``config.json`` (``"unet"``, ``"scheduler"``, ``"training"``) when loaded from one.
        self.config: dict[str, Any] = {}
        size = unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.size = Size(height=int(height), width=int(width))
        self.description = description or f"{type(unet).__name__} {name}, {self.size}"
        self.fingerprint = fingerprint or f"unet:{name}:{type(scheduler).__name__}"
        self.classes = tuple(classes) if classes else None
        self.default_guidance = float(guidance)
        self.takes_prompt = self.guided = self.classes is not None
        if self.classes is not None:
            if default_class is not None and default_class not in self.classes:
                raise ValueError(f"{name}: default_class must be one of {list(self.classes)}, got {default_class!r}")
            self.default_prompt = default_class or self.classes[0]
            embeds = getattr(unet.config, "num_class_embeds", None)
            if embeds != len(self.classes) + 1:
                raise ValueError(f"{name}: {len(self.classes)} classes need a U-Net with num_class_embeds "
                                 f"{len(self.classes) + 1} (the classes and no class), got {embeds}")  # fmt: skip

    def check(self, request: Request) -> Request:
        what = "the demo model" if self.kind == "demo" else f"{self.name} (a UNet2DModel)"
        if self.classes is None:
            for flag, value in (("--prompt", request.prompt), ("--negative-prompt", request.negative_prompt),
                                ("--guidance", request.guidance), ("--frames", request.frames)):  # fmt: skip
                if value is not None:
                    raise ValueError(f"{flag}: {what} is unconditional and makes still images; leave {flag} out")
        else:
            if request.prompt not in self.classes:
                raise ValueError(f"--prompt: {what} is class-conditional; the prompt must name one of its classes "
                                 f"{list(self.classes)}, got {request.prompt!r}")  # fmt: skip
            for flag, value in (("--negative-prompt", request.negative_prompt), ("--frames", request.frames)):
                if value is not None:
                    raise ValueError(f"{flag}: {what} takes a class and a guidance scale; leave {flag} out")
        if request.size is not None and request.size != self.size:
            raise ValueError(f"--size {request.size}: {what} samples at its own size, {self.size}; leave --size out")
        if self.classes is None:
            return Request(steps=request.steps, size=self.size)
        guidance = self.default_guidance if request.guidance is None else float(request.guidance)
        return Request(steps=request.steps, prompt=request.prompt, guidance=guidance, size=self.size)

    def _eps(self, x: torch.Tensor, t: Any, request: Request) -> torch.Tensor:
        """The noise prediction the sampler follows: plain, class-conditional, or guided."""
        if self.classes is None:
            return self.unet(x, t).sample
        n = x.shape[0]
        label = self.classes.index(request.prompt)  # type: ignore[arg-type]
        scale = float(request.guidance or 0.0)
        if scale <= 1:
            labels = torch.full((n,), label, device=x.device, dtype=torch.long)
            return self.unet(x, t, class_labels=labels).sample
        labels = torch.tensor([len(self.classes)] * n + [label] * n, device=x.device)
        uncond, cond = self.unet(torch.cat([x, x]), t, class_labels=labels).sample.chunk(2)
        return uncond + scale * (cond - uncond)

    @torch.no_grad()
    def _sample(self, seeds: list[int], request: Request, on_step: OnStep | None, output: Output,
                batch_size: int) -> Any:  # fmt: skip
        parameter = next(self.unet.parameters())
        shape = (self.unet.config.in_channels, self.size.height, self.size.width)
        finals = []
        index = 0
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            scheduler = copy.deepcopy(self.scheduler)  # set_timesteps and step keep state: leave the model's alone
            scheduler.set_timesteps(request.steps)
            accepts = inspect.signature(scheduler.step).parameters
            kwargs: dict[str, Any] = {}
            if "eta" in accepts:
                kwargs["eta"] = 0.0
            if "generator" in accepts:  # ancestral samplers draw noise at each step: from the first seed, reproducibly
                kwargs["generator"] = torch.Generator().manual_seed(chunk[0])
            x = seed_noise(chunk, shape) * scheduler.init_noise_sigma
            x = x.to(device=parameter.device, dtype=parameter.dtype)  # noise drawn on the CPU: the same everywhere
            for i, t in enumerate(scheduler.timesteps):
                out = self._eps(scheduler.scale_model_input(x, t), t, request)
                step = scheduler.step(out, t, x, **kwargs)
                if on_step is not None:
                    on_step(Step(index + i, int(t), x, lambda s=scheduler, o=step, e=out, t=t, x=x:
                                 predicted_x0(s, o, e, t, x)))  # fmt: skip
                x = step.prev_sample
            index += len(scheduler.timesteps)
            finals.append(x)
        final = torch.cat(finals)
        if output == "tensor":
            return final
        return [to_pil(image) for image in to_unit_range(final)]


def _latent_factor(pipe: Any) -> int:
    """Pixels per latent position: the pipeline's ``vae_scale_factor``; Kandinsky 3's MoVQ (no such attribute: its
    pipeline works in 8 x 8 blocks) by its levels; 1 without an autoencoder."""
    factor = getattr(pipe, "vae_scale_factor", None)
    if factor:
        return int(factor)
    movq = getattr(pipe, "movq", None)
    if movq is not None:
        return 2 ** (len(movq.config.block_out_channels) - 1)
    return 1


def _default_size(pipe: Any, unet: Any, factor: int, params: Any) -> Size:
    """The size a pipeline samples without ``--size``: its U-Net's ``sample_size`` in pixels, or (a U-Net that does
    not say, Kandinsky 3's) the default ``height`` and ``width`` of the pipeline's call."""
    sample = getattr(unet.config, "sample_size", None)
    if sample is not None:
        sample = sample if isinstance(sample, int) else sample[0]
        return Size(height=sample * factor, width=sample * factor)
    defaults = [params[name].default if name in params else None for name in ("height", "width")]
    if all(isinstance(d, int) and not isinstance(d, bool) for d in defaults):
        return Size(height=defaults[0], width=defaults[1])
    raise ModelLoadError(f"{type(pipe).__name__}: neither its U-Net nor its call says what size it samples")


#: pipelines whose classifier-free-guidance batch puts the conditional half first (their code decides it, not the
#: model's structure): Stable Cascade's
_CONDITIONAL_FIRST = frozenset({"StableCascadePriorPipeline", "StableCascadeDecoderPipeline"})


class PipelineModel(Model):
    """A diffusers pipeline (text-to-image, text-to-video, or Stable Cascade's prior: text to image embeddings) from
    a local folder or the offline cache.

    Each step is read from the pipeline's scheduler (its ``step`` is wrapped for the duration of one call and
    restored after); latents are decoded with the pipeline's VAE for the pixel space. A pipeline whose call takes a
    ``generator`` gets one per sample, seeded with its seed (after its starting noise), so that a stochastic
    sampler's images depend on their seeds alone. Guided pipelines default to their own guidance scale.
    """

    kind = "pipeline"
    native: Space = "latent"

    def __init__(self, pipe: Any, name: str) -> None:
        self.pipe, self.name, self.target = pipe, name, pipe
        self.unet = find_unet(pipe)
        self.scheduler = pipe.scheduler
        self.video = bool(class_names(self.unet) & set(VIDEO_UNETS))
        params = inspect.signature(pipe.__call__).parameters
        _refuse_required_inputs(pipe, params)
        self.unconditional_first = type(pipe).__name__ not in _CONDITIONAL_FIRST
        #: Stable Cascade's prior: its latents are ``ceil(size / resolution_multiple)`` (42.67) positions wide
        multiple = getattr(getattr(pipe, "config", None), "resolution_multiple", None)
        self.resolution_multiple = float(multiple) if isinstance(multiple, (int, float)) and multiple > 0 else None
        self.generators = "generator" in params
        #: pipelines that round the size to one they were trained at (Hunyuan-DiT, PixArt) sample the size asked for
        self.binning = "use_resolution_binning" in params
        self.takes_prompt = "prompt" in params
        self.guided = "guidance_scale" in params
        default = params["guidance_scale"].default if self.guided else None
        if isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0:
            self.default_guidance = float(default)
        self.spaces = ("latent", "pixel") if getattr(pipe, "vae", None) is not None else ("latent",)
        self.factor = _latent_factor(pipe)
        self.size = _default_size(pipe, self.unet, self.factor, params)
        self.fingerprint = _pipeline_fingerprint(pipe, name)
        self.description = f"{type(pipe).__name__} {name}"

    @property
    def downsampling(self) -> int:
        """How many pixels one step of the deepest U-Net level spans: sizes must be multiples of it (any size for
        Stable Cascade's prior: its pipeline rounds the latent up, and its U-Net resizes a level that does not
        halve evenly)."""
        if self.resolution_multiple is not None:
            return 1
        levels = len(getattr(self.unet, "down_blocks", [])) or 1
        patch = getattr(self.unet.config, "patch_size", None)  # a transformer's patch tokens (Hunyuan-DiT)
        return self.factor * 2 ** (levels - 1) * (patch if isinstance(patch, int) and patch > 0 else 1)

    def check(self, request: Request) -> Request:
        if self.takes_prompt and request.prompt is None:
            raise ValueError(f"--prompt is required for the text-to-image pipeline {self.name}")
        if not self.takes_prompt and request.prompt is not None:
            raise ValueError(f"--prompt: {type(self.pipe).__name__} takes no prompt; leave --prompt out")
        if request.frames is not None and not self.video:
            raise ValueError(f"--frames: {self.name} makes still images; leave --frames out")
        size = request.size or self.size
        step = self.downsampling
        if size.width % step or size.height % step:
            raise ValueError(f"--size {size} must be a multiple of {step} for this model (its downsampling)")
        guidance = request.guidance if request.guidance is not None or not self.guided else self.default_guidance
        frames = (request.frames or 8) if self.video else None
        return Request(request.steps, request.prompt, request.negative_prompt, guidance, size, frames)

    def _noise(self, seeds: list[int], size: Size, frames: int | None) -> tuple[torch.Tensor, list[torch.Generator]]:
        """The starting latents of ``seeds`` and each sample's generator after them (:func:`seed_streams`)."""
        channels = self.unet.config.in_channels
        if self.resolution_multiple is not None:
            height, width = (math.ceil(n / self.resolution_multiple) for n in (size.height, size.width))
        else:
            height, width = size.height // self.factor, size.width // self.factor
        shape: tuple[int, ...] = (channels, height, width)
        if frames is not None:
            if "UNetSpatioTemporalConditionModel" in class_names(self.unet):
                shape = (frames, channels // 2, height, width)
            else:
                shape = (channels, frames, height, width)
        noise, generators = seed_streams(seeds, shape)
        return noise.to(device=self.pipe.device, dtype=self.unet.dtype), generators

    @contextlib.contextmanager
    def _steps_reported(self, on_step: OnStep | None) -> Iterator[None]:
        """The scheduler's ``step`` wrapped for one call so that ``on_step`` sees every step."""
        if on_step is None:
            yield
            return
        scheduler = self.pipe.scheduler
        original = scheduler.step
        had_own = "step" in vars(scheduler)
        index = [0]

        def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            on_step(Step(index[0], timestep_number(timestep), sample,
                         lambda: predicted_x0(scheduler, out, model_output, timestep, sample)))  # fmt: skip
            index[0] += 1
            return out if return_dict else out.to_tuple()

        scheduler.step = step
        try:
            yield
        finally:
            if had_own:
                scheduler.step = original
            else:
                del scheduler.step

    def _sample(self, seeds: list[int], request: Request, on_step: OnStep | None, output: Output,
                batch_size: int) -> Any:  # fmt: skip
        if output == "pil" and "pixel" not in self.spaces:
            raise ValueError(f"{self.name}: {type(self.pipe).__name__} has no VAE; it makes latents (Stable Cascade's "
                             "prior: image embeddings for its decoder), not pictures")  # fmt: skip
        results: list[Any] = []
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            assert request.size is not None
            latents, generators = self._noise(chunk, request.size, request.frames)
            kwargs: dict[str, Any] = dict(
                num_inference_steps=request.steps, height=request.size.height, width=request.size.width,
                latents=latents, output_type="latent" if output == "tensor" else "pil",
            )  # fmt: skip
            if self.generators:
                kwargs["generator"] = generators
            if self.takes_prompt:
                kwargs["prompt"] = [request.prompt] * len(chunk)
            if self.guided:
                kwargs["guidance_scale"] = request.guidance
            if request.negative_prompt:
                kwargs["negative_prompt"] = [request.negative_prompt] * len(chunk)
            if request.frames is not None:
                kwargs["num_frames"] = request.frames
            if self.binning:
                kwargs["use_resolution_binning"] = False
            with self._steps_reported(on_step):
                out = self.pipe(**kwargs)
            if output == "tensor":
                results.append(next(getattr(out, key) for key in ("frames", "images", "image_embeddings")
                                    if hasattr(out, key)))  # fmt: skip
            elif hasattr(out, "frames"):
                results += [list(clip) for clip in out.frames]
            else:
                results += list(out.images)
        return torch.cat(results) if output == "tensor" else results

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

    def sampler_name(self, steps: int) -> str:
        return f"{type(self.pipe.scheduler).__name__} {steps} steps"


# -- loading --------------------------------------------------------------------------------------------------------


def _refuse_required_inputs(pipe: Any, params: Any) -> None:
    """:class:`ModelLoadError` for a pipeline whose call needs an input the applications do not give (they sample
    from seeds, a prompt and settings): Stable Cascade's decoder needs the prior's image embeddings."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty and p.kind in kinds]
    if not required:
        return
    hint = ""
    if "image_embeddings" in required:
        hint = (" Stable Cascade's decoder (stage B) turns the prior's image embeddings into pictures: give "
                "the prior pipeline's folder (stage C), or apply FreeU to stage B in Python: "
                "freeu.apply(pipe.decoder)")  # fmt: skip
    raise ModelLoadError(f"{type(pipe).__name__} needs {', '.join(required)} in every call, which the applications "
                         f"do not give (they sample from seeds, a prompt and settings).{hint}")  # fmt: skip


def _pipeline_fingerprint(pipe: Any, name: str) -> str:
    """What identifies a pipeline's images in resumable runs: what was named, the pipeline and scheduler classes."""
    return f"pipeline:{name}:{type(pipe).__name__}:{type(pipe.scheduler).__name__}"


def is_demo_folder(model: str | Path | None) -> Path | None:
    """The weights folder ``model`` names in the demo's format (``"demo"``, ``"demo-classes"`` or ``None``, which
    is :data:`DEFAULT_MODEL`: a bundled one), else ``None``.

    A folder in the demo's format holds ``unet.safetensors`` and a ``config.json`` with ``"unet"`` and
    ``"scheduler"`` entries (what :func:`freeu.apps.demo.train.export_weights` writes).
    """
    from .demo_model import CLASSES_WEIGHTS_DIR, WEIGHTS_DIR

    if model is None:
        model = DEFAULT_MODEL
    if model == DEMO:
        return WEIGHTS_DIR
    if model == DEMO_CLASSES:
        return CLASSES_WEIGHTS_DIR
    path = Path(model).expanduser()
    if not ((path / "unet.safetensors").is_file() and (path / "config.json").is_file()):
        return None
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return path if isinstance(config, dict) and {"unet", "scheduler"} <= set(config) else None


def load_demo(folder: str | Path | None = None, *, device: str = "cpu", dtype: str = "float32") -> UNetModel:
    """The bundled demo model (``folder=None``) or one exported in its format, with its DDIM sampler (built by
    :mod:`freeu.apps.demo_model`, which finds the bundled weights as files: the demo command's package is not
    imported)."""
    from .demo_model import WEIGHTS_DIR, build_scheduler, count_parameters, load_exported

    directory = WEIGHTS_DIR if folder is None else Path(folder)
    unet, config = load_exported(directory, dtype=DTYPES[dtype])
    unet.to(device)
    digest = hashlib.sha256((directory / "unet.safetensors").read_bytes()).hexdigest()[:16]
    training = config.get("training", {})
    ema = f", EMA step {training['ema_step']}" if training.get("ema_step") is not None else ""
    description = (
        f"demo U-Net from {directory} ({count_parameters(unet) / 1e6:.2f}M parameters{ema}, weights sha256 {digest}...)"
    )
    name = DEMO if folder is None else str(folder)
    classes = config.get("classes")
    if classes:
        description += f", class-conditional: {len(classes)} classes, default guidance {config.get('guidance', 2.0):g}"
    model = UNetModel(unet, build_scheduler("ddim", config["scheduler"]), name, kind="demo", description=description,
                      fingerprint=f"demo-unet:{digest}", classes=classes,
                      guidance=config.get("guidance", 2.0), default_class=config.get("default_class"))  # fmt: skip
    model.config = config
    return model


def load_pipeline(model: str, dtype: str = "float32", device: str = "cpu") -> Any:
    """A diffusers pipeline from a local folder or the local Hugging Face cache (never the network)."""
    try:
        import diffusers
    except ImportError as error:
        raise ModelLoadError("this command needs diffusers: pip install 'freeu[diffusers]'") from error
    local = Path(model).expanduser()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(
            str(local) if local.exists() else model, dtype=DTYPES[dtype], local_files_only=True
        )
    except Exception as error:  # diffusers/huggingface_hub raise OSError, ValueError or their own errors
        if local.exists():
            raise ModelLoadError(f"could not load a diffusers pipeline from the folder {local}: {error}") from error
        raise ModelLoadError(
            f"{model!r} is neither a local folder nor a pipeline in the local Hugging Face cache, and this command "
            "never downloads. On a machine with network access run `hf download "
            f"{model}` (huggingface_hub; it fills the cache, which you can copy here), or save the pipeline with "
            "pipe.save_pretrained(FOLDER) and pass that folder."
        ) from None
    return pipe.to(device)


def load_model(model: str | None, *, device: str | None = None, dtype: str | None = None) -> Model:
    """The :class:`Model` that ``--model`` names (see the module's docs), on ``device`` (default
    :func:`default_device`) in ``dtype`` (default float32); :class:`ModelLoadError` when it cannot be had offline."""
    device = device or default_device()
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    folder = is_demo_folder(model)
    if folder is not None:
        try:
            loaded = load_demo(None if (model or DEFAULT_MODEL) == DEMO else folder, device=device, dtype=dtype)
            if (model or DEFAULT_MODEL) == DEMO_CLASSES:
                loaded.name = DEMO_CLASSES
            return loaded
        except FileNotFoundError as error:
            raise ModelLoadError(str(error)) from None
    assert model is not None
    pipe = load_pipeline(model, dtype, device)
    pipe.set_progress_bar_config(disable=True)
    unet = find_unet(pipe)
    if "UNet2DModel" in class_names(unet) and "prompt" not in inspect.signature(pipe.__call__).parameters:
        return UNetModel(unet, pipe.scheduler, str(model), fingerprint=_pipeline_fingerprint(pipe, str(model)))
    return PipelineModel(pipe, str(model))


def _config_file(model: str, name: str) -> Path | None:
    """``name`` (e.g. ``unet/config.json``) of a local pipeline folder or of a cached hub pipeline, without loading."""
    local = Path(model).expanduser()
    if local.exists():
        path = local / name
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(model, name)
    except Exception:  # an id huggingface_hub rejects: the loader will say what is wrong
        return None
    return Path(found) if isinstance(found, str) else None


def peek_classes(model: str | None) -> list[str] | None:
    """The classes of a class-conditional demo model (from its ``config.json``, before loading), else ``None``."""
    folder = is_demo_folder(model)
    if folder is None:
        return None
    try:
        classes = json.loads((folder / "config.json").read_text()).get("classes")
    except (OSError, ValueError):
        return None
    return [str(c) for c in classes] if isinstance(classes, list) and classes else None


def peek_takes_prompt(model: str | None) -> bool:
    """Whether ``--model`` names a text-conditioned pipeline, read from its ``model_index.json`` alone (a text
    encoder or tokenizer among its parts), or a class-conditional demo model (``classes`` in its ``config.json``);
    ``True`` when that file is not on disk, ``False`` for the bundled (unconditional) demo model."""
    if is_demo_folder(model) is not None:  # a class-conditional demo model takes its class as the prompt
        return peek_classes(model) is not None
    assert model is not None
    index = _config_file(model, "model_index.json")
    if index is None:
        return True
    try:
        parts = json.loads(index.read_text())
    except (OSError, ValueError):
        return True
    return not isinstance(parts, dict) or bool({"text_encoder", "tokenizer"} & set(parts))


def peek_downsampling(model: str) -> int | None:
    """A pipeline's downsampling (sizes must be multiples of it) read from its config files alone, before any
    weights are loaded; ``None`` when they are not on disk."""
    unet_config, vae_config = _config_file(model, "unet/config.json"), _config_file(model, "vae/config.json")
    if unet_config is None or vae_config is None:
        return None
    try:
        levels = len(json.loads(unet_config.read_text())["down_block_types"])
        vae_levels = len(json.loads(vae_config.read_text())["block_out_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return 2 ** (vae_levels - 1) * 2 ** (levels - 1)
