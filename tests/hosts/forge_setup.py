"""Run the real Forge's code in this process (a script of tests/hosts, run by Forge's Python): its folder,
``repositories/huggingface_guess`` and ``packages_3rdparty`` on the path, its arguments parsed as ``--always-cpu``
(what anything that imports ``backend.*`` needs on a machine without a GPU), and torchvision importable on a CPU
torch.

torchvision 0.28, the registry's build for torch 2.13, registers meta kernels for two operators its C extension
would define, and that extension does not load on a CPU torch: declaring the two schemas first lets it import
(Forge imports torchvision through packages txt2img never uses)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

_kept: list[Any] = []  # the schema library: a collected Library drops its operators

#: Stable Diffusion 1.5's U-Net in the arguments of Forge's IntegratedUNet2DConditionModel (the LDM layout).
SD15_UNET: dict[str, Any] = dict(
    in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
    num_heads=8, num_head_channels=-1, use_spatial_transformer=True, transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1, context_dim=768,
    use_linear_in_transformer=False, adm_in_channels=None,
)  # fmt: skip


#: the LDM UNetModel of tests/core/test_ldm_unet.py in Forge's arguments (attention at the middle two levels)
SMALL_UNET: dict[str, Any] = dict(
    in_channels=4, model_channels=32, out_channels=4, num_res_blocks=2, channel_mult=(1, 2, 4, 4), num_heads=-1,
    num_head_channels=8, use_spatial_transformer=True, transformer_depth=[0, 0, 1, 1, 1, 1, 0, 0],
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1, context_dim=32,
)  # fmt: skip


def define_torchvision_schemas() -> None:
    if not _kept:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _kept.append(library)


def start(forge_dir: str | Path) -> None:
    """Make Forge's ``backend`` importable here on the CPU (the caller's ``sys.argv`` is restored)."""
    define_torchvision_schemas()
    forge_dir = Path(forge_dir).resolve()
    for sub in ("", "repositories/huggingface_guess", "packages_3rdparty"):
        sys.path.insert(0, str(forge_dir / sub))
    argv, sys.argv = sys.argv, [sys.argv[0], "--always-cpu"]
    try:
        import backend.args  # noqa: F401  (parses the arguments once, at import)
    finally:
        sys.argv = argv


def randomise(module: torch.nn.Module, seed: int, std: float) -> torch.nn.Module:
    """Weights (parameters of two or more dimensions) drawn from N(0, std^2) with a seeded generator; biases and
    norms keep their initial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return module
