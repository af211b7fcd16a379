"""Tiny random diffusers video and ControlNet-XS U-Nets, and inputs for them (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch

FRAMES = 3


def _common() -> dict:
    return dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128), layers_per_block=1)


def build(name: str, seed: int = 0) -> torch.nn.Module:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    down3d = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D")
    up3d = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    if name == "unet3d":
        model = diffusers.UNet3DConditionModel(
            **_common(), down_block_types=down3d, up_block_types=up3d, norm_num_groups=8, cross_attention_dim=32,
            attention_head_dim=8,
        )  # fmt: skip
    elif name == "motion":
        model = diffusers.UNetMotionModel(
            **_common(), norm_num_groups=8, cross_attention_dim=32, num_attention_heads=(2, 4, 8),
            motion_num_attention_heads=2, motion_max_seq_length=8,
            down_block_types=("CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion"),
        )  # fmt: skip
    elif name == "i2vgen":
        model = diffusers.I2VGenXLUNet(
            **_common(), down_block_types=down3d, up_block_types=up3d, norm_num_groups=8, cross_attention_dim=32,
            attention_head_dim=8, num_attention_heads=None,
        )  # fmt: skip
    elif name == "svd":
        model = diffusers.UNetSpatioTemporalConditionModel(
            **_common(), cross_attention_dim=32, num_attention_heads=(2, 4, 8), addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=24,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                              "DownBlockSpatioTemporal"),
            up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                            "CrossAttnUpBlockSpatioTemporal"),
        )  # fmt: skip
    elif name == "controlnet-xs":
        base = diffusers.UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8,
        )  # fmt: skip
        adapter = diffusers.ControlNetXSAdapter.from_unet(
            base, size_ratio=0.5, learn_time_embedding=True, conditioning_embedding_out_channels=(8, 16, 32, 32)
        )
        model = diffusers.UNetControlNetXSModel.from_unet(base, adapter)
    else:
        raise ValueError(name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # no zero-initialised layer may hide an effect (ControlNet-XS starts with zero convs)
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def inputs(name: str, batch: int = 2, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    timestep = torch.tensor([700] * batch)
    if name == "unet3d":
        return dict(sample=randn(batch, 4, FRAMES, 8, 8), timestep=timestep, encoder_hidden_states=randn(batch, 5, 32))
    if name == "motion":  # the AnimateDiff pipeline repeats the text states per frame
        states = randn(batch, 5, 32).repeat_interleave(FRAMES, dim=0)
        return dict(sample=randn(batch, 4, FRAMES, 8, 8), timestep=timestep, encoder_hidden_states=states)
    if name == "i2vgen":
        return dict(
            sample=randn(batch, 4, FRAMES, 8, 8), timestep=timestep, fps=torch.tensor([8] * batch),
            image_latents=randn(batch, 4, FRAMES, 8, 8), image_embeddings=randn(batch, 32),
            encoder_hidden_states=randn(batch, 5, 32),
        )  # fmt: skip
    if name == "svd":
        return dict(
            sample=randn(batch, FRAMES, 4, 8, 8), timestep=timestep, encoder_hidden_states=randn(batch, 1, 32),
            added_time_ids=torch.tensor([[6.0, 127.0, 0.02]] * batch),
        )  # fmt: skip
    if name == "controlnet-xs":  # four levels: 16x16 keeps the deepest map at 2x2 (1x1 is NaN for the authors' v2)
        return dict(
            sample=randn(batch, 4, 16, 16), timestep=timestep, encoder_hidden_states=randn(batch, 5, 32),
            controlnet_cond=randn(batch, 3, 128, 128),
        )  # fmt: skip
    raise ValueError(name)


@torch.no_grad()
def run(model: torch.nn.Module, kwargs: dict) -> torch.Tensor:
    return model(**kwargs, return_dict=False)[0]
