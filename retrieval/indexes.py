"""FAISS indexes rebuilt from Postgres, one per (space, model key), published to every process.

- Exact (flat) up to IMAGINAITION_FLAT_INDEX_MAX vectors; above it approximate: IVF by default
  (k-means lists; it builds in about the time it takes to read the vectors, where an HNSW graph
  takes 10–20×), compressed IVF (8/6/4-bit codes, or product codes re-ranked from a mapped file of
  16-bit vectors) or HNSW on request (retrieval/index_build.py, retrieval/rerank_vectors.py).
- A rebuild streams vectors with binary COPY, builds aside, writes the file, then bumps the
  version stamp in the database (IndexState) and swaps the new index in atomically. Other
  processes see the newer version on their next query and load the file (retrieval/index_snapshots.py).
- Metric maths: retrieval/metrics.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast

import faiss
import numpy as np
from django.db import transaction
from django.utils import timezone

from gallery.services import Progress
from retrieval.index_build import (
    TRAINING_ROWS_PER_LIST,
    BuiltIndex,
    ChunkSource,
    build_faiss_index_streamed,
    index_kind,
    ivf_lists,
)
from retrieval.index_snapshots import IdSet, IndexSnapshot, database_identity, db_now, index_dir, manager
from retrieval.models import IndexState
from retrieval.spaces import VectorOwner
from retrieval.vector_io import count_vectors, stream_raw_chunks, stream_vectors

REBUILD_CHUNK_ROWS = 20_000


def _slug(model_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", model_key).strip("-").lower()


STALE_TEMPORARY_SECONDS = 6 * 3600  # far longer than any build writes one file


def _remove_stale_temporaries(folder: Path) -> None:
    """A process killed (or a short one that exited) while writing an index leaves its temporary file;
    the next write in the folder removes those no build can still be writing."""
    limit = time.time() - STALE_TEMPORARY_SECONDS
    for leftover in folder.glob("*.tmp"):
        try:
            if leftover.stat().st_mtime < limit:
                leftover.unlink()
        except FileNotFoundError:
            pass  # another process removed it first


def _write_atomically(path: Path, write: Callable[[str], object]) -> None:
    _remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class RebuildReport:
    space: str
    model_key: str
    version: int
    count: int
    kind: str
    params: dict
    seconds: float
    stages: dict[str, float]


@dataclass(frozen=True)
class _FromPostgres:
    built: BuiltIndex
    synced_at: datetime  # anything embedded after this is picked up by the next catch-up
    sample_s: float


def _build_from_postgres(*, space: str, model_key: str, dim: int, owner: VectorOwner,
                         progress: Progress | None) -> _FromPostgres:
    """A new index of every stored vector of (owner, space, model): a sample to train and calibrate on
    when it is approximate, then every row streamed with binary COPY into the builder thread."""
    synced_at = db_now()
    expected = count_vectors(model_key=model_key, space=space, owner=owner)
    sample = None
    clock = time.perf_counter()
    if index_kind(expected, space) != "flat":
        wanted = ivf_lists(expected) * TRAINING_ROWS_PER_LIST
        percent = min(100.0, 100.0 * 1.1 * wanted / max(expected, 1))
        parts = list(stream_vectors(model_key=model_key, space=space, dim=dim, sample_percent=percent, owner=owner))
        sample = np.concatenate([vectors for _, vectors in parts]) if parts else np.zeros((0, dim), np.float32)

    def chunks() -> Iterator[ChunkSource]:
        for raw in stream_raw_chunks(model_key=model_key, space=space, dim=dim, chunk_rows=REBUILD_CHUNK_ROWS,
                                     owner=owner):
            if progress is not None:
                progress(len(raw.data) // raw.dtype.itemsize)
            yield raw.parse  # parsed and normalized on the builder thread

    sample_s = time.perf_counter() - clock
    built = build_faiss_index_streamed(space=space, dim=dim, count=expected, sample=sample, chunks=chunks())
    return _FromPostgres(built=built, synced_at=synced_at, sample_s=sample_s)


INDEX_FILE_SUFFIXES = (".faiss", ".json", ".rerank")  # an index, its meta, its re-rank vectors (ivf-pq)


@contextlib.contextmanager
def _unpublished_files_removed_on_failure(built: BuiltIndex) -> Iterator[None]:
    """A built index whose publishing fails leaves no temporary re-rank file behind."""
    try:
        yield
    except BaseException:
        if built.rerank_vectors is not None:
            built.rerank_vectors.discard_if_unpublished()
        raise


def _write_index_files(*, path: Path, fresh: _FromPostgres, owner: VectorOwner, space: str, model_key: str,
                       version: int, dim: int) -> None:
    """The re-rank vectors first, the meta last: a process that finds the .json finds the rest."""
    built = fresh.built
    if built.rerank_vectors is not None:
        os.replace(built.rerank_vectors.path, path.with_suffix(".rerank"))
        built.rerank_vectors.path = path.with_suffix(".rerank")
    _write_atomically(path, lambda tmp: faiss.write_index(built.index, tmp))
    meta = {"owner": owner, "space": space, "model_key": model_key, "version": version, "count": int(len(built.ids)),
            "kind": built.kind, "params": built.params, "dim": dim, "synced_at": fresh.synced_at.isoformat(),
            "database": database_identity()}
    _write_atomically(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta)))


def _snapshot(*, fresh: _FromPostgres, owner: VectorOwner, space: str, model_key: str, version: int, dim: int,
              state_id: int) -> IndexSnapshot:
    built = fresh.built
    snapshot = IndexSnapshot(space=space, model_key=model_key, dim=dim, index=built.index, kind=built.kind,
                             version=version, synced_at=fresh.synced_at, ids=IdSet(built.ids), owner=owner,
                             state_id=state_id, rerank=built.params.get("rerank", 1),
                             rerank_vectors=built.rerank_vectors)
    if owner == "region":
        snapshot.attach_regions()
    return snapshot


def index_rebuild(*, space: str, model_key: str, dim: int, progress: Progress | None = None,
                  owner: VectorOwner = "image") -> RebuildReport:
    """Build the index of one (space, model) of image or region vectors from Postgres aside,
    persist it, publish, swap in."""
    started = time.perf_counter()
    fresh = _build_from_postgres(space=space, model_key=model_key, dim=dim, owner=owner, progress=progress)
    built = fresh.built
    clock = time.perf_counter()
    with _unpublished_files_removed_on_failure(built), transaction.atomic():
        state, _ = IndexState.objects.select_for_update().get_or_create(owner=owner, space=space, model_key=model_key)
        version = state.version + 1
        file_name = f"{'region-' if owner == 'region' else ''}{space}-{_slug(model_key)}-v{version}.faiss"
        _write_index_files(path=index_dir() / file_name, fresh=fresh, owner=owner, space=space, model_key=model_key,
                           version=version, dim=dim)
        old_file = state.file_name
        state.version, state.vector_count, state.kind = version, int(len(built.ids)), built.kind
        state.file_name, state.built_at, state.synced_at = file_name, timezone.now(), fresh.synced_at
        state.save()
    if old_file and old_file != file_name:
        _remove_index_files(old_file)
    manager.install(_snapshot(fresh=fresh, owner=owner, space=space, model_key=model_key, version=version, dim=dim,
                              state_id=state.pk))
    return RebuildReport(space=space, model_key=model_key, version=version, count=int(len(built.ids)),
                         kind=built.kind, params=built.params, seconds=time.perf_counter() - started,
                         stages={"sample": fresh.sample_s, **built.stages,
                                 "write and publish": time.perf_counter() - clock})


def _remove_index_files(file_name: str) -> None:
    # A process still mapping the old .rerank keeps reading it: the kernel frees it when unmapped.
    for suffix in INDEX_FILE_SUFFIXES:
        (index_dir() / file_name).with_suffix(suffix).unlink(missing_ok=True)


def index_copy_build(state: IndexState, dim: int) -> IndexSnapshot:
    """This host's copy of a version another host published (hosts share the database, not their
    index folders): built from Postgres under the published file name, the version stamp unchanged,
    the host's copy of the previous version removed. Runs in the background (IndexManager)."""
    owner = cast(VectorOwner, state.owner)
    fresh = _build_from_postgres(space=state.space, model_key=state.model_key, dim=dim, owner=owner, progress=None)
    # Every earlier version's files (a .faiss, its .json, an ivf-pq's .rerank), by its .faiss name.
    versions = state.file_name.rsplit("-v", 1)[0] + "-v*"
    previous = {path.with_suffix(".faiss").name for path in index_dir().glob(versions)}
    with _unpublished_files_removed_on_failure(fresh.built):
        _write_index_files(path=index_dir() / state.file_name, fresh=fresh, owner=owner, space=state.space,
                           model_key=state.model_key, version=state.version, dim=dim)
    for name in previous - {state.file_name}:
        _remove_index_files(name)
    return _snapshot(fresh=fresh, owner=owner, space=state.space, model_key=state.model_key, version=state.version,
                     dim=dim, state_id=state.pk)


def index_drop_all() -> None:
    """Forget every index (database reset): files, version stamps, this process's copies."""
    with transaction.atomic():
        for state in IndexState.objects.select_for_update():
            if state.file_name:
                _remove_index_files(state.file_name)
        IndexState.objects.all().delete()
    manager.clear()
