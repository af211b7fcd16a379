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


def _text_encoder(projection: bool = False):
    """A tiny CLIP text encoder 32 wide; with ``projection`` its pooled output is projected (32 wide), as Stable
    Cascade's pipelines take it."""
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPTextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    model = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return model(config).eval()


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


def _t5(max_length: int):
    """A T5 tokenizer (a Unigram model over letters, built in code: no sentencepiece file) and a 16-wide encoder."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz ")]
    core = tokenizers.Tokenizer(tokenizers.models.Unigram(pieces, unk_id=2))
    tokenizer = transformers.T5TokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                             unk_token="<unk>", model_max_length=max_length, extra_ids=0)  # fmt: skip
    config = transformers.T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    return tokenizer, transformers.T5EncoderModel(config).eval()


def _vae8():
    """A tiny VAE with Stable Diffusion's 8x downsampling (four levels), which Hunyuan-DiT's pipeline assumes."""
    diffusers = pytest.importorskip("diffusers")
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
        sample_size=128,
    )  # fmt: skip


def hunyuan_pipeline(folder: Path) -> Path:
    """A Hunyuan-DiT text-to-image pipeline: a 6-block transformer 16 wide (two long skips), patches of 2, a BERT and
    a T5 encoder 16 wide with their tokenizers (a letter vocabulary); 128 px images, 16x16 latents, 8x8 tokens."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    (folder / "_bert").mkdir(parents=True, exist_ok=True)
    vocab = folder / "_bert" / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]) + "\n")
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=80)).eval()  # fmt: skip
    t5_tokenizer, t5 = _t5(256)
    torch.manual_seed(0)
    transformer = diffusers.HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=16, hidden_size=16,
        num_layers=6, mlp_ratio=2.0, learn_sigma=True, cross_attention_dim=16, cross_attention_dim_t5=16,
        pooled_projection_dim=8, text_len=77, text_len_t5=256, use_style_cond_and_image_meta_size=False,
    )  # fmt: skip
    pipe = diffusers.HunyuanDiTPipeline(
        vae=_vae8(), text_encoder=bert, tokenizer=transformers.BertTokenizer(str(vocab), model_max_length=77),
        transformer=transformer, scheduler=diffusers.DDIMScheduler(prediction_type="v_prediction"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False, text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def kandinsky3_pipeline(folder: Path) -> Path:
    """A Kandinsky 3 text-to-image pipeline: a tiny Kandinsky3UNet (widths 16 to 128: both official stages), a T5
    encoder 16 wide with its tokenizer, a MoVQ of four levels (8x: 64 px images, 8x8 latents)."""
    diffusers = pytest.importorskip("diffusers")
    tokenizer, t5 = _t5(128)
    torch.manual_seed(0)
    unet = diffusers.Kandinsky3UNet(
        in_channels=4, time_embedding_dim=32, groups=4, attention_head_dim=8, layers_per_block=2,
        block_out_channels=(16, 32, 64, 128), cross_attention_dim=32, encoder_hid_dim=16,
    )  # fmt: skip
    movq = diffusers.VQModel(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
        num_vq_embeddings=16, vq_embed_dim=4,
    )  # fmt: skip
    pipe = diffusers.Kandinsky3Pipeline(tokenizer=tokenizer, text_encoder=t5, unet=unet,
                                        scheduler=diffusers.DDIMScheduler(), movq=movq)  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def _cascade_unet(channels: int, **conditioning):
    """A tiny two-level ``StableCascadeUNet`` 32 wide (one skip join), random weights."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.StableCascadeUNet(
        in_channels=channels, out_channels=channels, timestep_ratio_embedding_dim=8, conditioning_dim=32,
        block_out_channels=(32, 32), num_attention_heads=(2, 2), down_num_layers_per_block=(1, 1),
        up_num_layers_per_block=(1, 1), down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(1, 1),
        block_types_per_layer=(("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),) * 2,
        dropout=(0.0, 0.0), switch_level=(False,), **conditioning,
    )  # fmt: skip


def stable_cascade_prior_pipeline(folder: Path) -> Path:
    """Stable Cascade's prior (stage C) as diffusers saves it: a tiny ``StableCascadeUNet`` with 8 latent channels, a
    CLIP text encoder with projection, its Wuerstchen DDPM scheduler; latents of ``ceil(size / 42.67)``."""
    diffusers = pytest.importorskip("diffusers")
    prior = _cascade_unet(8, clip_text_in_channels=32, clip_text_pooled_in_channels=32, clip_image_in_channels=12,
                          clip_seq=2, timestep_conditioning_type=("sca", "crp"))  # fmt: skip
    pipe = diffusers.StableCascadePriorPipeline(tokenizer=_tokenizer(folder / "_tokenizer"),
                                                text_encoder=_text_encoder(projection=True), prior=prior,
                                                scheduler=diffusers.DDPMWuerstchenScheduler())  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def stable_cascade_decoder_pipeline(folder: Path):
    """Stable Cascade's decoder (stage B), in memory: a tiny ``StableCascadeUNet`` that takes image embeddings and a
    tiny Paella VQ model (diffusers 0.42 cannot load a decoder folder it saved: that class is not exported)."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel

    decoder = _cascade_unet(4, clip_text_pooled_in_channels=32, clip_seq=2, effnet_in_channels=8,
                            pixel_mapper_in_channels=4, timestep_conditioning_type=("sca",))  # fmt: skip
    vqgan = PaellaVQModel(levels=2, bottleneck_blocks=1, embed_dim=16, latent_channels=4, num_vq_embeddings=16)
    return diffusers.StableCascadeDecoderPipeline(
        decoder=decoder, tokenizer=_tokenizer(folder), text_encoder=_text_encoder(projection=True),
        scheduler=diffusers.DDPMWuerstchenScheduler(), vqgan=vqgan,
    )  # fmt: skip
