"""Generation and per-image analysis, sharded by sample unit across processes, resumable from what is on disk.

A *unit* is one seed (and, for text-to-image pipelines, one prompt): every configuration is sampled on every unit,
from the same initial noise. Process ``rank`` of ``world`` takes units ``rank, rank + world, ...`` and, for each
configuration, writes each image as a PNG (written to a temporary name and renamed, so a PNG on disk is complete)
and then appends one JSON line to its own ``parts/gen-r{rank}of{world}.jsonl``. A record is keyed by a hash of
everything that determines the image (model, sampler, size, dtype, device type, FreeU settings, guidance, prompt,
seed), so a rerun, with any number of processes, skips every image whose record and PNG are on disk and makes only
the rest; records of other settings are ignored, never mixed in.

Per-image analysis (weight-free distances, spectra, FID features, CLIP scores) is sharded the same way and saved in
``analysis/<fingerprint>/*.pt`` batches, so it too resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from freeu import __version__
from freeu.config import FreeUConfig

from ..options import FACTORS
from ..runtime import Model, Request
from .configs import BASELINE, EvalConfig
from .metrics import LaplacianSWD, SpectrumDistance, fit_size, to_float

__all__ = [
    "Analyzer",
    "ImagePlan",
    "ShardSummary",
    "Store",
    "Unit",
    "analyze_shard",
    "effective_guidance",
    "generate_shard",
    "image_key",
    "image_keys",
    "load_png",
    "make_units",
    "pil_to_uint8",
    "sample_units",
    "slug",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """One sample unit: its position in the ordered set, its seed and (pipelines) its prompt."""

    index: int
    seed: int
    prompt_index: int | None = None
    prompt: str | None = None

    @property
    def stem(self) -> str:
        return f"s{self.seed}" if self.prompt_index is None else f"p{self.prompt_index}-s{self.seed}"


def make_units(seeds: Sequence[int], prompts: Sequence[str] | None = None) -> list[Unit]:
    """Units in a fixed order: prompt-major, then seed (without prompts: the seeds)."""
    if not prompts:
        return [Unit(i, int(s)) for i, s in enumerate(seeds)]
    pairs = [(p, s) for p in range(len(prompts)) for s in seeds]
    return [Unit(i, int(s), p, prompts[p]) for i, (p, s) in enumerate(pairs)]


def slug(name: str) -> str:
    """A configuration's name as a file or folder name (``images/NAME/``, ``guidance/NAME.csv``): runs of characters
    other than letters, digits and ``._=,@-`` become ``_``, and a leading ``.`` gets a ``_`` in front (no ``..``
    climbs out of the folder); the same name always gives the same file."""
    text = re.sub(r"[^A-Za-z0-9._=,@-]+", "_", name).strip("_") or "config"
    return f"_{text}" if text.startswith(".") else text  # never '.', '..' or a hidden file


def image_key(base: dict[str, Any], config: EvalConfig, unit: Unit, guidance: float | None) -> str:
    """A hash of everything that determines one image."""
    fields = {**base, "freeu": config.settings(), "guidance": guidance, "seed": unit.seed, "prompt": unit.prompt}
    schedule = config.schedule_for(unit.prompt)
    if schedule is not None:  # only where there is one: the keys of images made before schedules existed stay
        fields["schedule"] = schedule.as_dict()
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def load_png(path: str | Path) -> torch.Tensor:
    """A PNG as ``uint8 (3, H, W)``."""
    from PIL import Image

    with Image.open(path) as img:
        return pil_to_uint8(img)


def _pack_key(config: EvalConfig) -> tuple[Any, ...]:
    """What configurations must share to be sampled in one batch: everything but the four factors, which the hooks
    take per sample. FreeU off, and settings with stages beyond the paper's two, go alone."""
    if config.freeu is None:
        return ("off",)
    if config.freeu.stages or config.freeu.batch_size is not None:
        return ("alone", config.name)
    return ("factors", config.freeu.replace(b1=1, b2=1, s1=1, s2=1))


