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
from freeu.config import preset_file_in
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
    assert not out.exists()  # nothing written: the folder the command made is removed again


# -- preset files on hosts that serve others ------------------------------------------------------------------------


def _preset(path: Path) -> Path:
    path.write_text("name = 'mine'\n[freeu]\nb1 = 1.2\nb2 = 1.3\ns1 = 0.9\ns2 = 0.6\n")
    return path


def test_a_host_opens_preset_files_only_inside_its_folder(tmp_path) -> None:
    folder = tmp_path / "presets"
    (folder / "sub").mkdir(parents=True)
    _preset(folder / "mine.toml")
    _preset(folder / "sub" / "deep.toml")
    _preset(tmp_path / "secret.toml")
    os.mkfifo(tmp_path / "fifo.toml")
    (folder / "link.toml").symlink_to(tmp_path / "secret.toml")
    assert preset_file_in("mine.toml", [folder]) == folder / "mine.toml"
    assert preset_file_in("sub/deep.toml", [tmp_path / "none", folder]) == folder / "sub" / "deep.toml"
    for name in (str(tmp_path / "secret.toml"), "../secret.toml", "../fifo.toml", "sub/../../secret.toml",
                 "~/secret.toml", "../missing.toml"):  # fmt: skip
        text = refused_within(10, lambda n=name: preset_file_in(n, [folder]))
        assert text == f"preset_file: {name!r} is not a name inside {folder}; give the file's name in that folder"
    # a link leading out, and a name that is not there, get the same answer: nothing says what exists outside
    assert refused_within(10, lambda: preset_file_in("link.toml", [folder])) == (
        f"preset_file: no preset file 'link.toml' in {folder}")  # fmt: skip
    with pytest.raises(ValueError, match="must name a preset file"):
        preset_file_in("passwd", [folder])


def test_the_page_opens_preset_files_only_inside_its_preset_folder(tmp_path) -> None:
    from freeu.apps.runtime import load_model
    from freeu.apps.ui import Studio

    folder = tmp_path / "presets"
    folder.mkdir()
    _preset(folder / "mine.toml")
    launch = _preset(tmp_path / "launch.toml")  # the operator's --preset may be anywhere
    studio = Studio(load_model("demo"), tmp_path / "pngs", preset=str(launch), preset_dir=folder)
    assert studio.preset_controls("mine.toml")["b1"] == 1.2
    assert studio.preset_controls(str(launch))["b2"] == 1.3
    assert studio.preset_controls("sd15")["b1"] == 1.5
    _preset(tmp_path / "other.toml")
    for name in (str(tmp_path / "other.toml"), "../launch.toml", "~/x.toml"):
        with pytest.raises(ValueError, match="is not a name inside"):
            studio.preset_controls(name)


def test_the_ui_command_refuses_a_preset_folder_that_is_not_one(tmp_path, capsys) -> None:
    pytest.importorskip("gradio")
    assert main(["ui", "--model", "demo", "--preset-dir", str(tmp_path / "none"), "--port", "7999"]) == 2
    assert f"--preset-dir {tmp_path / 'none'}: not a folder" in capsys.readouterr().err


# -- files a command reads back -------------------------------------------------------------------------------------


def _no_sampling(monkeypatch) -> type[Exception]:
    from freeu.apps import runtime

    class Sampled(Exception):
        pass

    def sample(*args, **kwargs):
        raise Sampled

    monkeypatch.setattr(runtime.Model, "sample", sample)
    return Sampled


