"""No command writes a file outside the output folder it was given, whatever names it is handed (issue #30): every
command that writes files, run from a scratch working folder with a scratch home, with names that try to climb out
(``..``, ``../x``, absolute paths, ``~``, hidden names). Each run either refuses the name (exit 2, one line, nothing
written) or writes only under ``--out``."""

from __future__ import annotations

from pathlib import Path

import pytest

from freeu.apps.cli import main

pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

#: Names that try to leave the folder they are joined to.
HOSTILE = ["..", "../escaped", "a/../../escaped", "/tmp/freeu-escaped", "~/escaped", ".hidden", "-", "x\\..\\..\\e"]

#: Each command that writes files, with ``{name}`` where it takes a name and ``{model}`` for the tiny demo model.
COMMANDS = {
    "generate": ["generate", "--model", "{model}", "--preset", "sd15", "--steps", "1", "--name", "{name}"],
    "sweep": ["sweep", "--model", "{model}", "--preset", "sd15", "--b1", "1,1.2", "--s1", "1,0.9", "--steps", "1",
              "--name", "{name}"],
    "eval": ["eval", "--model", "{model}", "--seeds", "1", "--steps", "1", "--reference-count", "8", "--bootstrap",
             "10", "--set-bootstrap", "2", "--swd-patches", "8", "--swd-projections", "8", "--config",
             "{name}:b1=1.1 b2=1.2 s1=0.9 s2=0.9", "--no-progress"],
    "tune": ["tune", "--model", "{model}", "--steps", "1", "--seeds", "2", "--min-seeds", "2", "--budget", "8",
             "--confirm-seeds", "2", "--reference-count", "8", "--bootstrap", "10", "--set-bootstrap", "2",
             "--swd-patches", "8", "--swd-projections", "8", "--name", "{name}", "--no-progress"],
    "analyze": ["analyze", "--model", "{model}", "--steps", "2", "--count", "1", "--only", "b"],
    "demo": ["demo", "--model", "demo", "--seeds", "1", "--steps", "1", "--no-progress"],
}  # fmt: skip


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir()}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_command_writes_outside_its_output_folder(
    command, tiny_demo, tmp_path, tmp_path_factory, monkeypatch, capsys
) -> None:
    work, home, out = tmp_path / "work", tmp_path / "home", tmp_path / "work" / "out"
    work.mkdir()
    home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("matplotlib")))  # its font cache, not an output
    escaped = Path("/tmp/freeu-escaped")
    names = [*HOSTILE, "plain"] if "{name}" in " ".join(COMMANDS[command]) else ["-"]
    outcomes = {}
    for name in names:
        before = _files(tmp_path)
        argv = [a.replace("{model}", str(tiny_demo)).replace("{name}", name) for a in COMMANDS[command]]
        try:
            code = main([*argv, "--out", str(out / "run")])
        except SystemExit as exit_:  # argparse's own refusals
            code = exit_.code
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        outcomes[name] = code
        written = _files(tmp_path) - before
        outside = sorted(str(p) for p in written if not p.is_relative_to(out))
        assert outside == [], (name, outside)
        assert not escaped.exists() and not list(home.iterdir()), name
        if code != 0:
            assert code == 2 and not written, (name, code, err)
    assert list(outcomes.values())[-1] == 0, outcomes  # the command does run (with a plain name)
