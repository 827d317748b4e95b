"""Fetching the standard profile's weight files (an explicit set-up step, never inside a request), and
which weight files are in place (for status pages).

Every download lands in a temporary file next to its target, is checked against the registry's SHA-256
and only then renamed into place, so a weights folder never holds a partial or unverified file. Download
sites are probed first, in parallel and with one deadline, so an air-gapped install gets its answer in
about `connect_timeout` seconds however many files there are (even when DNS itself hangs).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlsplit

from django.conf import settings
from tqdm import tqdm

from retrieval.encoders import registry
from retrieval.encoders.registry import WeightFile
from retrieval.encoders.specs import sha256_matches, shipped_file_restore_advice

OFFLINE_MESSAGE = ("The model download sites cannot be reached: the standard profile's missing weights were not "
                   "fetched, so the offline profile will be used (weights/README.md says how to copy them in by hand).")
STANDARD_OFFLINE_MESSAGE = ("The model download sites cannot be reached: the standard profile's missing weights were "
                            "not fetched, and IMAGINAITION_MODEL_PROFILE=standard cannot run without them: copy them "
                            "in by hand (weights/README.md), or set IMAGINAITION_MODEL_PROFILE=auto.")
OFFLINE_PROFILE_MESSAGE = ("The model download sites cannot be reached: the standard profile's missing weights were "
                           "not fetched; IMAGINAITION_MODEL_PROFILE=offline does not use them.")
READ_TIMEOUT = 60.0  # seconds a download that has started may stall before it is abandoned
CHUNK_BYTES = 1 << 20
USER_AGENT = "ImaginAItion-fetch_weights"

FetchStatus = Literal["present", "downloaded", "unreachable", "error"]


@dataclass(frozen=True)
class FileResult:
    model_key: str
    filename: str
    status: FetchStatus
    message: str = ""


@dataclass
class FetchReport:
    results: list[FileResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False when a file failed verification or a site answered wrongly (being offline is not an error)."""
        return not any(result.status == "error" for result in self.results)

    @property
    def offline(self) -> bool:
        """Some wanted file could not be fetched because its site was unreachable."""
        return any(result.status == "unreachable" for result in self.results)

    def summary(self) -> str:
        lines = [f"{r.filename} ({r.model_key}): {r.status}{' - ' + r.message if r.message else ''}"
                 for r in self.results]
        if self.offline:
            lines.append({"auto": OFFLINE_MESSAGE, "offline": OFFLINE_PROFILE_MESSAGE}.get(
                settings.IMAGINAITION_MODEL_PROFILE, STANDARD_OFFLINE_MESSAGE))
        return "\n".join(lines)


@dataclass(frozen=True)
class WeightStatus:
    model_key: str
    filename: str
    path: str
    present: bool
    hash_ok: bool | None  # None: missing, or no hash to check against (a converted file)


class Unreachable(Exception):
    """No connection to the download site (refused, DNS failure, timeout): expected on air-gapped hosts."""


class DownloadError(Exception):
    """The site answered but the file is not the one the registry describes."""


def weights_fetch(*, keys: Sequence[str] | None = None, connect_timeout: float = 5.0,
                  progress: bool = True) -> FetchReport:
    """Download the missing (or corrupt) weight files of `keys` (default: the standard profile's models).

    Files already present with the right hash are skipped. Returns a report; never raises for network or
    hash problems (they are `unreachable` / `error` results). ValueError for an unknown key.
    """
    report = FetchReport(results=_shipped_files_changed(keys))
    wanted: list[tuple[str, WeightFile, str]] = []  # (model key, file, why a present file is replaced)
    for key, weight in _downloadable(keys):
        _remove_stale_temp_files(weight.path())
        if not weight.path().is_file():
            wanted.append((key, weight, ""))
        elif weight.hash_ok() is False:
            wanted.append((key, weight, "the file on disk did not match its SHA-256"))
        else:
            report.results.append(FileResult(key, weight.filename, "present"))
    if not wanted:
        return report

    reachable = _reachable_sites({_site(weight.url) for _, weight, _ in wanted if weight.url},
                                 timeout=connect_timeout)
    for key, weight, replacing in wanted:
        # A corrupt file that stays in place is an error even offline: it needs someone's attention.
        unreachable_status: FetchStatus = "error" if replacing else "unreachable"
        if not weight.url or _site(weight.url) not in reachable:
            host = urlsplit(weight.url or "").hostname
            report.results.append(FileResult(key, weight.filename, unreachable_status,
                                             "; ".join(filter(None, (replacing, f"cannot connect to {host}")))))
            continue
        try:
            _download(weight, progress=progress)
        except Unreachable as exc:
            report.results.append(FileResult(key, weight.filename, unreachable_status,
                                             "; ".join(filter(None, (replacing, str(exc))))))
        except (DownloadError, OSError, RuntimeError, ValueError) as exc:  # the last two: a failed conversion
            report.results.append(FileResult(key, weight.filename, "error", str(exc)))
        else:
            message = f"replaced: {replacing}" if replacing else ""
            report.results.append(FileResult(key, weight.filename, "downloaded", message))
    return report


def weights_status(*, verify: bool = True, keys: Iterable[str] | None = None) -> list[WeightStatus]:
    """The weight files of `keys` (default: every registered model): present or missing, and whether
    they match their SHA-256 (when `verify`; hashes are remembered per file size and mtime, so repeated
    calls cost a stat)."""
    statuses = []
    for key in registry.MODELS if keys is None else keys:
        for weight in registry.MODELS[key].weights:
            try:
                path = weight.path()
            except FileNotFoundError:  # its package is not installed
                statuses.append(WeightStatus(key, weight.filename, "", False, None))
                continue
            present = path.is_file()
            statuses.append(WeightStatus(key, weight.filename, str(path), present,
                                         weight.hash_ok() if present and verify else None))
    return statuses


