"""The indexes of one process: loaded lazily from their files, caught up with Postgres on use
(new embeddings added, tombstoned images dropped, at most every IMAGINAITION_INDEX_SYNC_SECONDS),
and swapped atomically when a newer version is published (by this process or another).

Image indexes are labelled by image id; region indexes by mask id, with each mask's image kept
beside it (a deleted image drops its regions; a search can leave out the query image's regions)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

import faiss
import numpy as np
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from retrieval.index_build import IVF_KINDS, PRODUCT_QUANTIZED, search_index
from retrieval.metrics import normalize, similarity_from_distance
from retrieval.models import DeletedImage, DeletedMask, Embedding, IndexState, RegionEmbedding
from retrieval.rerank_vectors import RerankVectors, find_in_sorted
from retrieval.spaces import VectorOwner
from retrieval.vector_io import stream_vectors


@dataclass(frozen=True)
class IndexFile:
    """An index as read from this host's index folder."""

    kind: str
    synced_at: datetime
    index: faiss.IndexIDMap2
    labels: np.ndarray  # the index's ids, in its order
    rerank: int
    rerank_vectors: RerankVectors | None


# What reading a damaged index file raises: FAISS's RuntimeError (a truncated file), json's ValueError, a
# description missing a field or of another shape (KeyError, TypeError, AttributeError, ValueError), a re-rank
# file of the wrong size or gone (ValueError, OSError).
UNREADABLE_FILE = (RuntimeError, ValueError, KeyError, TypeError, AttributeError, OSError)


