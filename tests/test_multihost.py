"""Several hosts on one machine (issue 15, "scale out"): separate folders and processes stand in for hosts.

- database host: a PostgreSQL + pgvector of its own, reached over TCP on 127.0.0.1 with a password;
- web A and web B: real gunicorn processes, each with its own var folder (index files) and port;
- worker clusters C and D: real `manage.py qcluster` processes, each with its own var folder;
- shared storage: one media folder every role points to.

Every role reads only environment settings (DATABASE_URL, IMAGINAITION_*); each connects under its
own application_name, so the database shows who holds what. Shown:

1. C is SIGKILLed while it holds claims on a batch: its claims are released with its connections,
   D finishes every image, no image is lost or processed into duplicate rows, the queue drains;
2. an image added through A is found by a search on B within 2 s of being ready;
3. B restarted loads its persisted indexes (its files untouched) and catches up with images added
   while it was down;
4. a rebuild started on A (`manage.py rebuild_index` with A's settings) is picked up by B through
   the version stamp, while B keeps answering.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests
from PIL import Image as PILImage

from imaginaition_site.embedded_db import TcpServer, free_port, tcp_server_start, tcp_server_stop
from bench.common import stop_process_group
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
FOUND_WITHIN_S = 2.0  # the promise: ready in the database -> found by a search on another web host


def photo(n: int) -> bytes:
    """The n-th test picture: one of the photos the other tests use, mirrored for n >= 5 (new bytes)."""
    from skimage import data as skdata

    picture = PILImage.fromarray(getattr(skdata, PHOTOS[n % len(PHOTOS)])())
    picture.thumbnail((480, 480))
    if n // len(PHOTOS) % 2:
        picture = picture.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Role:
    """One host's service: a process group started by one command with environment settings only."""

    name: str
    argv: list[str]
    env: dict[str, str]
    folder: Path
    port: int | None = None
    process: subprocess.Popen | None = None
    _log: io.BufferedWriter | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Role:
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""

    def check_alive(self) -> None:
        if not self.alive():
            pytest.fail(f"{self.name} exited:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the whole process group (a host losing power)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL whatever is left of the group."""
        if self.process is None:
            return
        stop_process_group(self.process, grace=30)
        if self._log is not None:
            self._log.close()
            self._log = None


class Hosts:
    """The database server, the shared media folder, and each role's folder and settings."""

    def __init__(self, server: TcpServer, root: Path):
        self.server = server
        self.root = root
        self.media = root / "shared-media"
        self.media.mkdir()
        self.roles: list[Role] = []
        self.secret_key = "multi-host-test-" + os.urandom(16).hex()  # the same on every web host
        self.db = psycopg.connect(server.url(application_name="test"), autocommit=True)

    def env(self, name: str, **settings: str) -> dict[str, str]:
        """What a host's service is given: its environment, nothing else (no project setting leaks in)."""
        base = {key: value for key, value in os.environ.items()
                if not key.startswith(("IMAGINAITION_", "DJANGO_", "Q_CLUSTER")) and key != "DATABASE_URL"}
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        return {**base, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "DATABASE_URL": self.server.url(application_name=name),
                "DJANGO_SECRET_KEY": self.secret_key,
                "IMAGINAITION_VAR_DIR": str(folder / "var"),  # its own secret-less var: index files here
                "IMAGINAITION_MEDIA_ROOT": str(self.media),
                "IMAGINAITION_MODEL_PROFILE": "offline", "IMAGINAITION_PRECISION": "fp32",
                **settings}

    def manage(self, name: str, *args: str, timeout: float = 300, **settings: str) -> str:
        """A one-off `manage.py` command run as host `name`."""
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=self.env(name, **settings),
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def web(self, name: str, port: int | None = None) -> Role:
        """`python -m gunicorn imaginaition_site.wsgi:application ...` as in scripts/run.sh, started in the
        project's folder: gunicorn.conf.py there turns off its per-user control socket, which two servers on
        one machine would take from each other, and raises the request-line limit."""
        port = port or free_port()
        argv = [sys.executable, "-m", "gunicorn", "imaginaition_site.wsgi:application", "--bind",
                f"127.0.0.1:{port}", "--workers", "1", "--threads", "4", "--timeout", "300",
                "--graceful-timeout", "10"]
        role = Role(name, argv, self.env(name), self.root / name, port=port)
        self.roles.append(role)
        return role.start()

    def worker(self, name: str, **settings: str) -> Role:
        """`python manage.py qcluster`."""
        role = Role(name, [sys.executable, "manage.py", "qcluster"], self.env(name, **settings), self.root / name)
        self.roles.append(role)
        return role.start()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.db.execute(sql, params).fetchall()

    def close(self) -> None:
        for role in reversed(self.roles):
            role.stop()
        self.db.close()


@pytest.fixture
def hosts(tmp_path):
    """A database host on TCP with a password, and the roles a test starts; everything is stopped
    at the end, on failure too (the role logs are printed then)."""
    pgroot = Path(tempfile.mkdtemp(prefix="imaginaition-mh-pg-"))  # the database host's disk
    server = None
    started: Hosts | None = None
    try:
        server = tcp_server_start(pgdata=pgroot / "pgdata", user="imaginaition", password="mh-" + os.urandom(8).hex(),
                                  database="imaginaition", durable=False)
        started = Hosts(server, tmp_path)
        yield started
    finally:
        if started is not None:
            started.close()
            for role in started.roles:
                print(f"----- {role.name} log (tail) -----\n{role.log(3000)}")
        if server is not None:
            tcp_server_stop(server)
        shutil.rmtree(pgroot, ignore_errors=True)


def sign_in(role: Role, username: str, password: str) -> requests.Session:
    """A browser-like session signed in on `role` (the login page, CSRF included). Cookies are kept
    per machine name, not per port: the same session then calls every web host."""
    session = requests.Session()
    session.get(f"{role.url}/accounts/login/", timeout=60).raise_for_status()
    response = session.post(f"{role.url}/accounts/login/", allow_redirects=False, timeout=60,
                            data={"username": username, "password": password,
                                  "csrfmiddlewaretoken": session.cookies["csrftoken"]})
    assert response.status_code == 302, response.text[-2000:]
    session.headers["X-CSRFToken"] = session.cookies["csrftoken"]  # rotated at login; DRF checks it on POST
    return session


def upload(session: requests.Session, role: Role, n: int) -> int:
    response = session.post(f"{role.url}/api/images/", files={"file": (f"photo-{n}.jpg", photo(n), "image/jpeg")},
                            timeout=60)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def search(session: requests.Session, role: Role, image_id: int) -> dict:
    """Search on `role` by a stored image; k is above the gallery's size, so every indexed image answers."""
    response = session.post(f"{role.url}/api/search/", json={"image_id": image_id, "k": 100, "include_self": True},
                            timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def found_ids(body: dict) -> set[int]:
    return {result["image_id"] for result in body["results"]}


def wait_up(role: Role) -> None:
    def answers():
        role.check_alive()
        try:
            # Up once the application answers: 401 without a sign-in, the gallery being private.
            return requests.get(f"{role.url}/api/status/", timeout=30).status_code in (200, 401)
        except requests.ConnectionError:
            return False

    wait_for(answers, timeout=180, interval=0.3, message=f"{role.name} to answer")


def advisory_claims(hosts: Hosts, application_name: str | None = None) -> list[tuple[int, int]]:
    """(kind of work, image id) of the pipeline's claims: session advisory locks on kind << 48 | image
    id (pg_locks shows the high 32 bits as classid, the low ones as objid); of one role, or anyone's."""
    rows = hosts.query(
        "SELECT l.classid, l.objid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid >= 65536"
        + (" AND a.application_name = %s" if application_name else ""),
        (application_name,) if application_name else ())
    return sorted((int(classid) >> 16, int(objid)) for classid, objid in rows)


def statuses(hosts: Hosts, ids: list[int]) -> dict[int, tuple[str, str]]:
    rows = hosts.query("SELECT id, status, masks_status FROM gallery_image WHERE id = ANY(%s)", (ids,))
    return {image_id: (status, masks) for image_id, status, masks in rows}


def all_processed(hosts: Hosts, ids: list[int], *roles: Role) -> bool:
    for role in roles:
        role.check_alive()
    return set(statuses(hosts, ids).values()) == {("ready", "ready")} and len(statuses(hosts, ids)) == len(ids)


def index_versions(hosts: Hosts) -> dict[tuple[str, str, str], int]:
    return {(owner, space, key): version for owner, space, key, version in
            hosts.query("SELECT owner, space, model_key, version FROM retrieval_indexstate WHERE file_name <> ''")}


def served_versions(session: requests.Session, role: Role) -> dict[tuple[str, str, str], int | None]:
    """The index versions web host `role` answers with (its /api/status/, read signed in)."""
    body = session.get(f"{role.url}/api/status/", timeout=30).json()
    return {(index.get("owner", "image"), index["space"], index["model_key"]): index["version"]
            for index in body["integrity"]["indexes"]}


def folder_files(folder: Path) -> dict[str, tuple[float, int]]:
    return {path.name: (path.stat().st_mtime, path.stat().st_size) for path in sorted(folder.glob("*"))
            if path.is_file()} if folder.exists() else {}


class Timings(dict):
    def __setitem__(self, name: str, seconds: float) -> None:
        super().__setitem__(name, seconds)
        print(f"multi-host: {name}: {seconds:.3f} s", flush=True)


def test_web_and_worker_hosts_share_only_the_database_and_the_media_storage(hosts):
    timings = Timings()
    clock = time.monotonic()

    # The one-off step (any host): schema, the first administrator.
    hosts.manage("setup", "migrate", "--noinput")
    web_a, web_b = hosts.web("web-A"), hosts.web("web-B")
    hosts.manage("setup", "ensure_admin", IMAGINAITION_ADMIN_PASSWORD="mh-Admin-pass-1")
    wait_up(web_a)
    wait_up(web_b)
    # Signed in on A; B honours the same session (one database, one DJANGO_SECRET_KEY for the web hosts).
    a = b = sign_in(web_a, "admin", "mh-Admin-pass-1")
    assert b.get(f"{web_b.url}/api/preferences/", timeout=60).status_code == 200
    # A text query as long as the page's box allows, in 3-byte characters: gunicorn's default limit on the
    # request line (4094 bytes) answered a bare 414; gunicorn.conf.py sets it. Refused by the page itself, the
    # words kept in its box.
    long_text = a.get(f"{web_a.url}/search/", params={"text": "猫" * 501}, allow_redirects=False, timeout=60)
    assert long_text.status_code == 400 and "at most 500 characters" in long_text.text, long_text.text[:300]
    # Without IMAGINAITION_HTTPS a client's X-Forwarded-Proto is no one's word: gunicorn's default trusted it from
    # 127.0.0.1 (a proxy on the same host passes it on), and every link said https.
    spoofed = a.get(f"{web_a.url}/api/", headers={"X-Forwarded-Proto": "https", "X-Forwarded-SSL": "on"}, timeout=60)
    links = [value for value in spoofed.json().values() if isinstance(value, str) and "://" in value]
    assert links and all(link.startswith("http://") for link in links), spoofed.text
    # A refused upload (no token: 401, the body left unread) closes its connection and says so: gunicorn said
    # keep-alive, then dropped the connection past 64 KiB of unread body, and the client's next request failed.
    client = requests.Session()
    refused = client.post(f"{web_a.url}/api/images/", files={"file": ("big.png", b"x" * 300_000)}, timeout=60)
    assert refused.status_code == 401 and refused.headers["Connection"] == "close", refused.headers
    assert client.get(f"{web_a.url}/api/", timeout=60).status_code == 200
    assert client.get(f"{web_a.url}/api/", timeout=60).headers["Connection"] == "keep-alive"  # the others stay open
    timings["database, migrate, two web hosts up"] = time.monotonic() - clock

    # --- 1. Worker C dies (SIGKILL) mid-batch; worker D finishes everything. ----------------------
    clock = time.monotonic()
    batch = [upload(a, web_a, n) for n in range(6)]
    # C takes the queued tasks, two at a time, and claims batches of 3. Its short retry decides when
    # the tasks it took go back to the queue once it is dead (the broker stamps a task with its
    # taker's retry); its timeout is below that, as django-q wants.
    worker_c = hosts.worker("worker-C", IMAGINAITION_WORKERS="2", IMAGINAITION_BATCH_SIZE="3",
                            IMAGINAITION_TASK_RETRY="6", IMAGINAITION_TASK_TIMEOUT="5")
    def batch_claimed_by_c() -> list[tuple[int, int]]:
        worker_c.check_alive()
        held = advisory_claims(hosts, "worker-C")
        kinds = [kind for kind, _ in held]
        return held if max(map(kinds.count, kinds), default=0) >= 3 else []  # a whole batch of one kind

    held = wait_for(batch_claimed_by_c, timeout=180, interval=0.02, message="worker C to claim a batch")
    worker_c.kill()
    timings["6 uploads through A, C started -> C holds a batch, killed"] = time.monotonic() - clock
    held_ids = sorted({image_id for _, image_id in held})
    # Killed mid-batch: what it claimed is still pending (it wrote nothing for the images it held).
    unfinished = [i for i, (status, masks) in statuses(hosts, held_ids).items() if "pending" in (status, masks)]
    print(f"multi-host: C held {held} when killed; unfinished: {unfinished}")
    assert set(held_ids) <= set(batch) and unfinished, (held, statuses(hosts, batch))

    # Its connections close with it, and its claims with them: nothing of C is left in the database.
    wait_for(lambda: not hosts.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'worker-C'"),
         timeout=30, message="worker C's sessions to end")
    assert advisory_claims(hosts) == []

    clock = time.monotonic()
    worker_d = hosts.worker("worker-D", IMAGINAITION_WORKERS="1", IMAGINAITION_BATCH_SIZE="4",
                            IMAGINAITION_TASK_RETRY="360", IMAGINAITION_TASK_TIMEOUT="300")
    wait_for(lambda: all_processed(hosts, batch, worker_d), timeout=240, interval=0.5,
         message="worker D to process every image")
    timings["D started -> all 6 images ready (its model load included)"] = time.monotonic() - clock
    wait_for(lambda: worker_d.check_alive() or not hosts.query("SELECT 1 FROM django_q_ormq"), timeout=120,
         message="the queue to drain (C's tasks handed out again, run by D)")

    embeddings = hosts.query("SELECT image_id, space, model_key, count(*) FROM gallery_embedding "
                             "WHERE image_id = ANY(%s) GROUP BY 1, 2, 3", (batch,))
    assert {row[0] for row in embeddings} == set(batch)  # none lost
    assert all(count == 1 for *_, count in embeddings)  # one vector per image, space and model
    assert {(space, count) for _, space, _, count in embeddings} == {("semantic", 1), ("content", 1)}
    per_image = {image_id: n for image_id, n in hosts.query(
        "SELECT image_id, count(*) FROM gallery_embedding WHERE image_id = ANY(%s) GROUP BY 1", (batch,))}
    assert set(per_image.values()) == {2}, per_image
    assert hosts.query("SELECT image_id, segmenter, class_index FROM gallery_mask WHERE image_id = ANY(%s) "
                       "GROUP BY 1, 2, 3 HAVING count(*) > 1", (batch,)) == []
    assert hosts.query("SELECT mask_id, space, model_key FROM retrieval_regionembedding "
                       "GROUP BY 1, 2, 3 HAVING count(*) > 1") == []
    assert hosts.query("SELECT count(*) FROM gallery_mask WHERE image_id = ANY(%s)", (batch,))[0][0] > 0
    assert advisory_claims(hosts, "worker-C") == []

    # --- 2. Added through A, found on B within 2 s of being ready. ----------------------------------
    anchor = batch[0]
    body = wait_for(lambda: (body := search(b, web_b, anchor))["engine"] == "faiss"
                and found_ids(body) >= set(batch) and body, timeout=60, interval=0.5,
                message="web B to answer from its own FAISS indexes")
    new = upload(a, web_a, 6)
    ready_at = found_at = None
    deadline = time.monotonic() + 240
    while found_at is None and time.monotonic() < deadline:
        if ready_at is None:
            if statuses(hosts, [new])[new][0] == "ready":
                ready_at = time.monotonic()
            else:
                worker_d.check_alive()
                time.sleep(0.02)
                continue
        body = search(b, web_b, anchor)
        if new in found_ids(body):
            found_at = time.monotonic()
        elif time.monotonic() - ready_at > 10 * FOUND_WITHIN_S:
            break
        else:
            time.sleep(0.02)
    assert ready_at is not None, "worker D did not process the image added through A"
    assert found_at is not None, f"web B did not find image {new} within {10 * FOUND_WITHIN_S} s of it being ready"
    timings["ready -> found on B"] = found_at - ready_at
    assert found_at - ready_at <= FOUND_WITHIN_S, timings
    assert body["engine"] == "faiss"

    # --- 3. B restarted: loads its persisted indexes and catches up. --------------------------------
    b_indexes = Path(web_b.env["IMAGINAITION_VAR_DIR"]) / "indexes"
    wait_for(lambda: b.get(f"{web_b.url}/api/status/", timeout=30).json()["integrity"]["state"] == "ok",
         timeout=60, interval=0.5, message="web B to hold every index (image and region vectors)")
    files_before = folder_files(b_indexes)
    assert any(name.endswith(".faiss") for name in files_before), files_before  # B keeps its own copies
    web_b.stop()
    while_down = [upload(a, web_a, n) for n in (7, 8)]
    wait_for(lambda: all_processed(hosts, while_down, worker_d), timeout=240, interval=0.5,
         message="worker D to process the images added while B was down")
    clock = time.monotonic()
    web_b = hosts.web("web-B", port=web_b.port)
    wait_up(web_b)
    everything = [*batch, new, *while_down]
    body = wait_for(lambda: (body := search(b, web_b, anchor))["engine"] == "faiss"
                and found_ids(body) >= set(everything) and body, timeout=60, interval=0.3,
                message="web B, restarted, to answer with every image from FAISS")
    timings["B restarted -> answers with the images added while down"] = time.monotonic() - clock
    assert folder_files(b_indexes) == files_before  # loaded as persisted: nothing rebuilt or rewritten

    # --- 4. A rebuild started on A is picked up by B (version stamp) while B keeps answering. ------
    before = index_versions(hosts)
    answers: list[tuple[int, str, int, float]] = []  # status, engine, results, seconds
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = b.post(f"{web_b.url}/api/search/", json={"image_id": anchor, "k": 100,
                                                                     "include_self": True}, timeout=60)
                body = response.json() if response.status_code == 200 else {}
                answers.append((response.status_code, body.get("engine", ""), len(body.get("results", [])),
                                time.monotonic() - started))
            except requests.RequestException as exc:
                answers.append((0, repr(exc), 0, time.monotonic() - started))
            time.sleep(0.05)

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        clock = time.monotonic()
        hosts.manage("web-A", "rebuild_index")
        after = index_versions(hosts)
        assert after.keys() == before.keys() and all(after[key] == before[key] + 1 for key in before), (before, after)
        rebuilt = time.monotonic()
        wait_for(lambda: all(served_versions(b, web_b).get(key) == version for key, version in after.items()),
             timeout=60, interval=0.2, message=f"web B to serve the rebuilt versions {after}")
        timings["rebuild on A (manage.py rebuild_index)"] = rebuilt - clock
        timings["rebuild done -> B serves the new version"] = time.monotonic() - rebuilt
        time.sleep(0.5)  # a few answers from the new version
    finally:
        stop.set()
        asker.join(90)
    assert answers and all(status == 200 and engine == "faiss" and n == len(everything)
                           for status, engine, n, _ in answers), answers
    timings["B's slowest answer during the rebuild"] = max(seconds for *_, seconds in answers)
    print("multi-host timings (s):", {name: round(value, 3) for name, value in timings.items()},
          f"{len(answers)} answers from B during the rebuild")
