"""``freeu export`` refuses what it cannot do before any tracing, with errors that say what to do."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import sd15_unet

import freeu
from freeu.apps.cli import main
from freeu.apps.export import export_unet

pytest.importorskip("diffusers")


def _err(capsys) -> str:
    return capsys.readouterr().err


def _run(argv: list[str]) -> int:
    """``freeu ARGV``'s exit code, argparse's own refusals included."""
    try:
        return main(argv)
    except SystemExit as exit:
        return int(exit.code or 0)


def test_refusals_name_the_flag_and_what_to_do(tmp_path, capsys) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        (["--out", str(busy)], "holds other files"),
        (["--format", "tflite"], "one or more of onnx, openvino, pt2"),
        (["--plain", "--preset", "sd15"], "--plain exports the U-Net without FreeU"),
        (["--plain", "--mode", "inputs"], "the inputs mode carries FreeU's factors"),
        (["--preset", "sd15", "--start", "0.5"], "a step window needs the timestep"),
        (["--dtype", "float16"], "writes float32 graphs"),
        (["--format", "onnx-pipeline", "--preset", "sd15"], "give the pipeline (a diffusers pipeline folder"),
    ]
    for flags, message in cases:
        code = _run(["export", "--model", "demo", "--out", str(tmp_path / "x"), *flags] if "--out" not in flags
                    else ["export", "--model", "demo", *flags])  # fmt: skip
        assert code == 2, flags
        assert message in _err(capsys), flags
    assert (busy / "notes.txt").read_text() == "mine" and not (tmp_path / "x").exists()


def test_a_missing_package_names_the_extra(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["export", "--model", "demo", "--format", "openvino", "--out", str(tmp_path / "x")]) == 2
    assert "pip install 'freeu[openvino]'" in _err(capsys)


def test_a_patched_unet_is_not_exported_as_plain_and_keeps_its_freeu(tmp_path) -> None:
    unet = sd15_unet()
    mine = freeu.apply(unet, b1=1.2, b2=1.3, s1=0.9, s2=0.8)
    with pytest.raises(ValueError, match="the U-Net has FreeU applied"):
        export_unet(unet, tmp_path / "plain", None)
    assert freeu.active_config(unet) == mine.config and mine.active


def test_a_model_of_another_family_is_refused() -> None:
    with pytest.raises(ValueError, match="takes a diffusers UNet2DModel or UNet2DConditionModel or an LDM"):
        export_unet(torch.nn.Conv2d(3, 3, 1), "unused", None)
    with pytest.raises(ValueError, match="stages beyond two"):
        export_unet(sd15_unet(), "unused", freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2).with_stages({3: {"b": 1.1}}),
                    mode="inputs")  # fmt: skip


def test_an_onnx_pipeline_is_written_only_for_what_diffusers_onnx_pipeline_runs(tmp_path) -> None:
    diffusers = pytest.importorskip("diffusers")
    from tiny_pipelines import sd_pipeline, sdxl_pipeline

    config = freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2)
    sd = diffusers.StableDiffusionPipeline.from_pretrained(sd_pipeline(tmp_path / "sd"))
    with pytest.raises(ValueError, match="calls its U-Net with sample, timestep and encoder_hidden_states only"):
        export_unet(sd.unet, tmp_path / "x", config, formats=("onnx-pipeline",), mode="inputs", pipeline=sd)
    with pytest.raises(ValueError, match="the U-Net given is not the pipeline's own"):
        export_unet(sd15_unet(), tmp_path / "x", config, formats=("onnx-pipeline",), pipeline=sd)
    sd.vae.register_to_config(scaling_factor=0.13025)
    with pytest.raises(ValueError, match="scales its latents by 0.13025, and the ONNX pipeline by a fixed 0.18215"):
        export_unet(sd.unet, tmp_path / "x", config, formats=("onnx-pipeline",), pipeline=sd)
    xl = diffusers.StableDiffusionXLPipeline.from_pretrained(sdxl_pipeline(tmp_path / "xl"))
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline is not one \\(two text encoders\\)"):
        export_unet(xl.unet, tmp_path / "x", config, formats=("onnx-pipeline",), pipeline=xl)
    assert not (tmp_path / "x").exists()