class DamagedIndexPart(ValueError):
    """Which of an index's files (its description, its re-rank vectors) could not be read, and why: the log
    named the .faiss file for a garbled .json."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.path, self.cause = path, cause


logger = logging.getLogger(__name__)

# Rows committed slightly out of created_at order are still caught: re-scan this far back. The
# pipeline's write transactions last milliseconds; a longer slack would re-read every row of a fresh
# bulk load on each catch-up.
SYNC_SLACK = timedelta(seconds=10)
COPY_RETRY_SECONDS = 60.0  # after a failed build of this host's copy of an index


def region_owners(*, model_key: str, space: str, mask_ids: list[int] | None = None) -> dict[int, int]:
    """mask id -> image id of the region vectors of one model and space (or of these masks)."""
    rows = RegionEmbedding.objects.filter(model_key=model_key, space=space)
    if mask_ids is not None:
        rows = rows.filter(mask_id__in=mask_ids)
    return dict(rows.values_list("mask_id", "image_id"))


def index_dir() -> Path:
    """The folder of this process's index files (created on first use)."""
    path = Path(settings.IMAGINAITION_INDEX_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_now() -> datetime:
    """The database's clock: catch-ups compare it with rows' created_at, never the web host's clock."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def database_identity() -> str:
    """Which database this is: its server's system identifier and its OID. A restore goes into a new, empty
    database (docs/DEPLOYMENT.md: a new OID, or a new server), so an index file names another database when
    it was built before a restore, which would otherwise match the restored version stamp: the new images,
    numbered from the dump's ids again, were answered with the vectors of the old pictures that had them."""
    with connection.cursor() as cursor:
        try:
            with transaction.atomic():  # pg_control_system() may be refused to the service's role: the OID alone
                cursor.execute("SELECT system_identifier FROM pg_control_system()")
                system = str(cursor.fetchone()[0])
        except DatabaseError:
            system = "?"
        cursor.execute("SELECT oid FROM pg_database WHERE datname = current_database()")
        return f"{system}/{cursor.fetchone()[0]}"


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """One query is too small to split: OpenMP's thread team only adds waiting (measured: p95 of a
    single IVF query 0.06 ms alone vs 12–15 ms with 2 threads on a busy machine). The setting is per
    calling thread, so a rebuild on another thread keeps all cores."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def members_of(labels: np.ndarray, members: Collection[int]) -> np.ndarray:
    """label in members for each of an int64 array, as a boolean array (one vectorized test)."""
    return np.isin(labels, np.fromiter(members, dtype=np.int64, count=len(members)))


class IdSet:
    """The labels an index holds: a sorted int64 array of those it was built with (8 bytes a label,
    where a Python set takes ~70 bytes: 70 MB per million vectors in every web process) and small
    sets of the labels added and removed since."""

    def __init__(self, labels: Iterable[int] | np.ndarray = ()) -> None:
        array = labels if isinstance(labels, np.ndarray) else np.fromiter(labels, dtype=np.int64)
        self._base = np.unique(array.astype(np.int64, copy=False))  # sorted, distinct
        self._added: set[int] = set()
        self._removed: set[int] = set()

    def _in_base(self, label: int) -> bool:
        at = int(np.searchsorted(self._base, label))
        return at < len(self._base) and int(self._base[at]) == label

    def __contains__(self, label: object) -> bool:
        if not isinstance(label, int | np.integer):
            return False
        label = int(label)
        return label in self._added or (label not in self._removed and self._in_base(label))

    def __len__(self) -> int:
        return len(self._base) - len(self._removed) + len(self._added)

    def __iter__(self) -> Iterator[int]:
        yield from (label for label in self._base.tolist() if label not in self._removed)
        yield from self._added

    def add(self, labels: Iterable[int]) -> None:
        for label in labels:
            if label in self._removed:
                self._removed.discard(label)
            elif not self._in_base(label):
                self._added.add(label)

    def discard(self, labels: Iterable[int]) -> None:
        for label in labels:
            if label in self._added:
                self._added.discard(label)
            elif self._in_base(label):
                self._removed.add(label)

    def present(self, labels: Iterable[int]) -> set[int]:
        return {label for label in labels if label in self}

    def holds(self, labels: np.ndarray) -> np.ndarray:
        """label in self for each of an int64 array, as a boolean array (one search of the sorted base)."""
        _, held = find_in_sorted(self._base, labels)
        if self._removed:
            held &= ~members_of(labels, self._removed)
        if self._added:
            held |= members_of(labels, self._added)
        return held

    def missing_from(self, keep: Collection[int]) -> set[int]:
        """The labels held that `keep` lacks."""
        kept = np.fromiter(keep, dtype=np.int64, count=len(keep))
        stale = self._base[~np.isin(self._base, kept)].tolist()
        return {label for label in stale if label not in self._removed} | (self._added - set(keep))


@dataclass
class IndexSnapshot:
    space: str
    model_key: str
    dim: int
    index: faiss.IndexIDMap2  # FAISS labels are image ids (mask ids for region vectors)
    kind: str
    version: int
    synced_at: datetime  # database time up to which embeddings and tombstones are applied
    ids: IdSet = field(default_factory=IdSet)
    deleted: set[int] = field(default_factory=set)  # approximate kinds: removed ids are filtered at query time
    checked_at: float = 0.0
    lock: threading.RLock = field(default_factory=threading.RLock)
    owner: VectorOwner = "image"
    # The IndexState row it was published under: a reset deletes the rows and the next build starts
    # again at version 1, so the version alone cannot tell an old index from the new one.
    state_id: int = 0
    image_of: dict[int, int] = field(default_factory=dict)  # regions: mask id -> image id
    regions_of: dict[int, set[int]] = field(default_factory=dict)  # regions: image id -> mask ids
    rerank: int = 1  # candidates re-ranked, × k: compressed IVF in the content space, ivf-pq (index_build)
    rerank_vectors: RerankVectors | None = None  # ivf-pq: the vectors it re-ranks with (a mapped file)

    def set_owners(self, image_of: dict[int, int]) -> None:
        with self.lock:
            for mask_id, image_id in image_of.items():
                self.image_of[mask_id] = image_id
                self.regions_of.setdefault(image_id, set()).add(mask_id)

    def attach_regions(self) -> None:
        """A region index: each mask's image, from Postgres. Labels with no row left (their image
        deleted, or re-segmented, since the build) are dropped now: no tombstone can reach them."""
        owners = region_owners(model_key=self.model_key, space=self.space)
        self.set_owners(owners)
        self.remove(self.ids.missing_from(owners.keys()))

    @property
    def count(self) -> int:
        return len(self.ids) - len(self.deleted)

    def search(self, query: np.ndarray, k: int, *, exclude_image_id: int | None = None) -> list[tuple[int, float]]:
        """[(label, similarity)] nearest first: image ids, or mask ids for region vectors."""
        with self.lock:
            if self.count == 0 or k <= 0:
                return []
            excluded = self._labels_of(exclude_image_id)
            wanted = min(len(self.ids), k + len(self.deleted) + len(excluded))
            if self.kind == "hnsw":
                hnsw = cast(faiss.IndexHNSW, faiss.downcast_index(self.index.index))  # kind says which class
                hnsw.hnsw.efSearch = max(settings.IMAGINAITION_HNSW_EF_SEARCH, wanted)
            with _single_threaded():
                distances, labels = search_index(self.index, space=self.space, k=wanted, rerank=self.rerank,
                                                 stored=self.rerank_vectors,
                                                 queries=normalize(self.space, query.reshape(1, -1)))
            # One numpy pass for the similarities: per label, a region search's 200 calls were ~10 % of it.
            similarities = similarity_from_distance(self.space, distances[0]).tolist()
            found = []
            for label, similarity in zip(labels[0].tolist(), similarities, strict=True):
                if label < 0 or label in self.deleted or label in excluded:
                    continue
                found.append((label, similarity))
                if len(found) == k:
                    break
            return found

    def _labels_of(self, image_id: int | None) -> frozenset[int]:
        """The labels of an image in this index: itself, or its regions' mask ids."""
        if image_id is None:
            return frozenset()
        return frozenset((image_id,) if self.owner == "image" else self.regions_of.get(image_id, ()))

    def vectors_for(self, image_ids: list[int]) -> dict[int, np.ndarray]:
        """The stored (normalized) vectors of these images, from memory: no database round trip.
        A compressed kind gives its decoded codes, the vectors its own search measured: similarities
        computed from them are off the float32 ones by the quantization error, as the ones it returns
        (measured by bench.search)."""
        present, vectors = self.vectors_matrix(image_ids)
        return dict(zip(present, vectors, strict=True))

    def vectors_matrix(self, labels: list[int]) -> tuple[list[int], np.ndarray]:
        """(the labels present, their stored normalized vectors as one (n, dim) matrix; decoded codes
        for a scalar-quantized kind, the 16-bit re-rank vectors for ivf-pq)."""
        with self.lock:
            asked = np.asarray(labels, dtype=np.int64)
            held = self.ids.holds(asked)
            if self.deleted:
                held &= ~members_of(asked, self.deleted)
            wanted = asked[held]
            present = wanted.tolist()
            if not present:
                return [], np.zeros((0, self.dim), dtype=np.float32)
            if self.rerank_vectors is not None:
                return present, self.rerank_vectors.get(wanted)
            return present, self.index.reconstruct_batch(wanted)  # one call

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> int:
        with self.lock:
            fresh = [i for i, image_id in enumerate(ids.tolist()) if image_id not in self.ids]
            if not fresh:
                return 0
            normalized = normalize(self.space, vectors[fresh])
            self.index.add_with_ids(normalized, ids[fresh].astype(np.int64))
            if self.rerank_vectors is not None:
                self.rerank_vectors.add(ids[fresh], normalized)
            self.ids.add(ids[fresh].tolist())
            return len(fresh)

    def remove_images(self, image_ids: set[int]) -> int:
        """Drop deleted images (their regions, in a region index)."""
        if self.owner == "image":
            return self.remove(image_ids)
        with self.lock:
            labels = set().union(*(self.regions_of.pop(image_id, set()) for image_id in image_ids))
            for label in labels:
                self.image_of.pop(label, None)
            return self.remove(labels)

    def remove_regions(self, mask_ids: set[int]) -> int:
        """Drop replaced masks' region vectors (of a region index: the caller asks only those)."""
        with self.lock:
            for mask_id in mask_ids:
                image_id = self.image_of.pop(mask_id, None)
                if image_id is not None:
                    self.regions_of.get(image_id, set()).discard(mask_id)
            return self.remove(mask_ids)

    def remove(self, labels: set[int]) -> int:
        with self.lock:
            present = self.ids.present(labels) - self.deleted
            if not present:
                return 0
            if self.kind == "flat":
                # faiss's Python wrapper takes an id array too; its stub lists only IDSelector.
                self.index.remove_ids(np.fromiter(present, dtype=np.int64))  # type: ignore[arg-type]
                self.ids.discard(present)
            else:
                self.deleted |= present
            return len(present)


