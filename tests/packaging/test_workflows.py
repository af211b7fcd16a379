"""The release automation (GitHub Actions, run once the project is public) checked here as far as it can be: every
workflow validates against GitHub's workflow schema (check-jsonschema's vendored copy, offline), and the linter sees
a broken one. What the workflows do is read, not run, here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def lint(*paths: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (requirements-dev.txt has it)")
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, paths)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_every_workflow_is_well_formed() -> None:
    assert [p.name for p in WORKFLOWS] == ["comfy-registry.yml", "release.yml", "tests.yml"]
    done = lint(*WORKFLOWS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_linter_sees_a_broken_workflow(tmp_path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text((ROOT / ".github" / "workflows" / "tests.yml").read_text().replace("runs-on:", "run-on:"))
    assert lint(broken).returncode != 0


def test_the_release_publishes_by_trusted_publishing_and_the_pack_from_its_export() -> None:
    release = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert "id-token: write" in release and "pypa/gh-action-pypi-publish" in release and "password" not in release
    assert "python -m build --outdir dist ." in release and "packages/demo-weights" in release
    registry = (ROOT / ".github" / "workflows" / "comfy-registry.yml").read_text()
    assert "make comfyui-pack" in registry and "working-directory: dist/comfyui/freeu" in registry
    tests = (ROOT / ".github" / "workflows" / "tests.yml").read_text()
    assert "run: make demo" in tests and "run: make test" in tests  # the README's two set-up commands
