"""freeu analyze: the numbers behind the figures, on inputs of known spectrum, tiny random U-Nets and pipelines."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import rerandomise_zeros

import freeu
from freeu.apps.analyze import (
    DEMO_SETTING,
    KINDS,
    Readout,
    b_sweep,
    features,
    frequency_split,
    high_band,
    normalised_radius,
    register,
    relative_log_amplitude,
    strip_steps,
    trajectory,
)
from freeu.apps.cli import main
from freeu.apps.runtime import Model, Request, Step, UNetModel, load_demo, predicted_x0

pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("one_thread")


def image_with_amplitude(amplitude: torch.Tensor) -> torch.Tensor:
    """A real image whose |FFT2| (DC-centred) is ``amplitude`` (point-symmetric about DC)."""
    return torch.fft.ifft2(torch.fft.ifftshift(amplitude.to(torch.complex128), dim=(-2, -1))).real


def known_spectrum(size: int = 32, slope: float = 3.0) -> torch.Tensor:
    """``|F| = exp(-slope * r)`` (r: normalised radius); the unpaired Nyquist row/column gets a small constant."""
    amplitude = torch.exp(-slope * normalised_radius(size, size))
    amplitude[0, :] = amplitude[:, 0] = 1e-3
    return amplitude


class Replay(Model):
    """A model that reports fixed images as the predicted x0 (and x_t) of each step."""

    name = "replay"

    def __init__(self, frames: list[torch.Tensor]) -> None:
        self.frames = frames

    def check(self, request):
        return request

    def _sample(self, seeds, request, on_step, output, batch_size):
        for i, x in enumerate(self.frames[: request.steps]):
            if on_step is not None:
                on_step(Step(i, 999 - i, x, x))
        return self.frames[request.steps - 1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="freeu")
    register(p.add_subparsers(dest="command"))
    return p


def analyze(*argv: str) -> int:
    return main(["analyze", *argv])


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    """The demo U-Net's layout (3 levels, widths 32/64/128: both official stages get joins) at 16x16, random."""
    from freeu.apps.demo_model import UNET_CONFIG, build_unet

    config = dict(UNET_CONFIG, sample_size=16, norm_num_groups=8, attention_head_dim=8)
    return rerandomise_zeros(build_unet(config, seed=seed), seed)


@pytest.fixture(scope="module")
def tiny_sampler() -> UNetModel:
    from freeu.apps.demo_model import build_scheduler

    return UNetModel(tiny_unet(), build_scheduler("ddim"), "tiny random U-Net")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny_sampler) -> Path:
    """The tiny U-Net exported in the demo model's format (unet.safetensors + config.json)."""
    from safetensors.torch import save_file

    from freeu.apps.demo_model import SCHEDULER_CONFIG, UNET_CONFIG

    folder = tmp_path_factory.mktemp("tiny-demo")
    state = {k: v.contiguous() for k, v in tiny_sampler.unet.state_dict().items()}
    save_file(state, str(folder / "unet.safetensors"))
    config = dict(UNET_CONFIG, sample_size=16, norm_num_groups=8, attention_head_dim=8)
    (folder / "config.json").write_text(json.dumps({"unet": config, "scheduler": SCHEDULER_CONFIG}))
    return folder


