"""Peak memory (RSS) of a web process after serving searches by upload, and of a worker after a batch.

    python -m bench.memory [--n 16] [--profiles offline standard] [--no-write]

Per model profile, on its own database (`imaginaition_bench_memory`) and media folder
(var/imaginaition_bench_memory/), emptied first:
1. `import_folder` (enqueue) of --n real photos (bench.common.bench_photos), real `manage.py qcluster`
   workers (IMAGINAITION_WORKERS, default 2) compute embeddings and masks (one batch of up to
   IMAGINAITION_BATCH_SIZE each), then the peak RSS (VmHWM) of every process of the cluster is read;
2. `manage.py rebuild_index`; gunicorn as `make run` starts it (1 worker process, 4 threads) on
   127.0.0.1, a user logs in and searches by upload: `POST /api/search/` (multipart `image`, token),
   a text search, and the web page's own upload (`POST /`; its labels come from the interactive worker,
   `Q_CLUSTER_NAME=interactive manage.py qcluster`, started beside gunicorn as `make run` does; the
   benchmark asks `/upload/state/` as the page does until they are there), its searches (whole picture
   and its first label's region) and an API search by an upload's region (masks from the interactive
   worker); then the VmHWM of gunicorn's worker process (the one serving requests; the master is
   reported apart) and of the interactive worker.
The standard profile (CLIP ViT-B-32 + DeepLabV3-ResNet101) runs with random weights of the same
shapes (bench.common.standard_random_weights): the same memory as the real files.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import io
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from bench.common import (REPO_ROOT, bench_env, bench_photos, describe_photos, empty_bench_database,
                          load_average, photo_folder_subset, setup_django, standard_random_weights, start_qcluster,
                          stop_process_group, table, write_section)

DATABASE = "imaginaition_bench_memory"
BENCH_VAR = REPO_ROOT / "var" / DATABASE
WEB_GOAL_MB = 1536
MB = 1024 * 1024


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0])
    return values


def process_tree(pid: int) -> list[int]:
    import psutil

    root = psutil.Process(pid)
    return [root.pid] + [child.pid for child in root.children(recursive=True)]


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


class Browser:
    """Bounded requests to the local server only (no proxy), with cookies and Django's CSRF token."""

    def __init__(self, base: str):
        assert base.startswith("http://127.0.0.1:")
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                  urllib.request.HTTPCookieProcessor(self.cookies))

    def request(self, path: str, *, data: bytes | None = None, headers: dict | None = None,
                timeout: float = 600) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def csrf(self, page: bytes) -> str:
        match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, "no CSRF token in the page"
        return match.group(1).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(browser: Browser, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            status, _ = browser.request("/accounts/login/", timeout=10)
            if status == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"gunicorn did not answer in {timeout} s")


def worker_phase(env: dict[str, str], folder: Path, n: int, profile: str) -> dict:
    """Import (enqueue), let the cluster process everything, read every cluster process's peak RSS."""
    from django.core.management import call_command

    from gallery.models import Image, ProcessingStatus

    done = [ProcessingStatus.READY, ProcessingStatus.FAILED]
    process = start_qcluster(env, BENCH_VAR / f"qcluster-{profile}.log")
    try:
        started = time.perf_counter()
        call_command("import_folder", str(folder), stdout=io.StringIO())
        deadline = time.monotonic() + 1200
        while Image.objects.filter(status__in=done, masks_status__in=done).count() < n:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the workers stopped or took more than 20 minutes")
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        peaks = {pid: memory_kb(pid) for pid in process_tree(process.pid)}
    finally:
        stop_process_group(process)
    failed = Image.objects.exclude(status=ProcessingStatus.READY, masks_status=ProcessingStatus.READY).count()
    ordered = sorted(peaks.values(), key=lambda values: -values["VmHWM"])
    return {"seconds": seconds, "processes": len(peaks), "largest": ordered[0]["VmHWM"],
            "second": ordered[1]["VmHWM"] if len(ordered) > 1 else 0,
            "sum": sum(values["VmHWM"] for values in ordered), "failed": failed}


