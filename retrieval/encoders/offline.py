"""The offline model profile: models that ship inside pip packages, so a fresh install searches and
segments with no model hub and no download.

- Semantic (`offline/effnet-lite0+minilm`): an ImageNet EfficientNet-Lite0 classifier bridged into the
  text space of all-MiniLM-L6-v2. Each ImageNet class c has a text vector t_c (MiniLM of sentences
  that name and define it);
  with μ the mean of the t_c, an image is normalize(Σ_c p(c|image)·(t_c − μ)) and a text is
  normalize(MiniLM(text) − μ). See docs/OFFLINE_PROFILE.md for the measured variants.
- Semantic v2 (`offline/effnet-lite0+minilm/v2`, the profile's default): an image is
  normalize([√a·bridge ; √(1−a)·normalize(pooled features − m)]), with m the pooled features' expected
  value on ImageNet (read from the network's last BatchNorm), and a text is [v1 text ; 0]: image to
  image search also sees what the picture looks like, text search ranks exactly as v1.
- Segmenter (`offline/effnet-lite0-cam`): class activation maps of the same classifier, one coarse
  soft mask per confident class, named with PASCAL-VOC labels where one exists.

Both roles share one EfficientNet instance per process, on IMAGINAITION_DEVICE like every model (the
profile is meant for machines without an accelerator), and within a `shared_passes()` block (one
batch of the pipeline) one forward pass over a picture serves both. The class sentences' MiniLM
embeddings, most of a model's load time, are computed once per host and kept under
IMAGINAITION_MODEL_CACHE_DIR.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .base import Segmenter, SemanticEncoder, SoftMask, TextReading, l2_normalize, shared_passes_memo
from .devices import conv_memory_format, model_device
from .folding import fold_batch_norms
from .precision import VECTOR_COSINE_BAR, PrecisionChoice, half_dtype, vectors_agreement
from .imagenet_voc import IMAGENET_TO_VOC, VOC_IMAGENET_CLASSES, VOC_INDEX
from .specs import ModelSpec, file_sha256

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

TEXT_DIM = 384
INPUT_SIZE = 224
# The weights come from a TensorFlow-style implementation: BatchNorm eps 1e-3 (PyTorch's 1e-5 makes
# the classifier less confident) and pixels normalised as (x - 127) / 128.
BN_EPS = 1e-3
PIXEL_MEAN, PIXEL_SCALE = 127.0, 128.0

Resize = Literal["squash", "pad", "crop"]
Names = Literal["first", "synonyms"]


@dataclass(frozen=True)
class Bridge:
    """How ImageNet class probabilities become a vector in MiniLM's text space."""

    templates: tuple[str, ...] = ("{}",)  # each class text is the mean of template x name sentences
    names: Names = "first"  # the first ImageNet lemma only, or all its synonyms
    gloss: bool = False  # also embed "name: WordNet definition" (brings hypernyms: a tabby is a cat)
    temperature: float = 1.0  # softmax temperature on the logits; > 1 spreads mass to related classes
    top_k: int | None = None  # keep only the k most probable classes
    resize: Resize = "squash"  # how an image becomes 224x224 (the segmenter always squashes)


# Chosen with bench/offline_semantic.py on openclipart categories (docs/OFFLINE_PROFILE.md): the
# temperature is what matters most; synonyms and more templates did not pay for their load time.
DEFAULT_BRIDGE = Bridge(templates=("a photo of a {}.",), names="first", gloss=True, temperature=2.0)

# A class (or a VOC label's group of classes) gets a mask when its probability reaches this. Low
# enough for the second object of a two-object photo, high enough to skip the long tail.
CAM_MIN_PROBABILITY = 0.1


