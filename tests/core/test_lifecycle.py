"""The handle's lifecycle: nested and mixed ``with`` blocks and ``remove()`` calls in any order, and deep copies."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from conftest import run, sd15_unet, unet_inputs
from test_custom_unet import LAYOUT, TinyUNet

import freeu

SETTINGS = ["sd15", "sdxl", "sd21", "sdxl-sweep"]


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = TinyUNet().eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        plain = model(x)
    return model, x, plain


def unpatched(model: torch.nn.Module, x: torch.Tensor, plain: torch.Tensor) -> bool:
    """No FreeU state, no hook, and the output bit for bit the plain model's."""
    with torch.no_grad():
        same = torch.equal(model(x), plain)
    hooks = any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    return same and not hooks and freeu.active_config(model) is None


def apply(model: torch.nn.Module, preset: str) -> freeu.FreeUHandle:
    return freeu.apply(model, preset=preset, layout=LAYOUT)


def test_nested_with_blocks_leave_the_unet_unpatched(tiny) -> None:
    model, x, plain = tiny
    with apply(model, "sd15"):
        with apply(model, "sdxl"):
            assert freeu.active_config(model) == freeu.get_preset("sdxl").config
        assert freeu.active_config(model) == freeu.get_preset("sd15").config
    assert unpatched(model, x, plain)


def test_an_outer_handle_removes_after_an_inner_block(tiny) -> None:
    model, x, plain = tiny
    outer = apply(model, "sd15")
    with apply(model, "sdxl"):
        pass
    assert outer.active  # the same handle object is back, not a copy of its settings
    assert outer.remove() is True
    assert unpatched(model, x, plain)


def test_blocks_left_out_of_order_never_bring_back_a_left_block(tiny) -> None:
    model, x, plain = tiny
    first, second = apply(model, "sd15"), apply(model, "sdxl")
    first.__enter__(), second.__enter__()
    first.__exit__(None, None, None)  # the outer block ends first (an ExitStack can do this)
    assert freeu.active_config(model) == freeu.get_preset("sdxl").config  # the inner one still holds
    second.__exit__(None, None, None)
    assert unpatched(model, x, plain)


def test_a_plain_apply_replaces_and_its_remove_takes_freeu_off(tiny) -> None:
    model, x, plain = tiny
    first = apply(model, "sd15")
    second = apply(model, "sdxl")
    assert not first.active and second.active
    assert first.remove() is False  # replaced: nothing to take off
    assert second.remove() is True
    assert unpatched(model, x, plain)


@pytest.mark.parametrize("seed", range(60))
def test_any_order_of_blocks_and_removes_ends_bit_identical(tiny, seed) -> None:
    """Random programs of applies (plain and as blocks), block exits in any order, handle removes and
    freeu.remove(model): whenever no block is open and every handle is removed, the U-Net is as never patched."""
    model, x, plain = tiny
    rng = random.Random(seed)
    blocks: list[freeu.FreeUHandle] = []
    held: list[freeu.FreeUHandle] = []
    for _ in range(rng.randint(1, 12)):
        op = rng.choice(["block", "block", "plain", "exit", "exit", "remove", "remove_model"])
        if op == "block":
            blocks.append(apply(model, rng.choice(SETTINGS)).__enter__())
        elif op == "plain":
            held.append(apply(model, rng.choice(SETTINGS)))
        elif op == "exit" and blocks:
            blocks.pop(rng.randrange(len(blocks))).__exit__(None, None, None)
        elif op == "remove" and held:
            held.pop(rng.randrange(len(held))).remove()
        elif op == "remove_model":
            freeu.remove(model)
        installed = freeu.active_config(model)
        assert installed is None or any(h.active for h in blocks + held), "FreeU on with no live block or handle"
    rng.shuffle(blocks)
    rng.shuffle(held)
    for handle in blocks:
        handle.__exit__(None, None, None)
    for handle in held:
        handle.remove()
    assert unpatched(model, x, plain)


@pytest.mark.parametrize("window", [False, True])
def test_a_deep_copy_of_a_patched_unet_is_patched_independently(sd15, window) -> None:
    inputs = unet_inputs(sd15)
    plain = run(sd15, inputs)
    settings = dict(preset="sd15", start=0.2, stop=0.8) if window else dict(preset="sd15")
    with freeu.apply(sd15, **settings):
        patched = run(sd15, inputs)
        twin = copy.deepcopy(sd15)
        assert freeu.active_config(twin) == freeu.active_config(sd15)
        assert torch.equal(run(twin, inputs), patched)
        assert freeu.remove(twin) is True  # the copy's own handle: the original keeps FreeU
        assert torch.equal(run(twin, inputs), plain) and torch.equal(run(sd15, inputs), patched)
        again = freeu.apply(twin, **settings)
    assert torch.equal(run(sd15, inputs), plain) and torch.equal(run(twin, inputs), patched)
    again.remove()
    assert torch.equal(run(twin, inputs), plain)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in twin.modules())


def test_a_patched_unet_refuses_pickling_saying_what_to_do_and_pickles_after_remove() -> None:
    import io
    import pickle

    unet = sd15_unet()
    for settings in (dict(), dict(start=0.2)):  # join hooks only, and call hooks on the U-Net itself too
        handle = freeu.apply(unet, preset="sd15", **settings)
        for dump in (pickle.dumps, lambda u: torch.save(u, io.BytesIO())):
            with pytest.raises(TypeError, match=r"cannot be pickled .* Call freeu\.remove\(unet\) first"):
                dump(unet)
        copied = copy.deepcopy(unet)  # still works, FreeU on the copy
        assert freeu.active_config(copied) == handle.config
        handle.remove()
    restored = pickle.loads(pickle.dumps(unet))
    inputs = unet_inputs(unet)
    assert torch.equal(run(restored, inputs), run(unet, inputs))
