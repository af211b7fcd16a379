"""Forge extension "FreeU (freeu)": FreeU from the ``freeu`` library in Stable Diffusion WebUI Forge.

Install: Forge's "Install from URL" with the extension's own repository (``make forge-extension`` writes it), or that
folder in Forge's ``extensions/``; Forge then runs ``install.py``, which installs the ``freeu`` library at the version
this extension was made for into Forge's Python. An always-visible script (txt2img and
img2img) with: enable, preset (every ``freeu`` preset, ``auto`` from the U-Net's layout, a preset file (``.toml``,
as ``freeu tune`` writes), or ``custom``: the controls), b1, b2, s1, s2, version, convention, threshold and a step
window (start, end, ramp) as fractions of the schedule. Preset files are opened only from Forge's
``models/freeu_presets`` folder (``--models-dir`` and ``--data-dir`` move it), by name: a request sent to a shared
server cannot make the script open any other path.

Before each sampling pass the script clones the pass's U-Net patcher and registers one output-block patch on the
clone, built by :func:`freeu.hosts.ldm_output_block_patch`; nothing is kept on the class, the module or the shared
model between generations, so jobs with different settings never see each other's. The window's position comes from
each call's noise level (``transformer_options["sigmas"]``), not from a step counter.

API (``/sdapi/v1/txt2img`` and ``img2img``): ``"alwayson_scripts": {"FreeU (freeu)": {"args": [...]}}`` with the
arguments in the order of :data:`ARGS`, or with one dict of them by name (``{"enabled": true, "preset": "sdxl"}``;
a name left out keeps its default, an unknown one is refused, and factors given by name without a preset mean
``custom``). The settings go into the infotext under the keys of :data:`INFOTEXT` and are read back from it (paste
parameters, or the API's ``infotext``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import gradio as gr
from modules import scripts
from modules.ui_components import InputAccordion

try:
    import freeu
    from freeu import hosts
    from freeu.settings import AUTO, DEFAULTS, Settings, controls_settings, resolve
except ImportError as error:  # Forge prints this at start-up, naming the script
    raise ImportError(
        f"FreeU (freeu) needs the freeu library in Forge's Python ({error}): restart Forge without --skip-install (it "
        "runs the extension's install.py), or install freeu with the Python of Forge's environment "
        "(venv/bin/python -m pip install freeu on Linux and macOS, venv\\Scripts\\python -m pip install freeu on "
        "Windows), then restart Forge"
    ) from error

TITLE = "FreeU (freeu)"
#: The freeu version this extension was made for (``install.py`` installs it).
FREEU_VERSION = "0.1.0"
if freeu.__version__ != FREEU_VERSION:  # a copied extension and a pip-installed library can drift apart
    print(f"{TITLE}: this extension was made for freeu {FREEU_VERSION}, but Forge's Python has freeu "
          f"{freeu.__version__}; restart Forge without --skip-install so that the extension's install.py installs "
          f"freeu {FREEU_VERSION}, or update the extension")  # fmt: skip
CUSTOM = "custom"
PRESETS = [AUTO, CUSTOM, *sorted(freeu.PRESETS)]
FACTORS = ("b1", "b2", "s1", "s2")
CUSTOM_DEFAULTS = freeu.PRESETS["sd15"].config
#: The script's words for FreeU's fields where they differ (errors name the control the user sees).
NAMES = {"stop": "end"}

#: The script's arguments, in the order of ``alwayson_scripts`` ``args``, with their defaults.
ARGS: dict[str, Any] = {
    "enabled": False,
    "preset": AUTO,
    "b1": CUSTOM_DEFAULTS.b1,
    "b2": CUSTOM_DEFAULTS.b2,
    "s1": CUSTOM_DEFAULTS.s1,
    "s2": CUSTOM_DEFAULTS.s2,
    "version": str(DEFAULTS["version"]),
    "convention": DEFAULTS["convention"],
    "threshold": DEFAULTS["threshold"],
    "start": DEFAULTS["start"],
    "end": DEFAULTS["stop"],
    "ramp": DEFAULTS["ramp"],
    "stages": "",
}
#: The infotext key of a refused setting's message (the image beside it ran without FreeU).
ERROR = "FreeU error"
#: The infotext key of each setting (written when enabled; their presence means enabled when read back).
INFOTEXT: dict[str, str] = {name: f"FreeU {name}" for name in ARGS if name != "enabled"}


def read_args(args: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
    """The settings from the script's arguments: by position (:data:`ARGS`' order) or one dict by name.

    Raises:
        ValueError: an unknown name, too many arguments, a value of the wrong kind; each names the argument.
    """
    if len(args) >= 1 and isinstance(args[0], dict):
        named = dict(args[0])
        unknown = sorted(set(named) - set(ARGS))
        if unknown:
            raise ValueError(f"{TITLE}: unknown argument(s) {unknown}; the arguments are {list(ARGS)}")
        if "preset" not in named and any(name in named for name in FACTORS):
            named["preset"] = CUSTOM  # factors by name are the user's factors, never silently replaced by auto
        return _checked({**ARGS, **named})
    if len(args) > len(ARGS):
        raise ValueError(f"{TITLE}: {len(args)} arguments given; it takes at most {len(ARGS)}: {list(ARGS)}")
    return _checked({**ARGS, **dict(zip(ARGS, args, strict=False))})


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite real number; an integer too large for a float (JSON allows one) is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    """``value`` for an error message, an oversized integer by its size rather than its hundreds of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**18:
        return f"an integer of {len(str(abs(value)))} digits"
    return repr(value)