def web_phase(env: dict[str, str], queries: list[Path], profile: str) -> dict:
    """Serve searches by upload from gunicorn; the peak RSS of its worker process and of its master."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    password = secrets.token_urlsafe(16)
    user = get_user_model().objects.filter(username="bench-memory").first() or \
        get_user_model().objects.create_user("bench-memory")
    user.set_password(password)
    user.save()
    token = Token.objects.get_or_create(user=user)[0].key

    port = free_port()
    log = BENCH_VAR / f"gunicorn-{profile}.log"
    # The interactive worker segments the page's upload and an API upload's region (never the web process).
    interactive = start_qcluster({**env, "Q_CLUSTER_NAME": "interactive"}, BENCH_VAR / f"interactive-{profile}.log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "imaginaition_site.wsgi:application", "--bind", f"127.0.0.1:{port}",
             "--workers", "1", "--threads", "4", "--timeout", "600", "--graceful-timeout", "10"],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    browser = Browser(f"http://127.0.0.1:{port}")
    try:
        wait_until_up(browser, process, log)
        tree = process_tree(process.pid)
        workers = [pid for pid in tree if pid != process.pid]
        assert len(workers) == 1, f"expected one gunicorn worker process, found {workers}"
        worker = workers[0]
        idle = memory_kb(worker)["VmRSS"]
        statuses = {}
        timings = {}
        steps = [("started", memory_kb(worker))]
        for index, path in enumerate(queries):  # API: search by upload, token auth
            body, content_type = multipart({"k": "20"}, {"image": (path.name, path.read_bytes())})
            started = time.perf_counter()
            status, answer = browser.request("/api/search/", data=body, headers={
                "Content-Type": content_type, "Authorization": f"Token {token}"})
            timings[f"api upload {index + 1}"] = time.perf_counter() - started
            statuses[f"POST /api/search/ image ({path.name})"] = (status, len(json.loads(answer).get("results", [])))
            if index == 0:
                steps.append(("after the first API search by upload (semantic + content models)", memory_kb(worker)))
        steps.append(("after the other API searches by upload", memory_kb(worker)))
        status, answer = browser.request("/api/search/", data=json.dumps({"text": "a flower"}).encode(), headers={
            "Content-Type": "application/json", "Authorization": f"Token {token}"})
        statuses["POST /api/search/ text"] = (status, len(json.loads(answer).get("results", [])))
        # The web page: log in, upload (segmented at once), then search with the upload.
        _, page = browser.request("/accounts/login/")
        status, _ = browser.request("/accounts/login/", data=urllib.parse.urlencode({
            "username": user.username, "password": password, "csrfmiddlewaretoken": browser.csrf(page)}).encode())
        statuses["POST /accounts/login/"] = (status, None)
        _, page = browser.request("/")
        body, content_type = multipart({"csrfmiddlewaretoken": browser.csrf(page)},
                                       {"file": (queries[0].name, queries[0].read_bytes())})
        started = time.perf_counter()
        status, page = browser.request("/", data=body, headers={"Content-Type": content_type})
        statuses["POST / (upload)"] = (status, None)
        shown = re.search(rb'name="upload" value="([0-9a-f]+)"', page)  # the page names its upload in each link
        upload = shown.group(1).decode() if shown else ""
        deadline = time.monotonic() + 600
        while True:  # as the page does: ask until the interactive worker has found the labels
            status, answer = browser.request(f"/upload/state/?upload={upload}")
            state = json.loads(answer)
            if state["state"] != "working" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        timings["page upload until its labels are shown (interactive worker)"] = time.perf_counter() - started
        statuses[f"GET /upload/state/ ({state['state']}: {', '.join(state.get('labels', [])) or 'no labels'})"] = (
            200 if state["state"] == "ready" else 500, None)
        steps.append(("after the page's upload (labels by the interactive worker)", memory_kb(worker)))
        status, _ = browser.request(f"/search/?upload={upload}")
        statuses["GET /search/?upload=TOKEN"] = (status, None)
        if state.get("labels"):
            label = state["labels"][0]
            status, _ = browser.request(f"/search/?upload={upload}&label=" + urllib.parse.quote(label))
            statuses[f"GET /search/?upload=TOKEN&label={label}"] = (status, None)
            body, content_type = multipart({"k": "20", "label": label},
                                           {"image": (queries[0].name, queries[0].read_bytes())})
            started = time.perf_counter()
            api = Browser(browser.base)  # a token client: no session cookie (which would ask for CSRF)
            status, answer = api.request("/api/search/", data=body, headers={
                "Content-Type": content_type, "Authorization": f"Token {token}"})
            timings["api upload region (masks by the interactive worker)"] = time.perf_counter() - started
            statuses[f"POST /api/search/ image + label={label}"] = (status, len(json.loads(answer).get("results", [])))
        steps.append(("after the page's searches with it and an API region search", memory_kb(worker)))
        bad = {name: value for name, value in statuses.items() if value[0] != 200}
        if bad:
            raise RuntimeError(f"requests failed: {bad}\n{log.read_text(errors='replace')[-3000:]}")
        peak = memory_kb(worker)
        master = memory_kb(process.pid)
        interactive_peak = max(memory_kb(pid)["VmHWM"] for pid in process_tree(interactive.pid))
    finally:
        stop_process_group(process)
        stop_process_group(interactive)
    return {"idle": idle, "peak": peak["VmHWM"], "rss_after": peak["VmRSS"], "master": master["VmHWM"],
            "interactive": interactive_peak,
            "statuses": statuses, "timings": timings, "steps": steps}


def measure(profile: str, folder: Path, n: int, queries: list[Path]) -> dict:
    env_profile = {"IMAGINAITION_MODEL_PROFILE": profile}
    if profile == "standard":
        env_profile["IMAGINAITION_WEIGHTS_DIR"] = str(standard_random_weights())
    env = bench_env(DATABASE, **env_profile)
    empty_bench_database()
    workers = worker_phase(env, folder, n, profile)
    subprocess.run([sys.executable, "manage.py", "rebuild_index"], cwd=REPO_ROOT, env=env, check=True,
                   capture_output=True)
    web = web_phase(env, queries, profile)
    empty_bench_database()
    return {"workers": workers, "web": web}


IMPORT_STEPS = [("Python + Django set up", "import django; django.setup()"), ("torch", "import torch"),
                ("torchvision + timm", "import torchvision, timm"), ("sentence-transformers", "import sentence_transformers"),
                ("open_clip", "import open_clip"), ("faiss", "import faiss")]


def import_costs() -> list[list]:
    """Resident set after each import, in a fresh process (what a process holds before any model)."""
    code = "\n".join(["import os, re", "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'imaginaition_site.settings')",
                      "def rss(): return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"]
                     + [f"{statement}; print({name!r}, rss(), flush=True)" for name, statement in IMPORT_STEPS])
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                            env={**os.environ, "IMAGINAITION_LOG_LEVEL": "WARNING"}).stdout
    rows, previous = [], 0
    for line in output.splitlines():
        name, _, kb = line.rpartition(" ")
        rows.append([name, f"{int(kb) / 1024:.0f}", f"+{(int(kb) - previous) / 1024:.0f}"])
        previous = int(kb)
    return rows


def weight_files_mib(profile: str) -> dict[str, float]:
    """Size of each model's weight files (what its parameters take in memory, float32), MiB."""
    from django.test import override_settings

    from retrieval.encoders.registry import MODELS, PROFILE_MODELS

    weights = {"IMAGINAITION_WEIGHTS_DIR": standard_random_weights()} if profile == "standard" else {}
    with override_settings(**weights):
        return {key: sum(w.path().stat().st_size for w in MODELS[key].weights) / MB
                for key in PROFILE_MODELS[profile].values()}


