"""What a careless user does to a patched U-Net, refused loudly instead of silently wrong (issue #19's findings)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import run, sd15_unet, unet_inputs

import freeu

diffusers = pytest.importorskip("diffusers")


def test_enabling_diffusers_freeu_after_apply_is_refused_not_applied_twice(sd15) -> None:
    inputs = unet_inputs(sd15)
    with freeu.apply(sd15, preset="sd15"):
        patched = run(sd15, inputs)
        sd15.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
        try:
            with pytest.raises(RuntimeError, match="diffusers' own FreeU was enabled on up_blocks.0 after freeu.apply"):
                run(sd15, inputs)
        finally:
            sd15.disable_freeu()
        assert torch.equal(run(sd15, inputs), patched)


def test_a_step_window_runs_on_the_meta_device() -> None:
    unet = sd15_unet().to("meta")
    inputs = {k: v.to("meta") for k, v in unet_inputs(unet).items()}
    with freeu.apply(unet, preset="sd15", start=0.2, stop=0.8, ramp=0.1):
        out = run(unet, inputs)
    assert out.device.type == "meta" and out.shape == inputs["sample"].shape


def test_a_window_refuses_timesteps_that_are_no_ddpm_timesteps(sd15) -> None:
    inputs = {**unet_inputs(sd15), "timestep": torch.tensor([-0.4, -0.4])}  # EDM's log(sigma) / 4 at sigma 0.2
    with freeu.apply(sd15, preset="sd15", start=0.5), pytest.raises(RuntimeError, match="outside \\[0, 1000\\]"):
        run(sd15, inputs)
    with freeu.apply(sd15, preset="sd15"):  # without a window the timestep does not matter
        run(sd15, inputs)


def test_a_window_on_a_pipeline_with_an_edm_scheduler_is_refused_before_anything_is_installed(sd15) -> None:
    pipe = SimpleNamespace(unet=sd15, scheduler=diffusers.EDMEulerScheduler())
    with pytest.raises(ValueError, match="EDMEulerScheduler passes EDM's log\\(sigma\\) / 4"):
        freeu.apply(pipe, preset="sd15", start=0.2, stop=0.9)
    assert freeu.active_config(sd15) is None
    freeu.apply(pipe, preset="sd15").remove()  # no window: fine


def test_a_window_applied_from_inside_the_forward_says_what_is_needed(sd15) -> None:
    """A host wrapper that runs inside the U-Net's forward (after its pre-hooks) and applies FreeU there."""
    inputs = unet_inputs(sd15)
    handles = []

    def wrapper(module, args, kwargs):
        if not handles:
            handles.append(freeu.apply(sd15, preset="sd15", start=0.2))

    inside = sd15.register_forward_pre_hook(wrapper, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="FreeU was applied while the U-Net's forward was already running"):
            run(sd15, inputs)
    finally:
        inside.remove()
        handles[0].remove()
    with freeu.apply(sd15, preset="sd15", start=0.2):  # applied before the call: the window works
        run(sd15, inputs)
