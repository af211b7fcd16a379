"""Where tests/hosts get the real ComfyUI: a checkout named by FREEU_COMFYUI, or the source snapshot the project's
workplace keeps beside the repository (extracted into a temporary folder; never committed). Tests are skipped,
saying why, when neither is there or a module ComfyUI imports is missing."""

from __future__ import annotations

import importlib.util
import os
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "integrations" / "comfyui"
SNAPSHOTS = sorted((ROOT.parent / "shared" / "vendor").glob("comfyui-*.tar.gz"))
NEEDS = ("einops", "psutil", "av", "safetensors", "scipy", "torchsde", "PIL")
#: torchvision for ComfyUI's subprocesses only (the Makefile puts it here: in the test process it would break
#: transformers' imports on a CPU torch).
EXTRAS = Path(sys.prefix) / "comfyui-extras"


def subprocess_env() -> dict[str, str]:
    """The environment of a ComfyUI subprocess: torchvision's folder on its path, warnings quiet."""
    path = os.pathsep.join(p for p in (str(EXTRAS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}


def find_comfyui(tmp_path_factory) -> Path:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if not (EXTRAS / "torchvision").is_dir() and importlib.util.find_spec("torchvision") is None:
        missing.append(f"torchvision (in {EXTRAS})")
    if missing:
        pytest.skip(f"ComfyUI's modules need {', '.join(missing)} (requirements-dev.txt installs them)")
    if os.environ.get("FREEU_COMFYUI"):
        return Path(os.environ["FREEU_COMFYUI"])
    if not SNAPSHOTS:
        pytest.skip("no ComfyUI: set FREEU_COMFYUI to a ComfyUI checkout (no snapshot beside the repository)")
    folder = tmp_path_factory.mktemp("comfyui")
    with tarfile.open(SNAPSHOTS[-1]) as archive:
        archive.extractall(folder, filter="data")
    return folder / "ComfyUI"
