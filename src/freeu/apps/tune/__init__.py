"""``freeu tune``: find the FreeU settings that help one model, and prove it on seeds the search never saw.

Modules: :mod:`.settings` (what a tune is asked, its objectives), :mod:`.search` (the space, the candidates,
successive halving on any evaluation), :mod:`.runner` (the tune, on :func:`freeu.apps.evaluate.evaluate`),
:mod:`.preset_file` (writing preset files), :mod:`.report`, :mod:`.cli` (the command). See ``docs/tune.md``.
"""

from .cli import build_parser, main, register, run
from .preset_file import preset_toml, write_preset
from .report import TuneOutcome
from .runner import run_tune
from .search import Rung, SearchSpace, draw_candidates, parse_space, plan_rungs, rung_cost, successive_halving
from .settings import TuneSettings

__all__ = [
    "Rung",
    "SearchSpace",
    "TuneOutcome",
    "TuneSettings",
    "build_parser",
    "draw_candidates",
    "main",
    "parse_space",
    "plan_rungs",
    "preset_toml",
    "register",
    "rung_cost",
    "run",
    "run_tune",
    "successive_halving",
    "write_preset",
]
