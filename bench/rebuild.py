"""FAISS rebuild from PostgreSQL vs a bare binary COPY of the same vector columns (same run).

    python -m bench.rebuild                # N = 100k (about 2 minutes)
    python -m bench.rebuild --n 1000000    # 6-15 minutes (the load, then 3 rebuilds of each space)

Goal: rebuilding the indexes of N images takes ≤ 2× a bare `COPY ... TO STDOUT (FORMAT BINARY)` of
the same vector columns. The rebuild (`retrieval.indexes.index_rebuild`) is the real one: count,
training sample, the same binary COPY streamed to a builder thread that parses, normalizes, adds
to the index and gathers the exact neighbours of the calibration queries, then nprobe calibration,
the index file written and the new version published. Bare COPY and rebuild alternate, best of
--repeat each, so both see the same machine state.
"""

from __future__ import annotations

import argparse
import time

from bench.common import section_title, setup_django, table, write_section
from bench.search import load


def bare_copy_seconds(model_key: str, space: str, dim: int) -> float:
    from django.db import connection

    connection.ensure_connection()
    started = time.perf_counter()
    with connection.connection.cursor() as cursor:
        query = (f"COPY (SELECT image_id, vector::vector({dim}) FROM gallery_embedding WHERE model_key = %s "
                 "AND space = %s ORDER BY image_id) TO STDOUT (FORMAT BINARY)")
        with cursor.copy(query, (model_key, space)) as copy:
            for _ in copy:
                pass
    return time.perf_counter() - started


STAGES = ["sample", "train", "stream and build", "builder busy", "waiting for builder", "calibrate",
          "write and publish"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    setup_django()
    from retrieval.encoders.registry import MODELS, active_models
    from retrieval.index_snapshots import manager
    from retrieval.indexes import index_rebuild

    models = active_models()
    headers = ["N", "space", "dim", "index", "bare COPY s", "rebuild s", "ratio (goal ≤ 2)", "index parameters"]
    rows, stage_rows = [], []
    for n in args.n:
        load(n, MODELS[models.semantic].dim, models.semantic, models.content)
        total_copy = total_rebuild = 0.0
        for space, key in (("semantic", models.semantic), ("content", models.content)):
            dim = MODELS[key].dim
            copies, rebuilds = [], []
            for _ in range(args.repeat):
                copies.append(bare_copy_seconds(key, space, dim))
                manager.clear()
                rebuilds.append(index_rebuild(space=space, model_key=key, dim=dim))
            copy_s = min(copies)
            best = min(rebuilds, key=lambda report: report.seconds)
            total_copy += copy_s
            total_rebuild += best.seconds
            rows.append([f"{n:,}", space, dim, best.kind, copy_s, best.seconds, best.seconds / copy_s,
                         ", ".join(f"{name} {value}" for name, value in best.params.items())])
            stage_rows.append([f"{n:,}", space, *(best.stages.get(name, 0.0) for name in STAGES)])
        rows.append([f"{n:,}", "**both**", "", "", total_copy, total_rebuild, total_rebuild / total_copy, ""])
        print(table(headers, rows), flush=True)
    body = (table(headers, rows)
            + "\n\nWhere the best rebuild's time went (seconds; the builder thread works while the COPY streams, "
              "so *stream and build* is about max(COPY, builder busy)):\n\n"
            + table(["N", "space", *STAGES], stage_rows)
            + f"\n\nBest of {args.repeat} for each (bare COPY and rebuild alternate). The rebuild includes the "
              "training sample, parsing, normalizing, building the index, the nprobe calibration (IVF), writing "
              "its file and publishing the version. `recall` is the calibration's measured recall@50 on stored "
              "vectors against exact search.")
    print(body)
    if not args.no_write:
        command = "python -m bench.rebuild --n " + " ".join(str(n) for n in args.n)
        write_section(section_title("Index rebuild", args.n, [100_000]), command, body)


if __name__ == "__main__":
    main()
