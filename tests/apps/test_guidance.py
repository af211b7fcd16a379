"""The guidance meter: an oracle with a known guidance part and a known orthogonal part, and the meter on tiny SD 1.5
and SDXL pipelines against the same step recomputed by hand."""

from __future__ import annotations

import pytest
import torch

import freeu
from freeu.apps.guidance import (
    GuidanceStep,
    GuidanceTrace,
    band_split,
    decompose,
    guided_change,
    guided_change_by_band,
    measure_guidance,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _orthogonal_to(direction: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    d, x = direction.flatten(1), noise.flatten(1)
    return (x - ((x * d).sum(1) / (d * d).sum(1))[:, None] * d).reshape(noise.shape)


@pytest.mark.parametrize("scale", [7.5, 3.0])
def test_an_oracle_change_of_known_guidance_and_orthogonal_parts_is_read_back_to_float_precision(scale) -> None:
    """A synthetic guided model: FreeU changes the guided prediction by exactly ``a * (eps_c - eps_u) + o`` with
    ``o`` orthogonal to ``eps_c - eps_u``; its branches change in an arbitrary way that adds up to that."""
    gen = torch.Generator().manual_seed(0)
    shape = (3, 4, 8, 8)
    uncond, cond = torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen,
                                                                                       dtype=torch.float64)  # fmt: skip
    direction = cond - uncond
    a = torch.tensor([0.3, -0.2, 1.5], dtype=torch.float64)
    o = _orthogonal_to(direction, torch.randn(shape, generator=gen, dtype=torch.float64))
    o = o * torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64)[:, None, None, None]  # sample 1: guidance only
    change = a[:, None, None, None] * direction + o
    guided_off = uncond + scale * direction
    uncond_on = uncond + 0.7 * torch.randn(shape, generator=gen, dtype=torch.float64)  # any change of the branch
    cond_on = (guided_off + change - (1 - scale) * uncond_on) / scale  # ... that makes the guided change exact
    extra, share, size = guided_change(uncond, cond, uncond_on, cond_on, scale)
    assert torch.allclose(extra, a, rtol=0, atol=1e-12)
    expected_share = o.flatten(1).square().sum(1) / change.flatten(1).square().sum(1)
    assert torch.allclose(share, expected_share, rtol=0, atol=1e-12) and share[1].item() < 1e-24
    assert torch.allclose(size, change.flatten(1).norm(dim=1) / (scale * direction.flatten(1).norm(dim=1)))
    # FreeU off at the equivalent scale reproduces the guidance part exactly
    at_equivalent = uncond + (scale + a[:, None, None, None]) * direction
    assert torch.allclose(at_equivalent + o, guided_off + change, atol=1e-12)
    # float32 inputs: float32 precision
    extra32, share32, _ = guided_change(uncond.float(), cond.float(), uncond_on.float(), cond_on.float(), scale)
    assert torch.allclose(extra32, a, atol=1e-4) and torch.allclose(share32, expected_share, atol=1e-4)


def test_no_change_and_no_direction_give_zeros_not_nans() -> None:
    zero = torch.zeros(2, 3, 4)
    extra, share = decompose(zero, torch.ones(2, 3, 4))
    assert extra.tolist() == [0.0, 0.0] and share.tolist() == [0.0, 0.0]
    extra, share = decompose(torch.ones(2, 3, 4), zero)
    assert extra.tolist() == [0.0, 0.0] and share.tolist() == [1.0, 1.0]  # nothing of it is guidance
    with pytest.raises(ValueError, match="one shape"):
        decompose(torch.ones(2, 3), torch.ones(2, 4))
    trace = GuidanceTrace(5.0, [])
    assert trace.equivalent != trace.equivalent  # NaN without steps


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def pipeline(request, tmp_path_factory):
    pytest.importorskip("transformers")
    import tiny_pipelines

    from freeu.apps.runtime import load_model

    build = tiny_pipelines.sd_pipeline if request.param == "sd15" else tiny_pipelines.sdxl_pipeline
    return request.param, load_model(str(build(tmp_path_factory.mktemp(request.param) / "pipe")))


