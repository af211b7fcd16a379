"""A U-Net the library does not know, described with freeu.CustomUNet; the reference applies FreeU by hand at the
model's own concatenations."""

from __future__ import annotations

import pytest
import torch
from reference import reference_backbone, reference_fourier
from torch import nn

import freeu
from freeu import CustomUNet, FreeUConfig, UnsupportedModelError


class TinyUNet(nn.Module):
    """Three levels, base width 16: joins with backbone widths 64, 32, 16."""

    def __init__(self) -> None:
        super().__init__()
        self.inc = nn.Conv2d(3, 16, 3, padding=1)
        self.down1 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(64, 64, 3, padding=1)
        self.decoder = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU())
                for c_in, c_out in [(128, 32), (64, 16), (32, 16)]
            ]
        )
        self.out = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, join=None) -> torch.Tensor:
        x0 = self.inc(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        h = self.mid(x2)
        for i, skip in enumerate([x2, x1, x0]):
            if join is not None:
                h, skip = join(i, h, skip)
            h = self.decoder[i](torch.cat([h, skip], dim=1))
            if i < 2:
                h = nn.functional.interpolate(h, scale_factor=2)
        return self.out(h)


LAYOUT = CustomUNet(
    joins={"decoder.0": 64, "decoder.1": 32, "decoder.2": 16},
    base_channels=16,
    levels={"decoder.0": 0, "decoder.1": 1, "decoder.2": 2},
)
FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)


def reference(model: TinyUNet, x: torch.Tensor, config: FreeUConfig) -> torch.Tensor:
    def join(i, h, skip):
        by_width, by_level = {64: 1, 32: 2}.get(h.shape[1]), {0: 1, 1: 2}.get(i)
        stage = by_width if config.convention == "official" else by_level
        if stage is None:
            return h, skip
        b, s = config.stage_factors(stage)
        return reference_backbone(h, b, config.version), reference_fourier(skip, config.threshold, s)

    return model(x, join)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("convention", ["official", "diffusers"])
def test_custom_unet_matches_reference(version, convention) -> None:
    torch.manual_seed(0)
    model = TinyUNet().eval()
    x = torch.randn(2, 3, 16, 16)
    config = FreeUConfig(**FACTORS, version=version, convention=convention)
    with torch.no_grad():
        before = model(x)
        expected = reference(model, x, config)
        with freeu.apply(model, config, layout=LAYOUT) as handle:
            ours = model(x)
        assert torch.equal(model(x), before)
    assert [p.stage for p in handle.plans] == ([1, 2, None] if convention == "official" else [1, 2, None])
    assert (ours - before).abs().max().item() > 1e-3
    assert (ours - expected).abs().max().item() < 1e-5


def test_context_manager_restores_a_custom_layout() -> None:
    model = TinyUNet().eval()
    x = torch.randn(1, 3, 16, 16)
    outer = freeu.apply(model, preset="sd15", layout=LAYOUT)
    with torch.no_grad():
        expected = model(x)
        with freeu.apply(model, preset="sdxl", layout=LAYOUT):
            assert not torch.equal(model(x), expected)
        assert freeu.active_config(model) == outer.config
        assert torch.equal(model(x), expected)
    assert freeu.remove(model) is True
    assert freeu.remove(model) is False and freeu.active_config(model) is None


def test_plan_reads_widths_from_the_modules() -> None:
    plans = freeu.plan(TinyUNet(), layout=LAYOUT)
    assert [(p.join.name, p.join.backbone_channels, p.join.skip_channels) for p in plans] == [
        ("decoder.0", 64, 64),
        ("decoder.1", 32, 32),
        ("decoder.2", 16, 16),
    ]


def test_custom_layout_errors() -> None:
    model = TinyUNet()
    with pytest.raises(UnsupportedModelError, match=r"no module named 'decoder\.7'.*similar: \['decoder\.\d'"):
        freeu.apply(model, preset="sd15", layout=CustomUNet({"decoder.7": 64}, base_channels=16))
    with pytest.raises(UnsupportedModelError, match="takes 128 input channels, which leaves no skip part"):
        freeu.apply(model, preset="sd15", layout=CustomUNet({"decoder.0": 128}, base_channels=16))
    with pytest.raises(ValueError, match=r"give CustomUNet\(levels=...\)"):
        freeu.apply(model, preset="sd15", convention="diffusers", layout=CustomUNet({"decoder.0": 64}, 16))
    with pytest.raises(ValueError, match=r"unknown: \['decoder\.9'\], missing: \['decoder\.0'\]"):
        CustomUNet({"decoder.0": 64}, 16, levels={"decoder.9": 0})
    with pytest.raises(ValueError, match=r"joins\['decoder\.0'\] must be a backbone width"):
        CustomUNet({"decoder.0": 0}, 16)
    with pytest.raises(TypeError, match="layout must be a freeu.CustomUNet"):
        freeu.apply(model, preset="sd15", layout={"decoder.0": 64})
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_unknown_model_without_layout_points_to_custom_unet() -> None:
    with pytest.raises(UnsupportedModelError, match="any U-Net described with freeu.CustomUNet"):
        freeu.apply(TinyUNet(), preset="sd15")
