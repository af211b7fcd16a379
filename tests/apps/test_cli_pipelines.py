"""freeu generate / sweep / info end to end on tiny random pipelines saved to disk (nothing downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny_pipelines
import torch

import freeu
from freeu.apps.cli import main
from freeu.apps.imaging import read_settings
from freeu.apps.runtime import load_pipeline

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return tiny_pipelines.sd_pipeline(tmp_path_factory.mktemp("sd"))


def exit_code(argv: list[str]) -> int:
    """The exit code of ``freeu ARGV``: argparse's own refusals exit through SystemExit, the rest return it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def pixels(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_generate_writes_both_images_with_settings_and_reruns_from_them(sd_folder, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["generate", "--model", str(sd_folder), "--prompt", "a cat", "--preset", "auto", "--steps", "2"]
    assert main([*args, "--out", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "--preset auto chose 'sd15'" in printed
    for role in ("baseline", "freeu", "compare"):
        assert f"wrote {out / f'seed3-{role}.png'}" in printed
    settings = read_settings(out / "seed3-freeu.png")
    assert settings["model"] == str(sd_folder) and settings["seed"] == 3 and settings["steps"] == 2
    assert settings["preset"] == "sd15" and settings["role"] == "freeu"
    assert settings["freeu"] == {"b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2, "version": 2, "convention": "official",
                                 "threshold": 1, "start": 0.0, "stop": 1.0, "ramp": 0.0}  # fmt: skip
    baseline, patched = pixels(out / "seed3-baseline.png"), pixels(out / "seed3-freeu.png")
    assert np.abs(baseline - patched).max() > 5
    # the baseline is the pipeline's own output for that seed's noise
    pipe = load_pipeline(str(sd_folder))
    pipe.set_progress_bar_config(disable=True)
    again = tiny_pipelines.plain_call(pipe, prompt="a cat", seed=3, count=1, steps=2, guidance=7.5, height=32,
                   width=32)[0]  # fmt: skip
    assert np.abs(np.asarray(again, dtype=np.int16) - baseline).max() <= 1
    # --from re-runs the stored settings: same pictures
    assert main(["generate", "--from", str(out / "seed3-compare.png"), "--out", str(tmp_path / "again")]) == 0
    assert np.abs(pixels(tmp_path / "again" / "seed3-freeu.png") - patched).max() <= 1
    # and explicit flags override what the image carries
    assert (
        main(["generate", "--from", str(out / "seed3-compare.png"), "--b1", "1.0", "--out", str(tmp_path / "b")]) == 0
    )
    assert read_settings(tmp_path / "b" / "seed3-freeu.png")["freeu"]["b1"] == 1.0


def test_info_prints_the_settings(sd_folder, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    main(["generate", "--model", str(sd_folder), "--prompt", "a dog", "--preset", "sd21-v1", "--steps", "1",
          "--out", str(out)])  # fmt: skip
    capsys.readouterr()
    assert main(["info", str(out / "seed0-compare.png")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["prompt"] == "a dog" and shown["freeu"]["version"] == 1 and shown["preset"] == "sd21-v1"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert main(["info", str(tmp_path / "plain.png")]) == 2
    assert "carries no freeu settings" in capsys.readouterr().err


def test_sweep_grid_and_batched_cells_equal_single_runs(sd_folder, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    grid_args = ["--b1", "1.0:1.4:0.2", "--s1", "0.2,1.0", "--batch-size", "4", "--measure-speedup"]
    code = main(["sweep", "--model", str(sd_folder), "--prompt", "a cat", "--preset", "sd15", "--steps", "2",
                 *grid_args, "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "6 cells in batches of 4" in printed and "faster" in printed
    settings = read_settings(out / "sweep-seed0.png")
    assert settings["sweep"] == {"rows": ["b1", [1.0, 1.2, 1.4]], "cols": ["s1", [0.2, 1.0]]}
    assert settings["timings"]["speedup"] > 0
    # the mechanism behind the grid: per-sample factors in one batch == one run per setting
    pipe = load_pipeline(str(sd_folder))
    pipe.set_progress_bar_config(disable=True)
    common = dict(prompt="a cat", seed=0, steps=2, guidance=7.5, height=32, width=32)
    cells = [(1.0, 0.2), (1.2, 1.0), (1.4, 0.2)]
    with freeu.apply(pipe, preset="sd15", b1=[b for b, _ in cells], s1=[s for _, s in cells]):
        batched = tiny_pipelines.plain_call(pipe, count=3, **common)
    for (b1, s1), image in zip(cells, batched, strict=True):
        with freeu.apply(pipe, preset="sd15", b1=b1, s1=s1):
            single = tiny_pipelines.plain_call(pipe, count=1, **common)[0]
        assert np.abs(np.asarray(single, dtype=np.int16) - np.asarray(image, dtype=np.int16)).max() <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "sd3"], r"preset must be one of \['modelscope'"),
        (["--preset", "sd15", "--s1", "-1"], "s1: must be a finite number >= 0"),
        (["--preset", "sd15", "--b2", "nan"], "b2: must be a finite number >= 0"),
        (["--b1", "1.2"], "give --preset .* missing: --b2, --s1, --s2"),
        (["--preset", "sd15", "--size", "30"], "multiples of 8"),
        (["--preset", "sd15", "--steps", "0"], "must be an integer >= 1"),
        (["--preset", "sd15", "--version", "3"], "invalid choice: 3"),
        (["--preset", "sd15", "--start", "0.8", "--stop", "0.2"], "--start must be < --stop"),
        (["--preset", "sd15", "--stage", "3:b=1.1,x=2"], r"stage 3: 'x=2' is not KEY=VALUE"),
        (["--preset", "sd15", "--stage", "1:window=0.5"], "stage 1: window must be OFFSET/WIDTH"),
        (["--preset", "sd15", "--stage", "2:high=-1"], "stage 2: high must be a finite number >= 0"),
        (["--preset", "sd15", "--stage", "9:b=1"], "stage number 1 to 8"),
        (["--preset", "sd15", "--b1", "1.2", "--stage", "1:b=1.3"], "set the same factor: give it once"),
    ],
)
def test_impossible_values_fail_before_any_model_loads(tmp_path, capsys, argv, message) -> None:
    assert exit_code(["generate", "--model", str(tmp_path / "nothing"), "--prompt", "x", *argv]) == 2
    captured = capsys.readouterr()
    assert "loading" not in captured.out
    import re

    assert re.search(message, captured.err), captured.err


def test_sweep_needs_two_axes(sd_folder, capsys) -> None:
    assert main(["sweep", "--model", str(sd_folder), "--prompt", "x", "--preset", "sd15", "--b1", "1.0,1.2"]) == 2
    assert "exactly two factors with several values" in capsys.readouterr().err


def test_size_must_fit_the_model_downsampling(sd_folder, tmp_path, capsys) -> None:
    """Read from the pipeline's config files (VAE 2x, four U-Net levels: 16 px), before any weights load."""
    code = main(["generate", "--model", str(sd_folder), "--prompt", "x", "--preset", "sd15", "--size", "40",
                 "--steps", "1", "--out", str(tmp_path)])  # fmt: skip
    assert code == 2
    captured = capsys.readouterr()
    assert "must be a multiple of 16 for this model" in captured.err and "loading" not in captured.out


def test_offline_model_error_says_how_to_get_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    code = main(["generate", "--model", "someone/not-downloaded", "--prompt", "x", "--preset", "sd15"])
    assert code == 1
    err = capsys.readouterr().err
    assert "never downloads" in err and "hf download someone/not-downloaded" in err
    assert "Traceback" not in err


def test_video_pipeline_writes_gifs(tmp_path, capsys) -> None:
    folder = tiny_pipelines.video_pipeline(tmp_path / "video")
    out = tmp_path / "out"
    code = main(["generate", "--model", str(folder), "--prompt", "a cat", "--preset", "auto", "--steps", "2",
                 "--frames", "3", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert "--preset auto chose 'modelscope'" in capsys.readouterr().out
    from PIL import Image

    for role in ("baseline", "freeu", "compare"):
        with Image.open(out / f"seed0-{role}.gif") as gif:
            assert gif.n_frames == 3
    assert read_settings(out / "seed0-freeu.gif")["frames"] == 3
    assert np.abs(pixels(out / "seed0-freeu.gif") - pixels(out / "seed0-baseline.gif")).max() > 5


def test_preset_auto_reads_structure_not_names() -> None:
    diffusers = pytest.importorskip("diffusers")
    from freeu.settings import detect_preset

    def unet(**kw):
        with torch.device("meta"):
            return diffusers.UNet2DConditionModel(**kw)

    assert detect_preset(unet(cross_attention_dim=768))[0] == "sd15"
    assert detect_preset(unet(cross_attention_dim=1024, use_linear_projection=True))[0] == "sd21"
    xl = unet(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, addition_embed_type="text_time",
              addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))  # fmt: skip
    assert detect_preset(xl)[0] == "sdxl"


def test_sweep_with_all_four_factors_and_no_preset(sd_folder, tmp_path) -> None:
    """The form the sweep's own error message offers: every factor given, two of them as lists, no --preset."""
    code = main(["sweep", "--model", str(sd_folder), "--prompt", "x", "--steps", "1", "--b1", "1,1.2", "--b2", "1.4",
                 "--s1", "0.9,1", "--s2", "0.2", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    settings = read_settings(tmp_path / "sweep-seed0.png")
    assert settings["preset"] is None and settings["freeu"]["b2"] == 1.4 and settings["freeu"]["s2"] == 0.2
    assert settings["sweep"] == {"rows": ["b1", [1.0, 1.2]], "cols": ["s1", [0.9, 1.0]]}


def test_stages_and_controls_reach_the_image_its_metadata_and_a_rerun(sd_folder, tmp_path, capsys) -> None:
    """--stage adds a third stage and the controls beyond b and s; the PNG carries them, --from re-runs them, and a
    flag still changes what the image carries."""
    out = tmp_path / "out"
    args = ["generate", "--model", str(sd_folder), "--prompt", "a cat", "--preset", "sd15", "--steps", "2"]
    assert main([*args, "--out", str(out), "--seed", "3"]) == 0
    staged = ["--stage", "3:b=1.2,s=0.5", "--stage", "1:high=1.1,window=0.25/0.5,cutoff=0.3"]
    assert main([*args, *staged, "--out", str(tmp_path / "staged"), "--seed", "3"]) == 0
    assert "stage 1: b=1.5 s=0.9 high=1.1 window=0.25/0.5 cutoff=0.3, stage 3: b=1.2 s=0.5" in capsys.readouterr().out
    settings = read_settings(tmp_path / "staged" / "seed3-freeu.png")["freeu"]
    assert settings["stages"] == [
        {"b": 1.5, "s": 0.9, "high": 1.1, "window": [0.25, 0.5], "cutoff": 0.3},
        {"b": 1.6, "s": 0.2},
        {"b": 1.2, "s": 0.5},
    ]
    plain, staged_image = pixels(out / "seed3-freeu.png"), pixels(tmp_path / "staged" / "seed3-freeu.png")
    assert np.abs(plain - staged_image).max() > 2
    assert (
        main(["generate", "--from", str(tmp_path / "staged" / "seed3-compare.png"), "--out", str(tmp_path / "again")])
        == 0
    )
    assert np.abs(pixels(tmp_path / "again" / "seed3-freeu.png") - staged_image).max() <= 1
    rerun = ["generate", "--from", str(tmp_path / "staged" / "seed3-compare.png"), "--b1", "1.0", "--out"]
    assert main([*rerun, str(tmp_path / "b")]) == 0
    carried = read_settings(tmp_path / "b" / "seed3-freeu.png")["freeu"]
    assert carried["b1"] == 1.0 and carried["stages"][0] == {"b": 1.0, "s": 0.9, "high": 1.1, "window": [0.25, 0.5],
                                                             "cutoff": 0.3}  # fmt: skip
    assert carried["stages"][2] == {"b": 1.2, "s": 0.5}