def _batch_settings(configs: Sequence[EvalConfig]) -> FreeUConfig | None:
    """One FreeU setting for a batch whose samples come from ``configs`` (one per sample): the factors per sample
    where they differ."""
    first = configs[0].freeu
    if first is None or all(c.freeu == first for c in configs):
        return first
    return first.replace(**{k: tuple(getattr(c.freeu, k) for c in configs) for k in FACTORS})


def sample_units(
    model: Model,
    request: Request,
    pairs: Sequence[tuple[EvalConfig, Unit]],
    on_step: Callable[[int], None],
    batch_size: int = 64,
) -> Iterator[tuple[list[tuple[EvalConfig, Unit]], torch.Tensor]]:
    """``(pairs, uint8 images (N, 3, H, W))`` for ``(configuration, unit)`` pairs, through the shared runtime.

    Pairs whose configurations differ only in ``b1, b2, s1, s2`` (same guidance, same prompt) are sampled together,
    up to ``batch_size`` per call, with the factors given per sample: a grid of settings, or a search's candidates,
    costs a few large batches rather than one small batch per setting. ``on_step(n)`` counts image-steps."""
    groups: dict[tuple[Any, ...], list[tuple[EvalConfig, Unit]]] = {}
    for config, unit in pairs:
        guidance = request.guidance if config.guidance is None else config.guidance
        prompt = unit.prompt if model.takes_prompt else None
        key = (_pack_key(config), guidance if model.guided else None, prompt, config.schedule_for(unit.prompt))
        groups.setdefault(key, []).append((config, unit))
    for (_, guidance, prompt, schedule), members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            run = replace(request, prompt=prompt, guidance=guidance, schedule=schedule)
            count = len(chunk)
            images = model.sample([u.seed for _, u in chunk], run, freeu=_batch_settings([c for c, _ in chunk]),
                                  on_step=lambda _, n=count: on_step(n), batch_size=batch_size)  # fmt: skip
            yield chunk, torch.stack([pil_to_uint8(image) for image in images])


def pil_to_uint8(image: Any) -> torch.Tensor:
    """A PIL image as ``uint8 (3, H, W)``."""
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).contiguous()


class Store:
    """The report folder: images, per-process JSONL parts, analysis batches."""

    def __init__(self, out: str | Path, rank: int = 0, world: int = 1) -> None:
        self.out = Path(out)
        self.rank, self.world = rank, world
        self.parts = self.out / "parts"
        self.own = self.parts / f"gen-r{rank}of{world}.jsonl"

    def image_path(self, config: EvalConfig, unit: Unit, key: str) -> str:
        return f"images/{slug(config.name)}/{unit.stem}-{key[:8]}.png"

    def records(self) -> dict[str, dict[str, Any]]:
        """Every complete record on disk (any process, any run) whose PNG exists, by key."""
        found: dict[str, dict[str, Any]] = {}
        for path in sorted(self.parts.glob("gen-*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interrupted run
                    continue
                if isinstance(record, dict) and "key" in record and self._complete_image(record.get("image")):
                    found[record["key"]] = record
        return found

    def _complete_image(self, image: object) -> bool:
        """Whether a record's image is a relative path inside the folder to a PNG that decodes (a hand-edited record
        cannot point elsewhere; a truncated or damaged PNG is made again)."""
        if not isinstance(image, str) or not image:
            return False
        relative = Path(image)
        path = self.out / relative
        if relative.is_absolute() or ".." in relative.parts or not path.is_file():
            return False
        from PIL import Image

        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, ValueError, Image.DecompressionBombError):
            logger.warning("%s is damaged: it will be made again", path)
            return False
        return True

    def repair(self) -> None:
        """Cut this process's own part back to its last complete line (an interrupted write leaves half a line)."""
        if not self.own.is_file():
            return
        data = self.own.read_bytes()
        if data and not data.endswith(b"\n"):
            self.own.write_bytes(data[: data.rfind(b"\n") + 1])

    def append(self, record: dict[str, Any]) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        with self.own.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()

    def write_png(self, relative: str, image: torch.Tensor, settings: dict[str, Any]) -> None:
        from PIL import Image

        from ..imaging import save_png

        path = self.out / relative
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
        save_png(Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()), tmp, settings)
        os.replace(tmp, path)


