"""The bundled demo model's configuration, in one place: the U-Net, the noise schedule, where the shipped weights
are, how to build or load them, and the FreeU settings its demo shows.

It lives outside the command packages because every command and the runtime use it: :func:`freeu.apps.runtime.
load_model` loads ``demo``, ``demo-classes`` and folders in the demo's format through :func:`load_exported`, the demo's
training (:mod:`freeu.apps.demo.train`) builds and exports the U-Net, and ``freeu eval`` compares the demo's
settings (:data:`DEFAULT_ROWS`). The weights themselves are a distribution of their own, ``freeu-demo-weights``
(``packages/demo-weights`` in the repository), so that the library's wheel stays small: its package
``freeu_demo_weights`` is found here as a folder and never imported; where it is not installed, loading a demo model
says how to install it (:data:`WEIGHTS_HOW`).

The U-Net is a diffusers ``UNet2DModel`` for 32x32 RGB with three resolution levels (32, 16, 8) and widths
32/64/128. The widths are chosen for FreeU: the official convention puts stage 1 at joins whose backbone is 4x the
base width (128 here, as 1280 = 4 x 320 in Stable Diffusion) and stage 2 at 2x (64), so both stages get joins
(4 and 3 of the 9, a miniature of SD's 7 and 3 of 12). :func:`check_freeu_stages` verifies it with
:func:`freeu.plan`.

The noise schedule is DDPM's (Ho et al. 2020, the CIFAR-10 one): 1000 steps, betas linear from 1e-4 to 0.02,
epsilon prediction. Samplers (DDPM, DDIM) are built from the same dict, so training and sampling cannot disagree.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = [
    "CLASSES_WEIGHTS_DIR",
    "DEFAULT_ROWS",
    "DemoRow",
    "SCHEDULER_CONFIG",
    "UNET_CONFIG",
    "WEIGHTS_DIR",
    "WEIGHTS_HOW",
    "WEIGHTS_ROOT",
    "build_scheduler",
    "build_unet",
    "check_freeu_stages",
    "count_parameters",
    "load_exported",
]

logger = logging.getLogger(__name__)

#: What to do where the demo weights are not installed.
WEIGHTS_HOW = (
    "the demo models' weights are a distribution of their own: pip install freeu-demo-weights (from a clone of the "
    "freeu repository: pip install ./packages/demo-weights)"
)


def _weights_package() -> Path | None:
    """The folder of the installed ``freeu_demo_weights`` package, found without importing it; ``None`` if absent."""
    spec = importlib.util.find_spec("freeu_demo_weights")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]).resolve() if locations else None


#: The installed weights distribution's package folder, or a stand-in path naming what is missing.
WEIGHTS_ROOT = _weights_package() or Path("<freeu-demo-weights is not installed>")
#: Where the exported (shipped) weights live: ``unet.safetensors`` and ``config.json``.
WEIGHTS_DIR = WEIGHTS_ROOT / "weights"
#: The class-conditional demo model's (``--model demo-classes``): the same U-Net with a class embedding.
CLASSES_WEIGHTS_DIR = WEIGHTS_ROOT / "weights-classes"

#: Keyword arguments of ``diffusers.UNet2DModel``. JSON-serialisable (lists, not tuples) so it is stored verbatim in
#: checkpoints and in the exported ``config.json``.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "attention_head_dim": 32,
    "norm_num_groups": 32,
    "dropout": 0.0,
}

#: Keyword arguments of ``diffusers.DDPMScheduler`` (and, through ``from_config``, of ``DDIMScheduler``).
#: ``timestep_spacing="trailing"`` makes few-step samplers start at t = 999 (pure noise), as Lin et al. 2024 advise.
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "timestep_spacing": "trailing",
}

SamplerKind = Literal["ddpm", "ddim"]


def build_unet(config: dict[str, Any] | None = None, seed: int | None = None) -> torch.nn.Module:
    """A freshly initialised ``UNet2DModel`` from ``config`` (default :data:`UNET_CONFIG`).

    With ``seed``, the initial weights depend only on it (the global torch RNG is seeded and then restored).
    """
    from diffusers import UNet2DModel

    config = copy.deepcopy(UNET_CONFIG if config is None else config)
    if seed is None:
        return UNet2DModel(**config)
    state = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        return UNet2DModel(**config)
    finally:
        torch.set_rng_state(state)


def build_scheduler(kind: SamplerKind = "ddpm", config: dict[str, Any] | None = None) -> Any:
    """The DDPM (training, ancestral sampling) or DDIM (fast sampling) scheduler of :data:`SCHEDULER_CONFIG`."""
    from diffusers import DDIMScheduler, DDPMScheduler

    classes = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
    if kind not in classes:
        raise ValueError(f"kind must be one of {sorted(classes)}, got {kind!r}")
    return classes[kind](**copy.deepcopy(SCHEDULER_CONFIG if config is None else config))


def count_parameters(module: torch.nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def check_freeu_stages(unet: torch.nn.Module) -> dict[int, list[str]]:
    """The skip joins that FreeU's official convention gives stage 1 and 2; raises if either stage has none.

    The demo exists to show FreeU, so a config whose widths leave a stage empty (the rule wants backbone widths of
    4x and 2x the base width) is rejected here rather than producing a model on which ``b1``/``s1`` do nothing.
    """
    from freeu import plan

    stages: dict[int, list[str]] = {1: [], 2: []}
    for entry in plan(unet, convention="official"):
        if entry.stage is not None:
            stages[entry.stage].append(entry.join.name)
    empty = [stage for stage, joins in stages.items() if not joins]
    if empty:
        widths = list(getattr(unet.config, "block_out_channels", []))
        raise ValueError(
            f"block_out_channels={widths}: FreeU's official convention finds no join for stage(s) {empty}; it needs "
            f"backbone widths of 4x and 2x the base width {widths[:1]}, e.g. block_out_channels=[32, 64, 128]"
        )
    return stages


def load_exported(directory: str | Path = WEIGHTS_DIR, dtype: torch.dtype = torch.float32) -> tuple[Any, dict]:
    """The exported demo U-Net (eval mode, ``dtype``) and the parsed ``config.json`` next to its weights.

    ``config.json`` holds ``"unet"`` (the :func:`build_unet` config), ``"scheduler"`` (the
    :func:`build_scheduler` config) and ``"training"`` (how and on what it was trained).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if directory in (WEIGHTS_DIR, CLASSES_WEIGHTS_DIR) and not WEIGHTS_ROOT.is_dir():
        raise FileNotFoundError(WEIGHTS_HOW)
    weights, config_path = directory / "unet.safetensors", directory / "config.json"
    for path in (weights, config_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: train and export the demo model first (python tools/train_demo.py --out ...)"
            )
    config = json.loads(config_path.read_text())
    unet = build_unet(config["unet"])
    state = {k: v.to(torch.float32) for k, v in load_file(str(weights)).items()}
    unet.load_state_dict(state, strict=True)
    if dtype != torch.float32:  # (a no-op .to() would still make diffusers warn about keeping modules in float32)
        unet = unet.to(dtype)
    return unet.eval(), config


