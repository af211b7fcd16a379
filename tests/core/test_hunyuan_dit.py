"""Hunyuan-DiT (diffusers ``HunyuanDiT2DModel``, tiny, random weights): its long skips found by structure, FreeU on
their patch tokens laid on the input's grid against the float64 reference applied at the block's own
``torch.cat([hidden_states, skip], dim=-1)``; bit-exact identity and removal, per-sample factors, a window."""

from __future__ import annotations

import inspect
import sys

import pytest
import torch
from conftest import rerandomise_zeros
from reference import reference_stage

import freeu
from freeu import FreeUConfig

diffusers = pytest.importorskip("diffusers")

FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)
HEIGHT, WIDTH, PATCH = 16, 24, 2  # a grid of 8 x 12 patch tokens


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    dit = diffusers.HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=PATCH, sample_size=16,
        hidden_size=16, num_layers=6, mlp_ratio=2.0, learn_sigma=False, cross_attention_dim=16,
        cross_attention_dim_t5=16, pooled_projection_dim=8, text_len=4, text_len_t5=4,
        use_style_cond_and_image_meta_size=False,
    )  # fmt: skip
    return rerandomise_zeros(dit).eval()


def _inputs(batch: int = 2, timestep: list[float] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, HEIGHT, WIDTH, generator=gen),
        "timestep": torch.tensor(timestep or [500.0] * batch),
        "encoder_hidden_states": torch.randn(batch, 4, 16, generator=gen), "text_embedding_mask": torch.ones(batch, 4),
        "encoder_hidden_states_t5": torch.randn(batch, 4, 16, generator=gen),
        "text_embedding_mask_t5": torch.ones(batch, 4),
    }  # fmt: skip


def _run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


class _TokenReferenceCat:
    """Stands in for ``torch`` in the model's module: a block's long-skip ``cat([hidden, skip], dim=-1)`` gets the
    reference's stage 1 on the tokens laid out as the ``rows x cols`` grid, channels first."""

    def __init__(self, config: FreeUConfig, rows: int, cols: int) -> None:
        self.config, self.rows, self.cols = config, rows, cols

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def cat(self, tensors, dim=0, **kwargs):
        caller = inspect.currentframe().f_back.f_locals.get("self")
        if dim == -1 and len(tensors) == 2 and getattr(caller, "skip_linear", None) is not None:
            grids = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], self.rows, self.cols) for t in tensors]
            x, h = reference_stage(*grids, self.config.stage(1), self.config.version, self.config.threshold)
            tensors = [g.flatten(2).transpose(1, 2) for g in (x, h)]
        return torch.cat(tensors, dim=dim, **kwargs)


def test_the_long_skips_and_their_stages(model, tmp_path, capsys) -> None:
    from freeu.apps.cli import main

    plans = freeu.plan(model)
    assert [(p.join.name, p.join.backbone_channels, p.join.skip_channels, p.join.patch, p.stage) for p in plans] == [
        ("blocks.4.skip_norm", 16, 16, 2, 1), ("blocks.5.skip_norm", 16, 16, 2, 1)]  # fmt: skip
    with pytest.raises(ValueError, match="all run at one resolution, with no levels; use convention='official'"):
        freeu.plan(model, "diffusers")
    # freeu plan on a pipeline folder: the transformer's config.json, diffusers' convention shown as not applying
    model.save_config(tmp_path / "transformer")
    assert main(["plan", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert [line.split() for line in text.splitlines() if line.startswith("blocks")] == [
        ["blocks.4.skip_norm", "16", "16", "-", "b1,s1", "n/a"],
        ["blocks.5.skip_norm", "16", "16", "-", "b1,s1", "n/a"]]  # fmt: skip
    assert "diffusers' convention: n/a, the joins all run at one resolution" in text


@pytest.mark.parametrize("version", [1, 2])
def test_freeu_on_the_token_grid_equals_the_reference_and_removal_restores(monkeypatch, model, version) -> None:
    inputs = _inputs()
    before = _run(model, inputs)
    config = FreeUConfig(**FACTORS, version=version)
    with monkeypatch.context() as m:
        m.setattr(sys.modules[type(model.blocks[0]).__module__], "torch", _TokenReferenceCat(config, 8, 12))
        expected = _run(model, inputs)
    handle = freeu.apply(model, config)
    ours = _run(model, inputs)
    handle.remove()
    assert (ours - before).abs().max() > 1e-3 * before.abs().max()  # FreeU changes the output: the check can fail
    assert (ours.double() - expected.double()).abs().max() < 1e-5 * expected.abs().max()
    assert torch.equal(_run(model, inputs), before)
    with freeu.apply(model, b1=1.0, b2=1.0, s1=1.0, s2=1.0):
        assert torch.equal(_run(model, inputs), before)


def test_per_sample_factors_and_a_window_on_tokens(model) -> None:
    inputs = _inputs()
    plain = _run(model, inputs)
    config = FreeUConfig(**FACTORS)
    with freeu.apply(model, config):
        full = _run(model, inputs)
    with freeu.apply(model, config.replace(b1=(1.0, 1.5), s1=(1.0, 0.9))):
        mixed = _run(model, inputs)
    assert torch.equal(mixed[0], plain[0])
    assert (mixed[1] - full[1]).abs().max() < 1e-5 * full.abs().max()
    timed = _inputs(timestep=[100.0, 900.0])  # a window over the second half: t = 100 inside, t = 900 outside
    plain_t = _run(model, timed)
    with freeu.apply(model, config):
        full_t = _run(model, timed)
    with freeu.apply(model, config.replace(start=0.5, stop=1.0)):
        windowed = _run(model, timed)
    assert (windowed[0] - full_t[0]).abs().max() < 1e-5 * full_t.abs().max()
    assert torch.equal(windowed[1], plain_t[1])


def test_a_block_called_outside_the_model_is_refused_with_a_reason(model) -> None:
    with freeu.apply(model, preset="sd15"):
        block = model.blocks[4]
        with pytest.raises(RuntimeError, match="a transformer's long skip needs the input's size"):
            block(torch.randn(1, 96, 16), encoder_hidden_states=torch.randn(1, 8, 16), temb=torch.randn(1, 16),
                  skip=torch.randn(1, 96, 16))  # fmt: skip


def test_a_pipeline_holding_it_as_transformer_gets_freeu_not_the_no_skip_error(model) -> None:
    class Pipeline:  # what HunyuanDiTPipeline holds it as
        transformer = model

    inputs = _inputs()
    with freeu.apply(model, preset="sd15"):
        direct = _run(model, inputs)
    with freeu.apply(Pipeline(), preset="sd15") as handle:
        assert handle.unet is model
        assert torch.equal(_run(model, inputs), direct)
