"""The skip filter alone, and a whole skip join, at real Stable Diffusion shapes: ours vs diffusers vs a plain copy.

Shapes: every skip join that FreeU touches under the official convention (10 in SD 1.5, 7 in SDXL), read from
``freeu.plan`` on full-size U-Nets built on the meta device (structure only, no weights), at the model's native
latent (64x64 for SD 1.5, 128x128 for SDXL) unless ``--latent`` says otherwise. Each repetition times every
contender over all of a model's tensors, in a rotating order; the tables quote medians and ratios from the same run.

- ``filter``: ``freeu.fourier_filter`` vs ``diffusers.utils.torch_utils.fourier_filter`` vs ``x.clone()`` on the
  skip features.
- ``controls``: the filter with a gain on the high frequencies and with a cutoff as a fraction of the map (a
  rectangle of bins) against today's filter (threshold 1, high frequencies untouched), with every ``torch.fft``
  call counted (none is expected).
- ``join``: the work FreeU adds at a join, ours vs diffusers: our forward pre-hook as ``freeu.apply`` installs it
  (version 1 and 2), which takes the host's ``cat([backbone, skip])`` and returns a new one, vs diffusers'
  ``apply_freeu``, which scales the backbone half in place and filters the skip before the host's cat; the floor is
  one copy of the joined tensor (a hook that may not write into the host's tensor has to produce at least that).

    python benchmarks/filter_speed.py [--sections filter,controls,join] [--models sd15,sdxl]
        [--dtypes float32,bfloat16,float16] [--batch 2] [--latent N] [--repeats 30] [--device cpu]
"""

from __future__ import annotations

import argparse

import benchlib as bl
import torch

import freeu


def skip_joins(layout: str, latent: int | None) -> tuple[int, list[tuple[freeu.JoinPlan, int]]]:
    """The latent used and the official-convention FreeU joins of ``layout`` with their spatial sizes."""
    from freeu.apps.plan import LATENT

    unet = bl.meta_unet(layout)
    latent = latent or LATENT[layout]
    bl.latent_ok(layout, latent)
    pairs = zip(freeu.plan(unet, "official"), bl.join_sizes(unet, latent), strict=True)
    return latent, [(p, size) for p, size in pairs if p.stage is not None]


def _skip_inputs(
    layout: str, dtype_name: str, batch: int, latent: int | None, device: torch.device
) -> tuple[int, list[tuple[freeu.JoinPlan, int]], list[torch.Tensor], list[float]]:
    """The latent used, the joins, a random skip feature per join (seeded) and each join's ``s`` factor."""
    used, joins = skip_joins(layout, latent)
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(batch, p.join.skip_channels, n, n, generator=gen).to(device, dtype) for p, n in joins]
    return used, joins, inputs, [bl.FACTORS[f"s{p.stage}"] for p, _ in joins]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _allocated(fn, inputs) -> int:  # noqa: ANN001
    with bl.MemoryTracker() as tracker:
        for x in inputs:
            fn(x)
    return tracker.allocated


def _scratch(fn, inputs) -> int:  # noqa: ANN001
    """The most scratch one call needs: bytes alive at its peak beyond what it returns, the largest over the inputs."""
    worst = 0
    for i in inputs:
        with bl.MemoryTracker() as tracker:
            result = fn(i)
            kept = tracker.current  # what the call returned (it is still held)
        worst = max(worst, tracker.peak - kept)
        del result
    return worst


def _filter_row(
    layout: str, dtype_name: str, batch: int, latent: int | None, repeats: int, device: torch.device
) -> list[str]:
    from diffusers.utils.torch_utils import fourier_filter as diffusers_filter

    used, joins, inputs, scales = _skip_inputs(layout, dtype_name, batch, latent, device)
    idx = range(len(inputs))
    fns = {
        "ours": lambda i: freeu.fourier_filter(inputs[i], 1, scales[i]),
        "diffusers": lambda i: diffusers_filter(inputs[i], threshold=1, scale=scales[i]),
        "clone": lambda i: inputs[i].clone(),
    }
    worst = max(_max_diff(fns["ours"](i), fns["diffusers"](i)) for i in idx)
    contenders = [bl.Contender(name, lambda fn=fn: [fn(i) for i in idx]) for name, fn in fns.items()]
    times = bl.interleaved(contenders, repeats, device)
    med = {name: bl.median(t) for name, t in times.items()}
    alloc = {name: _allocated(fn, idx) for name, fn in fns.items()}
    scratch = {name: _scratch(fns[name], idx) for name in ("ours", "diffusers")}
    largest = max(x.numel() * x.element_size() for x in inputs)
    return [
        layout, dtype_name, f"{len(inputs)} @ {used}x{used}",
        bl.fmt_ms(med["ours"]), bl.fmt_ms(med["diffusers"]), bl.fmt_ms(med["clone"]),
        bl.fmt_ratio(med["diffusers"] / med["ours"]), bl.fmt_ratio(med["ours"] / med["clone"]),
        bl.fmt_ratio(alloc["ours"] / alloc["clone"]), bl.fmt_ratio(alloc["diffusers"] / alloc["clone"]),
        bl.fmt_mib(largest), bl.fmt_mib(scratch["ours"]), bl.fmt_mib(scratch["diffusers"]), f"{worst:.1e}",
    ]  # fmt: skip


