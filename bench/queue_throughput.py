"""Task throughput of django-q2's ORM broker (the project's queue) with 1, 2 and 4 worker processes.

    python -m bench.queue_throughput [--n 1000] [--workers 1 2 4] [--clusters 2] [--step-seconds 15] [--photos 100] [--no-write]

Everything runs against real `manage.py qcluster` processes started here (Q_CLUSTER as configured in
imaginaition_site/settings.py, the worker count set through IMAGINAITION_WORKERS), on a database of
its own (`imaginaition_bench_queue`, on the same PostgreSQL server as the others) and its own folders
under var/; every cluster is stopped when its run ends, also on errors and Ctrl-C.

1. Trivial tasks: --n calls of `bench.queue_tasks.noop` enqueued with `async_task` from this process
   (one INSERT each, as a web process or `import_folder` does) into a running cluster; tasks/s from
   the first enqueue until the last result is saved and its queue row acknowledged (the ORM queue
   table is empty). Steady state: the result table already holds `save_limit` (1000) successes, as on
   an install that has run for a while, so each save also prunes one; and once on an empty result
   table (a fresh install) for comparison. Also --clusters qcluster processes on the same queue
   (each has its own monitor, the one process that saves results), and what one result save costs in
   django-q's own `save_task` with save_limit 1000, 100 and 0.
2. Offered load: the same trivial task enqueued at a fixed rate for --step-seconds, rising by half
   each step; the backlog (rows in the ORM queue: waiting, pulled or running, not yet acknowledged)
   is sampled twice a second. A step keeps up when the backlog does not grow over the second half of
   the step (slope < max(5 % of the rate, 0.5/s)) and ends below 2 s worth of tasks. The sweep stops after two
   steps that do not keep up. Latency (enqueue → task finished) is from the step's result rows.
3. Real batches: --photos real photos (bench.common.bench_photos) through `import_folder` and the
   project's own tasks (`retrieval.tasks.process_images`, one per image, each claiming a batch of up to
   IMAGINAITION_BATCH_SIZE pending images, embedding it and then segmenting it) with the offline profile, by
   bench.common.ingest_by_workers (model loading in each worker included); tasks/s and images/s.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import timedelta

from bench.common import (REPO_ROOT, bench_env, bench_photos, describe_photos, empty_bench_database,
                          ingest_by_workers, load_average, percentiles, photo_folder_subset, setup_django,
                          start_qcluster, stop_process_group, table, write_section)

DATABASE = "imaginaition_bench_queue"
BENCH_VAR = REPO_ROOT / "var" / DATABASE
NOOP = "bench.queue_tasks.noop"
SECTION = "Queue throughput (django-q2 ORM broker)"


def backlog() -> int:
    """Tasks of the default cluster not yet acknowledged: waiting, pulled by the pusher, running, or
    finished but not yet saved (the ORM broker deletes a row only after its result is saved)."""
    from django_q.conf import Conf
    from django_q.models import OrmQ

    return OrmQ.objects.filter(key=Conf.CLUSTER_NAME).count()


def queue_reset(*, prefill: int) -> None:
    """Empty the queue and result tables; then keep `prefill` old successes, as a running install does."""
    from django.db import connection
    from django.utils import timezone
    from django_q.models import Task

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE django_q_ormq, django_q_task")
    old = timezone.now() - timedelta(days=1)
    Task.objects.bulk_create([
        Task(id=uuid.uuid4().hex, name=f"prefill-{i}", func=NOOP, args=(0.0,), kwargs={}, result=0.0,
             group="bench-prefill", started=old, stopped=old + timedelta(microseconds=i), success=True)
        for i in range(prefill)])


def enqueue_noop(group: str) -> None:
    from django_q.tasks import async_task

    async_task(NOOP, time.time(), group=group)


def wait_until_drained(process, log, timeout: float) -> float:
    """Seconds until the backlog is empty (perf_counter at that moment)."""
    deadline = time.monotonic() + timeout
    while backlog():
        if process.poll() is not None:
            raise RuntimeError(f"qcluster exited:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the queue did not drain within {timeout:.0f} s ({backlog()} left)")
        time.sleep(0.05)
    return time.perf_counter()


def cluster(workers: int, name: str):
    log = BENCH_VAR / f"qcluster-{name}.log"
    return start_qcluster(bench_env(DATABASE, IMAGINAITION_WORKERS=str(workers)), log), log


def trivial_run(*, workers: int, n: int, prefill: int, clusters: int = 1) -> dict:
    """n no-op tasks into `clusters` running clusters (same queue): seconds to enqueue, and until every
    result is saved."""
    from django_q.models import Success

    queue_reset(prefill=prefill)
    group = f"trivial-{clusters}x{workers}-{prefill}"
    processes = []
    try:
        for index in range(clusters):
            processes.append(cluster(workers, f"{group}-{index}"))
        process, log = processes[0]
        started = time.perf_counter()
        for _ in range(n):
            enqueue_noop(group)
        enqueued = time.perf_counter() - started
        wall = wait_until_drained(process, log, timeout=600) - started
    finally:
        for process, _ in processes:
            stop_process_group(process)
    saved = Success.objects.filter(group=group).count()
    if saved != n:
        raise RuntimeError(f"{saved} of {n} results saved")
    return {"enqueue": enqueued, "wall": wall, "tasks_per_s": n / wall, "enqueue_per_s": n / enqueued}


def save_cost(*, save_limit: int, kept: int, saves: int = 200) -> float:
    """ms per result save by django-q's own monitor code (django_q.monitor.save_task), in this process,
    with `kept` successes in the table and Q_CLUSTER save_limit as given (patched here only)."""
    from django.utils import timezone
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.monitor import save_task

    queue_reset(prefill=kept)
    broker, configured = get_broker(), Conf.SAVE_LIMIT
    Conf.SAVE_LIMIT = save_limit
    try:
        started = time.perf_counter()
        for _ in range(saves):
            now = timezone.now()
            save_task({"id": uuid.uuid4().hex, "name": "save-cost", "func": NOOP, "args": (0.0,), "kwargs": {},
                       "started": now, "stopped": now, "result": 0.0, "success": True, "group": "save-cost"}, broker)
        return (time.perf_counter() - started) / saves * 1000
    finally:
        Conf.SAVE_LIMIT = configured


def slope(samples: list[tuple[float, int]]) -> float:
    """Least-squares growth of the backlog (tasks/s)."""
    if len(samples) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in samples)
    mean_b = statistics.fmean(b for _, b in samples)
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    return sum((t - mean_t) * (b - mean_b) for t, b in samples) / spread if spread else 0.0


def offered_step(*, rate: float, seconds: float, group: str) -> dict:
    """Enqueue at `rate` per second for `seconds` (catching up when behind); sample the backlog."""
    started = time.perf_counter()
    start_backlog = backlog()
    sent, samples, next_sample = 0, [], started
    while (now := time.perf_counter()) - started < seconds:
        due = int((now - started) * rate) + 1
        for _ in range(min(due - sent, 50)):  # bounded, so that sampling goes on when behind
            enqueue_noop(group)
            sent += 1
        if now >= next_sample:
            samples.append((now - started, backlog()))
            next_sample += 0.5
        wake = min(started + sent / rate, next_sample)
        time.sleep(max(0.0, wake - time.perf_counter()))
    elapsed = time.perf_counter() - started
    end_backlog = backlog()
    growth = slope([s for s in samples if s[0] >= seconds / 2])
    offered = sent / elapsed
    return {"rate": rate, "offered": offered, "completed": (sent - (end_backlog - start_backlog)) / elapsed,
            "end_backlog": end_backlog, "growth": growth, "sent": sent,
            # Little's law over the second half: mean time from enqueue to acknowledged
            "in_system": statistics.fmean(b for t, b in samples if t >= seconds / 2) / offered,
            # a floor of 0.5/s: at low rates one task more or less at the end is not growth
            "kept_up": growth < max(0.05 * offered, 0.5) and end_backlog < 2 * offered}


def step_latency(group: str) -> tuple[float, float, int]:
    """p50 and p95 ms from enqueue to task finished, over the step's result rows still kept."""
    from django_q.models import Success

    rows = list(Success.objects.filter(group=group).values_list("result", "stopped"))
    latencies = [(stopped.timestamp() - sent) * 1000 for sent, stopped in rows]
    if not latencies:
        return float("nan"), float("nan"), 0
    p50, p95, _ = percentiles(latencies)
    return p50, p95, len(latencies)


