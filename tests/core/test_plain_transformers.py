"""Diffusion transformers without skip joins (SD3, Flux, PixArt, Sana, DiT; tiny, random weights): ``freeu.apply``,
``freeu.plan`` and the command line refuse them with an error that names the class and says it has no skip joins,
whether given the transformer itself or the pipeline holding it."""

from __future__ import annotations

import pytest
import torch

import freeu
from freeu import UnsupportedModelError

diffusers = pytest.importorskip("diffusers")

TINY = {
    "SD3Transformer2DModel": dict(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                  pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16),
    "FluxTransformer2DModel": dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                                   attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                   pooled_projection_dim=16, axes_dims_rope=(2, 2, 4)),
    "PixArtTransformer2DModel": dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                     num_layers=1, cross_attention_dim=16, sample_size=8, caption_channels=16,
                                     norm_num_groups=4),
    "SanaTransformer2DModel": dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                   num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=8,
                                   cross_attention_dim=16, caption_channels=16, sample_size=8),
    "DiTTransformer2DModel": dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1,
                                  sample_size=8, norm_num_groups=4),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_plain_transformer_is_refused_naming_it(name, tmp_path, capsys) -> None:
    from freeu.apps.cli import main

    torch.manual_seed(0)
    model = getattr(diffusers, name)(**TINY[name])
    model.save_config(tmp_path / "transformer")  # the command line on a pipeline folder holding it
    assert main(["plan", str(tmp_path)]) == 2
    assert f"{name} is a diffusion transformer with no skip joins" in capsys.readouterr().err
    for call in (lambda: freeu.apply(model, preset="sd15"), lambda: freeu.plan(model)):
        with pytest.raises(UnsupportedModelError, match=f"{name} is a diffusion transformer with no skip joins"):
            call()
    assert not model._forward_pre_hooks and not any(m._forward_pre_hooks for m in model.modules())

    class Pipeline:  # what a pipeline holds it as
        transformer = model

    with pytest.raises(UnsupportedModelError, match=f"{name} \\(in the Pipeline given\\) is a diffusion transformer"):
        freeu.apply(Pipeline(), preset="sd15")


def test_a_u_net_is_not_taken_for_a_transformer() -> None:
    from conftest import sd15_unet

    with freeu.apply(sd15_unet(), preset="sd15") as handle:
        assert handle.active


def test_the_command_line_refuses_a_dit_pipeline(tmp_path, capsys) -> None:
    from tiny_pipelines import _vae

    from freeu.apps.cli import main

    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(**TINY["DiTTransformer2DModel"])
    diffusers.DiTPipeline(transformer=transformer, vae=_vae(), scheduler=diffusers.DDIMScheduler()).save_pretrained(
        tmp_path / "dit")  # fmt: skip
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "out" / "nested", tmp_path / "kept"):
        code = main(["generate", "--model", str(tmp_path / "dit"), "--preset", "sd15", "--out", str(out)])
        assert code == 2
        assert "DiTTransformer2DModel (in the DiTPipeline given) is a diffusion transformer with no skip joins" in (
            capsys.readouterr().err)  # fmt: skip
    # the folders the refused command made before loading the model are gone again; the one that was there stays
    assert not (tmp_path / "out").exists() and (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())
    # freeu plan on the pipeline folder reads the transformer's config.json and refuses it the same way
    assert main(["plan", str(tmp_path / "dit")]) == 2
    assert "DiTTransformer2DModel is a diffusion transformer with no skip joins" in capsys.readouterr().err
