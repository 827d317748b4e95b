"""The original app's integrity check: ok, index missing, count mismatch, stored file missing; and
building index, while the first index of vectors already written is on its way; index file missing,
for an index whose file was deleted under the running process (it answers from memory); storage
unreachable, when the stored files were to be checked and the media storage failed (the reason is logged)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction

from gallery.storage import STORAGE_ERRORS
from gallery.storage_check import images_file_missing, storage_unreachable_message
from retrieval.encoders.registry import model_dim
from retrieval.index_snapshots import IndexSnapshot, index_dir, manager
from retrieval.indexes import index_rebuild
from retrieval.models import IndexState
from retrieval.serving import index_name, indexes_in_use
from retrieval.spaces import VectorOwner
from retrieval.vector_io import count_vectors
from retrieval.work_locks import MISSING_INDEX_BUILD, work_in_flight

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexHealth:
    space: str
    model_key: str
    state: str  # ok | building index | index missing | count mismatch | index file missing
    database_count: int
    index_count: int | None
    version: int | None
    owner: VectorOwner = "image"  # image or region vectors


@dataclass(frozen=True)
class IntegrityReport:
    state: str  # ok, or the first problem found
    indexes: list[IndexHealth]
    missing_files: list[int]  # image ids whose stored file is gone

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "missing_files": self.missing_files,
                "indexes": [health.__dict__ for health in self.indexes]}


def integrity_check(*, check_files: bool = True) -> IntegrityReport:
    healths: list[IndexHealth] = []
    for owner, space, key in indexes_in_use():
        # Counted before and after catching the index up: a batch committed meanwhile read as "count mismatch"
        # (the index had caught up less than a second before), which a health probe took for a fault.
        # The index's count is read between the two: it follows the database (a delete is forgotten once
        # committed), so it lies between them whatever commits meanwhile.
        before = count_vectors(model_key=key, space=space, owner=owner)
        snapshot = _snapshot(owner, space, key)
        indexed = snapshot.count if snapshot is not None else 0
        in_db = count_vectors(model_key=key, space=space, owner=owner)
        state = IndexState.objects.filter(owner=owner, space=space, model_key=key).first()
        if snapshot is None and in_db == 0:
            healths.append(IndexHealth(space, key, "ok", 0, 0, None, owner))  # nothing to index yet
        elif snapshot is None:
            healths.append(IndexHealth(space, key, _missing_or_building(owner, space, key), in_db, None,
                                       state.version if state else None, owner))
        else:
            verdict = "ok" if min(before, in_db) <= indexed <= max(before, in_db) else "count mismatch"
            if verdict == "ok" and _published_file_gone(state, snapshot):  # one stat per index: always asked
                verdict = "index file missing"  # answers from memory; a restart would have to rebuild
            healths.append(IndexHealth(space, key, verdict, in_db, indexed, snapshot.version, owner))
    missing, unreachable = [], False
    if check_files:
        try:
            missing = images_file_missing()
        except STORAGE_ERRORS as exc:  # which files are there is unknown: said as such, not as a 500
            logger.warning("integrity check: %s", storage_unreachable_message(exc))
            unreachable = True
    problems = ((["storage unreachable"] if unreachable else []) + [h.state for h in healths if h.state != "ok"]
                + (["stored file missing"] if missing else []))
    return IntegrityReport(state=problems[0] if problems else "ok", indexes=healths, missing_files=missing)


def _published_file_gone(state: IndexState | None, snapshot: IndexSnapshot) -> bool:
    """The loaded version's file is no longer in this host's index folder (deleted under a running process)."""
    return bool(state and state.file_name and state.version == snapshot.version
                and not (index_dir() / state.file_name).exists())


def _snapshot(owner: VectorOwner, space: str, key: str) -> IndexSnapshot | None:
    return manager.get(space=space, model_key=key, dim=model_dim(key), owner=owner, fresh=True)


def _missing_or_building(owner: VectorOwner, space: str, key: str) -> str:
    """For vectors this process has no index of: building index while a batch or a first build is
    in flight anywhere, or while this host builds its copy of another host's index; else missing.
    Asked after the index was found missing, so a build that has just ended shows on a second look."""
    if work_in_flight() or manager.copying(space=space, model_key=key, owner=owner):
        return "building index"
    return "index missing" if _snapshot(owner, space, key) is None else "ok"


def integrity_heal(report: IntegrityReport) -> list[str]:
    """Rebuild every index that is missing or whose count disagrees with the database (one being
    built already is left to its build)."""
    healed = []
    for health in report.indexes:
        if health.state in ("index missing", "count mismatch", "index file missing"):
            index_rebuild(space=health.space, model_key=health.model_key, dim=model_dim(health.model_key),
                          owner=health.owner)
            healed.append(index_name(health.owner, health.space, health.model_key))
    return healed


def indexes_rebuild_in_use() -> list[str]:
    """Every index of the models in use that has vectors, built again from the database: after a reset, whose
    first batch built each index (its file held that batch's vectors only, 16 of 146) and whose later batches
    were caught up in memory, so each process starting later read nearly every vector again, and an exact
    index built small stayed exact past IMAGINAITION_FLAT_INDEX_MAX."""
    rebuilt = []
    for owner, space, key in indexes_in_use():
        if count_vectors(model_key=key, space=space, owner=owner):
            index_rebuild(space=space, model_key=key, dim=model_dim(key), owner=owner)
            rebuilt.append(index_name(owner, space, key))
    return rebuilt


def missing_indexes_build() -> list[str]:
    """Build the indexes (image and region vectors, models in use) that have vectors but no index
    yet. One process at a time: another worker finishing a batch at the same moment skips it."""
    built = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [MISSING_INDEX_BUILD])
        if not cursor.fetchone()[0]:
            return []
        for owner, space, key in indexes_in_use():
            if IndexState.objects.filter(owner=owner, space=space, model_key=key).exclude(file_name="").exists():
                continue
            if not count_vectors(model_key=key, space=space, owner=owner):
                continue
            index_rebuild(space=space, model_key=key, dim=model_dim(key), owner=owner)
            built.append(index_name(owner, space, key))
    return built