# -- the measurement on inputs of known spectrum -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["diagonal", "radial"])
def test_known_spectrum_through_the_trajectory_gives_the_known_curve(path: str) -> None:
    size, slope, cutoff = 32, 3.0, 0.25
    amplitude = known_spectrum(size, slope)
    x = image_with_amplitude(amplitude).expand(2, 3, size, size).float()  # 2 seeds, 3 channels
    bins = 9 if path == "radial" else None
    result = trajectory(
        Replay([x, 0.5 * x, x]), [0, 1], Request(steps=3), readout=Readout(path, bins, cutoff=cutoff, noisy=True)
    )
    numbers = result["spaces"]["pixel"]
    if path == "diagonal":
        expected = -slope * math.sqrt(2.0) * torch.arange(size // 2, dtype=torch.float64) / (size / 2)
        tolerance = 1e-5  # float32 images
    else:  # rings of width 1/8 around radii 0, 1/8, .., 1
        expected = -slope * torch.linspace(0, 1, 9, dtype=torch.float64)
        tolerance = slope / 16 + 1e-5
    for step in range(3):  # scaling the image (step 2) leaves the relative curve alone
        for which in ("x0", "xt"):
            assert (torch.tensor(numbers[which][step]) - expected).abs().max().item() < tolerance
    assert numbers["frequency"][0] == 0 and numbers["frequency"][-1] == pytest.approx(math.pi)
    # the high-frequency share is the closed-form energy outside the cutoff, by Parseval (DC excluded)
    radius = normalised_radius(size, size)
    power = amplitude**2
    share = (power[radius > cutoff].sum() / (power.sum() - power[radius == 0].sum())).item()
    assert numbers["x0_high_fraction"] == pytest.approx([share] * 3, rel=1e-5)
    # x0 at steps 1 -> 2 halves: each part's RMS change is half its RMS
    low, high = frequency_split(x.double(), cutoff)
    assert numbers["x0_low_change"][0] == pytest.approx(0.5 * low.pow(2).mean().sqrt().item(), rel=1e-6)
    assert numbers["x0_high_change"][0] == pytest.approx(0.5 * high.pow(2).mean().sqrt().item(), rel=1e-6)


def test_pure_low_pass_input_has_no_high_frequency_part() -> None:
    n = torch.arange(32, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * 2 * n / 32)[:, None] * torch.cos(2 * math.pi * 1 * n / 32)[None, :]  # radius 0.14
    frames = [(0.3 + a * wave).expand(2, 3, 32, 32).float() for a in (0.2, 0.5, 0.9)]
    result = trajectory(Replay(frames), [0, 1], Request(steps=3), readout=Readout(cutoff=0.25, columns=3))
    numbers, images = result["spaces"]["pixel"], result["images"]["pixel"]
    assert max(numbers["x0_high_fraction"]) < 1e-12
    assert max(numbers["x0_high_change"]) < 1e-7
    assert numbers["x0_low_change"][0] == pytest.approx(0.3 * wave.pow(2).mean().sqrt().item(), rel=1e-6)
    assert images["x0_high"].abs().max().item() < 1e-6
    assert torch.allclose(images["x0_low"], images["x0"], atol=1e-6)
    assert result["strip_steps"] == [0, 1, 2] and images["x0"].shape == (3, 3, 32, 32)


def test_helpers_say_what_they_compute() -> None:
    assert strip_steps(25, 8) == [0, 3, 7, 10, 14, 17, 21, 24]
    assert strip_steps(3, 8) == [0, 1, 2] and strip_steps(5, 1) == [4]
    assert high_band([0.0, math.pi / 2, math.pi], [0.0, -1.0, -3.0]) == -2.0
    assert high_band([0.0], [0.0]) is None  # a 2x2 map's diagonal holds DC alone
    with pytest.raises(ValueError, match="path must be one of"):
        trajectory(Replay([torch.zeros(1, 1, 8, 8)]), [0], Request(steps=1), readout=Readout(path="ring"))
    with pytest.raises(ValueError, match=r"space must be one of \['pixel'\]"):
        trajectory(Replay([torch.zeros(1, 1, 8, 8)]), [0], Request(steps=1), readout=Readout(spaces=["latent"]))
    with pytest.raises(ValueError, match="bins .* counts the rings of path='radial'"):
        Readout(bins=4)
    with pytest.raises(ValueError, match="cutoff must be a fraction of the Nyquist frequency"):
        Readout(cutoff=1.5)
    with pytest.raises(ValueError, match="factor must be one of"):
        b_sweep(Replay([torch.zeros(1, 1, 8, 8)]), [0], Request(steps=1), factor="s1")


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_x0_formula_equals_the_schedulers_own_prediction(kind: str) -> None:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(prediction_type=kind, clip_sample=False)
    scheduler.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    sample, output = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = scheduler.timesteps[3]
    own = scheduler.step(output, t, sample).pred_original_sample
    computed = predicted_x0(scheduler, SimpleNamespace(), output, t, sample)  # a step output without x0
    assert torch.allclose(computed, own, atol=1e-5)


# -- sampling and features on a tiny random U-Net -----------------------------------------------------------------


def test_runtime_sampler_equals_a_plain_ddim_loop_and_x0_ends_at_the_sample(tiny_sampler) -> None:
    from reference import reference_ddim

    records: list[Step] = []
    final = tiny_sampler.sample([3, 4], Request(steps=4), on_step=records.append, output="tensor")
    reference = reference_ddim(tiny_sampler.unet, [3, 4], steps=4)  # in [0, 1]
    assert torch.equal((final.clamp(-1, 1) + 1) / 2, reference)
    assert [r.timestep for r in records] == [999, 749, 499, 249]
    assert torch.equal(records[-1].x0, final)  # trailing DDIM: the last step lands on its x0


def test_observing_changes_nothing_and_identity_factors_equal_off(tiny_sampler) -> None:
    plain = tiny_sampler.sample([0, 1], Request(steps=2), output="tensor")
    seen = []
    with freeu.apply(tiny_sampler.unet, b1=1, b2=1, s1=1, s2=1, observer=seen.append):
        observed = tiny_sampler.sample([0, 1], Request(steps=2), output="tensor")
    assert torch.equal(observed, plain) and len(seen) == 2 * 9  # 2 steps x 9 joins
    result = features(tiny_sampler, [0, 1], Request(steps=2), freeu.FreeUConfig(1.0, 1.0, 1.0, 1.0))
    assert [j["stage"] for j in result["joins"]] == [1, 1, 1, 1, 2, 2, 2, None, None]
    for join in result["joins"]:
        assert join["on"] == join["off"]  # bit-identical numbers
        assert join["off"]["backbone_out"] == join["off"]["backbone_in"]


def test_feature_curves_equal_a_recomputation_from_the_raw_tensors(tiny_sampler) -> None:
    config = freeu.FreeUConfig(1.6, 1.4, 0.5, 0.2)
    result = features(tiny_sampler, [5, 6], Request(steps=1), config)  # one step: one forward pass per setting
    raw = {}
    with freeu.apply(tiny_sampler.unet, config, observer=lambda o: raw.setdefault(o.join.name, o)):
        tiny_sampler.sample([5, 6], Request(steps=1), output="tensor")
    for join in result["joins"]:
        o = raw[join["name"]]
        tensors = {
            "backbone_in": o.backbone, "backbone_out": o.backbone_out, "skip_in": o.skip, "skip_out": o.skip_out,
            "fused": torch.cat([o.backbone_out, o.skip_out], dim=1),
        }  # fmt: skip
        for kind in KINDS:
            _, expected = relative_log_amplitude(tensors[kind])
            assert torch.allclose(torch.tensor(join["on"][kind], dtype=torch.float64), expected, atol=1e-9), kind
        assert join["size"] == list(o.backbone.shape[-2:])


def test_what_b_does_to_the_backbone_features(tiny_sampler) -> None:
    """The truth as the library measures it, on one forward pass (so every run sees the same input noise):

    - version 1 multiplies half the backbone channels by a constant; log |F| of those maps shifts by log b at every
      frequency, DC included, so the relative log amplitude (minus DC) of the backbone out equals its input's,
      exactly (up to float32 rounding): at the join, the paper's measure cannot see b;
    - version 2 multiplies by a smooth spatial map, which does change the curve at the join;
    - either way the features after the join (the next joins' backbone inputs) change with b.
    """
    seeds, steps = [0, 1], 1
    first_stage_1 = "up_blocks.0.resnets.0"
    off = {
        j["name"]: j
        for j in features(tiny_sampler, seeds, Request(steps=steps), freeu.FreeUConfig(1, 1, 1, 1))["joins"]
    }
    for version in (1, 2):
        for b in (1.3, 1.8):
            result = features(
                tiny_sampler, seeds, Request(steps=steps), freeu.FreeUConfig(b, 1.0, 1.0, 1.0, version=version)
            )
            joins = {j["name"]: j for j in result["joins"]}
            first = joins[first_stage_1]["on"]
            assert first["backbone_in"] == off[first_stage_1]["off"]["backbone_in"]  # nothing upstream changed
            gap = torch.tensor(first["backbone_out"]) - torch.tensor(first["backbone_in"])
            if version == 1:
                assert gap.abs().max().item() < 1e-5  # float32 rounding of b * x
            else:
                assert gap.abs().max().item() > 1e-3
            downstream = torch.tensor(joins["up_blocks.2.resnets.0"]["on"]["backbone_in"])
            before = torch.tensor(off["up_blocks.2.resnets.0"]["off"]["backbone_in"])
            assert (downstream - before).abs().max().item() > 1e-3


def test_b_sweep_on_the_tiny_u_net_lowers_the_high_frequencies_of_its_samples(tiny_sampler) -> None:
    # measured: mean relative log amplitude over pi/2..pi of the final samples falls as b1 grows (version 1, s = 1)
    result = b_sweep(
        tiny_sampler, [0, 1], Request(steps=3), [1.0, 1.3, 1.6, 2.0], base=freeu.FreeUConfig(1, 1, 1, 1, version=1)
    )
    band = result["spaces"]["pixel"]["high_band"]
    assert all(a > b for a, b in zip(band, band[1:], strict=False)), band
    assert band[0] - band[-1] > 0.5
    final = tiny_sampler.sample([0, 1], Request(steps=3), output="tensor").clamp(-1, 1)  # b = 1 is the plain model
    assert result["spaces"]["pixel"]["curves"][0] == relative_log_amplitude(final.float())[1].tolist()


# -- the command line -----------------------------------------------------------------------------------------------


def test_end_to_end_files_schema_and_one_oracle_number(tiny_folder, tiny_sampler, tmp_path, capsys) -> None:
    """The command's files and the shape of its numbers; one number against an oracle outside the tool: the b = 1
    curve of the b sweep is the relative log amplitude of what a plain DDIM loop gives for the same seeds."""
    from PIL import Image
    from reference import reference_ddim

    out = tmp_path / "analysis"
    code = analyze("--model", str(tiny_folder), "--steps", "2", "--count", "2", "--seed", "3", "--b-values", "1,1.6",
                   "--noisy", "--out", str(out))  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "analysis.json").read_text())
    assert data["freeu"]["b1"] == DEMO_SETTING.b1 and data["seeds"] == [3, 4] and data["spaces"] == ["pixel"]
    for name in ("trajectory-strip-pixel", "trajectory-amplitude-pixel", "b-sweep-pixel", "features"):
        with Image.open(out / f"{name}.png") as picture:
            assert picture.size[0] > 300 and picture.size[1] > 300
        assert f"wrote {out / f'{name}.png'}" in printed
    # schema: one entry per step, per b value, per skip join
    pixel = data["trajectory"]["spaces"]["pixel"]
    bins = len(pixel["frequency"])
    assert bins == 8 and len(data["trajectory"]["timesteps"]) == 2
    for which in ("x0", "xt"):
        assert len(pixel[which]) == 2 and all(len(curve) == bins for curve in pixel[which])
        assert len(pixel[f"{which}_high_fraction"]) == 2 and len(pixel[f"{which}_low_change"]) == 1
    sweep = data["b"]["spaces"]["pixel"]
    assert data["b"]["values"] == [1.0, 1.6] and len(sweep["curves"]) == 2 and len(sweep["at_pi"]) == 2
    joins = data["features"]["joins"]
    assert [j["name"] for j in joins] == [p.join.name for p in freeu.plan(tiny_sampler.unet)]
    assert all(set(j["on"]) == set(KINDS) == set(j["off"]) for j in joins)
    # the oracle number
    plain = reference_ddim(tiny_sampler.unet, [3, 4], 2) * 2 - 1
    expected = relative_log_amplitude(plain.double())[1]
    assert (torch.tensor(sweep["curves"][0], dtype=torch.float64) - expected).abs().max().item() < 1e-5
    at_pi = sweep["at_pi"]
    assert f"b1 1 -> 1.6: relative log amplitude at pi {at_pi[0]:+.3f} -> {at_pi[1]:+.3f}" in printed
    assert (out / "summary.txt").read_text().splitlines()[0] in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cutoff", "0"], "argument --cutoff: must be a fraction of the Nyquist frequency"),
        (["--path", "ring"], "argument --path: invalid choice: 'ring'"),
        (["--space", "rgb"], "argument --space: invalid choice: 'rgb'"),
        (["--b-values", "1,x"], "argument --b-values: must be a number, a list"),
        (["--b-values", "1:0.5:0.1"], "argument --b-values: must be a number, a list"),
        (["--only", "trajectory,fig7"], "argument --only: must be a comma-separated subset of trajectory,b,features"),
        (["--steps", "0"], "argument --steps: must be an integer >= 1"),
        (["--b1", "-1"], "argument --b1: must be a finite number >= 0"),
        (["--version", "3"], "argument --version: invalid choice: 3"),
        (["--b-factor", "s1"], "argument --b-factor: invalid choice: 's1'"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["analyze", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_what_the_model_cannot_do_is_refused(tiny_folder, tmp_path, capsys, monkeypatch) -> None:
    assert analyze("--model", str(tiny_folder), "--prompt", "a cat", "--out", str(tmp_path)) == 2
    assert "--prompt: the demo model is unconditional" in capsys.readouterr().err
    assert analyze("--model", str(tiny_folder), "--guidance", "3", "--out", str(tmp_path)) == 2
    assert "--guidance: the demo model is unconditional" in capsys.readouterr().err
    assert analyze("--model", str(tiny_folder), "--space", "latent", "--out", str(tmp_path)) == 2
    assert "space must be one of ['pixel']" in capsys.readouterr().err
    import freeu.apps.demo_model

    monkeypatch.setattr(freeu.apps.demo_model, "CLASSES_WEIGHTS_DIR", tmp_path / "no-weights")
    assert analyze("--out", str(tmp_path)) == 1  # the default model, demo-classes
    assert "unet.safetensors is missing" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_the_default_model_is_the_class_conditional_demo_with_its_default_class(tmp_path, capsys) -> None:
    out = tmp_path / "default"
    assert analyze("--steps", "2", "--count", "2", "--only", "trajectory,guidance", "--out", str(out)) == 0
    assert "class 'brick' (the model's default; --prompt names one of astronaut, brick" in capsys.readouterr().out
    results = json.loads((out / "analysis.json").read_text())
    assert (results["model"], results["prompt"], results["guidance_scale"]) == ("demo-classes", "brick", 2.0)
    assert results["guidance"]["scale"] == 2.0 and len(results["guidance"]["steps"]) == 2
    assert (out / "guidance.png").is_file() and (out / "guidance.csv").is_file()


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    import tiny_pipelines

    return tiny_pipelines.sd_pipeline(tmp_path_factory.mktemp("sd"))


def test_tiny_sd_pipeline_in_latent_and_pixel_space(sd_folder, tmp_path, capsys) -> None:
    from freeu.apps.runtime import load_pipeline

    out = tmp_path / "sd"
    code = analyze("--model", str(sd_folder), "--prompt", "a cat", "--steps", "2", "--count", "1",
                   "--space", "both", "--b-values", "1,1.6", "--only", "trajectory,b", "--out", str(out))  # fmt: skip
    assert code == 0
    assert "from preset 'sd15'" in capsys.readouterr().out
    data = json.loads((out / "analysis.json").read_text())
    for space in ("latent", "pixel"):
        assert (out / f"trajectory-strip-{space}.png").is_file() and (out / f"b-sweep-{space}.png").is_file()
    latent_size, pixel_size = 16, 32
    assert len(data["trajectory"]["spaces"]["latent"]["frequency"]) == latent_size // 2
    assert len(data["trajectory"]["spaces"]["pixel"]["frequency"]) == pixel_size // 2
    # b = 1 is the pipeline's own result for seed 0's noise: latents as they are, pixels through its VAE
    pipe = load_pipeline(str(sd_folder))
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 4, latent_size, latent_size), generator=torch.Generator().manual_seed(0))
    common = dict(prompt=["a cat"], num_inference_steps=2, guidance_scale=7.5, height=32, width=32)
    latents = pipe(**common, latents=noise, output_type="latent").images
    pixels = torch.from_numpy(pipe(**common, latents=noise, output_type="np").images).permute(0, 3, 1, 2) * 2 - 1
    for space, x in (("latent", latents), ("pixel", pixels)):
        expected = relative_log_amplitude(x.float())[1]
        got = torch.tensor(data["b"]["spaces"][space]["curves"][0], dtype=torch.float64)
        assert (got - expected).abs().max().item() < 1e-4, space
    assert "step" not in vars(pipe.scheduler)
    assert analyze("--model", str(sd_folder), "--out", str(out)) == 2
    assert "--prompt is required for the text-to-image pipeline" in capsys.readouterr().err
    assert analyze("--model", str(sd_folder), "--prompt", "a cat", "--size", "36", "--out", str(out)) == 2
    assert "--size 36x36 must be a multiple of 16" in capsys.readouterr().err


