"""The command line's options, shared by every command: value parsers, the sampling flags, the FreeU flags.

The ``type=`` converters return the value or raise ``ArgumentTypeError`` with what is allowed, so argparse prints
``argument --NAME: must be ...`` and exits with code 2. :func:`parse_values` is the one grammar for several numbers
(``1.2``, ``0.2,0.6,1.0``, ``0.2 0.6`` or ``1.0:1.6:0.2``), used by the command line and the page alike.
:func:`add_freeu_options` adds the one FreeU option group (preset, factors, version, convention, threshold, window)
and :func:`freeu_settings` / :func:`resolve_freeu` turn it into a :class:`freeu.FreeUConfig` through the library's
settings front door (:mod:`freeu.settings`), its errors naming the flags.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from freeu.config import CONVENTIONS, PRESETS, FreeUConfig, Preset, check_field
from freeu.settings import Resolved, Settings, check_settings, check_stages, resolve

from .errors import note_made_folders
from .runtime import DTYPES, Model, Size, default_device

__all__ = [
    "FACTORS",
    "CLI_NAMES",
    "FREEU_FIELDS",
    "add_freeu_options",
    "add_model_options",
    "choice",
    "device",
    "file_stem",
    "freeu_settings",
    "grid_factors",
    "non_negative",
    "non_negative_int",
    "parse_values",
    "port",
    "positive_int",
    "resolve_freeu",
    "seed",
    "size",
    "vae_size",
    "writable_folder",
]

FACTORS = ("b1", "b2", "s1", "s2")
#: At most this many values in one list or range (a typo like 0:2:0.001 should not build a huge grid).
MAX_VALUES = 1000
#: The default cap on the cells of a sweep grid and on eval's configurations (``--max-cells``, ``--max-configs``).
MAX_CELLS = 64
#: The largest image side ``--size`` accepts, in pixels.
MAX_SIDE = 8192
#: The other fields of :class:`freeu.FreeUConfig` that every command takes as flags.
FREEU_FIELDS = ("version", "convention", "threshold", "start", "stop", "ramp")

FACTOR_HELP = {
    "b1": "backbone factor, stage 1 (deepest): amplifies the first half of the backbone channels; 1 = off",
    "b2": "backbone factor, stage 2",
    "s1": "skip factor, stage 1: gain of the skip feature's lowest frequencies; 1 = off, 0 removes them",
    "s2": "skip factor, stage 2",
}


# -- value parsers ------------------------------------------------------------------------------------------------


def _integer(text: str, low: int, high: float, what: str) -> int:
    """``text`` as an integer in ``[low, high]``, else ``ArgumentTypeError`` saying it ``must be {what}``."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _real(text: str, low: float, high: float, what: str) -> float:
    """``text`` as a finite number in ``[low, high]``, else ``ArgumentTypeError`` saying it ``must be {what}``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _integer(text, 1, math.inf, "an integer >= 1")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _integer(text, 0, math.inf, "an integer >= 0")


def seed(text: str) -> int:
    """A noise seed: an integer in [0, 2**63)."""
    return _integer(text, 0, 2**63 - 1, "an integer from 0 to 2**63 - 1")


def non_negative(text: str) -> float:
    """A finite number >= 0 (a guidance scale, a FreeU factor)."""
    return _real(text, 0.0, math.inf, "a finite number >= 0")


def fraction(text: str) -> float:
    """A number in [0, 1] (a point of the denoising trajectory)."""
    return _real(text, 0.0, 1.0, "a fraction of the denoising trajectory in [0, 1]")


def size(text: str, minimum: int = 1, multiple: int = 1) -> Size:
    """``SIZE`` or ``WIDTHxHEIGHT`` in pixels as a :class:`Size`, each side >= ``minimum`` and a multiple of
    ``multiple`` (bind them with ``functools.partial``)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
        width, height = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        if len(parts) > 2 or not minimum <= width <= MAX_SIDE or not minimum <= height <= MAX_SIDE:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be SIZE or WIDTHxHEIGHT in pixels, each from {minimum} to {MAX_SIDE}, got {text!r}"
        ) from None
    if width % multiple or height % multiple:
        raise argparse.ArgumentTypeError(
            f"width and height must be multiples of {multiple} (the VAE's downsampling), got {text}"
        )
    return Size(height=height, width=width)


