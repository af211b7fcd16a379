"""freeu eval: the protocol, resume, two processes, paired bootstrap, metric plumbing (tiny networks, nothing
downloaded)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import freeu
from freeu.apps.evaluate import main
from freeu.apps.evaluate.configs import expand_spec, load_config_file, parse_config_arg, with_baseline
from freeu.apps.evaluate.generation import load_png
from freeu.apps.evaluate.metrics import FeatureDistances, LaplacianSWD, SpectrumDistance
from freeu.apps.evaluate.stats import (
    counts,
    paired_mean_difference,
    percentile_interval,
    resample,
    set_metric_estimates,
)
from freeu.apps.measures import (
    laplacian_pyramid,
    patch_descriptors,
    rapsd_distance,
    sliced_wasserstein,
    swd_laplacian,
)

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

# small everywhere: 4 seeds, 2 DDIM steps, few patches and directions, few replicates
FAST = ["--seeds", "4", "--steps", "2", "--reference-count", "24", "--swd-patches", "16", "--swd-projections", "32",
        "--bootstrap", "200", "--set-bootstrap", "8", "--no-progress"]  # fmt: skip
CONFIGS = ["--config", "sd15", "--config", "late:sd15 start=0.5"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def empty_torch_home(tmp_path_factory) -> Path:
    """No FID weights in the torch hub cache, whatever this machine holds."""
    home = tmp_path_factory.mktemp("empty-torch-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def demo_run(tiny_demo, empty_torch_home, tmp_path_factory) -> tuple[Path, str]:
    """One run on the tiny demo-style model (FreeU off, sd15, sd15 in the second half of the trajectory) and what it
    printed."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("run") / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--model", str(tiny_demo), *FAST, *CONFIGS, "--out", str(out)]) == 0
    return out, printed.getvalue()


# --- configuration sets --------------------------------------------------------------------------------------------


