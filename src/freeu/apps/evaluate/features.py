"""Networks that need weights (Inception for FID/KID, CLIP for the CLIP score): used only from files on disk.

Nothing here downloads. Each loader either returns a network built from local files or says, in a
:class:`Skipped`, why the metric is left out and how to enable it; an explicit path that does not work is an error.

- ``--fid-features auto`` (default): Inception-v3 in torch-fidelity's port of the TensorFlow FID network, from the
  weights file ``weights-inception-2015-12-05-6726825d.pth`` in the torch hub cache (``$TORCH_HOME/hub/checkpoints``),
  through torchmetrics' ``NoTrainInceptionV3`` (needs ``torch-fidelity``); skipped when either is missing.
- ``--fid-features inception:PATH``: the same network from that weights file.
- ``--fid-features onnx:PATH``: any feature network as an ONNX model, run by ONNX Runtime on the CPU: one input,
  images ``(N, 3, H, W)`` as ``uint8`` (or ``float`` holding 0..255), with a dynamic batch dimension; its first output
  ``(N, D)`` features.

A file named here is only ever read by loaders that run no code from it: the Inception weights must load with
``torch.load(weights_only=True)`` (tensors only) before torch-fidelity reads them, and an ONNX model is a graph of
standard operators (no custom operator library is registered). TorchScript files and ``torch.export`` programs are
refused: both are programs that run when loaded (their operators can read and write files, and a ``.pt2`` may hold
pickles); convert such a network once, where it is trusted, with ``torch.onnx.export``.
- ``--clip auto`` (default): ``openai/clip-vit-large-patch14`` if it is in the local Hugging Face cache;
  ``--clip FOLDER_OR_ID``: a transformers CLIP model and processor in that folder or in the cache.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ClipScorer",
    "DEFAULT_CLIP",
    "FeatureNet",
    "INCEPTION_WEIGHTS",
    "Skipped",
    "load_clip",
    "load_feature_net",
]

logger = logging.getLogger(__name__)

#: torch-fidelity's file name for the FID Inception weights (what torchmetrics would otherwise download).
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
#: The CLIP model ``--clip auto`` looks for in the local Hugging Face cache.
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class Skipped(str):
    """Why a metric that needs weights is left out, and how to enable it (a message, not an error)."""


@dataclass
class FeatureNet:
    """A feature network for FID/KID: ``uint8 (N, 3, H, W)`` -> ``(N, D)``; ``ident`` names it in caches."""

    module: torch.nn.Module
    ident: str
    description: str
    kwargs: dict[str, Any]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        device = next(iter(self.module.parameters()), torch.empty(0)).device
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size].to(device)
            out.append(self.module(chunk, **self.kwargs).reshape(len(chunk), -1))
        return torch.cat(out).double().cpu()


def _file_ident(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _hub_weights() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


FID_HOW = (
    "to enable FID and KID, put torch-fidelity's {name} into {hub} (copy it from a machine with network access) and "
    "pip install torch-fidelity, or pass --fid-features inception:PATH or onnx:PATH"
)


ONNX_HOW = (
    "give an ONNX model of a feature network (one input: images (N, 3, H, W) as uint8, or float holding 0..255, "
    "with a dynamic batch dimension; first output: (N, D) features), e.g. from torch.onnx.export, or "
    "inception:PATH with torch-fidelity's Inception weights"
)


def load_feature_net(spec: str, device: str | torch.device = "cpu") -> FeatureNet | Skipped:
    """The FID/KID feature network of ``spec`` (see the module docstring), or why it is skipped.

    ``ValueError`` for an explicit spec that cannot be used (missing file, unknown kind, a file that is not such a
    network, a kind that would run code from the file).
    """
    how = FID_HOW.format(name=INCEPTION_WEIGHTS, hub=_hub_weights().parent)
    if spec == "none":
        return Skipped("FID, KID: not requested (--fid-features none)")
    if spec == "auto":
        path = _hub_weights()
        if not path.is_file():
            return Skipped(f"FID, KID: skipped, no Inception weights on disk (looked for {path}); {how}")
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            return Skipped(f"FID, KID: skipped, {path} is there but torch-fidelity is not installed; {how}")
        spec = f"inception:{path}"
    kind, sep, location = spec.partition(":")
    if sep and kind in ("export", "torchscript"):
        raise ValueError(
            f"--fid-features {spec}: {'TorchScript files' if kind == 'torchscript' else 'torch.export programs'} are "
            "not loaded: they are programs that run when loaded (their operators can read and write files), and "
            "freeu runs no code from a file named on the command line. Convert the network once, where you trust "
            "it, with torch.onnx.export and pass onnx:PATH"
        )
    if not sep or kind not in ("inception", "onnx"):
        raise ValueError(f"--fid-features must be auto, none, inception:PATH or onnx:PATH, got {spec!r}")
    path = Path(location).expanduser()
    if not path.is_file():
        raise ValueError(f"--fid-features {spec}: no such file {path}")
    if kind == "onnx":
        return _onnx_features(path, spec)
    _check_weights(path, spec)
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as error:
        raise ValueError(f"--fid-features {spec}: needs torchmetrics and torch-fidelity ({error})") from None
    try:
        module = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
        )
    except (ImportError, ModuleNotFoundError) as error:
        raise ValueError(f"--fid-features {spec}: needs torch-fidelity: pip install torch-fidelity ({error})") from None
    except Exception as error:  # torch-fidelity's own errors for weights of another network
        raise ValueError(f"--fid-features {spec}: torch-fidelity could not build its Inception from {path} "
                         f"({_first_line(error)}); give {INCEPTION_WEIGHTS}") from None  # fmt: skip
    return FeatureNet(
        module.to(device).eval(), f"inception-{_file_ident(path)}", f"Inception-v3 (FID network) from {path}", {}
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _check_weights(path: Path, spec: str) -> None:
    """Refuse a weights file that is not tensors only: it is loaded with ``weights_only=True`` first (which runs no
    code from the file), so whatever torch-fidelity's own loading does next, it reads a plain state dict."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for what is not weights
        raise ValueError(f"--fid-features {spec}: {path} is not a weights file that loads as tensors only "
                         f"({_first_line(error)}); give torch-fidelity's {INCEPTION_WEIGHTS}") from None  # fmt: skip
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"--fid-features {spec}: {path} holds no state dict of tensors; give torch-fidelity's "
                         f"{INCEPTION_WEIGHTS}")  # fmt: skip