def limits_of(profile: str, web: dict) -> str:
    steps = dict(web["steps"])
    first = steps["after the first API search by upload (semantic + content models)"]
    before_page = steps["after the other API searches by upload"]
    page = steps["after the page's upload (labels by the interactive worker)"]
    sizes = ", ".join(f"`{key}` {size:.0f} MiB" for key, size in weight_files_mib(profile).items())
    return (f"{profile}: weight files {sizes}. The first search by upload raised the resident set from "
            f"{steps['started']['VmRSS'] / 1024:.0f} to {first['VmRSS'] / 1024:.0f} MiB with a peak of "
            f"{first['VmHWM'] / 1024:.0f} MiB while loading (a transient of "
            f"{(first['VmHWM'] - first['VmRSS']) / 1024:.0f} MiB); the page's upload changed it by "
            f"{(page['VmRSS'] - before_page['VmRSS']) / 1024:+.0f} MiB.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16, help="photos the workers process (one batch)")
    parser.add_argument("--profiles", nargs="+", default=["offline", "standard"], choices=["offline", "standard"])
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/BENCHMARKS.md")
    args = parser.parse_args()
    os.environ.setdefault("IMAGINAITION_LOG_LEVEL", "WARNING")
    setup_django(DATABASE)
    from retrieval.encoders.devices import batch_size as device_batch_size

    started = time.perf_counter()
    load_before = load_average()
    photos, facts = bench_photos(200)
    folder = photo_folder_subset(photos, facts, args.n, BENCH_VAR / "import")
    # Queries: real photos the gallery does not hold.
    queries = [photos / item["file"] for item in facts["files"][args.n:]
               if item["kind"] == "photo"][:3]
    results = {profile: measure(profile, folder, args.n, queries) for profile in args.profiles}
    imports = import_costs()
    total_s = time.perf_counter() - started

    rows = []
    for profile, result in results.items():
        web, workers = result["web"], result["workers"]
        label = profile + (" (random weights)" if profile == "standard" else "")
        rows.append([label, "web: gunicorn worker process", f"{web['peak'] / 1024:.0f}",
                     "≤ 1536: " + ("met" if web["peak"] / 1024 <= WEB_GOAL_MB else "**missed**")])
        rows.append([label, "web: gunicorn master", f"{web['master'] / 1024:.0f}", ""])
        rows.append([label, "interactive worker: largest process (the segmenter)", f"{web['interactive'] / 1024:.0f}", ""])
        rows.append([label, f"worker: largest of {workers['processes']} qcluster processes", f"{workers['largest'] / 1024:.0f}", ""])
        rows.append([label, "worker: second largest (the other worker)", f"{workers['second'] / 1024:.0f}", ""])
        rows.append([label, "cluster: sum of peaks, all processes", f"{workers['sum'] / 1024:.0f}", ""])
    body_table = table(["profile", "process", "peak RSS (VmHWM) MiB", "goal MiB"], rows)
    step_rows = [[profile, step, f"{values['VmRSS'] / 1024:.0f}", f"{values['VmHWM'] / 1024:.0f}"]
                 for profile, result in results.items() for step, values in result["web"]["steps"]]
    steps_table = table(["profile", "web worker process, step", "RSS MiB", "peak so far MiB"], step_rows)
    notes = []
    for profile, result in results.items():
        web, workers = result["web"], result["workers"]
        requests = ", ".join(f"{name} → {status}" + (f" ({count} results)" if count is not None else "")
                             for name, (status, count) in web["statuses"].items())
        timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in web["timings"].items())
        notes.append(f"- {profile}: workers processed {args.n} photos in {workers['seconds']:.0f} s "
                     f"({workers['failed']} failures); requests: {requests}; times (the first one loads the models): "
                     f"{timings}.")
    missed = [profile for profile, result in results.items() if result["web"]["peak"] / 1024 > WEB_GOAL_MB]
    verdict = ("**Goal met** (web ≤ 1.5 GiB) for " + ", ".join(args.profiles) + "." if not missed else
               "**Goal (web ≤ 1.5 GiB) missed** for " + ", ".join(missed) + ". What limits it: the web process holds "
               "the semantic and content models (a search by upload embeds the upload; the segmenter runs in the "
               "interactive worker), and the libraries alone take "
               f"{imports[-1][1]} MiB (torch {imports[1][2]} MiB; table below). " + " ".join(
                   limits_of(profile, results[profile]["web"]) for profile in missed))
    body = "\n\n".join([
        describe_photos(facts, args.n) + f" Queries: {len(queries)} other photos ({', '.join(q.name for q in queries)}).",
        body_table,
        verdict,
        steps_table,
        "Before any model, imports alone (a fresh process, in this order; PyPI's torch wheel is the CUDA build, whose "
        "libraries count in every process's RSS even on a CPU-only machine):",
        table(["import", "RSS MiB", "added MiB"], imports),
        "\n".join(notes),
        f"Peak RSS is VmHWM from /proc/PID/status, read after the requests (web) and after every image was done "
        f"(workers; IMAGINAITION_WORKERS={os.environ.get('IMAGINAITION_WORKERS', 2)}, batches of "
        f"{device_batch_size()}). Load average {load_before} at the start, {load_average()} at the end; "
        f"whole benchmark {total_s / 60:.1f} min.",
    ])
    print(body)
    if not args.no_write:
        command = "python -m bench.memory" + ("" if args.n == 16 else f" --n {args.n}") + \
            ("" if args.profiles == ["offline", "standard"] else " --profiles " + " ".join(args.profiles))
        write_section("Memory", command, body)


if __name__ == "__main__":
    main()
