"""``freeu ui``: a local web page that shows the same seed with FreeU off and on, side by side, and a grid.

The page (Gradio, bound to 127.0.0.1 unless ``--host`` says otherwise, no share link, no analytics) runs on the bundled
demo model by default or on a diffusers pipeline (``--model``, loaded offline). Every control is a parameter of
:class:`freeu.FreeUConfig` or of the sampler; values go through the library's settings front door
(:mod:`freeu.settings`) and are refused in the page with its message, which names the parameter. The baseline (FreeU
off) depends only on the model, prompt, seed, steps and guidance, so it is cached and rendered again only when one of
those changes. Every image can be downloaded as a PNG whose ``freeu`` text chunk carries its settings
(:func:`freeu.apps.imaging.read_settings` reads them back); downloads are the model's own output size (the 32x32 demo
images are shown enlarged, nearest neighbour, on the page).

The logic lives in :class:`Studio` and does not import Gradio; :func:`build_app` wraps it in a page.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from freeu import __version__
from freeu.config import PRESETS, FreeUConfig, Preset, is_preset_file, preset_file_in, stage_settings_text
from freeu.settings import Settings, check_settings, resolve

from .errors import require
from .imaging import grid, save_png
from .options import add_model_options, parse_values, port, positive_int, writable_folder
from .runtime import DEFAULT_MODEL, MODEL_HELP, Model, Request, load_model

__all__ = [
    "Cancelled",
    "Sampling",
    "Studio",
    "build_app",
    "default_preset",
    "parse_values",
    "preset_controls",
    "register",
    "run",
]

logger = logging.getLogger(__name__)

Factor = Literal["b1", "b2", "s1", "s2"]
FACTORS: tuple[str, ...] = ("b1", "b2", "s1", "s2")
#: Pixels on the page for the shorter side of small images (enlarged by a whole factor, nearest neighbour).
DISPLAY = 256
MAX_CELLS = 64
#: ``progress(fraction, desc)``: what :class:`Studio` reports while it samples (``gr.Progress`` fits).
Progress = Callable[..., Any]


class Cancelled(RuntimeError):
    """The user pressed Stop; raised from inside the U-Net's forward at the next denoising step."""


