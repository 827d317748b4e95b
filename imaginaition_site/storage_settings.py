"""Which storage holds the gallery's files, from the environment (read by settings.py; tests call it too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from imaginaition_site.env import env_number

S3_TIMEOUT_DEFAULT = 10.0  # seconds
S3_ATTEMPTS = 2  # per request, the first included: a request in flight waits at most twice the timeout


def media_storage(environ: Mapping[str, str]) -> dict[str, Any]:
    """STORAGES["default"]: local (MEDIA_ROOT: a local folder or a shared mount) or s3 (an S3-compatible
    bucket through django-storages; credentials as boto3 reads them: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    an instance role, ...)."""
    kind = environ.get("IMAGINAITION_STORAGE", "").strip() or "local"  # blank: the default
    if kind == "local":
        return {"BACKEND": "gallery.storage.AtomicFileSystemStorage"}
    if kind != "s3":
        raise ImproperlyConfigured(f"IMAGINAITION_STORAGE must be local or s3, not {kind!r}.")
    if not environ.get("IMAGINAITION_S3_BUCKET"):
        raise ImproperlyConfigured("IMAGINAITION_STORAGE=s3 needs IMAGINAITION_S3_BUCKET (the bucket's name).")
    endpoint = environ.get("IMAGINAITION_S3_ENDPOINT_URL") or None  # None: AWS itself
    if endpoint is not None and not _endpoint_address(endpoint):
        # botocore refuses it at the first request, as a ValueError that every page turned into a 500
        raise ImproperlyConfigured(f"IMAGINAITION_S3_ENDPOINT_URL must be an address such as http://HOST:PORT or "
                                   f"https://HOST, not {endpoint!r}.")
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": {
        "bucket_name": environ["IMAGINAITION_S3_BUCKET"],
        "endpoint_url": endpoint,
        "region_name": environ.get("IMAGINAITION_S3_REGION") or None,
        "location": environ.get("IMAGINAITION_S3_PREFIX", ""),  # a folder inside the bucket
        "default_acl": None,  # the bucket's own policy (private): files are served by gallery views only
        "file_overwrite": False,  # as on disk: a concurrent save of a taken name gets a new one
        "client_config": _s3_client_config(environ),
    }}


def _endpoint_address(endpoint: str) -> bool:
    """Whether botocore takes `endpoint`: http or https, and a host."""
    try:
        parts = urlsplit(endpoint)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:  # a port that is no number
        return False


def _s3_client_config(environ: Mapping[str, str]) -> Any:
    """botocore's Config with IMAGINAITION_S3_TIMEOUT's connect and read timeouts and few attempts:
    botocore's own defaults (60 s each, retried) held a web thread about three minutes per request
    while the endpoint hung. (django-storages builds its own Config only when none is given; its
    addressing-style, signature and proxy options are not used here.)"""
    from botocore.config import Config  # django-storages' S3 backend only: a local storage needs no boto

    timeout = env_number("IMAGINAITION_S3_TIMEOUT", S3_TIMEOUT_DEFAULT, minimum=0, exclusive_minimum=True,
                         whole=False, environ=environ)
    return Config(connect_timeout=timeout, read_timeout=timeout,
                  retries={"total_max_attempts": S3_ATTEMPTS, "mode": "standard"})
