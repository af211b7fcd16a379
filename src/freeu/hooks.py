"""Install and remove FreeU on a U-Net: one forward pre-hook per skip join, all handles kept on the U-Net.

Each hook receives the ``cat([backbone, skip], dim=1)`` that the host's own forward built, and returns a new tensor
with the backbone half scaled and the skip filtered. No host ``forward`` is copied and no tensor the host holds is
written to. The handle of the active application lives on the U-Net (attribute ``_freeu_handle``), so
:func:`remove` works without it, and :func:`apply` on a patched U-Net replaces the settings instead of stacking.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .backbone import scaled_half
from .config import Convention, FreeUConfig, Version, get_preset
from .fourier import fourier_filter
from .models import SkipJoin, UNetLayout, describe, find_unet

__all__ = ["FreeUHandle", "JoinPlan", "active_config", "apply", "plan", "remove"]

logger = logging.getLogger(__name__)

_HANDLE_ATTR = "_freeu_handle"
_DIFFUSERS_FREEU_KEYS = ("s1", "s2", "b1", "b2")


class JoinPlan:
    """A skip join and the FreeU stage it gets under a convention (``None``: left alone)."""

    __slots__ = ("join", "stage")

    def __init__(self, join: SkipJoin, stage: int | None) -> None:
        self.join = join
        self.stage = stage

    def __repr__(self) -> str:
        j = self.join
        return f"JoinPlan({j.name}: backbone {j.backbone_channels}, skip {j.skip_channels}, stage {self.stage})"


def _stage(join: SkipJoin, layout: UNetLayout, convention: Convention) -> int | None:
    if convention == "diffusers":
        return {0: 1, 1: 2}.get(join.block)
    # The authors' code picks the stage by the backbone width at the join: 1280 and 640 in SD, i.e. four and two
    # times the base width (ComfyUI's generalisation).
    return {4 * layout.base_channels: 1, 2 * layout.base_channels: 2}.get(join.backbone_channels)


def plan(model: object, convention: Convention = "official") -> list[JoinPlan]:
    """Every skip join of ``model``'s U-Net in decoder order, with the stage ``convention`` gives it."""
    FreeUConfig(1.0, 1.0, 1.0, 1.0, convention=convention)  # validates the convention
    layout = describe(find_unet(model))
    return [JoinPlan(join, _stage(join, layout, convention)) for join in layout.joins]


def _input_name(module: nn.Module) -> str:
    """Name of the forward's first parameter, for hosts that pass the concatenated tensor by keyword."""
    parameters = list(inspect.signature(module.forward).parameters)
    return parameters[0] if parameters else "input"


def _join_hook(join: SkipJoin, b: float, s: float, version: Version, threshold: int) -> Callable[..., Any]:
    backbone_channels = join.backbone_channels
    in_channels = join.in_channels
    half = backbone_channels // 2
    keyword = _input_name(join.module)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        from_args = bool(args)
        x = args[0] if from_args else kwargs.get(keyword)
        if not isinstance(x, torch.Tensor):
            raise RuntimeError(f"FreeU hook on {join.name}: expected the concatenated features as first input")
        if x.dim() != 4 or x.shape[1] != in_channels:
            raise RuntimeError(
                f"FreeU hook on {join.name}: expected (B, {in_channels}, H, W) = backbone {backbone_channels} + "
                f"skip {join.skip_channels} channels, got shape {tuple(x.shape)}"
            )
        backbone = x[:, :backbone_channels]
        first = scaled_half(backbone, b, version) if b != 1 else backbone[:, :half]
        skip = fourier_filter(x[:, backbone_channels:], threshold, s)
        out = torch.cat([first, x[:, half:backbone_channels], skip], dim=1)
        if from_args:
            return (out, *args[1:]), kwargs
        return args, {**kwargs, keyword: out}

    return hook