@dataclass
class ShardSummary:
    """What one process's generation did: images it made, and images it found on disk and reused."""

    generated: int = 0
    reused: int = 0


def _schedule_record(config: EvalConfig, unit: Unit) -> dict[str, Any] | None:
    schedule = config.schedule_for(unit.prompt)
    return None if schedule is None else schedule.as_dict()


def effective_guidance(model: Model, request: Request, config: EvalConfig) -> float | None:
    """The guidance scale a configuration samples with (``None`` for unguided models)."""
    if not model.guided:
        return None
    return request.guidance if config.guidance is None else config.guidance


def image_keys(
    model: Model, request: Request, configs: Sequence[EvalConfig], units: Sequence[Unit], base: Mapping[str, Any]
) -> dict[tuple[str, int], str]:
    """``{(config name, unit index): key}`` for every image of the run."""
    return {
        (c.name, u.index): image_key(dict(base), c, u, effective_guidance(model, request, c))
        for c in configs
        for u in units
    }


@dataclass(frozen=True)
class ImagePlan:
    """Every image of one run: its configurations and units, what all its images share (``base``: the model's
    fingerprint, sampler, steps, size, dtype, device type, negative prompt), and the key of each image by
    ``(configuration name, unit index)``."""

    configs: tuple[EvalConfig, ...]
    units: tuple[Unit, ...]
    base: Mapping[str, Any]
    keys: Mapping[tuple[str, int], str]

    @classmethod
    def build(
        cls, model: Model, request: Request, configs: Sequence[EvalConfig], units: Sequence[Unit],
        base: Mapping[str, Any],
    ) -> ImagePlan:  # fmt: skip
        """The plan of ``configs`` on ``units`` sampled with ``request`` (each image keyed by :func:`image_key`)."""
        return cls(tuple(configs), tuple(units), dict(base), image_keys(model, request, configs, units, base))

    def mine(self, store: Store) -> list[Unit]:
        """The units the process of ``store`` takes: ``rank, rank + world, ...``."""
        return list(self.units[store.rank :: store.world])


def generate_shard(
    model: Model,
    request: Request,
    plan: ImagePlan,
    store: Store,
    on_step: Callable[[int], None] = lambda n: None,
    batch_size: int = 64,
) -> ShardSummary:
    """Generate this process's units for every configuration of ``plan``, skipping those already on disk."""
    store.repair()
    done = store.records()
    mine = plan.mine(store)
    keys, base = plan.keys, plan.base
    summary = ShardSummary()
    todo = []
    for config in plan.configs:
        pending = [u for u in mine if keys[config.name, u.index] not in done]
        summary.reused += len(mine) - len(pending)
        todo += [(config, u) for u in pending]
    on_step((len(plan.configs) * len(mine) - len(todo)) * request.steps)
    for chunk, images in sample_units(model, request, todo, on_step, batch_size):
        for (config, unit), image in zip(chunk, images, strict=True):
            key = keys[config.name, unit.index]
            record = {
                "key": key, "config": config.name, "unit": unit.index, "seed": unit.seed,
                "prompt_index": unit.prompt_index, "prompt": unit.prompt,
                "guidance": effective_guidance(model, request, config), "freeu": config.settings(),
                "guidance_schedule": _schedule_record(config, unit),
                "preset": config.preset, "image": store.image_path(config, unit, key), "model": base["model"],
                "sampler": base["sampler"], "steps": base["steps"], "height": base["height"], "width": base["width"],
                "dtype": base["dtype"], "device": base["device"], "negative_prompt": base["negative_prompt"],
                "rank": store.rank, "world": store.world, "freeu_package": __version__,
            }  # fmt: skip
            store.write_png(record["image"], image, record)
            store.append(record)
            done[key] = record
            summary.generated += 1
    return summary


