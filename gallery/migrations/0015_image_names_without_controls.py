import unicodedata
from pathlib import PurePosixPath

from django.db import migrations

# As gallery.services.stored_name has it (a migration keeps its own copy: the code may change later).
BIDI_CONTROLS = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
CONTROLS = {code: (" " if chr(code) in "\t\n\v\f\r\x1c\x1d\x1e\x85" else None)
            for code in [*range(0x20), *range(0x7F, 0xA0)]}


def as_stored(name):
    name = unicodedata.normalize("NFC", PurePosixPath(name or "upload").name)
    name = name.translate(BIDI_CONTROLS).translate(CONTROLS)
    shows = any(not char.isspace() and unicodedata.category(char) != "Cf" for char in name)
    return name[:255] if shows else "upload"


def names_without_controls(apps, schema_editor):
    """Names an older release stored with control characters (a folder's file named "a\\nERROR forged.png"
    or "\\x1b[2J.png") as new ones are stored: 0012 left them, and they still wrote a forged line, or a
    terminal's escape, into command output and logs."""
    Image = apps.get_model("gallery", "Image")
    candidates = Image.objects.filter(original_name__regex=r"[\x01-\x1f\x7f-\x9f]").only("pk", "original_name")
    for image in candidates.iterator():
        name = as_stored(image.original_name)
        if name != image.original_name:
            Image.objects.filter(pk=image.pk).update(original_name=name)


class Migration(migrations.Migration):

    dependencies = [("gallery", "0014_user_deletion_sets_null_in_the_database")]

    operations = [migrations.RunPython(names_without_controls, migrations.RunPython.noop)]
