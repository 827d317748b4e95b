import os

from django.core.wsgi import get_wsgi_application

from imaginaition_site.malloc import limit_malloc_arenas

limit_malloc_arenas()  # before the server starts its threads
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
application = get_wsgi_application()

from retrieval.encoders.registry import log_active_models  # noqa: E402  (needs the settings above)

log_active_models()
