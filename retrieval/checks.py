"""Django system checks of the model and hardware settings: every command (migrate, qcluster, reembed, …)
says what is wrong with them in one line before it starts, instead of a traceback from the first model
load, a worker that dies, or a search that answers 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from retrieval.encoders.devices import resolve_device
from retrieval.encoders.openvino_runtime import segmenter_runtime
from retrieval.encoders.precision import precision_setting
from retrieval.encoders.registry import MODELS, active_profile, profile_models
from retrieval.index_build import ann_kind


@register()
def model_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        roles = profile_models(active_profile())
    except (ImproperlyConfigured, ValueError) as exc:
        return [Error(str(exc), id="retrieval.E001")]
    missing = sorted(key for key in roles.values() if not MODELS[key].weights_present())
    if not missing:
        return []
    fetchable = [key for key in missing if all(weight.url for weight in MODELS[key].weights)]
    shipped = [key for key in missing if key not in fetchable]
    hints = []
    if fetchable:
        hints.append(f"{', '.join(fetchable)}: run `python manage.py fetch_weights` where a network exists, or copy "
                     "the files in by hand (weights/README.md)")
    if shipped:
        files = ", ".join(name for key in shipped for name in MODELS[key].weight_files_missing())
        hints.append(f"{', '.join(shipped)}: this project ships the file in its weights/ folder: copy {files} into "
                     "IMAGINAITION_WEIGHTS_DIR")
    message = (f"the weights of {', '.join(missing)} are not in {settings.IMAGINAITION_WEIGHTS_DIR}: every image "
               "would fail to process")
    if settings.IMAGINAITION_MODEL_PROFILE == "standard":  # asked for by name: it cannot serve, so nothing starts
        return [Error(message, hint="; ".join([*hints, "or set IMAGINAITION_MODEL_PROFILE=auto"]) + ".",
                      id="retrieval.E002")]
    return [Warning(message, hint="; ".join(hints) + ".", id="retrieval.W001")]


@register()
def hardware_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """IMAGINAITION_DEVICE, _PRECISION and _SEGMENTER_RUNTIME (the numbers are checked as settings load)."""
    errors: list[CheckMessage] = []
    try:
        device = resolve_device(settings.IMAGINAITION_DEVICE)
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="retrieval.E003")]
    for check in (precision_setting, lambda: segmenter_runtime(device)):
        try:
            check()
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="retrieval.E003"))
    return errors


@register()
def index_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """IMAGINAITION_ANN_INDEX: read only when a gallery first outgrows its exact index, where a wrong
    value stopped the rebuild with a traceback."""
    try:
        for space in ("semantic", "content"):
            ann_kind(space)
    except ValueError as exc:
        return [Error(str(exc), id="retrieval.E004")]
    return []


@register()
def folder_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The folders this layer writes: a file or an unwritable place there ended a command (rebuild_index, a
    worker's first build) in a traceback. Made here when missing, as their first writer would."""
    errors: list[CheckMessage] = []
    for name in ("IMAGINAITION_INDEX_DIR", "IMAGINAITION_MODEL_CACHE_DIR"):
        folder = Path(getattr(settings, name))
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = "a file, not a folder" if folder.is_file() else (exc.strerror or str(exc))
            errors.append(Error(f"{name}={folder} cannot be used as a folder: {reason}", id="retrieval.E005"))
    return errors
