"""``freeu export``: a U-Net with FreeU inside, as an ONNX graph, an OpenVINO model or a ``torch.export`` program.

FreeU's filter here has no FFT and no complex numbers (:mod:`freeu.fourier`: matrix products with cosine and sine
modes that the graph computes from the map's size), so the exported graph holds only operators every runtime has:
ONNX Runtime, OpenVINO, TensorRT (from the ONNX file) and DirectML run it, where diffusers' FreeU needs a ``DFT``.

Two modes:

- ``baked``: the factors are constants of the graph (the plain U-Net plus FreeU's few operators);
- ``inputs``: ``b`` and ``s`` of each stage are graph inputs (``freeu_b1``, ``freeu_s1``, ``freeu_b2``,
  ``freeu_s2``: float32, one value per sample of the batch), so one graph serves FreeU off (all 1: the plain
  U-Net's output), every preset, any tuned setting, a step window (the caller gives each step's factors:
  :meth:`ExportedUNet.factors`) and per-sample factors. Version, convention, threshold and the stages beyond the
  factors are part of the graph.

Batch and image size are dynamic (sizes a multiple of the U-Net's downsampling, and large enough that the smallest
map FreeU filters is wider than its square). ``manifest.json`` beside the graph says what each input is.

:func:`export_unet` writes a folder; :class:`ExportedUNet` runs one (ONNX Runtime or OpenVINO) and feeds the factors
of each step from a :class:`freeu.FreeUConfig` with a window, as :func:`freeu.apply` would apply them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from freeu import __version__
from freeu.config import FreeUConfig
from freeu.hooks import active_config, apply, apply_with_factor_inputs
from freeu.join import blend, window_weight
from freeu.models import class_names

__all__ = ["FACTOR_INPUTS", "FORMATS", "MODES", "ExportResult", "ExportedUNet", "export_unet"]

logger = logging.getLogger(__name__)

#: What ``--format`` takes: an ONNX graph, an OpenVINO model (converted from that graph), a ``torch.export`` program,
#: and a whole Stable Diffusion pipeline in the folder layout of diffusers' ``OnnxStableDiffusionPipeline``.
FORMATS = ("onnx", "openvino", "pt2", "onnx-pipeline")
#: What ``--mode`` takes: the factors as constants of the graph, or as its inputs.
MODES = ("baked", "inputs")
#: The factor inputs of an ``inputs`` graph, stage by stage.
FACTOR_INPUTS = ("freeu_b1", "freeu_s1", "freeu_b2", "freeu_s2")
#: The ONNX operator set the graphs are written in.
OPSET = 18
#: Where each format's package comes from (the error that names the extra).
_EXTRAS = {"onnx": ("onnxscript", "onnx"), "openvino": ("openvino", "openvino"), "pt2": (None, None),
           "onnx-pipeline": ("onnxscript", "onnx")}  # fmt: skip
#: The folders and file of an ``onnx-pipeline`` export, as diffusers' ONNX Stable Diffusion pipeline loads them.
PIPELINE_PARTS = ("text_encoder", "vae_encoder", "vae_decoder", "unet", "tokenizer", "scheduler", "model_index.json")
#: The latent scale diffusers' ONNX pipeline divides by (a constant of its code, not read from the folder).
ONNX_PIPELINE_LATENT_SCALE = 0.18215
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class _Input:
    name: str
    shape: tuple[str | int, ...]
    dtype: str
    meaning: str


@dataclass(frozen=True)
class _Signature:
    """What a U-Net family takes, as graph inputs, and how to call it with them."""

    kind: str
    inputs: tuple[_Input, ...]
    call: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]
    downsampling: int
    channels: int


def _signature(unet: nn.Module) -> _Signature:
    """The inputs of a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` or an LDM ``UNetModel``; ``ValueError``
    for anything else."""
    names = class_names(unet)
    config = getattr(unet, "config", None)
    sample = ("batch", "channels", "height", "width")
    time = _Input("timestep", ("batch",), "float32", "the diffusion timestep of each sample (0 .. 1000)")
    if "UNet2DModel" in names:
        inputs = [_Input("sample", sample, "float32", "the noisy sample"), time]
        classes = getattr(config, "num_class_embeds", None)
        if classes:
            inputs.append(_Input("class_labels", ("batch",), "int64", f"the class of each sample, 0 .. {classes - 1}"))

        def call(u: nn.Module, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return u(x["sample"], x["timestep"], class_labels=x.get("class_labels")).sample

        return _Signature("diffusers-unet2d", tuple(inputs), call, 2 ** (len(config.down_block_types) - 1),
                          int(config.in_channels))  # fmt: skip
    if "UNet2DConditionModel" in names:
        inputs = [
            _Input("sample", sample, "float32", "the noisy latent"), time,
            _Input("encoder_hidden_states", ("batch", "tokens", int(config.cross_attention_dim)), "float32",
                   "the text encoder's hidden states"),
        ]  # fmt: skip
        added = getattr(config, "addition_embed_type", None)
        if added == "text_time":
            width = int(config.projection_class_embeddings_input_dim) - 6 * int(config.addition_time_embed_dim)
            inputs += [
                _Input("text_embeds", ("batch", width), "float32", "the pooled text embedding (SDXL)"),
                _Input("time_ids", ("batch", 6), "float32", "original size, crop, target size (SDXL)"),
            ]
        elif added is not None or getattr(config, "class_embed_type", None) is not None:
            raise ValueError(f"freeu export: a UNet2DConditionModel with addition_embed_type={added!r} / "
                             f"class_embed_type={config.class_embed_type!r} is not supported yet")  # fmt: skip

        def call(u: nn.Module, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
            extra = {"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]} if "time_ids" in x else None
            return u(x["sample"], x["timestep"], x["encoder_hidden_states"], added_cond_kwargs=extra).sample

        return _Signature("diffusers-unet2d-condition", tuple(inputs), call,
                          2 ** (len(config.down_block_types) - 1), int(config.in_channels))  # fmt: skip
    if "UNetModel" in names and hasattr(unet, "input_blocks") and hasattr(unet, "output_blocks"):
        # the cross-attention's key projection takes the context (LDM keeps no context_dim of its own)
        keys = [m.to_k for n, m in unet.named_modules() if n.endswith("attn2") and hasattr(m, "to_k")]
        context = getattr(unet, "context_dim", None) or (keys[0].in_features if keys else None)
        inputs = [_Input("sample", sample, "float32", "the noisy latent"), time]
        if context is not None:
            inputs.append(_Input("encoder_hidden_states", ("batch", "tokens", int(context)), "float32",
                                 "the cross-attention context"))  # fmt: skip
        if getattr(unet, "num_classes", None) is not None:
            raise ValueError("freeu export: an LDM UNetModel with class or ADM conditioning (y) is not supported yet")

        def call(u: nn.Module, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
            if "encoder_hidden_states" in x:
                return u(x["sample"], x["timestep"], context=x["encoder_hidden_states"])
            return u(x["sample"], x["timestep"])

        downsamples = sum(1 for m in unet.input_blocks.modules() if type(m).__name__ == "Downsample")
        channels = unet.in_channels if hasattr(unet, "in_channels") else unet.input_blocks[0][0].in_channels
        return _Signature("ldm-unet", tuple(inputs), call, 2**downsamples, int(channels))
    raise ValueError(f"freeu export takes a diffusers UNet2DModel or UNet2DConditionModel or an LDM UNetModel, got "
                     f"{type(unet).__name__}")  # fmt: skip


class _Graph(nn.Module):
    """The module that is traced: the U-Net called with the graph's inputs by name, and in ``inputs`` mode the
    factors passed to FreeU's hooks."""

    def __init__(self, unet: nn.Module, signature: _Signature, handle: Any, names: Sequence[str]) -> None:
        super().__init__()
        self.unet, self.signature, self.handle, self.names = unet, signature, handle, tuple(names)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.names, args, strict=True))
        if self.handle is None or not self.handle.factor_inputs:
            return self.signature.call(self.unet, inputs)
        stages = {1: (inputs["freeu_b1"], inputs["freeu_s1"]), 2: (inputs["freeu_b2"], inputs["freeu_s2"])}
        with self.handle.factors_given(stages):
            return self.signature.call(self.unet, inputs)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_unet` wrote: the folder, each format's file, and the manifest."""

    out: Path
    files: Mapping[str, Path]
    manifest: Mapping[str, Any] = field(default_factory=dict)