def _guided_pair(direction: torch.Tensor, uncond: torch.Tensor, change: torch.Tensor, scale: float, gen):
    """Branch predictions with FreeU on whose guided prediction differs from FreeU off's by exactly ``change``."""
    uncond_on = uncond + 0.5 * torch.randn(uncond.shape, generator=gen, dtype=torch.float64)
    cond_on = (uncond + scale * direction + change - (1 - scale) * uncond_on) / scale
    return uncond_on, cond_on


def test_the_bands_split_each_map_exactly_into_orthogonal_low_and_high_frequencies() -> None:
    x = torch.randn(2, 3, 16, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for cutoff, square in ((0.0, (1, 1)), (0.5, (4, 3))):
        low, high = band_split(x, cutoff)
        assert torch.allclose(low + high, x, atol=1e-12)
        assert (low * high).sum(dim=(-2, -1)).abs().max().item() < 1e-10  # disjoint frequencies: orthogonal
        # an independent oracle: the low band keeps exactly the centred (2 * rows + 1) x (2 * cols + 1) bins
        spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
        mask = torch.zeros(16, 12, dtype=torch.bool)
        mask[8 - square[0] : 8 + square[0] + 1, 6 - square[1] : 6 + square[1] + 1] = True
        expected = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))).real
        assert torch.allclose(low, expected, atol=1e-10), cutoff
    with pytest.raises(ValueError, match="cutoff must be a number in \\[0, 1\\]"):
        band_split(x, 1.5)


@pytest.mark.parametrize("band", ["low", "high"])
def test_stronger_guidance_in_one_band_reads_there_and_the_base_scale_in_the_other(band) -> None:
    """FreeU's change is exactly ``k`` times the guidance direction's low (or high) frequencies: the meter reads
    ``k`` extra guidance in that band and none in the other, and the whole-map figure is the energy-weighted mix."""
    gen = torch.Generator().manual_seed(1)
    shape, scale = (3, 4, 16, 16), 6.0
    uncond = torch.randn(shape, generator=gen, dtype=torch.float64)
    direction = torch.randn(shape, generator=gen, dtype=torch.float64)
    direction = direction + 3 * band_split(direction, 0.25)[0]  # guidance with strong low frequencies, as in images
    k = torch.tensor([0.8, -0.5, 2.0], dtype=torch.float64)
    parts = dict(zip(("low", "high"), band_split(direction, 0.25), strict=True))
    change = k[:, None, None, None] * parts[band]
    bands = guided_change_by_band(uncond, uncond + direction, *_guided_pair(direction, uncond, change, scale, gen),
                                  scale, cutoff=0.25)  # fmt: skip
    other = "high" if band == "low" else "low"
    assert torch.allclose(bands[band][0], k, atol=1e-10) and bands[band][1].abs().max().item() < 1e-20
    assert bands[other][0].abs().max().item() < 1e-10  # the other band: FreeU off's own scale
    whole, _, _ = guided_change(uncond, uncond + direction, *_guided_pair(direction, uncond, change, scale, gen),
                                scale)  # fmt: skip
    energy = parts[band].flatten(1).square().sum(1) / direction.flatten(1).square().sum(1)
    assert torch.allclose(whole, k * energy, atol=1e-10)


def test_the_weighted_aggregate_weights_steps_by_their_guidance_size() -> None:
    steps = [GuidanceStep(0, 999, 1.0, 6.0, 0.5, 0.1, direction_norm=1.0, extra_low=2.0, extra_high=0.5),
             GuidanceStep(1, 500, 3.0, 8.0, 0.5, 0.1, direction_norm=3.0, extra_low=4.0, extra_high=-0.5)]  # fmt: skip
    trace = GuidanceTrace(5.0, steps)
    assert trace.equivalent == 7.0 and trace.equivalent_weighted == 5.0 + (1 * 1 + 3 * 3) / 4
    assert trace.band_equivalent("low") == 8.0 and trace.band_equivalent("high") == 5.0
    assert trace.as_dict()["equivalent_weighted"] == 7.5 and "extra_low" in trace.csv().splitlines()[0]
    with pytest.raises(ValueError, match="band must be one of"):
        trace.band_equivalent("mid")


