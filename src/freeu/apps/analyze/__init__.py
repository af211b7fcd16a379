"""``freeu analyze``: the paper's Fourier analyses (docs/method.md section 5) on the demo model or a pipeline.

- :mod:`.measures`: the measurements, pure functions on tensors (relative log amplitude, low/high split, summaries);
- :mod:`.experiments`: the three analyses as experiments on a :class:`freeu.apps.runtime.Model` (denoising
  trajectory, b sweep, skip-join features), returning plain numbers;
- :mod:`.plots`: their figures (matplotlib);
- :mod:`.cli`: the command line, ``analysis.json`` and the text summary.

``docs/analyze.md`` states what each computes.
"""

from .cli import register, run, summary, write_json
from .experiments import DEMO_SETTING, KINDS, Readout, b_sweep, features, trajectory
from .measures import frequency_split, high_band, normalised_radius, relative_log_amplitude, strip_steps
from .plots import plot_b_sweep, plot_features, plot_trajectory

__all__ = [
    "DEMO_SETTING",
    "KINDS",
    "Readout",
    "b_sweep",
    "features",
    "frequency_split",
    "high_band",
    "normalised_radius",
    "plot_b_sweep",
    "plot_features",
    "plot_trajectory",
    "register",
    "relative_log_amplitude",
    "run",
    "strip_steps",
    "summary",
    "trajectory",
    "write_json",
]
