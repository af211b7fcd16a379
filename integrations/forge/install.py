"""Forge runs this file when the extension is installed ("Install from URL", the Available tab) and at each start-up
(unless ``--skip-install``): it installs the ``freeu`` library into Forge's own Python, at the version this
extension was made for, with Forge's own helper (``launch.run_pip``, which honours Forge's ``--index-url`` and pip's
usual settings, e.g. ``PIP_FIND_LINKS`` for a folder of wheels when offline). Nothing is done when that version is
already installed."""

from importlib import metadata

import launch

#: The freeu version this extension was made for (freeu's own; tests/hosts/test_forge_pack.py checks they agree).
FREEU_VERSION = "0.1.0"


def installed_version() -> str | None:
    try:
        return metadata.version("freeu")
    except metadata.PackageNotFoundError:
        return None


if installed_version() != FREEU_VERSION:
    launch.run_pip(f'install "freeu=={FREEU_VERSION}"', f"freeu {FREEU_VERSION} for the FreeU (freeu) extension")
