"""What the catalog declares for each model: its weight files and how to build it."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from django.conf import settings

from .base import Role

Profile = Literal["standard", "offline"]

_digests: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's SHA-256 (hex), read once per process for a given size and modification time: weight
    files are large, and several checks and caches are keyed by their digest."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        with path.open("rb") as file:
            _digests[key] = hashlib.file_digest(file, "sha256").hexdigest()
    return _digests[key]


def sha256_matches(expected: str, digest: str) -> bool:
    """A catalog's SHA-256 against a file's: torchvision names carry only the first 8 hex digits."""
    return len(expected) >= 8 and digest.startswith(expected.lower())


def shipped_file_restore_advice(filename: str) -> str:
    """What brings back one of the project's own weight files (nothing downloads it)."""
    return f"copy the project's weights/{filename} there again (in a clone: `git checkout -- weights/{filename}`)"


@dataclass(frozen=True)
class WeightFile:
    filename: str
    licence: str
    part: str = "model"  # which file of the model this is, for models with several (classifier, text)
    url: str | None = None  # where fetch_weights downloads it from (None: shipped, never downloaded)
    # of the downloaded file (may be a prefix: torchvision names carry 8 hex digits), or of the file as shipped
    sha256: str | None = None
    package: str | None = None  # set when the file ships inside an installed Python package
    convert: str | None = None  # "module:function(source, target)" applied once after download

    def present(self) -> bool:
        """Whether the file is there (a file of a package not installed is not)."""
        try:
            return self.path().is_file()
        except FileNotFoundError:
            return False

    def path(self) -> Path:
        if self.package:
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                raise FileNotFoundError(f"package {self.package!r} is not installed")
            return Path(next(iter(spec.submodule_search_locations))) / self.filename
        return Path(settings.IMAGINAITION_WEIGHTS_DIR) / self.filename

    @property
    def shipped(self) -> bool:
        """The project's own file, in its weights/ folder: nothing downloads it again."""
        return self.url is None and self.package is None

    def hash_ok(self) -> bool | None:
        """Whether the file on disk matches the catalog's SHA-256 (a shipped file: as this release ships it;
        one retrained here differs); None when it is missing or there is nothing to check against (a
        converted file is not the download)."""
        try:
            path = self.path()
        except FileNotFoundError:
            return None
        if not path.is_file() or not self.sha256 or self.convert:
            return None
        return sha256_matches(self.sha256, file_sha256(path))


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

    def weight_files_present(self) -> list[Path]:
        """Those of its weight files that are there (a file of a package not installed is not)."""
        return [weight.path() for weight in self.weights if weight.present()]

    def weights_present(self) -> bool:
        return all(weight.present() for weight in self.weights)

    def weight_files_missing(self) -> list[str]:
        """The names of its weight files that are not there."""
        return [weight.filename for weight in self.weights if not weight.present()]

    def weight_path(self, part: str = "model") -> Path:
        """Where the weight file of that part of the model is (the catalog alone names the files)."""
        for weight in self.weights:
            if weight.part == part:
                return weight.path()
        raise KeyError(f"{self.key} has no {part!r} weight file")