def vae_size(text: str) -> Size:
    """A generation size for a latent pipeline: :func:`size` in multiples of 8 (the VAE's downsampling)."""
    return size(text, multiple=8)


def usable_devices() -> dict[str, int | None]:
    """The device types this torch build can run on this machine, with how many of each (``None``: not counted)."""
    import torch

    found: dict[str, int | None] = {"cpu": None}
    if torch.cuda.is_available():
        found["cuda"] = torch.cuda.device_count()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found["mps"] = None
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found["xpu"] = xpu.device_count()
    return found


def device(text: str) -> str:
    """A torch device this machine can sample on: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu``, ... (``meta``
    holds no data, and a device type this torch build lacks is refused before any work, naming what there is)."""
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be a torch device like cpu, cuda, cuda:1 or mps, got {text!r}"
        ) from None
    usable = usable_devices()
    if parsed.type not in usable:
        why = "holds no data, so nothing can be sampled on it" if parsed.type == "meta" else "cannot be used here"
        raise argparse.ArgumentTypeError(
            f"{text!r}: {parsed.type} {why}; this machine has {', '.join(usable)} (try cpu)"
        )
    count = usable[parsed.type]
    if parsed.index is not None and parsed.index >= (1 if count is None else count):
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count or 1} {parsed.type} device(s)")
    return text


def choice(options: list[str]) -> Any:
    """A parser that accepts one of ``options`` (for values that do not come through argparse's ``choices``)."""

    def parse(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(options)}, got {text!r}")
        return text

    return parse


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    return _integer(text, 1, 65535, "a port from 1 to 65535")


def file_stem(text: str) -> str:
    """A file name stem (``--name``): no folder part, so that files stay inside ``--out``."""
    if not text or text in (".", "..") or "/" in text or "\\" in text or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be a file name without a folder (files go into --out), got {text!r}")
    return text


