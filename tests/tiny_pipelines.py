"""Tiny random diffusers pipelines saved to a folder, for the command line's end-to-end tests (nothing downloaded):
a CLIP text encoder and tokenizer built from configs and a 27-token vocabulary, a tiny VAE, tiny U-Nets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def _tokenizer(folder: Path):
    transformers = pytest.importorskip("transformers")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _text_encoder():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPTextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    return transformers.CLIPTextModel(config).eval()


def _vae():
    diffusers = pytest.importorskip("diffusers")
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=32,
    )  # fmt: skip


def sd_pipeline(folder: Path) -> Path:
    """An SD-1.5-shaped text-to-image pipeline: 32x32 images, 16x16 latents."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 128, 128), layers_per_block=1, cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8,
    )  # fmt: skip
    pipe = diffusers.StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder(), tokenizer=_tokenizer(folder / "_tok"), unet=unet,
        scheduler=diffusers.DDIMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def sdxl_pipeline(folder: Path) -> Path:
    """An SDXL-shaped text-to-image pipeline: two text encoders (the second with a projection), ``text_time`` added
    conditioning, three U-Net levels without attention at the top one; 32x32 images, 16x16 latents."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1), cross_attention_dim=64, attention_head_dim=(2, 4, 8),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32,
    )  # fmt: skip
    second = transformers.CLIPTextModelWithProjection(_text_encoder().config).eval()
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_text_encoder(), text_encoder_2=second, tokenizer=_tokenizer(folder / "_tok"),
        tokenizer_2=_tokenizer(folder / "_tok2"), unet=unet, scheduler=diffusers.EulerDiscreteScheduler(),
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def video_pipeline(folder: Path) -> Path:
    """A ModelScope-shaped text-to-video pipeline (UNet3DConditionModel): 32x32 frames."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet3DConditionModel(
        sample_size=16, block_out_channels=(32, 64, 128), layers_per_block=1, cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    )  # fmt: skip
    pipe = diffusers.TextToVideoSDPipeline(
        vae=_vae(), text_encoder=_text_encoder(), tokenizer=_tokenizer(folder / "_tok"), unet=unet,
        scheduler=diffusers.DDIMScheduler(),
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def random_pictures(folder: Path, count: int, height: int = 32, width: int = 32, digits: int = 1) -> Path:
    """``count`` PNGs of uniform random RGB noise (seeded, one generator for all), a reference folder for the
    weight-free metrics; ``digits`` pads the file names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i:0{digits}d}.png")
    return folder


def plain_call(pipe, *, prompt: str, seed: int, count: int, steps: int, guidance: float, height: int, width: int):
    """``count`` PIL images from the pipeline called directly, every sample from ``seed``'s noise drawn on the CPU
    (``(4, height / 8, width / 8)`` per sample): the pipeline's own result, an oracle independent of the runtime."""
    factor = pipe.vae_scale_factor
    noise = torch.randn((4, height // factor, width // factor), generator=torch.Generator().manual_seed(seed))
    out = pipe(prompt=[prompt] * count, guidance_scale=guidance, num_inference_steps=steps, height=height,
               width=width, latents=noise.expand(count, -1, -1, -1).clone(), output_type="pil")  # fmt: skip
    return list(out.images)


def ddpm_pipeline(folder: Path) -> Path:
    """An unconditional pixel-space DDPMPipeline (a 16x16 UNet2DModel, widths 16/32/64: both official stages)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=8,
    )  # fmt: skip
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder
