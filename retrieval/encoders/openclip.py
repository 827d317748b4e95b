"""CLIP ViT-B-32 (OpenAI weights) through open_clip: the standard profile's semantic model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image as PILImage

from .base import SemanticEncoder, l2_normalize


class OpenClipEncoder(SemanticEncoder):
    def __init__(self, *, key: str, dim: int, model, preprocess, tokenizer):
        self.key, self.dim = key, dim
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    def encode_images(self, images: Sequence[PILImage.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        with torch.inference_mode():
            features = self.model.encode_image(batch)  # one forward pass for the whole batch
        return l2_normalize(features.float().numpy())

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            features = self.model.encode_text(self.tokenizer(list(texts)))
        return l2_normalize(features.float().numpy())


def load(spec) -> OpenClipEncoder:
    import open_clip

    architecture = spec.options["architecture"]
    path = spec.weight_path(spec.weights[0].filename)
    # A plain state dict on disk (fetch_weights converts OpenAI's TorchScript archive once).
    model, _, preprocess = open_clip.create_model_and_transforms(
        architecture, pretrained=str(path), force_quick_gelu=spec.options.get("quick_gelu", False))
    tokenizer = open_clip.get_tokenizer(architecture)  # bundled BPE vocabulary: no network
    return OpenClipEncoder(key=spec.key, dim=spec.dim, model=model, preprocess=preprocess, tokenizer=tokenizer)


def state_dict_from_openai_archive(source, target) -> None:
    """OpenAI ships TorchScript archives, which torch.load(weights_only=True) refuses: keep the weights."""
    archive = torch.jit.load(str(source), map_location="cpu")
    state = {k: v for k, v in archive.state_dict().items()
             if k not in ("input_resolution", "context_length", "vocab_size")}
    torch.save(state, str(target))
