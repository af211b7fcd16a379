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
    with pytest.raises(ValueError, match="EDMEulerScheduler it receives EDM's log\\(sigma\\) / 4"):
        freeu.apply(pipe, preset="sd15", start=0.2, stop=0.9)
    assert freeu.active_config(sd15) is None
    freeu.apply(pipe, preset="sd15").remove()  # no window: fine


@pytest.mark.parametrize("where", ["a down block", "an up block"])
@pytest.mark.parametrize("call", ["apply", "apply with a window", "remove", "leave a block"])
def test_changing_freeu_from_inside_the_forward_is_refused_before_anything_changes(sd15, where, call) -> None:
    """A hook or host wrapper inside the U-Net's forward that changes FreeU would split that call: the joins already
    passed with the old settings, the rest with the new. Refused, and the call is the one before the change."""
    inputs = unet_inputs(sd15)
    plain = run(sd15, inputs)
    outer = freeu.apply(sd15, preset="sd15") if call in ("remove", "leave a block") else None
    patched = run(sd15, inputs)
    changes = {
        "apply": lambda: freeu.apply(sd15, preset="sd15"),
        "apply with a window": lambda: freeu.apply(sd15, preset="sd15", start=0.2),
        "remove": lambda: freeu.remove(sd15),
        "leave a block": lambda: outer.__exit__(None, None, None),
    }
    errors = []

    def inside(module, args, kwargs):
        try:
            changes[call]()
        except RuntimeError as error:
            errors.append(str(error))

    target = sd15.down_blocks[0] if where == "a down block" else sd15.up_blocks[1]
    hook = target.register_forward_pre_hook(inside, with_kwargs=True)
    try:
        out = run(sd15, inputs)
    finally:
        hook.remove()
    assert len(errors) == 1 and "while this U-Net's forward is running" in errors[0], errors
    assert errors[0].startswith("freeu.remove" if call in ("remove", "leave a block") else "freeu.apply")
    assert torch.equal(out, patched if outer is not None else plain)
    assert (freeu.active_config(sd15) is not None) == (outer is not None)  # nothing changed
    if outer is not None:
        outer.remove()
    assert torch.equal(run(sd15, inputs), plain)


def test_the_unets_own_forward_hook_may_change_freeu_and_rerun_it(sd15) -> None:
    """The guidance meter's pattern: after the forward returned, rerun the U-Net with other settings."""
    inputs = unet_inputs(sd15)
    plain = run(sd15, inputs)
    again = []

    def after(module, args, kwargs, output):
        if not again:
            again.append(None)  # the rerun below calls this hook too
            with freeu.apply(module, preset="sd15"):
                again[0] = module(*args, **kwargs).sample

    hook = sd15.register_forward_hook(after, with_kwargs=True)
    try:
        assert torch.equal(run(sd15, inputs), plain)
    finally:
        hook.remove()
    with freeu.apply(sd15, preset="sd15"):
        assert torch.equal(again[0], run(sd15, inputs))


def test_changing_freeu_from_inside_another_models_forward_is_fine(sd15) -> None:
    other = torch.nn.Linear(2, 2)
    handles = []
    other.register_forward_pre_hook(lambda module, args: handles.append(freeu.apply(sd15, preset="sd15")))
    other(torch.zeros(1, 2))
    assert freeu.active_config(sd15) is not None
    handles[0].remove()


@pytest.mark.parametrize("how", ["EulerDiscreteScheduler(timestep_type='continuous')", "the SVD U-Net alone"])
def test_a_window_where_the_unet_receives_log_sigma_is_refused_before_the_first_step(how, sd15) -> None:
    """Stable Video Diffusion's scheduler (and CosXL's) passes log(sigma) / 4 under a non-EDM name: the window used to
    be refused only at the first negative value (about step 13 of 20), FreeU silently off until then."""
    from video_models import build

    if how == "the SVD U-Net alone":
        unet = build("svd")
        model, why = unet, "UNetSpatioTemporalConditionModel"
    else:
        unet = sd15
        scheduler = diffusers.EulerDiscreteScheduler(timestep_type="continuous", prediction_type="v_prediction")
        model, why = SimpleNamespace(unet=unet, scheduler=scheduler), "timestep_type='continuous'"
    with pytest.raises(ValueError, match=f"{why}.*it receives EDM's log\\(sigma\\) / 4"):
        freeu.apply(model, preset="sd15", start=0.3)
    assert freeu.active_config(unet) is None
    freeu.apply(model, preset="sd15").remove()  # no window: fine