def _require(format: str) -> None:
    module, extra = _EXTRAS[format]
    if module is None:
        return
    try:
        __import__(module)
        if format in ("onnx", "onnx-pipeline"):
            __import__("onnx")
    except ImportError:
        raise ValueError(f"--format {format} needs the {module} package: pip install 'freeu[{extra}]'") from None


def _check_out(out: Path) -> None:
    """The output folder: new, empty, or an earlier export (its manifest) to replace."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"--out {out}: the folder holds other files (no {MANIFEST} of an earlier export); give a new "
                         "or empty folder")  # fmt: skip


#: Every file an export may write, besides the manifest.
_WRITTEN = ("unet.onnx", "unet.onnx.data", "unet.xml", "unet.bin", "unet.pt2")


def _clear_earlier(out: Path) -> None:
    """An earlier export's files, removed before the new one is written (nothing else in the folder is touched)."""
    import shutil

    for name in (*_WRITTEN, *PIPELINE_PARTS, MANIFEST):
        path = out / name
        if path.is_file() or path.is_symlink():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


def _examples(signature: _Signature, inputs: Sequence[_Input], batch: int, size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for spec in inputs:
        if spec.name == "sample":
            examples.append(torch.randn(batch, signature.channels, size, size, generator=generator))
        elif spec.name == "timestep":
            examples.append(torch.full((batch,), 500.0))
        elif spec.name == "class_labels":
            examples.append(torch.zeros(batch, dtype=torch.int64))
        elif spec.name in FACTOR_INPUTS:
            examples.append(torch.full((batch,), 1.2))
        else:
            shape = [batch if d == "batch" else 8 if d == "tokens" else d for d in spec.shape]
            examples.append(torch.randn(*shape, generator=generator))
    return examples


def _dims(signature: _Signature, inputs: Sequence[_Input], min_size: int) -> dict[str, Any]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height", min=min_size, max=max(min_size, 4096 // signature.downsampling))
    width = torch.export.Dim("width", min=min_size, max=max(min_size, 4096 // signature.downsampling))
    tokens = torch.export.Dim("tokens", min=1, max=4096)
    per_input = []
    for spec in inputs:
        dims = {}
        for axis, name in enumerate(spec.shape):
            if name == "batch":
                dims[axis] = batch
            elif name == "height":
                dims[axis] = signature.downsampling * height
            elif name == "width":
                dims[axis] = signature.downsampling * width
            elif name == "tokens":
                dims[axis] = tokens
        per_input.append(dims)
    return {"args": tuple(per_input)}


def _check_request(unet: nn.Module, config: FreeUConfig | None, formats: Sequence[str] | str, mode: str,
                   pipeline: Any) -> list[str]:  # fmt: skip
    """:func:`export_unet`'s arguments checked before any work; the formats as a list."""
    if isinstance(formats, str):
        formats = [formats]
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format must be one or more of {', '.join(FORMATS)}, got {list(formats)}")
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if config is not None and config.windowed and mode == "baked":
        raise ValueError("a step window needs the timestep at every call: export with --mode inputs and let the "
                         "sampler give each step's factors (ExportedUNet.factors)")  # fmt: skip
    if "onnx-pipeline" in formats:
        if mode != "baked":
            raise ValueError("--format onnx-pipeline: diffusers' ONNX pipeline calls its U-Net with sample, "
                             "timestep and encoder_hidden_states only, so the factors cannot be inputs; use --mode "
                             "baked")  # fmt: skip
        _check_pipeline(pipeline, unet)
    if mode == "inputs" and config is None:
        raise ValueError("--mode inputs needs FreeU settings (version, convention, threshold): give --preset")
    if config is not None and any(config.stage(k).cutoff is not None for k in range(1, config.num_stages + 1)):
        raise ValueError("a stage's cutoff (a square that grows with the map) is not supported by freeu export yet; "
                         "use threshold")  # fmt: skip
    if config is not None and mode == "inputs" and config.num_stages > 2:
        raise ValueError("--mode inputs takes the factors of stages 1 and 2 as inputs; stages beyond two are not "
                         "supported yet (export with --mode baked)")  # fmt: skip
    for f in formats:
        _require("onnx" if f == "openvino" else f)
        _require(f)
    return formats


def export_unet(
    unet: nn.Module,
    out: str | Path,
    config: FreeUConfig | None,
    *,
    formats: Sequence[str] = ("onnx",),
    mode: str = "baked",
    description: str = "",
    pipeline: Any = None,
) -> ExportResult:
    """Write ``unet`` with FreeU (``config``; ``None``: the plain U-Net) into the folder ``out``.

    ``formats``: any of :data:`FORMATS` (``openvino`` is converted from the ONNX graph, which is kept);
    ``mode``: ``"baked"`` (``config``'s factors as constants) or ``"inputs"`` (the factors as graph inputs,
    ``config`` giving the rest: version, convention, threshold, stages beyond two are refused). A step window needs
    ``inputs`` (the caller gives each step's factors). ``ValueError`` names what is wrong: a model of another
    family, a format whose package is missing (and the extra that installs it), an output folder that holds
    something else, a failure of the exporter (with the operator it names).

    ``"onnx-pipeline"`` writes a whole Stable Diffusion 1.x/2.x ``pipeline`` (whose U-Net is ``unet``) in the folder
    layout diffusers' ``OnnxStableDiffusionPipeline`` loads: the U-Net with FreeU baked in at ``unet/model.onnx``,
    the text encoder and the VAE's two halves as ONNX graphs, the tokenizer and the scheduler as they are."""
    formats = _check_request(unet, config, formats, mode, pipeline)
    out = Path(out)
    _check_out(out)
    signature = _signature(unet)
    if config is None and active_config(unet) is not None:
        raise ValueError("the U-Net has FreeU applied: remove it (freeu.remove) to export the plain U-Net, or pass its "
                         "settings as config")  # fmt: skip
    inputs = list(signature.inputs) + (
        [_Input(n, ("batch",), "float32", f"FreeU's {n[6]} of stage {n[7]} for each sample (1: off)")
         for n in FACTOR_INPUTS] if mode == "inputs" else []
    )  # fmt: skip
    # the deepest joins run at the sample's size over the downsampling: their maps must be wider than the square
    min_size = 2 * (config.threshold if config is not None else 1) + 1
    unet = unet.eval()
    handle: Any = None
    if config is not None:
        if mode == "inputs":  # the window is the caller's: each step's factors come in as inputs
            handle = apply_with_factor_inputs(unet, config.replace(start=0.0, stop=1.0, ramp=0.0))
        else:
            handle = apply(unet, config)
    try:
        if out.is_dir():
            _clear_earlier(out)
        graph = _Graph(unet, signature, handle, [i.name for i in inputs]).eval()
        examples = _examples(signature, inputs, 2, signature.downsampling * max(min_size, 4))
        files = _write(graph, examples, inputs, _dims(signature, inputs, min_size), out, formats)
        if "onnx-pipeline" in formats:
            files["onnx-pipeline"] = _write_pipeline(pipeline, out)
    finally:
        if handle is not None:
            handle.__exit__(None, None, None)  # as leaving a with block: FreeU the caller had applied comes back
    manifest = {
        "format": 1, "freeu": __version__, "model": description or type(unet).__name__, "kind": signature.kind,
        "mode": mode, "settings": None if config is None else config.to_dict(),
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype, "meaning": i.meaning} for i in inputs],
        "output": {"name": "out_sample", "shape": ["batch", "channels", "height", "width"], "dtype": "float32"},
        "sizes": {"multiple_of": signature.downsampling, "at_least": signature.downsampling * min_size},
        "opset": OPSET, "files": {k: v.relative_to(out).as_posix() for k, v in files.items()},
    }  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportResult(out, files, manifest)


def _write(graph: nn.Module, examples: list[torch.Tensor], inputs: Sequence[_Input], dims: dict[str, Any],
           out: Path, formats: Sequence[str]) -> dict[str, Path]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    names = [i.name for i in inputs]
    with torch.no_grad():
        if "pt2" in formats:
            program = _torch_export(graph, examples, dims)
            files["pt2"] = out / "unet.pt2"
            torch.export.save(program, files["pt2"])
        if "onnx-pipeline" in formats:  # the graph where the pipeline loads its U-Net
            files["onnx"] = out / "unet" / "model.onnx"
            files["onnx"].parent.mkdir()
            _onnx_export(graph, examples, dims, names, files["onnx"])
        elif "onnx" in formats or "openvino" in formats:
            files["onnx"] = out / "unet.onnx"
            _onnx_export(graph, examples, dims, names, files["onnx"])
        if "openvino" in formats:
            import openvino

            files["openvino"] = out / "unet.xml"
            openvino.save_model(openvino.convert_model(files["onnx"]), files["openvino"], compress_to_fp16=False)
            if "onnx" not in formats and "onnx-pipeline" not in formats:
                files.pop("onnx").unlink()
                data = out / "unet.onnx.data"
                if data.exists():
                    data.unlink()
    return files


def _exporter_error(error: Exception, what: str) -> ValueError:
    text = str(error).strip().splitlines()
    # torch's exporters end with an exception summary ("<class '...Error'>: what went wrong"); other errors say it first
    summary = next((line for line in text if line.startswith("<class ")), None) or next(
        (line for line in text if "Error" in line or "error" in line), text[0] if text else repr(error)
    )
    return ValueError(f"{what} failed: {summary[:500]} (run with -v for the exporter's full message; an operator it "
                      "names is one it cannot translate: try --format pt2 or a newer torch)")  # fmt: skip


def _torch_export(graph: nn.Module, examples: list[torch.Tensor], dims: dict[str, Any]) -> Any:
    # the ranges torch.export infers itself (a U-Net's own code may narrow them: diffusers' upsampling branches at a
    # batch of 64), where the ONNX exporter takes the named dimensions
    auto = {"args": tuple({axis: torch.export.Dim.AUTO for axis in d} for d in dims["args"])}
    try:
        return torch.export.export(graph, tuple(examples), dynamic_shapes=auto)
    except Exception as error:  # the exporter's many error types
        logger.debug("torch.export failed", exc_info=True)
        raise _exporter_error(error, "torch.export") from None


def _onnx_export(graph: nn.Module, examples: list[torch.Tensor], dims: Any, names: list[str],
                 path: Path, outputs: Sequence[str] = ("out_sample",)) -> None:  # fmt: skip
    import contextlib
    import io

    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):  # the exporter prints its progress
            program = torch.onnx.export(graph, tuple(examples), dynamo=True, input_names=names,
                                        output_names=list(outputs), dynamic_shapes=dims, opset_version=OPSET,
                                        external_data=False)  # fmt: skip
    except Exception as error:
        logger.debug("torch.onnx.export failed: %s", buffer.getvalue(), exc_info=True)
        raise _exporter_error(error, "torch.onnx.export") from None
    program.save(str(path), external_data=_needs_external_data(program))


