import unicodedata
from pathlib import PurePosixPath

from django.db import migrations

# As gallery.services.stored_name has it (a migration keeps its own copy: the code may change later).
BIDI_CONTROLS = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def as_stored(name):
    name = unicodedata.normalize("NFC", PurePosixPath(name or "upload").name).translate(BIDI_CONTROLS)
    shows = any(not char.isspace() and unicodedata.category(char) != "Cf" for char in name)
    return name[:255] if shows else "upload"


def names_as_stored(apps, schema_editor):
    """Names an older release stored, or its admin accepted, as new ones are stored: 0010 composed them and
    dropped bidirectional controls, but left a path ("../../etc/passwd", served as "..png") and a name of
    invisible characters only (U+FEFF: a page whose heading shows nothing)."""
    Image = apps.get_model("gallery", "Image")
    candidates = Image.objects.filter(original_name__regex=r"/|[^ -~]|^ *$").only("pk", "original_name")
    for image in candidates.iterator():
        name = as_stored(image.original_name)
        if name != image.original_name:
            Image.objects.filter(pk=image.pk).update(original_name=name)


class Migration(migrations.Migration):

    dependencies = [("gallery", "0011_reset_job_to_process")]

    operations = [migrations.RunPython(names_as_stored, migrations.RunPython.noop)]
