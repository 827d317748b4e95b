"""The database benchmarks' documented commands run at a tiny size on the current schema (bench.search
and bench.rebuild wrote image rows by hand, and stopped at once after a migration added a column)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("command, expected", [
    (["bench.search", "--n", "300", "--queries", "5", "--regions", "300", "--no-write"], "| 300 | FAISS semantic |"),
    (["bench.rebuild", "--n", "300", "--repeat", "1", "--no-write"], "| 300 | semantic |"),
])
def test_a_database_benchmark_runs_and_prints_its_table(command, expected):
    done = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout, done.stdout[-3000:]


@pytest.mark.skipif(sys.platform == "darwin", reason="Apple's MPS may be there")
def test_the_accelerator_benchmark_without_its_device_says_so_in_one_line():
    """It listed the photos, then ended in a traceback from torch."""
    done = subprocess.run([sys.executable, "-m", "bench.ingest_device", "--device", "mps", "--no-write"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("--device mps: this machine has no such device for PyTorch; run it where one is "
                                   "(bench/gpu_check.sh), or measure the CPU with --device cpu")