class IndexManager:
    """The indexes of this process: loaded lazily, caught up on use, swapped atomically."""

    def __init__(self) -> None:
        self._snapshots: dict[tuple[str, str, str], IndexSnapshot] = {}
        self._lock = threading.Lock()
        # Builds this host's copy of a version published by another host (retrieval.indexes.index_copy_build,
        # set in AppConfig.ready: that module imports this one).
        self.copy_builder: Callable[[IndexState, int], IndexSnapshot] | None = None
        self._copying: set[tuple[str, str, str]] = set()
        self._copy_failed_at: dict[tuple[str, str, str], float] = {}

    def clear(self) -> None:
        with self._lock:
            self._snapshots.clear()

    def loaded(self, *, space: str, model_key: str, owner: VectorOwner = "image") -> IndexSnapshot | None:
        return self._snapshots.get((owner, space, model_key))

    def copying(self, *, space: str, model_key: str, owner: VectorOwner = "image") -> bool:
        """Whether this process is building its host's copy of another host's index."""
        return (owner, space, model_key) in self._copying

    def forget_images(self, image_ids: set[int]) -> None:
        for snapshot in list(self._snapshots.values()):
            snapshot.remove_images(image_ids)

    def forget_regions(self, mask_ids: set[int]) -> None:
        """Drop replaced masks' region vectors before this process's next catch-up reads their tombstones."""
        for snapshot in list(self._snapshots.values()):
            if snapshot.owner == "region":
                snapshot.remove_regions(mask_ids)

    def get(self, *, space: str, model_key: str, dim: int, owner: VectorOwner = "image",
            fresh: bool = False) -> IndexSnapshot | None:
        """The current index, or None when there is none yet (callers fall back to pgvector); caught up with
        the database at most IMAGINAITION_INDEX_SYNC_SECONDS ago, or now (fresh)."""
        key = (owner, space, model_key)
        snapshot = self._snapshots.get(key)
        interval = 0 if fresh else settings.IMAGINAITION_INDEX_SYNC_SECONDS
        if snapshot is not None and time.monotonic() - snapshot.checked_at < interval:
            return snapshot
        with self._lock:
            snapshot = self._snapshots.get(key)
            if snapshot is not None and time.monotonic() - snapshot.checked_at < interval:
                return snapshot
            state = IndexState.objects.filter(owner=owner, space=space, model_key=model_key).first()
            if state is None or not state.file_name:
                self._snapshots.pop(key, None)  # dropped (a reset elsewhere): never answer from it again
                return None
            if snapshot is None or snapshot.version != state.version or snapshot.state_id != state.pk:
                loaded = self._load_file(state, dim)
                if loaded is None and not (index_dir() / state.file_name).exists():
                    self._copy_in_background(key, state, dim)  # built on another host: make ours
                if loaded is None and snapshot is None:
                    return None  # callers fall back to pgvector meanwhile
                if loaded is not None:
                    snapshot = loaded
                    self._snapshots[key] = snapshot
                # else: keep answering with the version we have, kept current below, until ours is built
            assert snapshot is not None
            self._catch_up(snapshot)
            snapshot.checked_at = time.monotonic()
            return snapshot

    def _load_file(self, state: IndexState, dim: int) -> IndexSnapshot | None:
        path = index_dir() / state.file_name
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            return None  # built on another host (get() builds this host's copy)
        try:
            read = self._read_file(state, dim, path, meta_path)
        except UNREADABLE_FILE as exc:
            # A cache of what Postgres holds: a damaged one goes, and get() builds this host's copy again
            # (left in place, it failed every search and status request until a rebuild by hand).
            damaged_part, cause = (exc.path, exc.cause) if isinstance(exc, DamagedIndexPart) else (path, exc)
            logger.warning("index file %s cannot be read (%s: %s): removed; this host builds its copy again from "
                           "the database", damaged_part, type(cause).__name__, cause)
            for damaged in (path, meta_path, path.with_suffix(".rerank")):
                with contextlib.suppress(OSError):
                    damaged.unlink(missing_ok=True)
            return None
        if read is None:
            return None
        owner = cast(VectorOwner, state.owner)
        snapshot = IndexSnapshot(space=state.space, model_key=state.model_key, dim=dim, index=read.index,
                                 kind=read.kind, version=state.version, synced_at=read.synced_at,
                                 ids=IdSet(read.labels), owner=owner, state_id=state.pk,
                                 rerank=read.rerank, rerank_vectors=read.rerank_vectors)
        if owner == "region":
            snapshot.attach_regions()
        return snapshot

    @staticmethod
    def _read_file(state: IndexState, dim: int, path: Path, meta_path: Path) -> IndexFile | None:
        """What `path` and the files beside it hold; None for another version's file."""
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError(f"its description is not a JSON object: {type(meta).__name__}")
        except (OSError, ValueError) as exc:
            raise DamagedIndexPart(meta_path, exc) from exc
        if meta.get("version") != state.version or meta.get("model_key") != state.model_key:
            logger.warning("index file %s does not match its database record", path)
            return None
        built_from = meta.get("database")  # None in files written before it was recorded: trusted
        if built_from is not None and built_from != database_identity():
            raise DamagedIndexPart(meta_path, ValueError(
                "it was built from another database (restored since, or another server's): not this one's vectors"))
        index = cast(faiss.IndexIDMap2, faiss.read_index(str(path)))  # as written by index_rebuild
        if meta["kind"] in IVF_KINDS:
            faiss.extract_index_ivf(index.index).nprobe = meta["params"]["nprobe"]
        labels = faiss.vector_to_array(index.id_map)
        rerank_vectors = None
        if meta["kind"] == PRODUCT_QUANTIZED:  # written before the index: its rows are the index's, in order
            try:
                rerank_vectors = RerankVectors(path.with_suffix(".rerank"), labels, dim)
            except UNREADABLE_FILE as exc:
                raise DamagedIndexPart(path.with_suffix(".rerank"), exc) from exc
        return IndexFile(kind=meta["kind"], synced_at=datetime.fromisoformat(meta["synced_at"]), index=index,
                         labels=labels, rerank=meta["params"].get("rerank", 1), rerank_vectors=rerank_vectors)

    def _catch_up(self, snapshot: IndexSnapshot) -> None:
        now = db_now()
        since = snapshot.synced_at - SYNC_SLACK
        # Ids first: the slack window is re-read every second, and right after a bulk load it holds
        # thousands of rows the index already has; only the vectors it lacks are read.
        rows = Embedding if snapshot.owner == "image" else RegionEmbedding
        recent = rows.objects.filter(model_key=snapshot.model_key, space=snapshot.space, created_at__gte=since)
        label = "image_id" if snapshot.owner == "image" else "mask_id"
        lacking = [owner_id for owner_id in recent.values_list(label, flat=True) if owner_id not in snapshot.ids]
        if lacking:
            if snapshot.owner == "region":
                snapshot.set_owners(region_owners(model_key=snapshot.model_key, space=snapshot.space, mask_ids=lacking))
            for ids, vectors in stream_vectors(model_key=snapshot.model_key, space=snapshot.space, dim=snapshot.dim,
                                               where_sql="AND owner_id = ANY(%s)", where_params=(lacking,),
                                               owner=snapshot.owner):
                added = snapshot.add(ids, vectors)
                if added:
                    logger.info("%sindex %s/%s: added %d new vector%s", "region " if snapshot.owner == "region" else "",
                                snapshot.space, snapshot.model_key, added, "" if added == 1 else "s")
        gone = set(DeletedImage.objects.filter(deleted_at__gte=since).values_list("image_id", flat=True))
        snapshot.remove_images(gone)
        if snapshot.owner == "region":
            snapshot.remove_regions(set(DeletedMask.objects.filter(deleted_at__gte=since)
                                        .values_list("mask_id", flat=True)))
        snapshot.synced_at = now

    def _copy_in_background(self, key: tuple[str, str, str], state: IndexState, dim: int) -> None:
        """Build this host's copy of `state`'s version from Postgres on a thread (called with the lock
        held); queries go on meanwhile, and the copy is installed when it is ready."""
        builder = self.copy_builder
        if builder is None or key in self._copying:
            return
        if time.monotonic() - self._copy_failed_at.get(key, -COPY_RETRY_SECONDS) < COPY_RETRY_SECONDS:
            return  # it failed a moment ago (logged): pgvector or the older version answers meanwhile
        self._copying.add(key)
        logger.info("index %s v%d is not in this host's index folder (built on another host, or its file was "
                    "removed): building this host's copy from the database", state.file_name, state.version)

        def run() -> None:
            try:
                copy = builder(state, dim)
                with self._lock:
                    current = self._snapshots.get(key)
                    if current is None or current.state_id != copy.state_id or current.version < copy.version:
                        copy.checked_at = 0.0  # the next query catches it up and checks for a newer version
                        self._snapshots[key] = copy
            except Exception:  # noqa: BLE001 - logged; tried again after COPY_RETRY_SECONDS
                logger.exception("building this host's copy of index %s failed", state.file_name)
                self._copy_failed_at[key] = time.monotonic()
            finally:
                with self._lock:
                    self._copying.discard(key)
                connection.close()  # this thread's own database connection

        threading.Thread(target=run, name=f"index-copy-{state.file_name}", daemon=True).start()

    def install(self, snapshot: IndexSnapshot) -> None:
        with self._lock:
            snapshot.checked_at = time.monotonic()
            self._snapshots[(snapshot.owner, snapshot.space, snapshot.model_key)] = snapshot


manager = IndexManager()
