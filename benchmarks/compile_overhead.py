"""torch.compile(fullgraph=True) with FreeU: does the patched U-Net compile as one graph, and what FreeU costs there.

Two copies of the same U-Net (same random weights): one plain, one with ``freeu.apply`` (version 2, official
convention) installed before compiling. Each is compiled with ``fullgraph=True``, which raises on any graph break;
the first call's time is reported as compile time. Then eager and compiled forwards of both are timed interleaved.

    python benchmarks/compile_overhead.py [--layout sd15] [--latent 8] [--batch 2] [--repeats 9]
        [--backend inductor] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import time

import benchlib as bl
import torch

import freeu


def _compile(model: torch.nn.Module, kwargs: dict, backend: str, device: torch.device) -> tuple[object, float, str]:
    """``(compiled, seconds of the first call, status)``; status is ``"ok"`` or the error's first line."""
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    start = time.perf_counter()
    try:
        compiled(**kwargs)
    except Exception as error:  # a graph break under fullgraph=True, or a backend failure: report, do not hide
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return None, time.perf_counter() - start, f"failed: {type(error).__name__}: {first[:160]}"
    bl.sync(device)
    return compiled, time.perf_counter() - start, "ok"


def compile_section(
    layout: str, latent: int, batch: int, repeats: int, backend: str, device: torch.device
) -> bl.Section:
    bl.latent_ok(layout, latent)
    dtype = torch.float32
    plain = bl.build_unet(layout, device, dtype)
    patched = copy.deepcopy(plain)
    freeu.apply(patched, **bl.FACTORS, version=2, convention="official")
    kwargs = bl.unet_inputs(plain, latent, batch, device, dtype)
    torch._dynamo.reset()
    # Dynamo does not guard on module hooks by default (skip_nnmodule_hook_guards=True): the two copies would share
    # the first graph compiled and FreeU would silently vanish from the second. Guard on them for this comparison.
    with torch.no_grad(), torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        eager_off = plain(**kwargs).sample
        eager_on = patched(**kwargs).sample
        compiled_off, seconds_off, status_off = _compile(plain, kwargs, backend, device)
        compiled_on, seconds_on, status_on = _compile(patched, kwargs, backend, device)
        contenders = [
            bl.Contender("eager off", lambda: plain(**kwargs)),
            bl.Contender("eager FreeU", lambda: patched(**kwargs)),
        ]
        diffs: dict[str, float] = {}
        for name, compiled, eager in (
            ("compiled off", compiled_off, eager_off),
            ("compiled FreeU", compiled_on, eager_on),
        ):
            if compiled is not None:
                contenders.append(bl.Contender(name, lambda compiled=compiled: compiled(**kwargs)))
                diffs[name] = (compiled(**kwargs).sample - eager).abs().max().item() / eager.abs().max().item()
        times = bl.interleaved(contenders, repeats, device)
    freeu_effect = (eager_on - eager_off).abs().max().item() / eager_off.abs().max().item()
    med = {name: bl.median(t) for name, t in times.items()}

    def overhead(on: str, off: str) -> tuple[str, str]:
        if on not in times or off not in times:
            return "", ""
        ratios = bl.paired_ratios(times[on], times[off])
        return bl.fmt_pct(med[on] / med[off] - 1), bl.fmt_pct(bl.median(ratios) - 1)

    status = {"compiled off": (status_off, seconds_off), "compiled FreeU": (status_on, seconds_on)}
    rows = []
    for name in ("eager off", "eager FreeU", "compiled off", "compiled FreeU"):
        base = "eager off" if name.startswith("eager") else "compiled off"
        by_medians, paired = overhead(name, base) if name.endswith("FreeU") else ("", "")
        state, seconds = status.get(name, ("eager", None))
        if name in diffs and diffs[name] > 0.01 * freeu_effect:
            state += " but WRONG: differs from eager"
        rows.append(
            [
                name, state, "" if seconds is None else f"{seconds:.1f}",
                bl.fmt_ms(med[name]) if name in med else "", by_medians, paired,
                f"{diffs[name]:.1e}" if name in diffs else "",
            ]
        )  # fmt: skip
    widths = bl.layout_config(layout).get("block_out_channels", (320, 640, 1280, 1280))
    headers = [
        "contender", "fullgraph=True", "first call incl. compile (s)", "median forward (ms)",
        "FreeU overhead (ratio of medians)", "FreeU overhead (median of paired ratios)",
        "max rel. diff compiled vs eager",
    ]  # fmt: skip
    note = (
        f"`torch.compile(unet, fullgraph=True, backend={backend!r})` on a {layout} U-Net (widths {tuple(widths)}, "
        f"random weights), float32, latent {latent}x{latent}, batch {batch}; FreeU version 2, official convention, "
        "applied before compiling. `fullgraph=True` makes any graph break an error, so `ok` means the patched U-Net "
        "compiled into a single graph. Compile time is the first call, once per model, in a fresh dynamo state (the "
        f"backend's on-disk caches may shorten it on later runs). Forwards: {repeats} interleaved repetitions after "
        "one warm-up round, medians; each FreeU overhead is against the plain model in the same mode (eager vs eager, "
        "compiled vs compiled). The last column checks each compiled model against its eager run (largest difference "
        "relative to the largest output value; FreeU itself changes the output by "
        f"{freeu_effect:.1e} on that scale, and a compiled model further than a hundredth of that from its eager run "
        "is marked WRONG). Dynamo does not guard on module hooks by default "
        "(`torch._dynamo.config.skip_nnmodule_hook_guards = True`): two instances of the same U-Net class would share "
        "the first graph compiled, dropping FreeU from the second without a word, so this comparison turns those "
        "guards on."
    )
    return bl.Section("compile", "torch.compile(fullgraph=True)", headers, rows, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sd15", help="sd15, sd21, sdxl, or tiny (SD 1.5 blocks, 1/5 widths)")
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    device = bl.setup(args.device, args.threads)
    print(bl.environment(device) + "\n")
    print(compile_section(args.layout, args.latent, args.batch, args.repeats, args.backend, device).markdown())


if __name__ == "__main__":
    main()
