"""``freeu tune``: find the FreeU settings that help one model, and prove it on seeds the search never saw.

Modules: :mod:`.search` (the space, the candidates, successive halving on any evaluation), :mod:`.preset_file`
(writing preset files), :mod:`.report`, :mod:`.cli` (the command, which runs ``freeu eval`` for every rung). See
``docs/tune.md``.
"""

from .cli import build_parser, main, register, run
from .preset_file import preset_toml, write_preset
from .search import Rung, SearchSpace, draw_candidates, parse_space, plan_rungs, rung_cost, successive_halving

__all__ = [
    "Rung",
    "SearchSpace",
    "build_parser",
    "draw_candidates",
    "main",
    "parse_space",
    "plan_rungs",
    "preset_toml",
    "register",
    "rung_cost",
    "run",
    "successive_halving",
    "write_preset",
]
