"""The paper's Fourier analyses as experiments on a :class:`freeu.apps.runtime.Model`: each samples through the
shared runtime and returns plain numbers (dicts of lists; images as tensors under ``"images"``).

- :func:`trajectory` (paper Fig. 3 and 4): at every sampling step, the relative log amplitude of the predicted clean
  sample ``x0`` (and of the noisy sample ``x_t`` on request), its split into low and high frequencies, the high
  part's share of the energy, and how much each part moved since the previous step.
- :func:`b_sweep` (Fig. 6): the relative log amplitude of the final samples for several values of a backbone factor
  (``b1`` by default), every other factor 1.
- :func:`features` (Fig. 7): at every skip join, the relative log amplitude of the backbone and skip features going
  in, of what FreeU made of them, and of their concatenation as the decoder sees it, with FreeU off and on. Read
  through ``freeu.apply(..., observer=...)``, the same hooks that apply FreeU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from freeu.config import FreeUConfig
from freeu.hooks import JoinObservation, plan

from ..runtime import Model, Request, Space, Step
from .measures import (
    amplitude_curve,
    check_path,
    frequency_split,
    high_band,
    high_fraction,
    mean_known,
    relative_log_amplitude,
    rms,
    strip_steps,
)

__all__ = ["DEMO_SETTING", "KINDS", "SPACES", "SWEPT", "Readout", "b_sweep", "features", "trajectory"]

CurvePath = Literal["diagonal", "radial"]
SweptFactor = Literal["b1", "b2", "both"]
SPACES: tuple[str, ...] = ("latent", "pixel")
SWEPT: tuple[str, ...] = ("b1", "b2", "both")

#: The per-join features :func:`features` measures: what goes into the join, what FreeU made of it, and the
#: concatenation the decoder's next block receives (``cat([backbone_out, skip_out])``).
KINDS: tuple[str, ...] = ("backbone_in", "backbone_out", "skip_in", "skip_out", "fused")

#: The "with FreeU" setting on the demo model when no factor is given: the official README's SD 1.4 / SDXL values
#: (b1 1.3, b2 1.4, s1 0.9, s2 0.2), version 2, official convention (which gives the demo U-Net both stages).
DEMO_SETTING = FreeUConfig(1.3, 1.4, 0.9, 0.2)

Progress = Callable[[], None]


@dataclass(frozen=True)
class Readout:
    """How the analyses read their samples (``freeu analyze``'s analysis options); checked when made.

    ``path``: the relative log amplitude curve along the paper's half-diagonal from DC (``"diagonal"``) or as the
    mean over ``bins`` rings (``"radial"``; default as many rings as the diagonal has points). ``spaces``: the spaces
    :func:`trajectory` and :func:`b_sweep` read (``None``: every space the model has; :func:`features` reads the
    U-Net's own). The trajectory's own: ``cutoff`` (the low/high split radius, a fraction of the Nyquist frequency),
    ``noisy`` (also the noisy sample ``x_t``) and ``columns`` (the steps shown in its image strip).
    """

    path: CurvePath = "diagonal"
    bins: int | None = None
    spaces: Sequence[Space] | None = None
    cutoff: float = 0.25
    noisy: bool = False
    columns: int = 8

    def __post_init__(self) -> None:
        check_path(self.path, self.bins, self.cutoff)
        if self.spaces is not None:
            object.__setattr__(self, "spaces", tuple(self.spaces))


def _spaces(model: Model, spaces: Sequence[str] | None) -> list[Space]:
    chosen = list(model.spaces if spaces is None else spaces)
    if not chosen:
        raise ValueError("spaces must name at least one space")
    for space in chosen:
        model.check_space(space)
    return chosen  # type: ignore[return-value]


def _chain(*callbacks: Callable[..., None] | None) -> Callable[..., None]:
    def call(*args: Any) -> None:
        for callback in callbacks:
            if callback is not None:
                callback(*args)

    return call


def trajectory(
    model: Model,
    seeds: Sequence[int],
    request: Request,
    *,
    readout: Readout = Readout(),
    config: FreeUConfig | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The denoising trajectory (paper Fig. 3 and 4), with FreeU ``config`` (``None``: the plain model).

    Per space of ``readout.spaces`` and step: ``x0`` (the relative log amplitude curve of the predicted clean samples
    of all seeds), ``x0_high_fraction`` (:func:`high_fraction` of the ``readout.cutoff`` split),
    ``x0_low_change``/``x0_high_change`` (RMS of the low/high part's change since the previous step, one entry per
    step from the second), and the same under ``xt`` for the noisy samples when ``readout.noisy``.
    ``images[space]`` holds the first seed's ``x0``, low and high parts (and ``xt`` ones) at the
    ``readout.columns`` steps of :func:`strip_steps`.
    """
    path, bins, cutoff = readout.path, readout.bins, readout.cutoff
    chosen = _spaces(model, readout.spaces)
    steps = request.steps
    shown = strip_steps(steps, readout.columns)
    which = ["x0", "xt"] if readout.noisy else ["x0"]
    numbers: dict[str, dict[str, Any]] = {s: {"frequency": None} for s in chosen}
    for entry in numbers.values():
        for w in which:
            for key in ("", "_high_fraction", "_low_change", "_high_change"):
                entry[w + key] = []
    images: dict[str, dict[str, list[torch.Tensor]]] = {s: {} for s in chosen}
    previous: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    timesteps: list[int] = []

    def on_step(record: Step) -> None:
        timesteps.append(record.timestep)
        for space in chosen:
            entry = numbers[space]
            for w in which:
                x = model.to_space(record.x0 if w == "x0" else record.sample, space)
                entry["frequency"], curve = amplitude_curve(x, path, bins)
                entry[w].append(curve)
                low, high = frequency_split(x.to(torch.float64), cutoff)
                entry[f"{w}_high_fraction"].append(high_fraction(x, high))
                if (space, w) in previous:
                    low_before, high_before = previous[(space, w)]
                    entry[f"{w}_low_change"].append(rms(low - low_before))
                    entry[f"{w}_high_change"].append(rms(high - high_before))
                previous[(space, w)] = (low, high)
                if record.index in shown:
                    for name, part in ((w, x), (f"{w}_low", low), (f"{w}_high", high)):
                        images[space].setdefault(name, []).append(part[0].float())

    model.sample(
        seeds, request, freeu=config, on_step=_chain(on_step, progress and (lambda _r: progress())), output="tensor"
    )
    if len(timesteps) != steps:
        raise RuntimeError(f"{model.name} reported {len(timesteps)} steps, expected {steps}")
    return {
        "seeds": [int(s) for s in seeds],
        "steps": request.steps,
        "timesteps": timesteps,
        "strip_steps": shown,
        "cutoff": cutoff,
        "path": path,
        "bins": bins,
        "noisy": readout.noisy,
        "freeu": None if config is None else config.to_dict(),
        "spaces": numbers,
        "images": {s: {k: torch.stack(v) for k, v in parts.items()} for s, parts in images.items()},
    }


def _swept(base: FreeUConfig, factor: str, value: float) -> FreeUConfig:
    if factor == "both":
        return base.replace(b1=value, b2=value)
    return base.replace(**{factor: value})


def b_sweep(
    model: Model,
    seeds: Sequence[int],
    request: Request,
    values: Sequence[float] = (1.0, 1.2, 1.4, 1.6),
    *,
    factor: SweptFactor = "b1",
    base: FreeUConfig | None = None,
    readout: Readout = Readout(),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Relative log amplitude of the final samples for each backbone factor in ``values`` (paper Fig. 6).

    ``factor`` is the factor varied (``b1``, ``b2`` or ``both`` together); every other field comes from ``base``
    (default: all factors 1, version 2, official convention, i.e. only the varied ``b`` acts, ``s = 1``). Per space
    of ``readout.spaces``: ``curves`` (one per value, along ``readout.path``), ``at_pi`` (each curve's last point)
    and ``high_band`` (:func:`high_band`). Pixel samples are clamped to ``[-1, 1]`` as images are when saved; latents
    are used as they are.
    """
    path, bins = readout.path, readout.bins
    if factor not in SWEPT:
        raise ValueError(f"factor must be one of {list(SWEPT)}, got {factor!r}")
    if not values:
        raise ValueError("values must hold at least one b")
    base = FreeUConfig(1.0, 1.0, 1.0, 1.0) if base is None else base
    configs = [_swept(base, factor, float(v)) for v in values]  # validated before any sampling
    chosen = _spaces(model, readout.spaces)
    numbers: dict[str, dict[str, Any]] = {
        s: {"frequency": None, "curves": [], "at_pi": [], "high_band": []} for s in chosen
    }
    images: dict[str, list[torch.Tensor]] = {s: [] for s in chosen}
    for config in configs:
        final = model.sample(
            seeds, request, freeu=config, on_step=progress and (lambda _r: progress()), output="tensor"
        )
        for space in chosen:
            x = model.to_space(final, space)
            if space == "pixel":
                x = x.clamp(-1, 1)
            frequency, curve = amplitude_curve(x, path, bins)
            entry = numbers[space]
            entry["frequency"] = frequency
            entry["curves"].append(curve)
            entry["at_pi"].append(curve[-1])
            entry["high_band"].append(high_band(frequency, curve))
            images[space].append(x[0])
    return {
        "seeds": [int(s) for s in seeds],
        "steps": request.steps,
        "factor": factor,
        "values": [float(v) for v in values],
        "base": base.to_dict(),
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
    model: Model,
    seeds: Sequence[int],
    request: Request,
    config: FreeUConfig,
    *,
    readout: Readout = Readout(),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Relative log amplitude of the features at every skip join (paper Fig. 7), with FreeU off and with ``config``.

    Each forward pass's features are reduced at once to one curve per :data:`KINDS` entry and averaged over every
    U-Net call of the sampling run (all steps, and both classifier-free-guidance branches where the pipeline has
    them); features live in the U-Net's own space. "Off" observes through ``config`` with every factor 1 (no FreeU
    operator runs; ``*_out`` equals ``*_in``). Per join: ``stage``, widths, ``size``, ``frequency``, and ``off``/``on``
    dicts of curves. ``stages`` averages :func:`high_band` of each kind over the joins of each stage (key ``"none"``
    for joins FreeU leaves alone). Of ``readout``, the curve's ``path`` and ``bins`` apply.
    """
    path, bins = readout.path, readout.bins
    if not isinstance(config, FreeUConfig):
        raise TypeError(f"config must be a freeu.FreeUConfig, got {type(config).__name__}")
    off_config = config.replace(b1=1.0, b2=1.0, s1=1.0, s2=1.0)
    # the stage each join gets under this convention (observations of joins left alone report no stage)
    stage_of = {p.join.name: p.stage for p in plan(model.target, config.convention)}
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for label, setting in (("off", off_config), ("on", config)):
        observer = _JoinCurves(path, bins)
        model.sample(
            seeds,
            request,
            freeu=setting,
            observer=observer,
            on_step=progress and (lambda _r: progress()),
            output="tensor",
        )
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
            label: {kind: mean_known([high_band(j["frequency"], j[label][kind]) for j in members]) for kind in KINDS}
            for label in ("off", "on")
        }
    return {
        "seeds": [int(s) for s in seeds],
        "steps": request.steps,
        "freeu": config.to_dict(),
        "path": path,
        "bins": bins,
        "joins": joins,
        "stages": stages,
    }
