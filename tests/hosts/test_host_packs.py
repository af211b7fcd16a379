"""The host packs as their users receive them, without the hosts. The ComfyUI pack: the Registry's fields
(its documented specification: https://docs.comfy.org/registry/specifications), the versions that must agree with
the library's, the exported folder and zip, and the example workflow in the frontend's UI format. The Forge
extension: the version its installer installs, and its export as a repository whose root is the extension."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

import freeu

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "integrations" / "comfyui"


def test_the_registry_fields_are_complete_and_the_versions_agree() -> None:
    meta = tomllib.loads((PACK / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    # name: under 100 characters of letters, digits, '-', '_', '.', no two special characters in a row, starting
    # with a letter; the Registry advises against "ComfyUI" in it
    name = project["name"]
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", name) and len(name) < 100
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["version"] == freeu.__version__
    assert project["description"] and project["license"] == {"file": "LICENSE"}
    assert project["dependencies"] == [f"freeu=={freeu.__version__}"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", project["urls"]["Repository"])
    assert re.fullmatch(r"[a-z0-9-]+", comfy["PublisherId"]) and comfy["DisplayName"] == "FreeU (freeu)"
    assert comfy["Icon"].startswith("https://") and comfy["Icon"].endswith("/integrations/comfyui/icon.png")
    assert (PACK / "icon.png").stat().st_size > 1000
    requirements = [line for line in (PACK / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert requirements == [f"freeu=={freeu.__version__}"]


def test_the_export_writes_the_pack_as_its_own_root(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "export_hosts.py"), "comfyui", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    pack = tmp_path / "freeu"  # custom_nodes/freeu: ComfyUI labels the node's source "freeu"
    files = sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file())
    assert files == ["LICENSE", "README.md", "__init__.py", "example_workflows/freeu_sd15.json", "icon.png",
                     "pyproject.toml", "requirements.txt"]  # fmt: skip
    assert (pack / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    with zipfile.ZipFile(tmp_path / "freeu-comfyui.zip") as archive:
        assert sorted(archive.namelist()) == files


def test_the_export_refuses_a_pack_whose_versions_disagree(tmp_path, monkeypatch) -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import export_hosts
    finally:
        sys.path.remove(str(ROOT / "tools"))
    monkeypatch.setattr(export_hosts, "library_version", lambda: "9.9.9")
    try:
        export_hosts.export_comfyui(tmp_path)
    except SystemExit as refused:
        assert "but freeu is 9.9.9" in str(refused) and "requirements.txt" in str(refused)
    else:
        raise AssertionError("a pack of another version was written")
    assert not (tmp_path / "freeu").exists()


def test_the_example_workflow_is_in_the_ui_format_and_shows_what_runs() -> None:
    ui = json.loads((PACK / "example_workflows" / "freeu_sd15.json").read_text())
    assert {"nodes", "links", "last_node_id", "last_link_id", "version"} <= set(ui)  # what the template browser opens
    nodes = {n["id"]: n for n in ui["nodes"]}
    (loader,) = [n for n in nodes.values() if n["type"] == "CheckpointLoaderSimple"]
    assert loader["widgets_values"] == ["v1-5-pruned-emaonly-fp16.safetensors"]  # the name ComfyUI's own SD 1.5 has
    (node,) = [n for n in nodes.values() if n["type"] == "FreeU_freeu"]
    preset, b1, b2, s1, s2, version, convention, *_ = node["widgets_values"]
    config = freeu.PRESETS[preset].config
    assert (b1, b2, s1, s2, version, convention) == (config.b1, config.b2, config.s1, config.s2, str(config.version),
                                                     config.convention)  # fmt: skip
    for link_id, source, slot, target, target_slot, kind in ui["links"]:
        assert link_id in nodes[source]["outputs"][slot]["links"] and nodes[target]["inputs"][target_slot]["link"] == (
            link_id) and nodes[source]["outputs"][slot]["type"] == kind  # fmt: skip


# -- the Forge extension ----------------------------------------------------------------------------------------------

FORGE = ROOT / "integrations" / "forge"


def test_the_forge_extension_installs_the_library_version_it_expects() -> None:
    for name in ("install.py", "scripts/freeu_forge.py"):
        text = (FORGE / name).read_text()
        assert re.search(rf'^FREEU_VERSION = "{re.escape(freeu.__version__)}"$', text, flags=re.MULTILINE), name
    installer = (FORGE / "install.py").read_text()
    assert "launch.run_pip(" in installer and "freeu=={FREEU_VERSION}" in installer  # Forge's own pip helper
    # the repository's root holds nothing Forge would load as an extension's scripts if it were cloned as one
    assert not (ROOT / "scripts").exists() and not (ROOT / "install.py").exists()


def test_the_forge_export_is_a_repository_whose_root_is_the_extension(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "export_hosts.py"), "forge", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(tmp_path / "freeu"), str(clone)], check=True)
    files = sorted(p.relative_to(clone).as_posix() for p in clone.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert files == ["LICENSE", "README.md", "install.py", "scripts/freeu_forge.py"]