def _checked(settings: dict[str, Any]) -> dict[str, Any]:
    enabled = settings["enabled"]
    if not isinstance(enabled, bool):
        raise ValueError(f"{TITLE}: enabled must be true or false, got {enabled!r}")
    preset = settings["preset"]
    if not isinstance(preset, str) or (preset not in PRESETS and not freeu.config.is_preset_file(preset)):
        raise ValueError(f"{TITLE}: preset must be one of {PRESETS} or a preset file (.toml), got {preset!r}")
    for name in (*FACTORS, "start", "end", "ramp"):
        if not _finite(settings[name]):
            raise ValueError(f"{TITLE}: {name} must be a finite number, got {_shown(settings[name])}")
        settings[name] = float(settings[name])
    if str(settings["version"]) not in ("1", "2"):
        raise ValueError(f"{TITLE}: version must be 1 or 2, got {settings['version']!r}")
    settings["version"] = str(settings["version"])
    if not isinstance(settings["stages"], str):
        raise ValueError(f"{TITLE}: stages must be text like '3:b=1.1,s=0.9', got {settings['stages']!r}")
    threshold = settings["threshold"]
    if not _finite(threshold) or threshold != int(threshold):
        raise ValueError(f"{TITLE}: threshold must be a whole number >= 1, got {_shown(threshold)}")
    settings["threshold"] = int(threshold)
    return settings


#: Forge's models subfolder that holds preset files.
PRESET_FOLDER = "freeu_presets"


def preset_folders() -> list[str]:
    """Where the script opens preset files: ``models/freeu_presets`` of this Forge."""
    from modules import paths_internal

    return [os.path.join(paths_internal.models_path, PRESET_FOLDER)]


def settings_of(settings: dict[str, Any]) -> Settings:
    """The script's arguments as :class:`freeu.settings.Settings`: ``custom`` takes every control; a preset (a name,
    ``auto`` or a preset file) sets the factors, version and convention, and a control left at its default leaves
    the preset's value as it is."""
    controls = {name: settings[name] for name in (*FACTORS, "threshold", "start", "ramp")}
    controls.update(version=int(settings["version"]), convention=settings["convention"], stop=settings["end"])
    preset = None if settings["preset"] == CUSTOM else settings["preset"]
    if freeu.config.is_preset_file(preset):
        preset = str(freeu.config.preset_file_in(preset, preset_folders(), "preset"))
    return controls_settings(preset, controls, settings["stages"])


def resolve_settings(settings: dict[str, Any], unet_config: dict[str, Any]) -> tuple[str, freeu.FreeUConfig]:
    """``(preset name, config)`` of the settings on a U-Net with these LDM settings (``auto`` names the preset it
    found, a preset file its path). Every value is checked by the library's settings front door; its errors name the
    control as the script calls it."""
    try:
        resolved = resolve(settings_of(settings), unet_config, names=NAMES)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{TITLE}: {error}") from None
    if freeu.config.is_preset_file(settings["preset"]):
        return settings["preset"], resolved.config  # a preset file by the name it has in the preset folder
    return resolved.preset or CUSTOM, resolved.config


def infotext(settings: dict[str, Any], config: freeu.FreeUConfig) -> dict[str, Any]:
    """The infotext entries of a generation: the preset as chosen (``auto`` stays ``auto``) and the values that ran."""
    values = {
        "preset": settings["preset"],
        "b1": config.b1,
        "b2": config.b2,
        "s1": config.s1,
        "s2": config.s2,
        "version": str(config.version),
        "convention": config.convention,
        "threshold": config.threshold,
        "start": config.start,
        "end": config.stop,
        "ramp": config.ramp,
        "stages": settings["stages"],
    }
    if not values["stages"]:
        del values["stages"]  # only where set
    return {INFOTEXT[name]: value for name, value in values.items()}


def _unet_config(unet: Any) -> dict[str, Any]:
    diffusion = unet.model.diffusion_model
    config = dict(getattr(diffusion, "config", None) or {})
    if "model_channels" not in config:
        raise ValueError(
            f"{TITLE} needs a U-Net with skip joins (SD 1.x, SD 2.x, SDXL and their fine-tunes); this model's "
            f"diffusion model is {type(diffusion).__name__}, which has none: turn FreeU off for it"
        )
    return config


