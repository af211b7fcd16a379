"""A small self-written stand-in for the LDM/SGM ``openaimodel.UNetModel``: same module names and the same skip
pattern (``h = th.cat([h, hs.pop()], dim=1)`` before each output block), so the default tests do not need the LDM
package. Widths follow LDM's rules (``model_channels * channel_mult``, ``num_res_blocks`` per level)."""

from __future__ import annotations

import math

import torch as th
from torch import nn


def timestep_embedding(timesteps: th.Tensor, dim: int) -> th.Tensor:
    half = dim // 2
    freqs = th.exp(-math.log(10000) * th.arange(half, dtype=th.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return th.cat([th.cos(args), th.sin(args)], dim=-1)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context=None):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, self.out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(8, self.out_channels), nn.SiLU(), nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)
        )
        self.skip_connection = (
            nn.Identity() if self.out_channels == channels else nn.Conv2d(channels, self.out_channels, 1)
        )

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x).reshape(b, c, -1)).chunk(3, dim=1)
        attn = th.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)
        return x + self.proj_out(v @ attn.transpose(1, 2)).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = self.out_channels = channels
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = self.out_channels = channels
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class UNetModel(nn.Module):
    def __init__(
        self,
        in_channels=4,
        model_channels=32,
        out_channels=4,
        num_res_blocks=2,
        channel_mult=(1, 2, 4, 4),
        attention_levels=(1, 2),
    ):
        super().__init__()
        self.model_channels = model_channels
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        chans, ch = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, emb, mult * model_channels)]
                ch = mult * model_channels
                if level in attention_levels:
                    layers.append(AttentionBlock(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb), AttentionBlock(ch), ResBlock(ch, emb))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb, model_channels * mult)]
                ch = model_channels * mult
                if level in attention_levels:
                    layers.append(AttentionBlock(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x, timesteps=None, context=None, transformer_options=None, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        # ComfyUI's and Forge's hosts call their output-block patches on (h, hsp) just before the concatenation
        patches = (transformer_options or {}).get("patches", {}).get("output_block_patch", [])
        for index, module in enumerate(self.output_blocks):
            hsp = hs.pop()
            if patches:
                transformer_options["block"] = ("output", index)
                for patch in patches:
                    h, hsp = patch(h, hsp, transformer_options)
            h = th.cat([h, hsp], dim=1)
            h = module(h, emb, context)
        return self.out(h)


class LatentDiffusionWrapper(nn.Module):
    """Holds the U-Net the way LDM's LatentDiffusion does (``.model.diffusion_model``)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet
