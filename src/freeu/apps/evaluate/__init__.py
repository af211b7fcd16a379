"""``freeu eval``: honest quality evaluation of FreeU settings, on one machine or many.

Every configuration (FreeU off, presets, explicit factors, grids, step windows; for guided pipelines also FreeU off
at stronger guidance) is sampled on the same units (seeds, and prompts for text-to-image pipelines) from the same
noise, scored against a reference image set after the same resize, and compared with FreeU off by paired bootstrap
intervals over units. Generation and per-image analysis shard across processes (``accelerate launch -m freeu
eval ...``) and resume from the report folder. See ``docs/eval.md``.

From Python: ``evaluate(EvalRequest(model=..., configs=parse_config_arg("sd15"), seeds=64, out=...))`` returns an
:class:`EvalResult` (``result["sd15"].sets["swd"]``, ``result.guidance_meter``, ...) and writes the same folder as
the command line.

Modules: :mod:`.request` (what a run is asked), :mod:`.api` (the run), :mod:`.configs` (the configuration set),
:mod:`.generation` (sharded, resumable generation and analysis), :mod:`.meter` (matched guidance), :mod:`.metrics`
(SWD, RAPSD, FID, KID on sets and per image), :mod:`.features` (networks from local weights only), :mod:`.stats`
(paired bootstrap), :mod:`.results`, :mod:`.report`, :mod:`.processes`, :mod:`.cli`.
"""

from .api import EvalIncomplete, evaluate
from .cli import build_parser, main, register, run
from .configs import BASELINE, EvalConfig, expand_spec, load_config_file, parse_config_arg
from .meter import GuidanceMatch
from .request import EvalRequest, MetricOptions, StatisticsOptions
from .results import ConfigResult, EvalHeader, EvalResult
from .stats import Estimate, paired_mean_difference, percentile_interval, resample, set_metric_estimates

__all__ = [
    "BASELINE",
    "ConfigResult",
    "Estimate",
    "EvalConfig",
    "EvalHeader",
    "EvalIncomplete",
    "EvalRequest",
    "EvalResult",
    "GuidanceMatch",
    "MetricOptions",
    "StatisticsOptions",
    "build_parser",
    "evaluate",
    "expand_spec",
    "load_config_file",
    "main",
    "paired_mean_difference",
    "parse_config_arg",
    "percentile_interval",
    "register",
    "resample",
    "run",
    "set_metric_estimates",
]
