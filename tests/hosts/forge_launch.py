"""Start the real Forge from its folder with Forge's own ``launch.py`` and the arguments given, after making
torchvision importable on a CPU torch (forge_setup.py). Usage: FORGE_PYTHON forge_launch.py FORGE_DIR ARGS...

With ``FREEU_RUN_EXTENSION_INSTALLERS=1`` it first runs Forge's own ``run_extensions_installers``: the step of Forge's
start-up that runs each extension's ``install.py``, which the tests' ``--skip-prepare-environment`` skips together
with the rest of that preparation (it clones repositories and installs torch, which needs the network)."""

import os
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forge_setup  # noqa: E402

forge_dir = Path(sys.argv[1]).resolve()
forge_setup.define_torchvision_schemas()
os.chdir(forge_dir)
sys.path.insert(0, str(forge_dir))
sys.argv = [str(forge_dir / "launch.py"), *sys.argv[2:]]
if os.environ.get("FREEU_RUN_EXTENSION_INSTALLERS") == "1":
    from modules import launch_utils

    launch_utils.run_extensions_installers(settings_file=launch_utils.args.ui_settings_file)
runpy.run_path(str(forge_dir / "launch.py"), run_name="__main__")
