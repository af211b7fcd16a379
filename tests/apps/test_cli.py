"""The command line, run in-process the way a user runs it."""

from __future__ import annotations

import pytest

from freeu.apps.cli import main

pytest.importorskip("diffusers")


def _rows(text: str) -> dict[str, tuple[str, ...]]:
    return {line.split()[0]: tuple(line.split()[1:]) for line in text.splitlines() if line.startswith("up_blocks")}


def test_plan_prints_the_sd15_table(capsys) -> None:
    assert main(["plan", "sd15"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 12
    assert rows["up_blocks.1.resnets.0"] == ("1280", "1280", "16", "b1,s1", "b2,s2")
    assert rows["up_blocks.2.resnets.0"] == ("1280", "640", "32", "b1,s1", "-")
    assert rows["up_blocks.3.resnets.0"] == ("640", "320", "64", "b2,s2", "-")
    assert rows["up_blocks.3.resnets.1"] == ("320", "320", "64", "-", "-")


def test_plan_prints_the_sdxl_table(capsys) -> None:
    assert main(["plan", "sdxl"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["up_blocks.1.resnets.0"] == ("1280", "640", "64", "b1,s1", "b2,s2")
    assert rows["up_blocks.2.resnets.0"] == ("640", "320", "128", "b2,s2", "-")


def test_plan_shows_more_stages_and_the_ladders_that_do_not_double(capsys) -> None:
    assert main(["plan", "sd15", "--stages", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["up_blocks.3.resnets.1"] == ("320", "320", "64", "b3,s3", "-")
    assert rows["up_blocks.2.resnets.0"] == ("1280", "640", "32", "b1,s1", "b3,s3")
    assert main(["plan", "kandinsky22", "--stages", "4"]) == 0
    printed = capsys.readouterr().out
    rows = _rows(printed)
    assert "768 px (96x96 latent), 4 stages" in printed and len(rows) == 16
    assert rows["up_blocks.1.resnets.1"] == ("1152", "1152", "24", "-", "b2,s2")  # 3x the base: no official stage
    assert rows["up_blocks.3.resnets.1"] == ("384", "384", "96", "b3,s3", "b4,s4")
    assert main(["plan", "if-i-xl"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["up_blocks.0.resnets.0"] == ("2816", "2816", "8", "b1,s1", "b1,s1")
    assert rows["up_blocks.2.resnets.1"] == ("1408", "1408", "32", "b2,s2", "-")
    with pytest.raises(SystemExit):
        main(["plan", "sd15", "--stages", "0"])
    assert "--stages: must be a whole number from 1 to 8, got '0'" in capsys.readouterr().err


def test_unknown_command_exits_with_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plan", "sd3"])
    assert exc.value.code == 2
    assert (
        "'sd3' is neither a layout (if-i-xl, kandinsky22, kandinsky3, sd15, sd21, sdxl, stable-cascade-b, "
        "stable-cascade-c) nor a folder" in capsys.readouterr().err
    )


def test_analyze_is_a_freeu_command(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "analysis"
    args = ["analyze", "--only", "b", "--count", "1", "--steps", "2", "--b-values", "1,1.6", "--out", str(out)]
    assert main(args) == 0
    assert (out / "analysis.json").is_file()
    assert "analysis.json" in capsys.readouterr().out


def test_eval_is_a_freeu_command(tmp_path, capsys) -> None:
    pytest.importorskip("accelerate")
    out = tmp_path / "eval"
    args = ["eval", "--seeds", "2", "--steps", "2", "--config", "b:b1=1.2 b2=1.2 s1=1 s2=1", "--reference-count",
            "16", "--bootstrap", "50", "--set-bootstrap", "20", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "off" in report and "| b |" in report.replace("`", "")


def test_ui_is_a_freeu_command_and_names_a_missing_model(tmp_path, capsys) -> None:
    pytest.importorskip("gradio")
    assert main(["ui", "--model", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["generate", "--model", "demo", "--b1", "1.2"], 2, "give --preset (auto or a name) or all four factors"),
        (["sweep", "--model", "demo", "--preset", "sd15", "--b1", "1,1.2"], 2, "exactly two factors"),
        (
            ["analyze", "--model", "demo", "--prompt", "a cat", "--steps", "1"],
            2,
            "--prompt: the demo model is unconditional",
        ),
        (["eval", "--model", "demo", "--prompt", "a cat", "--seeds", "1"], 2, "the demo model is unconditional"),
        (
            ["analyze", "--prompt", "a cat", "--steps", "1"],
            2,
            "--prompt: the demo model is class-conditional; the prompt must name one of its classes",
        ),
        (["generate", "--model", "NOWHERE", "--prompt", "x", "--preset", "sd15"], 1, "NOWHERE"),
        (["analyze", "--model", "NOWHERE", "--prompt", "x"], 1, "NOWHERE"),
        (["eval", "--model", "NOWHERE", "--prompt", "x", "--seeds", "1"], 1, "NOWHERE"),
        (["info", "NOWHERE/none.png"], 1, "none.png"),
        (["tune", "--budget", "10"], 2, "--budget 10: the smallest search"),
        (["tune", "--space", "b9=1:2"], 2, "--space 'b9=1:2'"),
        (["tune", "--model", "NOWHERE"], 1, "NOWHERE"),
    ],
)
def test_every_command_fails_with_one_line_and_the_same_exit_codes(argv, code, message, tmp_path, capsys) -> None:
    """A refused value exits 2, something missing exits 1, each with one line naming the command; no traceback."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("accelerate")
    argv = [str(tmp_path / "nowhere") if a == "NOWHERE" else a.replace("NOWHERE", str(tmp_path)) for a in argv]
    message = message.replace("NOWHERE", str(tmp_path / "nowhere"))
    assert main([*argv, "--out", str(tmp_path / "out")] if argv[0] != "info" else argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    prefix = f"freeu {argv[0]}: error: " if code == 2 else f"freeu {argv[0]}: "
    assert len(lines) == 1 and lines[0].startswith(prefix) and message in lines[0], err
    assert not list((tmp_path / "out").glob("*"))