def _chosen_files(keys: Sequence[str] | None) -> list[tuple[str, WeightFile]]:
    # Default: the standard profile's models as configured (IMAGINAITION_SEGMENTER included).
    chosen = keys if keys is not None else list(dict.fromkeys(registry.profile_models("standard").values()))
    unknown = [key for key in chosen if key not in registry.MODELS]
    if unknown:
        fetchable = sorted(key for key, spec in registry.MODELS.items() if any(w.url for w in spec.weights))
        raise ValueError(f"unknown model keys: {', '.join(unknown)}; the keys with files to fetch: "
                         f"{', '.join(fetchable)}")
    return [(key, weight) for key in chosen for weight in registry.MODELS[key].weights]


def _downloadable(keys: Sequence[str] | None) -> list[tuple[str, WeightFile]]:
    return [(key, weight) for key, weight in _chosen_files(keys) if weight.url]


def _shipped_files_changed(keys: Sequence[str] | None) -> list[FileResult]:
    """The project's own files that are not as this release ships them: said, and left in place, since
    `train_autoencoder --force` replaces one on purpose (a damaged one makes its images fail, saying so)."""
    return [FileResult(key, weight.filename, "present", "not the file this release ships (its SHA-256 differs): "
                       f"retrained here, or damaged; if damaged, {shipped_file_restore_advice(weight.filename)}")
            for key, weight in _chosen_files(keys) if weight.shipped and weight.hash_ok() is False]


def _site(url: str) -> tuple[str, int]:
    """Where a connection for `url` goes: its host, or the proxy urllib would use for it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxy_parts.hostname or "", proxy_parts.port or 80
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def _reachable_sites(sites: set[tuple[str, int]], *, timeout: float) -> set[tuple[str, int]]:
    """The sites a TCP connection opens to within `timeout` seconds, all probed at once. Threads, not
    socket timeouts, bound the wait: name resolution ignores socket timeouts."""
    reachable: set[tuple[str, int]] = set()

    def probe(site: tuple[str, int]) -> None:
        try:
            socket.create_connection(site, timeout=timeout).close()
        except OSError:
            return
        reachable.add(site)

    threads = [threading.Thread(target=probe, args=(site,), daemon=True) for site in sites]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return set(reachable)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def _remove_stale_temp_files(target: Path) -> None:
    """Temporary files of an earlier run that was killed mid-download."""
    if target.parent.is_dir():
        for stale in target.parent.glob(f"{_temp_prefix(target)}*.part"):
            stale.unlink(missing_ok=True)


def readable_as_created(path: Path | str) -> None:
    """Give a file made by tempfile.mkstemp (readable by its owner alone) the mode a plain open() gives (0666
    less the umask): a weight file is read by the service's account, which may not be the one that fetched
    or trained it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _download(weight: WeightFile, *, progress: bool) -> None:
    """Download, verify and move `weight` into place. Raises Unreachable, DownloadError or OSError (disk);
    on any of them nothing is left behind."""
    if not weight.url or not weight.sha256:
        raise DownloadError("the registry has no URL and SHA-256 for this file; refusing an unverified download")
    target = weight.path()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=_temp_prefix(target), suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, received, expected_bytes = _stream(weight.url, out, label=target.name, progress=progress)
            out.flush()
            os.fsync(out.fileno())  # the rename below must never publish a file whose bytes are not on disk
        if expected_bytes is not None and received != expected_bytes:
            raise DownloadError(f"incomplete download: {received} of {expected_bytes} bytes")
        if not sha256_matches(weight.sha256, digest):
            raise DownloadError(f"SHA-256 mismatch: expected {weight.sha256}, got {digest}; the file was discarded")
        if weight.convert:
            _convert(weight.convert, temp, target)
        else:
            readable_as_created(temp)
            os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def _stream(url: str, out: BinaryIO, *, label: str, progress: bool) -> tuple[str, int, int | None]:
    """Copy `url` into `out`; returns (sha256 hex digest, bytes received, Content-Length or None)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=READ_TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:  # connection refused, DNS failure, connect timeout (here or a redirect)
        raise Unreachable(f"cannot connect: {exc.reason}") from exc
    except TimeoutError as exc:
        raise Unreachable("cannot connect: timed out") from exc
    with response:
        expected_bytes = int(response.headers.get("Content-Length") or 0) or None
        digest, received = hashlib.sha256(), 0
        with tqdm(total=expected_bytes, unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except TimeoutError as exc:
                raise DownloadError(f"the download stalled for {READ_TIMEOUT:.0f} s after {received} bytes") from exc
            except (http.client.HTTPException, ConnectionError) as exc:
                raise DownloadError(f"the connection broke after {received} bytes: {exc!r}") from exc
    return digest.hexdigest(), received, expected_bytes


def _convert(converter: str, source: Path, target: Path) -> None:
    """Apply the registry's "module:function(source, target)" once, then move its output into place."""
    module_name, function_name = converter.split(":")
    converted = source.with_name(source.name + ".converted.part")
    try:
        getattr(importlib.import_module(module_name), function_name)(source, converted)
        os.replace(converted, target)
    finally:
        converted.unlink(missing_ok=True)
