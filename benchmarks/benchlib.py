"""Shared pieces of the benchmarks: interleaved timing, full-size random-weight U-Nets, a memory tracker, Markdown.

Every figure the benchmarks publish is a median or a ratio of contenders measured side by side in one run: each
repetition runs every contender once, in an order that rotates from one repetition to the next, so slow drift of
the machine (thermal, other jobs) hits every contender alike. Absolute times are printed for orientation only and
are never compared across runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import platform
import statistics
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
DTYPES = ("float32", "bfloat16", "float16")
# Recommended SD 1.5 values of the official README; the factors only matter through which joins they touch.
FACTORS = dict(b1=1.5, b2=1.6, s1=0.9, s2=0.2)


# -- results --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Section:
    """One benchmark's result: a titled Markdown table and the sentences under it that say what was compared."""

    key: str
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str

    def markdown(self) -> str:
        return f"### {self.title}\n\n{markdown_table(self.headers, self.rows)}\n\n{self.note}\n"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; every row must have one cell per header (``|`` in a cell is escaped)."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a table row has {len(row)} cells for {len(headers)} headers: {list(row)!r}")

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *(line(r) for r in rows)])


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}" if seconds < 0.1 else f"{seconds * 1e3:.0f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def fmt_pct(fraction: float) -> str:
    return f"{fraction * 100:+.1f} %"


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.1f}"


