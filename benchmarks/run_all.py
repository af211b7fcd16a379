"""Run every FreeU benchmark and write the results into a Markdown document (docs/benchmarks.md by default).

    python benchmarks/run_all.py [--quick] [--device cpu|cuda] [--out docs/benchmarks.md] [--sections ...]

Sections (each also runnable alone through its own script):

- ``filter``  skip filter alone, ours vs diffusers vs a copy (filter_speed.py)
- ``controls`` the skip filter with a high-frequency gain or a cutoff, against today's (filter_speed.py)
- ``join``    the whole work FreeU adds at a skip join, ours vs diffusers vs a copy (filter_speed.py)
- ``unet``    U-Net forward with FreeU off / ours / diffusers' enable_freeu (unet_overhead.py)
- ``share``   FreeU's share of a forward at full size, ours vs diffusers (unet_overhead.py --share-only)
- ``memory``  extra peak memory of a forward with FreeU (peak_memory.py)
- ``compile`` torch.compile(fullgraph=True) with and without FreeU (compile_overhead.py)
- ``sweep``   N settings as one batch with per-sample factors vs N runs (batch_sweep.py)
- ``export``  one call of the exported U-Net in ONNX Runtime: plain, FreeU baked, factors as inputs (export_overhead.py;
  CPU only, needs the ``onnx`` extra; ``--export-folder`` keeps the graphs for a later run)

The document keeps one block per device (``cpu``, ``cuda-<gpu name>``) and, inside it, one block per section; a run
replaces only the blocks of the sections it ran on its device, so CPU and GPU results sit side by side and a GPU run
never touches CPU figures. Every block says when, how and on what it was measured. ``--quick`` is a smoke run with
the smallest settings: its figures are marked as such and are not for quoting.
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import batch_sweep
import benchlib as bl
import compile_overhead
import export_overhead
import filter_speed
import peak_memory
import torch
import unet_overhead

SECTIONS = ("filter", "join", "unet", "share", "memory", "compile", "sweep", "controls", "export")
TITLES = {
    "filter": "a. Skip filter alone",
    "join": "b. One skip join: the work FreeU adds",
    "unet": "c. U-Net forward with FreeU on and off",
    "share": "d. FreeU's share of a forward at full size",
    "memory": "e. Extra peak memory of a forward with FreeU",
    "compile": "f. torch.compile(fullgraph=True)",
    "sweep": "g. A sweep of N settings as one batch",
    "controls": "h. Skip filter with a high-frequency gain or a cutoff",
    "export": "i. Exported U-Net in ONNX Runtime: plain, FreeU baked, FreeU's factors as inputs",
}

# settings per run kind; "device" defaults differ where a GPU affords the native latent sizes
FULL = dict(
    filter_models="sd15,sdxl", filter_latent=None, filter_batch=2, filter_repeats=20, dtypes="float32,bfloat16,float16",
    unet_models="sd15,sdxl", unet_dtypes="float32,bfloat16", unet_latent={"cpu": 16, "cuda": 64}, unet_batch=2,
    unet_repeats=9, share_models="sd15", share_dtypes="float32,bfloat16", share_latent={"cpu": 64, "cuda": 64},
    share_repeats=3, memory_models="sd15,sdxl", memory_dtypes="float32,bfloat16", memory_latent=64, memory_batch=2,
    compile_layout="sd15", compile_latent={"cpu": 8, "cuda": 64}, compile_batch=2, compile_repeats=9,
    compile_backend="inductor",
    sweep_layout="sd15", sweep_sizes="4,8", sweep_latent={"cpu": 16, "cuda": 64}, sweep_repeats=5,
    export_layout="sd15", export_latent=64, export_batch=2, export_repeats=10,
)  # fmt: skip
QUICK = dict(
    filter_models="sd15,sdxl", filter_latent=16, filter_batch=2, filter_repeats=3, dtypes="float32,bfloat16,float16",
    unet_models="sd15", unet_dtypes="float32,bfloat16", unet_latent={"cpu": 8, "cuda": 8}, unet_batch=1,
    unet_repeats=2, share_models="sd15", share_dtypes="float32", share_latent={"cpu": 8, "cuda": 8},
    share_repeats=1, memory_models="sd15", memory_dtypes="float32", memory_latent=8, memory_batch=1,
    compile_layout="tiny", compile_latent={"cpu": 8, "cuda": 8}, compile_batch=2, compile_repeats=2,
    compile_backend="aot_eager",  # inductor's C++ build takes minutes on a small CPU; aot_eager still checks fullgraph
    sweep_layout="sd15", sweep_sizes="2", sweep_latent={"cpu": 8, "cuda": 8}, sweep_repeats=1,
    export_layout="tiny", export_latent=16, export_batch=2, export_repeats=1,
)  # fmt: skip

HEADER = """# Benchmarks