def _check_pipeline(pipeline: Any, unet: nn.Module) -> None:
    """``ValueError`` unless ``pipeline`` is a Stable Diffusion 1.x/2.x pipeline whose U-Net is ``unet``: what
    diffusers' ``OnnxStableDiffusionPipeline`` runs (one text encoder whose first output is the hidden states, a U-Net
    called with the text's hidden states only, a VAE whose latents it scales by a fixed 0.18215)."""
    what = ("--format onnx-pipeline writes diffusers' OnnxStableDiffusionPipeline folder, for a Stable "
            "Diffusion 1.x/2.x pipeline (a tokenizer, a CLIP text encoder, a UNet2DConditionModel, an "
            "AutoencoderKL)")  # fmt: skip
    if pipeline is None:
        raise ValueError(f"{what}; give the pipeline (a diffusers pipeline folder as --model)")
    name = type(pipeline).__name__
    parts = {p: getattr(pipeline, p, None) for p in ("tokenizer", "text_encoder", "vae", "scheduler", "unet")}
    missing = [p for p, v in parts.items() if v is None]
    if missing or getattr(pipeline, "text_encoder_2", None) is not None:
        raise ValueError(
            f"{what}; {name} is not one ({'no ' + ', '.join(missing) if missing else 'two text encoders'})"
        )
    if parts["unet"] is not unet:
        raise ValueError(f"{what}; the U-Net given is not the pipeline's own")
    if "UNet2DConditionModel" not in class_names(unet) or getattr(unet.config, "addition_embed_type", None):
        raise ValueError(f"{what}; {name}'s U-Net takes more than the text's hidden states")
    if "AutoencoderKL" not in class_names(parts["vae"]):
        raise ValueError(f"{what}; {name}'s VAE is a {type(parts['vae']).__name__}")
    scale = float(getattr(parts["vae"].config, "scaling_factor", ONNX_PIPELINE_LATENT_SCALE))
    if abs(scale - ONNX_PIPELINE_LATENT_SCALE) > 1e-9:
        raise ValueError(f"{what}; {name}'s VAE scales its latents by {scale}, and the ONNX pipeline by a fixed "
                         f"{ONNX_PIPELINE_LATENT_SCALE}")  # fmt: skip


