"""Where tests/hosts get the real Forge (Stable Diffusion WebUI Forge) and the Python that runs it.

Forge: a checkout named by FREEU_FORGE (set up by Forge itself: its ``repositories/`` in place), or the source
snapshot the project's workplace keeps beside the repository, extracted into a temporary folder with the model
detection package Forge's set-up would clone into ``repositories/huggingface_guess`` (never committed).
Its Python: FREEU_FORGE_PYTHON, or the environment ``make test`` builds from that snapshot's requirements
(``.venv/forge``). Forge's pins (gradio 4, transformers 4.46, numpy 1.26, ...) cannot share the test environment.
Tests are skipped, saying why, when either is missing. A user's checkout is only read: the extension, models and
outputs go into a data folder of the test's (``--data-dir``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = ROOT / "integrations" / "forge"
VENDOR = ROOT.parent / "shared" / "vendor"
SNAPSHOTS = sorted(VENDOR.glob("forge-*.tar.gz"))
GUESS = sorted(VENDOR.glob("huggingface_guess-*.tar.gz"))
#: the environment the Makefile builds for Forge (beside the test environment's own files)
DEFAULT_PYTHON = Path(sys.prefix) / "forge" / "bin" / "python"


def forge_python() -> Path:
    python = Path(os.environ.get("FREEU_FORGE_PYTHON", DEFAULT_PYTHON))
    if not python.exists():
        pytest.skip(
            f"no Python for Forge at {python}: `make test` builds it from Forge's snapshot, or set "
            f"FREEU_FORGE_PYTHON to a Python with Forge's requirements and freeu installed"
        )
    done = subprocess.run([str(python), "-c", "import freeu, gradio"], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"{python} cannot import freeu and gradio: {done.stderr.strip().splitlines()[-1:]}")
    return python


def find_forge(tmp_path_factory) -> Path:
    if os.environ.get("FREEU_FORGE"):
        return Path(os.environ["FREEU_FORGE"])
    if not SNAPSHOTS or not GUESS:
        pytest.skip("no Forge: set FREEU_FORGE to a Forge checkout (no snapshot beside the repository)")
    folder = tmp_path_factory.mktemp("forge")
    with tarfile.open(SNAPSHOTS[-1]) as archive:
        archive.extractall(folder, filter="data")
    forge = folder / "stable-diffusion-webui-forge"
    repositories = forge / "repositories"
    with tarfile.open(GUESS[-1]) as archive:
        archive.extractall(repositories, filter="data")
    # the web UI serves this clone of Forge's set-up as static files; empty is enough offline
    (repositories / "stable-diffusion-webui-assets").mkdir(exist_ok=True)
    return forge


def subprocess_env(scratch: Path) -> dict[str, str]:
    """A Forge subprocess's environment: Hugging Face's cache in a scratch folder, no network, warnings quiet."""
    return {**os.environ, "HF_HOME": str(scratch), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
