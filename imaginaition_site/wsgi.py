import ctypes
import os
import sys

from django.core.wsgi import get_wsgi_application

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread of a threaded server a malloc arena of its own, which keeps what it
    freed: with gunicorn's 4 threads each search by upload left its peak in another arena (bench.memory:
    ~30 MB of peak RSS). Two arenas serve this load. MALLOC_ARENA_MAX in the environment wins."""
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # not glibc (musl has no arenas to limit)
        pass


limit_malloc_arenas()  # before the server starts its threads
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
application = get_wsgi_application()

from retrieval.encoders.registry import log_active_models  # noqa: E402  (needs the settings above)

log_active_models()
