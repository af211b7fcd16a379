"""``freeu eval``: honest quality evaluation of FreeU settings, on one machine or many.

Every configuration (FreeU off, presets, explicit factors, grids, step windows; for guided pipelines also FreeU off
at stronger guidance) is sampled on the same units (seeds, and prompts for text-to-image pipelines) from the same
noise, scored against a reference image set after the same resize, and compared with FreeU off by paired bootstrap
intervals over units. Generation and per-image analysis shard across processes (``accelerate launch -m freeu
eval ...``) and resume from the report folder. See ``docs/eval.md``.

Modules: :mod:`.configs` (the configuration set), :mod:`.generation` (sharded, resumable generation and analysis),
:mod:`.metrics` (SWD, RAPSD, FID, KID on sets and per image), :mod:`.features` (networks from local weights only),
:mod:`.stats` (paired bootstrap), :mod:`.results`, :mod:`.report`, :mod:`.cli`.
"""

from .cli import build_parser, main, register, run
from .configs import BASELINE, EvalConfig, expand_spec, load_config_file, parse_config_arg
from .stats import Estimate, paired_mean_difference, percentile_interval, resample, set_metric_estimates

__all__ = [
    "BASELINE",
    "Estimate",
    "EvalConfig",
    "build_parser",
    "expand_spec",
    "load_config_file",
    "main",
    "paired_mean_difference",
    "parse_config_arg",
    "register",
    "percentile_interval",
    "resample",
    "run",
    "set_metric_estimates",
]