def test_the_meter_on_a_pipeline_equals_the_step_recomputed_by_hand(pipeline) -> None:
    from freeu.apps.runtime import Request

    name, model = pipeline
    assert model.preset()[0] == name
    config = freeu.get_preset(name).config
    request = Request(steps=3, prompt="a cat", guidance=5.0)
    captured: list[tuple[tuple, dict]] = []

    def capture(module, args, kwargs):  # the pipeline's own calls, not the meter's calls with FreeU off
        if freeu.active_config(module) == config:
            captured.append((args, {k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}))

    handle = model.unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        trace = measure_guidance(model, [0, 1], request, config)
    finally:
        handle.remove()
    assert [s.index for s in trace.steps] == [0, 1, 2] and trace.scale == 5.0
    # the second step, recomputed: the U-Net on the same inputs with FreeU on and off, split into the CFG halves
    assert len(captured) == 3
    args, kwargs = captured[1]
    kwargs = {**kwargs, "return_dict": False}
    with torch.no_grad():
        with freeu.apply(model.unet, config):
            on = model.unet(*args, **kwargs)[0]
        off = model.unet(*args, **kwargs)[0]
    extra, share, _ = guided_change(*off.chunk(2), *on.chunk(2), 5.0)
    step = trace.steps[1]
    assert step.extra == pytest.approx(extra.mean().item(), rel=1e-5, abs=1e-6)
    assert step.orthogonal_share == pytest.approx(share.mean().item(), rel=1e-5, abs=1e-6)
    assert step.equivalent == pytest.approx(5.0 + step.extra)
    bands = guided_change_by_band(*off.chunk(2), *on.chunk(2), 5.0)  # the default band: FreeU's own square
    assert step.extra_low == pytest.approx(bands["low"][0].mean().item(), rel=1e-5, abs=1e-6)
    assert step.extra_high == pytest.approx(bands["high"][0].mean().item(), rel=1e-5, abs=1e-6)
    direction = (off.chunk(2)[1] - off.chunk(2)[0]).double().flatten(1).norm(dim=1).mean().item()
    assert step.direction_norm == pytest.approx(direction, rel=1e-5)
    assert trace.equivalent == pytest.approx(5.0 + sum(s.extra for s in trace.steps) / 3)
    assert any(abs(s.extra) > 1e-3 for s in trace.steps) and all(0 < s.orthogonal_share <= 1 for s in trace.steps)
    # b = s = 1 changes nothing: no extra guidance, nothing orthogonal
    identity = measure_guidance(model, [0], request, freeu.FreeUConfig(1, 1, 1, 1))
    assert all(s.extra == 0 and s.orthogonal_share == 0 for s in identity.steps)
    assert freeu.active_config(model.unet) is None  # the meter leaves nothing behind
    with pytest.raises(ValueError, match="needs a guidance scale above 1"):
        measure_guidance(model, [0], Request(steps=2, prompt="a cat", guidance=1.0), config)


def test_the_meter_refuses_an_unguided_model() -> None:
    from freeu.apps.runtime import Request, load_model

    with pytest.raises(ValueError, match="takes no guidance scale"):
        measure_guidance(load_model("demo"), [0], Request(steps=2), freeu.FreeUConfig(1.3, 1.4, 0.9, 0.2))


