"""Files, metadata, devices and names a careless or hostile user hands over: refused with a one-line ``ValueError``
(exit code 2 on the command line), never a hang, a traceback, or a file outside the output folder."""

from __future__ import annotations

import argparse
import os
import threading
from pathlib import Path

import pytest

import freeu
from freeu.apps.cli import build_parser, main
from freeu.apps.evaluate.configs import parse_config_arg
from freeu.apps.evaluate.generation import slug
from freeu.apps.imaging import read_settings
from freeu.apps.options import device, freeu_settings
from freeu.settings import Settings, check_settings


def refused_within(seconds: float, call) -> str:
    """The ``ValueError`` text of ``call()``, which must come within ``seconds`` (a FIFO would block forever)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - inspected below
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still running after {seconds} s"
    assert isinstance(outcome[0], ValueError), repr(outcome[0])
    return str(outcome[0])


def test_a_preset_file_that_is_a_fifo_is_refused_without_opening_it(tmp_path) -> None:
    fifo = tmp_path / "settings.toml"
    os.mkfifo(fifo)
    text = refused_within(10, lambda: check_settings(Settings(preset=str(fifo))))
    assert text == f"preset file {fifo}: not a regular file"


def test_a_preset_file_linked_to_a_device_is_refused(tmp_path) -> None:
    link = tmp_path / "zero.toml"
    link.symlink_to("/dev/zero")
    assert refused_within(10, lambda: freeu.get_preset(str(link))) == f"preset file {link}: not a regular file"


def test_a_huge_or_deeply_nested_preset_file_is_refused(tmp_path) -> None:
    nested = tmp_path / "nested.toml"
    nested.write_text("[freeu]\nb1 = " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ValueError, match="nested too deeply|over 64 KiB"):
        freeu.get_preset(str(nested))
    deep = tmp_path / "deep.toml"
    deep.write_text("[freeu]\nb1 = " + "[" * 5_000 + "]" * 5_000 + "\n")  # under the size cap
    with pytest.raises(ValueError, match="nested too deeply"):
        freeu.get_preset(str(deep))
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 70_000 + "\n[freeu]\nb1 = 1\nb2 = 1\ns1 = 1\ns2 = 1\n")
    with pytest.raises(ValueError, match="over 64 KiB, too large to be a preset file"):
        freeu.get_preset(str(big))


def test_deeply_nested_metadata_in_a_picture_is_refused(tmp_path) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("freeu", "[" * 100_000 + "]" * 100_000)
    path = tmp_path / "nested.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_settings(path)
    assert main(["info", str(path)]) == 2


def test_a_carried_window_that_is_not_a_pair_is_refused() -> None:
    args = build_parser().parse_args(["generate", "--model", "x", "--prompt", "p"])
    carried = {"b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2, "stages": [{"b": 1.5, "s": 0.9, "window": 0.5}, {}]}
    with pytest.raises(ValueError, match=r"stage 1: window must be \(offset, width\)"):
        freeu_settings(args, carried=carried)


@pytest.mark.parametrize("text, why", [("meta", "holds no data"), ("ipu", "cannot be used here"),
                                       ("cpu:3", "has 1 cpu device")])  # fmt: skip
def test_a_device_this_build_cannot_use_is_refused_before_any_work(text, why, capsys) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        device(text)
    with pytest.raises(SystemExit) as exited:  # argparse's exit, before anything loads
        main(["generate", "--model", "demo", "--preset", "sd15", "--device", text])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"argument --device: {text!r}" in err


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_a_configuration_name_never_becomes_a_path_out_of_the_folder(name) -> None:
    with pytest.raises(ValueError, match="leading '.'"):
        parse_config_arg(f"{name}:b1=1.1 b2=1.2 s1=0.9 s2=0.9")
    assert not slug(name).startswith(".") and Path("images", slug(name)).resolve().parent == Path("images").resolve()


def test_tune_refuses_guidance_baselines_on_an_unguided_model_before_sampling(tmp_path, monkeypatch, capsys) -> None:
    from freeu.apps import runtime

    def sample(*args, **kwargs):
        raise AssertionError("sampled before refusing")

    monkeypatch.setattr(runtime.Model, "sample", sample)
    code = main(["tune", "--model", "demo", "--guidance-baselines", "6", "--out", str(tmp_path / "t")])
    assert code == 2
    assert "--guidance-baselines: demo takes no guidance scale" in capsys.readouterr().err


def test_samples_that_are_not_finite_fail_the_command_and_write_nothing(tmp_path, capsys) -> None:
    """b = 100 (the largest factor allowed) overflows float16 in the demo model: the command fails saying why
    instead of writing a black picture with exit code 0."""
    out = tmp_path / "out"
    code = main(["generate", "--model", "demo", "--dtype", "float16", "--preset", "sd15", "--b1", "100", "--b2", "100",
                 "--steps", "3", "--out", str(out)])  # fmt: skip
    assert code == 2
    assert "the U-Net's output is not finite (NaN or inf) in float16" in capsys.readouterr().err
    assert list(out.iterdir()) == []
