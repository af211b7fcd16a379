"""Tiny random diffusers U-Nets built from configs (nothing downloaded), and helpers to run them."""

from __future__ import annotations

import pytest
import torch


def rerandomise_zeros(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give zero-initialised weights random values, so no output is zero by construction."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def sd15_unet(seed: int = 0) -> torch.nn.Module:
    """SD-1.5-shaped: four levels, widths 1x 2x 4x 4x the base, cross-attention in the first three."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return rerandomise_zeros(unet, seed)


def sdxl_unet(seed: int = 0) -> torch.nn.Module:
    """SDXL-shaped: three levels, no attention at the top level, text_time added conditioning."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=32,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32,
        norm_num_groups=8,
    )
    return rerandomise_zeros(unet, seed)


def unet_inputs(unet: torch.nn.Module, size: int = 16, batch: int = 2, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    cfg = unet.config
    dtype = next(unet.parameters()).dtype
    kwargs = {
        "sample": torch.randn(batch, cfg.in_channels, size, size, generator=gen).to(dtype),
        "timestep": torch.tensor([500] * batch),
    }
    if hasattr(cfg, "cross_attention_dim") and cfg.cross_attention_dim:
        kwargs["encoder_hidden_states"] = torch.randn(batch, 5, cfg.cross_attention_dim, generator=gen).to(dtype)
    if getattr(cfg, "addition_embed_type", None) == "text_time":
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, text_dim, generator=gen).to(dtype),
            "time_ids": torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * batch, dtype=dtype),
        }
    return kwargs


@torch.no_grad()
def run(unet: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return unet(**inputs).sample


@pytest.fixture(scope="module")
def sd15() -> torch.nn.Module:
    return sd15_unet()


@pytest.fixture(scope="module")
def sdxl() -> torch.nn.Module:
    return sdxl_unet()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run as fast on one thread as on two, and do not stall when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    """The real ComfyUI's source folder (tests/hosts; see comfy_host.py), or the test is skipped saying why."""
    from comfy_host import find_comfyui

    return find_comfyui(tmp_path_factory)


@pytest.fixture(scope="session")
def forge(tmp_path_factory):
    """``(Forge's folder, the Python that runs it)`` (tests/hosts; see forge_host.py), or the test is skipped saying
    why."""
    from forge_host import find_forge, forge_python

    python = forge_python()
    return find_forge(tmp_path_factory), python


#: A tiny demo-style U-Net: 16 px, widths 8/16/32 (the shipped demo model is 32 px, widths 32/64/128).
TINY_DEMO = {
    "sample_size": 16, "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16, 32], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D"] * 3, "up_block_types": ["UpBlock2D"] * 3, "norm_num_groups": 4,
}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A demo-style weights folder (unet.safetensors + config.json) holding a tiny random UNet2DModel."""
    import json

    pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    from freeu.apps.demo_model import SCHEDULER_CONFIG, build_unet

    folder = tmp_path_factory.mktemp("tiny-demo")
    unet = rerandomise_zeros(build_unet(TINY_DEMO, seed=0))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(folder / "unet.safetensors"))
    (folder / "config.json").write_text(json.dumps({"unet": TINY_DEMO, "scheduler": SCHEDULER_CONFIG}))
    return folder
