"""ComfyUI node pack "FreeU (freeu)": FreeU from the ``freeu`` library on ComfyUI's own per-model patch mechanism.

Install: ComfyUI Manager or the Comfy Registry (they install ``requirements.txt``), or put this folder into
``ComfyUI/custom_nodes/freeu`` and ``pip install -r requirements.txt`` with ComfyUI's Python. Preset files
(``.toml``, as ``freeu tune`` writes) go into ``ComfyUI/models/freeu_presets/`` (or a ``freeu_presets`` entry of
``extra_model_paths.yaml``): the node lists the files there and opens no other path, so a workflow sent to a shared
server cannot make it read anything else.
The node clones the MODEL and registers one ``output_block_patch`` on the clone (what ComfyUI's built-in FreeU nodes
do), built by :func:`freeu.output_block_patch`: nothing is installed on the shared diffusion model, a branch without
the node samples as if the node did not exist, and a second FreeU (freeu) node later in the chain replaces the
first one's patch instead of stacking. Stable Cascade (stages C and B) and Hunyuan-DiT have no patch point at their
joins: there the clone gets an ``APPLY_MODEL`` wrapper that puts the library's hooks on the diffusion model for
each of the clone's model calls and takes them off when it returns (:func:`freeu.hosts.hooked_call`), so between
calls, and in every other branch, the shared model carries nothing. Models without skip joins (SD3, Flux, PixArt,
...) are refused, naming the model. The maths is the library's (no FFT at the published threshold, so every device
ComfyUI runs on works without a CPU fallback, and a larger square falls back to the exact projection where a device
has no FFT; a constant feature map gets the full factor where the authors' version 2 divides by zero).
"""

from __future__ import annotations

import os
from typing import Any

import folder_paths
from comfy_api.latest import IO, ComfyExtension
from typing_extensions import override

try:
    import freeu
    from freeu import hosts
    from freeu.settings import AUTO, DEFAULTS, Settings, controls_settings, resolve
except ImportError as error:  # ComfyUI logs this and goes on without the node
    _HERE = os.path.dirname(os.path.abspath(__file__))
    raise ImportError(
        f"FreeU (freeu) needs the freeu library in ComfyUI's Python ({error}). Install it with ComfyUI Manager, or run "
        f"ComfyUI's Python with: -m pip install -r {os.path.join(_HERE, 'requirements.txt')}"
    ) from error

CUSTOM = "custom"
#: ComfyUI's model-folder name for preset files: ``models/freeu_presets`` unless ``extra_model_paths.yaml`` adds more.
PRESET_FOLDER = "freeu_presets"
#: The option ComfyUI's own nodes give rarely used inputs (the frontend can fold them away).
ADVANCED = {"advanced": True}
#: The ``preset_file`` choice that leaves ``preset`` in charge.
NO_FILE = "none"
#: The node's words for FreeU's fields where they differ (errors name the input the user sees).
NAMES = {"start": "start_percent", "stop": "end_percent"}
#: The key of the node's model-call wrapper on a clone (a later FreeU (freeu) node replaces it).
WRAPPER_KEY = "freeu"


def _target(model: Any) -> tuple[dict[str, Any] | None, Any]:
    """``(unet_config, diffusion_model)`` of a MODEL: the LDM U-Net's config for ComfyUI's ``UNetModel`` (patched at
    its output blocks), ``None`` for a model whose joins the library finds by structure (hooked per call), or a
    ``ValueError`` naming the model and why FreeU cannot act on it."""
    base = model.model
    diffusion = getattr(base, "diffusion_model", None)
    config = dict(getattr(getattr(base, "model_config", None), "unet_config", None) or {})
    kind = f"{type(diffusion).__name__} ({type(base).__name__})"
    if type(diffusion).__name__ == "UNetModel" and "model_channels" in config:
        return config, diffusion
    try:
        freeu.plan(diffusion)
    except freeu.UnsupportedModelError as error:
        raise ValueError(
            f"FreeU (freeu) acts at skip joins: ComfyUI's UNetModel (SD 1.x, SD 2.x, SDXL and their fine-tunes), "
            f"Stable Cascade (stages C and B) and Hunyuan-DiT have them. This model's diffusion model is {kind}: "
            f"{str(error).split(' Supported: ')[0]}"  # the library's list of diffusers classes means nothing here
        ) from None
    return None, diffusion


def _set_call_wrapper(clone: Any, run: Any) -> None:
    """Register ``run`` (:func:`freeu.hosts.hooked_call`) around each model call of ``clone``, in place of an earlier
    FreeU (freeu) wrapper."""
    from comfy.patcher_extension import WrappersMP

    def wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
        # apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        options = kwargs.get("transformer_options", args[5] if len(args) > 5 else {})
        return run(executor.class_obj.diffusion_model, options, lambda: executor(*args, **kwargs))

    clone.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    clone.add_wrapper_with_key(WrappersMP.APPLY_MODEL, WRAPPER_KEY, wrapper)


def _register_preset_folder() -> None:
    """Make ``freeu_presets`` one of ComfyUI's model folders (``.toml`` files only), keeping any paths that
    ``extra_model_paths.yaml`` gave it."""
    entry = folder_paths.folder_names_and_paths.get(PRESET_FOLDER)
    if entry is None:
        folder = os.path.join(folder_paths.models_dir, PRESET_FOLDER)
        folder_paths.folder_names_and_paths[PRESET_FOLDER] = ([folder], {".toml"})
    elif not entry[1]:  # registered by extra_model_paths.yaml, which sets no extensions
        entry[1].add(".toml")


