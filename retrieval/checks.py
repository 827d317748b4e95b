"""Django system checks of the model settings: every command (migrate, qcluster, reembed, …) says what
is wrong with them in one line before it starts, instead of a traceback from the first model load."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from retrieval.encoders.registry import MODELS, active_profile, profile_models


@register()
def model_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    try:
        roles = profile_models(active_profile())
    except (ImproperlyConfigured, ValueError) as exc:
        return [Error(str(exc), id="retrieval.E001")]
    missing = sorted(key for key in roles.values() if not MODELS[key].weights_present())
    if not missing:
        return []
    return [Warning(f"the weights of {', '.join(missing)} are not in {settings.IMAGINAITION_WEIGHTS_DIR}: every image "
                    "would fail to process", hint="Run `python manage.py fetch_weights` where a network exists "
                    "(weights/README.md); with IMAGINAITION_MODEL_PROFILE=auto the offline profile serves until "
                    "then.", id="retrieval.W001")]
