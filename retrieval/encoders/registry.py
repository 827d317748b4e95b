"""The one registry of models: key -> how it is built, its role and dimension, its weight files
(where they live, where they come from, their hash and licence). Nothing else knows file paths.

Models are loaded lazily, once per process, and kept: a process that never asks for a model
never loads it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from django.conf import settings

from .base import Role

logger = logging.getLogger(__name__)

Profile = Literal["standard", "offline"]


@dataclass(frozen=True)
class WeightFile:
    filename: str
    licence: str
    url: str | None = None  # where fetch_weights downloads it from (None: shipped, never downloaded)
    sha256: str | None = None  # of the downloaded file; may be a prefix (torchvision names carry 8 hex digits)
    package: str | None = None  # set when the file ships inside an installed Python package
    convert: str | None = None  # "module:function(source, target)" applied once after download

    def path(self) -> Path:
        if self.package:
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError(f"package {self.package!r} is not installed")
            return Path(next(iter(spec.submodule_search_locations))) / self.filename
        return Path(settings.IMAGINAITION_WEIGHTS_DIR) / self.filename


@dataclass(frozen=True)
class ModelSpec:
    key: str
    role: Role
    dim: int | None  # None for segmenters
    loader: str  # "module:function"; called as function(spec) -> model instance
    profiles: tuple[Profile, ...]
    description: str
    weights: tuple[WeightFile, ...] = field(default_factory=tuple)
    options: dict[str, Any] = field(default_factory=dict)

    def weights_present(self) -> bool:
        try:
            return all(w.path().is_file() for w in self.weights)
        except FileNotFoundError:
            return False

    def weight_path(self, filename: str) -> Path:
        for weight in self.weights:
            if weight.filename == filename:
                return weight.path()
        raise KeyError(f"{self.key} has no weight file {filename!r}")


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.key] = spec
    return spec


@dataclass(frozen=True)
class ActiveModels:
    profile: Profile
    semantic: str
    content: str
    segmenter: str


PROFILE_MODELS: dict[Profile, dict[Role, str]] = {}


def active_profile() -> Profile:
    """`auto` picks standard when all its weight files are present, else offline."""
    wanted = settings.IMAGINAITION_MODEL_PROFILE
    if wanted in ("standard", "offline"):
        return wanted
    if wanted != "auto":
        raise ValueError(f"IMAGINAITION_MODEL_PROFILE must be auto, standard or offline, not {wanted!r}")
    standard = PROFILE_MODELS.get("standard", {})
    if standard and all(MODELS[key].weights_present() for key in standard.values()):
        return "standard"
    return "offline"


def active_models() -> ActiveModels:
    profile = active_profile()
    roles = PROFILE_MODELS[profile]
    return ActiveModels(profile=profile, semantic=roles["semantic"], content=roles["content"],
                        segmenter=roles["segmenter"])


def log_active_models() -> None:
    """Say at start which profile and models this process will use (web server, workers)."""
    models = active_models()
    logger.info("model profile %s: semantic %s, content %s, segmenter %s", models.profile, models.semantic,
                models.content, models.segmenter)


_loaded: dict[str, Any] = {}
_load_lock = threading.Lock()


def get_model(key: str) -> Any:
    """The loaded model for `key`, built on first use and kept for the life of the process."""
    if key in _loaded:
        return _loaded[key]
    with _load_lock:
        if key not in _loaded:
            spec = MODELS[key]
            module_name, function_name = spec.loader.split(":")
            loader = getattr(importlib.import_module(module_name), function_name)
            logger.info("loading model %s", key)
            _loaded[key] = loader(spec)
        return _loaded[key]


def unload_all() -> None:
    """Forget loaded models (tests that swap weight folders)."""
    with _load_lock:
        _loaded.clear()


from . import catalog  # noqa: E402,F401  (fills MODELS and PROFILE_MODELS)