# -- the FreeU settings the demo shows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRow:
    """One row of the demo grid: a label and the keyword arguments of ``freeu.apply`` (``None``: FreeU off)."""

    label: str
    settings: dict[str, Any] | None = field(default=None)

    def describe(self) -> str:
        if self.settings is None:
            return self.label
        s = self.settings
        return f"{self.label}\nb1={s['b1']:g} b2={s['b2']:g}\ns1={s['s1']:g} s2={s['s2']:g}\nv{s['version']}"


def _setting(b1: float, b2: float, s1: float, s2: float, version: int = 2) -> dict[str, Any]:
    return dict(b1=b1, b2=b2, s1=s1, s2=s2, version=version, convention="official")


#: The demo's rows (``freeu demo``'s grid; ``freeu eval``'s default configurations on a demo model). The factors are
#: the SD 1.5 ones from the authors' README (b1 1.5, b2 1.6, s1 0.9, s2 0.2), split into their b and s halves, in
#: version 2 and 1, and a mild setting; the demo model's two stages sit at the same relative widths as SD's (4x and
#: 2x the base width), see :data:`UNET_CONFIG`.
DEFAULT_ROWS: tuple[DemoRow, ...] = (
    DemoRow("FreeU off"),
    DemoRow("b only", _setting(1.5, 1.6, 1.0, 1.0)),
    DemoRow("s only", _setting(1.0, 1.0, 0.9, 0.2)),
    DemoRow("FreeU", _setting(1.5, 1.6, 0.9, 0.2)),
    DemoRow("FreeU v1", _setting(1.5, 1.6, 0.9, 0.2, version=1)),
    DemoRow("mild", _setting(1.1, 1.2, 0.9, 0.9)),
)
