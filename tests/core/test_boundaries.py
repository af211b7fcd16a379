"""The layers of the package, read from its import statements with ``ast``.

- The core stands alone: it needs only torch and imports nothing from the applications (``freeu.apps``).
- The applications' shared modules (the runtime, options, imaging, measures, ...) import no command's package.
- No import circle among ``freeu``'s modules, counting imports inside functions.
- No module imports another's private name (``from x import _name``, ``x._name``).
- No function over 80 lines or 8 parameters without a ``# size:`` comment in it saying why.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import textwrap
import tokenize
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "freeu"
TESTS = Path(__file__).resolve().parents[1]
#: The command-line launcher (``python -m freeu``) is a script, not a module of the library: nothing imports it.
LAUNCHER = PACKAGE / "__main__.py"
OPTIONAL = ("diffusers", "transformers", "matplotlib", "gradio", "accelerate", "safetensors", "PIL", "tqdm")


def core_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "apps" not in p.relative_to(PACKAGE).parts and p != LAUNCHER)


def import_nodes(path: Path, package: str | None = None) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every ``import`` statement of ``path``, anywhere in the file (inside functions too), with the module it
    imports from made absolute (``""`` for a plain ``import``; ``package``: the file's package, by default from its
    place under ``src``)."""
    if package is None:
        package = ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield node, ""
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                stem = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            yield node, stem


def imported_modules(path: Path, package: str | None = None) -> list[str]:
    """Every module an ``import`` statement of ``path`` names, anywhere in the file, relative ones made absolute
    (``from a import b`` names ``a`` and ``a.b``, whether ``b`` is a module or not)."""
    found = []
    for node, stem in import_nodes(path, package):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        else:
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


# -- the applications' layers and the module graph ------------------------------------------------------------------

APPS = PACKAGE / "apps"
#: The commands of ``freeu``: packages or modules of ``freeu.apps`` that only the launcher (``freeu.apps.cli``, which
#: reaches them by name) and other commands may import.
COMMANDS = ("demo", "analyze", "evaluate", "tune", "generate", "ui", "plan")


def shared_app_modules() -> list[Path]:
    """The modules of ``freeu.apps`` that are neither a command nor the launcher: what the commands share."""
    return sorted(p for p in APPS.glob("*.py") if p.stem not in (*COMMANDS, "cli"))


def command_imports(path: Path, package: str | None = None) -> list[str]:
    """What ``path`` imports from a command's package or module."""
    commands = [f"freeu.apps.{c}" for c in COMMANDS]
    names = imported_modules(path, package)
    return sorted({n for n in names for c in commands if n == c or n.startswith(f"{c}.")})


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(src: Path = SRC, top: str = "freeu") -> dict[str, Path]:
    """Every module of the package ``top`` under ``src``, by name (a package by its ``__init__.py``)."""
    return {module_name(p, src): p for p in sorted((src / top).rglob("*.py"))}


def package_of(path: Path, src: Path) -> str:
    return ".".join(path.relative_to(src).with_suffix("").parts[:-1])