class ClassifierWithFeatures(nn.Module):
    """EfficientNet-Lite whose forward returns (logits, last feature map): one pass serves both the
    semantic encoder (logits, and in v2 the pooled feature map) and the CAM segmenter (feature map x
    classifier weights)."""

    def __init__(self, net: nn.Module, input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size  # the square side the network was trained at
        self.memory_format = torch.contiguous_format  # of the weights, and of each batch given to forward
        # Read from the last batch norm's statistics, so before any folding removes it.
        self.feature_mean = imagenet_feature_mean(net)

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # timm's EfficientNet methods; nn.Module types its attributes as Tensor | Module.
        batch = batch.contiguous(memory_format=self.memory_format)
        features = self.net.forward_features(batch)  # type: ignore[operator]
        return self.net.forward_head(features), features  # type: ignore[operator]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def classifier_weight(self) -> torch.Tensor:
        return cast(nn.Linear, self.net.classifier).weight  # (1000, channels)

    @property
    def feature_dim(self) -> int:
        return int(cast(nn.Linear, self.net.classifier).in_features)  # 1280 for every EfficientNet-Lite


@functools.cache
def shared_network(weight_path: Path, architecture: str = "efficientnet_lite0") -> ClassifierWithFeatures:
    """The EfficientNet-Lite classifier (timm architecture name), built once per process
    (get_model serialises loaders)."""
    import timm

    net = timm.create_model(architecture, pretrained=False, bn_eps=BN_EPS)
    source = torch.load(weight_path, map_location="cpu", weights_only=True)
    target = net.state_dict()
    # The packaged state dict uses another implementation's names (_conv_stem, _blocks.0...); its
    # tensors come in the same order as timm's, so keys are renamed by position.
    if len(source) != len(target) or any(
            a.shape != b.shape for a, b in zip(source.values(), target.values(), strict=True)):
        raise ValueError(f"{weight_path} does not match timm's {architecture} layout")
    net.load_state_dict(dict(zip(target.keys(), source.values(), strict=True)), strict=True)
    input_size = int(cast(dict, net.pretrained_cfg)["input_size"][-1])  # timm's config: (3, side, side)
    network = ClassifierWithFeatures(net, input_size=input_size).eval()
    fold_batch_norms(network)  # the same outputs, faster
    device = model_device()
    network.memory_format = conv_memory_format(device)
    return network.to(device).to(memory_format=network.memory_format)


def imagenet_feature_mean(net: nn.Module) -> np.ndarray:
    """The expected pooled feature vector over ImageNet, read from an EfficientNet-Lite's own last BatchNorm:
    its running statistics say each channel's pre-activation z is about N(β, γ²) on the training
    images, and the pooled feature is the spatial mean of ReLU6(z), so its expectation is
    E[clip(z, 0, 6)]. A constant of the shipped weights: no data file, no dependence on a gallery."""
    bn = cast(nn.BatchNorm2d, net.bn2)
    if not isinstance(getattr(bn, "act", None), nn.ReLU6):
        raise ValueError("expected EfficientNet-Lite's last BatchNorm followed by ReLU6")
    variance = cast(torch.Tensor, bn.running_var).double()
    with torch.no_grad():
        mean = bn.bias.double()
        std = (bn.weight.double().abs() * torch.sqrt(variance / (variance + bn.eps))).clamp_min(1e-12)
        normal = torch.distributions.Normal(0.0, 1.0)

        def above(threshold: float) -> torch.Tensor:  # E[max(z − threshold, 0)]
            shifted = (mean - threshold) / std
            return (mean - threshold) * normal.cdf(shifted) + std * torch.exp(normal.log_prob(shifted))

        return (above(0.0) - above(6.0)).float().cpu().numpy()


@functools.cache
def shared_text_model(model_dir: Path) -> SentenceTransformer:
    """all-MiniLM-L6-v2 from its packaged folder (a local path: sentence-transformers never asks
    the hub), built once per process."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device=str(model_device()))


@functools.cache
def imagenet_classes() -> tuple[tuple[tuple[str, ...], str], ...]:
    """Per ImageNet-1k class: (its WordNet lemmas, its definition). timm ships these files."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    classes = []
    for index in range(1000):
        lemmas = tuple(name.strip() for name in info.index_to_description(index).split(","))
        definition = info.index_to_description(index, detailed=True).split(": ", 1)[1]
        classes.append((lemmas, definition))
    return tuple(classes)


def class_short_name(index: int) -> str:
    return imagenet_classes()[index][0][0]


def preprocess(images: Sequence[Image.Image], resize: Resize = "squash", size: int = INPUT_SIZE) -> torch.Tensor:
    """(n, 3, size, size) float32 network input."""
    arrays = [np.asarray(_to_square(image.convert("RGB"), resize, size), dtype=np.float32) for image in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (batch - PIXEL_MEAN) / PIXEL_SCALE


def _to_square(image: Image.Image, resize: Resize, size: int) -> Image.Image:
    width, height = image.size
    if resize == "squash":  # whole image, aspect lost; CAM cells map straight back onto the image
        return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if resize == "crop":  # the ImageNet evaluation protocol: short side 256/224 of the input, centre crop
        scale = round(size * 256 / 224) / min(width, height)
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                             Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        return image.crop((left, top, left + size, top + size))
    # pad: whole image, aspect kept, on a grey that the network sees as zero
    scale = size / max(width, height)
    image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                         Image.Resampling.BICUBIC, reducing_gap=3.0)
    canvas = Image.new("RGB", (size, size), (127, 127, 127))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def embed_texts(text_model: SentenceTransformer, texts: Sequence[str]) -> np.ndarray:
    """(len(texts), 384) L2-normalized MiniLM embeddings, one encode call."""
    vectors = text_model.encode(list(texts), batch_size=max(1, min(len(texts), 256)), convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32).reshape(len(texts), TEXT_DIM)


def class_texts(bridge: Bridge) -> list[list[str]]:
    """Per ImageNet class, the sentences whose mean MiniLM embedding is its text vector."""
    texts = []
    for lemmas, definition in imagenet_classes():
        names = lemmas if bridge.names == "synonyms" else lemmas[:1]
        sentences = [template.format(name) for template in bridge.templates for name in names]
        if bridge.gloss:
            sentences.append(f"{lemmas[0]}: {definition}")
        texts.append(sentences)
    return texts


@functools.cache  # v1 and v2 share it: 2,000 sentences, most of a model's load time
def class_text_matrix(text_model: SentenceTransformer, bridge: Bridge,
                      text_weights: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(t_c − μ for the 1000 classes, μ): the centred class text vectors and their mean. With
    `text_weights` (MiniLM's weight file) the sentences' embeddings are read from, or kept in, the
    model cache folder."""
    per_class = class_texts(bridge)
    flat = [sentence for sentences in per_class for sentence in sentences]
    embeddings = (embed_texts(text_model, flat) if text_weights is None
                  else cached_sentence_embeddings(text_model, flat, text_weights))
    owner = np.repeat(np.arange(len(per_class)), [len(sentences) for sentences in per_class])
    sums = np.zeros((len(per_class), TEXT_DIM), dtype=np.float32)
    np.add.at(sums, owner, embeddings)
    class_vectors = l2_normalize(sums)
    mean = class_vectors.mean(axis=0)
    centred = class_vectors - mean
    centred.flags.writeable = mean.flags.writeable = False  # cached and shared
    return centred, mean


def sentence_cache_path(sentences: Sequence[str], text_weights: Path) -> Path:
    """Where the embeddings of `sentences` by MiniLM with these weights are kept: other sentences,
    weights, library versions or device kind give another file."""
    import sentence_transformers
    import transformers
    from django.conf import settings

    fingerprint = hashlib.sha256("\n".join(
        [file_sha256(text_weights), sentence_transformers.__version__, transformers.__version__, torch.__version__,
         model_device().type, *sentences]).encode())
    return Path(settings.IMAGINAITION_MODEL_CACHE_DIR) / f"minilm-sentences-{fingerprint.hexdigest()[:16]}.npy"


def cached_sentence_embeddings(text_model: SentenceTransformer, sentences: Sequence[str],
                               text_weights: Path) -> np.ndarray:
    """embed_texts(sentences), read from the model cache folder when an earlier process of this host
    (or one sharing the folder) computed them: 11 s of a worker's start on 2 cores. A file that does
    not read back as the right array is computed again; a folder that cannot be written only costs
    the time."""
    path = sentence_cache_path(sentences, text_weights)
    expected = (len(sentences), TEXT_DIM)
    try:
        kept = np.load(path, allow_pickle=False)
        if kept.shape == expected and kept.dtype == np.float32 and np.isfinite(kept).all():
            return kept
        logger.warning("%s: not the sentence embeddings expected (shape %s, %s); computing them again",
                       path, kept.shape, kept.dtype)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable (%s); computing the sentence embeddings again", path, exc)
    embeddings = embed_texts(text_model, sentences)
    scratch = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(prefix=".minilm-", suffix=".npy", dir=path.parent)
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide it from the host's other users
            np.save(file, embeddings, allow_pickle=False)
        os.replace(scratch, path)  # whole or absent, also for processes reading at the same moment
    except OSError as exc:
        logger.warning("could not keep the class sentences' embeddings in %s: %s", path.parent, exc)
        if scratch is not None:
            Path(scratch).unlink(missing_ok=True)
    return embeddings


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype | None]:
    enabled = torch.is_autocast_enabled(device.type)
    return enabled, torch.get_autocast_dtype(device.type) if enabled else None


def network_outputs(network: ClassifierWithFeatures, images: Sequence[Image.Image],
                    resize: Resize) -> tuple[torch.Tensor, torch.Tensor]:
    """((n, 1000) ImageNet logits, (n, channels, h, w) last feature map) on the network's device, one
    forward pass over the pictures. Within a shared_passes() block a picture this network already
    passed (the same object, resized the same way, under the same autocast) is not passed again."""
    memo = shared_passes_memo()
    autocast = _autocast_state(network.device)
    keys = [(id(network), id(image), resize, autocast) for image in images]
    missing = [i for i, key in enumerate(keys) if memo is None or key not in memo]
    computed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if missing:
        batch = preprocess([images[i] for i in missing], resize, network.input_size).to(network.device)
        with torch.inference_mode():  # the input is built on the CPU and moved once
            logits, features = network(batch)
        computed = {i: (logits[row], features[row]) for row, i in enumerate(missing)}
        if memo is not None:
            memo.update({keys[i]: (images[i], computed[i]) for i in missing})
        if len(missing) == len(images):  # the common case: the pass's own tensors, not re-stacked
            return logits, features
    assert memo is not None
    rows = [computed[i] if i in computed else memo[keys[i]][1] for i in range(len(images))]
    return torch.stack([row[0] for row in rows]), torch.stack([row[1] for row in rows])


def image_logits(network: ClassifierWithFeatures, images: Sequence[Image.Image], resize: Resize) -> np.ndarray:
    """(n, 1000) ImageNet logits, one forward pass."""
    return image_outputs(network, images, resize)[0]


def image_outputs(network: ClassifierWithFeatures, images: Sequence[Image.Image],
                  resize: Resize) -> tuple[np.ndarray, np.ndarray]:
    """((n, 1000) ImageNet logits, (n, feature_dim) globally average-pooled last feature map), one
    forward pass. The pooled features are what the classifier's linear layer reads."""
    logits, features = network_outputs(network, images, resize)
    return logits.float().cpu().numpy(), features.mean(dim=(2, 3)).float().cpu().numpy()


def bridge_texts(text_model: SentenceTransformer, texts: Sequence[str], text_mean: np.ndarray) -> np.ndarray:
    """Text vectors: normalize(MiniLM(text) − μ)."""
    return l2_normalize(embed_texts(text_model, texts) - text_mean)


def bridge_images(logits: np.ndarray, centred_classes: np.ndarray, bridge: Bridge) -> np.ndarray:
    """Image vectors from classifier logits: normalize(Σ_c p(c)·(t_c − μ))."""
    probabilities = torch.softmax(torch.from_numpy(logits).float() / bridge.temperature, dim=-1).numpy()
    if bridge.top_k is not None:
        cutoff = -np.sort(-probabilities, axis=1)[:, bridge.top_k - 1:bridge.top_k]
        probabilities = np.where(probabilities >= cutoff, probabilities, 0.0)
    return l2_normalize(probabilities @ centred_classes)


def blend_image_vectors(bridge_vectors: np.ndarray, pooled: np.ndarray, feature_mean: np.ndarray,
                        bridge_share: float) -> np.ndarray:
    """v2 image vectors: normalize([√a·bridge ; √(1−a)·normalize(pooled − mean)]) with a = bridge_share,
    bridge rows already unit. Each block is unit before weighting, so a is the bridge's share of the
    squared norm whatever the two blocks' scales."""
    features = l2_normalize(pooled - feature_mean)
    blended = np.concatenate([np.sqrt(bridge_share) * l2_normalize(bridge_vectors),
                              np.sqrt(1.0 - bridge_share) * features], axis=1)
    return l2_normalize(blended)


def pad_texts(text_vectors: np.ndarray, feature_dim: int) -> np.ndarray:
    """v2 text vectors: [text ; 0]. The zero block meets the image's feature block in a dot product of
    0, so a text ranks v2 images exactly as v1 images (the image's bridge block is √a × its v1 vector)."""
    return np.concatenate([text_vectors, np.zeros((len(text_vectors), feature_dim), dtype=np.float32)], axis=1)


class OfflineSemanticEncoder(SemanticEncoder):
    """v1 (bridge_share None): 384-d bridge vectors for images and texts. v2 (bridge_share a in [0, 1)):
    images are [√a·bridge ; √(1−a)·centred pooled features], texts [text ; 0], 384 + 1280 dims."""

    def __init__(self, *, key: str, network: ClassifierWithFeatures, text_model: SentenceTransformer,
                 bridge: Bridge, bridge_share: float | None = None, text_weights: Path | None = None) -> None:
        if bridge_share is not None and not 0.0 <= bridge_share < 1.0:
            raise ValueError(f"bridge_share must be in [0, 1), not {bridge_share}")
        self.key = key
        self.network = network
        self.text_model = text_model
        self.bridge = bridge
        self.bridge_share = bridge_share
        self.centred_classes, self.text_mean = class_text_matrix(text_model, bridge, text_weights)
        self.feature_dim = 0 if bridge_share is None else network.feature_dim
        self.feature_mean = network.feature_mean if bridge_share is not None else None
        self.dim = TEXT_DIM + self.feature_dim
        # Compared on the class logits and pooled features together (one vector per picture).
        self.precision: PrecisionChoice = PrecisionChoice(
            key=key, device=network.device, dtype=half_dtype(network.device, pays_on_cpu=False),
            agreement=lambda a, b: vectors_agreement(np.hstack(a), np.hstack(b)), bar=VECTOR_COSINE_BAR)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        logits, pooled = self.precision.run(lambda: image_outputs(self.network, images, self.bridge.resize))
        bridged = bridge_images(logits, self.centred_classes, self.bridge)
        if self.bridge_share is None or self.feature_mean is None:
            return bridged
        return blend_image_vectors(bridged, pooled, self.feature_mean, self.bridge_share)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = bridge_texts(self.text_model, texts, self.text_mean)
        return pad_texts(vectors, self.feature_dim) if self.feature_dim else vectors

    def read_text(self, text: str) -> TextReading:
        # MiniLM's English word pieces: an emoji or a CJK character is one [UNK]; [CLS] and [SEP] added. Its
        # vocabulary also holds the letters of other scripts, one by one ("кошка" is к ##о ##ш ##ка): a word
        # spelled so is read without its meaning (it found the same pictures as any other), so such a piece
        # counts as unknown too.
        tokenizer = self.text_model.tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        unknown = sum(1 for id_, piece in zip(ids, pieces)
                      if id_ == tokenizer.unk_token_id or _letters_outside_latin(piece))
        return TextReading(tokens=len(ids), unknown=unknown,
                           limit=int(self.text_model.max_seq_length or tokenizer.model_max_length) - 2)


def _letters_outside_latin(piece: str) -> bool:
    """Whether a word piece holds a letter of a script other than Latin (Cyrillic, Arabic, Greek...)."""
    return any(char.isalpha() and not unicodedata.name(char, "").startswith("LATIN") for char in piece)


class CamSegmenter(Segmenter):
    """Soft masks from class activation maps. Labels are VOC labels (class_index 1-20, as the
    standard DeepLab segmenter) where the ImageNet class belongs to one, else the ImageNet short
    name with class_index 1000 + ImageNet index."""

    def __init__(self, *, key: str, network: ClassifierWithFeatures, min_probability: float) -> None:
        self.key = key
        self.network = network
        self.min_probability = min_probability
        # Half precision on accelerators only: on a CPU with native bf16 (2026-12-05) the pass ran 1.7x faster
        # but moved a label (and the semantic vectors to cosine 0.998), so the check would refuse it anyway.
        self.precision = PrecisionChoice.for_masks(key, network.device, pays_on_cpu=False)

    def segment(self, images: Sequence[Image.Image]) -> list[list[SoftMask]]:
        if not images:
            return []

        def forward() -> list[list[SoftMask]]:
            logits, features = network_outputs(self.network, images, "squash")
            # The maps in fp32 whatever the pass ran in: under autocast the einsum would answer in half
            # precision, which numpy cannot hold (bf16) and the masks do not need.
            with torch.inference_mode(), torch.autocast(self.network.device.type, enabled=False):
                probabilities = torch.softmax(logits.float(), dim=-1).cpu()
                # CAM_c = Σ_k w_ck F_k(x, y): the classifier applied at each cell before pooling.
                cams = torch.relu(torch.einsum("kc,nchw->nkhw", self.network.classifier_weight.float(),
                                               features.float())).cpu()
                return [self._masks(image, probabilities[i], cams[i]) for i, image in enumerate(images)]

        return self.precision.run(forward)

    def _masks(self, image: Image.Image, probabilities: torch.Tensor, cams: torch.Tensor) -> list[SoftMask]:
        # members are lists: a tuple would index several tensor dimensions
        candidates = [(label, VOC_INDEX[label], list(members)) for label, members in VOC_IMAGENET_CLASSES.items()]
        candidates += [(class_short_name(index), 1000 + index, [index])
                       for index in torch.nonzero(probabilities >= self.min_probability).flatten().tolist()
                       if index not in IMAGENET_TO_VOC]
        found = []
        for label, class_index, members in candidates:
            weights = probabilities[members]
            probability = float(weights.sum())
            if probability < self.min_probability:
                continue
            cam = torch.einsum("k,khw->hw", weights, cams[members])
            peak = float(cam.max())
            if peak <= 0:
                continue
            upsampled = F.interpolate((cam / peak)[None, None], size=(image.height, image.width),
                                      mode="bilinear", align_corners=False)[0, 0]
            found.append((probability, SoftMask(label=label, class_index=class_index,
                                                probability=upsampled.clamp(0, 1).numpy())))
        # Scaled to peak 1 on the network's grid, a map sampled to a tiny picture may still miss its peak.
        return [mask for _, mask in sorted(found, key=lambda pair: -pair[0]) if mask.covers_a_pixel]


def _minilm_dir(spec: ModelSpec) -> Path:
    return spec.weight_path("text").parent  # the package's folder is the sentence-transformers model


def _network(spec: ModelSpec) -> ClassifierWithFeatures:
    return shared_network(spec.weight_path("classifier"), spec.options.get("architecture", "efficientnet_lite0"))


def load_semantic(spec: ModelSpec) -> OfflineSemanticEncoder:
    bridge = replace(DEFAULT_BRIDGE, **spec.options.get("bridge", {}))
    encoder = OfflineSemanticEncoder(key=spec.key, network=_network(spec),
                                     text_model=shared_text_model(_minilm_dir(spec)), bridge=bridge,
                                     bridge_share=spec.options.get("bridge_share"),
                                     text_weights=spec.weight_path("text"))
    if encoder.dim != spec.dim:
        raise ValueError(f"{spec.key}: the catalog says {spec.dim} dimensions, the encoder makes {encoder.dim}")
    return encoder


def load_segmenter(spec: ModelSpec) -> CamSegmenter:
    return CamSegmenter(key=spec.key, network=_network(spec),
                        min_probability=spec.options.get("min_probability", CAM_MIN_PROBABILITY))
