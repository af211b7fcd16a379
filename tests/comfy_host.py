"""Where tests/hosts get the real ComfyUI: a checkout named by FREEU_COMFYUI, or the source snapshot the project's
workplace keeps beside the repository (extracted into a temporary folder; never committed). Tests are skipped,
saying why, when neither is there or a module ComfyUI imports is missing."""

from __future__ import annotations

import importlib.util
import os
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "integrations" / "comfyui"
SNAPSHOTS = sorted((ROOT.parent / "shared" / "vendor").glob("comfyui-*.tar.gz"))
NEEDS = ("einops", "psutil", "av", "safetensors", "torchvision", "scipy", "torchsde", "PIL")


def find_comfyui(tmp_path_factory) -> Path:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
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
