"""The core stands alone: it needs only torch and imports nothing from the applications (``freeu.apps``)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "freeu"
TESTS = Path(__file__).resolve().parents[1]
#: The command-line launcher (``python -m freeu``) is a script, not a module of the library: nothing imports it.
LAUNCHER = PACKAGE / "__main__.py"
OPTIONAL = ("diffusers", "transformers", "matplotlib", "gradio", "accelerate", "safetensors", "PIL", "tqdm")


def core_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "apps" not in p.relative_to(PACKAGE).parts and p != LAUNCHER)


def imported_modules(path: Path, package: str | None = None) -> list[str]:
    """Every module an ``import`` statement of ``path`` names, anywhere in the file, relative ones made absolute
    (``package``: the file's package, by default from its place under ``src``)."""
    if package is None:
        package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                stem = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found += [stem] + [f"{stem}.{alias.name}" for alias in node.names]
    return found


def test_the_import_reader_sees_every_way_of_reaching_the_applications(tmp_path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from ..apps import runtime\nfrom . import base\nimport freeu.apps.cli\ndef f():\n    from .. import apps\n"
    )
    names = imported_modules(probe, "freeu.models")
    assert names == ["freeu.apps", "freeu.apps.runtime", "freeu.models", "freeu.models.base", "freeu.apps.cli",
                     "freeu", "freeu.apps"]  # fmt: skip


def test_no_core_module_imports_from_the_applications() -> None:
    modules = core_modules()
    assert {p.name for p in modules} >= {"config.py", "fourier.py", "backbone.py", "hooks.py", "custom.py"}
    offending = {
        str(path.relative_to(SRC)): names
        for path in modules
        if (names := [n for n in imported_modules(path) if n == "freeu.apps" or n.startswith("freeu.apps.")])
    }
    assert offending == {}


def test_the_core_imports_only_torch_and_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"torch", "freeu", "__future__"}
    outside = {
        str(path.relative_to(SRC)): sorted({n.split(".")[0] for n in imported_modules(path)} - allowed)
        for path in core_modules()
    }
    assert {k: v for k, v in outside.items() if v} == {}


def test_freeu_applies_to_a_custom_unet_where_no_optional_dependency_can_be_imported() -> None:
    """In a fresh interpreter where importing any optional dependency raises: import the core, apply FreeU to a
    diffusers-free U-Net described with CustomUNet, compare with the independent reference, remove bit-exactly."""
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        BLOCKED = {OPTIONAL!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked in this test")
                return None

        sys.meta_path.insert(0, Block())
        sys.path[:0] = [{str(SRC)!r}, {str(TESTS)!r}]

        import torch
        from torch import nn

        import freeu
        from reference import reference_backbone, reference_fourier

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.inc = nn.Conv2d(3, 8, 3, padding=1)
                self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
                self.deep = nn.Conv2d(16, 32, 3, stride=2, padding=1)
                self.dec = nn.ModuleList([nn.Conv2d(64, 16, 3, padding=1), nn.Conv2d(32, 8, 3, padding=1)])

            def forward(self, x, join=None):
                x0 = self.inc(x); x1 = self.down(x0); h = self.deep(x1)
                for i, skip in enumerate([h, x1]):
                    if join is not None:
                        h, skip = join(i, h, skip)
                    h = self.dec[i](torch.cat([h, skip], dim=1))
                    if i == 0:
                        h = nn.functional.interpolate(h, scale_factor=2)
                return h

        torch.manual_seed(0)
        net = Net().eval()
        x = torch.randn(2, 3, 16, 16)
        layout = freeu.CustomUNet(joins={{"dec.0": 32, "dec.1": 16}}, base_channels=8)
        config = freeu.FreeUConfig(1.5, 1.6, 0.9, 0.2)
        with torch.no_grad():
            before = net(x)
            with freeu.apply(net, config, layout=layout):
                patched = net(x)

            def join(i, h, skip):
                b, s = config.stage_factors(i + 1)
                return reference_backbone(h, b, 2), reference_fourier(skip, 1, s)

            expected = net(x, join)
            after = net(x)
        assert torch.equal(after, before), "not restored"
        error = (patched - expected).abs().max().item()
        assert error < 1e-5, error
        assert (patched - before).abs().max().item() > 1e-3
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("freeu.apps"))
        assert loaded == [], loaded
        print("ok", error)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
