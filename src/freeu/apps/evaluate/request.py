"""What one ``freeu eval`` run is asked to do, as typed values: an :class:`EvalRequest`, with its
:class:`MetricOptions` (how images are scored) and :class:`StatisticsOptions` (the paired bootstrap).

The command line builds one request from its flags, once (:func:`freeu.apps.evaluate.cli.request_from_args`);
``freeu tune`` builds its requests directly. Each field is the flag of the same name (``first_seed`` is
``--first-seed``, ``metrics.swd_levels`` is ``--swd-levels``), with the same default, and the errors that
:func:`freeu.apps.evaluate.evaluate` raises name the flag. :meth:`EvalRequest.argv` gives the command line back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..options import FACTORS, FREEU_FIELDS, MAX_CELLS
from ..runtime import DEFAULT_MODEL, Size
from .configs import BASELINE, EvalConfig, guidance_baselines, with_baseline

__all__ = [
    "DEFAULT_CLASS_SEEDS",
    "DEFAULT_SEEDS",
    "DTYPES",
    "EvalRequest",
    "MetricOptions",
    "SWD_REPLICATES",
    "StatisticsOptions",
    "config_spec",
]

#: ``seeds`` when not given: per prompt, and per class of a class-conditional demo model (15 classes: 240 units).
DEFAULT_SEEDS, DEFAULT_CLASS_SEEDS = 256, 16
#: The dtypes a model may be sampled in.
DTYPES = ("float32", "float16", "bfloat16")
#: How the set-level SWD's bootstrap replicates are computed (see :meth:`LaplacianSWD.set_values`).
SWD_REPLICATES = ("linear", "exact")
#: ``--guidance-match``: how a matched baseline (and a compensation) follows the guidance meter.
GUIDANCE_MATCHES = ("auto", "prompt", "global", "steps")


def _integer(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _number(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0{' or None' if optional else ''}, got {value!r}")


def _choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _size(name: str, value: object) -> Size | None:
    if value is None:
        return None
    if not isinstance(value, tuple) or len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"{name} must be a Size(height=..., width=...) of positive integers or None, got {value!r}")
    return Size(*value)


def _text(name: str, value: object, *, optional: bool = True) -> None:
    if not isinstance(value, str) and not (optional and value is None):
        raise ValueError(f"{name} must be text{' or None' if optional else ''}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class MetricOptions:
    """How the images are scored (the flags of ``freeu eval``'s metrics group).

    ``reference``: a folder of reference images (``None``: the demo models' held-out patches, or no reference for
    other models, and then no SWD, RAPSD, FID, KID); ``reference_count``: the most of them used; ``eval_size``: the
    size every image is resized to before scoring (``None``: the generated size); ``fid_features`` and ``clip``: the
    FID/KID feature network and the CLIP model (``auto``, ``none`` or a path, see :mod:`.features`); ``swd_levels``,
    ``swd_patches``, ``swd_projections``: the SWD's Laplacian levels, patches per image and level, directions.
    """

    reference: str | None = None
    reference_count: int = 1024
    eval_size: Size | None = None
    fid_features: str = "auto"
    clip: str = "auto"
    swd_levels: int = 3
    swd_patches: int = 64
    swd_projections: int = 512

    def __post_init__(self) -> None:
        _text("reference", self.reference)
        _text("fid_features", self.fid_features, optional=False)
        _text("clip", self.clip, optional=False)
        for name in ("reference_count", "swd_levels", "swd_patches", "swd_projections"):
            _integer(name, getattr(self, name), 1)
        size = _size("eval_size", self.eval_size)
        if size is not None and min(size) < 8:
            raise ValueError(f"eval_size must be at least 8 pixels a side, got {size}")
        object.__setattr__(self, "eval_size", size)


@dataclass(frozen=True, kw_only=True)
class StatisticsOptions:
    """The paired bootstrap over units: ``bootstrap`` replicates for per-image means, ``set_bootstrap`` for
    set-level metrics (0: point values only), the set-level SWD's replicates (``linear`` or ``exact``), the seed of
    the resampling and the interval level ``confidence`` in (0, 1)."""

    bootstrap: int = 2000
    set_bootstrap: int = 1000
    swd_replicates: str = "linear"
    bootstrap_seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        _integer("bootstrap", self.bootstrap, 0)
        _integer("set_bootstrap", self.set_bootstrap, 0)
        _choice("swd_replicates", self.swd_replicates, SWD_REPLICATES)
        if isinstance(self.bootstrap_seed, bool) or not isinstance(self.bootstrap_seed, int):
            raise ValueError(f"bootstrap_seed must be an integer, got {self.bootstrap_seed!r}")
        level = self.confidence
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise ValueError(f"confidence must be a level in (0, 1) like 0.95, got {level!r}")


@dataclass(frozen=True, kw_only=True)
class EvalRequest:
    """One evaluation: what to sample, how to score it, where to write it. Built once (by the command line from its
    flags, or by a caller such as ``freeu tune``) and never changed; checked when built, with errors that name the
    field and what it allows.

    - ``model``: a pipeline folder, a cached hub id, ``demo-classes`` or ``demo`` (or an exported demo folder);
    - ``configs``: the configurations (:class:`EvalConfig`, e.g. from :func:`~.configs.parse_config_arg`); FreeU off
      is added as ``off`` when missing; empty: the default set (the demo rows on a demo model, else ``auto``);
    - ``prompts``: the prompts (text-to-image pipelines; a class-conditional demo model: its classes when empty);
    - ``seeds`` per prompt from ``first_seed`` (``None``: :data:`DEFAULT_SEEDS`, or :data:`DEFAULT_CLASS_SEEDS` on
      a class-conditional demo model); ``steps``, ``negative_prompt``, ``guidance`` (``None``: the model's),
      ``size`` (pipelines), ``dtype``, ``device`` (``None``: this process's accelerator), ``batch_size``;
    - ``guidance_baselines``: FreeU off at these stronger guidance scales; ``matched_guidance``: FreeU off at each
      FreeU configuration's equivalent guidance, measured by the guidance meter on ``guidance_units`` units
      (``--guidance-baselines auto``), matched as ``guidance_match`` says (``auto``: ``prompt`` where the meter's
      units hold every prompt, else ``global``; ``steps``: each prompt's guidance curve); configurations with
      ``compensate`` are measured too; ``max_configs``: the most configurations, baselines included;
    - ``metrics``, ``statistics``: :class:`MetricOptions`, :class:`StatisticsOptions`;
    - ``out``: the report folder; a run into a folder that holds an earlier run's images and analyses reuses them
      (resume); ``grid_units``: units shown in ``samples.png``; ``progress``: progress bars;
    - ``command``: what ``command.txt`` records as the command that ran (``None``: ``python -m freeu eval`` with
      :meth:`argv`).
    """

    model: str = DEFAULT_MODEL
    configs: tuple[EvalConfig, ...] = ()
    prompts: tuple[str, ...] = ()
    seeds: int | None = None
    first_seed: int = 0
    steps: int = 25
    negative_prompt: str | None = None
    guidance: float | None = None
    size: Size | None = None
    dtype: str = "float32"
    device: str | None = None
    batch_size: int = 64
    guidance_baselines: tuple[float, ...] = ()
    matched_guidance: bool = False
    guidance_units: int = 4
    guidance_match: str = "auto"
    max_configs: int = MAX_CELLS
    metrics: MetricOptions = field(default_factory=MetricOptions)
    statistics: StatisticsOptions = field(default_factory=StatisticsOptions)
    out: Path = Path("freeu-eval")
    grid_units: int = 8
    progress: bool = True
    command: str | None = None

    def __post_init__(self) -> None:
        _text("model", self.model, optional=False)
        for name in ("configs", "prompts", "guidance_baselines"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ValueError(f"{name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not all(isinstance(c, EvalConfig) for c in self.configs):
            raise ValueError(f"configs must be EvalConfig values (see parse_config_arg), got {self.configs!r}")
        if not all(isinstance(p, str) for p in self.prompts):
            raise ValueError(f"prompts must be text, got {self.prompts!r}")
        self._check_numbers()
        _text("negative_prompt", self.negative_prompt)
        _text("device", self.device)
        _text("command", self.command)
        _choice("dtype", self.dtype, DTYPES)
        _choice("guidance_match", self.guidance_match, GUIDANCE_MATCHES)
        object.__setattr__(self, "size", _size("size", self.size))
        object.__setattr__(self, "out", Path(self.out))
        if not isinstance(self.metrics, MetricOptions):
            raise ValueError(f"metrics must be MetricOptions, got {self.metrics!r}")
        if not isinstance(self.statistics, StatisticsOptions):
            raise ValueError(f"statistics must be StatisticsOptions, got {self.statistics!r}")
        self.config_set([])  # unique names, 'off' not redefined: refused now, not after loading the model
        if self.guidance_match != "auto" and not self.matched_guidance and not any(c.compensate for c in self.configs):
            raise ValueError(f"guidance_match {self.guidance_match!r} (--guidance-match) decides how "
                             "--guidance-baselines auto and compensate= follow the guidance meter; give one of them, "
                             "or leave it out")  # fmt: skip

    def _check_numbers(self) -> None:
        if self.seeds is not None:
            _integer("seeds", self.seeds, 1)
        for name, minimum in (("first_seed", 0), ("steps", 1), ("batch_size", 1), ("guidance_units", 1),
                              ("max_configs", 1), ("grid_units", 0)):  # fmt: skip
            _integer(name, getattr(self, name), minimum)
        _number("guidance", self.guidance, optional=True)
        for value in self.guidance_baselines:
            _number("guidance_baselines", value)
        object.__setattr__(self, "guidance_baselines", tuple(float(v) for v in self.guidance_baselines))
        if not isinstance(self.matched_guidance, bool) or not isinstance(self.progress, bool):
            raise ValueError("matched_guidance and progress must be True or False")

    def config_set(self, default: Sequence[EvalConfig]) -> list[EvalConfig]:
        """The configurations the run compares: ``configs`` (``default`` when empty), then FreeU off at each of
        ``guidance_baselines`` (ascending), FreeU off first (the matched-guidance baselines come after the meter)."""
        configs = list(self.configs) or list(default)
        configs += guidance_baselines(sorted(set(self.guidance_baselines)))
        return with_baseline(configs)

    def argv(self) -> list[str]:
        """The ``freeu eval`` arguments of this request: the fields that differ from their defaults (``--model``,
        ``--steps`` and ``--out`` always). A configuration of a grid (``NAME[key=value]``) is written under its
        name, which ``--config`` does not take back."""
        out = ["--model", self.model]
        defaults = EvalRequest()
        plain = ("seeds", "first_seed", "steps", "negative_prompt", "guidance", "size", "dtype", "device", "batch_size")
        for name in plain:
            value = getattr(self, name)
            if value != getattr(defaults, name) or name == "steps":
                out += _flag(name, value)
        for prompt in self.prompts:
            out += ["--prompt", prompt]
        for config in self.configs:
            out += ["--config", f"{config.name}:{config_spec(config)}"]
        baselines = [repr(v) for v in self.guidance_baselines] + (["auto"] if self.matched_guidance else [])
        if baselines:
            out += ["--guidance-baselines", ",".join(baselines)]
        for name in ("guidance_units", "guidance_match", "max_configs", "grid_units"):
            if getattr(self, name) != getattr(defaults, name):
                out += _flag(name, getattr(self, name))
        for options in (self.metrics, self.statistics):
            base = type(options)()
            out += [a for f in fields(options) if getattr(options, f.name) != getattr(base, f.name)
                    for a in _flag(f.name, getattr(options, f.name))]  # fmt: skip
        return out + ([] if self.progress else ["--no-progress"]) + ["--out", str(self.out)]


def _flag(name: str, value: Any) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if value is None:
        return []
    if isinstance(value, Size):
        return [flag, str(value)]  # WIDTHxHEIGHT
    return [flag, _word(value)]


def _word(value: Any) -> str:
    """A value as a command-line word: floats in full (``repr``), everything else as text."""
    return repr(value) if isinstance(value, float) else str(value)


def config_spec(config: EvalConfig) -> str:
    """A configuration as the spec ``--config NAME:SPEC`` takes (``off``, ``sd15 start=0.5``, ``b1=1.2 b2=1.4
    s1=0.9 s2=0.5 version=1``, with ``guidance=G`` where it has its own scale): parsing it gives the configuration's
    settings back."""
    from freeu.config import FreeUConfig, get_preset

    parts: list[str] = []
    settings = config.freeu
    if settings is None:  # FreeU off, or auto before the model chose its preset
        parts.append(BASELINE if config.preset is None else config.preset)
        parts += [f"{k}={_word(v)}" for k, v in config.overrides]
    else:
        base = None
        if config.preset is not None and config.preset != "auto":
            try:
                base = get_preset(config.preset).config
            except (OSError, ValueError):  # a preset file that is gone: the settings themselves
                base = None
        if base is not None:
            parts += [config.preset or "", *_changed(settings, base, (*FACTORS, *FREEU_FIELDS))]
        else:
            parts += [f"{k}={_word(getattr(settings, k))}" for k in FACTORS]
            base = FreeUConfig(1, 1, 1, 1)
            parts += _changed(settings, base, FREEU_FIELDS)
        parts += _stage_keys(settings, base)
    if config.guidance is not None:
        parts.append(f"guidance={config.guidance!r}")
    if config.compensate is not None:
        parts.append(f"compensate={config.compensate}")
    return " ".join(parts)


def _changed(settings: Any, base: Any, keys: Sequence[str]) -> list[str]:
    """``key=value`` for each of ``keys`` where ``settings`` differs from ``base``."""
    return [f"{k}={_word(getattr(settings, k))}" for k in keys if getattr(settings, k) != getattr(base, k)]


def _stage_keys(settings: Any, base: Any) -> list[str]:
    """``stageK=...`` keys for the stage settings beyond the factors, where they differ from ``base``'s."""
    from freeu.config import stage_settings_text

    text = stage_settings_text(settings)
    if text == stage_settings_text(base):
        return []
    return [f"stage{part.partition(':')[0]}={part.partition(':')[2]}" for part in text.split("; ") if part]
