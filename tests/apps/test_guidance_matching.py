"""Matched guidance per prompt and per step, guidance schedules and compensated FreeU, on oracles with known answers.

The oracle is a class-conditional U-Net whose FreeU makes exactly stronger guidance: with ``b1 = 1 + e`` its
conditional prediction moves so that the guided prediction at scale ``w`` gains ``gain[class] * e`` times the
guidance direction, nothing else. The guidance meter must read ``w + gain[class] * e`` for each class, per-prompt
matching must give each class that scale, and compensation must take it back.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import freeu
from freeu.apps.schedule import GuidanceSchedule, scheduled_guidance

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, UNet2DModel  # noqa: E402
from diffusers.models.unets.unet_2d import UNet2DOutput  # noqa: E402

CLASSES = ("ash", "birch", "cedar")
GAINS = (0.4, 1.2, 2.0)  # extra guidance per unit of b1 - 1, per class
SCALE = 2.0  # the run's guidance
B1 = 1.5  # e = 0.5: equivalent scales 2.2, 2.6, 3.0


class OracleUNet(UNet2DModel):
    """A real tiny U-Net (so FreeU has joins to act on) whose output is built from known parts, on classifier-free
    guidance batches (the no-class half, then the class half): ``u = x / 10``, ``c = u + d`` with the class's
    direction ``d = 0.05 (class + 1) cos(x)``; FreeU with ``b1 = 1 + e`` adds ``gain * e * d`` to both halves, which
    is exactly ``gain * e`` more guidance, and leaves the guidance direction as it was."""

    def forward(self, sample, timestep, class_labels=None, return_dict=True):  # type: ignore[override]
        super().forward(sample, timestep, class_labels=class_labels)  # FreeU's hooks run on the real joins
        config = freeu.active_config(self)
        e = 0.0 if config is None else float(config.b1) - 1.0
        labels = class_labels.to(torch.long)
        classes = labels[labels.shape[0] // 2 :].repeat(2)  # each pair's class, for both of its halves
        size = torch.tensor([0.05 * (i + 1) for i in range(len(CLASSES))])[classes].view(-1, 1, 1, 1)
        gain = torch.tensor(GAINS)[classes].view(-1, 1, 1, 1)
        direction = size * torch.cos(sample)
        conditional = (labels < len(CLASSES)).to(sample.dtype).view(-1, 1, 1, 1)
        out = sample / 10 + direction * (conditional + gain * e)
        return UNet2DOutput(sample=out) if return_dict else (out,)


def oracle_model():
    from freeu.apps.runtime import UNetModel

    torch.manual_seed(0)
    unet = OracleUNet(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=4,
        num_class_embeds=len(CLASSES) + 1,
    ).eval()  # fmt: skip
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, timestep_spacing="trailing")
    return UNetModel(unet, scheduler, "oracle", classes=CLASSES, guidance=SCALE, fingerprint="oracle-unet")


def _request(out, **fields):
    from freeu.apps.evaluate import EvalRequest, MetricOptions, StatisticsOptions, parse_config_arg

    configs = [c for spec in fields.pop("configs") for c in parse_config_arg(spec)]
    return EvalRequest(
        model="oracle", configs=tuple(configs), prompts=CLASSES, seeds=2, steps=4, guidance_units=3,
        metrics=MetricOptions(fid_features="none", clip="none", swd_levels=2),
        statistics=StatisticsOptions(bootstrap=20, set_bootstrap=5), out=out, progress=False, **fields,
    )  # fmt: skip


def test_per_prompt_matching_recovers_each_prompts_own_scale(tmp_path) -> None:
    from freeu.apps.evaluate import evaluate

    model = oracle_model()
    result = evaluate(_request(tmp_path / "e", configs=["F:b1=1.5 b2=1 s1=1 s2=1"], matched_guidance=True), model)
    match = result.guidance_meter["F"]
    assert match.mode == "prompt"  # auto: the meter's 3 units hold every class
    for (_, reading), gain in zip(match.readings, GAINS, strict=True):
        assert reading.equivalent == pytest.approx(SCALE + gain * (B1 - 1), abs=1e-5)  # 2.2, 2.6, 3.0
        assert all(s == pytest.approx(SCALE + gain * (B1 - 1), abs=1e-5) for s in reading.steps)
    assert match.equivalent == pytest.approx(2.6, abs=1e-5)  # one scale for all: the mean
    records = [json.loads(line) for line in (tmp_path / "e" / "records.jsonl").read_text().splitlines()]
    baseline = {r["prompt"]: r["guidance_schedule"] for r in records if r["config"] == "off@F"}
    assert {p: s["scale"] for p, s in baseline.items()} == {"ash": [2.2], "birch": [2.6], "cedar": [3.0]}
    # the baseline's images are FreeU off at each class's own scale (a schedule at a constant scale is that scale)
    for prompt, scale in (("ash", 2.2), ("cedar", 3.0)):
        from freeu.apps.runtime import Request

        plain = model.sample([0], Request(steps=4, prompt=prompt, guidance=scale), output="tensor")
        stored = next(r for r in records if r["config"] == "off@F" and r["prompt"] == prompt and r["seed"] == 0)
        from freeu.apps.evaluate.generation import load_png
        from freeu.apps.runtime import to_unit_range

        expected = (to_unit_range(plain)[0] * 255).round()
        assert (load_png(tmp_path / "e" / stored["image"]).float() - expected).abs().max() <= 1


def test_one_scale_mode_gives_every_prompt_the_mean(tmp_path) -> None:
    from freeu.apps.evaluate import evaluate

    result = evaluate(_request(tmp_path / "g", configs=["F:b1=1.5 b2=1 s1=1 s2=1"], matched_guidance=True,
                               guidance_match="global"), oracle_model())  # fmt: skip
    assert result.guidance_meter["F"].mode == "global"
    records = [json.loads(line) for line in (tmp_path / "g" / "records.jsonl").read_text().splitlines()]
    assert {r["guidance"] for r in records if r["config"] == "off@F"} == {2.6}
    assert all(r["guidance_schedule"] is None for r in records)


def test_the_steps_mode_follows_each_prompts_guidance_curve(tmp_path) -> None:
    """The oracle's extra guidance is the same at every step: each prompt's curve is its scale at each of the 4
    steps, and sampling along it gives FreeU off at that scale."""
    from freeu.apps.evaluate import evaluate
    from freeu.apps.evaluate.generation import load_png
    from freeu.apps.runtime import Request, to_unit_range

    model = oracle_model()
    out = tmp_path / "s"
    result = evaluate(_request(out, configs=["F:b1=1.5 b2=1 s1=1 s2=1"], matched_guidance=True,
                               guidance_match="steps"), model)  # fmt: skip
    assert result.guidance_meter["F"].mode == "steps"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    curves = {r["prompt"]: r["guidance_schedule"]["scale"] for r in records if r["config"] == "off@F"}
    for prompt, gain in zip(CLASSES, GAINS, strict=True):
        assert curves[prompt] == pytest.approx([SCALE + gain * (B1 - 1)] * 4, abs=1e-4)
    plain = model.sample([1], Request(steps=4, prompt="birch", guidance=2.6), output="tensor")
    stored = next(r for r in records if r["config"] == "off@F" and r["prompt"] == "birch" and r["seed"] == 1)
    expected = (to_unit_range(plain)[0] * 255).round()
    assert (load_png(out / stored["image"]).float() - expected).abs().max() <= 1


def test_compensated_freeu_takes_each_prompts_extra_guidance_back(tmp_path) -> None:
    """Compensated FreeU on the oracle is FreeU off: its extra guidance is all there is, and taking it back on every
    frequency leaves nothing of it (the oracle's FreeU does not change the guidance direction)."""
    from freeu.apps.evaluate import evaluate

    model = oracle_model()
    out = tmp_path / "c"
    configs = ["F:b1=1.5 b2=1 s1=1 s2=1", "Fc:b1=1.5 b2=1 s1=1 s2=1 compensate=global",
               "Fl:b1=1.5 b2=1 s1=1 s2=1 compensate=low"]  # fmt: skip
    result = evaluate(_request(out, configs=configs), model)
    assert [c.config.name for c in result.configs] == ["off", "F", "Fc", "Fl"]  # no baseline without 'auto'
    assert result.guidance_meter["Fc"].baseline is None
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    schedules = {r["prompt"]: r["guidance_schedule"] for r in records if r["config"] == "Fc"}
    assert {p: s["scale"] for p, s in schedules.items()} == {"ash": [1.8], "birch": [1.4], "cedar": [1.0]}
    low = {r["prompt"]: r["guidance_schedule"] for r in records if r["config"] == "Fl"}
    # the oracle's extra guidance lies along the whole direction: its low band reads the same extra
    assert low["cedar"]["scale"] == [2.0] and low["cedar"]["low"] == [1.0] and low["ash"]["low"] == [1.8]
    from freeu.apps.evaluate.generation import load_png

    for record in (r for r in records if r["config"] == "Fc"):
        off = next(r for r in records if r["config"] == "off" and r["unit"] == record["unit"])
        a, b = load_png(out / record["image"]).float(), load_png(out / off["image"]).float()
        assert (a - b).abs().max() <= 1  # FreeU's only effect taken back: FreeU off, within one 8-bit level


def test_a_matching_mode_without_anything_to_match_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="--guidance-match"):
        _request(tmp_path / "x", configs=["F:b1=1.5 b2=1 s1=1 s2=1"], guidance_match="steps")
    with pytest.raises(ValueError, match="compensate= sets the guidance"):
        _request(tmp_path / "x", configs=["F:b1=1.5 b2=1 s1=1 s2=1 compensate=low guidance=3"])
    with pytest.raises(ValueError, match="compensate must be one of global, low"):
        _request(tmp_path / "x", configs=["F:b1=1.5 b2=1 s1=1 s2=1 compensate=high"])
    with pytest.raises(ValueError, match="'off' takes no FreeU keys"):
        _request(tmp_path / "x", configs=["o:off compensate=low"])