def import_graph(src: Path = SRC, top: str = "freeu") -> dict[str, set[str]]:
    """Each module of ``top`` -> the modules of ``top`` its import statements run, wherever they stand (inside
    functions too): ``from p import x`` runs ``p.x`` where that is a module, else ``p``; ``import a.b`` runs ``a.b``;
    and each also runs the packages above it that are not above the importer (those are already being imported)."""
    modules = modules_of(src, top)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node, stem in import_nodes(path, package_of(path, src)):
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            else:
                named = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            for target in named:
                parts = target.split(".")
                above = {".".join(parts[:i]) for i in range(1, len(parts))}
                targets |= {target} & modules.keys()
                targets |= {p for p in above & modules.keys() if not (name == p or name.startswith(f"{p}."))}
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of ``graph`` as ``[a, b, ..., a]`` (each imports the next), or ``[]`` if there is none."""
    state: dict[str, str] = {}
    for start in sorted(graph):
        if start in state:
            continue
        state[start] = "open"
        path, stack = [start], [iter(sorted(graph[start]))]
        while stack:
            for child in stack[-1]:
                if state.get(child) == "open":
                    return [*path[path.index(child) :], child]
                if child not in state:
                    state[child] = "open"
                    path.append(child)
                    stack.append(iter(sorted(graph.get(child, ()))))
                    break
            else:
                state[path.pop()] = "done"
                stack.pop()
    return []


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else ``None``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := dotted(node.value)) is not None:
        return f"{base}.{node.attr}"
    return None


def private_imports(src: Path = SRC, top: str = "freeu") -> list[str]:
    """``module: from x import _name`` (or ``import x._y``) and ``module: x._name`` (an attribute of a module bound by
    an import), for every module of ``top`` that reaches a private name of another one."""
    modules = modules_of(src, top)
    found = []
    for name, path in modules.items():
        bound: dict[str, str] = {}  # a local name -> the module of ``top`` it is
        for node, stem in import_nodes(path, package_of(path, src)):
            for alias in node.names:
                if isinstance(node, ast.Import):
                    if alias.name.split(".")[0] != top:
                        continue
                    if any(is_private(part) for part in alias.name.split(".")):
                        found.append(f"{name}: import {alias.name}")
                    local = alias.asname or alias.name.split(".")[0]
                    bound[local] = alias.name if alias.asname else top
                elif stem == top or stem.startswith(f"{top}."):
                    if is_private(alias.name) and stem != name:
                        found.append(f"{name}: from {stem} import {alias.name}")
                    if f"{stem}.{alias.name}" in modules:
                        bound[alias.asname or alias.name] = f"{stem}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and is_private(node.attr) and (chain := dotted(node.value)):
                first, _, rest = chain.partition(".")
                target = ".".join(filter(None, [bound.get(first, ""), rest])) if first in bound else None
                if target in modules and target != name:
                    found.append(f"{name}: {target}.{node.attr}")
    return found


def test_the_layering_rules_see_a_planted_command_import_cycle_and_private_name(tmp_path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from .demo.showcase import X\nfrom .demo_model import Y\nfrom . import options, plotting\n"
        "def f():\n    from .evaluate import cli\n    import freeu.apps.ui\n"
    )
    assert command_imports(probe, "freeu.apps") == [
        "freeu.apps.demo.showcase", "freeu.apps.demo.showcase.X", "freeu.apps.evaluate", "freeu.apps.evaluate.cli",
        "freeu.apps.ui"]  # fmt: skip

    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .c import thing\n",
        "c.py": "import pkg.a\n",
        "d.py": "from .sub.leaf import v\n",
        "sub/__init__.py": "from ..d import w\n",
        "sub/leaf.py": "v = 1\n",
        "e.py": "from .a import _hidden, __doc__\nfrom . import a as mod\nimport pkg.b\n"
        "def g():\n    return mod._inner, mod.__name__, pkg.b._other, pkg.b.f\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.sub", "pkg.sub.leaf"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (package / "c.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.d", "pkg.sub", "pkg.d"]  # through the package's init
    (package / "sub/__init__.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) == []
    assert private_imports(tmp_path, "pkg") == ["pkg.e: from pkg.a import _hidden", "pkg.e: pkg.a._inner",
                                                "pkg.e: pkg.b._other"]  # fmt: skip


def test_the_shared_application_modules_import_no_command() -> None:
    """The runtime, options, imaging, measures, plotting, ... are below the commands: none imports one (the runtime
    loads the bundled demo model through ``freeu.apps.demo_model``, not the demo command's package)."""
    modules = shared_app_modules()
    assert {p.stem for p in modules} >= {"runtime", "options", "imaging", "errors", "measures", "plotting", "guidance",
                                         "demo_model", "demo_data"}  # fmt: skip
    offending = {str(p.relative_to(SRC)): names for p in modules if (names := command_imports(p))}
    assert offending == {}


def test_no_import_circle_among_the_modules() -> None:
    graph = import_graph()
    assert len(graph) > 40 and "freeu.apps.demo_model" in graph["freeu.apps.runtime"]  # imported in a function
    cycle = find_cycle(graph)
    assert cycle == [], "import circle: " + " -> ".join(cycle)


def test_no_module_imports_a_private_name_of_another() -> None:
    assert private_imports() == []


# -- function sizes -------------------------------------------------------------------------------------------------

#: The review's rule: no function over about this many lines (docstring included) or parameters (``self``, ``cls``,
#: ``*args`` and ``**kwargs`` left out) without a reason stated in it.
MAX_LINES, MAX_PARAMETERS = 80, 8
#: A stated reason: a comment in the function's own lines (not a nested function's) starting with this, then the
#: reason.
SIZE_REASON = "# size:"


def size_reasons(text: str) -> dict[int, str]:
    """Line -> reason of every ``# size: REASON`` comment of a source text."""
    reasons = {}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT and token.string.startswith(SIZE_REASON):
            reasons[token.start[0]] = token.string[len(SIZE_REASON) :].strip()
    return reasons


def oversized_functions(root: Path) -> list[str]:
    """``path:line name: N lines, M parameters`` for each function under ``root`` over :data:`MAX_LINES` lines or
    :data:`MAX_PARAMETERS` parameters whose own lines hold no ``# size:`` comment with a reason."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        reasons = [line for line, reason in size_reasons(text).items() if reason]
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            end = node.end_lineno or node.lineno
            lines = end - node.lineno + 1
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            parameters = len([a for a in arguments if a.arg not in ("self", "cls")])
            if lines <= MAX_LINES and parameters <= MAX_PARAMETERS:
                continue
            nested = [
                range(inner.lineno, (inner.end_lineno or inner.lineno) + 1)
                for inner in ast.walk(node)
                if inner is not node and isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            ]
            if not any(node.lineno <= line <= end and not any(line in r for r in nested) for line in reasons):
                where = path.relative_to(root).as_posix()
                found.append(f"{where}:{node.lineno} {node.name}: {lines} lines, {parameters} parameters")
    return found


def test_the_size_rule_sees_a_planted_long_function_without_a_reason(tmp_path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    many = ", ".join(f"p{i}" for i in range(MAX_PARAMETERS + 1))
    text = (
        f"def long():\n{body}"
        f"def long_with_reason():\n    # size: a table of constants, one per line\n{body}"
        f"def long_with_an_empty_reason():\n    # size:\n{body}"
        f"def wide({many}):\n    pass\n"
        f"def wide_with_reason({many}):  # size: the callback's caller passes them all\n    pass\n"
        f"class C:\n    def method(self, {', '.join(f'p{i}' for i in range(MAX_PARAMETERS))}):\n        pass\n"
        f"def outer():\n    def inner():\n        # size: inner's reason is not outer's\n        pass\n{body}"
        f"def short(a, b):\n    return a + b\n"
    )
    (tmp_path / "probe.py").write_text(text)
    line = {t.split("(")[0].split()[-1]: i for i, t in enumerate(text.splitlines(), 1) if t.lstrip().startswith("def")}
    assert oversized_functions(tmp_path) == [
        f"probe.py:{line['long']} long: {MAX_LINES + 1} lines, 0 parameters",
        f"probe.py:{line['long_with_an_empty_reason']} long_with_an_empty_reason: {MAX_LINES + 2} lines, 0 parameters",
        f"probe.py:{line['wide']} wide: 2 lines, {MAX_PARAMETERS + 1} parameters",
        f"probe.py:{line['outer']} outer: {MAX_LINES + 4} lines, 0 parameters",
    ]


def test_every_long_or_wide_function_states_why() -> None:
    """No function in ``src/freeu`` over 80 lines or 8 parameters without a ``# size:`` comment saying why: a
    function doing several things is split, and parameters that travel together are grouped."""
    assert oversized_functions(PACKAGE) == []
