"""ComfyUI in-process, for the scripts that run it in their own interpreter (tests/hosts/comfy_probe.py,
tests/hosts/write_sd15.py, benchmarks/comfyui_step.py): its argument parsing with ``--cpu``, the torchvision schemas
it needs here, and U-Nets built from its own model code with random weights."""

from __future__ import annotations

import sys
from typing import Any

import torch

#: ComfyUI's UNetModel arguments for Stable Diffusion 1.5's layout (what its UNETLoader detects as SD 1.5).
SD15_UNET: dict[str, Any] = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
    use_linear_in_transformer=False, context_dim=768, num_heads=8,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_temporal_attention=False,
    use_temporal_resblock=False,
)  # fmt: skip
#: A small U-Net of the same family: widths 32/64/128 (both official FreeU stages), 32-wide context, 4 heads.
SMALL_UNET: dict[str, Any] = dict(
    SD15_UNET, model_channels=32, num_res_blocks=[1, 1, 1], channel_mult=[1, 2, 4], transformer_depth=[1, 1, 0],
    transformer_depth_output=[1, 1, 1, 1, 0, 0], context_dim=32, num_heads=4,
)  # fmt: skip

_kept: list[Any] = []  # the torchvision schema library: a collected Library drops its ops


def start(comfy_dir: str) -> None:
    """Make ComfyUI importable here: its folder on the path, its arguments parsed as ``--cpu`` (the caller's
    ``sys.argv`` is restored), and the two torchvision schemas defined (no kernels). torchvision 0.28, the registry's
    build for torch 2.13, registers meta kernels for ops its C extension would define, and that extension does not
    load on a CPU torch; ComfyUI imports torchvision through a model family SD never uses."""
    if not _kept:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _kept.append(library)
    sys.path.insert(0, comfy_dir)
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401
        import comfy.model_management  # noqa: F401
    finally:
        sys.argv = argv


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Every parameter drawn from N(0, std^2) with a seeded generator (ComfyUI's layers skip initialisation)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return module


def patcher(unet_config: dict[str, Any], seed: int = 0, std: float = 0.05) -> Any:
    """A ComfyUI ModelPatcher around a BaseModel (SD 1.5's latent format) with this U-Net, random weights, on the
    CPU in float32: what model nodes receive as MODEL."""
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models_base

    heads = unet_config["num_heads"]

    class Config(comfy.supported_models_base.BASE):
        unet_config: dict = {}
        unet_extra_config = {"num_heads": heads, "num_head_channels": -1}
        latent_format = comfy.latent_formats.SD15

    config = Config({k: v for k, v in unet_config.items() if k != "num_heads"})
    config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = comfy.model_base.BaseModel(config, device=cpu)
    randomise(model.diffusion_model, seed, std)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def load_pack(folder: str) -> Any:
    """The node pack in ``folder`` imported as a module (what ComfyUI's loader executes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("freeu_comfyui", f"{folder}/__init__.py")
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    return pack