def test_demo_model_skip_carries_the_high_frequencies_and_b_raises_the_curve() -> None:
    """Measured on the bundled weights (EMA of step 5000); docs/analyze.md discusses it."""
    sampler = load_demo(device="cpu")
    seeds = [0, 1]
    result = features(sampler, seeds, Request(steps=1), freeu.FreeUConfig(1.6, 1.0, 1.0, 1.0, version=1))
    for join in result["joins"]:
        f, off = join["frequency"], join["off"]
        if join["stage"] == 1:  # version 1's constant gain is invisible to the relative log amplitude at the join
            gap = torch.tensor(join["on"]["backbone_out"]) - torch.tensor(join["on"]["backbone_in"])
            assert gap.abs().max().item() < 1e-5
        if join["size"][0] >= 16:  # the paper's Fig. 7: skip features hold more high frequencies (8x8: about equal)
            assert high_band(f, off["skip_in"]) - high_band(f, off["backbone_in"]) > 0.5, join["name"]
    # the paper's Fig. 6 says a larger b suppresses high frequencies; on the demo model b2 (version 1) raises the
    # contrast and the whole curve with it (measured: mean over pi/2..pi about -4.1 -> -2.4 for b2 1.0 -> 1.6)
    sweep = b_sweep(
        sampler, seeds, Request(steps=8), [1.0, 1.6], factor="b2", base=freeu.FreeUConfig(1, 1, 1, 1, version=1)
    )
    band = sweep["spaces"]["pixel"]["high_band"]
    assert band[1] - band[0] > 0.5, band