def test_config_specs_presets_overrides_grids_and_windows(tmp_path) -> None:
    (sd15,) = parse_config_arg("sd15")
    assert sd15.name == "sd15" and sd15.freeu == freeu.get_preset("sd15").config
    (v1,) = parse_config_arg("v1:sd15 version=1 start=0.25 stop=0.75")
    assert (v1.freeu.version, v1.freeu.start, v1.freeu.stop, v1.freeu.b1) == (1, 0.25, 0.75, 1.5)
    grid = parse_config_arg("g:sd15 b1=1.0:1.4:0.2 s1=0.2,0.9")
    assert [c.name for c in grid] == [f"g[b1={b:g},s1={s:g}]" for b in (1.0, 1.2, 1.4) for s in (0.2, 0.9)]
    assert [(c.freeu.b1, c.freeu.s1, c.freeu.b2) for c in grid[:2]] == [(1.0, 0.2, 1.6), (1.0, 0.9, 1.6)]
    windows = parse_config_arg("w:sd15 start=0,0.5")
    assert [c.freeu.start for c in windows] == [0.0, 0.5]
    (mild,) = parse_config_arg("mild:b1=1.1 b2=1.2 s1=0.9 s2=0.9")
    assert (mild.freeu.b1, mild.freeu.s2, mild.freeu.version) == (1.1, 0.9, 2)
    # off is always first and named off; a stronger-guidance baseline is FreeU off with its own guidance
    configs = with_baseline([*grid[:1], *parse_config_arg("off@cfg9:off guidance=9")])
    assert [c.name for c in configs] == ["off", grid[0].name, "off@cfg9"]
    assert configs[0].freeu is None and configs[2].freeu is None and configs[2].guidance == 9.0
    # the same set from a TOML and a JSON file
    toml = tmp_path / "c.toml"
    toml.write_text('guidance_baselines = [9, 12]\n[configs]\nmild = "b1=1.1 b2=1.2 s1=0.9 s2=0.9"\n'
                    'g = { base = "sd15", b1 = [1.0, 1.2, 1.4], s1 = [0.2, 0.9] }\n')  # fmt: skip
    from_toml, baselines = load_config_file(toml)
    assert baselines == [9.0, 12.0]
    assert [c.freeu for c in from_toml] == [mild.freeu] + [c.freeu for c in grid]
    (tmp_path / "c.json").write_text(json.dumps({"configs": {"g": {"base": "sd15", "b1": [1.0, 1.2, 1.4],
                                                                    "s1": [0.2, 0.9]}}}))  # fmt: skip
    assert [c.freeu for c in load_config_file(tmp_path / "c.json")[0]] == [c.freeu for c in grid]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("x:b1=1.2", "missing b2, s1, s2"),
        ("x:sd15 b1=-1", "b1 must be a finite number >= 0"),
        ("x:sd15 start=0.8 stop=0.2", "start must be < stop"),
        ("x:sd15 colour=2", "unknown key"),
        ("x:sd99", "preset must be one of"),
        ("x:off b1=1.2", "'off' takes no FreeU keys"),
        ("x:sd15 version=1.5", "version must be an integer"),
    ],
)
def test_bad_config_specs_name_the_problem(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config_arg(spec)


def test_duplicate_names_and_a_redefined_off_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        with_baseline([*expand_spec("a", "sd15"), *expand_spec("a", "sdxl")])
    with pytest.raises(ValueError, match="reserved"):
        with_baseline(expand_spec("off", "sd15"))


# --- statistics ----------------------------------------------------------------------------------------------------


def test_bootstrap_interval_of_a_mean_matches_normal_theory_and_covers() -> None:
    """Known answer: for n normal values the 95% interval of the mean is mean +- 1.96 s / sqrt(n), and over many
    data sets it covers the true mean about 95% of the time."""
    gen = torch.Generator().manual_seed(1)
    n = 400
    values = 3.0 + 2.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    rows = resample(n, 4000, seed=2)
    result = paired_mean_difference(values, torch.zeros(n, dtype=torch.float64), rows)
    half = 1.96 * values.std().item() / math.sqrt(n)
    assert result.mean.value == pytest.approx(values.mean().item())
    assert result.mean.low == pytest.approx(values.mean().item() - half, abs=0.02)
    assert result.mean.high == pytest.approx(values.mean().item() + half, abs=0.02)
    covered = 0
    trials = 300
    data = 3.0 + 2.0 * torch.randn(trials, 60, generator=gen, dtype=torch.float64)
    rows = resample(60, 500, seed=3)
    weights = counts(rows, 60) / 60
    for sample in data:
        low, high = percentile_interval(weights @ sample)
        covered += low <= 3.0 <= high
    assert 0.90 <= covered / trials <= 0.985


def test_holm_adjusts_a_known_example_and_p_values_agree_with_their_intervals() -> None:
    from freeu.apps.evaluate.stats import holm, two_sided_p

    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(that, 1 x 0.04), in input order
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, math.nan, 0.6]) == pytest.approx([1.0, math.nan, 1.0], nan_ok=True)  # NaN does not count
    assert two_sided_p(torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(2 / 4)  # none at or below 0: 2 (0 + 1) / 4
    assert two_sided_p(torch.tensor([-1.0, 1.0, -2.0, 2.0])) == 1.0
    # a difference whose 95% interval excludes 0 has p below 0.05, and one whose interval holds 0 has not
    gen = torch.Generator().manual_seed(7)
    rows = resample(100, 2000, seed=8)
    for shift, significant in ((0.5, True), (0.0, False)):
        values = shift + torch.randn(100, generator=gen, dtype=torch.float64)
        diff = paired_mean_difference(values, torch.zeros(100, dtype=torch.float64), rows).mean
        assert diff.excludes_zero() is significant and (diff.p_value < 0.05) is significant
        point = torch.cat([values.mean().reshape(1), counts(rows, 100) @ values / 100])
        _, set_diff = set_metric_estimates(point, torch.zeros_like(point))
        assert set_diff.excludes_zero() is significant and (set_diff.p_value < 0.05) is significant


def test_pairing_removes_the_noise_that_seeds_share() -> None:
    """Two configurations whose per-seed values share a large seed effect and differ by exactly 0.1 plus small
    noise: the paired interval of the difference is narrow around 0.1; each configuration's own interval is wide."""
    gen = torch.Generator().manual_seed(4)
    n = 200
    seed_effect = 5.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    base = seed_effect + 0.05 * torch.randn(n, generator=gen, dtype=torch.float64)
    config = seed_effect + 0.1 + 0.05 * torch.randn(n, generator=gen, dtype=torch.float64)
    rows = resample(n, 2000, seed=5)
    diff = paired_mean_difference(config, base, rows, higher_is_better=True)
    assert diff.mean.low < 0.1 < diff.mean.high and diff.mean.high - diff.mean.low < 0.03
    assert diff.better_share > 0.8
    own = percentile_interval(counts(rows, n) @ config / n)
    assert own[1] - own[0] > 1.0
    # set-level form: [point, replicates...] rows, paired replicate by replicate; basic intervals
    values = torch.cat([config.mean().reshape(1), counts(rows, n) @ config / n])
    baseline = torch.cat([base.mean().reshape(1), counts(rows, n) @ base / n])
    estimate, difference = set_metric_estimates(values, baseline)
    assert difference.low < 0.1 < difference.high and difference.high - difference.low < 0.03
    assert estimate.high - estimate.low > 1.0 and difference.excludes_zero()


# --- metrics: the same numbers as the reference implementations ----------------------------------------------------


def test_swd_and_rapsd_engines_equal_the_demo_metrics() -> None:
    gen = torch.Generator().manual_seed(0)
    reference = torch.rand(30, 3, 16, 16, generator=gen, dtype=torch.float64)
    images = torch.rand(6, 3, 16, 16, generator=gen, dtype=torch.float64) ** 2
    params = dict(levels=3, patch_size=7, per_image=16, projections=48, seed=3)
    swd = LaplacianSWD(reference, **params, generated_count=6)
    rows = torch.tensor([[3, 3, 0, 1, 5, 2]])
    values = swd.set_values(swd.projections(images, range(6)), rows, method="exact")
    assert values[0].item() == pytest.approx(swd_laplacian(images, reference, **params).double().mean().item(), 1e-6)
    # a replicate is the same sliced Wasserstein on the resampled images' own patches (they keep their positions)
    pyramid_r = laplacian_pyramid(reference, 3)
    per_level, single = [], []
    for level in range(3):
        dr = patch_descriptors(pyramid_r[level], 7, 16, torch.Generator().manual_seed(3 + 7919 * level))
        mean, std = swd.norm[level]
        dr = (dr - mean) / std
        dg = swd.descriptors(images, range(6))[level].reshape(6, -1, dr.shape[1])
        directions = torch.Generator().manual_seed(3 + 104729 + level)
        per_level.append(sliced_wasserstein(dg[rows[0]].reshape(-1, dr.shape[1]), dr, 48, directions))
        # per image: that image's patches against the reference set's, same directions
        directions = torch.Generator().manual_seed(3 + 104729 + level)
        single.append(sliced_wasserstein(dg[4], dr, 48, directions))
    assert values[1].item() == pytest.approx(torch.stack(per_level).mean().item(), rel=1e-9)
    assert swd.per_image(images[[1, 4]], [1, 4])[1].item() == pytest.approx(torch.stack(single).mean().item(), 1e-9)
    # positions follow the unit index, not the batch position: one image alone gives what it gives in the set
    assert swd.per_image(images[4:5], [4]).item() == pytest.approx(swd.per_image(images, range(6))[4].item(), 1e-12)
    # the default, linear replicates: the first-order expansion follows the recomputed ones replicate by replicate
    many = torch.rand(30, 3, 16, 16, generator=gen, dtype=torch.float64) ** 1.5
    swd30 = LaplacianSWD(reference, **{**params, "per_image": 8}, generated_count=30)
    projections = swd30.projections(many, range(30))
    rows30 = resample(30, 100, seed=1)
    exact = swd30.set_values(projections, rows30, method="exact")
    linear = swd30.set_values(projections, rows30, method="linear")
    assert linear[0] == exact[0]
    shift_exact, shift_linear = exact[1:] - exact[0], linear[1:] - linear[0]
    assert torch.corrcoef(torch.stack([shift_exact, shift_linear]))[0, 1] > 0.8
    assert 0.7 < shift_linear.std() / shift_exact.std() < 1.4
    assert abs(shift_linear.mean()) < 0.2 * shift_linear.std()  # centred: no duplicate-unit bias
    spectrum = SpectrumDistance(reference)
    from freeu.apps.measures import radial_power_spectrum

    spectra = radial_power_spectrum(images)
    set_values = spectrum.set_values(spectra, rows)
    assert set_values[0].item() == pytest.approx(rapsd_distance(images, reference).item(), rel=1e-6)
    assert set_values[1].item() == pytest.approx(rapsd_distance(images[rows[0]], reference).item(), rel=1e-6)
    assert spectrum.per_image(spectra)[2].item() == pytest.approx(rapsd_distance(images[2:3], reference).item(), 1e-6)


class TinyFeatures(torch.nn.Module):
    """A small feature network in the place of Inception: uint8 images -> (N, width) features."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3)
        gen = torch.Generator().manual_seed(0)
        torch.nn.init.normal_(self.conv.weight, generator=gen)
        torch.nn.init.normal_(self.conv.bias, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.float() / 255).relu().mean(dim=(2, 3))


@pytest.mark.parametrize("width", [24, 5])  # n <= D: the n x n route; n > D: the D x D route
def test_fid_and_kid_equal_torchmetrics_on_the_same_features(width) -> None:
    tm = pytest.importorskip("torchmetrics.image.fid")
    from torchmetrics.image.kid import KernelInceptionDistance

    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (12, 3, 16, 16), generator=gen, dtype=torch.uint8)
    fake = (torch.rand(12, 3, 16, 16, generator=gen) ** 2 * 255).to(torch.uint8)
    net = TinyFeatures(width).eval()
    fid = tm.FrechetInceptionDistance(feature=net)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    kid = KernelInceptionDistance(feature=net, subsets=1, subset_size=12)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.no_grad():
        distances = FeatureDistances(net(real))
        features = net(fake)
    assert distances.fid_values(features, None)[0].item() == pytest.approx(fid.compute().item(), rel=1e-4)
    assert distances.kid_values(features, None)[0].item() == pytest.approx(kid.compute()[0].item(), rel=1e-3)
    # a replicate is the metric on the resampled set
    rows = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]])
    direct = FeatureDistances(net(real).detach()).fid_values(features[rows[0]], None)[0]
    assert distances.fid_values(features, rows)[1].item() == pytest.approx(direct.item(), rel=1e-6)


# --- runs ----------------------------------------------------------------------------------------------------------


def test_protocol_same_units_for_every_config_and_images_from_the_public_api(demo_run, tiny_demo) -> None:
    demo_run = demo_run[0]
    records = _records(demo_run)
    by_config: dict[str, list[dict]] = {}
    for r in records:
        by_config.setdefault(r["config"], []).append(r)
    assert list(by_config) == ["off", "sd15", "late"]
    for rows in by_config.values():
        assert [r["seed"] for r in rows] == [0, 1, 2, 3] and [r["unit"] for r in rows] == [0, 1, 2, 3]
        assert {(r["steps"], r["height"], r["width"]) for r in rows} == {(2, 16, 16)}
    assert by_config["late"][0]["freeu"]["start"] == 0.5 and by_config["off"][0]["freeu"] is None
    # an image is what a plain DDIM loop gives for its seed, with FreeU applied through the public API
    from reference import reference_ddim

    from freeu.apps.demo_model import load_exported

    unet, config = load_exported(tiny_demo)
    with freeu.apply(unet, preset="sd15"), torch.no_grad():
        expected = reference_ddim(unet, [2], 2, config["scheduler"])[0]
    stored = load_png(demo_run / by_config["sd15"][2]["image"]).double()
    assert (stored - (expected * 255).round()).abs().max().item() <= 1
    assert (stored - load_png(demo_run / by_config["off"][2]["image"]).double()).abs().max().item() > 5
    # the report's numbers: n, the set-level SWD and RAPSD of off recomputed from the PNGs
    summary = json.loads((demo_run / "metrics.json").read_text())
    off, sd15 = summary["configs"][0], summary["configs"][1]
    assert [c["n"] for c in summary["configs"]] == [4, 4, 4]
    images = torch.stack([load_png(demo_run / r["image"]) for r in by_config["off"]]).double() / 255
    from freeu.apps.demo_data import HELD_OUT_IMAGES, HELD_OUT_SEED, PatchSampler

    patches = PatchSampler(HELD_OUT_IMAGES, seed=HELD_OUT_SEED, size=16, allow_held_out=True).sample(0, 24)[0]
    reference = (patches * 255).round() / 255
    expected_swd = swd_laplacian(images, reference.double(), per_image=16, projections=32).double().mean().item()
    assert off["set_level"]["swd"]["value"]["value"] == pytest.approx(expected_swd, rel=1e-6)
    assert off["set_level"]["rapsd"]["value"]["value"] == pytest.approx(rapsd_distance(images, reference).item(), 1e-5)
    diff = sd15["set_level"]["swd"]["difference_vs_off"]["value"]
    off_swd = off["set_level"]["swd"]["value"]["value"]
    assert diff == pytest.approx(sd15["set_level"]["swd"]["value"]["value"] - off_swd, abs=1e-12)
    paired = sd15["per_image_paired_vs_off"]["swd"]
    per_image = {c: [r["metrics"]["swd"] for r in rows] for c, rows in by_config.items()}
    assert paired["mean"]["value"] == pytest.approx(np.mean(per_image["sd15"]) - np.mean(per_image["off"]))
    report = (demo_run / "report.md").read_text()
    assert "| off | FreeU off | 4 |" in report and "| sd15 | b1=1.5 b2=1.6 s1=0.9 s2=0.2 (v2, official) | 4 |" in report
    assert "steps 0.5-1" in report
    assert "python -m freeu eval --model" in (demo_run / "command.txt").read_text()
    for name in ("metrics.png", "samples.png"):
        assert (demo_run / name).stat().st_size > 1000


def test_resume_after_an_interruption_gives_the_same_report(demo_run, tiny_demo, tmp_path, capsys) -> None:
    demo_run = demo_run[0]
    out = tmp_path / "report"
    shutil.copytree(demo_run, out)
    before = {r["key"]: r for r in _records(out)}
    untouched = {p: p.read_bytes() for p in (out / "images" / "off").glob("*.png")}
    # an interrupted run: two PNGs never written, the last record cut in half, an analysis batch lost
    records = sorted((r for r in before.values() if r["config"] == "late"), key=lambda r: r["unit"])
    lost = [out / r["image"] for r in records[:2]]
    for path in lost:
        path.unlink()
    part = out / "parts" / "gen-r0of1.jsonl"
    part.write_text(part.read_text()[:-40])
    next(iter((out / "analysis").glob("*/r*.pt"))).unlink()
    for name in ("records.jsonl", "report.md", "metrics.json"):
        (out / name).unlink()
    capsys.readouterr()
    assert main(["--model", str(tiny_demo), *FAST, *CONFIGS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "this process generated 3 images and reused 9 already on disk" in printed
    after = {r["key"]: r for r in _records(out)}
    assert after.keys() == before.keys()
    for key, record in before.items():
        assert after[key]["image"] == record["image"]
        for metric, value in record["metrics"].items():
            assert after[key]["metrics"][metric] == pytest.approx(value, rel=1e-2, abs=2e-2), (key, metric)
    assert all(p.read_bytes() == data for p, data in untouched.items())  # reused, not regenerated
    first = json.loads((demo_run / "metrics.json").read_text())["configs"]
    again = json.loads((out / "metrics.json").read_text())["configs"]
    for a, b in zip(first, again, strict=True):
        assert b["set_level"]["swd"]["value"]["value"] == pytest.approx(a["set_level"]["swd"]["value"]["value"], 1e-2)
    assert (out / "command.txt").read_text().count("python -m freeu eval") == 2  # every run's command


@pytest.mark.slow
def test_two_processes_with_accelerate_give_the_records_of_one(demo_run, tiny_demo, tmp_path) -> None:
    """accelerate launch on CPUs: its --multi_gpu launcher starts the processes (torchrun); freeu eval asks for
    the gloo backend. Each process generates its own seeds; the main process gathers."""
    demo_run = demo_run[0]
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    done = subprocess.run(
        [*launch, "-m", "freeu", "eval", "--model", str(tiny_demo), *FAST, *CONFIGS, "--device", "cpu",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one = {r["key"]: r for r in _records(demo_run)}
    two = {r["key"]: r for r in _records(out)}
    assert one.keys() == two.keys()
    assert {r["rank"] for r in two.values()} == {0, 1} and {r["world"] for r in two.values()} == {2}
    assert all(r["unit"] % 2 == r["rank"] for r in two.values())  # sharded by unit
    for key, record in one.items():
        a, b = load_png(demo_run / record["image"]).double(), load_png(out / two[key]["image"]).double()
        assert (a - b).abs().max().item() <= 1  # batches of other sizes: float rounding may flip a grey level
        for metric, value in record["metrics"].items():
            assert two[key]["metrics"][metric] == pytest.approx(value, rel=1e-2, abs=2e-2)
    command = (out / "command.txt").read_text()
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in command and "2 process(es)" in command


def onnx_features(path: Path, width: int) -> Path:
    """``TinyFeatures(width)`` as an ONNX model with a dynamic batch dimension (torch's TorchScript-based exporter,
    which needs only the onnx package)."""
    import warnings

    pytest.importorskip("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        example = (torch.zeros(2, 3, 16, 16, dtype=torch.uint8),)
        torch.onnx.export(TinyFeatures(width).eval(), example, str(path), dynamo=False, input_names=["images"],
                          dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}})  # fmt: skip
    return path


def test_onnx_feature_files_load_and_give_the_network_features(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from freeu.apps.evaluate.features import load_feature_net

    net = load_feature_net(f"onnx:{onnx_features(tmp_path / 'f.onnx', 6)}")
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(net(images, batch_size=2), TinyFeatures(6).eval()(images).double(), atol=1e-5)
    with pytest.raises(ValueError, match="must be auto, none, inception:PATH or onnx:PATH"):
        load_feature_net("weights.pth")


def test_missing_weights_are_skipped_with_a_message_and_explicit_paths_fail(
    demo_run, tiny_demo, empty_torch_home, tmp_path, capsys
) -> None:
    out, printed = demo_run
    assert "FID, KID: skipped, no Inception weights on disk" in printed and "--fid-features inception:PATH" in printed
    assert str(empty_torch_home / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth") in printed
    report = (out / "report.md").read_text()
    assert "## Not computed" in report and "FID, KID: skipped" in report and "| FID |" not in report
    argv = ["--model", str(tiny_demo), *FAST, "--out", str(tmp_path / "r")]
    assert main([*argv, "--fid-features", f"inception:{tmp_path / 'nope.pth'}"]) == 2
    assert f"no such file {tmp_path / 'nope.pth'}" in capsys.readouterr().err
    assert main([*argv, "--guidance-baselines", "9"]) == 2
    assert "unconditional" in capsys.readouterr().err
    assert not (tmp_path / "r" / "images").exists()  # both refused before generating anything


# --- a guided pipeline: stronger-guidance baseline, FID/KID and CLIP from tiny networks ------------------------------


def _tiny_clip(folder: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    import tiny_pipelines

    tokenizer = tiny_pipelines._tokenizer(folder / "_tok")
    text = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=16,
        projection_dim=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                  patch_size=8, projection_dim=16)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_the_clip_score_equals_torchmetrics_clipscore(tmp_path) -> None:
    """Our per-image CLIP cosine, as torchmetrics reports it (``100 * max(cosine, 0)``), equals torchmetrics'
    ``CLIPScore`` on the same tiny CLIP model. torchmetrics 1.9 reads ``get_image_features`` as a tensor, which
    transformers 5 wraps in an output object, so it gets a model that returns the pooled tensor (ours reads both)."""
    transformers = pytest.importorskip("transformers")
    clip_score = pytest.importorskip("torchmetrics.multimodal.clip_score")
    from freeu.apps.evaluate.features import load_clip

    folder = _tiny_clip(tmp_path / "clip")
    model = transformers.CLIPModel.from_pretrained(folder)
    with torch.no_grad():
        model.text_projection.weight.neg_()  # this random model's cosines are negative: flipped, the clamp keeps them
    model.save_pretrained(folder)

    class Pooled(transformers.CLIPModel):
        def get_image_features(self, *args, **kwargs):
            out = super().get_image_features(*args, **kwargs)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        def get_text_features(self, *args, **kwargs):
            out = super().get_text_features(*args, **kwargs)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    theirs = clip_score.CLIPScore(model_name_or_path=lambda: (
        Pooled.from_pretrained(folder).eval(), transformers.CLIPProcessor.from_pretrained(folder)))  # fmt: skip
    ours = load_clip(str(folder))
    images = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    prompts = ["a cat", "a dog", "red", "blue sky", "green"]
    cosines = ours(images, prompts)
    assert (cosines > 0.05).all()
    for i, prompt in enumerate(prompts):
        theirs.reset()
        assert 100 * cosines[i].item() == pytest.approx(theirs(images[i : i + 1], [prompt]).item(), abs=1e-4)


def test_guided_pipeline_with_guidance_baseline_fid_kid_and_clip(tmp_path, capsys) -> None:
    pytest.importorskip("transformers")
    import tiny_pipelines
    from PIL import Image

    from freeu.apps.runtime import load_pipeline

    sd = tiny_pipelines.sd_pipeline(tmp_path / "sd")
    clip = _tiny_clip(tmp_path / "clip")
    # 40x48 pictures: the protocol's resize (cover, centre crop) brings them to 32x32
    reference = tiny_pipelines.random_pictures(tmp_path / "reference", 10, height=48, width=40, digits=2)
    pytest.importorskip("onnxruntime")
    features = onnx_features(tmp_path / "features.onnx", 8)
    out = tmp_path / "r"
    argv = ["--model", str(sd), "--prompt", "a cat", "--prompt", "a dog", "--seeds", "1", "--first-seed", "1"]
    argv += ["--steps", "2", "--guidance", "3", "--guidance-baselines", "6", "--config", "auto"]
    argv += [
        "--reference",
        str(reference),
        "--fid-features",
        f"onnx:{features}",
        "--clip",
        str(clip),
    ]
    argv += ["--swd-patches", "8", "--swd-projections", "16", "--bootstrap", "100", "--set-bootstrap", "5"]
    code = main([*argv, "--no-progress", "--out", str(out)])
    assert code == 0
    assert "auto: preset 'sd15'" in capsys.readouterr().out
    records = _records(out)
    assert [r["config"] for r in records] == ["off"] * 2 + ["auto"] * 2 + ["off@cfg6"] * 2
    assert [(r["prompt"], r["seed"]) for r in records[:2]] == [("a cat", 1), ("a dog", 1)]
    assert [r["guidance"] for r in records[::2]] == [3.0, 3.0, 6.0]
    assert records[2]["freeu"]["b1"] == 1.5 and records[4]["freeu"] is None
    # the stronger-guidance baseline is the pipeline's own output at guidance 6 for that noise
    pipe = load_pipeline(str(sd))
    pipe.set_progress_bar_config(disable=True)
    image = tiny_pipelines.plain_call(pipe, prompt="a dog", seed=1, count=1, steps=2, guidance=6.0, height=32,
                   width=32)[0]  # fmt: skip
    strong = torch.from_numpy(np.asarray(image, dtype=np.int16)).permute(2, 0, 1)
    assert (load_png(out / records[5]["image"]).short() - strong).abs().max().item() <= 1
    assert (load_png(out / records[1]["image"]).short() - strong).abs().max().item() > 5
    # FID/KID through the ONNX feature network equal torchmetrics on the PNGs and the resized reference
    from torchmetrics.image.fid import FrechetInceptionDistance

    from freeu.apps.evaluate.metrics import fit_size

    real = torch.stack([fit_size(load_png(p)[None], (32, 32))[0] for p in sorted(reference.glob("*.png"))])
    summary = json.loads((out / "metrics.json").read_text())
    for i, name in enumerate(["off", "auto", "off@cfg6"]):
        fid = FrechetInceptionDistance(feature=TinyFeatures(8).eval())
        fid.update(real, real=True)
        fid.update(torch.stack([load_png(out / r["image"]) for r in records[2 * i : 2 * i + 2]]), real=False)
        entry = summary["configs"][i]
        assert entry["name"] == name
        assert entry["set_level"]["fid"]["value"]["value"] == pytest.approx(fid.compute().item(), rel=1e-3)
        assert "kid" in entry["set_level"] and "swd" in entry["set_level"]
    # CLIP: cosine of the tiny CLIP's image and text embeddings, per image
    import transformers

    model = transformers.CLIPModel.from_pretrained(clip).eval()
    processor = transformers.CLIPProcessor.from_pretrained(clip)
    with Image.open(out / records[1]["image"]) as img:
        inputs = processor(text=["a dog"], images=[img.convert("RGB")], return_tensors="pt", padding=True)
    with torch.no_grad():
        out_img = model.get_image_features(pixel_values=inputs["pixel_values"])
        out_txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    emb_i = out_img if isinstance(out_img, torch.Tensor) else out_img.pooler_output
    emb_t = out_txt if isinstance(out_txt, torch.Tensor) else out_txt.pooler_output
    cosine = torch.nn.functional.cosine_similarity(emb_i, emb_t).item()
    assert records[1]["metrics"]["clip"] == pytest.approx(cosine, abs=1e-5)
    report = (out / "report.md").read_text()
    assert "| off@cfg6 | FreeU off, guidance 6 | 2 |" in report and "Δ CLIP score" in report


def test_resume_remakes_a_truncated_png_and_never_follows_a_path_outside_the_folder(
    demo_run, tiny_demo, tmp_path, capsys
) -> None:
    out = tmp_path / "report"
    shutil.copytree(demo_run[0], out)
    records = {r["key"]: r for r in _records(out)}
    damaged, redirected = sorted(records.values(), key=lambda r: (r["config"], r["unit"]))[:2]
    path = out / damaged["image"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated by a crash or a full disk
    outside = tmp_path / "elsewhere.png"
    shutil.copy(out / redirected["image"], outside)
    part = out / "parts" / "gen-r0of1.jsonl"
    lines = [json.loads(line) for line in part.read_text().splitlines()]
    for line in lines:
        if line["key"] == redirected["key"]:
            line["image"] = str(outside)  # a hand-edited record pointing outside the report folder
    part.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    shutil.rmtree(out / "analysis")
    capsys.readouterr()
    assert main(["--model", str(tiny_demo), *FAST, *CONFIGS, "--out", str(out)]) == 0
    assert "this process generated 2 images and reused 10 already on disk" in capsys.readouterr().out
    after = {r["key"]: r for r in _records(out)}
    assert after[redirected["key"]]["image"] == redirected["image"]  # inside the folder again
    from PIL import Image

    with Image.open(out / damaged["image"]) as img:
        img.load()  # whole again


def test_a_configuration_takes_stage_settings_and_auto_keeps_them() -> None:
    import freeu
    from freeu.apps.evaluate.configs import parse_config_arg, resolve_auto

    [config] = parse_config_arg("more:sd15 stage3=b=1.1,s=0.8 stage1=high=1.1,cutoff=0.1")
    assert config.freeu.stage(3) == freeu.Stage(1.1, 0.8)
    assert config.freeu.stage(1) == freeu.Stage(1.5, 0.9, high=1.1, cutoff=0.1)
    assert config.settings()["stages"][2] == {"b": 1.1, "s": 0.8}  # records and PNGs carry them
    [auto] = parse_config_arg("a:auto stage3=b=1.2,s=0.5")
    assert resolve_auto(auto, "sdxl").freeu.stage(3) == freeu.Stage(1.2, 0.5)
    with pytest.raises(ValueError, match="configuration 'bad': stage 3: b must be a number, got 'x'"):
        parse_config_arg("bad:sd15 stage3=b=x")


def test_configurations_that_differ_only_in_factors_share_batches(tiny_demo) -> None:
    """A grid's settings go through the model in one batch, factors per sample, and give each setting's own images;
    FreeU off and a setting with another window go in batches of their own."""
    from freeu.apps.evaluate.generation import make_units, pil_to_uint8, sample_units
    from freeu.apps.runtime import Request, load_model

    model = load_model(str(tiny_demo))
    calls: list[tuple[int, object]] = []
    original = model.sample

    def counting(seeds, request, **kwargs):
        calls.append((len(seeds), kwargs.get("freeu")))
        return original(seeds, request, **kwargs)

    model.sample = counting  # type: ignore[method-assign]
    configs = with_baseline(expand_spec("g", "sd15 b1=1.0,1.3,1.6 s2=0.2,0.9") + expand_spec("late", "sd15 start=0.5"))
    units = make_units(range(3))
    pairs = [(c, u) for c in configs for u in units]
    request = Request(steps=2)
    packed = {(c.name, u.index): image for chunk, images in sample_units(model, request, pairs, lambda n: None)
              for (c, u), image in zip(chunk, images, strict=True)}  # fmt: skip
    assert [n for n, _ in calls] == [3, 18, 3]  # off, the six grid settings x 3 units, the window
    assert calls[0][1] is None and calls[2][1].start == 0.5
    grid = calls[1][1]
    assert grid.b1 == (1.0,) * 6 + (1.3,) * 6 + (1.6,) * 6 and grid.s2 == (0.2, 0.2, 0.2, 0.9, 0.9, 0.9) * 3
    for config in configs:
        alone = model.sample([u.seed for u in units], request, freeu=config.freeu)
        for unit, image in zip(units, alone, strict=True):
            difference = (pil_to_uint8(image).int() - packed[config.name, unit.index].int()).abs().max().item()
            assert difference <= 1, (config.name, unit.index, difference)
    distinct = {packed[c.name, 0].float().sum().item() for c in configs}
    assert len(distinct) == len(configs)  # every setting changed the image: the comparison above can fail


# --- the Python API --------------------------------------------------------------------------------------------------


def _fast_request(tiny_demo, out: Path, **changes):
    """The request of ``FAST`` and ``CONFIGS`` (what ``demo_run`` gives the command line), as Python values."""
    from freeu.apps.evaluate import EvalRequest, MetricOptions, StatisticsOptions

    configs = tuple(c for text in ("sd15", "late:sd15 start=0.5") for c in parse_config_arg(text))
    fields = dict(
        model=str(tiny_demo), configs=configs, seeds=4, steps=2, out=out, progress=False,
        metrics=MetricOptions(reference_count=24, swd_patches=16, swd_projections=32),
        statistics=StatisticsOptions(bootstrap=200, set_bootstrap=8),
    )  # fmt: skip
    return EvalRequest(**{**fields, **changes})


def test_the_python_api_gives_the_numbers_the_command_line_writes(demo_run, tiny_demo, tmp_path) -> None:
    """evaluate(request) with the settings of demo_run's command line: a result object whose numbers are those in
    the command line's metrics.json and records.jsonl, and the same report folder."""
    from freeu.apps.evaluate import EvalResult, evaluate

    cli_out = demo_run[0]
    notes: list[str] = []
    result = evaluate(_fast_request(tiny_demo, tmp_path / "api"), notes=notes.append)
    assert isinstance(result, EvalResult) and result.names == ["off", "sd15", "late"]
    written = json.loads((cli_out / "metrics.json").read_text())
    by_name = {c["name"]: c for c in written["configs"]}
    for name in result.names:
        mine, theirs = result[name], by_name[name]
        assert mine.n == theirs["n"] == 4
        for metric, (value, difference) in mine.sets.items():
            assert value.value == theirs["set_level"][metric]["value"]["value"]
            stored = theirs["set_level"][metric]["difference_vs_off"]
            assert (difference.value, difference.low, difference.high) == (stored["value"], stored["low"],
                                                                           stored["high"])  # fmt: skip
        for metric, estimate in mine.means.items():
            assert estimate.value == theirs["per_image_mean"][metric]["value"]
        for metric, paired in mine.paired.items():
            assert paired.mean.value == theirs["per_image_paired_vs_off"][metric]["mean"]["value"]
            assert paired.better_share == theirs["per_image_paired_vs_off"][metric]["better_share"]
    assert set(result["sd15"].sets) == {"swd", "rapsd"} and result.guidance_meter == {}
    # per-image values: what records.jsonl holds, in unit order
    for record in _records(cli_out):
        assert result.per_image[record["config"]]["swd"][record["unit"]].item() == record["metrics"]["swd"]
    # the whole metrics.json, the same folder layout, and what the command line printed
    assert json.loads(json.dumps(result.as_dict())) == written
    assert result.header.units == "4 seeds 0..3" and result.header.world == 1
    assert [u.seed for u in result.units] == [0, 1, 2, 3] and result.generated == 12 and result.reused == 0
    assert {p.name for p in result.files} == {"records.jsonl", "metrics.json", "report.md", "metrics.png",
                                              "samples.png"}  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == sorted(p.name for p in cli_out.iterdir())
    assert (tmp_path / "api" / "report.md").read_text() == (cli_out / "report.md").read_text()
    assert notes[-1] == f"wrote {tmp_path / 'api' / 'report.md'}" and any("FID, KID: skipped" in n for n in notes)
    # the request's command line: what command.txt records, and what the eval parser reads back as the same request
    from freeu.apps.evaluate.cli import build_parser, request_from_args

    command = (tmp_path / "api" / "command.txt").read_text().splitlines()[1]
    assert command.startswith("python -m freeu eval --model ")
    request = _fast_request(tiny_demo, tmp_path / "api")
    again = request_from_args(build_parser().parse_args(request.argv()))
    assert dataclasses.replace(again, command=None) == request
    # a second call resumes from the folder: nothing made again, the same numbers
    rerun = evaluate(request)
    assert (rerun.generated, rerun.reused) == (0, 12) and rerun.as_dict() == result.as_dict()


def test_a_request_is_checked_when_built_with_errors_naming_the_field(tiny_demo, tmp_path) -> None:
    from freeu.apps.evaluate import EvalRequest, MetricOptions, StatisticsOptions

    for changes, message in [
        (dict(steps=0), "steps must be an integer >= 1, got 0"),
        (dict(seeds=2.5), "seeds must be an integer >= 1"),
        (dict(dtype="float64"), "dtype must be one of float32, float16, bfloat16"),
        (dict(guidance=-1.0), "guidance must be a finite number >= 0 or None"),
        (dict(guidance_baselines=(9.0, math.inf)), "guidance_baselines must be a finite number >= 0"),
        (dict(configs=("sd15",)), "configs must be EvalConfig values"),
        (dict(configs=(*expand_spec("a", "sd15"), *expand_spec("a", "sdxl"))), "unique"),
        (dict(configs=tuple(expand_spec("off@cfg9", "off guidance=9")), guidance_baselines=(9.0,)), "unique"),
    ]:
        with pytest.raises(ValueError, match=message):
            _fast_request(tiny_demo, tmp_path, **changes)
    with pytest.raises(ValueError, match=r"confidence must be a level in \(0, 1\)"):
        StatisticsOptions(confidence=1.5)
    with pytest.raises(ValueError, match="swd_replicates must be one of linear, exact"):
        StatisticsOptions(swd_replicates="fast")
    with pytest.raises(ValueError, match="eval_size must be a Size"):
        MetricOptions(eval_size=(0, 8))
    # every kind of configuration, written back as --config NAME:SPEC, parses to itself
    from freeu.apps.evaluate.request import config_spec

    for text in ["sd15", "late:sd15 start=0.5", "v1:sd15 version=1 start=0.25 stop=0.75", "off@cfg9:off guidance=9",
                 "mild:b1=1.1 b2=1.2 s1=0.9 s2=0.9 convention=diffusers threshold=2 ramp=0.1 start=0.1 guidance=3.5",
                 "more:sd15 stage3=b=1.1,s=0.8 stage1=high=1.1,cutoff=0.1", "a:auto stage3=b=1.2,s=0.5"]:  # fmt: skip
        (config,) = parse_config_arg(text)
        assert parse_config_arg(f"{config.name}:{config_spec(config)}") == [config]
    request = EvalRequest(model=str(tiny_demo), prompts=["x"], guidance_baselines=[9])  # lists become tuples
    assert request.prompts == ("x",) and request.guidance_baselines == (9.0,) and request.out == Path("freeu-eval")
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.steps = 3  # type: ignore[misc]