def filter_section(
    models: list[str], dtypes: list[str], batch: int, latent: int | None, repeats: int, device: torch.device
) -> bl.Section:
    rows = [_filter_row(m, d, batch, latent, repeats, device) for m in models for d in dtypes]
    headers = [
        "model", "dtype", "tensors @ latent", "ours (ms)", "diffusers (ms)", "clone (ms)", "diffusers / ours",
        "ours / clone", "bytes allocated: ours / clone", "diffusers / clone", "largest input (MiB)",
        "scratch at peak (MiB): ours", "diffusers", "max abs diff ours vs diffusers",
    ]  # fmt: skip
    note = (
        f"The skip filter alone on the skip features of every join FreeU touches under the official convention, "
        f"batch {batch}, random normal inputs, {repeats} interleaved repetitions of one pass over all the tensors; "
        "times are medians of one pass. Ours: `freeu.fourier_filter` (exact projection on the few changed Fourier "
        "modes, accumulating in float32, result in the input dtype). Diffusers: "
        "`diffusers.utils.torch_utils.fourier_filter` (float32 FFT with a full B x C x H x W mask; it upcasts every "
        "non-float32 input and casts the result back). Clone: `x.clone()`, the copy floor. Bytes allocated: total "
        "bytes of the tensors each contender's ops return (`MemoryTracker`), relative to the clone's: memory "
        "traffic. Scratch at peak: the most bytes one call holds at once beyond the result it returns (the largest "
        "over the tensors), next to the largest input: what a filter needs besides its output. Ours works in pieces "
        "of at most 2^20 elements on a CPU (2^22 elsewhere), so half precision's float32 accumulation needs one "
        "float32 piece at a time (4 MiB here), not a float32 copy of the input. The last column checks that both "
        "compute the same filter."
    )
    return bl.Section("filter", "Skip filter alone", headers, rows, note)


class _FFTCounter:
    """Counts calls of ``torch.fft``'s transforms while active (they still run)."""

    NAMES = ("fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2", "rfftn", "irfftn")

    def __enter__(self) -> _FFTCounter:
        self.calls, self._saved = 0, {name: getattr(torch.fft, name) for name in self.NAMES}
        for name, fn in self._saved.items():

            def counted(*args, _fn=fn, **kwargs):  # noqa: ANN002, ANN003, ANN202
                self.calls += 1
                return _fn(*args, **kwargs)

            setattr(torch.fft, name, counted)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._saved.items():
            setattr(torch.fft, name, fn)


def _controls_row(
    layout: str, dtype_name: str, batch: int, latent: int | None, repeats: int, device: torch.device
) -> list[str]:
    from freeu.fourier import cutoff_threshold

    used, joins, inputs, scales = _skip_inputs(layout, dtype_name, batch, latent, device)
    cutoffs = [cutoff_threshold(n, n, 0.1) for _, n in joins]
    idx = range(len(inputs))
    fns = {
        "today": lambda i: freeu.fourier_filter(inputs[i], 1, scales[i]),
        "high": lambda i: freeu.fourier_filter(inputs[i], 1, scales[i], high=1.1),
        "cutoff": lambda i: freeu.fourier_filter(inputs[i], cutoffs[i], scales[i], method="projection"),
    }
    worst = max(
        _max_diff(fns["high"](i), freeu.fourier_filter(inputs[i].double(), 1, scales[i], high=1.1, method="fft"))
        for i in idx
    )
    contenders = [bl.Contender(name, lambda fn=fn: [fn(i) for i in idx]) for name, fn in fns.items()]
    with _FFTCounter() as counter:
        times = bl.interleaved(contenders, repeats, device)
    med = {name: bl.median(t) for name, t in times.items()}
    sizes = sorted({n for _, n in joins})
    return [
        layout, dtype_name, f"{len(inputs)} @ {used}x{used}", bl.fmt_ms(med["today"]), bl.fmt_ms(med["high"]),
        bl.fmt_ratio(med["high"] / med["today"]), ", ".join(f"{cutoff_threshold(n, n, 0.1)[0]} @ {n}" for n in sizes),
        bl.fmt_ms(med["cutoff"]), bl.fmt_ratio(med["cutoff"] / med["today"]), str(counter.calls), f"{worst:.1e}",
    ]  # fmt: skip


