"""freeu.output_block_patch: FreeU through a host's per-call patch (ComfyUI's and Forge's output_block_patch) gives
what freeu.apply's hooks give on the same U-Net, leaves the host's tensors alone and keeps nothing installed."""

from __future__ import annotations

import ldm_standin
import pytest
import torch
from conftest import rerandomise_zeros

import freeu
from freeu.settings import detect_preset

NUM_RES_BLOCKS = 2


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return rerandomise_zeros(ldm_standin.UNetModel(num_res_blocks=NUM_RES_BLOCKS))


def inputs(timesteps=(10, 900)) -> dict:
    gen = torch.Generator().manual_seed(3)
    return {"x": torch.randn(2, 4, 16, 16, generator=gen), "timesteps": torch.tensor(timesteps)}


def through_patch(unet, config, progress=None, **call) -> torch.Tensor:
    patch = freeu.output_block_patch(config, model_channels=32, num_res_blocks=NUM_RES_BLOCKS, progress=progress)
    with torch.no_grad():
        return unet(**inputs(**call), transformer_options={"patches": {"output_block_patch": [patch]}})


def through_hooks(unet, config, **call) -> torch.Tensor:
    with freeu.apply(unet, config), torch.no_grad():
        return unet(**inputs(**call))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("convention", ["official", "diffusers"])
def test_the_patch_gives_what_the_hooks_give(unet, version, convention) -> None:
    config = freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2, version=version, convention=convention)
    with torch.no_grad():
        plain = unet(**inputs())
    patched = through_patch(unet, config)
    assert (patched - through_hooks(unet, config)).abs().max().item() <= 1e-6
    assert (patched - plain).abs().max().item() > 1e-3
    assert freeu.active_config(unet) is None and not any(m._forward_pre_hooks for m in unet.modules())


def test_a_window_from_the_hosts_progress_gives_what_the_hooks_window_gives(unet) -> None:
    config = freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2, start=0.2, stop=0.95, ramp=0.1)

    def progress_at(timesteps):  # what a host computes from its own schedule (here: 1 - t / 1000)
        return lambda options: 1.0 - torch.tensor(timesteps, dtype=torch.float32) / 1000

    for timesteps in ((100, 700), (500, 500)):  # a half and a full weight; full weights in both samples
        patched = through_patch(unet, config, progress_at(timesteps), timesteps=timesteps)
        hooked = through_hooks(unet, config, timesteps=timesteps)
        assert (patched - hooked).abs().max().item() <= 1e-6, timesteps
    with torch.no_grad():  # both samples outside the window: exactly the host's own result
        plain = unet(**inputs(timesteps=(990, 995)))
    assert torch.equal(through_patch(unet, config, progress_at((990, 995)), timesteps=(990, 995)), plain)


def test_identity_joins_return_the_hosts_tensors_and_the_rest_never_writes_them() -> None:
    h, hsp = torch.randn(2, 128, 4, 4), torch.randn(2, 64, 4, 4)
    saved = h.clone(), hsp.clone()
    identity = freeu.output_block_patch(freeu.FreeUConfig(1, 1, 1, 1), model_channels=32)
    out = identity(h, hsp, {})
    assert out[0] is h and out[1] is hsp
    untouched = freeu.output_block_patch(freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2), model_channels=16)
    assert untouched(h, hsp, {})[0] is h  # 128 is neither 4x nor 2x 16... it is 8x: no stage
    acting = freeu.output_block_patch(freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2), model_channels=32)
    new_h, new_hsp = acting(h, hsp, {})
    assert torch.equal(h, saved[0]) and torch.equal(hsp, saved[1])
    assert not torch.equal(new_h, h) and not torch.equal(new_hsp, hsp)


@pytest.mark.parametrize(
    ("config", "kwargs", "message"),
    [
        (freeu.FreeUConfig((1.1, 1.2), 1.6, 0.9, 0.2), {}, "per-sample factors are for freeu.apply"),
        (freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2, start=0.5), {}, "needs progress"),
        (freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2, convention="diffusers"), {}, "needs num_res_blocks"),
        (freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2), {"model_channels": 0}, "model_channels must be an int >= 1"),
    ],
)
def test_what_a_host_patch_cannot_do_is_refused_when_it_is_built(config, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        freeu.output_block_patch(config, **{"model_channels": 32, **kwargs})


# ---- the pieces both hosts share: preset, schedule position, the patch from the host's settings, registration ----

SD15 = {"model_channels": 320, "context_dim": 768, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2]}