class FreeUScript(scripts.Script):
    sorting_priority = 12.5  # just after Forge's built-in FreeU

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        editable = ARGS["preset"] == CUSTOM  # a preset (auto included) sets b1 to convention; custom leaves them free

        def factor(name: str, label: str) -> Any:
            return gr.Slider(label=label, minimum=0, maximum=3, step=0.01, value=ARGS[name], interactive=editable)

        with InputAccordion(ARGS["enabled"], label=TITLE, elem_id=self.elem_id("enabled")) as enabled:
            preset = gr.Dropdown(
                label="Preset", choices=PRESETS, value=ARGS["preset"], allow_custom_value=True,
                info="auto: from the U-Net's layout; custom: the controls below; a name: that published setting; "
                "or type the name of a preset file (.toml, as freeu tune writes) in models/freeu_presets",
            )  # fmt: skip
            with gr.Row():
                b1 = factor("b1", "b1: backbone, stage 1")
                b2 = factor("b2", "b2: backbone, stage 2")
            with gr.Row():
                s1 = factor("s1", "s1: skip, stage 1")
                s2 = factor("s2", "s2: skip, stage 2")
            with gr.Row():
                version = gr.Radio(label="Version", choices=["2", "1"], value=ARGS["version"], interactive=editable)
                convention = gr.Radio(
                    label="Stage convention", choices=["official", "diffusers"], value=ARGS["convention"],
                    interactive=editable,
                    info="official: by backbone width (the authors, Forge); diffusers: by decoder level",
                )  # fmt: skip
                threshold = gr.Slider(label="Threshold", minimum=1, maximum=16, step=1, value=ARGS["threshold"])
            with gr.Row():
                start = gr.Slider(label="Start (fraction of the schedule)", minimum=0, maximum=1, step=0.01,
                                  value=ARGS["start"])  # fmt: skip
                end = gr.Slider(label="End", minimum=0, maximum=1, step=0.01, value=ARGS["end"])
                ramp = gr.Slider(label="Ramp", minimum=0, maximum=0.5, step=0.01, value=ARGS["ramp"])
            stages = gr.Textbox(
                label="More stages and controls", value=ARGS["stages"],
                placeholder="3:b=1.1,s=0.9; 1:high=1.1,window=0.25/0.5,cutoff=0.1",
                info="STAGE:KEY=VALUE,... with ; between stages: b, s, high (the skip's other frequencies), window "
                "(OFFSET/WIDTH of the scaled channels), cutoff (the square as a fraction of the map)",
            )  # fmt: skip
        custom_controls = [b1, b2, s1, s2, version, convention]

        def show_preset(name: str) -> list[Any]:
            """A named preset shows its values in the controls it sets; only custom leaves them editable."""
            if name in freeu.PRESETS:
                config = freeu.get_preset(name).config
                values = [config.b1, config.b2, config.s1, config.s2, str(config.version), config.convention]
                return [gr.update(value=v, interactive=False) for v in values]
            return [gr.update(interactive=name == CUSTOM) for _ in custom_controls]

        preset.change(fn=show_preset, inputs=[preset], outputs=custom_controls, show_progress=False)
        components = [enabled, preset, b1, b2, s1, s2, version, convention, threshold, start, end, ramp, stages]
        self.infotext_fields = [(enabled, lambda params: INFOTEXT["b1"] in params)] + [
            (component, INFOTEXT[name]) for name, component in zip(list(ARGS)[1:-1], components[1:-1], strict=True)
        ]
        # stages are written only where set: a pasted FreeU infotext without them clears the box
        self.infotext_fields.append(
            (stages, lambda params: params.get(INFOTEXT["stages"], "") if INFOTEXT["b1"] in params else None)
        )
        self.paste_field_names = list(INFOTEXT.values())
        return components

    def process(self, p: Any, *args: Any) -> None:
        """Check the settings before anything is sampled, and write them into the infotext. Forge reports a
        script's error on its console and samples on without the script, so a refused setting is also written into
        the infotext (``FreeU error``), next to the image it did not change."""
        try:
            settings = read_args(args)
            if not settings["enabled"]:
                return
            _, config = resolve_settings(settings, _unet_config(p.sd_model.forge_objects.unet))
        except ValueError as error:
            p.extra_generation_params[ERROR] = str(error)
            raise
        p.extra_generation_params.update(infotext(settings, config))

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Register FreeU on a clone of this pass's U-Net (Forge resets the U-Net before every pass)."""
        if ERROR in p.extra_generation_params:
            return  # refused in process(), already reported
        settings = read_args(args)
        if not settings["enabled"]:
            return
        unet = p.sd_model.forge_objects.unet
        unet_config = _unet_config(unet)
        _, config = resolve_settings(settings, unet_config)
        patch = hosts.ldm_output_block_patch(
            config, unet_config, percent_to_sigma=unet.model.predictor.percent_to_sigma
        )
        clone = unet.clone()
        hosts.set_output_block_patch(clone, patch)  # replaces an earlier pass's patch, never stacks
        p.sd_model.forge_objects.unet = clone
