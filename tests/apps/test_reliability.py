"""What a careless or hostile user gives the command line: every case ends with a message and a non-zero exit, never
a traceback, and nothing is computed before what can be refused is refused (issue #19's findings)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from freeu.apps.cli import main
from freeu.apps.imaging import save_png
from freeu.apps.options import parse_values

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

pytestmark = pytest.mark.usefixtures("one_thread")


def exit_code(argv: list[str]) -> int:
    """``freeu ARGV``'s exit code: argparse's own refusals leave through SystemExit, the rest return it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def failed_cleanly(capsys, code: int, message: str) -> str:
    """The run ended with a message naming the problem on its last line, no traceback and nothing loaded."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "loading" not in captured.out, captured
    assert message in captured.err.strip().splitlines()[-1], captured.err
    return captured.err


def demo_png(folder: Path, settings: object) -> Path:
    from PIL import Image

    path = folder / "carried.png"
    save_png(Image.new("RGB", (32, 32)), path, settings)
    return path


GOOD = {"model": "demo", "seed": 1, "steps": 2, "freeu": {"b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2}}


# -- ranges and grids -----------------------------------------------------------------------------------------------


def test_ranges_never_pass_their_stop_value() -> None:
    assert parse_values("x", "0.5:1.05:0.1") == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # was ... 1.0, 1.1
    assert parse_values("x", "1.0:1.6:0.2") == [1.0, 1.2, 1.4, 1.6]  # the stop stays in when the steps land on it
    with pytest.raises(ValueError, match="gives 2001 values, more than 1000"):
        parse_values("--b1", "0:2:0.001")


def test_a_sweep_grid_is_capped_before_anything_loads_and_the_cap_can_be_raised(tmp_path, capsys) -> None:
    argv = ["sweep", "--model", "demo", "--preset", "sd15", "--steps", "1", "--out", str(tmp_path)]
    assert exit_code([*argv, "--b1", "0:2:0.001", "--s1", "0:1:0.001"]) == 2
    failed_cleanly(capsys, 2, "more than 1000")
    assert exit_code([*argv, "--b1", "1:2:0.1", "--s1", "0:1:0.1"]) == 2  # 11 x 11 cells
    failed_cleanly(capsys, 2, "a grid of 121 cells, more than --max-cells 64")
    assert exit_code([*argv, "--b1", "1:2:0.1", "--s1", "0:1:0.1", "--max-cells", "121"]) == 0
    settings = json.loads(json.dumps(_settings(tmp_path / "sweep-seed0.png")))
    assert len(settings["sweep"]["rows"][1]) * len(settings["sweep"]["cols"][1]) == 121


def test_eval_refuses_a_grid_beyond_max_configs(tmp_path, capsys) -> None:
    code = exit_code(["eval", "--config", "g:sd15 b1=1:2:0.01", "--seeds", "1", "--out", str(tmp_path / "e")])
    assert code == 2
    failed_cleanly(capsys, 2, "102 configurations (grids expand), more than --max-configs 64")
    assert not (tmp_path / "e").exists()


def _settings(path: Path) -> dict:
    from freeu.apps.imaging import read_settings

    return read_settings(path)


# -- what --from IMAGE carries ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ([1, 2], "not a JSON object"),
        ({**GOOD, "seed": "x"}, "seed 'x' is refused as --seed would refuse it"),
        ({**GOOD, "seed": -4}, "seed -4 is refused as --seed would refuse it"),
        ({**GOOD, "steps": -3}, "steps -3 is refused as --steps would refuse it"),
        ({**GOOD, "steps": True}, "steps True is refused"),
        ({**GOOD, "guidance": -5}, "guidance -5 is refused as --guidance would refuse it"),
        ({**GOOD, "guidance": float("nan")}, "guidance nan is refused"),
        ({**GOOD, "width": -8, "height": 32}, "width/height -8x32 refused as --size would"),
        ({**GOOD, "width": "big", "height": 32}, "must be whole numbers"),
        ({**GOOD, "dtype": "float64"}, "dtype 'float64' is refused as --dtype would refuse it"),
        ({**GOOD, "freeu": [1]}, "its freeu factors are list, not a JSON object"),
        ({**GOOD, "freeu": {**GOOD["freeu"], "b1": "1.5"}}, "b1 must be a real number"),
        ({**GOOD, "freeu": {**GOOD["freeu"], "s1": 1e300}}, "s1 must be at most 100"),
    ],
)
def test_from_metadata_is_refused_exactly_like_the_flags(tmp_path, capsys, settings, message) -> None:
    image = demo_png(tmp_path, settings)
    assert exit_code(["generate", "--from", str(image), "--out", str(tmp_path / "out")]) == 2
    failed_cleanly(capsys, 2, message)
    assert not list((tmp_path / "out").glob("*.png"))


def test_good_metadata_reruns(tmp_path, capsys) -> None:
    image = demo_png(tmp_path, GOOD)
    assert exit_code(["generate", "--from", str(image), "--out", str(tmp_path / "out")]) == 0
    assert _settings(tmp_path / "out" / "seed1-freeu.png")["freeu"]["b2"] == 1.6


def test_a_decompression_bomb_is_refused(tmp_path, capsys, monkeypatch) -> None:
    from PIL import Image

    image = demo_png(tmp_path, GOOD)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 32x32 picture declares ten times that: a "bomb"
    assert exit_code(["info", str(image)]) == 2
    failed_cleanly(capsys, 2, "decompression bomb")
    assert exit_code(["generate", "--from", str(image)]) == 2
    failed_cleanly(capsys, 2, "decompression bomb")


# -- every failure path: one message, a non-zero exit, nothing done first ---------------------------------------------


def _folder_as_file(tmp: Path) -> str:
    (tmp / "taken").write_text("a file")
    return str(tmp / "taken")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["info", "{tmp}"], 1, "Is a directory"),
        (["info", "{tmp}/empty.png"], 1, "cannot identify image file"),
        (["info", "{tmp}/text.png"], 1, "cannot identify image file"),
        (["generate", "--model", "demo", "--preset", "sd15", "--out", "{file}"], 2, "exists and is not a folder"),
        (["generate", "--model", "demo", "--preset", "sd15", "--out", "{file}/sub"], 2, "cannot write there"),
        (["generate", "--model", "demo", "--preset", "sd15", "--device", "tpu9"], 2, "argument --device: must be a"),
        (["generate", "--model", "demo", "--preset", "sd15", "--device", "cuda:7"], 2, "argument --device: 'cuda:7'"),
        (["generate", "--model", "x", "--prompt", "x", "--preset", "sd15", "--size", "100000"], 2, "each from 1 to"),
        (["generate", "--model", "demo", "--preset", "sd15", "--b1", "1,inf"], 2, "--b1: must be a finite number"),
        (
            ["sweep", "--model", "demo", "--preset", "sd15", "--b1", "0:inf:1", "--s1", "1,2"],
            2,
            "--b1: must be a finite number",
        ),
        (["generate", "--model", "demo", "--preset", "sd15", "--name", "../x"], 2, "without a folder"),
        (["generate", "--model", "demo", "--preset", "sd15", "--name", "/tmp/x"], 2, "without a folder"),
        (["generate", "--model", "demo", "--b1", "1e30", "--b2", "1", "--s1", "1", "--s2", "1"], 2, "at most 100"),
        (["eval", "--model", "{tmp}/none", "--prompts", "{tmp}/missing.txt"], 2, "--prompts"),
        (["eval", "--seeds", "1", "--swd-levels", "20", "--out", "{tmp}/e"], 2, "--swd-levels 20: levels=20"),
        (["analyze", "--seed", "-1"], 2, "argument --seed: must be an integer from 0"),
        (["ui", "--port", "99999"], 2, "argument --port: must be a port from 1 to 65535"),
    ],
)
def test_every_failure_path_ends_with_a_message_and_a_non_zero_exit(tmp_path, capsys, argv, code, message) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a picture")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{file}", _folder_as_file(tmp_path)) for a in argv]
    assert exit_code(argv) == code
    failed_cleanly(capsys, code, message)
    assert not (tmp_path / "e" / "images").exists()  # eval refused before generating anything


def test_ui_refuses_an_address_it_cannot_listen_on_at_once_and_leaves_no_folder(capsys) -> None:
    pytest.importorskip("gradio")
    before = set(Path(tempfile.gettempdir()).glob("freeu-ui-*"))
    assert exit_code(["ui", "--host", "256.1.1.1"]) == 2
    failed_cleanly(capsys, 2, "--host '256.1.1.1': not an address of this machine")
    assert set(Path(tempfile.gettempdir()).glob("freeu-ui-*")) == before


def test_ctrl_c_ends_with_one_line_and_exit_130(monkeypatch, capsys) -> None:
    import freeu.apps.generate as generate

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "run_generate", interrupted)
    assert exit_code(["generate", "--model", "demo", "--preset", "sd15"]) == 130
    failed_cleanly(capsys, 130, "freeu generate: interrupted")


# -- a supported U-Net family in every command ----------------------------------------------------------------------


def test_an_unconditional_ddpm_pipeline_runs_in_generate_sweep_and_eval(tmp_path, capsys) -> None:
    import tiny_pipelines

    folder = str(tiny_pipelines.ddpm_pipeline(tmp_path / "ddpm"))
    out = tmp_path / "out"
    common = ["--model", folder, "--steps", "2", "--out", str(out)]
    assert main(["generate", *common, "--preset", "sd15"]) == 0
    assert main(["sweep", *common, "--preset", "sd15", "--b1", "1,1.4", "--s1", "1,0.5"]) == 0
    pixels = np.asarray(_open(out / "sweep-seed0.png"))
    assert pixels.shape[0] > 32 and _settings(out / "seed0-freeu.png")["prompt"] is None
    report = tmp_path / "eval"
    argv = ["eval", "--model", folder, "--config", "sd15", "--seeds", "2", "--steps", "2", "--bootstrap", "20",
            "--set-bootstrap", "4", "--no-progress", "--out", str(report)]  # fmt: skip
    assert main(argv) == 0
    assert "| sd15 |" in (report / "report.md").read_text()
    capsys.readouterr()
    assert exit_code(["generate", *common, "--preset", "sd15", "--prompt", "a cat"]) == 2
    failed_cleanly(capsys, 2, "--prompt: " + folder + " is unconditional")


def _open(path: Path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")