def test_analyze_writes_the_meter_figure_and_its_numbers(pipeline, tmp_path, capsys) -> None:
    import csv
    import json

    from freeu.apps.cli import main
    from freeu.apps.runtime import Request

    name, model = pipeline
    out = tmp_path / "analysis"
    argv = ["analyze", "--model", model.name, "--prompt", "a cat", "--only", "guidance", "--steps", "3", "--count",
            "2", "--guidance", "6", "--band-cutoff", "0.25", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    meter = json.loads((out / "analysis.json").read_text())["guidance"]
    assert meter["scale"] == 6.0 and meter["freeu"] == freeu.get_preset(name).config.to_dict()
    rows = list(csv.DictReader((out / "guidance.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    for row, step in zip(rows, meter["steps"], strict=True):
        assert float(row["equivalent_scale"]) == pytest.approx(step["equivalent"], rel=1e-5)
        assert float(row["orthogonal_share"]) == pytest.approx(step["orthogonal_share"], rel=1e-5, abs=1e-9)
    assert meter["equivalent"] == pytest.approx(sum(s["equivalent"] for s in meter["steps"]) / 3)
    assert f"guidance: FreeU's change of the guided prediction equals guidance {meter['equivalent']:.3f}" in printed
    assert (out / "guidance.png").stat().st_size > 5000
    # per band (the cutoff asked for) and with steps weighted by the guidance direction's size
    assert meter["band_cutoff"] == 0.25
    assert meter["equivalent_low"] == pytest.approx(6.0 + sum(float(r["extra_low"]) for r in rows) / 3, rel=1e-5)
    assert meter["equivalent_high"] == pytest.approx(6.0 + sum(float(r["extra_high"]) for r in rows) / 3, rel=1e-5)
    weights = [float(r["direction_norm"]) for r in rows]
    weighted = 6.0 + sum(w * float(r["extra"]) for w, r in zip(weights, rows, strict=True)) / sum(weights)
    assert meter["equivalent_weighted"] == pytest.approx(weighted, rel=1e-5)
    assert f"{meter['equivalent_low']:.3f} in the low band (cutoff 0.25 of the map)" in printed
    with pytest.raises(SystemExit) as refused:  # argparse's refusal, before anything loads
        main([*argv[:-2], "--band-cutoff", "2", "--out", str(out)])
    assert refused.value.code == 2 and "must be a fraction of the map's half-size in [0, 1]" in capsys.readouterr().err
    # the same seeds sampled again give the same numbers (the meter is deterministic on a CPU)
    request = Request(steps=3, prompt="a cat", guidance=6.0)
    again = measure_guidance(model, [0, 1], request, freeu.get_preset(name).config)
    assert again.equivalent == pytest.approx(meter["equivalent"], rel=1e-6)


def test_analyze_refuses_the_meter_on_an_unguided_model(capsys, tmp_path) -> None:
    from freeu.apps.cli import main

    argv = ["analyze", "--model", "demo", "--only", "guidance", "--steps", "2", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "--only guidance: demo takes no guidance scale" in capsys.readouterr().err


def test_eval_adds_freeu_off_at_each_configurations_equivalent_guidance(pipeline, tmp_path, capsys) -> None:
    import json

    import numpy as np
    import tiny_pipelines

    from freeu.apps.cli import main
    from freeu.apps.evaluate.generation import load_png

    name, model = pipeline
    reference = tiny_pipelines.random_pictures(tmp_path / "reference", 6)
    out = tmp_path / "eval"
    argv = ["eval", "--model", model.name, "--prompt", "a cat", "--prompt", "a dog", "--seeds", "2", "--steps", "3",
            "--guidance", "5", "--config", "auto", "--config", "mild:b1=1.1 b2=1.2 s1=0.9 s2=0.9",
            "--guidance-baselines", "auto,7", "--guidance-units", "3", "--guidance-match", "global",
            "--reference", str(reference),
            "--fid-features", "none", "--clip", "none", "--swd-patches", "8", "--swd-projections", "16",
            "--bootstrap", "50", "--set-bootstrap", "5", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    meter = json.loads((out / "guidance.json").read_text())
    assert meter["units"] == ["p0-s0", "p1-s0", "p0-s1"]  # every prompt's first seed, then the second seeds
    assert list(meter["configs"]) == ["auto", "mild"]
    summary = json.loads((out / "metrics.json").read_text())
    names = [c["name"] for c in summary["configs"]]
    assert names == ["off", "auto", "mild", "off@cfg7", "off@auto", "off@mild"]
    for config in ("auto", "mild"):
        entry = meter["configs"][config]
        # the run's equivalent scale: the units-weighted mean of the two prompts' runs (2 seeds of a cat, 1 of a dog)
        runs = entry["runs"]
        assert [len(r["steps"][0]["per_sample_extra"]) for r in runs] == [2, 1]
        assert entry["equivalent"] == pytest.approx((2 * runs[0]["equivalent"] + runs[1]["equivalent"]) / 3)
        reading = summary["header"]["guidance_meter"][config]
        assert reading["baseline_guidance"] == round(entry["equivalent"], 2) and reading["mode"] == "global"
        row = next(c for c in summary["configs"] if c["name"] == f"off@{config}")
        assert row["guidance"] == reading["baseline_guidance"] and row["freeu"] is None
        assert f"guidance meter: {config} acts like guidance {entry['equivalent']:.3f}" in printed
        assert (out / "guidance" / f"{config}.csv").read_text().startswith("run,step,timestep,extra,equivalent_scale")
        assert (out / "guidance" / f"{config}.png").stat().st_size > 5000
    assert meter["configs"]["auto"]["freeu"] == freeu.get_preset(name).config.to_dict()
    # the matched baseline's images are FreeU off at that guidance, sampled by the pipeline itself
    from freeu.apps.runtime import load_pipeline

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    record = next(r for r in records if r["config"] == "off@mild" and r["prompt"] == "a dog" and r["seed"] == 1)
    pipe = load_pipeline(model.name)
    pipe.set_progress_bar_config(disable=True)
    plain = tiny_pipelines.plain_call(pipe, prompt="a dog", seed=1, count=1, steps=3, guidance=record["guidance"],
                                      height=32, width=32)[0]  # fmt: skip
    stored = load_png(out / record["image"]).short()
    assert (stored - torch.from_numpy(np.asarray(plain, dtype=np.int16)).permute(2, 0, 1)).abs().max().item() <= 1
    report = (out / "report.md").read_text()
    assert "## Guidance meter" in report and f"| mild | 5 | {meter['configs']['mild']['equivalent']:.3f} |" in report
    # each configuration against its matched baseline: set-level and per-image differences, paired per unit
    by_name = {c["name"]: c for c in summary["configs"]}
    assert by_name["off"]["versus_matched_guidance"] is None and by_name["off@cfg7"]["versus_matched_guidance"] is None
    for config in ("auto", "mild"):
        versus = by_name[config]["versus_matched_guidance"]
        assert versus["baseline"] == f"off@{config}"
        mine = torch.tensor([r["metrics"]["swd"] for r in records if r["config"] == config], dtype=torch.float64)
        theirs = torch.tensor([r["metrics"]["swd"] for r in records if r["config"] == f"off@{config}"],
                              dtype=torch.float64)  # fmt: skip
        paired = versus["per_image_paired"]["swd"]
        assert paired["mean"]["value"] == pytest.approx((mine - theirs).mean().item(), abs=1e-12)
        assert paired["better_share"] == pytest.approx(((mine < theirs).double() + 0.5 * (mine == theirs)).mean())
        assert paired["mean"]["low"] <= paired["mean"]["value"] <= paired["mean"]["high"]
        for metric in ("swd", "rapsd"):
            sets = by_name[config]["set_level"][metric]["value"]["value"]
            matched = by_name[f"off@{config}"]["set_level"][metric]["value"]["value"]
            assert versus["set_level_difference"][metric]["value"] == pytest.approx(sets - matched, abs=1e-12)
    assert "## Against FreeU off at the matched guidance" in report
    assert report.count("| off@mild |") >= 2  # its own rows, and the matched-baseline column
    # a rerun reuses the measurement
    before = (out / "guidance.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "guidance.json").stat().st_mtime_ns == before


def test_guidance_baselines_auto_is_refused_where_it_cannot_apply(capsys, tmp_path) -> None:
    from freeu.apps.cli import main

    argv = ["eval", "--model", "demo", "--guidance-baselines", "auto", "--seeds", "1", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "no guidance scales" in capsys.readouterr().err