# -- environment ----------------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    """A human name of the device: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_key(device: torch.device) -> str:
    """Which block of the results document a run on ``device`` replaces: one per device kind and name."""
    if device.type == "cpu":
        return "cpu"
    return "cuda-" + "".join(c if c.isalnum() else "-" for c in device_name(device)).strip("-").lower()


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def environment(device: torch.device) -> str:
    """One line: versions, device, threads, date and commit, for the top of a results block."""
    import diffusers

    import freeu

    parts = [
        f"torch {torch.__version__}",
        f"diffusers {diffusers.__version__}",
        f"freeu {getattr(freeu, '__version__', '?')} at commit {_git_commit()}",
        f"device {device.type}: {device_name(device)}",
        f"{torch.get_num_threads()} torch threads of {os.cpu_count()} CPUs",
        f"Python {platform.python_version()}",
        f"date {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]
    return ", ".join(parts)


def setup(device: str, threads: int | None = None) -> torch.device:
    """The device to run on (checked to exist), with ``threads`` CPU threads for torch if given."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available in this torch build ({torch.__version__})")
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


# -- timing ---------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nothing() -> None:
    return None


@dataclasses.dataclass
class Contender:
    """One thing to time: ``run`` is timed; ``setup``/``teardown`` run around it, untimed (install, remove FreeU)."""

    name: str
    run: Callable[[], Any]
    setup: Callable[[], Any] = nothing
    teardown: Callable[[], Any] = nothing


def interleaved(
    contenders: Sequence[Contender], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per contender per repetition; each repetition runs all, starting one further along than the last.

    The first ``warmup`` rounds run the same way and are discarded (lazy initialisation, caches, allocator).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"contender names must be unique, got {names}")
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    n = len(contenders)
    for rnd in range(warmup + repeats):
        shift = rnd % n
        for contender in list(contenders[shift:]) + list(contenders[:shift]):
            contender.setup()
            sync(device)
            start = time.perf_counter()
            contender.run()
            sync(device)
            elapsed = time.perf_counter() - start
            contender.teardown()
            if rnd >= warmup:
                times[contender.name].append(elapsed)
    return times


class CodeTimer:
    """Seconds spent inside the callables it wraps, summed; the device is synchronised around each call, so on a GPU
    the sum is the time of the work those calls queue, not just of their Python."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            sync(self.device)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed


def module_hooks(model: torch.nn.Module) -> list[tuple[dict, Any]]:
    """Every forward pre-hook and forward hook registered on ``model`` and its submodules, as (dict, key) pairs."""
    return [
        (hooks, key)
        for module in model.modules()
        for hooks in (module._forward_pre_hooks, module._forward_hooks)
        for key in hooks
    ]


@contextlib.contextmanager
def timing_hooks(model: torch.nn.Module, timer: CodeTimer) -> Iterator[int]:
    """Wrap every module hook of ``model`` in ``timer`` (same keys, same order), yielding how many; restored after."""
    found = module_hooks(model)
    originals = [(hooks, key, hooks[key]) for hooks, key in found]
    for hooks, key, hook in originals:
        hooks[key] = timer.wrap(hook)
    try:
        yield len(originals)
    finally:
        for hooks, key, hook in originals:
            hooks[key] = hook


@contextlib.contextmanager
def timing_diffusers_freeu(timer: CodeTimer) -> Iterator[None]:
    """Wrap diffusers' ``apply_freeu`` where its image up blocks look it up (their module's globals) in ``timer``."""
    from diffusers.models.unets import unet_2d_blocks

    original = unet_2d_blocks.apply_freeu
    unet_2d_blocks.apply_freeu = timer.wrap(original)
    try:
        yield
    finally:
        unet_2d_blocks.apply_freeu = original


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratios(times: Sequence[float], base: Sequence[float]) -> list[float]:
    """Per-round ratios ``times[i] / base[i]`` of two contenders timed in the same rounds."""
    if len(times) != len(base):
        raise ValueError(f"paired ratios need as many rounds on both sides, got {len(times)} and {len(base)}")
    return [t / b for t, b in zip(times, base, strict=True)]


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The lower and upper quartiles (both the value itself for a single value)."""
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


# -- models ---------------------------------------------------------------------------------------------------------

# A reduced-width SD-1.5-shaped U-Net: the same blocks, depth and join pattern as SD 1.5 at a fifth of the widths
# (base 64: the official convention's 4x and 2x widths exist), for runs that cannot afford the full model.
TINY_SD15 = dict(
    block_out_channels=(64, 128, 256, 256), cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16
)


def layout_config(layout: str) -> dict:
    from freeu.apps.plan import LAYOUTS

    if layout == "tiny":
        return dict(TINY_SD15)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS) + ['tiny']}, got {layout!r}")
    return dict(LAYOUTS[layout])


def build_unet(layout: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A full-size U-Net of ``layout`` (``freeu.apps.plan.LAYOUTS``, or ``"tiny"``), random weights, eval mode."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**layout_config(layout))
    return unet.to(dtype).eval().requires_grad_(False)


_CACHE: dict[str, Any] = {}


def cached_unet(layout: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``build_unet``, keeping the last model (full SDXL takes a while to build); a new dtype converts it in place.

    Only one model is kept, to bound memory. Benchmarks must leave it as they found it (FreeU removed).
    """
    key = (layout, str(device))
    if _CACHE.get("key") != key:
        _CACHE.clear()
        _CACHE["unet"] = build_unet(layout, device, dtype)
        _CACHE["key"] = key
    unet = _CACHE["unet"]
    if next(unet.parameters()).dtype != dtype:
        unet.to(dtype)
    return unet


def cached_first(layouts: Sequence[str]) -> list[str]:
    """``layouts`` with the one already built moved to the front, so a run builds each full-size model once less."""
    held = _CACHE.get("key", (None,))[0]
    return sorted(layouts, key=lambda name: name != held)


def drop_cache() -> None:
    _CACHE.clear()


def latent_ok(layout: str, latent: int) -> None:
    levels = len(layout_config(layout).get("block_out_channels", (0, 0, 0, 0)))
    step = 2 ** (levels - 1)
    if latent < step or latent % step:
        raise ValueError(f"latent size for {layout} must be a positive multiple of {step}, got {latent}")


def unet_inputs(unet: torch.nn.Module, latent: int, batch: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Random inputs of the U-Net's forward: latents, one timestep, text states (and SDXL's added conditioning)."""
    gen = torch.Generator().manual_seed(0)
    cfg = unet.config
    kwargs: dict[str, Any] = dict(
        sample=torch.randn(batch, cfg.in_channels, latent, latent, generator=gen).to(device, dtype),
        timestep=torch.tensor(500, device=device),
        encoder_hidden_states=torch.randn(batch, 77, cfg.cross_attention_dim, generator=gen).to(device, dtype),
    )
    if cfg.addition_embed_type == "text_time":
        px = latent * 8
        text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(batch, text, generator=gen).to(device, dtype),
            time_ids=torch.tensor([[px, px, 0, 0, px, px]] * batch, device=device).to(dtype),
        )
    return kwargs


def meta_unet(layout: str) -> torch.nn.Module:
    """The layout's U-Net on the meta device: its structure without weights (for plans and shapes)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**layout_config(layout))


def join_sizes(unet: torch.nn.Module, latent: int) -> list[int]:
    """The spatial size of every skip join of a diffusers U-Net, in ``freeu.plan`` order, for a ``latent`` input."""
    import freeu

    levels = len(unet.up_blocks)
    return [latent // 2 ** (levels - 1 - p.join.block) for p in freeu.plan(unet, "official")]


# -- memory ---------------------------------------------------------------------------------------------------------


class MemoryTracker(TorchDispatchMode):
    """Peak and total bytes of the tensor storages that torch ops allocate inside the ``with`` block, on any device.

    Each op's outputs are looked at; a storage that is neither one of the op's inputs (a view, an in-place or
    ``out=`` result) nor already tracked counts as allocated, with its ``nbytes``, until it is freed (a finalizer on
    the storage object, which PyTorch keeps alive as long as any tensor uses the storage). Tensors that existed
    before the block (weights, inputs) are not counted. It sees what ops return, not scratch memory an op uses
    internally, nor allocator rounding or caching: it measures what the code asks for, the same on CPU and GPU.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[tuple[str, int], int] = {}
        self.current = 0
        self.peak = 0
        self.allocated = 0
        self.count = 0

    def _free(self, key: tuple[str, int]) -> None:
        nbytes = self._live.pop(key, None)
        if nbytes is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (TorchDispatchMode's signature)
        kwargs = kwargs or {}
        inputs = {
            (str(t.device), t.untyped_storage().data_ptr())
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            nbytes = storage.nbytes()
            key = (str(t.device), storage.data_ptr())
            if nbytes == 0 or key in inputs or key in self._live:
                continue
            self._live[key] = nbytes
            self.current += nbytes
            self.allocated += nbytes
            self.count += 1
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)
        return out