def sweep(*, workers: int, seconds: float, start: float, factor: float, limit: float) -> list[dict]:
    """Offered load rising by `factor` per step until two steps in a row do not keep up."""
    queue_reset(prefill=1000)
    process, log = cluster(workers, f"sweep-{workers}")
    steps: list[dict] = []
    try:
        rate, misses = start, 0
        while rate <= limit and misses < 2:
            group = f"sweep-{workers}-{rate:.0f}"
            step = offered_step(rate=rate, seconds=seconds, group=group)
            drained = time.perf_counter()
            step["drain"] = wait_until_drained(process, log, timeout=600) - drained
            step["p50"], step["p95"], step["timed"] = step_latency(group)
            print(f"  {workers} workers, {rate:.0f}/s: offered {step['offered']:.1f}/s, completed "
                  f"{step['completed']:.1f}/s, backlog {step['end_backlog']} (growth {step['growth']:.1f}/s), "
                  f"latency p50 {step['p50']:.0f} ms, p95 {step['p95']:.0f} ms", flush=True)
            steps.append(step)
            misses = 0 if step["kept_up"] else misses + 1
            rate = round(rate * factor)
    finally:
        stop_process_group(process)
    return steps


def real_batches(*, workers: int, folder, n: int) -> dict:
    """The project's processing tasks on n real photos (offline profile), by ingest_by_workers."""
    from django_q.models import Task

    empty_bench_database()
    env = bench_env(DATABASE, IMAGINAITION_MODEL_PROFILE="offline", IMAGINAITION_WORKERS=str(workers),
                    IMAGINAITION_IMPORT_ROOTS=str(folder.parent))
    result = ingest_by_workers(
        env=env, log=BENCH_VAR / f"qcluster-real-{workers}.log", n=n,
        enqueue=lambda: subprocess.run([sys.executable, "manage.py", "import_folder", str(folder)], cwd=REPO_ROOT,
                                       env=env, check=True, capture_output=True))
    tasks = list(Task.objects.filter(func__startswith="retrieval.tasks.").values_list("result", flat=True))
    working = [r for r in tasks if isinstance(r, dict) and r.get("processed")]
    return {**result, "tasks": len(tasks), "working": len(working),
            "per_working": statistics.fmean(len(r["processed"]) for r in working) if working else 0.0,
            "tasks_per_s": len(tasks) / result["wall"], "images_per_s": n / result["wall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="trivial tasks per run (at most save_limit, 1000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker process counts")
    parser.add_argument("--step-seconds", type=float, default=15, help="length of each offered-load step")
    parser.add_argument("--start-rate", type=float, default=5, help="first offered load (tasks/s)")
    parser.add_argument("--max-rate", type=float, default=2000, help="highest offered load tried")
    parser.add_argument("--clusters", type=int, default=2,
                        help="also run trivial tasks on this many clusters sharing the largest worker count (1: skip)")
    parser.add_argument("--photos", type=int, default=100, help="photos for the real-batch runs (0: skip)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/BENCHMARKS.md")
    args = parser.parse_args()
    if args.n > 1000:
        parser.error("--n at most 1000: django-q keeps 1000 successes (save_limit), a run must see all of its own")
    # SIGTERM ends the run like Ctrl-C: every cluster started here is stopped by its finally block.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("IMAGINAITION_LOG_LEVEL", "WARNING")
    setup_django(DATABASE)
    BENCH_VAR.mkdir(parents=True, exist_ok=True)
    from django.conf import settings

    from retrieval.encoders.devices import batch_size as device_batch_size

    started = time.perf_counter()
    load_before = load_average()
    cores = os.cpu_count() or 1
    q = settings.Q_CLUSTER

    trivial_rows = []
    for workers in args.workers:
        steady = trivial_run(workers=workers, n=args.n, prefill=1000)
        fresh = trivial_run(workers=workers, n=args.n, prefill=0)
        print(f"trivial, {workers} workers: {steady['tasks_per_s']:.1f} tasks/s steady, {fresh['tasks_per_s']:.1f} "
              f"fresh (enqueue {steady['enqueue_per_s']:.0f}/s), load {load_average()}", flush=True)
        trivial_rows.append([f"1 × {workers}", steady["tasks_per_s"], fresh["tasks_per_s"], steady["wall"],
                             steady["enqueue_per_s"]])
    if args.clusters > 1:  # more qcluster processes on the same queue: each has its own monitor
        each = max(1, max(args.workers) // args.clusters)
        steady = trivial_run(workers=each, n=args.n, prefill=1000, clusters=args.clusters)
        fresh = trivial_run(workers=each, n=args.n, prefill=0, clusters=args.clusters)
        print(f"trivial, {args.clusters} clusters x {each} workers: {steady['tasks_per_s']:.1f} tasks/s steady, "
              f"{fresh['tasks_per_s']:.1f} fresh", flush=True)
        trivial_rows.append([f"{args.clusters} × {each}", steady["tasks_per_s"], fresh["tasks_per_s"], steady["wall"],
                             steady["enqueue_per_s"]])
    save_rows = [[f"{limit} ({kept} successes kept)" if limit else "0 (no pruning; 1000 kept)",
                  save_cost(save_limit=limit, kept=kept)] for limit, kept in ((1000, 1000), (100, 100), (0, 1000))]
    print("save cost ms: " + ", ".join(f"{row[0]}: {row[1]:.2f}" for row in save_rows), flush=True)

    sweep_rows, knees = [], []
    for workers in args.workers:
        steps = sweep(workers=workers, seconds=args.step_seconds, start=args.start_rate, factor=1.5,
                      limit=args.max_rate)
        for step in steps:
            sweep_rows.append([workers, f"{step['rate']:.0f}", step["offered"], step["completed"], step["end_backlog"],
                               step["growth"], step["drain"], f"{step['in_system'] * 1000:.0f}", f"{step['p50']:.0f}",
                               f"{step['p95']:.0f}", "yes" if step["kept_up"] else "**no**"])
        kept = [s for s in steps if s["kept_up"]]
        missed = [s for s in steps if not s["kept_up"] and (not kept or s["rate"] > kept[-1]["rate"])]
        knees.append(f"{workers} worker process{'es' if workers > 1 else ''}: kept up with "
                     f"{max(s['offered'] for s in kept):.0f} tasks/s" if kept else f"{workers} workers: kept up with none")
        if missed:
            knees[-1] += (f", not with {missed[0]['offered']:.0f} tasks/s (completed "
                          f"{max(s['completed'] for s in missed):.0f}/s at most while overloaded)")

    real_rows, real_notes = [], []
    if args.photos:
        photos, facts = bench_photos(max(args.photos, 200))
        folder = photo_folder_subset(photos, facts, args.photos, BENCH_VAR / "import")
        for workers in args.workers:
            result = real_batches(workers=workers, folder=folder, n=args.photos)
            print(f"real batches, {workers} workers: {result['wall']:.1f} s, {result['tasks_per_s']:.2f} tasks/s, "
                  f"{result['images_per_s']:.2f} images/s ({result['failed']} failed), load {load_average()}",
                  flush=True)
            real_rows.append([workers, result["wall"], result["tasks"], result["tasks_per_s"], result["images_per_s"],
                              result["images_per_s"] / workers, f"{result['working']} ({result['per_working']:.1f})",
                              result["failed"]])
            real_notes.append(f"{workers}: enqueue (import_folder) {result['enqueue']:.1f} s, every image embedded "
                              f"after {result['embedded']:.1f} s")

    body = "\n\n".join(filter(None, [
        f"Real `manage.py qcluster` processes (Q_CLUSTER of the settings: ORM broker on the same PostgreSQL, "
        f"bulk {q['bulk']}, poll {q['poll']} s, queue_limit {q['queue_limit']}, save_limit {q['save_limit']}; "
        f"workers = IMAGINAITION_WORKERS), {cores} cores shared by the cluster, PostgreSQL and the enqueuing "
        f"process. Trivial task: `{NOOP}` (returns its argument).",
        f"**Trivial tasks**, {args.n} per run, enqueued one `async_task` at a time from this process into a "
        f"running cluster; from the first enqueue until the last result is saved and acknowledged. Steady: "
        f"the result table already holds {q['save_limit']} successes (each save then prunes the oldest, as "
        f"on an install that has run a while); fresh: an empty result table.",
        table(["clusters × worker processes", "tasks/s (steady)", "tasks/s (fresh)", "wall s (steady)",
               "enqueue rate while it ran (tasks/s)"], trivial_rows),
        "What one result save costs in django-q's monitor (its `save_task`, timed in the benchmark's process, "
        "200 saves): with save_limit > 0 every save first reads and row-locks all kept successes "
        "(`select_for_update`, unpickling each row), then deletes the oldest; one monitor process per "
        "cluster saves every result.",
        table(["save_limit", "ms per save"], save_rows),
        f"**Offered load**: trivial tasks enqueued at a fixed rate for {args.step_seconds:.0f} s per step (rising "
        f"by half), backlog = rows in the ORM queue not yet acknowledged, sampled every 0.5 s; kept up: the "
        f"backlog did not grow over the second half of the step (< max(5 % of the rate, 0.5/s)) and ended under 2 s worth "
        f"of tasks. Time in queue: enqueue → acknowledged (result saved), mean by Little's law (mean backlog over "
        f"the second half / offered rate); finished: enqueue → the worker finished the task (p50/p95 over the "
        f"step's last ≤ 1000 results kept), before its result waits for the monitor.",
        table(["workers", "target /s", "offered /s", "completed /s", "backlog at end", "backlog growth /s",
               "drain after s", "time in queue ms (mean)", "finished p50 ms", "finished p95 ms", "kept up"],
              sweep_rows),
        "Where it stops keeping up: " + "; ".join(knees) + ".",
        (f"**Real batches**: offline profile, {args.photos} photos ({describe_photos(facts, args.photos)}) through "
         f"`import_folder` and the project's tasks (`retrieval.tasks.process_images`, one per image; "
         f"a task claims up to {device_batch_size()} pending images, embeds and then segments them, so most find "
         f"their image already done and return at once), by `bench.common.ingest_by_workers`: from the start "
         f"of the import until every image has embeddings and masks, each worker process loading the models "
         f"on its first task (included). Tasks: results saved by then (the last no-op tasks may still be queued).")
        if real_rows else "",
        table(["worker processes", "wall s", "tasks", "tasks/s", "images/s", "images/s per worker process",
               "tasks that processed images (images each)", "failed"], real_rows)
        if real_rows else "",
        ("Enqueue and first searchable moment per worker count: " + "; ".join(real_notes) + ".") if real_notes else "",
        f"Load average at the start {load_before}, at the end {load_average()}; whole benchmark "
        f"{(time.perf_counter() - started) / 60:.1f} min.",
    ]))
    print(body)
    if not args.no_write:
        write_section(SECTION, "python -m bench.queue_throughput", body)


if __name__ == "__main__":
    main()
