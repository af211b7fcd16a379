"""FreeU (Si et al., CVPR 2024) for diffusion U-Nets: exact, both versions, both stage conventions, no FFT needed.

import freeu
handle = freeu.apply(pipe, preset="sd15")   # or b1=..., b2=..., s1=..., s2=...
handle.remove()

The library needs only torch and imports nothing from the applications (``freeu.apps``: the command line, the
demo model, analyses, evaluation, the page). The method it implements is described in ``docs/method.md``.
"""

from .backbone import scale_backbone
from .config import PRESETS, FreeUConfig, Preset, Stage, get_preset
from .fourier import fourier_filter
from .hooks import FreeUHandle, JoinObservation, JoinPlan, active_config, apply, plan, remove
from .hosts import output_block_patch
from .models import CustomUNet, SkipJoin, UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CustomUNet",
    "FreeUConfig",
    "FreeUHandle",
    "JoinObservation",
    "JoinPlan",
    "Preset",
    "SkipJoin",
    "Stage",
    "UnsupportedModelError",
    "active_config",
    "apply",
    "fourier_filter",
    "get_preset",
    "output_block_patch",
    "plan",
    "remove",
    "scale_backbone",
]
