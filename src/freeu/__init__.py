"""FreeU (Si et al., CVPR 2024) for diffusion U-Nets: exact, both versions, both stage conventions, no FFT needed.

import freeu
handle = freeu.apply(pipe, preset="sd15")   # or b1=..., b2=..., s1=..., s2=...
handle.remove()
"""

from .backbone import scale_backbone, structure_factor
from .config import PRESETS, FreeUConfig, Preset, get_preset
from .fourier import filtered_frequencies, fourier_filter
from .hooks import FreeUHandle, JoinObservation, JoinPlan, active_config, apply, plan, remove, window_weight
from .models import SUPPORTED, CustomUNet, SkipJoin, UnsupportedModelError

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SUPPORTED",
    "CustomUNet",
    "FreeUConfig",
    "FreeUHandle",
    "JoinObservation",
    "JoinPlan",
    "Preset",
    "SkipJoin",
    "UnsupportedModelError",
    "active_config",
    "apply",
    "filtered_frequencies",
    "fourier_filter",
    "get_preset",
    "plan",
    "remove",
    "scale_backbone",
    "structure_factor",
    "window_weight",
]
