"""The weights of freeu's demo models, as files: ``weights/`` (the unconditional model, ``freeu demo --model demo``)
and ``weights-classes/`` (the class-conditional one, ``--model demo-classes``), each a ``unet.safetensors`` with its
``config.json`` and model card. ``freeu`` finds this package without importing it; nothing here runs code."""

from pathlib import Path

__version__ = "1.0.0"

#: The unconditional demo model's folder.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: The class-conditional demo model's folder.
CLASSES_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights-classes"
