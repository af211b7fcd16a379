"""Seconds per sampling step in the real ComfyUI: no FreeU, the built-in FreeU_V2 / FreeU nodes, and the "FreeU
(freeu)" node pack (integrations/comfyui), on ComfyUI's own UNetModel at SD 1.5's widths (random weights), one
``apply_model`` call per step with classifier-free guidance's batch of two, interleaved rounds.

ComfyUI comes from ``--comfyui DIR`` (a checkout), ``FREEU_COMFYUI``, or the source snapshot beside the repository
(extracted into a temporary folder). Prints a Markdown table for docs/benchmarks.md.

    python benchmarks/comfyui_step.py --latent 32 --repeats 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
# torchvision for ComfyUI lives apart from the project's environment (see the Makefile): in it here, it is needed
sys.path.insert(0, str(Path(sys.prefix) / "comfyui-extras"))
import benchlib  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "hosts"))
import comfy_setup  # noqa: E402


def comfyui_folder(given: str | None) -> Path:
    if given or os.environ.get("FREEU_COMFYUI"):
        return Path(given or os.environ["FREEU_COMFYUI"])
    snapshots = sorted((ROOT.parent / "shared" / "vendor").glob("comfyui-*.tar.gz"))
    if not snapshots:
        sys.exit("comfyui_step: give --comfyui DIR (a ComfyUI checkout) or set FREEU_COMFYUI")
    folder = Path(tempfile.mkdtemp(prefix="freeu-bench-comfyui-"))
    with tarfile.open(snapshots[-1]) as archive:
        archive.extractall(folder, filter="data")
    return folder / "ComfyUI"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfyui", default=None, help="a ComfyUI checkout (default: FREEU_COMFYUI, else the snapshot)")
    p.add_argument("--latent", type=int, default=32, help="latent side (default 32: a 256 px image)")
    p.add_argument("--repeats", type=int, default=8, help="interleaved rounds (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    comfy_dir = comfyui_folder(args.comfyui)
    device = benchlib.setup("cpu", args.threads)
    comfy_setup.start(str(comfy_dir))
    import comfy.model_patcher
    from comfy_extras.nodes_freelunch import FreeU, FreeU_V2

    pack = comfy_setup.load_pack(str(ROOT / "integrations" / "comfyui"))
    plain = comfy_setup.patcher(comfy_setup.SD15_UNET, std=0.02)
    ours = dict(preset="custom", b1=1.3, b2=1.4, s1=0.9, s2=0.2, convention="official", threshold=1,
                start_percent=0.0, end_percent=1.0, ramp=0.0)  # fmt: skip
    patchers = {
        "no FreeU": plain,
        "FreeU_V2 (built-in)": FreeU_V2.execute(plain, b1=1.3, b2=1.4, s1=0.9, s2=0.2).result[0],
        "FreeU (freeu), version 2": pack.FreeUNode.execute(plain, version="2", **ours).result[0],
        "FreeU (built-in, version 1)": FreeU.execute(plain, b1=1.3, b2=1.4, s1=0.9, s2=0.2).result[0],
        "FreeU (freeu), version 1": pack.FreeUNode.execute(plain, version="1", **ours).result[0],
    }
    x = torch.randn(2, 4, args.latent, args.latent, generator=torch.Generator().manual_seed(1))
    context = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([2.0, 2.0])

    def step(patcher):
        options = comfy.model_patcher.create_model_options_clone(patcher.model_options)["transformer_options"]
        options["sigmas"] = sigma
        with torch.no_grad():
            return patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)

    contenders = [benchlib.Contender(name, lambda p=patcher: step(p)) for name, patcher in patchers.items()]
    times = benchlib.interleaved(contenders, args.repeats, device)
    base = times["no FreeU"]
    rows = []
    for name, values in times.items():
        ratios = benchlib.paired_ratios(values, base)
        low, high = benchlib.quartiles([r - 1 for r in ratios])
        rows.append([name, benchlib.fmt_ms(benchlib.median(values)),
                     "-" if name == "no FreeU" else f"{benchlib.fmt_pct(benchlib.median(ratios) - 1)} "
                     f"({benchlib.fmt_pct(low)} .. {benchlib.fmt_pct(high)})"])  # fmt: skip
    # the whole step varies more than FreeU costs: also time the patch functions alone, inside the same steps
    inside: dict[str, list[float]] = {name: [] for name in patchers if name != "no FreeU"}
    for name in inside:
        found = patchers[name].model_options["transformer_options"]["patches"]["output_block_patch"]
        patchers[name].model_options["transformer_options"]["patches"]["output_block_patch"] = [
            timed(patch, inside[name]) for patch in found
        ]
    benchlib.interleaved(contenders, args.repeats, device, warmup=0)
    for row in rows[1:]:
        spent = sum(inside[row[0]]) / args.repeats
        row.append(f"{benchlib.fmt_ms(spent)} ({benchlib.fmt_pct(spent / benchlib.median(base))[1:]})")
    rows[0].append("-")
    print(f"ComfyUI UNetModel at SD 1.5 widths, latent {args.latent} (batch 2: one guided step), float32, "
          f"{args.repeats} interleaved rounds; {benchlib.environment(device)}\n")  # fmt: skip
    headers = ["", "median per step (ms)", "overhead vs no FreeU (paired quartiles)", "in FreeU's patch per step (ms)"]
    print(benchlib.markdown_table(headers, rows))
    return 0


def timed(patch, spent: list[float]):
    """``patch`` with the seconds of each call appended to ``spent``."""
    import time

    def run(h, hsp, transformer_options):
        start = time.perf_counter()
        try:
            return patch(h, hsp, transformer_options)
        finally:
            spent.append(time.perf_counter() - start)

    return run


if __name__ == "__main__":
    sys.exit(main())