class Analyzer:
    """Per-image analysis: SWD and RAPSD against the reference (when there is one), high-frequency share, change
    from FreeU off, FID features and CLIP score (when their networks are there)."""

    def __init__(
        self,
        reference: torch.Tensor | None,
        eval_size: tuple[int, int],
        swd: dict[str, int],
        feature_net: Any = None,
        clip: Any = None,
        fingerprint: str = "",
    ) -> None:
        self.eval_size = eval_size
        self.reference = reference
        self.swd = LaplacianSWD(to_float(reference), **swd) if reference is not None else None
        self.spectrum = SpectrumDistance(to_float(reference)) if reference is not None else None
        self.feature_net, self.clip = feature_net, clip
        self.fingerprint = fingerprint

    def analyze(
        self, images: torch.Tensor, off: torch.Tensor, units: Sequence[Unit]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """``(scalars, spectra, features)`` of ``uint8`` images (already at the evaluation size) of ``units``."""
        from ..measures import high_frequency_share, radial_power_spectrum

        x = to_float(images)
        spectra = radial_power_spectrum(x)
        scalars = {
            "hf_share": high_frequency_share(x),
            "change_vs_off": (images.double() - off.double()).abs().mean(dim=(1, 2, 3)),
        }
        if self.swd is not None:
            order = sorted(range(len(units)), key=lambda i: units[i].index)
            values = self.swd.per_image(x[order], [units[i].index for i in order])
            scalars["swd"] = torch.empty_like(values).index_copy_(0, torch.tensor(order), values)
            scalars["rapsd"] = self.spectrum.per_image(spectra)
        if self.clip is not None:
            scalars["clip"] = self.clip(images, [u.prompt or "" for u in units])
        features = self.feature_net(images) if self.feature_net is not None else None
        return scalars, spectra, features


def analysis_dir(store: Store, fingerprint: str) -> Path:
    return store.out / "analysis" / fingerprint


def load_analysis(store: Store, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Every analysed image on disk for this fingerprint, by ``key@unit``."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(analysis_dir(store, fingerprint).glob("r*.pt")):
        try:
            batch = torch.load(path, weights_only=True)
        except Exception:  # a batch cut short by an interrupted run: it will be redone
            logger.warning("ignoring unreadable analysis batch %s", path)
            continue
        for i, name in enumerate(batch["keys"]):
            found[name] = {
                "scalars": {k: float(v[i]) for k, v in batch["scalars"].items()},
                "spectrum": batch["spectra"][i],
                "features": None if batch["features"] is None else batch["features"][i],
            }
    return found


def analyze_shard(
    analyzer: Analyzer,
    plan: ImagePlan,
    store: Store,
    records: Mapping[str, Mapping[str, Any]],
    batch_size: int = 64,
    on_image: Callable[[int], None] = lambda n: None,
) -> int:
    """Analyse this process's images of ``plan`` not analysed yet (``records``: the generation records on disk, by
    key); returns how many it analysed."""
    folder = analysis_dir(store, analyzer.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    done = load_analysis(store, analyzer.fingerprint)
    mine = plan.mine(store)
    keys = plan.keys
    count = 0
    for config in plan.configs:
        todo = [u for u in mine if f"{keys[config.name, u.index]}@{u.index}" not in done]
        on_image(len(mine) - len(todo))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]

            def load(name: str, chunk: list[Unit] = chunk) -> torch.Tensor:
                paths = [store.out / records[keys[name, u.index]]["image"] for u in chunk]
                return fit_size(torch.stack([load_png(p) for p in paths]), analyzer.eval_size)

            images, off = load(config.name), load(BASELINE)
            scalars, spectra, features = analyzer.analyze(images, off, chunk)
            names = [f"{keys[config.name, u.index]}@{u.index}" for u in chunk]
            batch = {"keys": names, "scalars": scalars, "spectra": spectra, "features": features}
            path = folder / f"r{store.rank}of{store.world}-{uuid.uuid4().hex[:12]}.pt"
            tmp = path.with_suffix(".tmp")
            torch.save(batch, tmp)
            os.replace(tmp, path)
            count += len(chunk)
            on_image(len(chunk))
    return count
