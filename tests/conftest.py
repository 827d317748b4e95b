import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.common import stop_process_group  # SIGTERM, then SIGKILL to what is left of the group

# Tests never touch the network: model hubs are unreachable here and on CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def media_root(settings, tmp_path):
    """Each test stores files in its own folder (nothing leaks into var/media)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user("staff", password="s3cret-Pass!", is_staff=True,
                                                 is_superuser=True)


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="s3cret-Pass!")


class Worker:
    """A real `manage.py qcluster` process on the test database."""

    def __init__(self, env_overrides: dict[str, str]):
        from django.db import connection

        from django.conf import settings

        # The test's index folder unless told otherwise: worker and test process on one "host".
        env = {**os.environ, "IMAGINAITION_DATABASE_NAME": connection.settings_dict["NAME"],
               "IMAGINAITION_INDEX_DIR": str(settings.IMAGINAITION_INDEX_DIR), "PYTHONUNBUFFERED": "1",
               **env_overrides}
        self.log_path = Path(env_overrides.get("_LOG", "/tmp")) / f"qcluster-{os.getpid()}-{time.time_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=REPO, env=env,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig=signal.SIGKILL) -> None:
        """Kill the whole process group (the cluster's sentinel, pusher, workers, monitor)."""
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(30)

    def stop(self) -> None:
        """SIGTERM to the cluster's main process (it shuts its workers down), SIGKILL if it hangs."""
        stop_process_group(self.process, grace=30)
        self._log.close()


@pytest.fixture
def start_worker(transactional_db, tmp_path):
    """Start real qcluster workers on the test database; they are stopped after the test."""
    workers: list[Worker] = []

    def start(**env: str) -> Worker:
        worker = Worker({"_LOG": str(tmp_path), **env})
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def run_in_threads(target, count: int, timeout: float = 30) -> None:
    """Run `target` on `count` threads at once (each closes its own database connections) and wait for them."""
    import threading

    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


def wait_for(predicate, *, timeout: float, interval: float = 0.25, message: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail the test with `message`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture(autouse=True)
def _indexes_per_test(settings, tmp_path):
    """Each test builds its FAISS indexes in its own folder (nothing leaks into var/indexes) and starts
    with none loaded: the first indexes are built as soon as vectors are written (retrieval.pipeline),
    so many tests build some, and a loaded one must not answer the next test's queries."""
    from retrieval.index_snapshots import manager

    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    manager.clear()
    yield
    manager.clear()


@pytest.fixture(autouse=True)
def _uploads_segmented_in_process(settings):
    """Pages and API calls that need an upload's masks get them in the test's own process; the tests of
    the interactive worker (tests/retrieval/test_interactive_worker.py, tests/site/test_object_storage.py)
    switch this off."""
    settings.IMAGINAITION_SEGMENT_UPLOADS_INLINE = True


@pytest.fixture(autouse=True)
def _models_in_fp32(settings):
    """Models built by tests run in fp32 (results compared exactly across runs); the half precision
    choice has its own tests (tests/retrieval/test_devices.py)."""
    settings.IMAGINAITION_PRECISION = "fp32"


@pytest.fixture(autouse=True)
def _serving_models_decided_per_query(settings):
    """Which model answers queries is cached per process for a few seconds. In tests, decide on every
    query: a background thread (the status banner's) has its own connection, which does not see a
    test's uncommitted rows, and must not leave its answer for the test's own queries."""
    from retrieval import serving

    settings.IMAGINAITION_SERVING_CHECK_SECONDS = 0
    serving.forget()
    yield
    _background_threads_joined()  # one started by this test must not write its answer into the next
    serving.forget()


@pytest.fixture(autouse=True)
def _no_storage_failure_remembered(monkeypatch):
    """Pages say for a while that the media storage failed in this process: not because an earlier test's did."""
    from gallery import storage

    monkeypatch.setattr(storage, "_last_failure", None)


def _background_threads_joined(timeout: float = 30.0) -> None:
    """Wait for the product's short background threads (the banner's refresh, an index file's copy)."""
    import threading

    for thread in threading.enumerate():
        if thread.name == "banner-refresh" or thread.name.startswith("index-copy-"):
            thread.join(timeout)
