"""Schemathesis fuzzes the live REST API against its own OpenAPI schema (GET /api/schema/).

A real live server on the test database serves a small gallery (offline profile, FAISS indexes
built); the schemathesis CLI runs in a subprocess with every check, so any response whose status,
content type or body the schema does not declare fails this test.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rest_framework.authtoken.models import Token

from gallery.models import Image
from retrieval import search as search_service
from retrieval.encoders.base import SoftMask
from retrieval.encoders.registry import MODELS
from retrieval.index_snapshots import manager
from retrieval.indexes import index_rebuild
from tests.gallery.factories import add_embedding, add_mask, make_image

pytestmark = pytest.mark.integration

SEMANTIC_KEY, CONTENT_KEY = "offline/effnet-lite0+minilm", "autoencoder/v1"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")  # the CLI of this test run's environment
MAX_EXAMPLES = 30  # per operation
RUN_TIMEOUT = 300  # seconds for one schemathesis run (50-75 s here); each request has 20 s


def _unit(space: str, vector: np.ndarray) -> np.ndarray:
    """A vector as the space stores it: L2-normalised (semantic) or a distribution (content)."""
    if space == "content":
        vector = np.abs(vector)
        return vector / vector.sum()
    return vector / np.linalg.norm(vector)


class FakeEncoder:
    """Deterministic vectors from the input's bytes (and, as the segmenter, one region). Search by text or upload goes through the real
    API, query parsing, indexes and policy; only the model is replaced (loading the real offline
    models takes ~15 s of this test's budget, and their output is tested in tests/retrieval)."""

    def __init__(self, key: str) -> None:
        self.space, self.dim = MODELS[key].role, MODELS[key].dim or 0

    def _vector(self, data: bytes) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
        return _unit(self.space, np.random.default_rng(seed).normal(size=self.dim)).astype(np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vector(text.encode()) for text in texts])

    def read_text(self, text: str) -> None:
        return None  # cannot tell how much of it a model reads: searched as it is

    def encode_images(self, pictures: list[Any]) -> np.ndarray:
        return np.stack([self._vector(picture.tobytes()) for picture in pictures])

    def segment(self, pictures: list[Any]) -> list[list[SoftMask]]:
        """As a segmenter (a search by an upload's region): one centred "cat" region per picture."""
        found = []
        for picture in pictures:
            probability = np.zeros((picture.height, picture.width), dtype=np.float32)
            probability[picture.height // 4: 3 * picture.height // 4, picture.width // 4: 3 * picture.width // 4] = 1
            found.append([SoftMask(label="cat", class_index=8, probability=probability)])
        return found


@pytest.fixture
def api_site(transactional_db, settings, media_root, tmp_path, monkeypatch) -> Iterator[list[Image]]:
    """The offline profile over 6 images with both vectors (one with a mask), FAISS indexes built."""
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    settings.IMAGINAITION_INDEX_SYNC_SECONDS = 0
    monkeypatch.setattr(search_service, "get_model", FakeEncoder)
    manager.clear()
    rng = np.random.default_rng(0)
    images = []
    for i in range(6):
        image = make_image(name=f"img{i}.png")
        add_embedding(image, space="semantic", model_key=SEMANTIC_KEY, vector=_unit("semantic", rng.normal(size=384)))
        add_embedding(image, space="content", model_key=CONTENT_KEY, vector=_unit("content", rng.normal(size=1024)))
        images.append(image)
    add_mask(images[0], label="cat")
    index_rebuild(space="semantic", model_key=SEMANTIC_KEY, dim=384)
    index_rebuild(space="content", model_key=CONTENT_KEY, dim=1024)
    yield images
    manager.clear()


def run_schemathesis(*, url: str, token: str, workdir: Path, config: str, args: list[str]) -> tuple[int, str]:
    """One CLI run in `workdir`, from its config file there: no reports, no example database, no
    cache, so nothing is written into the repository. Its only network peer is the live server."""
    config_file = workdir / "schemathesis.toml"
    config_file.write_text(config)
    # A fixed seed by default: CI runs the same requests each time, so a red run names a change, not a
    # draw. SCHEMATHESIS_SEED=random explores new inputs (and a failed run prints its seed to replay).
    seed = os.environ.get("SCHEMATHESIS_SEED", "0")
    seed = None if seed == "random" else seed
    command = [str(SCHEMATHESIS), "--config-file", str(config_file), "--no-color", "run", url,
               "--checks", "all", "-H", f"Authorization: Token {token}", "--max-examples", str(MAX_EXAMPLES),
               "--request-timeout", "20", "--generation-database", "none", "--workers", "1",
               # The token above is the credentials; no made-up session cookie next to it (schemathesis
               # would take the token's success for the made-up cookie's: "accepts invalid auth").
               "--generation-with-security-parameters", "false", *(["--seed", seed] if seed else []), *args]
    # A bare environment: no proxy settings, HOME in the test's folder.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8"}
    try:
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        pytest.fail(f"schemathesis did not finish in {RUN_TIMEOUT} s:\n{output}")
    return done.returncode, done.stdout + done.stderr


def test_live_api_conforms_to_its_openapi_schema(api_site, live_server, django_user_model, tmp_path):
    user = django_user_model.objects.create_user("fuzzer", password="s3cret-Pass!")
    token = Token.objects.create(user=user).key
    ids = ", ".join(str(image.pk) for image in api_site)
    config = f"""
[cache]
enabled = false

# Existing images, drawn for image ids half of the time (else any integer: a 404 or a 400).
[dictionaries.images]
values = [{ids}]

[parameters]
"path.image_id" = {{ dictionary = "images", probability = 0.5 }}
"body.image_id" = {{ dictionary = "images", probability = 0.5 }}

# Schema-valid requests these operations refuse with their documented 400 (and 413), because
# OpenAPI cannot say it: an upload is `format: binary`, so schemathesis sends random bytes that are
# not an image; a search needs exactly one of image_id, image or text, an image_id of a stored
# image that has its vectors, and words that are not blank; and a label filter (list and search) must
# name labels some mask has, which depend on the gallery. (Its default statuses plus 400 and 413.)
[[operations]]
include-name = ["GET /api/images/", "POST /api/images/", "POST /api/search/"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "429", "5xx"]

# DRF reads form fields and query strings leniently, by design: "0", "1", "yes", "on" are booleans in a
# multipart or urlencoded body, and an empty or repeated ?page= gives the first (or the last given)
# page. Schemathesis reads form text only as JSON or as a string, so it takes `include_self=0` for a
# value of the wrong type that the API should have refused. Only that check lets their 200 pass (its
# default statuses plus 200: `enabled = false` would lose to --checks all on the command line); the
# responses to such requests are still checked (status documented, content type, body schema).
[[operations]]
include-name = ["GET /api/images/", "PUT /api/preferences/", "PATCH /api/preferences/", "POST /api/search/"]
checks.negative_data_rejection.expected-statuses = [
    "200", "400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]
"""
    url = f"{live_server.url}/api/schema/"
    # DELETE runs last, on its own: the other operations need the gallery it deletes.
    for selection in (["--exclude-method", "DELETE"], ["--include-method", "DELETE"]):
        code, output = run_schemathesis(url=url, token=token, workdir=tmp_path, config=config, args=selection)
        print(output)
        assert code == 0, f"schemathesis {' '.join(selection)} failed:\n{output}"
