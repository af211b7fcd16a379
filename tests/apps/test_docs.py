"""The README is a front door and the documentation holds together: the README's length, its install line, set-up
commands, citation and license; the LICENSE file; CITATION.cff's version; and every relative link (and anchor) in
README.md and docs/*.md resolves to a file, or a heading, that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", flags=re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", flags=re.DOTALL)
LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", flags=re.MULTILINE)


def without_code(text: str) -> str:
    """The text with fenced code blocks and inline code spans removed (links inside them are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def sections(text: str) -> dict[str, str]:
    """Level-2 sections of a Markdown text: heading text -> body (fenced code included)."""
    parts = re.split(r"^## +(.+?)[ \t]*$", text, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2, ... suffixes for repeated headings."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """The targets of a Markdown file's links and images that are neither URLs nor e-mail addresses."""
    targets = LINK.findall(without_code(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.IGNORECASE)]


def test_readme_is_a_front_door_of_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_has_an_install_line():
    text = README.read_text(encoding="utf-8")
    assert re.search(r"^\s*pip install \S", text, flags=re.MULTILINE), "README.md has no `pip install` line"
    assert "pip install freeu" in text


def test_readme_set_up_keeps_make_demo_and_make_test():
    setup = sections(README.read_text(encoding="utf-8")).get("Set up")
    assert setup is not None, "README.md has no '## Set up' section"
    commands = [line.split("#")[0].strip() for line in setup.splitlines()]
    assert "make demo" in commands and "make test" in commands, setup


def test_readme_cites_the_paper_in_bibtex():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```bibtex\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    entries = [b for b in blocks if re.match(r"\s*@inproceedings\{\w+,", b)]
    assert entries, "README.md has no ```bibtex block with an @inproceedings entry"
    assert "FreeU: Free Lunch in Diffusion U-Net" in entries[0]
    assert "Si, Chenyang and Huang, Ziqi and Jiang, Yuming and Liu, Ziwei" in entries[0]
    assert entries[0].count("{") == entries[0].count("}")


def test_readme_license_section_names_apache_2():
    license_section = sections(README.read_text(encoding="utf-8")).get("License")
    assert license_section is not None, "README.md has no '## License' section"
    assert "Apache-2.0" in license_section
    assert "LICENSE" in license_section


def test_license_file_is_the_apache_license_2():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0" in text
    # the full text, not a notice: its terms from the first definition to the end
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    for project in (ROOT, ROOT / "packages" / "demo-weights"):  # the library and the weights distribution
        pyproject = (project / "pyproject.toml").read_text(encoding="utf-8")
        assert re.search(r'^license = "Apache-2.0"\nlicense-files = \["LICENSE"\]$', pyproject, flags=re.MULTILINE)
        assert (project / "LICENSE").read_text(encoding="utf-8") == text


def test_citation_file_matches_the_package_version_and_license():
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    # the version is written once, in freeu/__init__.py, and pyproject.toml reads it from there
    init = (ROOT / "src" / "freeu" / "__init__.py").read_text(encoding="utf-8")
    version = re.search(r'^__version__ = "([^"]+)"$', init, re.MULTILINE)
    assert version is not None
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and 'version = { attr = "freeu.__version__" }' in pyproject
    assert not re.search(r"^version = \"", pyproject, flags=re.MULTILINE)  # no second copy
    assert re.search(rf'^version: "?{re.escape(version.group(1))}"?$', citation, flags=re.MULTILINE), version.group(1)
    assert re.search(r"^cff-version: 1\.2\.0$", citation, flags=re.MULTILINE)
    assert re.search(r"^license: Apache-2\.0$", citation, flags=re.MULTILINE)
    assert re.search(r"^preferred-citation:\n  type: conference-paper$", citation, flags=re.MULTILINE)


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_links_and_skips_code():
    sample = "See [a](docs/a.md#x) and ![b](img.png), [c](https://x.org), `[d](e.md)`\n```\n[f](g.md)\n```\n"
    tmp = [t for t in LINK.findall(without_code(sample)) if not t.startswith("http")]
    assert tmp == ["docs/a.md#x", "img.png"]
    assert slug("`freeu eval`: measuring what FreeU does, honestly") == "freeu-eval-measuring-what-freeu-does-honestly"
    assert slug('ComfyUI: the "FreeU (freeu)" node') == "comfyui-the-freeu-freeu-node"
    assert slug("1.1 Backbone scaling") == "11-backbone-scaling"