_register_preset_folder()


def _path(preset_file: str | None) -> str | None:
    """The preset file the ``preset_file`` input names, inside the preset folders only; ``None`` for none."""
    name = (preset_file or "").strip()
    if not name or name == NO_FILE:
        return None
    return str(freeu.config.preset_file_in(name, folder_paths.get_folder_paths(PRESET_FOLDER), "preset_file"))


def settings_of(preset: str, path: str | None, stages: str | None, **controls: Any) -> Settings:
    """The node's inputs as :class:`freeu.settings.Settings`: a preset file's ``path`` (when set) replaces
    ``preset``; a preset (``auto`` included) sets the factors, version and convention, and an input left at its
    default leaves the preset's value (a preset file's window) as it is; ``custom`` takes every input."""
    chosen = path or (None if preset == CUSTOM else preset)
    return controls_settings(chosen, controls, stages or "")


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
            "window; no FFT at the published threshold, so no CPU fallback on any device.",
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
                    default=str(DEFAULTS["version"]),
                    tooltip="2: the paper's structure-related map (FreeU_V2); 1: a constant (FreeU)",
                ),
                IO.Combo.Input(
                    "convention",
                    options=["official", "diffusers"],
                    default=DEFAULTS["convention"],
                    tooltip="stage by backbone width (authors, ComfyUI, A1111) or by decoder level (diffusers)",
                ),
                IO.Int.Input(
                    "threshold",
                    default=DEFAULTS["threshold"],
                    min=1,
                    max=64,
                    tooltip="half-width of the damped square",
                    extra_dict=ADVANCED,
                ),
                IO.Float.Input(
                    "start_percent",
                    default=DEFAULTS["start"],
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="FreeU from this fraction of the schedule",
                ),
                IO.Float.Input(
                    "end_percent",
                    default=DEFAULTS["stop"],
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="FreeU until this fraction of the schedule",
                ),
                IO.Float.Input(
                    "ramp",
                    default=DEFAULTS["ramp"],
                    min=0.0,
                    max=0.5,
                    step=0.001,
                    tooltip="linear fade at both ends of the window, as a fraction of the schedule",
                    extra_dict=ADVANCED,
                ),
                IO.String.Input(
                    "stages",
                    default="",
                    optional=True,
                    tooltip="more stages and controls, STAGE:KEY=VALUE,... with ; between stages, e.g. "
                    "'3:b=1.1,s=0.9; 1:high=1.1,window=0.25/0.5,cutoff=0.1': b, s, high (gain of the skip's other "
                    "frequencies), window (OFFSET/WIDTH of the scaled backbone channels), cutoff (the square as a "
                    "fraction of the map)",
                    extra_dict=ADVANCED,
                ),
                IO.Combo.Input(
                    "preset_file",
                    options=[NO_FILE, *folder_paths.get_filename_list(PRESET_FOLDER)],
                    default=NO_FILE,
                    optional=True,
                    tooltip="a preset file (.toml, as freeu tune writes) from ComfyUI's models/freeu_presets folder: "
                    "when set, it replaces preset and its settings replace the factors, version and convention; "
                    "threshold and the window come from the file unless set here to other than their defaults (as "
                    "with every preset)",
                    extra_dict=ADVANCED,
                ),
            ],  # fmt: skip
            outputs=[IO.Model.Output()],
        )

    @classmethod
    def execute(
        cls, model: Any, preset: str, b1: float, b2: float, s1: float, s2: float, version: str, convention: str,
        threshold: int, start_percent: float, end_percent: float, ramp: float, stages: str = "",
        preset_file: str = NO_FILE,
    ) -> IO.NodeOutput:  # fmt: skip
        unet, diffusion = _target(model)
        path = _path(preset_file)
        config = resolve(
            settings_of(
                preset,
                path,
                stages,
                b1=b1,
                b2=b2,
                s1=s1,
                s2=s2,
                version=int(version),
                convention=convention,
                threshold=threshold,
                start=start_percent,
                stop=end_percent,
                ramp=ramp,
            ),
            diffusion if unet is None else unet,
            names=dict(NAMES, preset="preset_file" if path else "preset"),
        ).config
        # start/end_percent mean what they mean in every ComfyUI node: the inverse of the model's percent_to_sigma
        sampling = model.get_model_object("model_sampling")
        clone = model.clone()
        if unet is None:
            # what the model cannot take is refused now (a convention, a stage none of its joins has: warned once)
            freeu.apply(diffusion, config.replace(start=0.0, stop=1.0, ramp=0.0)).remove()
            _set_call_wrapper(clone, hosts.hooked_call(config, percent_to_sigma=sampling.percent_to_sigma))
            return IO.NodeOutput(clone)
        patch = hosts.ldm_output_block_patch(config, unet, percent_to_sigma=sampling.percent_to_sigma)
        hosts.set_output_block_patch(clone, patch)  # replaces an earlier FreeU (freeu) patch, never stacks
        return IO.NodeOutput(clone)


class FreeUExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[IO.ComfyNode]]:
        return [FreeUNode]


async def comfy_entrypoint() -> FreeUExtension:
    return FreeUExtension()
