"""PostgreSQL advisory locks that claim work and show, to every process on every host, which work is
in flight: a batch's claims on its images (retrieval.pipeline) and the first build of the indexes
that are missing (retrieval.integrity). A process that dies drops its connection, and its locks go
with it, so a lock held always means live work."""

from __future__ import annotations

from django.db import connection

CLAIM_NAMESPACES = {"status": 1, "masks_status": 2}  # per kind of work: embedding, segmentation
MISSING_INDEX_BUILD = 0x1D5_0001  # one first build of the missing indexes at a time


def claim_key(status_field: str, image_id: int) -> int:
    return (CLAIM_NAMESPACES[status_field] << 48) | image_id


def work_in_flight() -> bool:
    """Whether some session of this database holds a batch's claims or builds the missing indexes:
    vectors that have no index yet are then about to get one (a batch builds them after its write,
    before it lets go of its images)."""
    # A bigint key shows as its high half in classid, its low half in objid, objsubid 1 (pg_locks).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND ((classid::bigint >> 16) = ANY(%s::bigint[])"
            "      OR (classid::bigint = %s AND objid::bigint = %s)))",
            [list(CLAIM_NAMESPACES.values()), MISSING_INDEX_BUILD >> 32, MISSING_INDEX_BUILD & 0xFFFF_FFFF])
        return bool(cursor.fetchone()[0])
