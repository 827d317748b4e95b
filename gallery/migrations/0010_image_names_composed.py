import unicodedata

from django.db import migrations

# As gallery.services.stored_name has it (a migration keeps its own copy: the code may change later).
BIDI_CONTROLS = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def names_composed(apps, schema_editor):
    """Names stored before: composed (NFC) and without bidirectional controls, as new ones are."""
    Image = apps.get_model("gallery", "Image")
    for image in Image.objects.filter(original_name__regex=r"[^ -~]").only("pk", "original_name").iterator():
        name = unicodedata.normalize("NFC", image.original_name).translate(BIDI_CONTROLS)
        if name != image.original_name:
            Image.objects.filter(pk=image.pk).update(original_name=name or "upload")


class Migration(migrations.Migration):

    dependencies = [("gallery", "0009_clear_expired_sessions_daily")]

    operations = [migrations.RunPython(names_composed, migrations.RunPython.noop)]
