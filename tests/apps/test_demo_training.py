"""The demo model's training half: data sampler, metrics, bit-exact resume; tiny configs, no shipped weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("skimage")
pytest.importorskip("tqdm")
pytest.importorskip("safetensors")

import freeu  # noqa: E402
from freeu.apps import demo_data as data  # noqa: E402
from freeu.apps import measures as metrics  # noqa: E402
from freeu.apps.demo.train import TrainConfig, export_weights, train  # noqa: E402
from freeu.apps.demo_model import build_unet, check_freeu_stages, load_exported  # noqa: E402

TINY_UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "dropout": 0.0,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(out: Path, max_steps: int) -> TrainConfig:
    return TrainConfig(
        out=str(out),
        seed=3,
        batch_size=4,
        max_steps=max_steps,
        lr=1e-3,
        warmup_steps=2,
        log_every=1,
        checkpoint_every=2,
        eval_every=2,
        patience=5,
        eval_samples=4,
        eval_sampler_steps=2,
        eval_reference=16,
        unet=TINY_UNET,
        threads=1,
        export_dir=None,
        progress=False,
    )


# ------------------------------------------------------------------------------------------------------- data


def test_sampler_is_deterministic_and_never_yields_held_out_images() -> None:
    assert not set(data.TRAIN_IMAGES) & set(data.HELD_OUT_IMAGES)
    a, b, other = data.PatchSampler(seed=7), data.PatchSampler(seed=7), data.PatchSampler(seed=8)
    seen: set[str] = set()
    for index in (0, 1, 5, 1000):
        xa, sa = a.sample(index, 32)
        xb, sb = b.sample(index, 32)
        assert torch.equal(xa, xb) and sa == sb
        assert not torch.equal(xa, other.sample(index, 32)[0])
        assert xa.shape == (32, 3, 32, 32) and xa.dtype == torch.float32
        assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
        seen.update(sa)
    assert not torch.equal(a.sample(0, 32)[0], a.sample(1, 32)[0])
    assert seen <= set(data.TRAIN_IMAGES)
    assert len(seen) >= 10  # 128 draws over 15 images reach most of them
    with pytest.raises(ValueError, match="held out"):
        data.PatchSampler(["brick", "coffee"])
    with pytest.raises(ValueError, match="unknown"):
        data.PatchSampler(["lena"])


def test_scale_one_patch_is_a_window_of_its_image_up_to_flips() -> None:
    sampler = data.PatchSampler(["page"], seed=1, min_scale=1.0, max_scale=1.0)
    patch = sampler.sample(0, 1)[0][0]
    image = data.load_image("page")[0]  # grayscale: channels are equal
    assert torch.equal(patch[0], patch[1]) and torch.equal(patch[0], patch[2])
    windows = image.unfold(0, 32, 1).unfold(1, 32, 1)  # (H-31, W-31, 32, 32)
    found = any(
        bool((windows == candidate).flatten(2).all(-1).any())
        for candidate in (patch[0], patch[0].flip(0), patch[0].flip(1), patch[0].flip(0).flip(1))
    )
    assert found


# ---------------------------------------------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def patch_sets() -> tuple[torch.Tensor, torch.Tensor]:
    train_patches = data.PatchSampler(seed=0).sample(0, 48)[0]
    held_out = data.PatchSampler(data.HELD_OUT_IMAGES, seed=1, allow_held_out=True).sample(0, 96)[0]
    return train_patches, held_out


def test_metrics_are_zero_for_identical_sets(patch_sets) -> None:
    _, held_out = patch_sets
    assert torch.equal(metrics.swd_laplacian(held_out, held_out.clone()), torch.zeros(3))
    assert float(metrics.rapsd_distance(held_out, held_out.clone())) == 0.0


def test_metrics_grow_with_blur(patch_sets) -> None:
    real, reference = patch_sets
    blurred = metrics.gaussian_pyramid(real, 2)[1]  # 16x16 low-pass, back to 32x32
    blurred = torch.nn.functional.interpolate(blurred, size=32, mode="bilinear", align_corners=False)
    swd_real = metrics.swd_laplacian(real, reference)
    swd_blur = metrics.swd_laplacian(blurred, reference)
    assert float(swd_real.mean()) > 0
    assert float(swd_blur[0]) > 2 * float(swd_real[0])  # the finest band sees blur most
    assert float(swd_blur.mean()) > 1.2 * float(swd_real.mean())
    rapsd_real = float(metrics.rapsd_distance(real, reference))
    rapsd_blur = float(metrics.rapsd_distance(blurred, reference))
    assert rapsd_blur > 2 * rapsd_real


def test_laplacian_pyramid_reconstructs_and_spectrum_finds_a_cosine() -> None:
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    levels = metrics.laplacian_pyramid(x, 3)
    assert [tuple(level.shape[-2:]) for level in levels] == [(32, 32), (16, 16), (8, 8)]
    recon = levels[-1]
    for band in reversed(levels[:-1]):
        recon = band + metrics._expand(recon, band.shape[-2:])
    torch.testing.assert_close(recon, x, rtol=0, atol=1e-12)

    grid = torch.arange(32, dtype=torch.float64)
    cosine = torch.cos(2 * math.pi * 4 * grid / 32).expand(1, 1, 32, 32)  # 4 cycles along the width
    spectrum = metrics.radial_power_spectrum(cosine)[0]
    assert spectrum.shape == (16,)
    assert int(spectrum.argmax()) == 3  # radius 4 is bin index 3
    torch.testing.assert_close(spectrum.sum(), spectrum[3])


# ------------------------------------------------------------------------------------------- model and train


def test_freeu_finds_both_stages_and_flat_widths_are_refused() -> None:
    from freeu.apps.demo_model import UNET_CONFIG

    stages = check_freeu_stages(build_unet(UNET_CONFIG, seed=0))
    assert len(stages[1]) == 4 and len(stages[2]) == 3
    with pytest.raises(ValueError, match="block_out_channels"):
        check_freeu_stages(build_unet({**TINY_UNET, "block_out_channels": [16, 16, 16]}))


def test_config_errors_name_the_parameter(tmp_path: Path) -> None:
    for field, value in (
        ("batch_size", 0),
        ("precision", "fp16"),
        ("lr", float("nan")),
        ("ema_decay", 1.0),
        ("max_hours", 0),
    ):
        cfg = tiny_config(tmp_path, 4)
        setattr(cfg, field, value)
        with pytest.raises(ValueError, match=field):
            cfg.validate()


def _records(path: Path, drop: tuple[str, ...]) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def test_interrupted_and_resumed_run_is_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = train(tiny_config(tmp_path / "straight", 4))
    assert straight["step"] == 4 and straight["stopped"] == "max_steps"

    # Crash while loading the batch of update 3: updates 0-2 are done, the last checkpoint is at step 2.
    original = data.PatchSampler.sample

    def crash_at_3(self, index: int, batch_size: int):
        if index == 3:
            raise RuntimeError("simulated crash")
        return original(self, index, batch_size)

    monkeypatch.setattr(data.PatchSampler, "sample", crash_at_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(tmp_path / "resumed", 4))
    monkeypatch.setattr(data.PatchSampler, "sample", original)
    ckpt = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2
    assert len(_records(tmp_path / "resumed" / "train_log.jsonl", ())) == 3  # step 3 logged after the checkpoint

    resumed = train(tiny_config(tmp_path / "resumed", 4))
    assert resumed["step"] == 4

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    assert not torch.equal(a["model"]["conv_in.weight"], build_unet(TINY_UNET, seed=3).conv_in.weight)  # trained
    timing = ("steps_per_s", "elapsed_s", "eval_s")
    for log in ("train_log.jsonl", "eval_log.jsonl"):
        assert _records(tmp_path / "straight" / log, timing) == _records(tmp_path / "resumed" / log, timing)
    assert [r["step"] for r in _records(tmp_path / "resumed" / "eval_log.jsonl", ())] == [2, 4]

    # Export: float16 safetensors + config.json that load back into the best EMA weights.
    export_weights(tmp_path / "resumed", tmp_path / "export")
    unet, config = load_exported(tmp_path / "export")
    best = torch.load(tmp_path / "resumed" / "best.pt", weights_only=True)
    assert config["unet"] == TINY_UNET and config["training"]["ema_step"] == best["step"]
    assert config["training"]["held_out_images"] == list(data.HELD_OUT_IMAGES)
    for key, value in unet.state_dict().items():
        assert torch.equal(value, best["ema"][key].half().float()), key


class _Payload:
    """What a forged checkpoint could hold: unpickling it runs code (here: it writes a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_forged_checkpoints_are_refused_without_running_their_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"config": {}, "model": _Payload(marker)}, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="is not a checkpoint this script wrote"):
        train(tiny_config(run, 2))  # resume path
    with pytest.raises(ValueError, match="is not a checkpoint this script wrote"):
        export_weights(run, tmp_path / "export")  # export path
    assert not marker.exists()
    assert not (tmp_path / "export").exists()


