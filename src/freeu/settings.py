"""The one front door for FreeU settings: what a person gave, checked once, resolved against a model.

Every front end (``freeu.apply``, the command line, eval's configurations, the page, the ComfyUI node, the Forge
script) turns its own controls into a :class:`Settings` (a preset name, ``"auto"`` or a preset file; factors;
version, convention, threshold; a step window; stage text) and calls :func:`resolve`, which gives a
:class:`freeu.FreeUConfig` and where each value came from. :func:`check_settings` checks the same description
without a model, before any work. Each caller passes ``names``, its own word for each field (``--b1``,
``end_percent``, ``end``), so an error names the field as that caller's user knows it.

``"auto"`` picks the published preset from the U-Net's structure, never from a checkpoint's name
(:func:`detect_preset`), on a diffusers U-Net, an LDM/SGM ``UNetModel``, what holds one, or the LDM settings dict
that ComfyUI and Forge keep for their U-Net.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from .config import (
    FACTORS,
    MAX_STAGES,
    PRESETS,
    STAGE_FIELDS,
    Factor,
    FreeUConfig,
    Preset,
    Stage,
    check_field,
    check_window,
    get_preset,
    parse_stage_settings,
)
from .models import UnsupportedModelError, class_names, find_unet

__all__ = [
    "AUTO",
    "DEFAULTS",
    "Resolved",
    "Settings",
    "check_settings",
    "check_stages",
    "controls_settings",
    "detect_preset",
    "resolve",
]

#: The preset name that asks for the preset of the model's layout.
AUTO = "auto"
#: The fields of :class:`FreeUConfig` a :class:`Settings` may give, besides the stages.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FreeUConfig) if f.name != "stages")
#: U-Nets of video models: the ModelScope / ZeroScope preset is the one published for them.
VIDEO_UNETS = ("UNet3DConditionModel", "UNetMotionModel", "I2VGenXLUNet", "UNetSpatioTemporalConditionModel")

#: FreeU's default of each field that has one (:class:`FreeUConfig`'s): what a host's control starts at.
DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(FreeUConfig) if f.default is not dataclasses.MISSING
}

Names = Mapping[str, str]
StageChanges = dict[int, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a person gave: every field optional, nothing checked yet (:func:`check_settings` checks).

    ``preset``: a published preset's name, ``"auto"`` (the preset of the model's layout), a preset file (a path
    ending in ``.toml``), a :class:`freeu.Preset`, or a :class:`freeu.FreeUConfig` to start from. Without one, all
    four factors are needed. The other fields, where given, replace the preset's. ``stages``: stage settings as
    text (``"3:b=1.1,s=0.9; 1:high=1.1"``, :func:`freeu.config.parse_stage_settings`) or as
    ``{stage: {field: value}}``.
    """

    preset: str | os.PathLike[str] | Preset | FreeUConfig | None = None
    b1: Factor | None = None
    b2: Factor | None = None
    s1: Factor | None = None
    s2: Factor | None = None
    version: int | None = None
    convention: str | None = None
    threshold: int | None = None
    start: float | None = None
    stop: float | None = None
    ramp: float | None = None
    num_train_timesteps: int | None = None
    stages: str | Mapping[int, Mapping[str, Any]] | None = None

    def given(self) -> dict[str, Any]:
        """The :class:`FreeUConfig` fields given (not ``None``), stages left out."""
        return {k: getattr(self, k) for k in FIELDS if getattr(self, k) is not None}


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Settings resolved against a model: the config, the preset it started from, and where each value came from.

    ``preset``: the published preset's name (``auto``'s choice included), the preset file's path, or ``None``.
    ``sources``: for every field of the config, ``"preset"``, ``"given"`` or ``"default"``; ``"stages"`` too where
    stage settings were given. ``source``: one line for people, e.g. ``--preset auto chose 'sd15': <evidence>``.
    """

    config: FreeUConfig
    preset: str | None
    sources: Mapping[str, str]
    source: str


def _label(names: Names | None, field: str) -> str:
    return (names or {}).get(field, field)


def _preset(value: object, names: Names | None) -> Preset | FreeUConfig | str | None:
    """The base: a loaded :class:`Preset` (names and files), a config, ``"auto"`` or ``None``."""
    if value is None or isinstance(value, (Preset, FreeUConfig)) or value == AUTO:
        return value  # type: ignore[return-value]
    label = _label(names, "preset")
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{label} must be a preset name, {AUTO!r} or a preset file (.toml), got "
                        f"{type(value).__name__}")  # fmt: skip
    try:
        return get_preset(value)
    except ValueError as error:
        text = str(error)
    if text.startswith("preset must"):  # an unknown name: the allowed values, auto included, in the caller's word
        text = f"{label} must be one of {sorted(PRESETS)}, {AUTO} or a preset file (.toml), got {os.fspath(value)!r}"
    elif label != "preset":  # a preset file's own error ("preset file X: ..."), under the caller's word
        text = f"{label}: {text}"
    raise ValueError(text)


def check_stages(value: object, names: Names | None = None) -> StageChanges:
    """Stage settings (text in :func:`freeu.config.parse_stage_settings`' grammar, or ``{stage: {field: value}}``)
    as ``{stage: {field: value}}``, every value checked as :class:`freeu.Stage` checks it. Errors start with the
    caller's word for the stages (``names["stages"]``; an empty word: nothing in front)."""
    label = _label(names, "stages")
    prefix = f"{label}: " if label else ""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            changes: StageChanges = parse_stage_settings(value)
        except ValueError as error:
            raise ValueError(f"{prefix}{error}") from None
    elif isinstance(value, Mapping):
        changes = {k: dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
    else:
        raise TypeError(f"{label} must be text like '3:b=1.1,s=0.9' or {{stage: {{field: value}}}}, "
                        f"got {type(value).__name__}")  # fmt: skip
    for k, fields in changes.items():
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_STAGES:
            raise ValueError(f"{prefix}a stage is a number from 1 to {MAX_STAGES}, got {k!r}")
        if not isinstance(fields, dict):
            raise ValueError(f"{prefix}stage {k}'s settings must be a mapping of {', '.join(STAGE_FIELDS)}")
        unknown = sorted(set(fields) - set(STAGE_FIELDS))
        if unknown:
            raise ValueError(f"{prefix}stage {k}: unknown setting(s) {unknown}; a stage has "
                             f"{', '.join(STAGE_FIELDS)}")  # fmt: skip
        try:
            Stage(**{f: tuple(v) if f == "window" and isinstance(v, list) else v for f, v in fields.items()})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{prefix}stage {k}: {error}") from None
    return changes


def controls_settings(
    preset: str | os.PathLike[str] | None, controls: Mapping[str, Any], stages: str | None = None
) -> Settings:
    """:class:`Settings` from a host's controls, which always hold a value (ComfyUI's inputs, Forge's sliders).

    Without a preset (a host's "custom"), every control is given. With one, the factors, version and convention come
    from the preset (the controls for them are not read), and a control left at FreeU's default (:data:`DEFAULTS`)
    is not given either, so the preset's own value stands (a preset file's window, say); a control moved away from
    its default replaces the preset's value. ``controls`` are keyed by :class:`FreeUConfig`'s field names.
    """
    unknown = sorted(set(controls) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; the settings are {', '.join(FIELDS)}")
    if preset is None:
        return Settings(**controls, stages=stages)
    kept = {k: v for k, v in controls.items()
            if k not in (*FACTORS, "version", "convention") and not (k in DEFAULTS and v == DEFAULTS[k])}  # fmt: skip
    return Settings(preset=preset, **kept, stages=stages)


def check_settings(settings: Settings, names: Names | None = None) -> Settings:
    """``settings`` checked without a model: every given field as :class:`FreeUConfig` checks it, the preset known (a
    preset file read, once), the stage settings parsed (a stage's ``b`` or ``s`` replaces ``b1``..``s2``, as
    :meth:`FreeUConfig.with_stages` does), all four factors there when no preset is, the window together. ``auto`` is
    left to :func:`resolve`, which has the model.

    Returns the settings with the preset loaded (a :class:`Preset`, or ``"auto"``) and the stages as
    ``{stage: {field: value}}``: :func:`resolve` of the result reads no file again. Raises ``ValueError`` or
    ``TypeError`` naming the field by ``names`` (the caller's word for each field; unnamed fields keep theirs).
    """
    if not isinstance(settings, Settings):
        raise TypeError(f"settings must be a freeu.settings.Settings, got {type(settings).__name__}")
    base = _preset(settings.preset, names)
    checked = {field: check_field(field, value, _label(names, field)) for field, value in settings.given().items()}
    stages = check_stages(settings.stages, names)  # a stage's b or s wins over b1..s2, as in with_stages
    if base is None:
        missing = [_label(names, k) for k in FACTORS if k not in checked]
        if missing:
            raise ValueError(f"give {_label(names, 'preset')} ({AUTO} or a name) or all four factors; missing: "
                             f"{', '.join(missing)}")  # fmt: skip
    # the window together: the given fields on the preset's own (auto's presets, like the defaults, have none)
    known = base.config if isinstance(base, Preset) else base if isinstance(base, FreeUConfig) else None
    window = {k: checked.get(k, DEFAULTS[k] if known is None else getattr(known, k)) for k in ("start", "stop", "ramp")}
    check_window(**window, labels=names or {})
    return dataclasses.replace(settings, preset=base, stages=stages, **checked)


def resolve(settings: Settings, model: object = None, *, names: Names | None = None) -> Resolved:
    """The :class:`FreeUConfig` of ``settings``: the preset (``auto``: :func:`detect_preset` of ``model``) with the
    given fields in place of its own, then the stage settings; or the four factors and the given fields.

    Args:
        settings: what was given (checked here if :func:`check_settings` has not checked it yet).
        model: what ``auto`` reads the layout of: a U-Net, what holds one, or an LDM settings dict. Only ``auto``
            needs it.
        names: the caller's word for each field, for errors and the source line (``{"preset": "--preset"}``).

    Raises:
        ValueError, TypeError: what :func:`check_settings` refuses; ``auto`` without a model or on a layout no
            preset was published for; fields that do not go together once the preset's are added (a window).
    """
    settings = check_settings(settings, names)
    given = settings.given()
    stages: StageChanges = settings.stages  # type: ignore[assignment]
    base = settings.preset
    label = _label(names, "preset")
    name: str | None = None
    if base == AUTO:
        if model is None:
            raise ValueError(f"{label} {AUTO} needs a model to read the layout of")
        name, evidence = detect_preset(model, label=label)
        base, source = PRESETS[name].config, f"{label} {AUTO} chose {name!r}: {evidence}"
    elif isinstance(base, Preset):
        if base.path is not None:
            name, source = base.path, f"preset file {base.path} ({base.name}, for {base.model})"
        elif base.name in PRESETS and PRESETS[base.name].config == base.config:
            note = "" if base.source == PRESETS[base.name].source else f" ({base.source})"
            name, source = base.name, f"preset {base.name!r}{note}"
        else:  # a caller's own named setting
            name, source = base.name, f"{base.name} ({base.source})"
        base = base.config
    elif isinstance(base, FreeUConfig):
        source = "the config given"
    else:
        source = "the factors given"
    if isinstance(base, FreeUConfig):  # check_settings checked the window on it (auto's presets have none)
        extra = [f"{k}={v}" for k, v in given.items()]
        if extra:
            source += " with " + ", ".join(extra)
        config = base.replace(**given) if given else base
    else:
        config = FreeUConfig(**given)
    if stages:
        source += " and stage settings " + "; ".join(f"{k}: {v}" for k, v in sorted(stages.items()))
        config = config.with_stages(stages)
    origin = "default" if settings.preset is None else "preset"
    sources = {f.name: "given" if f.name in given else origin for f in dataclasses.fields(FreeUConfig)}
    if stages:
        sources["stages"] = "given"
    return Resolved(config, name, sources, source)


# -- auto: the preset of a layout ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What ``auto`` reads of a U-Net, whichever code base describes it."""

    kind: str
    video: bool = False
    context: int | None = None  # the width of the cross-attention's context (text embedding); None: no attention
    added: bool = False  # added conditioning next to the text (SDXL's pooled text and sizes)
    linear: bool = False  # linear attention projections (SD 2.x and SDXL) instead of 1x1 convolutions (SD 1.x)
    base: int | None = None  # the base width


def _from_ldm_config(config: Mapping[str, Any]) -> _Layout:
    """The LDM settings dict (ComfyUI's ``unet_config``, Forge's ``diffusion_model.config``)."""
    return _Layout(
        "LDM UNetModel", context=config.get("context_dim"), added=bool(config.get("adm_in_channels")),
        linear=bool(config.get("use_linear_in_transformer")), base=config.get("model_channels"),
    )  # fmt: skip


def _from_modules(unet: Any) -> _Layout:
    """An LDM/SGM ``UNetModel`` read from its layers: the first cross-attention's key projection gives the context
    width, the first transformer's input projection the projection kind."""
    from torch import nn

    context, linear = None, False
    for name, module in unet.named_modules():
        if context is None and name.endswith("attn2.to_k") and isinstance(module, nn.Linear):
            context = module.in_features
        if name.endswith("proj_in") and not linear:
            linear = isinstance(module, nn.Linear)
    added = getattr(unet, "num_classes", None) == "sequential" or bool(getattr(unet, "adm_in_channels", None))
    return _Layout(type(unet).__name__, context=context, added=added, linear=linear, base=unet.model_channels)


def _layout_of(model: object) -> _Layout:
    if isinstance(model, Mapping):
        return _from_ldm_config(model)
    unet = find_unet(model)
    names = class_names(unet)
    host_config = getattr(unet, "config", None)
    if names & set(VIDEO_UNETS):
        return _Layout(type(unet).__name__, video=True)
    if isinstance(host_config, Mapping) and "model_channels" in host_config:  # Forge keeps the LDM dict
        return _from_ldm_config(host_config)
    if hasattr(unet, "output_blocks"):
        return _from_modules(unet)
    if "UNet2DConditionModel" not in names or host_config is None:
        return _Layout(type(unet).__name__)
    return _Layout(
        type(unet).__name__, context=getattr(host_config, "cross_attention_dim", None),
        added=getattr(host_config, "addition_embed_type", None) == "text_time",
        linear=bool(getattr(host_config, "use_linear_projection", False)),
        base=(getattr(host_config, "block_out_channels", None) or [None])[0],
    )  # fmt: skip


def detect_preset(model: object, *, label: str = "preset") -> tuple[str, str]:
    """``(preset name, the structural evidence)`` of ``model``'s layout, for ``preset="auto"``.

    ``model``: a U-Net (diffusers or LDM/SGM), what holds one (a pipeline, a wrapper), or the LDM settings dict that
    ComfyUI and Forge keep. The rules, the same for each: a video U-Net: ``modelscope``; added conditioning next to
    the text: ``sdxl`` (SDXL's layout), except with a 1280-wide context (the SDXL refiner: no published preset,
    refused) or a 1024-wide one (SD 2.x's text encoder: unCLIP and video models built on SD 2.x, which the next
    rule takes); linear attention projections or a 1024-wide context: ``sd21``; cross-attention with convolutional
    projections: ``sd15`` (SD 1.4 and 1.5 share the layout). A layout without cross-attention raises
    ``ValueError`` naming what it found; ``label`` is the caller's word for the preset in it (``--preset``).
    """
    try:
        layout = _layout_of(model)
    except UnsupportedModelError as error:
        raise ValueError(f"{label} {AUTO}: {error}") from None
    if layout.video:
        return "modelscope", f"a video U-Net ({layout.kind})"
    if layout.context is None:
        raise ValueError(f"{label} {AUTO} knows the Stable Diffusion 1.x, 2.x, XL and video U-Nets; {layout.kind} has "
                         "no cross-attention, so it is none of them: name a preset or give the factors")  # fmt: skip
    found = f"{layout.kind} with a {layout.context}-wide context and base width {layout.base}"
    if layout.added and layout.context == 1280:
        raise ValueError(f"{label} {AUTO}: {found} with added conditioning is the SDXL refiner's layout, for which "
                         "no FreeU setting was published: name a preset or give the factors")  # fmt: skip
    if layout.added and layout.context != 1024:  # 1024: SD 2.x's text encoder (unCLIP, video models on SD 2.x)
        return "sdxl", "added conditioning next to the text (the SDXL U-Net layout)"
    if layout.linear or layout.context == 1024:
        return "sd21", "linear attention projections / a 1024-wide context (the SD 2.x U-Net layout)"
    note = "" if layout.base in (None, 320) else f"; base width {layout.base}, not SD 1.x's 320"
    return "sd15", f"convolutional attention projections, no added conditioning (the SD 1.x layout{note})"
