"""One per-join operator (``freeu.join``): ``freeu.apply``'s hooks and the host patch both call it, and neither holds
a copy of the window blend or of the operators (a module with its own copy would not see the patched operator)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import run, unet_inputs

import freeu
from freeu import join as freeu_join

SRC = Path(freeu.__file__).resolve().parent
# timestep 500 is the trajectory position 0.5: with this window, a strength of 0.5 (inside the ramp)
WINDOW = dict(start=0.4, stop=0.9, ramp=0.2)
CONFIG = freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2, **WINDOW)


def hooked(unet, config: freeu.FreeUConfig) -> torch.Tensor:
    with freeu.apply(unet, config):
        return run(unet, unet_inputs(unet))


def patched(config: freeu.FreeUConfig) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    h, hsp = torch.randn(2, 128, 8, 8, generator=gen), torch.randn(2, 96, 8, 8, generator=gen)
    patch = freeu.output_block_patch(config, model_channels=32, progress=lambda options: 0.5)
    return patch(h, hsp, {"block": ("output", 0)})


def full_strength() -> freeu.FreeUConfig:
    return CONFIG.replace(start=0.0, stop=1.0, ramp=0.0)


def test_the_window_blend_has_one_home(sd15, monkeypatch) -> None:
    """With ``freeu.join.blend`` replaced by "no blend", both paths give the full-strength result: each reads the
    blend from the operator module, none blends on its own."""
    windowed_hooks, windowed_patch = hooked(sd15, CONFIG), patched(CONFIG)
    full_hooks, full_patch = hooked(sd15, full_strength()), patched(full_strength())
    assert (windowed_hooks - full_hooks).abs().max() > 1e-4  # the window does something at strength 0.5
    assert (windowed_patch[0] - full_patch[0]).abs().max() > 1e-4
    calls = []

    def spy(value, weight):
        calls.append(weight)
        return value

    monkeypatch.setattr(freeu_join, "blend", spy)
    assert torch.equal(hooked(sd15, CONFIG), full_hooks)
    hook_calls = len(calls)
    backbone, skip = patched(CONFIG)
    assert torch.equal(backbone, full_patch[0]) and torch.equal(skip, full_patch[1])
    assert hook_calls > 0 and len(calls) > hook_calls  # both paths went through the spy


def test_the_operator_has_one_home(sd15, monkeypatch) -> None:
    """With ``freeu.join.apply_join`` replaced by "return the features as they are", both paths leave every join
    untouched: neither scales nor filters on its own."""
    off = run(sd15, unet_inputs(sd15))
    calls = []

    def untouched(backbone, skip, stage, *, version, threshold, factors=None, out=None, structure=None):
        calls.append(stage)
        if out is None:
            return backbone, skip
        out[:, : backbone.shape[1]].copy_(backbone)
        out[:, backbone.shape[1] :].copy_(skip)
        return out[:, : backbone.shape[1]], out[:, backbone.shape[1] :]

    monkeypatch.setattr(freeu_join, "apply_join", untouched)
    assert torch.equal(hooked(sd15, full_strength()), off)
    hook_calls = len(calls)
    gen = torch.Generator().manual_seed(3)
    h, hsp = torch.randn(2, 128, 8, 8, generator=gen), torch.randn(2, 96, 8, 8, generator=gen)
    backbone, skip = patched(full_strength())
    assert torch.equal(backbone, h) and torch.equal(skip, hsp)
    assert hook_calls > 0 and len(calls) == hook_calls + 1


MATHS = {"backbone", "fourier"}


def _maths_used(tree: ast.AST) -> set[str]:
    """The maths modules an import of ``tree`` reaches (relative, absolute, ``import freeu.x``) and the maths
    functions it names (as names or attributes)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = set((node.module or "").split(".")) | {alias.name for alias in node.names}
            found |= parts & MATHS
        elif isinstance(node, ast.Import):
            found |= {part for alias in node.names for part in alias.name.split(".")} & MATHS
        elif isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            through_join = isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "freeu_join"
            if name in {"scale_backbone", "scaled_half", "fourier_filter", "cutoff_threshold", "window_weight"}:
                found |= set() if through_join else {name}
    return found


def test_the_maths_reader_sees_every_way_of_reaching_it() -> None:
    planted = "import freeu.fourier\nfrom freeu import backbone\nfrom .fourier import x\ny = m.scaled_half\n"
    assert _maths_used(ast.parse(planted)) == {"fourier", "backbone", "scaled_half"}
    assert _maths_used(ast.parse("from . import join as freeu_join\nfreeu_join.window_weight(p)\n")) == set()


@pytest.mark.parametrize("module", ["hooks.py", "hosts.py"])
def test_neither_installer_imports_the_maths(module) -> None:
    """The hooks and the host patch reach the backbone scaling, the filter and the window only through
    ``freeu.join``."""
    assert _maths_used(ast.parse((SRC / module).read_text())) == set()