def test_every_torch_load_in_the_project_is_weights_only() -> None:
    """No torch.load may unpickle arbitrary objects: each call in src/, tools/ and benchmarks/ passes
    weights_only=True."""
    import ast

    root = Path(__file__).resolve().parents[2]
    calls = []
    for folder in ("src", "tools", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    safe = any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords)
                    calls.append((str(path.relative_to(root)), node.lineno, safe))
    assert len(calls) >= 3  # the training's loader and eval's caches: the scan sees them
    assert [c for c in calls if not c[2]] == []


def test_a_class_conditional_run_learns_labels_with_dropout_and_samples_with_guidance(tmp_path: Path) -> None:
    """The class of a patch is its source picture; label dropout trains the null class; the exported model takes the
    class as its prompt, and guidance above 1 follows eps_u + w (eps_c - eps_u) from one batch of both halves."""
    import dataclasses

    from freeu.apps.demo import train as training
    from freeu.apps.guidance import measure_guidance
    from freeu.apps.runtime import Request, load_model

    cfg = dataclasses.replace(tiny_config(tmp_path / "run", 4), classes=True, label_dropout=0.5, eval_guidance=3.0)
    cfg.__post_init__()
    assert cfg.unet["num_class_embeds"] == len(data.TRAIN_IMAGES) + 1
    seen: list[torch.Tensor] = []
    original = training._train_loop

    def spy(run):  # record the labels the U-Net is trained on
        run.unet.register_forward_pre_hook(lambda m, a, k: seen.append(k["class_labels"].clone()), with_kwargs=True)
        return original(run)

    training._train_loop = spy
    try:
        summary = train(cfg)
    finally:
        training._train_loop = original
    assert summary["step"] == 4 and summary["best_metric"] is not None
    sources = data.PatchSampler(seed=cfg.seed).sample(0, cfg.batch_size)[1]
    first = seen[0].tolist()
    null = len(data.TRAIN_IMAGES)
    assert all(label in (null, data.TRAIN_IMAGES.index(name)) for label, name in zip(first, sources, strict=True))
    labels = torch.cat(seen[:4])
    assert 0 < int((labels == null).sum()) < labels.numel()  # some dropped, some kept
    folder = export_weights(tmp_path / "run", tmp_path / "export")
    config = json.loads((folder / "config.json").read_text())
    assert config["classes"] == list(data.TRAIN_IMAGES) and config["guidance"] == 3.0
    model = load_model(str(folder))
    assert model.takes_prompt and model.guided and model.classes == data.TRAIN_IMAGES
    # guided sampling: one DDIM step by hand from the same noise
    import copy

    from freeu.apps.runtime import seed_noise

    unet = model.unet
    request = Request(steps=1, prompt="brick", guidance=3.0)
    x = seed_noise([5], (3, 32, 32))
    scheduler = copy.deepcopy(model.scheduler)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    with torch.no_grad():
        uncond = unet(x, t, class_labels=torch.tensor([null])).sample
        cond = unet(x, t, class_labels=torch.tensor([data.TRAIN_IMAGES.index("brick")])).sample
        expected = scheduler.step(uncond + 3.0 * (cond - uncond), t, x, eta=0.0).prev_sample
    got = model.sample([5], request, output="tensor")
    # one step from t = 999 divides by sqrt(alpha_bar) = 0.006: float noise of a batch of 2 against 1, times 160
    assert torch.allclose(got, expected, atol=2e-3) and not torch.allclose(cond, uncond, atol=1e-4)
    # the guidance meter works on it; refused values name the flag
    trace = measure_guidance(model, [0, 1], Request(steps=2, prompt="grass", guidance=3.0),
                             freeu.FreeUConfig(1.3, 1.4, 0.9, 0.2))  # fmt: skip
    assert len(trace.steps) == 2 and all(0 <= s.orthogonal_share <= 1 for s in trace.steps)
    with pytest.raises(ValueError, match="must name one of its classes"):
        model.sample([0], Request(steps=1, prompt="coffee"))
    # freeu eval on it: every class by default, the model's own guidance, FreeU off at the matched guidance
    from freeu.apps.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(folder), "--seeds", "1", "--steps", "2", "--config", "sd15",
                 "--guidance-baselines", "auto", "--guidance-units", "2", "--reference-count", "16",
                 "--swd-patches", "8", "--swd-projections", "16", "--bootstrap", "20", "--set-bootstrap", "5",
                 "--fid-features", "none", "--no-progress", "--out", str(out)]) == 0  # fmt: skip
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted({r["prompt"] for r in records}) == sorted(data.TRAIN_IMAGES)
    assert {r["guidance"] for r in records if r["config"] in ("off", "sd15")} == {3.0}
    # 2 meter units for the model's classes: one scale for every class (the per-prompt mode needs a unit of each)
    meter = json.loads((out / "metrics.json").read_text())["header"]["guidance_meter"]["sd15"]
    matched = meter["baseline_guidance"]
    assert meter["mode"] == "global"
    assert {r["guidance"] for r in records if r["config"] == "off@sd15"} == {matched}
    # the guided part of freeu demo: FreeU off, FreeU, and FreeU off at FreeU's equivalent guidance
    from freeu.apps.demo.showcase import DemoOptions, guided_summary, run_guided_demo

    options = DemoOptions(seeds=(0,), classes=("brick", "grass"), steps=2, weights=folder, progress=False)
    record = run_guided_demo(tmp_path / "demo", options)
    assert record is not None and record["guidance"] == 3.0
    per_class = [record["per_class"][c]["equivalent"] for c in ("brick", "grass")]
    assert record["equivalent_guidance"] == pytest.approx(sum(per_class) / 2)
    assert record["matched_guidance"] == {c: round(record["per_class"][c]["equivalent"], 2) for c in ("brick", "grass")}
    assert record["equivalent_low"] > 0 and record["equivalent_weighted"] > 0
    again = measure_guidance(model, [0], Request(steps=2, prompt="grass", guidance=3.0),
                             freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2))  # fmt: skip
    assert record["per_class"]["grass"]["equivalent"] == pytest.approx(again.equivalent, rel=1e-6)
    assert record["change_vs_off_grey_levels"]["off"] == 0 and record["change_vs_off_grey_levels"]["on"] > 0
    assert (tmp_path / "demo" / "demo-guidance.png").stat().st_size > 5000
    assert f"acts like guidance {record['equivalent_guidance']:.2f} instead of 3" in guided_summary(record)
    assert run_guided_demo(tmp_path / "none", DemoOptions(weights=tmp_path / "nowhere", progress=False)) is None