@pytest.mark.parametrize(
    "family, joins",
    [
        ("kandinsky3", [("up_blocks.1", 1, [2, 2]), ("up_blocks.2", 2, [4, 4]), ("up_blocks.3", None, [8, 8])]),
        ("hunyuan", [("blocks.4.skip_norm", 1, [8, 8]), ("blocks.5.skip_norm", 1, [8, 8])]),
    ],
)
def test_analyze_runs_on_kandinsky3_and_hunyuan_dit_pipelines(family, joins, tmp_path) -> None:
    """Every analysis on a tiny Kandinsky 3 pipeline (its U-Net's up blocks) and a tiny Hunyuan-DiT one (its long
    skips, on the 8 x 8 token grid of a 128 px image); b = 1 is the pipeline's own result for seed 0's noise (for
    Hunyuan-DiT at the size asked for: the runtime turns off its rounding to trained sizes)."""
    pytest.importorskip("transformers")
    import tiny_pipelines

    folder = getattr(tiny_pipelines, f"{family}_pipeline")(tmp_path / family)
    out = tmp_path / "analysis"
    code = analyze("--model", str(folder), "--prompt", "a cat", "--steps", "2", "--count", "1", "--size", "128",
                   "--b-values", "1,1.6", "--b1", "1.3", "--s1", "0.9", "--b2", "1.2", "--s2", "0.5",
                   "--out", str(out))  # fmt: skip
    assert code == 0
    data = json.loads((out / "analysis.json").read_text())
    assert [(j["name"], j["stage"], j["size"]) for j in data["features"]["joins"]] == joins
    assert data["guidance"]["scale"] == {"kandinsky3": 3.0, "hunyuan": 5.0}[family]  # the pipelines' own defaults
    assert len(data["guidance"]["steps"]) == 2
    for name in ("trajectory-strip-latent.png", "b-sweep-latent.png", "features.png", "guidance.png"):
        assert (out / name).is_file(), name
    from freeu.apps.runtime import load_pipeline

    pipe = load_pipeline(str(folder))
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    extra = {"use_resolution_binning": False} if family == "hunyuan" else {}
    latents = pipe(prompt=["a cat"], num_inference_steps=2, height=128, width=128, latents=noise,
                   output_type="latent", **extra).images  # fmt: skip
    expected = relative_log_amplitude(latents.float())[1]
    got = torch.tensor(data["b"]["spaces"]["latent"]["curves"][0], dtype=torch.float64)
    assert (got - expected).abs().max().item() < 1e-4