class _OnnxFeatures(torch.nn.Module):
    """An ONNX Runtime session as the module :class:`FeatureNet` calls: ``uint8 (N, 3, H, W)`` -> ``(N, D)``."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        first = session.get_inputs()[0]
        self.input_name, self.as_float = first.name, first.type == "tensor(float)"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feed = images.cpu().float().numpy() if self.as_float else images.cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: feed})[0])


def _onnx_features(path: Path, spec: str) -> FeatureNet:
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(f"--fid-features {spec}: needs onnxruntime: pip install 'freeu[onnx]'") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: a refusal is reported below, in one paragraph
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own InvalidProtobuf, InvalidGraph, Fail, NoSuchFile
        raise ValueError(f"--fid-features {spec}: {path} is not an ONNX model ONNX Runtime can run "
                         f"({_first_line(error)}); {ONNX_HOW}") from None  # fmt: skip
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else None
    if (
        shape is None or len(shape) != 4 or shape[1] not in (3, "3") or isinstance(shape[0], int)
        or inputs[0].type not in ("tensor(uint8)", "tensor(float)") or not outputs or len(outputs[0].shape) != 2
    ):  # fmt: skip
        found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs) or "no input"
        raise ValueError(f"--fid-features {spec}: {path} takes {found} and gives "
                         f"{[o.shape for o in outputs]}; {ONNX_HOW}")  # fmt: skip
    return FeatureNet(_OnnxFeatures(session), f"onnx-{_file_ident(path)}", f"ONNX features from {path}", {})


def _cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # an id huggingface_hub rejects
        return False


CLIP_HOW = (
    "to enable the CLIP score pass --clip FOLDER (a transformers CLIPModel with its processor, saved with "
    "save_pretrained) or a hub id already in the local Hugging Face cache (on a machine with network access: "
    "hf download {repo}, then copy the cache)"
)


class ClipScorer:
    """Cosine similarity between CLIP image and text embeddings (raw cosine; torchmetrics' ``CLIPScore`` reports
    ``100 * max(cosine, 0)``). Images are ``uint8 (N, 3, H, W)``, preprocessed by the model's own processor."""

    def __init__(self, model: Any, processor: Any, ident: str, description: str) -> None:
        self.model, self.processor, self.ident, self.description = model, processor, ident, description

    @staticmethod
    def _embedding(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 4 / 5

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        pixels = self.processor(images=list(images.permute(0, 2, 3, 1).numpy()), return_tensors="pt")["pixel_values"]
        text = self.processor(text=prompts, return_tensors="pt", padding=True, truncation=True)
        image_emb = self._embedding(self.model.get_image_features(pixel_values=pixels.to(device)))
        text_emb = self._embedding(
            self.model.get_text_features(
                input_ids=text["input_ids"].to(device), attention_mask=text["attention_mask"].to(device)
            )
        )
        image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
        text_emb = text_emb / text_emb.norm(dim=-1, keepdim=True)
        return (image_emb * text_emb).sum(dim=-1).double().cpu()


def load_clip(spec: str, device: str | torch.device = "cpu") -> ClipScorer | Skipped:
    """The CLIP scorer of ``spec`` (``auto``, ``none``, a folder or a cached hub id), or why it is skipped."""
    if spec == "none":
        return Skipped("CLIP score: not requested (--clip none)")
    how = CLIP_HOW.format(repo=DEFAULT_CLIP)
    if spec == "auto":
        if not _cached(DEFAULT_CLIP):
            return Skipped(f"CLIP score: skipped, {DEFAULT_CLIP} is not in the local Hugging Face cache; {how}")
        spec = DEFAULT_CLIP
    try:
        import transformers
    except ImportError:
        return Skipped(f"CLIP score: skipped, transformers is not installed; {how}")
    local = Path(spec).expanduser()
    if not local.exists() and not _cached(spec):
        raise ValueError(f"--clip {spec}: neither a folder nor a model in the local Hugging Face cache; {how}")
    source = str(local) if local.exists() else spec
    try:
        model = transformers.CLIPModel.from_pretrained(source, local_files_only=True).to(device).eval()
        processor = transformers.CLIPProcessor.from_pretrained(source, local_files_only=True)
    except Exception as error:  # transformers raises OSError, ValueError or its own errors
        raise ValueError(f"--clip {spec}: could not load a CLIP model and processor: {error}") from None
    ident = f"clip-{_file_ident(local / 'config.json') if local.exists() else spec.replace('/', '--')}"
    return ClipScorer(model, processor, ident, f"CLIP {source}")