class _TextEncoder(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(input_ids=input_ids.long())
        return out.last_hidden_state, out.pooler_output


class _VaePart(nn.Module):
    def __init__(self, vae: nn.Module, part: str) -> None:
        super().__init__()
        self.vae, self.part = vae, part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.part == "decoder":
            return self.vae.decode(x).sample
        return self.vae.encode(x).latent_dist.mode()


def _write_pipeline(pipeline: Any, out: Path) -> Path:
    """The pipeline's other parts beside ``unet/model.onnx``, and its ``model_index.json``."""
    import diffusers

    batch = torch.export.Dim("batch", min=1, max=1024)
    tokens = int(pipeline.tokenizer.model_max_length)  # the ONNX pipeline always pads to it
    dtypes = {part: next(getattr(pipeline, part).parameters()).dtype for part in ("text_encoder", "vae")}
    vae = pipeline.vae.eval()
    for part, dtype in dtypes.items():
        if dtype != torch.float32:
            getattr(pipeline, part).float()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_h, latent_w = torch.export.Dim("height", min=1, max=512), torch.export.Dim("width", min=1, max=512)
    with torch.no_grad():
        (out / "text_encoder").mkdir()
        _onnx_export(_TextEncoder(pipeline.text_encoder).eval(), [torch.zeros(2, tokens, dtype=torch.int32)],
                     ({0: batch},), ["input_ids"], out / "text_encoder" / "model.onnx",
                     ("last_hidden_state", "pooler_output"))  # fmt: skip
        channels = int(vae.config.latent_channels)
        (out / "vae_decoder").mkdir()
        _onnx_export(_VaePart(vae, "decoder").eval(), [torch.randn(2, channels, 8, 8)],
                     ({0: batch, 2: latent_h, 3: latent_w},), ["latent_sample"],
                     out / "vae_decoder" / "model.onnx", ("sample",))  # fmt: skip
        (out / "vae_encoder").mkdir()
        pixels = torch.randn(2, int(vae.config.in_channels), 8 * factor, 8 * factor)
        _onnx_export(_VaePart(vae, "encoder").eval(), [pixels],
                     ({0: batch, 2: factor * latent_h, 3: factor * latent_w},), ["sample"],
                     out / "vae_encoder" / "model.onnx", ("latent_sample",))  # fmt: skip
    for part, dtype in dtypes.items():  # the pipeline as it came
        if dtype != torch.float32:
            getattr(pipeline, part).to(dtype)
    pipeline.tokenizer.save_pretrained(out / "tokenizer")
    pipeline.scheduler.save_pretrained(out / "scheduler")
    onnx_model = ["diffusers", "OnnxRuntimeModel"]
    index = {
        "_class_name": "OnnxStableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", type(pipeline.scheduler).__name__], "text_encoder": onnx_model,
        "tokenizer": ["transformers", type(pipeline.tokenizer).__name__], "unet": onnx_model,
        "vae_decoder": onnx_model, "vae_encoder": onnx_model,
    }  # fmt: skip
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out / "model_index.json"


