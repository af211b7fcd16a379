"""FreeU for hosts whose U-Net calls a patch at every skip join: ComfyUI's and Forge's ``output_block_patch``.

Those hosts (their ``openaimodel.UNetModel``) call each registered patch as ``h, hsp = patch(h, hsp,
transformer_options)`` just before each output block's ``cat([h, hsp])``: ``h`` is the backbone feature, ``hsp`` the
skip feature, and ``transformer_options["block"]`` is ``("output", index)``. The host keeps the patch on its own
per-model clone, so nothing is installed on modules that other models share and nothing stays behind after a run;
:func:`output_block_patch` builds such a patch from a :class:`freeu.FreeUConfig`, with the same operators as
:func:`freeu.apply` (the backbone scaling and the skip filter, never writing into the host's tensors); the filter
takes its FFT-free projection at every published setting, and falls back to it where a device cannot run the FFT
that a large square would use.

Stages: under the official convention by the backbone width (4x and 2x ``model_channels``), under the diffusers
convention by the decoder level of the output block (``index // (num_res_blocks + 1)``). A step window needs the
position along the trajectory, which only the host knows: ``progress(transformer_options)`` returns it in ``[0, 1]``
(0 = pure noise), one value or one per latent sample, with the meaning :class:`freeu.FreeUConfig` gives it.

Models whose joins have no patch point in the host (Stable Cascade's, inside its residual blocks; Hunyuan-DiT's long
skips) get :func:`freeu.apply`'s hooks for one model call at a time: :func:`hooked_call` runs a call with the hooks
on the host's diffusion model and takes them off when it returns or fails, so the shared model carries nothing
between calls, and a branch of the workflow without FreeU calls the model as it is. The host runs it from a
per-clone wrapper around its model call (ComfyUI's ``APPLY_MODEL`` wrapper).

Both hosts keep the U-Net's settings as a dict (ComfyUI's ``model_config.unet_config``, Forge's
``diffusion_model.config``) and give each model a ``percent_to_sigma`` (the noise level at a fraction of the schedule).
:func:`ldm_output_block_patch` builds the patch from those two, and :func:`set_output_block_patch` registers a patch on
the host's clone in place of an earlier one. The settings dict is also what ``preset="auto"`` reads in a host
(:func:`freeu.settings.resolve` with it as the model, :func:`freeu.settings.detect_preset`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch

from . import join as freeu_join
from .config import FreeUConfig, Stage

__all__ = [
    "Progress",
    "at_strength",
    "hooked_call",
    "ldm_output_block_patch",
    "output_block_patch",
    "schedule_progress",
    "set_output_block_patch",
]

#: ``progress(transformer_options)``: the trajectory position of this call in ``[0, 1]``, a number or one per sample.
Progress = Callable[[dict[str, Any]], "float | torch.Tensor"]
Patch = Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]
T = TypeVar("T")


def output_block_patch(
    config: FreeUConfig,
    *,
    model_channels: int,
    num_res_blocks: int | None = None,
    progress: Progress | None = None,
) -> Patch:
    """A patch ``(h, hsp, transformer_options) -> (h, hsp)`` that applies ``config`` at the joins of its stages.

    Args:
        config: the settings; one value per factor (per-sample factors are for :func:`freeu.apply`).
        model_channels: the U-Net's base width (LDM's ``model_channels``): the official convention gives stage 1 to
            joins whose backbone is 4x as wide and stage 2 to those 2x as wide.
        num_res_blocks: residual blocks per level (LDM's ``num_res_blocks``); needed by the diffusers convention,
            which picks the stage by the decoder level of ``transformer_options["block"]``.
        progress: the trajectory position of a call (see the module's docs); needed by a step window.

    Returns:
        The patch, with its settings as its ``freeu_config`` attribute. Joins outside both stages, identity factors
        and calls outside the window return ``h`` and ``hsp`` themselves; otherwise new tensors (the host's are
        never written).

    Raises:
        ValueError: a per-sample config, a window without ``progress``, the diffusers convention without
            ``num_res_blocks``, a width that is not a positive integer.
    """
    # size: a quarter is the docstring; the rest checks the settings once and returns the patch, whose stage lookup
    # and step window are closures over them (the host calls the patch alone)
    if not isinstance(config, FreeUConfig):
        raise TypeError(f"config must be a freeu.FreeUConfig, got {type(config).__name__}")
    if config.batch_size is not None:
        raise ValueError("a host patch takes one value per factor; per-sample factors are for freeu.apply")
    if isinstance(model_channels, bool) or not isinstance(model_channels, int) or model_channels < 1:
        raise ValueError(f"model_channels must be an int >= 1, got {model_channels!r}")
    if config.convention == "diffusers" and (
        isinstance(num_res_blocks, bool) or not isinstance(num_res_blocks, int) or num_res_blocks < 1
    ):
        raise ValueError(f"convention='diffusers' needs num_res_blocks (an int >= 1), got {num_res_blocks!r}")
    if config.windowed and progress is None:
        raise ValueError("a step window (start, stop, ramp) needs progress: the host's trajectory position")
    by_width = freeu_join.stage_widths(model_channels, config.num_stages)

    def stage_of(h: torch.Tensor, options: dict[str, Any]) -> int | None:
        if config.convention == "official":
            return by_width.get(int(h.shape[1]))
        block = options.get("block")
        if not (isinstance(block, (tuple, list)) and len(block) == 2 and block[0] == "output"):
            raise ValueError(
                f"convention='diffusers' needs transformer_options['block'] = ('output', i), got {block!r}"
            )
        assert num_res_blocks is not None
        level = int(block[1]) // (num_res_blocks + 1)
        return level + 1 if level < config.num_stages else None

    def patch(h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        stage = stage_of(h, transformer_options)
        if stage is None or config.is_identity(stage):
            return h, hsp
        settings = config.stage(stage)
        factors = None
        if config.windowed:
            assert progress is not None
            position = torch.as_tensor(progress(transformer_options), dtype=torch.float32, device=h.device).reshape(-1)
            weight = freeu_join.window_strength(
                freeu_join.window_weight(position, config.start, config.stop, config.ramp)
            )
            if isinstance(weight, float) and weight == 0.0:
                return h, hsp  # outside the window: exactly what the host built
            if isinstance(weight, torch.Tensor):
                if h.shape[0] % weight.numel():
                    raise ValueError(
                        f"progress gave {weight.numel()} values for a batch of {h.shape[0]}: it must divide it"
                    )
                # hosts batch the guidance branches one after the other: [cond..., uncond...]
                weight = weight.repeat(h.shape[0] // weight.numel())
            factors = tuple(freeu_join.blend(float(v), weight) for v in (settings.b, settings.s, settings.high))
        # the filter's own choice: the projection up to 64 modes (every published setting), an FFT above where the
        # device has one, else the projection (exact too, and costlier for large squares)
        return freeu_join.apply_join(h, hsp, settings, version=config.version, threshold=config.threshold,
                                     factors=factors)  # fmt: skip

    patch.freeu_config = config  # type: ignore[attr-defined]
    return patch


def schedule_progress(percent_to_sigma: Callable[[float], float]) -> Progress:
    """``progress`` for hosts that pass each sample's noise level as ``transformer_options["sigmas"]``: the fraction
    of the schedule at that level, the inverse of the model's ``percent_to_sigma`` (which falls from the largest
    level at 0 to 0 at 1; what start/end percentages mean in ComfyUI and Forge, for any sampler and schedule).
    For the usual discrete schedules that fraction is ``1 - timestep / 999``, :class:`freeu.FreeUConfig`'s measure.
    Each level is solved once (bisection to 1e-12) and remembered."""
    known: dict[float, float] = {}

    def fraction(sigma: float) -> float:
        low, high = 0.0, 1.0
        for _ in range(40):
            middle = (low + high) / 2
            if float(percent_to_sigma(middle)) > sigma:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    def progress(transformer_options: dict[str, Any]) -> list[float]:
        sigmas = transformer_options.get("sigmas")
        if sigmas is None:
            raise ValueError("a step window needs transformer_options['sigmas'] (the noise level of each sample)")
        levels = [float(s) for s in torch.as_tensor(sigmas).reshape(-1)]
        for sigma in levels:
            if sigma not in known:
                known[sigma] = fraction(sigma)
        return [known[s] for s in levels]

    return progress


def ldm_output_block_patch(
    config: FreeUConfig,
    unet_config: Mapping[str, Any],
    *,
    percent_to_sigma: Callable[[float], float] | None = None,
) -> Patch:
    """:func:`output_block_patch` for a host's LDM U-Net, from the settings dict the host keeps for it.

    Args:
        config: the settings (one value per factor).
        unet_config: the U-Net's LDM settings: ``model_channels`` and ``num_res_blocks`` (an int, or one per level,
            all equal, as ComfyUI and Forge keep it).
        percent_to_sigma: the model's noise level at a fraction of the schedule; needed by a step window, whose
            position comes from ``transformer_options["sigmas"]`` (:func:`schedule_progress`).

    Raises:
        ValueError: no ``model_channels`` (not a U-Net with skip joins), a window without ``percent_to_sigma``, and
            what :func:`output_block_patch` refuses.
    """
    channels = unet_config.get("model_channels")
    if channels is None:
        raise ValueError("unet_config has no model_channels: FreeU needs a U-Net with skip joins (the LDM layout)")
    if config.windowed and percent_to_sigma is None:
        raise ValueError("a step window (start, stop, ramp) needs percent_to_sigma: the model's noise schedule")
    levels = unet_config.get("num_res_blocks")
    if isinstance(levels, (list, tuple)):
        levels = levels[0] if levels and len(set(levels)) == 1 else None
    return output_block_patch(
        config,
        model_channels=int(channels),
        num_res_blocks=levels,
        progress=schedule_progress(percent_to_sigma) if config.windowed else None,
    )


def set_output_block_patch(patcher: Any, patch: Patch) -> None:
    """Register ``patch`` on a host's model patcher (ComfyUI's or Forge's ``ModelPatcher``; give it a clone) in
    place of any patch of this library registered before (one with a ``freeu_config``): settings replace, they never
    stack. Other output-block patches are kept, in their order."""
    options = patcher.model_options.setdefault("transformer_options", {})
    patches = options.setdefault("patches", {})
    patches["output_block_patch"] = [p for p in patches.get("output_block_patch", []) if not hasattr(p, "freeu_config")]
    patcher.set_model_output_block_patch(patch)


def at_strength(config: FreeUConfig, weights: Sequence[float]) -> FreeUConfig | None:
    """``config`` without its window, at the window strength of each sample of a call (``weights`` in ``[0, 1]``,
    one per sample, or one for all): ``None`` where every weight is 0 (leave the model alone), the config's own
    factors where every weight is 1, else each stage's ``b``, ``s`` and ``high`` as ``1 + w (v - 1)``, per sample
    where the weights differ (``high`` takes one value: it needs one weight for all)."""
    values = [float(w) for w in weights]
    plain = config.replace(start=0.0, stop=1.0, ramp=0.0)
    if not values or all(w == 0.0 for w in values):
        return None
    if all(w == 1.0 for w in values):
        return plain
    same = len(set(values)) == 1

    def blend(v: Any) -> Any:
        return 1.0 + values[0] * (v - 1.0) if same else tuple(1.0 + w * (v - 1.0) for w in values)

    stages = []
    for k in range(1, config.num_stages + 1):
        stage = config.stage(k)
        if not same and stage.high != 1.0:
            raise ValueError(
                f"stage {k}'s high={stage.high:g} takes one value, and this call's samples are at different points of "
                "the window's ramp; use ramp=0 or leave high at 1"
            )
        stages.append(Stage(blend(stage.b), blend(stage.s), blend(stage.high) if same else 1.0, stage.window,
                            stage.cutoff))  # fmt: skip
    return FreeUConfig.from_stages(stages, version=config.version, convention=config.convention,
                                   threshold=config.threshold)  # fmt: skip


def hooked_call(
    config: FreeUConfig, *, percent_to_sigma: Callable[[float], float] | None = None
) -> Callable[[torch.nn.Module, dict[str, Any], Callable[[], T]], T]:
    """``run(model, transformer_options, call)``: ``call()`` with :func:`freeu.apply`'s hooks on ``model`` (the
    host's diffusion model, of a family :func:`freeu.plan` knows) at this call's window strength, taken off when
    the call returns or fails; outside the window, ``call()`` alone. The window's position comes from
    ``transformer_options["sigmas"]`` and the model's ``percent_to_sigma`` (:func:`schedule_progress`), as in
    :func:`ldm_output_block_patch`.

    Raises:
        ValueError: per-sample factors (a host takes one value per factor), a window without ``percent_to_sigma``.
    """
    from . import hooks

    if not isinstance(config, FreeUConfig):
        raise TypeError(f"config must be a freeu.FreeUConfig, got {type(config).__name__}")
    if config.batch_size is not None:
        raise ValueError("a host takes one value per factor; per-sample factors are for freeu.apply")
    if config.windowed and percent_to_sigma is None:
        raise ValueError("a step window (start, stop, ramp) needs percent_to_sigma: the model's noise schedule")
    progress = schedule_progress(percent_to_sigma) if config.windowed and percent_to_sigma is not None else None

    def run(model: torch.nn.Module, transformer_options: dict[str, Any], call: Callable[[], T]) -> T:
        settings: FreeUConfig | None = config
        if progress is not None:
            position = torch.tensor(progress(transformer_options), dtype=torch.float32)
            weights = freeu_join.window_weight(position, config.start, config.stop, config.ramp)
            settings = at_strength(config, weights.tolist())
        if settings is None:
            return call()
        with warnings.catch_warnings():  # a stage with no join here was said once, when the host built the patch
            warnings.simplefilter("ignore")
            handle = hooks.apply(model, settings)
        try:
            return call()
        finally:
            handle.remove()

    run.freeu_config = config  # type: ignore[attr-defined]
    return run
