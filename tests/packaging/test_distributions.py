"""The distributions as a user gets them (issue #28): the wheel and sdist of ``freeu`` built with ``python -m build``,
installed into a fresh virtual environment that has nothing but what pip brings with them, and used there. The
demo weights are a distribution of their own (``packages/demo-weights``). Slow: a fresh environment installs torch
(from this machine's wheel folder) and diffusers; a few minutes on 2 cores."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import freeu

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "packages" / "demo-weights"


def _run(*argv: str | Path, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _ok(*argv: str | Path, **kwargs) -> str:
    done = _run(*argv, **kwargs)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` of both projects (no build isolation: setuptools from this environment, offline)."""
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    for project in (ROOT, WEIGHTS):
        _ok(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, project, timeout=600)
    return out


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, dist) -> Path:
    """A new virtual environment with the ``freeu`` wheel installed: torch and what it needs, nothing else."""
    env = tmp_path_factory.mktemp("env") / "venv"
    _ok(sys.executable, "-m", "venv", env)
    _ok(env / "bin" / "python", "-m", "pip", "install", "--quiet", _wheel(dist, "freeu"), timeout=1200)
    return env


def _wheel(dist: Path, name: str) -> Path:
    (wheel,) = dist.glob(f"{name}-*.whl")
    return wheel


def test_the_library_wheel_is_small_and_holds_no_weights(dist) -> None:
    wheel = _wheel(dist, "freeu")
    assert wheel.name == f"freeu-{freeu.__version__}-py3-none-any.whl"
    assert wheel.stat().st_size < 1_000_000, wheel.stat().st_size
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith((".safetensors", ".pt", ".pth", ".bin", ".png"))]
    assert "freeu/apps/cli.py" in names and "freeu/hooks.py" in names
    (sdist,) = dist.glob(f"freeu-{freeu.__version__}.tar.gz")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert not [n for n in members if n.endswith(".safetensors")] and sdist.stat().st_size < 1_000_000
    weights = zipfile.ZipFile(_wheel(dist, "freeu_demo_weights")).namelist()
    for folder in ("weights", "weights-classes"):
        assert f"freeu_demo_weights/{folder}/unet.safetensors" in weights
        assert f"freeu_demo_weights/{folder}/config.json" in weights


def test_the_core_runs_with_torch_alone(fresh) -> None:
    installed = _ok(fresh / "bin" / "python", "-m", "pip", "list", "--format=freeze").lower()
    assert "freeu==" in installed and "torch==" in installed and "diffusers" not in installed
    script = textwrap.dedent(
        """
        import sys
        import torch
        from torch import nn
        import freeu

        class Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.down = nn.Conv2d(4, 8, 3, stride=2, padding=1)
                self.mid = nn.Conv2d(8, 16, 3, stride=2, padding=1)
                self.up = nn.ModuleList([nn.Conv2d(32, 8, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1)])

            def forward(self, x):
                a = self.down(x)
                b = self.mid(a)
                h = self.up[0](torch.cat([b, b], dim=1))
                h = nn.functional.interpolate(h, scale_factor=2)
                return self.up[1](torch.cat([h, a], dim=1))

        model = Tiny().eval()
        x = torch.randn(1, 4, 16, 16)
        plain = model(x)
        layout = freeu.CustomUNet(joins={"up.0": 16, "up.1": 8}, base_channels=4)
        with freeu.apply(model, preset="sd15", layout=layout):
            changed = model(x)
        assert not torch.equal(changed, plain) and torch.equal(model(x), plain)
        outside = sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in
                         {"diffusers", "transformers", "numpy", "PIL", "safetensors", "matplotlib"})
        print("imported:", outside, freeu.__version__)
        """
    )
    printed = _ok(fresh / "bin" / "python", "-c", script)
    assert printed.strip() == f"imported: [] {freeu.__version__}"


def test_extras_give_the_command_line_and_the_demo_asks_for_its_weights(fresh, dist) -> None:
    pip = [fresh / "bin" / "python", "-m", "pip", "install", "--quiet"]  # the built wheels by path, never an index's
    _ok(*pip, f"{_wheel(dist, 'freeu')}[diffusers,demo]", timeout=1200)
    freeu_cli = fresh / "bin" / "freeu"
    assert _ok(freeu_cli, "--version").strip() == f"freeu {freeu.__version__}"
    assert "--preset" in _ok(freeu_cli, "generate", "--help")
    missing = _run(freeu_cli, "demo", "--seeds", "1", "--steps", "1", "--out", dist.parent / "demo")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert "pip install freeu-demo-weights" in missing.stderr.strip().splitlines()[-1], missing.stderr
    _ok(*pip, _wheel(dist, "freeu_demo_weights"))
    ran = _ok(freeu_cli, "demo", "--seeds", "1", "--steps", "1", "--no-progress", "--out", dist.parent / "demo")
    assert "wrote" in ran