def controls_section(
    models: list[str], dtypes: list[str], batch: int, latent: int | None, repeats: int, device: torch.device
) -> bl.Section:
    rows = [_controls_row(m, d, batch, latent, repeats, device) for m in models for d in dtypes]
    headers = [
        "model", "dtype", "tensors @ latent", "today (ms)", "high gain 1.1 (ms)", "high / today",
        "cutoff 0.1: half-width @ map", "cutoff 0.1 (ms)", "cutoff / today", "torch.fft calls",
        "max abs diff high gain vs float64 FFT",
    ]  # fmt: skip
    note = (
        f"The skip filter's new controls on the same tensors as section a (batch {batch}, {repeats} interleaved "
        "repetitions, medians of one pass). Today: `fourier_filter(x, 1, s)`. High gain: the same with `high=1.1` "
        "on every frequency outside the square (`high * x + (s - high) * P x`: the same projection, one more "
        "scaled term). Cutoff 0.1: the rectangle sd-webui-freeu's `skip_cutoff=0.1` gives "
        "(`cutoff_threshold`: `max(1, floor(n // 2 * 0.1))` bins each side), by projection. `torch.fft calls` "
        "counts every transform called during all the timed repetitions. The last column compares the high gain "
        "with the FFT reference in float64."
    )
    return bl.Section("controls", "Skip filter with a high-frequency gain or a cutoff", headers, rows, note)


def _installed_hooks(unet: torch.nn.Module, plans: list[freeu.JoinPlan]) -> list:
    """The forward pre-hook ``freeu.apply`` put on each planned join's consumer module."""
    hooks = []
    for p in plans:
        found = list(p.join.module._forward_pre_hooks.values())
        if len(found) != 1:
            raise RuntimeError(f"expected one FreeU pre-hook on {p.join.name}, found {len(found)}")
        hooks.append(found[0])
    return hooks


def _join_hooks(layout: str, plans: list[freeu.JoinPlan]) -> dict[int, list]:
    """FreeU's installed hooks for ``plans``' joins, versions 1 and 2, official convention, from meta-device U-Nets."""
    hooks = {}
    for version in (1, 2):
        unet = bl.meta_unet(layout)  # hooks only read the join's widths, never the module's weights
        freeu.apply(unet, **bl.FACTORS, version=version, convention="official")
        mine = {p.join.name: p for p in freeu.plan(unet, "official")}
        hooks[version] = _installed_hooks(unet, [mine[p.join.name] for p in plans])
    return hooks


