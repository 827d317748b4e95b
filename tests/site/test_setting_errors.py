"""A wrong setting stops a command with one line that names it (never a traceback from deep inside)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize(("setting", "value", "command", "message"), [
    ("DATABASE_URL", "garbage", "check",
     "Error: DATABASE_URL is not a database address (postgres://USER:PASSWORD@HOST:PORT/NAME): Scheme '://' is "
     "unknown"),
    ("DATABASE_URL", "mysql://user@host/name", "check",
     "Error: DATABASE_URL must point at PostgreSQL with pgvector (postgres://…), not mysql"),
    ("DATABASE_URL", "postgres://nobody:x@127.0.0.1:1/db", "showmigrations",
     'Error: cannot use the database of DATABASE_URL: connection failed: connection to server at "127.0.0.1", '
     "port 1 failed: Connection refused"),
    ("IMAGINAITION_REGION_STYLE", "bogus", "check",
     "Error: IMAGINAITION_REGION_STYLE must be one of masked, box, not 'bogus'"),
    ("IMAGINAITION_LOG_LEVEL", "loud", "check",
     "Error: IMAGINAITION_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'loud'"),
    ("IMAGINAITION_TIME_ZONE", "Mars/Olympus", "check",
     "Error: IMAGINAITION_TIME_ZONE='Mars/Olympus' is not a time zone: a name such as UTC, Europe/Berlin"),
    ("IMAGINAITION_ANN_INDEX", "bogus", "check",
     "retrieval.E004) IMAGINAITION_ANN_INDEX must be one of ivf, "),
    ("IMAGINAITION_ANN_INDEX", "semantic=hnsw,semantic=ivf", "check",
     "retrieval.E004) IMAGINAITION_ANN_INDEX names a space twice (semantic=hnsw,semantic=ivf)"),
    ("IMAGINAITION_WORKER_CHECK_RATE", "²/minute", "check",
     "Error: IMAGINAITION_WORKER_CHECK_RATE must be a count per period such as 10/minute"),
    ("IMAGINAITION_DATABASE_NAME", "postgres", "storage_check",
     'Error: the database has no tables of this service (relation "gallery_image" does not exist): run '
     "`python manage.py migrate` first"),
    # rebuild_index ended in a traceback (FileExistsError) when a file stood where the folder goes
    ("IMAGINAITION_INDEX_DIR", str(REPO / "README.md"), "rebuild_index",
     f"retrieval.E005) IMAGINAITION_INDEX_DIR={REPO / 'README.md'} cannot be used as a folder: a file, not a folder"),
    ("IMAGINAITION_MODEL_CACHE_DIR", "/proc/no-such-folder", "check",
     "retrieval.E005) IMAGINAITION_MODEL_CACHE_DIR=/proc/no-such-folder cannot be used as a folder: "),
    # FileExistsError from making the secret key's folder, the variable not named
    ("IMAGINAITION_VAR_DIR", str(REPO / "README.md"), "check",
     f"Error: IMAGINAITION_VAR_DIR must be a folder (made when missing), not the file {REPO / 'README.md'}"),
    # FileNotFoundError's 40-line traceback from making the secret key's folder
    ("IMAGINAITION_VAR_DIR", "/proc/no-such-folder", "check",
     "Error: IMAGINAITION_VAR_DIR (/proc/no-such-folder): cannot keep the secret key there (No such file or "
     "directory); point it at a folder this user can write, or set DJANGO_SECRET_KEY"),
    # never checked: the service started, and its first upload failed
    ("IMAGINAITION_MEDIA_ROOT", "/proc/no-such-folder", "check",
     "gallery.E001) IMAGINAITION_MEDIA_ROOT=/proc/no-such-folder cannot be used as a folder: No such file or "
     "directory"),
    ("IMAGINAITION_MEDIA_ROOT", str(REPO / "README.md"), "check",
     f"gallery.E001) IMAGINAITION_MEDIA_ROOT={REPO / 'README.md'} cannot be used as a folder: a file, not a folder"),
    # fetch_weights (the one-off step's) ended in a ValueError's traceback
    ("IMAGINAITION_MODEL_PROFILE", "fancy", "fetch_weights",
     "CommandError: IMAGINAITION_MODEL_PROFILE must be auto, standard or offline, not 'fancy'"),
], ids=["url-scheme", "url-not-postgres", "url-unreachable", "region-style", "log-level", "time-zone", "ann-index",
        "ann-index-twice", "rate-digit", "not-migrated", "index-dir-a-file", "model-cache-unwritable",
        "var-dir-a-file", "var-dir-unmakeable", "media-root-unmakeable", "media-root-a-file", "profile-fetch-weights"])
def test_a_wrong_setting_is_named_in_one_line(setting, value, command, message):
    env = {**{name: text for name, text in os.environ.items() if name != "DJANGO_SECRET_KEY"},  # kept in var/
           setting: value, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "manage.py", command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("setting, value", [("IMAGINAITION_LOG_LEVEL", "debug"), ("IMAGINAITION_ANN_INDEX", "")])
def test_a_log_level_in_lower_case_and_an_empty_index_kind_are_taken(setting, value):
    env = {**os.environ, setting: value, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


def test_word_settings_set_but_blank_are_their_defaults():
    """README: "A variable set but blank is its default"; these seven stopped every command (an env file's
    IMAGINAITION_MODEL_PROFILE= made migrate, and so make run, fail)."""
    blank = ["IMAGINAITION_MODEL_PROFILE", "IMAGINAITION_DEVICE", "IMAGINAITION_PRECISION", "IMAGINAITION_OFFLINE_NETWORK",
             "IMAGINAITION_SEGMENTER", "IMAGINAITION_SEGMENTER_RUNTIME", "IMAGINAITION_STORAGE"]
    env = {**os.environ, **dict.fromkeys(blank, " "), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "manage.py", "shell", "--no-imports", "-c",
                           "from django.conf import settings as s; from retrieval.encoders.registry import active_models; "
                           "print(s.IMAGINAITION_DEVICE, s.IMAGINAITION_PRECISION, s.IMAGINAITION_SEGMENTER_RUNTIME, "
                           "s.STORAGES['default']['BACKEND'], "
                           "active_models().semantic)"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].split() == ["auto", "auto", "torch", "gallery.storage.AtomicFileSystemStorage",
                                   "offline/effnet-lite2+minilm/v2"], done.stdout


@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="a role is made on the embedded server")
def test_migrate_on_a_database_without_pgvector_that_its_role_may_not_add_says_what_to_do(db):
    """DEPLOYMENT.md's setup without its superuser step: migrate ended in a traceback."""
    import psycopg
    from urllib.parse import quote

    from imaginaition_site import embedded_db

    server = embedded_db.ensure_running()
    with psycopg.connect(host=server.host, port=server.port, user=server.user, dbname="postgres",
                         autocommit=True) as pg:
        pg.execute("DROP DATABASE IF EXISTS novector")
        pg.execute("DROP ROLE IF EXISTS novector_owner")
        pg.execute("CREATE ROLE novector_owner LOGIN PASSWORD 'owner-pass-1'")
        pg.execute("CREATE DATABASE novector OWNER novector_owner")
        try:
            url = f"postgres://novector_owner:owner-pass-1@{quote(server.host, safe='')}:{server.port}/novector"
            done = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=REPO, capture_output=True,
                                  text=True, timeout=180, env={**{name: value for name, value in os.environ.items()
                                          if name != "IMAGINAITION_DATABASE_NAME"},  # it names the test's
                                       "DATABASE_URL": url, "HF_HUB_OFFLINE": "1"})
        finally:
            pg.execute("DROP DATABASE IF EXISTS novector WITH (FORCE)")
            pg.execute("DROP ROLE IF EXISTS novector_owner")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert ('Error: the database lacks the pgvector extension (permission denied to create extension "vector")'
            in done.stderr and "CREATE EXTENSION vector;" in done.stderr)


def test_loading_a_model_draws_no_progress_bar_into_the_log():
    """transformers' "Loading weights: 100%|██…" bar, carriage returns and all, in every process's log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c",
                           "from transformers.utils import logging; print(logging.is_progress_bar_enabled())"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]


def test_a_media_folder_this_user_cannot_write_is_a_warning_and_an_s3_storage_is_not_looked_for(
        settings, tmp_path, monkeypatch):
    from gallery import checks

    settings.MEDIA_ROOT = tmp_path / "media"
    assert checks.media_root_check() == [] and (tmp_path / "media").is_dir()  # made, as the first upload would
    monkeypatch.setattr(checks.os, "access", lambda path, mode: False)  # a read-only mount (root writes anywhere)
    assert [found.id for found in checks.media_root_check()] == ["gallery.W002"]
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "storages.backends.s3.S3Storage"}}
    settings.MEDIA_ROOT = "/proc/no-such-folder"
    assert checks.media_root_check() == []
