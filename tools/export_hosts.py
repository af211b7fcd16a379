"""Write the host integrations the way their users receive them (standard library only).

    python tools/export_hosts.py comfyui OUT   # OUT/freeu/: the ComfyUI pack as ComfyUI Manager and the Comfy
                                               # Registry receive it (its root is the pack), and OUT/freeu-comfyui.zip
    python tools/export_hosts.py forge OUT     # OUT/freeu/: the Forge extension as a git repository of its own
                                               # whose root is the extension, for Forge's "Install from URL"

The pack's version, the library version its ``requirements.txt`` pins and the Registry's ``pyproject.toml``, and the
version the Forge extension's ``install.py`` installs, must all be ``freeu.__version__`` (read from
``src/freeu/__init__.py``, the one place it is written); the export refuses to write one where they disagree.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = ROOT / "integrations" / "comfyui"
FORGE = ROOT / "integrations" / "forge"
#: The folder name the pack gets under ``custom_nodes/``: ComfyUI labels a node's source by it.
PACK_NAME = "freeu"


def library_version() -> str:
    text = (ROOT / "src" / "freeu" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', text, flags=re.MULTILINE)
    if found is None:
        raise SystemExit("src/freeu/__init__.py has no __version__ line")
    return found.group(1)


def pack_versions(folder: Path) -> dict[str, str]:
    """The versions the pack states: its Registry version, its dependency pin, its requirements.txt pin."""
    pyproject = (folder / "pyproject.toml").read_text(encoding="utf-8")
    requirements = (folder / "requirements.txt").read_text(encoding="utf-8")
    found = {
        "pyproject.toml version": re.search(r'^version = "([^"]+)"$', pyproject, flags=re.MULTILINE),
        "pyproject.toml dependency": re.search(r'^dependencies = \["freeu==([^"]+)"\]$', pyproject, re.MULTILINE),
        "requirements.txt": re.search(r"^freeu==(\S+)$", requirements, flags=re.MULTILINE),
    }
    return {name: match.group(1) if match else "missing" for name, match in found.items()}


def _copy(source: Path, versions: dict[str, str], out: Path) -> tuple[Path, str]:
    """``source`` copied to ``out/freeu`` (replacing an earlier export) with the license, and the library version,
    once every version ``source`` states (``versions``) is the library's; ``SystemExit`` naming those that differ."""
    version = library_version()
    wrong = {name: v for name, v in versions.items() if v != version}
    if wrong:
        raise SystemExit(f"{source.relative_to(ROOT)} states {wrong}, but freeu is {version}: make them agree")
    folder = out / PACK_NAME
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "LICENSE", folder / "LICENSE")
    return folder, version


def export_comfyui(out: Path) -> Path:
    pack, _ = _copy(COMFYUI, pack_versions(COMFYUI), out)
    archive = out / "freeu-comfyui.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(pack.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(pack).as_posix())  # the Registry's zip: the pack at its root
    return pack


def forge_versions(folder: Path) -> dict[str, str]:
    """The freeu version the extension's installer installs and the one its script expects."""
    found = {}
    for name in ("install.py", "scripts/freeu_forge.py"):
        match = re.search(r'^FREEU_VERSION = "([^"]+)"$', (folder / name).read_text(encoding="utf-8"), re.MULTILINE)
        found[name] = match.group(1) if match else "missing"
    return found


def export_forge(out: Path) -> Path:
    """The extension as its own git repository (one commit): ``git clone`` of it, which is what "Install from URL"
    does, gives ``install.py``, ``scripts/``, the README and the license at the root of ``extensions/NAME``."""
    repo, version = _copy(FORGE, forge_versions(FORGE), out)
    git = ["git", "-C", str(repo), "-c", "user.name=freeu", "-c", "user.email=freeu@localhost"]
    for command in (["init", "--quiet", "--initial-branch=main"], ["add", "--all"],
                    ["commit", "--quiet", "-m", f"FreeU (freeu) Forge extension for freeu {version}"]):  # fmt: skip
        subprocess.run([*git, *command], check=True, capture_output=True)
    return repo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host", choices=["comfyui", "forge"], help="which integration to write")
    parser.add_argument("out", type=Path, help="the folder to write it into (created if missing)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = export_comfyui(args.out) if args.host == "comfyui" else export_forge(args.out)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