def _join_row(
    layout: str, dtype_name: str, batch: int, latent: int | None, repeats: int, device: torch.device
) -> list[str]:
    from diffusers.utils.torch_utils import apply_freeu

    used, joins = skip_joins(layout, latent)
    plans = [p for p, _ in joins]
    hooks = _join_hooks(layout, plans)
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    joined = [torch.randn(batch, p.join.in_channels, n, n, generator=gen).to(device, dtype) for p, n in joins]
    backbones = [x[:, : p.join.backbone_channels].clone() for x, p in zip(joined, plans, strict=True)]
    skips = [x[:, p.join.backbone_channels :].clone() for x, p in zip(joined, plans, strict=True)]
    idx = range(len(joined))

    def ours(version: int, i: int) -> torch.Tensor:
        (out, *_), _ = hooks[version][i](plans[i].join.module, (joined[i],), {})
        return out

    def theirs(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # resolution_idx 0 applies b1/s1 and 1 applies b2/s2: the stage our plan gives this join
        return apply_freeu(plans[i].stage - 1, backbones[i], skips[i], **bl.FACTORS)

    def restore() -> None:  # diffusers scales the backbone in place: give it fresh inputs, untimed
        for x, b, p in zip(joined, backbones, plans, strict=True):
            b.copy_(x[:, : p.join.backbone_channels])

    worst = 0.0
    for i in idx:
        restore()
        h, r = theirs(i)
        worst = max(worst, _max_diff(ours(1, i), torch.cat([h, r], dim=1)))
    fns = {
        "copy": lambda i: joined[i].clone(),
        "ours v1": lambda i: ours(1, i),
        "ours v2": lambda i: ours(2, i),
        "diffusers v1": theirs,
    }
    contenders = [
        bl.Contender(name, lambda fn=fn: [fn(i) for i in idx], setup=restore if name == "diffusers v1" else bl.nothing)
        for name, fn in fns.items()
    ]
    times = bl.interleaved(contenders, repeats, device)
    med = {name: bl.median(t) for name, t in times.items()}
    restore()
    alloc = {name: _allocated(fn, idx) for name, fn in fns.items()}
    scratch = {}
    for name in ("ours v1", "ours v2", "diffusers v1"):
        restore()
        scratch[name] = _scratch(fns[name], idx)
    largest = max(x.numel() * x.element_size() for x in joined)
    return [
        layout, dtype_name, f"{len(joined)} @ {used}x{used}",
        *(bl.fmt_ms(med[n]) for n in fns),
        bl.fmt_ratio(med["ours v1"] / med["copy"]), bl.fmt_ratio(med["ours v2"] / med["copy"]),
        bl.fmt_ratio(med["diffusers v1"] / med["ours v1"]),
        bl.fmt_ratio(alloc["ours v1"] / alloc["copy"]), bl.fmt_ratio(alloc["diffusers v1"] / alloc["copy"]),
        bl.fmt_mib(largest), *(bl.fmt_mib(scratch[n]) for n in ("ours v1", "ours v2", "diffusers v1")),
        f"{worst:.1e}",
    ]  # fmt: skip


def join_section(
    models: list[str], dtypes: list[str], batch: int, latent: int | None, repeats: int, device: torch.device
) -> bl.Section:
    rows = [_join_row(m, d, batch, latent, repeats, device) for m in models for d in dtypes]
    headers = [
        "model", "dtype", "joins @ latent", "copy (ms)", "ours v1 (ms)", "ours v2 (ms)", "diffusers v1 (ms)",
        "ours v1 / copy", "ours v2 / copy", "diffusers / ours v1", "bytes allocated: ours v1 / copy",
        "diffusers / copy", "largest joined input (MiB)", "scratch at peak (MiB): ours v1", "ours v2",
        "diffusers v1",
        "max abs diff ours v1 vs diffusers",
    ]  # fmt: skip
    note = (
        f"The work FreeU adds at each join it touches (official convention), batch {batch}, {repeats} interleaved "
        "repetitions of one pass over all joins, medians. Ours: the forward pre-hook that `freeu.apply` installs "
        "(taken from a meta-device U-Net and called on real tensors), which receives the host's "
        "`cat([backbone, skip])` and returns a new joined tensor. Diffusers: `apply_freeu` on the separate backbone "
        "and skip, scaling the backbone half in place (its inputs are restored untimed before each pass) and "
        "filtering the skip; the host's concatenation then happens as without FreeU. Copy: `x.clone()` of the joined "
        "tensor, the least a hook that does not write into the host's tensor must do. The same factors go to every "
        "contender (s1/b1 at stage-1 joins, s2/b2 at stage-2 joins). Bytes allocated: as in the filter table. "
        "Scratch at peak: the most bytes one join holds at once beyond what it returns (ours: the new joined tensor; "
        "diffusers: the filtered skip), the largest over the joins, next to the largest joined input."
    )
    return bl.Section("join", "One skip join: the work FreeU adds", headers, rows, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="filter,controls,join", help="comma list of filter, controls, join")
    parser.add_argument("--models", default="sd15,sdxl", help="comma list of sd15, sd21, sdxl")
    parser.add_argument("--dtypes", "--dtype", default=",".join(bl.DTYPES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--latent", type=int, default=None, help="latent size (default: the model's native one)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    device = bl.setup(args.device, args.threads)
    models, dtypes = args.models.split(","), args.dtypes.split(",")
    print(bl.environment(device) + "\n")
    runners = {"filter": filter_section, "controls": controls_section, "join": join_section}
    for key in args.sections.split(","):
        print(runners[key](models, dtypes, args.batch, args.latent, args.repeats, device).markdown(), flush=True)


if __name__ == "__main__":
    main()