def test_a_schedule_gives_per_step_and_per_band_guidance_exactly() -> None:
    """The hook makes the sampler's own ``u + w (c' - u)`` equal to the scheduled prediction."""
    torch.manual_seed(1)
    u, d = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    calls = itertools.repeat((u, u + d))

    class Fixed(torch.nn.Module):
        def forward(self, x):  # an unconditional then a conditional half
            a, b = next(calls)
            return torch.cat([a, b])

    net, base = Fixed(), 4.0
    schedule = GuidanceSchedule((3.0, 5.0), low=(1.0, 7.0), cutoff=0.25)
    from freeu.apps.guidance import band_split

    low, high = band_split(d, 0.25)
    with scheduled_guidance(net, base, schedule):
        for low_scale, scale in ((1.0, 3.0), (7.0, 5.0)):
            uncond, cond = net(None).chunk(2)
            guided = uncond + base * (cond - uncond)
            assert torch.allclose(guided, u + low_scale * low + scale * high, atol=1e-12)
        with pytest.raises(ValueError, match="has 2 steps"):
            net(None)


def test_schedules_are_refused_where_they_cannot_apply() -> None:
    with (
        pytest.raises(ValueError, match="above 1"),
        scheduled_guidance(torch.nn.Identity(), 1.0, GuidanceSchedule((2.0,))),
    ):
        pass
    with pytest.raises(ValueError, match="same number of steps"):
        GuidanceSchedule((1.0, 2.0), low=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="finite"):
        GuidanceSchedule((float("nan"),))
    with pytest.raises(ValueError, match="cutoff"):
        GuidanceSchedule((2.0,), cutoff=2.0)
