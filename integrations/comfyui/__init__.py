"""ComfyUI node pack "FreeU (freeu)": FreeU from the ``freeu`` library on ComfyUI's own per-model patch mechanism.

Install: copy or link this folder into ``ComfyUI/custom_nodes/`` and install the ``freeu`` library into ComfyUI's
Python (``pip install`` the repository this folder comes from).
The node clones the MODEL and registers one ``output_block_patch`` on the clone (what ComfyUI's built-in FreeU nodes
do), built by :func:`freeu.output_block_patch`: nothing is installed on the shared diffusion model, a branch without
the node samples as if the node did not exist, and a second FreeU (freeu) node later in the chain replaces the
first one's patch instead of stacking. The maths is the library's (no FFT on any path, so every device ComfyUI runs
on works without a CPU fallback; a constant feature map gets the full factor where the authors' version 2 divides
by zero).
"""

from __future__ import annotations

from typing import Any

from comfy_api.latest import IO, ComfyExtension
from typing_extensions import override

import freeu

MARK = "_freeu_comfyui_patch"
CUSTOM = "custom"
AUTO = "auto"


def _unet_config(model: Any) -> dict[str, Any]:
    """The LDM U-Net's config of a MODEL, or a ``ValueError`` naming what was found instead."""
    base = model.model
    diffusion = getattr(base, "diffusion_model", None)
    config = dict(getattr(getattr(base, "model_config", None), "unet_config", None) or {})
    kind = type(diffusion).__name__
    if kind != "UNetModel" or "model_channels" not in config:
        raise ValueError(
            f"FreeU (freeu) needs a U-Net with skip joins (ComfyUI's UNetModel: SD 1.x, SD 2.x, SDXL and their "
            f"fine-tunes); this model's diffusion model is {kind} ({type(base).__name__}), which has none"
        )
    return config


def _auto_preset(config: dict[str, Any]) -> str:
    """The preset of the U-Net's layout, from its structure: SDXL has added conditioning and 2048-wide context."""
    context = config.get("context_dim")
    if config.get("adm_in_channels") and context == 2048:
        return "sdxl"
    if context == 1024:
        return "sd21"
    if context == 768 and config.get("model_channels") == 320:
        return "sd15"
    raise ValueError(
        f"preset auto knows the SD 1.x, SD 2.x and SDXL U-Nets; this one has model_channels "
        f"{config.get('model_channels')} and context_dim {context}: choose a preset or custom"
    )


def _percent_at(sampling: Any, sigma: float) -> float:
    """The percent of the schedule whose sigma is ``sigma`` (``percent_to_sigma`` decreases from 0 to 1)."""
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if float(sampling.percent_to_sigma(middle)) > sigma:
            low = middle
        else:
            high = middle
    return (low + high) / 2


class FreeUNode(IO.ComfyNode):
    """FreeU (Si et al., CVPR 2024) with the ``freeu`` library: both versions, both stage conventions, a step window."""

    @classmethod
    def define_schema(cls) -> IO.Schema:
        presets = [CUSTOM, AUTO, *sorted(freeu.PRESETS)]
        return IO.Schema(
            node_id="FreeU_freeu",
            display_name="FreeU (freeu)",
            category="model_patches/unet",
            description="FreeU from the freeu library: exact version 1 and 2, official or diffusers stages, a step "
            "window; no FFT, so no CPU fallback on any device.",
            inputs=[
                IO.Model.Input("model"),
                IO.Combo.Input(
                    "preset",
                    options=presets,
                    default=CUSTOM,
                    tooltip="custom: the factors, version and convention below; a preset or auto (from "
                    "the U-Net's layout) sets all of them, and the inputs below are not used",
                ),
                IO.Float.Input(
                    "b1", default=1.3, min=0.0, max=10.0, step=0.01, tooltip="backbone factor, stage 1 (deepest)"
                ),
                IO.Float.Input("b2", default=1.4, min=0.0, max=10.0, step=0.01, tooltip="backbone factor, stage 2"),
                IO.Float.Input(
                    "s1",
                    default=0.9,
                    min=0.0,
                    max=10.0,
                    step=0.01,
                    tooltip="skip factor, stage 1: gain of the lowest frequencies",
                ),
                IO.Float.Input("s2", default=0.2, min=0.0, max=10.0, step=0.01, tooltip="skip factor, stage 2"),
                IO.Combo.Input(
                    "version",
                    options=["2", "1"],
                    default="2",
                    tooltip="2: the paper's structure-related map (FreeU_V2); 1: a constant (FreeU)",
                ),
                IO.Combo.Input(
                    "convention",
                    options=["official", "diffusers"],
                    default="official",
                    tooltip="stage by backbone width (authors, ComfyUI, A1111) or by decoder level (diffusers)",
                ),
                IO.Int.Input("threshold", default=1, min=1, max=64, tooltip="half-width of the damped square"),
                IO.Float.Input(
                    "start_percent",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="FreeU from this fraction of the schedule",
                ),
                IO.Float.Input(
                    "end_percent",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="FreeU until this fraction of the schedule",
                ),
                IO.Float.Input(
                    "ramp",
                    default=0.0,
                    min=0.0,
                    max=0.5,
                    step=0.001,
                    tooltip="linear fade at both ends of the window, as a fraction of the schedule",
                ),
            ],  # fmt: skip
            outputs=[IO.Model.Output()],
        )

    @classmethod
    def execute(
        cls, model: Any, preset: str, b1: float, b2: float, s1: float, s2: float, version: str, convention: str,
        threshold: int, start_percent: float, end_percent: float, ramp: float,
    ) -> IO.NodeOutput:  # fmt: skip
        unet = _unet_config(model)
        window = dict(start=start_percent, stop=end_percent, ramp=ramp)
        if preset == CUSTOM:
            config = freeu.FreeUConfig(b1, b2, s1, s2, version=int(version), convention=convention,
                                       threshold=threshold, **window)  # fmt: skip
        else:
            name = _auto_preset(unet) if preset == AUTO else preset
            config = freeu.get_preset(name).config.replace(threshold=threshold, **window)
        sampling = model.get_model_object("model_sampling")
        known: dict[float, float] = {}

        def progress(transformer_options: dict[str, Any]) -> list[float]:
            """ComfyUI's own percent of the schedule at each sample's sigma: the inverse of the model's
            ``percent_to_sigma`` (what start_percent/end_percent mean in every ComfyUI node), for any schedule."""
            sigmas = [float(s) for s in transformer_options["sigmas"].reshape(-1)]
            for sigma in sigmas:
                if sigma not in known:
                    known[sigma] = _percent_at(sampling, sigma)
            return [known[s] for s in sigmas]

        levels = unet.get("num_res_blocks")
        per_level = levels[0] if isinstance(levels, (list, tuple)) and len(set(levels)) == 1 else levels
        patch = freeu.output_block_patch(
            config, model_channels=int(unet["model_channels"]),
            num_res_blocks=per_level if isinstance(per_level, int) else None,
            progress=progress if config.windowed else None,
        )  # fmt: skip
        setattr(patch, MARK, True)
        clone = model.clone()
        patches = clone.model_options.setdefault("transformer_options", {}).setdefault("patches", {})
        earlier = patches.get("output_block_patch", [])
        patches["output_block_patch"] = [p for p in earlier if not getattr(p, MARK, False)]  # replace, never stack
        clone.set_model_output_block_patch(patch)
        return IO.NodeOutput(clone)


class FreeUExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[IO.ComfyNode]]:
        return [FreeUNode]


async def comfy_entrypoint() -> FreeUExtension:
    return FreeUExtension()