TUNE = ["tune", "--model", "demo", "--steps", "1", "--seeds", "2", "--min-seeds", "2", "--budget", "8",
        "--confirm-seeds", "2", "--no-progress"]  # fmt: skip


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda record: [record], "it holds a JSON list, not a tune record"),
        (lambda record: {k: v for k, v in record.items() if k != "candidates"}, "'candidates' must map the names"),
        (lambda record: {**record, "candidates": {**record["candidates"], "c00": {"b1": "x"}}}, "candidate c00:"),
        (lambda record: {**record, "rungs": [{"seeds": 99, "off": 1.0, "scores": {}}]}, "rung 1 must hold 'seeds'"),
        (lambda record: {**record, "rungs": "many"}, "'rungs' must be a list"),
    ],
)
def test_a_hand_edited_tune_record_is_refused_before_sampling(edit, message, tmp_path, monkeypatch, capsys) -> None:
    import json

    sampled = _no_sampling(monkeypatch)
    out = tmp_path / "t"
    with pytest.raises(sampled):  # the first run writes tune.json, then would sample
        main([*TUNE, "--out", str(out)])
    record = json.loads((out / "tune.json").read_text())
    (out / "tune.json").write_text(json.dumps(edit(record)))
    capsys.readouterr()
    assert main([*TUNE, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and "move it away" in err, err


def test_a_tune_record_that_is_a_fifo_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "t"
    out.mkdir()
    os.mkfifo(out / "tune.json")
    text = refused_within(30, lambda: _raise_on_exit(main([*TUNE, "--out", str(out)]), capsys))
    assert "tune record" in text and "not a regular file" in text


def _raise_on_exit(code: int, capsys) -> None:
    assert code == 2
    raise ValueError(capsys.readouterr().err)


def test_a_damaged_guidance_record_is_refused_or_measured_again(tmp_path) -> None:
    from freeu.apps.evaluate import meter

    path = tmp_path / "guidance.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a guidance record"):
        meter._record(path)
    step = {"equivalent": 4.2, "extra_low": 1.0}
    run = {"scale": 3, "equivalent": 4.2, "equivalent_low": 4.0, "band_cutoff": 0.0, "steps": [step, step]}
    entry = {"key": "k", "freeu": {}, "scale": 3, "equivalent": 4.2, "orthogonal_share": 0.1, "prompts": ["a"],
             "counts": [1], "runs": [run]}  # fmt: skip
    assert meter._valid_entry(entry, "k")
    damages = (
        {**entry, "equivalent": "4"}, {**entry, "key": "j"}, [entry], {**entry, "counts": [0]},
        {**entry, "prompts": ["a", "b"]}, {**entry, "runs": [{**run, "steps": [{}]}]}, {**entry, "runs": []},
        {**entry, "runs": [run, {**run, "scale": 5}], "prompts": ["a", "b"], "counts": [1, 1]},
    )  # fmt: skip
    for damaged in damages:
        assert not meter._valid_entry(damaged, "k")


def test_a_configuration_file_is_read_bounded(tmp_path, capsys) -> None:
    fifo = tmp_path / "configs.toml"
    os.mkfifo(fifo)
    text = refused_within(10, lambda: _raise_on_exit(main(["eval", "--model", "demo", "--configs", str(fifo),
                                                          "--out", str(tmp_path / "e")]), capsys))  # fmt: skip
    assert f"configuration file {fifo}: not a regular file" in text
    nested = tmp_path / "nested.json"
    nested.write_text('{"configs": ' + "[" * 50_000 + "]" * 50_000 + "}")
    assert main(["eval", "--model", "demo", "--configs", str(nested), "--out", str(tmp_path / "e")]) == 2
    assert "nested too deeply" in capsys.readouterr().err


# -- feature networks named on the command line ---------------------------------------------------------------------


class _Runs:
    """A pickle that writes a file when loaded, as a forged weights file would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_feature_files_that_are_programs_are_refused_unopened(kind, tmp_path) -> None:
    from freeu.apps.evaluate.features import load_feature_net

    path = tmp_path / "f.pt"
    path.write_bytes(b"not opened")
    with pytest.raises(ValueError, match="programs that run when loaded.*pass onnx:PATH"):
        load_feature_net(f"{kind}:{path}")


def test_feature_files_that_are_not_networks_get_one_paragraph(tmp_path) -> None:
    import pickle

    import torch

    from freeu.apps.evaluate.features import load_feature_net

    forged, marker = tmp_path / "weights.pth", tmp_path / "ran.txt"
    torch.save({"w": torch.zeros(1), "x": _Runs(marker)}, forged, pickle_module=pickle)
    with pytest.raises(ValueError, match="not a weights file that loads as tensors only") as refused:
        load_feature_net(f"inception:{forged}")
    assert not marker.exists() and "\n" not in str(refused.value)
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n" * 10)
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match="is not an ONNX model ONNX Runtime can run") as refused:
        load_feature_net(f"onnx:{text}")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--model", "demo", "--preset", "{fifo}"], "not a regular file"),
        (["generate", "--model", "demo", "--preset", "{nested}"], "nested too deeply"),
        (["generate", "--from", "{picture}"], "nested too deeply"),
        (["info", "{picture}"], "nested too deeply"),
        (["eval", "--model", "demo", "--config", "..:b1=1.1 b2=1.2 s1=0.9 s2=0.9"], "leading '.'"),
        (["eval", "--model", "demo", "--fid-features", "torchscript:{text}"], "programs that run when loaded"),
        (["eval", "--model", "demo", "--fid-features", "onnx:{text}"], "is not an ONNX model"),
        (["eval", "--model", "demo", "--fid-features", "inception:{text}"], "not a weights file"),
        (["analyze", "--model", "demo", "--preset", "{fifo}"], "not a regular file"),
    ],
)
def test_the_command_line_refuses_bad_files_and_names_without_a_traceback(argv, message, tmp_path, capsys) -> None:
    from PIL import Image, PngImagePlugin

    pytest.importorskip("onnxruntime")
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "nested.toml").write_text("[freeu]\nb1 = " + "[" * 5_000 + "]" * 5_000 + "\n")
    (tmp_path / "notes.txt").write_text("not a model")
    info = PngImagePlugin.PngInfo()
    info.add_text("freeu", "[" * 100_000 + "]" * 100_000)
    Image.new("RGB", (4, 4)).save(tmp_path / "nested.png", pnginfo=info)
    names = {"{fifo}": "fifo.toml", "{nested}": "nested.toml", "{picture}": "nested.png", "{text}": "notes.txt"}
    for key, name in names.items():
        argv = [a.replace(key, str(tmp_path / name)) for a in argv]
    out = tmp_path / "out"
    full = argv if argv[0] == "info" else [*argv, "--out", str(out)]
    text = refused_within(30, lambda: _raise_on_exit(main(full), capsys))
    assert "Traceback" not in text and message in text.strip().splitlines()[-1], text
    assert not out.exists() or not any(out.rglob("*.png"))