@pytest.mark.parametrize(
    "config, preset",
    [
        (SD15, "sd15"),
        ({**SD15, "context_dim": 1024}, "sd21"),
        ({**SD15, "context_dim": 2048, "adm_in_channels": 2816}, "sdxl"),
    ],
)
def test_the_preset_of_an_ldm_layout(config, preset) -> None:
    assert detect_preset(config)[0] == preset


def test_an_sd1_layout_of_another_width_gets_sd15_and_says_the_width() -> None:
    name, evidence = detect_preset({**SD15, "model_channels": 32})
    assert name == "sd15" and "base width 32, not SD 1.x's 320" in evidence


@pytest.mark.parametrize(
    "config, found",
    [
        ({**SD15, "context_dim": 1280, "adm_in_channels": 2560}, "1280-wide context and base width 320 with added "
         "conditioning is the SDXL refiner's layout"),
        ({**SD15, "context_dim": None}, "LDM UNetModel has no cross-attention"),
    ],
)  # fmt: skip
def test_a_layout_without_a_preset_is_refused_naming_what_was_found(config, found) -> None:
    with pytest.raises(ValueError, match=found):
        detect_preset(config)


def test_the_schedule_position_inverts_the_hosts_percent_to_sigma_once_per_level() -> None:
    calls = []

    def percent_to_sigma(percent: float) -> float:  # a discrete VP-like schedule: falls from 14.6 to 0.03
        calls.append(percent)
        return 999999999.9 if percent <= 0 else 0.0 if percent >= 1 else 0.03 * (14.6 / 0.03) ** (1 - percent)

    progress = freeu.hosts.schedule_progress(percent_to_sigma)
    levels = [percent_to_sigma(p) for p in (0.1, 0.5, 0.9)]
    got = progress({"sigmas": torch.tensor(levels + levels)})  # two guidance branches: the same levels twice
    assert got == pytest.approx([0.1, 0.5, 0.9] * 2, abs=1e-6)  # the levels went through float32
    before = len(calls)
    assert progress({"sigmas": torch.tensor(levels[:1])}) == pytest.approx([0.1], abs=1e-6)
    assert len(calls) == before  # remembered
    with pytest.raises(ValueError, match=r"transformer_options\['sigmas'\]"):
        progress({})


def test_the_patch_from_the_hosts_settings_is_the_patch_from_its_widths(unet) -> None:
    config = freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2, convention="diffusers")
    settings = {"model_channels": 32, "num_res_blocks": [NUM_RES_BLOCKS] * 3}
    patch = freeu.hosts.ldm_output_block_patch(config, settings)
    assert patch.freeu_config is config
    with torch.no_grad():
        via_settings = unet(**inputs(), transformer_options={"patches": {"output_block_patch": [patch]}})
    assert torch.equal(via_settings, through_patch(unet, config))


@pytest.mark.parametrize(
    "settings, config, message",
    [
        ({"num_res_blocks": 2}, freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2), "has no model_channels"),
        ({"model_channels": 32}, freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2, start=0.2), "needs percent_to_sigma"),
        (
            {"model_channels": 32, "num_res_blocks": [2, 1, 2]},
            freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2, convention="diffusers"),
            "needs num_res_blocks",
        ),
    ],
)
def test_host_settings_that_cannot_place_freeu_are_refused(settings, config, message) -> None:
    with pytest.raises(ValueError, match=message):
        freeu.hosts.ldm_output_block_patch(config, settings)


def test_registration_replaces_an_earlier_freeu_patch_and_keeps_the_hosts_others() -> None:
    class Patcher:  # what ComfyUI's and Forge's ModelPatcher offer for this
        def __init__(self) -> None:
            self.model_options: dict = {"transformer_options": {}}

        def set_model_output_block_patch(self, patch) -> None:
            patches = self.model_options["transformer_options"].setdefault("patches", {})
            patches.setdefault("output_block_patch", []).append(patch)

    def other(h, hsp, options):
        return h, hsp

    patcher = Patcher()
    first = freeu.hosts.ldm_output_block_patch(freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2), {"model_channels": 32})
    second = freeu.hosts.ldm_output_block_patch(freeu.FreeUConfig(1.1, 1.2, 0.9, 0.2), {"model_channels": 32})
    freeu.hosts.set_output_block_patch(patcher, first)
    patcher.set_model_output_block_patch(other)
    freeu.hosts.set_output_block_patch(patcher, second)
    assert patcher.model_options["transformer_options"]["patches"]["output_block_patch"] == [other, second]


