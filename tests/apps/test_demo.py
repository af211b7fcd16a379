"""The bundled demo model and ``freeu demo``: the shipped weights load, sample, take FreeU and give it back."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from reference import reference_ddim  # noqa: E402

import freeu  # noqa: E402
from freeu.apps.cli import main  # noqa: E402
from freeu.apps.demo.showcase import GUIDED_CLASSES, DemoOptions, load_demo_model, run_demo  # noqa: E402
from freeu.apps.demo_model import (  # noqa: E402
    CLASSES_WEIGHTS_DIR,
    DEFAULT_ROWS,
    WEIGHTS_DIR,
    check_freeu_stages,
    count_parameters,
    load_exported,
)
from freeu.apps.imaging import read_settings  # noqa: E402
from freeu.apps.measures import high_frequency_share  # noqa: E402
from freeu.apps.runtime import Request, load_demo, load_model, to_unit_range  # noqa: E402

SD15 = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)


@pytest.fixture(scope="module")
def bundled():
    return load_exported()


def test_bundled_weights_are_shipped_as_float16_safetensors(bundled) -> None:
    from safetensors import safe_open

    unet, config = bundled
    with safe_open(str(WEIGHTS_DIR / "unet.safetensors"), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    assert dtypes == {"F16"}
    assert count_parameters(unet) == config["training"]["parameters"] > 1_000_000
    assert (WEIGHTS_DIR / "unet.safetensors").stat().st_size < 10 * 2**20
    assert unet.dtype == torch.float32 and not unet.training
    stages = check_freeu_stages(unet)
    assert len(stages[1]) == 4 and len(stages[2]) == 3


def demo_images(model, seeds, steps, freeu=None) -> torch.Tensor:
    return to_unit_range(model.sample(seeds, Request(steps=steps), freeu=freeu, output="tensor"))


def test_bundled_model_samples_and_freeu_changes_it_and_restores(bundled) -> None:
    unet, config = bundled
    model = load_demo(device="cpu")
    base = demo_images(model, [0, 1], 3)
    assert torch.equal(base, reference_ddim(unet, [0, 1], 3, config["scheduler"]))  # a plain DDIM loop
    assert base.shape == (2, 3, 32, 32) and base.min() >= 0 and base.max() <= 1
    assert base.std() > 0.02  # an image, not a flat field
    patched = demo_images(model, [0, 1], 3, freeu.FreeUConfig(**SD15))
    assert (patched - base).abs().mean() > 0.01
    assert torch.equal(demo_images(model, [0, 1], 3), base)
    assert freeu.active_config(model.unet) is None


def test_a_sample_depends_only_on_its_seed() -> None:
    model = load_demo(device="cpu")
    both = demo_images(model, [4, 9], 2)
    alone = demo_images(model, [9], 2)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)


def test_high_frequency_share_of_known_images() -> None:
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    low = (0.5 + 0.3 * torch.cos(2 * math.pi * 3 * x / 32)).expand(1, 3, 32, 32)
    high = (0.5 + 0.3 * torch.cos(2 * math.pi * 12 * x / 32)).expand(1, 3, 32, 32)
    mixed = (low + high) / 2  # equal power at radius 3 and 12 (ring weights 3 and 12: share 12 / 15)
    shares = high_frequency_share(torch.cat([low, high, mixed]))
    torch.testing.assert_close(shares[:2], torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-9, rtol=0)
    assert 0.2 < shares[2] < 1.0


def test_demo_command_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--seeds", "2", "--first-seed", "5", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name in ("demo-guidance.png", "demo-guidance.json", "demo-grid.png", "demo-spectra.png", "demo.json"):
        assert f"wrote {out / name}" in printed
        assert (out / name).stat().st_size > 1000
    # the default model is the class-conditional one: every class with every seed, at its guidance
    record = json.loads((out / "demo.json").read_text())
    assert record["classes"] == list(GUIDED_CLASSES) and record["guidance"] == 2.0
    guided = json.loads((out / "demo-guidance.json").read_text())
    assert guided["classes"] == list(GUIDED_CLASSES) and guided["seeds"] == [5, 6]
    assert printed.index("demo-guidance.png") < printed.index("demo-grid.png")  # the guidance comparison first
    # the grid's FreeU off and FreeU rows are the comparison's first two (sampled once): the same change from off
    freeu_row = next(r for r in record["rows"] if r["label"] == "FreeU")
    assert freeu.FreeUConfig(**freeu_row["freeu"]) == freeu.FreeUConfig(**guided["freeu"])
    assert freeu_row["figures"]["change_vs_off_grey_levels"] == guided["change_vs_off_grey_levels"]["on"]
    carried = read_settings(out / "demo-grid.png")
    assert carried["classes"] == list(GUIDED_CLASSES)
    assert record["seeds"] == [5, 6] and record["sampler"] == "DDIM 2 steps, eta 0"
    assert [r["label"] for r in record["rows"]] == [r.label for r in DEFAULT_ROWS]
    assert [r["freeu"] for r in record["rows"]] == [r.settings for r in DEFAULT_ROWS]
    labels = {r.label for r in DEFAULT_ROWS}
    assert {"b only", "s only"} <= labels
    by_label = {r["label"]: r["figures"] for r in record["rows"]}
    assert by_label["FreeU off"]["change_vs_off_grey_levels"] == 0
    assert all(f["change_vs_off_grey_levels"] > 0.5 for label, f in by_label.items() if label != "FreeU off")
    assert all(0 < f["high_frequency_share"] < 1 for f in by_label.values())
    assert all(f["swd_to_held_out"] > 0 and f["rapsd_to_held_out"] > 0 for f in by_label.values())
    assert set(record["spectra"]) == labels | {"held-out real patches"}
    assert all(len(v) == 16 for v in record["spectra"].values())
    carried = read_settings(out / "demo-grid.png")
    assert carried["seeds"] == [5, 6] and carried["rows"][1]["freeu"] == DEFAULT_ROWS[1].settings


def test_demo_figures_match_a_recomputation(bundled, tmp_path) -> None:
    unet, config = bundled
    record = run_demo(tmp_path, DemoOptions(seeds=[3], steps=2, weights="demo", progress=False), rows=DEFAULT_ROWS[:2])
    base = reference_ddim(unet, [3], 2, config["scheduler"])
    with freeu.apply(unet, **DEFAULT_ROWS[1].settings):
        b_only = reference_ddim(unet, [3], 2, config["scheduler"])
    change = ((b_only * 255).round() - (base * 255).round()).abs().mean()
    figures = record["rows"][1]["figures"]
    assert figures["change_vs_off_grey_levels"] == pytest.approx(float(change), abs=1e-6)
    assert figures["high_frequency_share"] == pytest.approx(float(high_frequency_share(b_only).mean()), abs=1e-9)


def test_demo_on_the_class_model_samples_every_class_with_every_seed(tmp_path) -> None:
    options = DemoOptions(seeds=[3, 4], classes=["grass", "brick"], steps=2, progress=False)
    record = run_demo(tmp_path, options, rows=DEFAULT_ROWS[:2])
    model = load_demo_model()
    assert model.name == "demo-classes" and model.default_prompt == "brick"

    def images(freeu_setting):
        return torch.cat([to_unit_range(model.sample([3, 4], Request(steps=2, prompt=c, guidance=2.0),
                                                     freeu=freeu_setting, output="tensor"))
                          for c in ("grass", "brick")])  # fmt: skip

    base, b_only = images(None), images(freeu.FreeUConfig(**DEFAULT_ROWS[1].settings))
    change = ((b_only * 255).round() - (base * 255).round()).abs().mean()
    assert record["classes"] == ["grass", "brick"] and record["seeds"] == [3, 4] and record["guidance"] == 2.0
    assert record["rows"][1]["figures"]["change_vs_off_grey_levels"] == pytest.approx(float(change), abs=1e-6)
    assert record["rows"][1]["figures"]["high_frequency_share"] == pytest.approx(
        float(high_frequency_share(b_only).mean()), abs=1e-9)  # fmt: skip


def test_demo_on_the_unconditional_model(tmp_path, capsys) -> None:
    out = tmp_path / "plain"
    argv = ["demo", "--model", "demo", "--seeds", "2", "--steps", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "guided" not in printed and not (out / "demo-guidance.png").exists()
    record = json.loads((out / "demo.json").read_text())
    assert record["classes"] is None and record["guidance"] is None and record["seeds"] == [0, 1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "demo", "--classes", "brick"], "--classes: demo is unconditional"),
    (["--classes", "brick,coffee"], "--classes: ['coffee'] are not classes of demo-classes"),
    (["--classes", "brick,grass,text", "--seeds", "22"], "3 classes x 22 seeds = 66 columns, more than 64"),
    (["--model", "some/pipeline"], "--model 'some/pipeline': freeu demo runs demo-classes, demo or a folder"),
])  # fmt: skip
def test_demo_refuses_what_it_cannot_show(argv, message, tmp_path, capsys) -> None:
    assert main(["demo", *argv, "--steps", "1", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value", "message"), [("--seeds", "0", "must be an integer >= 1"),
                                                        ("--seeds", "65", "between 1 and 64"),
                                                        ("--steps", "0", "must be an integer >= 1")])  # fmt: skip
def test_demo_refuses_bad_values(flag, value, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", flag, value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_weights_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="unet.safetensors is missing"):
        run_demo(tmp_path / "out", DemoOptions(weights=tmp_path, progress=False))


def test_demo_options_refuse_a_bad_step_count() -> None:
    for steps in (0, 2.5):
        with pytest.raises(ValueError, match="steps must be an int >= 1"):
            DemoOptions(steps=steps)  # type: ignore[arg-type]


def test_rows_must_start_with_freeu_off(tmp_path) -> None:
    with pytest.raises(ValueError, match="must start with the FreeU-off row"):
        run_demo(tmp_path, DemoOptions(progress=False), rows=DEFAULT_ROWS[1:])
    bad = (DEFAULT_ROWS[0], type(DEFAULT_ROWS[0])("bad", dict(SD15, s1=-1)))
    with pytest.raises(ValueError, match="s1"):
        run_demo(tmp_path, DemoOptions(progress=False), rows=bad)


def test_the_runtime_alone_loads_every_demo_model_without_the_demo_package() -> None:
    """In a fresh interpreter the runtime loads the default model, ``demo``, ``demo-classes`` and a folder in the
    demo's format exactly as here, and imports nothing of the ``freeu demo`` command's package to do it."""
    src = Path(freeu.__file__).resolve().parents[1]
    names = [None, "demo", "demo-classes", str(WEIGHTS_DIR), str(CLASSES_WEIGHTS_DIR)]
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(src)!r})
        from freeu.apps.runtime import load_model

        models = [load_model(name, device="cpu") for name in {names!r}]
        shown = [[m.name, m.kind, m.fingerprint, m.description, m.classes, m.default_guidance] for m in models]
        demo = sorted(m for m in sys.modules if m == "freeu.apps.demo" or m.startswith("freeu.apps.demo."))
        print(json.dumps({{"models": shown, "demo": demo}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert loaded["demo"] == []
    here = [load_model(name, device="cpu") for name in names]
    expected = [[m.name, m.kind, m.fingerprint, m.description, list(m.classes) if m.classes else None,
                 m.default_guidance] for m in here]  # fmt: skip
    assert loaded["models"] == expected
    assert [m[0] for m in expected] == ["demo-classes", "demo", "demo-classes", str(WEIGHTS_DIR),
                                        str(CLASSES_WEIGHTS_DIR)]  # fmt: skip
    assert expected[0][2] == expected[2][2] == expected[4][2] != expected[1][2] == expected[3][2]