def _needs_external_data(program: Any) -> bool:
    """Graphs above 2 GB must keep their weights beside them (protobuf's limit)."""
    try:
        values = program.model.graph.initializers.values()
        size = sum(v.const_value.nbytes for v in values if v.const_value is not None)
    except AttributeError:  # another exporter's program: let save decide
        return False
    return size > 1.8e9


class ExportedUNet:
    """An exported U-Net folder, run with ONNX Runtime (``runtime="onnxruntime"``, the ``unet.onnx`` graph) or
    OpenVINO (``"openvino"``, ``unet.xml``) on the CPU: ``unet(sample=..., timestep=..., ...)`` gives the output as a
    numpy array. :meth:`factors` gives the factor inputs of one step for a :class:`freeu.FreeUConfig`, with its
    window, as :func:`freeu.apply`'s hooks apply them."""

    def __init__(self, folder: str | Path, runtime: str = "onnxruntime") -> None:
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise ValueError(f"{self.folder}: no {MANIFEST} (not a freeu export folder)")
        self.manifest = json.loads(manifest.read_text())
        self.names = [i["name"] for i in self.manifest["inputs"]]
        files = self.manifest["files"]
        if runtime == "onnxruntime":
            if "onnx" not in files:
                raise ValueError(f"{self.folder} holds no ONNX graph (formats {sorted(files)})")
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(str(self.folder / files["onnx"]), options,
                                                   providers=["CPUExecutionProvider"])  # fmt: skip
            self._run = lambda feed: session.run(None, feed)[0]
        elif runtime == "openvino":
            if "openvino" not in files:
                raise ValueError(f"{self.folder} holds no OpenVINO model (formats {sorted(files)})")
            import openvino

            compiled = openvino.Core().compile_model(str(self.folder / files["openvino"]), "CPU",
                                                     {"INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
            request = compiled.create_infer_request()
            self._run = lambda feed: request.infer(feed)[compiled.output(0)].copy()
        else:
            raise ValueError(f"runtime must be 'onnxruntime' or 'openvino', got {runtime!r}")

    @property
    def takes_factors(self) -> bool:
        return self.manifest["mode"] == "inputs"

    def __call__(self, **inputs: Any) -> Any:
        import numpy as np

        missing = [n for n in self.names if n not in inputs]
        extra = sorted(set(inputs) - set(self.names))
        if missing or extra:
            raise ValueError(f"the exported U-Net takes {self.names}; missing {missing}, unknown {extra}")
        dtypes = {i["name"]: i["dtype"] for i in self.manifest["inputs"]}
        feed = {}
        for name in self.names:
            value = inputs[name]
            value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            feed[name] = np.ascontiguousarray(value.astype(dtypes[name]))
        return self._run(feed)

    def denoise(self, scheduler: Any, noise: torch.Tensor, steps: int, config: FreeUConfig | None = None,
                **conditioning: Any) -> torch.Tensor:  # fmt: skip
        """A whole sampling run on the exported U-Net: ``noise`` (the initial noise, before the scheduler's
        ``init_noise_sigma``) denoised in ``steps`` steps of a copy of the diffusers ``scheduler`` (DDIM with eta 0),
        each step's factors from ``config`` and its window (:meth:`factors`); ``conditioning``: the graph's other
        inputs (``encoder_hidden_states``, ``class_labels``, ...). The final sample as a float32 tensor."""
        import copy
        import inspect

        if config is not None and not self.takes_factors:
            raise ValueError("this U-Net was exported with its factors baked in; export with --mode inputs to give "
                             "a FreeUConfig (a window) at sampling time")  # fmt: skip
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(steps)
        kwargs = {"eta": 0.0} if "eta" in inspect.signature(scheduler.step).parameters else {}
        x = noise.float() * scheduler.init_noise_sigma
        batch = x.shape[0]
        for t in scheduler.timesteps:
            feed = dict(conditioning, sample=scheduler.scale_model_input(x, t), timestep=t.float().expand(batch))
            if self.takes_factors:
                feed.update(self.factors(config, float(t), batch))
            out = torch.from_numpy(self(**feed))
            x = scheduler.step(out, t, x, **kwargs).prev_sample
        return x

    @staticmethod
    def factors(config: FreeUConfig | None, timestep: float, batch: int) -> dict[str, Any]:
        """The factor inputs of one call at ``timestep`` for ``batch`` samples: ``config``'s factors blended by its
        window's weight at that point of the trajectory (``1 - timestep / num_train_timesteps``), 1 outside it and
        for ``None``; per-sample factors (tuples) repeated over the batch as the hooks repeat them."""
        import numpy as np

        if config is None:
            return {name: np.ones(batch, dtype=np.float32) for name in FACTOR_INPUTS}
        progress = torch.tensor([1.0 - float(timestep) / config.num_train_timesteps], dtype=torch.float32)
        weight = float(window_weight(progress, config.start, config.stop, config.ramp)[0])
        out = {}
        for name in FACTOR_INPUTS:
            value = getattr(config, f"{name[6]}{name[7]}")
            per = list(value) if isinstance(value, tuple) else [value]
            if batch % len(per):
                raise ValueError(f"per-sample {name[6:]} has {len(per)} values for a batch of {batch}")
            row = torch.tensor(per * (batch // len(per)), dtype=torch.float32)
            out[name] = np.asarray(blend(row, torch.tensor(weight)) if weight != 1.0 else row, dtype=np.float32)
        return out


# -- the command line -------------------------------------------------------------------------------------------------


def _formats_arg(text: str) -> list[str]:
    import argparse

    formats = [f.strip() for f in text.split(",") if f.strip()]
    wrong = [f for f in formats if f not in FORMATS]
    if wrong or not formats:
        raise argparse.ArgumentTypeError(f"must be one or more of {', '.join(FORMATS)} (comma-separated), got {text!r}")
    return list(dict.fromkeys(formats))


def register(subparsers: Any) -> None:
    """Add ``export`` to the ``freeu`` command line."""
    from .options import add_freeu_options, add_model_options
    from .runtime import MODEL_HELP

    p = subparsers.add_parser(
        "export", help="write the U-Net with FreeU as an ONNX graph, an OpenVINO model or a torch.export program",
        description="Write a model's U-Net with FreeU inside as an ONNX graph (ONNX Runtime, TensorRT, DirectML), "
        "an OpenVINO model or a torch.export program, batch and image size dynamic; the factors baked in, or as "
        "inputs of the graph (--mode inputs: one graph for every setting, FreeU off included). No FFT in the graph. "
        "Writes manifest.json beside it (docs/export.md).",
    )  # fmt: skip
    g = add_model_options(p, model_help=MODEL_HELP, model_default="demo-classes")
    g.add_argument("--format", dest="formats", type=_formats_arg, default=["onnx"], metavar="F1,F2",
                   help=f"one or more of {', '.join(FORMATS)} (default onnx; openvino is converted from the ONNX "
                   "graph; onnx-pipeline: a Stable Diffusion pipeline as the folder diffusers' "
                   "OnnxStableDiffusionPipeline loads, FreeU baked)")  # fmt: skip
    g.add_argument("--mode", choices=MODES, default="baked",
                   help="baked: the factors are constants of the graph; inputs: graph inputs freeu_b1, freeu_s1, "
                   "freeu_b2, freeu_s2 (one value per sample), the other settings baked (default baked)")  # fmt: skip
    g.add_argument("--plain", action="store_true", help="export the U-Net without FreeU (to compare with)")
    g.add_argument("--out", default="freeu-export", help="the folder to write (new, empty or an earlier export)")
    add_freeu_options(p)
    p.set_defaults(handler=run)


def run(args: Any) -> int:
    """The ``export`` handler."""
    from .options import FACTORS, freeu_settings, resolve_freeu
    from .runtime import load_model

    if args.plain and (args.preset is not None or any(getattr(args, k) is not None for k in FACTORS)):
        raise ValueError("--plain exports the U-Net without FreeU: leave --preset and the factors out")
    if args.plain and args.mode == "inputs":
        raise ValueError("--plain --mode inputs: the inputs mode carries FreeU's factors; give a --preset instead")
    if args.device not in (None, "cpu"):
        raise ValueError(f"--device {args.device}: freeu export traces the U-Net on the CPU; leave --device out")
    if args.dtype not in (None, "float32"):
        raise ValueError(f"--dtype {args.dtype}: freeu export writes float32 graphs (convert them afterwards)")
    for f in args.formats:
        _require("onnx" if f == "openvino" else f)
        _require(f)
    _check_out(Path(args.out))
    settings = None if args.plain else freeu_settings(args)
    model = load_model(args.model, device="cpu", dtype="float32")
    config = None
    if settings is not None:
        resolved = resolve_freeu(model, settings)
        config = resolved.config
        if args.preset == "auto":
            print(resolved.source)
    print(f"exporting {model.description} ({', '.join(args.formats)}, {args.mode}) ...", flush=True)
    pipeline = getattr(model, "pipe", None) if "onnx-pipeline" in args.formats else None
    if pipeline is not None and getattr(pipeline, "safety_checker", None) is not None:
        print("note: the safety checker is not exported (the ONNX pipeline folder runs without one)")
    result = export_unet(model.unet.float(), args.out, config, formats=args.formats, mode=args.mode,
                         description=model.description, pipeline=pipeline)  # fmt: skip
    for name in result.files.values():
        print(f"wrote {name}")
    print(f"wrote {result.out / MANIFEST}")
    return 0