class FreeUHandle:
    """FreeU applied to one U-Net. ``remove()`` undoes it; as a context manager, leaving restores what was before."""

    def __init__(self, unet: nn.Module, config: FreeUConfig, plans: list[JoinPlan], previous: FreeUConfig | None):
        self.unet = unet
        self.config = config
        self.plans = plans
        self._previous = previous
        self._hooks: list[RemovableHandle] = []

    @property
    def active(self) -> bool:
        """Whether these settings are the ones installed on the U-Net now."""
        return getattr(self.unet, _HANDLE_ATTR, None) is self

    def _install(self) -> None:
        for p in self.plans:
            if p.stage is None:
                continue
            b, s = self.config.stage_factors(p.stage)
            if b == 1 and s == 1:
                continue
            hook = _join_hook(p.join, b, s, self.config.version, self.config.threshold)
            self._hooks.append(p.join.module.register_forward_pre_hook(hook, with_kwargs=True))
        setattr(self.unet, _HANDLE_ATTR, self)

    def _uninstall(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self.active:
            delattr(self.unet, _HANDLE_ATTR)

    def remove(self) -> bool:
        """Take FreeU off the U-Net if these settings are still installed; ``False`` if they were already replaced."""
        if not self.active:
            return False
        self._uninstall()
        return True

    def __enter__(self) -> FreeUHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.remove() and self._previous is not None:
            apply(self.unet, self._previous)

    def __repr__(self) -> str:
        stages = [p.stage for p in self.plans]
        return (
            f"FreeUHandle({self.config}, joins: {stages.count(1)} at stage 1, {stages.count(2)} at stage 2, "
            f"{stages.count(None)} untouched, active={self.active})"
        )


def _resolve_config(config: FreeUConfig | None, preset: str | None, overrides: dict[str, Any]) -> FreeUConfig:
    if config is not None and preset is not None:
        raise TypeError("give either config or preset, not both")
    if config is not None and not isinstance(config, FreeUConfig):
        raise TypeError(f"config must be a FreeUConfig, got {type(config).__name__}")
    given = {k: v for k, v in overrides.items() if v is not None}
    base = config if config is not None else get_preset(preset).config if preset is not None else None
    if base is None:
        missing = [k for k in ("b1", "b2", "s1", "s2") if k not in given]
        if missing:
            raise TypeError(
                f"apply needs b1, b2, s1 and s2 (missing: {', '.join(missing)}), or preset=..., or config=..."
            )
        return FreeUConfig(**given)
    return base.replace(**given) if given else base


def _check_no_diffusers_freeu(unet: nn.Module) -> None:
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        if any(getattr(block, key, None) is not None for key in _DIFFUSERS_FREEU_KEYS):
            raise ValueError(
                f"diffusers' own FreeU is enabled on this U-Net (up_blocks.{i} has b1/b2/s1/s2 set); FreeU would be "
                "applied twice. Call unet.disable_freeu() first."
            )


def apply(
    model: object,
    config: FreeUConfig | None = None,
    *,
    preset: str | None = None,
    b1: float | None = None,
    b2: float | None = None,
    s1: float | None = None,
    s2: float | None = None,
    version: Version | None = None,
    convention: Convention | None = None,
    threshold: int | None = None,
) -> FreeUHandle:
    """Apply FreeU to a U-Net or to a pipeline's ``.unet``; returns a handle (also a context manager).

    Settings come from ``config``, or ``preset`` (see ``freeu.PRESETS``), or the four factors; keywords given next
    to a config or preset override its fields. Applying to a patched U-Net replaces the settings. Everything is
    validated before the model is touched: on any error the model is left as it was.
    """
    overrides = dict(b1=b1, b2=b2, s1=s1, s2=s2, version=version, convention=convention, threshold=threshold)
    resolved = _resolve_config(config, preset, overrides)
    unet = find_unet(model)
    _check_no_diffusers_freeu(unet)
    layout = describe(unet)
    plans = [JoinPlan(join, _stage(join, layout, resolved.convention)) for join in layout.joins]
    found = {p.stage for p in plans}
    if found == {None}:
        raise ValueError(
            f"convention={resolved.convention!r} assigns no skip join of this U-Net to a FreeU stage: backbone widths "
            f"{sorted({j.backbone_channels for j in layout.joins})}, base width {layout.base_channels} (the official "
            "convention wants 4x and 2x the base width). Try convention='diffusers'."
        )
    for stage in (1, 2):
        if stage not in found and resolved.stage_factors(stage) != (1.0, 1.0):
            warnings.warn(
                f"FreeU stage {stage} matches no skip join of this U-Net under convention={resolved.convention!r}; "
                f"b{stage} and s{stage} have no effect",
                stacklevel=2,
            )

    old: FreeUHandle | None = getattr(unet, _HANDLE_ATTR, None)
    previous = old.config if old is not None else None
    if old is not None:
        old.remove()
    handle = FreeUHandle(unet, resolved, plans, previous)
    handle._install()
    logger.debug("FreeU applied: %r", handle)
    return handle


def remove(model: object) -> bool:
    """Take FreeU off ``model``'s U-Net, whoever applied it; ``False`` if it was not applied."""
    handle: FreeUHandle | None = getattr(find_unet(model), _HANDLE_ATTR, None)
    return handle.remove() if handle is not None else False


def active_config(model: object) -> FreeUConfig | None:
    """The FreeU settings installed on ``model``'s U-Net, or ``None``."""
    handle: FreeUHandle | None = getattr(find_unet(model), _HANDLE_ATTR, None)
    return handle.config if handle is not None else None
