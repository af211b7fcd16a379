"""Train (or resume) the offline FreeU demo U-Net: ``python tools/train_demo.py --out runs/demo``.

See ``freeu.apps.demo.train`` for what it does and the files it writes; ``--help`` for the options.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Let idle OpenMP threads sleep after a short spin instead of burning ~300k spins: free when the cores are ours,
# and it avoids a several-fold slowdown when another process shares them. Read when torch loads libgomp.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# Use this checkout's package even when freeu is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from freeu.apps.demo.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
