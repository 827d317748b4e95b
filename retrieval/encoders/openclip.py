"""CLIP ViT-B-32 (OpenAI weights) through open_clip: the standard profile's semantic model.

The weight file is read by its extension: `.safetensors` straight into the built model
(safetensors_io), anything else through `torch.load(weights_only=True)` (a plain state dict; OpenAI's
TorchScript `.pt` archives are refused there). Keys are open_clip's own (`visual.*`, `transformer.*`,
`token_embedding.weight`, ...), as in timm/vit_base_patch32_clip_224.openai, the file `fetch_weights`
downloads.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image as PILImage

from .base import SemanticEncoder, TextReading, l2_normalize
from .devices import model_device
from .precision import PrecisionChoice
from .safetensors_io import large_embedding_tables, safetensors_read_into

if TYPE_CHECKING:
    from .specs import ModelSpec


class OpenClipEncoder(SemanticEncoder):
    def __init__(self, *, key: str, dim: int, model: torch.nn.Module,
                 preprocess: Callable[[PILImage.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], device: torch.device | None = None) -> None:
        self.key, self.dim = key, dim
        self.device = device or torch.device("cpu")
        self.model = model.eval().to(self.device)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.image_precision = PrecisionChoice.for_vectors(f"{key} (images)", self.device)
        self.text_precision = PrecisionChoice.for_vectors(f"{key} (texts)", self.device)

    def encode_images(self, images: Sequence[PILImage.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.stack([self.preprocess(image.convert("RGB")) for image in images]).to(self.device)
        def forward() -> np.ndarray:
            with torch.inference_mode():
                # One forward pass for the whole batch. The ignore: open_clip's CLIP is untyped, and
                # nn.Module types its attributes as Tensor | Module.
                features = self.model.encode_image(batch)  # type: ignore[operator]
            return l2_normalize(features.float().cpu().numpy())

        return self.image_precision.run(forward)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)  # truncates to the 77-token context
        def forward() -> np.ndarray:
            with torch.inference_mode():
                features = self.model.encode_text(tokens)  # type: ignore[operator]  # as encode_image
            return l2_normalize(features.float().cpu().numpy())

        return self.text_precision.run(forward)

    def read_text(self, text: str) -> TextReading | None:
        # CLIP's byte-level BPE knows every string (nothing is unknown); its context holds a start and an end mark.
        encode, context = getattr(self.tokenizer, "encode", None), getattr(self.tokenizer, "context_length", None)
        if encode is None or context is None:  # another tokenizer family: not known to say
            return None
        return TextReading(tokens=len(encode(text)), unknown=0, limit=int(context) - 2)


def _open_clip_chatter(record: logging.LogRecord) -> bool:
    """open_clip logs through the root logger: its steps at INFO, and a warning that the model is
    "initialized randomly" (true only until the weights are read in, just after). Dropped while it
    builds the model; errors still pass. Only records made on the root logger itself meet this filter."""
    return record.levelno >= logging.ERROR


def _import_open_clip() -> ModuleType:
    """open_clip, imported without timm and transformers where nothing has imported them yet: it
    imports both when installed, for towers the registry's CLIP models do not use (43 MiB of a web
    process, measured). Either can still be imported later by what needs it."""
    absent = [name for name in ("timm", "transformers") if name not in sys.modules]
    for name in absent:
        sys.modules[name] = None  # type: ignore[assignment]  # makes `import name` raise ImportError
    try:
        import open_clip
    finally:
        for name in absent:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
    return open_clip


def load(spec: ModelSpec) -> OpenClipEncoder:
    """Build the model from the registry's weight file. FileNotFoundError when it has not been fetched."""
    open_clip = _import_open_clip()

    architecture = spec.options["architecture"]
    path = spec.weight_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python manage.py fetch_weights` (see weights/README.md)")
    # OpenAI's CLIP was trained with QuickGELU; the plain ViT-B-32 config uses nn.GELU. Built empty, then
    # filled from the file without a second copy of the weights (safetensors_io says why).
    root = logging.getLogger()
    root.addFilter(_open_clip_chatter)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            architecture, pretrained=None, force_quick_gelu=spec.options.get("quick_gelu", False))
        tokenizer = open_clip.get_tokenizer(architecture)  # BPE vocabulary bundled with open_clip: no network
    finally:
        root.removeFilter(_open_clip_chatter)
    if path.suffix == ".safetensors":
        # the token embeddings stay in the file where the model runs on the CPU: a web process holds
        # only the rows its text queries read (97 MiB less resident)
        safetensors_read_into(model, path, mapped=large_embedding_tables(model) if model_device().type == "cpu" else ())
    else:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    assert spec.dim is not None
    return OpenClipEncoder(key=spec.key, dim=spec.dim, model=model, preprocess=preprocess, tokenizer=tokenizer,
                           device=model_device())

