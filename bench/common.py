"""Shared benchmark plumbing: a separate database, synthetic data, machine facts, the results file.

Benchmarks never touch the user's database: they run on `imaginaition_bench` (created and migrated
here) on the same PostgreSQL server (embedded, or the one DATABASE_URL points at).
"""

from __future__ import annotations

import os
import platform
import re
import statistics
from datetime import date
from pathlib import Path

BENCH_DATABASE = "imaginaition_bench"
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def setup_django(database: str = BENCH_DATABASE) -> None:
    """Point Django at the benchmark database (creating and migrating it), then set it up."""
    os.environ["IMAGINAITION_DATABASE_NAME"] = database
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{database}"')
    call_command("migrate", verbosity=0)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} cores, {model}{memory}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def percentiles(samples_ms: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples_ms)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return q[49], q[94], q[98]


def table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, command: str, body: str) -> None:
    """Replace (or add) the section `name` of docs/BENCHMARKS.md with today's results."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n\nEach section is rewritten by its benchmark.\n"
    section = (f"<!-- {name}:start -->\n## {name}\n\n- date: {date.today().isoformat()}\n- machine: {machine()}\n"
               f"- command: `{command}`\n\n{body.strip()}\n<!-- {name}:end -->")
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
