"""A host's Python before ``freeu`` is installed into it: a new virtual environment that sees every package of a given
environment (the test environment for ComfyUI, ``.venv/forge`` for Forge) through a folder of links, except ``freeu``
and its demo weights (editable installs there). The host-install tests install ``freeu`` into it the way users do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

#: Entries of a site-packages folder left out: freeu, the demo weights, editable-install hooks, .pth files (a folder
#: named in a .pth file has its own .pth files ignored anyway).
LEFT_OUT = ("freeu", "__editable__", "_freeu", "__pycache__")


def python_without_freeu(base_python: str | Path, folder: Path) -> Path:
    """The ``python`` of a new environment at ``folder`` with ``base_python``'s packages but not freeu."""
    code = "import site; print(next(p for p in site.getsitepackages() if p.endswith('site-packages')))"
    site_packages = Path(subprocess.check_output([str(base_python), "-c", code], text=True).strip())
    shadow = folder / "site-packages-without-freeu"
    shadow.mkdir(parents=True)
    for entry in site_packages.iterdir():
        name = entry.name.lower()
        if not name.startswith(LEFT_OUT) and not name.endswith(".pth"):
            (shadow / entry.name).symlink_to(entry)
    env = folder / "venv"
    subprocess.run([str(base_python), "-m", "venv", str(env)], check=True, capture_output=True)
    (env_site,) = (env / "lib").glob("python3*/site-packages")
    # ensurepip's setuptools can be older than torch needs: the linked one stands instead
    for old in [*env_site.glob("setuptools*"), env_site / "pkg_resources", env_site / "_distutils_hack"]:
        if old.is_dir():
            shutil.rmtree(old)
    (env_site / "distutils-precedence.pth").unlink(missing_ok=True)
    (env_site / "host-packages.pth").write_text(f"{shadow}\n")
    return env / "bin" / "python"
