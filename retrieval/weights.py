"""Fetching the standard profile's weight files (an explicit set-up step, never inside a request)."""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from retrieval.encoders.registry import MODELS, WeightFile

OFFLINE_MESSAGE = ("No network access to the model download sites: the standard profile's weights were not "
                   "fetched, so the offline profile will be used (see weights/README.md to copy the files in by hand).")


@dataclass(frozen=True)
class FileResult:
    model_key: str
    filename: str
    status: str  # present | downloaded | missing | error
    message: str = ""


@dataclass
class FetchReport:
    results: list[FileResult] = field(default_factory=list)
    offline: bool = False

    @property
    def ok(self) -> bool:
        return not any(result.status == "error" for result in self.results)

    def summary(self) -> str:
        lines = [f"{r.filename} ({r.model_key}): {r.status}{' - ' + r.message if r.message else ''}"
                 for r in self.results]
        if self.offline:
            lines.append(OFFLINE_MESSAGE)
        return "\n".join(lines)


def _downloadable(keys: Sequence[str] | None) -> list[tuple[str, WeightFile]]:
    chosen = keys or [key for key, spec in MODELS.items() if "standard" in spec.profiles]
    return [(key, weight) for key in chosen for weight in MODELS[key].weights if weight.url]


def _matches(weight: WeightFile, digest: str) -> bool:
    return weight.sha256 is None or digest.startswith(weight.sha256.lower())


def _download(weight: WeightFile, *, connect_timeout: float, progress: bool) -> None:
    target = weight.path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with urllib.request.urlopen(weight.url, timeout=connect_timeout) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if not _matches(weight, digest.hexdigest()):
            raise ValueError(f"SHA-256 mismatch: expected {weight.sha256}, got {digest.hexdigest()}")
        if weight.convert:
            module, function = weight.convert.split(":")
            converted = f"{tmp}.converted"
            try:
                getattr(importlib.import_module(module), function)(tmp, converted)
                os.replace(converted, target)
            finally:
                Path(converted).unlink(missing_ok=True)
        else:
            os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def weights_fetch(*, keys: Sequence[str] | None = None, connect_timeout: float = 5.0,
                  progress: bool = True) -> FetchReport:
    """Download the missing weight files. Without a network it returns within seconds (offline=True)."""
    report = FetchReport()
    for key, weight in _downloadable(keys):
        if weight.path().is_file():
            report.results.append(FileResult(key, weight.filename, "present"))
            continue
        if report.offline:
            report.results.append(FileResult(key, weight.filename, "missing", "not downloaded (offline)"))
            continue
        try:
            _download(weight, connect_timeout=connect_timeout, progress=progress)
        except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(exc, urllib.error.HTTPError):
                report.results.append(FileResult(key, weight.filename, "error", f"HTTP {exc.code}"))
            else:
                report.offline = True  # one unreachable host is enough: don't wait on the others
                report.results.append(FileResult(key, weight.filename, "missing", f"unreachable: {reason}"))
        except (ValueError, OSError, RuntimeError) as exc:
            report.results.append(FileResult(key, weight.filename, "error", str(exc)))
        else:
            report.results.append(FileResult(key, weight.filename, "downloaded"))
    return report


def weights_status() -> list[FileResult]:
    """Which weight files of every registered model are present (for status pages)."""
    results = []
    for key, spec in MODELS.items():
        for weight in spec.weights:
            try:
                present = weight.path().is_file()
            except FileNotFoundError:
                present = False
            results.append(FileResult(key, weight.filename, "present" if present else "missing"))
    return results
