import os
import sys

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

from imaginaition_site.malloc import limit_malloc_arenas
from imaginaition_site.unread_bodies import close_after_refused_bodies

limit_malloc_arenas()  # before the server starts its threads
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaginaition_site.settings")
try:
    application = close_after_refused_bodies(get_wsgi_application())
    from retrieval.encoders.registry import log_active_models  # needs the settings above

    log_active_models()  # resolves the profile, its models and the device: a wrong one is a setting's value too
except ImproperlyConfigured as exc:  # a setting's value: in one line, as manage.py says it (not a traceback)
    print(f"Error: {exc}", file=sys.stderr)
    sys.exit(3)  # gunicorn's "worker failed to boot": the server stops (1 made it start the worker again and again)
