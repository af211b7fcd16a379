"""Start the real Forge from its folder with Forge's own ``launch.py`` and the arguments given, after making
torchvision importable on a CPU torch (forge_setup.py). Usage: FORGE_PYTHON forge_launch.py FORGE_DIR ARGS..."""

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
runpy.run_path(str(forge_dir / "launch.py"), run_name="__main__")