What FreeU costs, measured by `benchmarks/run_all.py` (`make bench`): the skip filter and a whole skip join against
diffusers' implementation and against a plain copy, whole U-Net forwards with FreeU on and off (ours and diffusers'
`enable_freeu`), extra peak memory, `torch.compile(fullgraph=True)`, and a sweep of settings run as one batch.

How to read the figures: every time in a table is a median over repetitions in which all contenders of that row ran
back to back in a rotating order; ratios and overheads are computed within that one run. Absolute milliseconds
depend on the machine and its load and are shown for orientation only: compare ratios, never absolute times across
runs or machines. The U-Nets have full SD 1.5 / SDXL widths and random weights (nothing is downloaded); their cost
per forward does not depend on the weights' values. Each device has its own block below, written by a run on that
device; a block marked as a smoke run (`--quick`) only shows that the scripts work. There is no GPU block yet: no
GPU has been available to run it on, and none of these figures says anything about one.

A whole forward varies by a percent or more from one repetition to the next on a shared machine, more than FreeU
costs, so the U-Net table also times FreeU's own code inside the forward (every hook `freeu.apply` installs; every
call of diffusers' `apply_freeu`) and divides it by the forward: that share is what FreeU adds, resolved far below
the noise of the whole.

Rerun: `python benchmarks/run_all.py` or `make bench` (add `--device cuda` on a GPU machine, `--sections unet,memory`
for a subset, `--quick` for a smoke run; with make: `make bench BENCH_ARGS="--device cuda"`), or
`python benchmarks/<script>.py --help` for one section with other settings.
"""


def _settings(quick: bool, device: torch.device) -> dict:
    base = QUICK if quick else FULL
    return {k: (v[device.type] if isinstance(v, dict) else v) for k, v in base.items()}


def _runners(s: dict, device: torch.device) -> dict[str, Callable[[], bl.Section]]:
    split = str.split
    return {
        "filter": lambda: filter_speed.filter_section(
            split(s["filter_models"], ","), split(s["dtypes"], ","), s["filter_batch"], s["filter_latent"],
            s["filter_repeats"], device,
        ),
        "controls": lambda: filter_speed.controls_section(
            split(s["filter_models"], ","), split(s["dtypes"], ","), s["filter_batch"], s["filter_latent"],
            s["filter_repeats"], device,
        ),
        "join": lambda: filter_speed.join_section(
            split(s["filter_models"], ","), split(s["dtypes"], ","), s["filter_batch"], s["filter_latent"],
            s["filter_repeats"], device,
        ),
        "unet": lambda: unet_overhead.unet_section(
            split(s["unet_models"], ","), split(s["unet_dtypes"], ","), s["unet_latent"], s["unet_batch"],
            s["unet_repeats"], device,
        ),
        "share": lambda: unet_overhead.share_section(
            split(s["share_models"], ","), split(s["share_dtypes"], ","), s["share_latent"], s["unet_batch"],
            s["share_repeats"], device,
        ),
        "memory": lambda: peak_memory.memory_section(
            split(s["memory_models"], ","), split(s["memory_dtypes"], ","), s["memory_latent"], s["memory_batch"],
            device,
        ),
        "compile": lambda: compile_overhead.compile_section(
            s["compile_layout"], s["compile_latent"], s["compile_batch"], s["compile_repeats"], s["compile_backend"],
            device,
        ),
        "sweep": lambda: batch_sweep.sweep_section(
            s["sweep_layout"], [int(n) for n in split(s["sweep_sizes"], ",")], s["sweep_latent"],
            s["sweep_repeats"], device,
        ),
        "export": lambda: export_overhead.export_section(
            s["export_layout"], s["export_latent"], s["export_batch"], s["export_repeats"], device,
            s.get("export_folder"),
        ),
    }  # fmt: skip


# -- the document ---------------------------------------------------------------------------------------------------


def _marker(key: str, end: bool = False) -> str:
    return f"<!-- {'/' if end else ''}bench:{key} -->"


def _blocks(text: str, prefix: str) -> dict[str, str]:
    """Marked blocks ``<!-- bench:{prefix}X -->...<!-- /bench:{prefix}X -->`` in ``text``: X -> inner text."""
    pattern = re.compile(r"<!-- bench:(" + re.escape(prefix) + r"[^ ]+) -->\n(.*?)<!-- /bench:\1 -->", flags=re.DOTALL)
    return {m.group(1)[len(prefix) :]: m.group(2) for m in pattern.finditer(text)}


def _wrap(key: str, inner: str) -> str:
    return f"{_marker(key)}\n{inner.rstrip()}\n{_marker(key, end=True)}"


def section_block(section: bl.Section, title: str, provenance: str) -> str:
    """One section as it appears in the document: title, provenance line, table, note."""
    table = bl.markdown_table(section.headers, section.rows)
    return f"### {title}\n\n{provenance}\n\n{table}\n\n{section.note}\n"


def update_document(text: str, device_key: str, device_title: str, sections: dict[str, str]) -> str:
    """``text`` with the blocks of ``sections`` (section key -> block) replaced or added under ``device_key``.

    Other devices' blocks, this device's other sections and everything outside the markers stay as they were.
    """
    devices = _blocks(text, "")
    devices = {k: v for k, v in devices.items() if ":" not in k}
    current = devices.get(device_key, "")
    found = _blocks(current, f"{device_key}:")
    found.update(sections)
    order = [k for k in SECTIONS if k in found] + [k for k in found if k not in SECTIONS]
    inner = f"## {device_title}\n\n" + "\n\n".join(_wrap(f"{device_key}:{k}", found[k]) for k in order) + "\n"
    block = _wrap(device_key, inner)
    if device_key in devices:
        start = text.index(_marker(device_key))
        end = text.index(_marker(device_key, end=True)) + len(_marker(device_key, end=True))
        return text[:start] + block + text[end:]
    return text.rstrip() + "\n\n" + block + "\n"


# -- command --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: smallest settings, figures not for quoting")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default=str(bl.ROOT / "docs" / "benchmarks.md"), help="Markdown file to update")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (default: inductor; quick: aot_eager)"
    )
    parser.add_argument("--export-folder", default=None, help="export: where the exported graphs are kept and reused "
                        "(default: a temporary folder)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("bench")
    keys = [k for k in args.sections.split(",") if k]
    unknown = sorted(set(keys) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; known: {', '.join(SECTIONS)}")
    device = bl.setup(args.device, args.threads)
    settings = _settings(args.quick, device)
    if args.compile_backend:
        settings["compile_backend"] = args.compile_backend
    settings["export_folder"] = args.export_folder
    runners = _runners(settings, device)
    command = "python benchmarks/run_all.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    kind = "**Smoke run (`--quick`): smallest settings, figures not for quoting.**" if args.quick else "Full run."
    out = Path(args.out)
    title = f"{device.type.upper()}: {bl.device_name(device)}"
    failed = []
    for key in keys:
        log.info("[bench] %s ...", key)
        start = time.perf_counter()
        provenance = f"{kind} `{command.strip()}`; {bl.environment(device)}."
        try:
            section = runners[key]()
            block = section_block(section, TITLES[key], provenance)
        except Exception:  # one failing section must not lose the others' figures
            failed.append(key)
            error = traceback.format_exc()
            log.error("[bench] %s failed:\n%s", key, error)
            last = error.strip().splitlines()[-1]
            block = f"### {TITLES[key]}\n\n{provenance}\n\nThis section failed: `{last}`.\n"
        log.info("[bench] %s done in %.0f s\n%s", key, time.perf_counter() - start, block)
        # write after every section, so a long run that is interrupted keeps what it measured; the document is
        # read again each time, so edits to the rest of it made during a long run are kept
        text = update_document(out.read_text() if out.exists() else HEADER, bl.device_key(device), title, {key: block})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    log.info("[bench] wrote %s", out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
