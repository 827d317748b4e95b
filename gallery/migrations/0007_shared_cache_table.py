from django.conf import settings
from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    """The table of settings.CACHES["shared"] (Django's database cache: request rates and other counts
    every process must share); Django makes it with `createcachetable`, which skips a table already there."""
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


def drop_cache_table(apps, schema_editor):
    table = settings.CACHES[settings.SHARED_CACHE]["LOCATION"]
    schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(table)}")


class Migration(migrations.Migration):

    dependencies = [("gallery", "0006_image_segmented_by")]

    operations = [migrations.RunPython(create_cache_table, drop_cache_table)]