@dataclass(frozen=True)
class Sampling:
    """What the baseline depends on (besides the model): a changed field means a new baseline."""

    prompt: str
    seed: int
    steps: int
    guidance: float

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a whole number in [0, 2**63), got {self.seed!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be a whole number from 1 to 1000, got {self.steps!r}")
        if not isinstance(self.guidance, (int, float)) or not 0 <= self.guidance < float("inf"):
            raise ValueError(f"guidance must be a finite number >= 0, got {self.guidance!r}")


@dataclass
class Result:
    """One side-by-side: both images, their PNG files (with settings) and the settings of the FreeU one."""

    baseline: Any
    freeu: Any
    baseline_path: Path
    freeu_path: Path
    settings: dict[str, Any]
    baseline_cached: bool


def enlarge(image: Any, size: int = DISPLAY) -> Any:
    """``image`` enlarged by a whole factor (nearest neighbour, pixels stay pixels) to at least ``size`` px."""
    zoom = max(1, -(-size // min(image.size)))
    if zoom == 1:
        return image
    from PIL import Image

    return image.resize((image.width * zoom, image.height * zoom), Image.NEAREST)


class Studio:
    """The page's logic without the page: validated settings in, images and PNG files with settings out.

    One model per studio. The baseline of the last :class:`Sampling` is kept, so moving a FreeU control renders
    only the FreeU image. :meth:`cancel` stops a running generation at its next denoising step.
    """

    def __init__(
        self, model: Model, out_dir: str | Path | None = None, preset: str | None = None,
        preset_dir: str | Path | None = None,
    ) -> None:  # fmt: skip
        if model.video:
            raise ValueError(f"--model {model.name!r} is a video pipeline; freeu ui shows images (use freeu generate)")
        if model.kind == "pipeline" and not (model.takes_prompt and model.guided):
            raise ValueError(f"--model {model.name!r}: freeu ui needs a text-to-image pipeline that takes a prompt")
        self.model = model
        if preset is not None:
            preset_controls(preset)  # a preset the page cannot show is refused now, not when the page opens
        self.default_preset = preset if preset is not None else default_preset(model)
        #: The folder the page's preset box opens preset files from (the launch's ``--preset`` may be anywhere).
        self.preset_dir = Path(preset_dir) if preset_dir is not None else Path.cwd()
        self.out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="freeu-ui-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.baseline_renders = 0
        self._cache: tuple[Sampling, Any, Path] | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._count = 0

    def preset_controls(self, name: str) -> dict[str, Any]:
        """:func:`preset_controls` for a name typed into the page: a published preset, the preset the page was
        started with, or a preset file inside :attr:`preset_dir` (a page others can reach opens no other path)."""
        if name in PRESETS or name == self.default_preset or not is_preset_file(name):
            return preset_controls(name)
        return preset_controls(str(preset_file_in(name, [self.preset_dir], "preset")))

    # ------------------------------------------------------------------------------------------- validation

    def sampling(self, prompt: str | None, seed: Any, steps: Any, guidance: Any) -> Sampling:
        """The sampling settings; fields the model does not take (prompt, guidance) are fixed."""
        seed, steps = _whole("seed", seed), _whole("steps", steps)
        prompt = (prompt or "") if self.model.takes_prompt else ""
        if self.model.classes is not None and prompt not in self.model.classes:
            raise ValueError(f"class must be one of {list(self.model.classes)}, got {prompt!r}")
        guidance = float(guidance) if self.model.guided and guidance is not None else 0.0
        return Sampling(prompt=prompt, seed=seed, steps=steps, guidance=guidance)

    @staticmethod
    def config(**values: Any) -> FreeUConfig:
        """The page's controls (:class:`freeu.FreeUConfig`'s fields and ``stages``, the stage settings' text:
        ``"3:b=1.1,s=0.9; 1:high=1.1"``) through the library's settings front door, with the page's types fixed
        (radio buttons give strings)."""
        if values.get("version") is not None:
            values["version"] = _whole("version", values["version"])
        return resolve(Settings(**values)).config

    # ------------------------------------------------------------------------------------------- sampling

    def cancel(self) -> None:
        """Stop the running generation at its next denoising step (it raises :class:`Cancelled`)."""
        self._cancel.set()

    def _sample(self, sampling: Sampling, count: int, config: FreeUConfig | None, progress: Progress | None,
                desc: str) -> list[Any]:  # fmt: skip
        done = 0

        def tick(module: Any, args: Any) -> None:
            nonlocal done
            if self._cancel.is_set():
                raise Cancelled("generation cancelled")
            if progress is not None:
                progress((min(done, sampling.steps), sampling.steps), desc=desc)
            done += 1

        request = Request(steps=sampling.steps, prompt=sampling.prompt if self.model.takes_prompt else None,
                          guidance=sampling.guidance if self.model.guided else None)  # fmt: skip
        handle = self.model.unet.register_forward_pre_hook(tick)
        try:
            return self.model.sample([sampling.seed] * count, request, freeu=config)
        finally:
            handle.remove()

    def _settings(self, sampling: Sampling, config: FreeUConfig | None, role: str) -> dict[str, Any]:
        freeu = None if config is None else config.to_dict()
        size = self.model.size
        return {
            "model": self.model.name, "prompt": sampling.prompt if self.model.takes_prompt else None,
            "negative_prompt": None, "seed": sampling.seed, "steps": sampling.steps,
            "guidance": sampling.guidance if self.model.guided else None, "width": size.width,
            "height": size.height, "frames": None, "freeu": freeu, "role": role, "freeu_package": __version__,
        }  # fmt: skip

    def _path(self, stem: str) -> Path:
        self._count += 1
        return self.out_dir / f"{self._count:05d}-{stem}.png"

    def generate(self, sampling: Sampling, config: FreeUConfig, progress: Progress | None = None) -> Result:
        """The baseline (cached per ``sampling``) and the FreeU image from the same seed, each saved as PNG."""
        if config.batch_size is not None:
            raise ValueError("the side-by-side takes one value per factor; per-sample values belong in the grid")
        with self._lock:
            self._cancel.clear()
            cached = self._cache is not None and self._cache[0] == sampling
            if not cached:
                self._cache = None
                image = self._sample(sampling, 1, None, progress, "FreeU off")[0]
                self.baseline_renders += 1
                path = save_png(image, self._path(f"seed{sampling.seed}-baseline"),
                                self._settings(sampling, None, "baseline"))  # fmt: skip
                self._cache = (sampling, image, path)
            _, baseline, baseline_path = self._cache
            image = self._sample(sampling, 1, config, progress, "FreeU on")[0]
            settings = self._settings(sampling, config, "freeu")
            path = save_png(image, self._path(f"seed{sampling.seed}-freeu"), settings)
            return Result(baseline, image, baseline_path, path, settings, cached)

    def grid(
        self,
        sampling: Sampling,
        config: FreeUConfig,
        rows: tuple[str, Sequence[float]],
        cols: tuple[str, Sequence[float]],
        progress: Progress | None = None,
    ) -> tuple[Any, Path, list[list[Any]]]:
        """A grid over two factors (``(name, values)`` each) from one seed, all cells in one batch; the other
        factors as in ``config``. Returns the labelled picture, its PNG (settings include the axes) and the cells
        (``cells[row][col]``, model size)."""
        (row_name, row_values), (col_name, col_values) = rows, cols
        for name in (row_name, col_name):
            if name not in FACTORS:
                raise ValueError(f"grid axes must be among {FACTORS}, got {name!r}")
        if row_name == col_name:
            raise ValueError(f"the grid's rows and columns must vary different factors, got {row_name} for both")
        cells = len(row_values) * len(col_values)
        if cells > MAX_CELLS:
            raise ValueError(f"the grid may have at most {MAX_CELLS} cells, got {len(row_values)}x{len(col_values)}")
        per_sample: dict[str, Any] = {name: [getattr(config, name)] * cells for name in FACTORS}
        per_sample[row_name] = [r for r in row_values for _ in col_values]
        per_sample[col_name] = [c for _ in row_values for c in col_values]
        batch = config.replace(**{k: tuple(v) for k, v in per_sample.items()})
        with self._lock:
            self._cancel.clear()
            images = self._sample(sampling, cells, batch, progress, f"grid of {cells}")
        cells_2d = [images[i * len(col_values) : (i + 1) * len(col_values)] for i in range(len(row_values))]
        fixed = ", ".join(f"{n}={getattr(config, n):g}" for n in FACTORS if n not in (row_name, col_name))
        picture = grid(
            cells_2d, row_labels=[f"{row_name}={v:g}" for v in row_values],
            col_labels=[f"{col_name}={v:g}" for v in col_values],
            title=f"{self.model.name}: seed {sampling.seed}, {sampling.steps} steps",
            footer=f"{fixed}, version {config.version}, {config.convention} convention", min_cell=128,
        )  # fmt: skip
        settings = {
            **self._settings(sampling, config, "grid"),
            "grid": {"rows": {row_name: list(row_values)}, "cols": {col_name: list(col_values)}},
        }
        return picture, save_png(picture, self._path(f"seed{sampling.seed}-grid"), settings), cells_2d


def _whole(name: str, value: Any) -> int:
    if isinstance(value, str):
        value = value.strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


# ----------------------------------------------------------------------------------------------------- the page


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home
    return require("gradio", "ui", "freeu ui")


def theme():
    """Gradio's default look with the system's fonts (the default theme fetches a web font from a CDN)."""
    gr = _gradio()
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def build_app(studio: Studio, steps: int = 25, guidance: float | None = None):
    """The page for ``studio``: controls on the left; side-by-side and grid tabs on the right. ``guidance``: the
    initial scale (default: the model's). A class-conditional model's prompt is a choice of its classes."""
    # size: the page: its callbacks, its layout read top to bottom as it shows (the controls' column, then the tabs'),
    # and the wiring of the two; split, the parts would hand the page's components back and forth
    gr = _gradio()
    model = studio.model
    guidance = model.default_guidance if guidance is None else guidance
    initial = preset_controls(studio.default_preset)
    tracker = gr.Progress()  # Gradio sees it as a parameter default and reports the progress of each event

    def refused(error: Exception):
        return gr.Error(str(error), title="Refused")

    def read(prompt, seed, n_steps, scale, b1, b2, s1, s2, version, convention, start, stop, stages):
        # size: Gradio calls it with the page's controls positionally, one parameter per control of ``common`` below
        try:
            sampling = studio.sampling(prompt, seed, n_steps, scale)
            config = studio.config(b1=b1, b2=b2, s1=s1, s2=s2, version=version, convention=convention,
                                   start=start, stop=stop, stages=stages)  # fmt: skip
        except (TypeError, ValueError) as error:
            raise refused(error) from None
        return sampling, config

    def on_generate(*values, progress=tracker):
        sampling, config = read(*values)
        try:
            result = studio.generate(sampling, config, progress)
        except Cancelled:
            raise gr.Error("Generation cancelled.", title="Stopped") from None
        except ValueError as error:
            raise refused(error) from None
        cached = " (FreeU off: cached)" if result.baseline_cached else ""
        text = f"seed {sampling.seed}, {sampling.steps} steps{cached}"
        return (
            enlarge(result.baseline), enlarge(result.freeu),
            gr.DownloadButton(value=str(result.baseline_path), interactive=True),
            gr.DownloadButton(value=str(result.freeu_path), interactive=True), text,
        )  # fmt: skip

    def on_grid(*values, progress=tracker):
        *common, row_name, row_text, col_name, col_text = values
        sampling, config = read(*common)
        try:
            rows = (row_name, parse_values(f"rows ({row_name})", row_text))
            cols = (col_name, parse_values(f"columns ({col_name})", col_text))
            picture, path, _ = studio.grid(sampling, config, rows, cols, progress)
        except Cancelled:
            raise gr.Error("Generation cancelled.", title="Stopped") from None
        except ValueError as error:
            raise refused(error) from None
        return picture, gr.DownloadButton(value=str(path), interactive=True)

    def on_preset(name):
        if name == "custom" or not name:
            return [gr.update()] * len(CONTROLLED)
        try:
            values = studio.preset_controls(name)
        except ValueError as error:
            raise refused(error) from None
        return [values[k] for k in CONTROLLED]

    with gr.Blocks(title="FreeU") as app:
        gr.Markdown(
            f"## FreeU on `{model.name}`\nThe same seed with FreeU off and on. FreeU off is rendered again only when "
            "the model, prompt, seed, steps or guidance change."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                if model.classes is not None:
                    prompt = gr.Dropdown(list(model.classes), value=model.default_prompt, label="Class",
                                         elem_id="prompt")  # fmt: skip
                else:
                    prompt = gr.Textbox(label="Prompt", value="", visible=model.takes_prompt, elem_id="prompt")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="seed")
                    n_steps = gr.Number(label="Steps", value=steps, precision=0, minimum=1, elem_id="steps")
                scale = gr.Slider(0, 20, value=guidance, step=0.1, label="Guidance", visible=model.guided,
                                  elem_id="guidance")  # fmt: skip
                choices = ["custom", *sorted(PRESETS)]
                if studio.default_preset not in choices:
                    choices.append(studio.default_preset)
                presets = gr.Dropdown(choices, value=studio.default_preset, label="Preset", elem_id="preset",
                                      allow_custom_value=True,
                                      info=f"a published preset, or a preset file (.toml) in "
                                      f"{studio.preset_dir}")  # fmt: skip
                factors = {
                    name: gr.Slider(0, 3, value=initial[name], step=0.01, label=name, elem_id=name) for name in FACTORS
                }
                version = gr.Radio(["1", "2"], value=initial["version"], label="Version (1: constant, 2: structure)",
                                   elem_id="version")  # fmt: skip
                convention = gr.Radio(["official", "diffusers"], value=initial["convention"], label="Convention",
                                      elem_id="convention")  # fmt: skip
                with gr.Row():
                    start = gr.Slider(0, 1, value=initial["start"], step=0.01, label="Window start", elem_id="start")
                    stop = gr.Slider(0, 1, value=initial["stop"], step=0.01, label="Window stop", elem_id="stop")
                stages = gr.Textbox(
                    value=initial["stages"], label="More stages and controls", elem_id="stages",
                    placeholder="3:b=1.1,s=0.9; 1:high=1.1,window=0.25/0.5,cutoff=0.1",
                    info="STAGE:KEY=VALUE,... with ; between stages; keys b, s, high (gain of the skip's other "
                    "frequencies), window (OFFSET/WIDTH of the scaled channels), cutoff (the square as a fraction "
                    "of the map)",
                )  # fmt: skip
            with gr.Column(scale=2):
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    halt = gr.Button("Stop", variant="stop", elem_id="stop-button")
                with gr.Tabs():
                    with gr.Tab("Side by side", id="side"):
                        with gr.Row():
                            baseline = gr.Image(label="FreeU off", type="pil", format="png", elem_id="baseline",
                                                interactive=False)  # fmt: skip
                            freeu_image = gr.Image(label="FreeU on", type="pil", format="png", elem_id="freeu",
                                                   interactive=False)  # fmt: skip
                        with gr.Row():
                            dl_baseline = gr.DownloadButton("Download FreeU off (PNG)", interactive=False,
                                                            elem_id="download-baseline")  # fmt: skip
                            dl_freeu = gr.DownloadButton("Download FreeU on (PNG)", interactive=False,
                                                         elem_id="download-freeu")  # fmt: skip
                        note = gr.Markdown(elem_id="note")
                    with gr.Tab("Grid", id="grid"):
                        with gr.Row():
                            row_name = gr.Dropdown(list(FACTORS), value="b1", label="Rows vary", elem_id="grid-rows")
                            row_text = gr.Textbox(value="1.0, 1.2, 1.4", label="Row values", elem_id="grid-row-values")
                            col_name = gr.Dropdown(list(FACTORS), value="s1", label="Columns vary", elem_id="grid-cols")
                            col_text = gr.Textbox(value="1.0, 0.6, 0.2", label="Column values",
                                                  elem_id="grid-col-values")  # fmt: skip
                        go_grid = gr.Button("Render grid", variant="primary", elem_id="generate-grid")
                        picture = gr.Image(label="Grid", type="pil", format="png", elem_id="grid-image",
                                           interactive=False)  # fmt: skip
                        dl_grid = gr.DownloadButton("Download grid (PNG)", interactive=False, elem_id="download-grid")
        common = [prompt, seed, n_steps, scale, *factors.values(), version, convention, start, stop, stages]
        generated = go.click(on_generate, common, [baseline, freeu_image, dl_baseline, dl_freeu, note],
                             concurrency_limit=1, concurrency_id="sampler")  # fmt: skip
        gridded = go_grid.click(on_grid, [*common, row_name, row_text, col_name, col_text], [picture, dl_grid],
                                concurrency_limit=1, concurrency_id="sampler")  # fmt: skip
        halt.click(studio.cancel, None, None, cancels=[generated, gridded], queue=False)
        presets.change(on_preset, presets, [*factors.values(), version, convention, start, stop, stages])
    return app


def launch(app, host: str = "127.0.0.1", port: int | None = None, block: bool = True, allowed: Sequence[Path] = ()):
    """Serve ``app``: no share link, system fonts, no server-side rendering (it would need Node)."""
    return app.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
        quiet=True, ssr_mode=False, theme=theme(), allowed_paths=[str(p) for p in allowed],
    )  # fmt: skip


#: The page's controls that a preset sets, in the order of :func:`preset_controls`' keys.
CONTROLLED = (*FACTORS, "version", "convention", "start", "stop", "stages")


def preset_controls(name: str) -> dict[str, Any]:
    """The page's control values for a published preset or a preset file: ``Studio.config(**values)`` gives the
    preset's settings back. ``ValueError`` for an unknown name, a file that does not load, or a setting the page has
    no control for (``threshold``, ``ramp``: use ``freeu generate --preset FILE``)."""
    if name not in PRESETS and not is_preset_file(name):  # no auto here: the page starts from the layout's preset
        raise ValueError(f"preset must be one of {sorted(PRESETS)} or a preset file (.toml), got {name!r}")
    preset = check_settings(Settings(preset=name)).preset
    assert isinstance(preset, Preset)
    config = preset.config
    hidden = [f"{k}={getattr(config, k)}" for k, default in (("threshold", 1), ("ramp", 0.0), ("num_train_timesteps",
              1000)) if getattr(config, k) != default]  # fmt: skip
    if hidden:
        what = f"preset file {name}" if preset.path is not None else f"preset {name!r}"
        raise ValueError(f"{what} sets {', '.join(hidden)}, which the page has no control for: use freeu generate "
                         "--preset with it")  # fmt: skip
    values: dict[str, Any] = {k: getattr(config, k) for k in FACTORS}
    values.update(version=str(config.version), convention=config.convention, start=config.start, stop=config.stop,
                  stages=stage_settings_text(config))  # fmt: skip
    return values


def default_preset(model: Model) -> str:
    """The preset the page starts from: ``sd15`` (the demo's full setting) on the demo model, else the preset of
    the pipeline's layout (``sd15`` where none fits)."""
    if model.kind == "demo":
        return "sd15"
    try:
        return model.preset()[0]
    except ValueError:
        return "sd15"


def register(subparsers: Any) -> None:
    """Add ``ui`` to the ``freeu`` command line."""
    p = subparsers.add_parser(
        "ui", help="a local web page: the same seed with FreeU off and on, side by side, and a grid",
        description="Start a local web page (Gradio) to try FreeU's settings interactively. Needs freeu[ui].",
    )  # fmt: skip
    add_model_options(p, model_help=f"{MODEL_HELP}; default {DEFAULT_MODEL}", model_default=DEFAULT_MODEL,
                      title="model")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--steps", type=positive_int, default=25, help="initial denoising steps (default 25)")
    p.add_argument("--preset", default=None, help="the preset the page starts from: a published one or a preset "
                   "file (.toml, as freeu tune writes); default: the model's")  # fmt: skip
    p.add_argument("--preset-dir", default=None, help="the folder whose preset files (.toml) the page's preset box "
                   "may open, by name; no other path is opened (default: the current folder)")  # fmt: skip
    p.add_argument("--out", default=None, help="folder for the PNGs (default: a new temporary folder)")
    p.set_defaults(handler=run)


def check_address(host: str, port: int | None) -> None:
    """``ValueError`` unless this machine can listen on ``host`` (and ``port``, when given) right now: an address
    that is not one of this machine's fails at once instead of after the server's retries."""
    try:
        infos = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise ValueError(f"--host {host!r}: not an address of this machine ({error})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            where = f"{host}:{port}" if port else host
            raise ValueError(f"--host/--port: cannot listen on {where} ({error.strerror or error})") from None


def run(args: argparse.Namespace) -> int:
    """``freeu ui``: load the model, serve the page until Ctrl+C. A temporary PNG folder left empty is removed."""
    _gradio()
    check_address(args.host, args.port)
    if args.out is not None:
        writable_folder("--out", args.out)
    if args.preset is not None:
        preset_controls(args.preset)  # refused before the model loads
    if args.preset_dir is not None and not Path(args.preset_dir).is_dir():
        raise ValueError(f"--preset-dir {args.preset_dir}: not a folder")
    studio = Studio(load_model(args.model, device=args.device, dtype=args.dtype), args.out, preset=args.preset,
                    preset_dir=args.preset_dir)  # fmt: skip
    try:
        app = build_app(studio, steps=args.steps)
        device = next(studio.model.unet.parameters()).device
        print(f"freeu ui: {studio.model.name} on {device}; PNGs go to {studio.out_dir}", flush=True)
        try:
            launch(app, args.host, args.port, block=True, allowed=[studio.out_dir])
        except KeyboardInterrupt:
            pass
        finally:
            app.close()
    finally:
        if args.out is None and studio.out_dir.is_dir() and not any(studio.out_dir.iterdir()):
            studio.out_dir.rmdir()
    return 0
