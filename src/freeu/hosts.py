"""FreeU for hosts whose U-Net calls a patch at every skip join: ComfyUI's and Forge's ``output_block_patch``.

Those hosts (their ``openaimodel.UNetModel``) call each registered patch as ``h, hsp = patch(h, hsp,
transformer_options)`` just before each output block's ``cat([h, hsp])``: ``h`` is the backbone feature, ``hsp`` the
skip feature, and ``transformer_options["block"]`` is ``("output", index)``. The host keeps the patch on its own
per-model clone, so nothing is installed on modules that other models share and nothing stays behind after a run;
:func:`output_block_patch` builds such a patch from a :class:`freeu.FreeUConfig`, with the same operators as
:func:`freeu.apply` (the backbone scaling and the FFT-free skip filter, never writing into the host's tensors).

Stages: under the official convention by the backbone width (4x and 2x ``model_channels``), under the diffusers
convention by the decoder level of the output block (``index // (num_res_blocks + 1)``). A step window needs the
position along the trajectory, which only the host knows: ``progress(transformer_options)`` returns it in ``[0, 1]``
(0 = pure noise), one value or one per latent sample, with the meaning :class:`freeu.FreeUConfig` gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .backbone import scale_backbone
from .config import FreeUConfig
from .fourier import fourier_filter
from .hooks import window_weight

__all__ = ["Progress", "output_block_patch"]

#: ``progress(transformer_options)``: the trajectory position of this call in ``[0, 1]``, a number or one per sample.
Progress = Callable[[dict[str, Any]], "float | torch.Tensor"]
Patch = Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]


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
        The patch. Joins outside both stages, identity factors and calls outside the window return ``h`` and
        ``hsp`` themselves; otherwise new tensors (the host's are never written).

    Raises:
        ValueError: a per-sample config, a window without ``progress``, the diffusers convention without
            ``num_res_blocks``, a width that is not a positive integer.
    """
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
    by_width = {4 * model_channels: 1, 2 * model_channels: 2}

    def stage_of(h: torch.Tensor, options: dict[str, Any]) -> int | None:
        if config.convention == "official":
            return by_width.get(int(h.shape[1]))
        block = options.get("block")
        if not (isinstance(block, (tuple, list)) and len(block) == 2 and block[0] == "output"):
            raise ValueError(
                f"convention='diffusers' needs transformer_options['block'] = ('output', i), got {block!r}"
            )
        assert num_res_blocks is not None
        return {0: 1, 1: 2}.get(int(block[1]) // (num_res_blocks + 1))

    def patch(h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        stage = stage_of(h, transformer_options)
        if stage is None or config.is_identity(stage):
            return h, hsp
        b, s = config.stage_factors(stage)
        if config.windowed:
            assert progress is not None
            position = torch.as_tensor(progress(transformer_options), dtype=torch.float32, device=h.device).reshape(-1)
            weight = window_weight(position, config.start, config.stop, config.ramp)
            if not torch.compiler.is_compiling():
                if not bool((weight > 0).any()):
                    return h, hsp  # outside the window: exactly what the host built
                if bool((weight == 1).all()):
                    weight = None
            if weight is not None:
                if h.shape[0] % weight.numel():
                    raise ValueError(
                        f"progress gave {weight.numel()} values for a batch of {h.shape[0]}: it must divide it"
                    )
                # hosts batch the guidance branches one after the other: [cond..., uncond...]
                weight = weight.repeat(h.shape[0] // weight.numel())
                b = 1.0 + weight * (float(b) - 1.0)
                s = (1.0 + weight * (float(s) - 1.0)).view(-1, 1)
        return scale_backbone(h, b, config.version), fourier_filter(hsp, config.threshold, s)

    return patch