@pytest.mark.parametrize("threshold", [1, 5, 12])
def test_a_host_patch_filters_exactly_on_a_device_without_an_fft(monkeypatch, threshold) -> None:
    """At the published threshold no FFT is taken at all; a large square, which would take an FFT, falls back to the
    exact projection where the FFT fails (as on MPS or DirectML)."""
    config = freeu.FreeUConfig(1.0, 1.0, 0.3, 0.3, version=1, threshold=threshold)
    patch = freeu.output_block_patch(config, model_channels=32)
    gen = torch.Generator().manual_seed(0)
    h, hsp = torch.randn(2, 128, 24, 24, generator=gen), torch.randn(2, 128, 24, 24, generator=gen)
    expected = freeu.fourier_filter(hsp.double(), threshold, 0.3, method="fft")
    calls = []

    def no_fft(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("this device has no FFT")

    for name in ("fft", "fftn", "fft2", "rfft", "rfftn", "rfft2", "ifftn", "irfftn", "ifft2"):
        monkeypatch.setattr(torch.fft, name, no_fft)
    _, filtered = patch(h, hsp, {})
    assert (filtered.double() - expected).abs().max().item() <= 1e-5
    # threshold 5 tried the FFT first (faster there); 1 is the projection, 12 covers the whole 24 x 24 map (a product)
    assert bool(calls) == (threshold == 5)


# -- hooked_call: the library's hooks for one host call (joins with no patch point in the host) ------------------------


def test_at_strength_blends_each_stage_and_refuses_high_at_two_strengths() -> None:
    from freeu.hosts import at_strength

    config = freeu.FreeUConfig(1.5, 1.2, 0.5, 0.9, version=1, threshold=2, start=0.2, stop=0.8, ramp=0.1)
    assert at_strength(config, [0.0, 0.0]) is None
    assert at_strength(config, [1.0]) == config.replace(start=0.0, stop=1.0, ramp=0.0)
    half = at_strength(config, [0.5, 0.5])
    assert (half.b1, half.s1, half.b2, half.s2) == (1.25, 0.75, 1.1, 0.95)
    assert (half.version, half.threshold, half.windowed) == (1, 2, False)
    mixed = at_strength(config, [0.0, 1.0])
    assert (mixed.b1, mixed.s1) == ((1.0, 1.5), (1.0, 0.5))
    staged = config.with_stages(freeu.config.parse_stage_settings("1:high=1.2"))
    assert at_strength(staged, [0.5]).stage(1).high == pytest.approx(1.1)
    with pytest.raises(ValueError, match="stage 1's high=1.2 takes one value"):
        at_strength(staged, [0.0, 1.0])


def test_hooked_call_puts_the_hooks_on_for_the_call_only(unet) -> None:
    from freeu.hosts import hooked_call

    config = freeu.FreeUConfig(1.3, 1.4, 0.9, 0.2)
    run = hooked_call(config)
    with torch.no_grad():
        plain = unet(**inputs())
        seen = []

        def call() -> torch.Tensor:
            seen.append(freeu.active_config(unet))
            return unet(**inputs())

        ours = run(unet, {}, call)
    assert seen == [config] and freeu.active_config(unet) is None  # on inside the call, off after it
    assert torch.equal(ours, through_hooks(unet, config))
    assert torch.equal(unet(**inputs()), plain)

    def fails() -> None:
        raise KeyError("the host's call failed")

    with pytest.raises(KeyError):
        run(unet, {}, fails)
    assert freeu.active_config(unet) is None  # taken off when the call fails too


def test_hooked_call_reads_the_window_from_the_hosts_noise_level(unet) -> None:
    from freeu.hosts import hooked_call

    config = freeu.FreeUConfig(1.3, 1.4, 0.9, 0.2, start=0.0, stop=0.5)
    with pytest.raises(ValueError, match="needs percent_to_sigma"):
        hooked_call(config)
    run = hooked_call(config, percent_to_sigma=lambda percent: 10.0 * (1.0 - percent))  # 10 at the start, 0 at the end
    full = through_hooks(unet, config.replace(stop=1.0))
    with torch.no_grad():
        plain = unet(**inputs())
        early = run(unet, {"sigmas": torch.tensor([8.0, 8.0])}, lambda: unet(**inputs()))  # 20 % of the way
        late = run(unet, {"sigmas": torch.tensor([2.0, 2.0])}, lambda: unet(**inputs()))  # 80 %
    assert torch.equal(early, full) and torch.equal(late, plain)
    with pytest.raises(ValueError, match="one value per factor"):
        hooked_call(config.replace(b1=(1.3, 1.0)), percent_to_sigma=lambda p: 1.0 - p)
