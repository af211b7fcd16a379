"""Networks that need weights (Inception for FID/KID, CLIP for the CLIP score): used only from files on disk.

Nothing here downloads. Each loader either returns a network built from local files or says, in a
:class:`Skipped`, why the metric is left out and how to enable it; an explicit path that does not work is an error.

- ``--fid-features auto`` (default): Inception-v3 in torch-fidelity's port of the TensorFlow FID network, from the
  weights file ``weights-inception-2015-12-05-6726825d.pth`` in the torch hub cache (``$TORCH_HOME/hub/checkpoints``),
  through torchmetrics' ``NoTrainInceptionV3`` (needs ``torch-fidelity``); skipped when either is missing.
- ``--fid-features inception:PATH``: the same network from that weights file.
- ``--fid-features export:PATH``: a ``torch.export`` program (``torch.export.save``) mapping ``uint8 (N, 3, H, W)``
  images to ``(N, D)`` features, exported with a dynamic batch dimension.
- ``--fid-features torchscript:PATH``: the same as a TorchScript module (called with ``return_features=True`` when
  its ``forward`` takes that argument, as the TorchScript Inception files of StyleGAN2-ADA and clean-fid do).
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
    "pip install torch-fidelity, or pass --fid-features inception:PATH, export:PATH or torchscript:PATH"
)


def load_feature_net(spec: str, device: str | torch.device = "cpu") -> FeatureNet | Skipped:
    """The FID/KID feature network of ``spec`` (see the module docstring), or why it is skipped.

    ``ValueError`` for an explicit spec that cannot be used (missing file, unknown kind).
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
    if not sep or kind not in ("inception", "export", "torchscript"):
        raise ValueError(
            f"--fid-features must be auto, none, inception:PATH, export:PATH or torchscript:PATH, got {spec!r}"
        )
    path = Path(location).expanduser()
    if not path.is_file():
        raise ValueError(f"--fid-features {spec}: no such file {path}")
    if kind == "export":
        module = torch.export.load(str(path)).module().to(device)
        return FeatureNet(module, f"export-{_file_ident(path)}", f"torch.export features from {path}", {})
    if kind == "torchscript":
        module = torch.jit.load(str(path), map_location=device).eval()
        schema = str(getattr(module.forward, "schema", ""))
        kwargs = {"return_features": True} if "return_features" in schema else {}
        return FeatureNet(module, f"torchscript-{_file_ident(path)}", f"TorchScript features from {path}", kwargs)
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
    return FeatureNet(
        module.to(device).eval(), f"inception-{_file_ident(path)}", f"Inception-v3 (FID network) from {path}", {}
    )


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