def writable_folder(flag: str, folder: str | Path) -> Path:
    """``folder`` created if missing and checked writable, before any long work; ``ValueError`` naming ``flag``.
    The folders made here are removed again, if still empty, when the command fails
    (:func:`freeu.apps.errors.run_command`)."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {folder}: exists and is not a folder")
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]  # outermost first
    note_made_folders(missing)  # a command refused later removes them again where it wrote nothing there
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".freeu-write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"{flag} {folder}: cannot write there ({error.strerror or error})") from None
    return path


def parse_values(name: str, text: str, limit: int = MAX_VALUES) -> list[float]:
    """``"1.2"``, ``"0.2,0.6,1.0"`` (commas or spaces) or ``"1.0:1.6:0.2"`` (start:stop:step: from start in steps of
    step, never past stop, stop included when the steps land on it) as a list of at most ``limit`` finite numbers; a
    ``ValueError`` naming ``name`` otherwise."""
    text = str(text)
    what = (
        f"{name} must be a number, a list like 0.2,0.6,1.0 or a range start:stop:step like 1.0:1.6:0.2 "
        f"(finite numbers, step > 0, stop >= start), got {text!r}"
    )
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if not all(math.isfinite(v) for v in (start, stop, step)) or not step > 0 or not stop >= start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1  # the tolerance keeps 1.0:1.6:0.2's 1.6
            if count > limit:
                raise ValueError(f"{name}: the range {text!r} gives {count} values, more than {limit}")
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(v) for v in text.replace(",", " ").split()]
            if len(values) > limit:
                raise ValueError(f"{name}: {len(values)} values, more than {limit}")
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError
    except ValueError as error:
        raise ValueError(str(error) if str(error).startswith(f"{name}:") else what) from None
    return values


def factor_values(text: str) -> list[float]:
    """An argparse type: :func:`parse_values` with every value a finite number >= 0."""
    finite = f"must be a finite number >= 0 (or a list or range of them), got {text!r}"
    try:
        numbers = [float(v) for v in str(text).replace(":", " ").replace(",", " ").split()]
    except ValueError:
        numbers = []
    if any(not (math.isfinite(v) and v >= 0) for v in numbers):
        raise argparse.ArgumentTypeError(finite)
    try:
        return parse_values("", text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).lstrip(": ")) from None


# -- option groups ------------------------------------------------------------------------------------------------


def add_model_options(
    p: argparse.ArgumentParser, *, model_help: str, model_default: str | None = None, title: str = "model"
) -> argparse._ArgumentGroup:
    """``--model``, ``--device`` and ``--dtype`` (the same defaults in every command); returns the group."""
    g = p.add_argument_group(title)
    g.add_argument("--model", default=model_default, help=model_help)
    g.add_argument(
        "--device",
        type=device,
        default=None,
        help=f"torch device (default: cuda, else mps, else cpu; here {default_device()})",
    )
    g.add_argument("--dtype", choices=list(DTYPES), default=None, help="default float32")
    return g


def add_freeu_options(p: argparse.ArgumentParser, *, grid: bool = False, title: str = "FreeU") -> None:
    """The FreeU option group: ``--preset``, ``--b1`` .. ``--s2`` (lists and ranges where ``grid``),
    ``--version``, ``--convention``, ``--threshold``, ``--start``, ``--stop``, ``--ramp``. Unset flags are ``None``."""
    g = p.add_argument_group(title)
    g.add_argument(
        "--preset",
        default=None,
        help=f"auto (from the U-Net's layout), one of: {', '.join(sorted(PRESETS))}, or a preset file (.toml, as "
        "freeu tune writes)",
    )
    for name, text in FACTOR_HELP.items():
        more = "; a list a,b,c or range start:stop:step" if grid else ""
        g.add_argument(f"--{name}", type=factor_values, default=None, metavar="X", help=text + more)
    g.add_argument(
        "--version", type=int, choices=[1, 2], default=None, help="1: constant b; 2: structure map (default)"
    )
    g.add_argument(
        "--convention",
        choices=list(CONVENTIONS),
        default=None,
        help="stage by backbone width (authors, ComfyUI, A1111; default) or by up-block (diffusers)",
    )
    g.add_argument("--threshold", type=positive_int, default=None, help="half-width of the damped square (default 1)")
    g.add_argument(
        "--start", type=fraction, default=None, help="FreeU from this fraction of the trajectory (default 0)"
    )
    g.add_argument("--stop", type=fraction, default=None, help="FreeU until this fraction (default 1)")
    g.add_argument("--ramp", type=fraction, default=None, help="linear fade at both window ends (default 0)")
    g.add_argument(
        "--stage", type=stage_settings, action="append", default=None, metavar="K:KEY=V,...",
        help="one stage's settings beyond b1..s2 (repeatable): a third stage '3:b=1.1,s=0.9' (SD's 320-wide joins), "
        "or a stage's high-frequency gain, channel window and cutoff '1:high=1.1,window=0.25/0.5,cutoff=0.1'",
    )  # fmt: skip


def stage_settings(text: str) -> dict[int, dict[str, Any]]:
    """``--stage``: :func:`freeu.settings.check_stages` (the grammar of ``parse_stage_settings``, each value checked
    as :class:`freeu.Stage` checks it)."""
    try:
        return check_stages(text, {"stages": ""})
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


#: The command line's word for each FreeU setting: errors of the settings front door name the flag.
CLI_NAMES: dict[str, str] = {**{k: f"--{k}" for k in ("preset", *FACTORS, *FREEU_FIELDS)}, "stages": "--stage"}


def freeu_settings(
    args: argparse.Namespace,
    *,
    grid: bool = False,
    carried: Mapping[str, Any] | None = None,
    default: Preset | FreeUConfig | None = None,
) -> Settings:
    """The FreeU flags as :class:`freeu.settings.Settings`, on top of ``carried`` (the settings of ``--from IMAGE``;
    dropped when a ``--preset`` is given), checked by :func:`freeu.settings.check_settings` before any model is
    loaded (a preset file is read here, once: resolve the result).

    A factor is one number; with ``grid`` it may be a list (``freeu sweep``): every value is checked and the first
    stands in the settings (:func:`grid_factors` gives the lists). ``default``: the settings to start from when no
    ``--preset`` is given (else all four factors are needed). ``ValueError`` names the flag and what is allowed.
    """
    fields: dict[str, Any] = {}
    stages: dict[int, dict[str, Any]] = {}
    if args.preset is None and carried:
        fields.update({k: v for k, v in carried.items() if k in FACTORS + FREEU_FIELDS})
        stages = _carried_stages(carried.get("stages"))
    for key in FACTORS:
        values = getattr(args, key, None)
        if values is None:
            continue
        if not grid and len(values) != 1:
            raise ValueError(f"--{key} takes one number here (lists and ranges are for freeu sweep), got {values}")
        for value in values[1:]:
            check_field(key, value, f"--{key}")
        fields[key] = values[0]
    for key in FREEU_FIELDS:
        if getattr(args, key, None) is not None:
            fields[key] = getattr(args, key)
    flagged: dict[int, dict[str, Any]] = {}
    for changes in getattr(args, "stage", None) or []:
        for k, values in changes.items():
            twice = sorted(set(values) & set(flagged.get(k, {})))
            if twice:
                raise ValueError(f"--stage {k}: {', '.join(twice)} given twice; give each setting once")
            flagged.setdefault(k, {}).update(values)
    for k, values in flagged.items():
        for f in ("b", "s"):
            if k <= 2 and f in values and getattr(args, f"{f}{k}", None) is not None:
                raise ValueError(f"--stage {k}:{f}=... and --{f}{k} set the same factor: give it once")
        stages.setdefault(k, {}).update(values)  # over a carried factor: the stage's value wins, as in with_stages
    settings = Settings(preset=args.preset if args.preset is not None else default, **fields, stages=stages)
    try:
        return check_settings(settings, CLI_NAMES)
    except TypeError as error:  # a carried value of the wrong type: a refused value like any other
        raise ValueError(str(error)) from None


def grid_factors(args: argparse.Namespace) -> dict[str, list[float]]:
    """The factors given with several values (``freeu sweep``'s axes), in the order of :data:`FACTORS`."""
    return {k: v for k in FACTORS if (v := getattr(args, k, None)) is not None and len(v) > 1}


def _carried_stages(carried: Any) -> dict[int, dict[str, Any]]:
    """An image's ``stages`` as stage changes: stages 1 and 2 without their ``b``/``s`` (those travel as b1..s2,
    so a flag such as ``--b1`` still changes them)."""
    if carried is None:
        return {}
    if not isinstance(carried, list) or not all(isinstance(s, dict) for s in carried):
        raise ValueError(f"the carried stages must be a list of objects, got {carried!r}")
    # each value is checked with the rest (check_stages): a window that is no pair is refused there
    return {k: {f: v for f, v in s.items() if k > 2 or f not in ("b", "s")} for k, s in enumerate(carried, start=1)}


def resolve_freeu(model: Model | None, settings: Settings) -> Resolved:
    """:func:`freeu.settings.resolve` of the command line's settings on ``model``'s U-Net (what ``--preset auto``
    reads), errors naming the flags."""
    return resolve(settings, None if model is None else model.unet, names=CLI_NAMES)
