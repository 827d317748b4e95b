"""Deleting an account leaves its images (and reset jobs) "added by nobody" in the database itself.

Django's SET_NULL updates the rows it found before it deletes the user: an image the account added after
that (an upload loop, a running reset) still referred to it, and the deletion failed (IntegrityError, a
500). The foreign keys become ON DELETE SET NULL, so PostgreSQL clears what Django did not see. Django
does not write this clause (through 5.2): an AlterField of these fields would drop it, so keep it there.
"""

from django.conf import settings
from django.db import migrations

COLUMNS = (("gallery", "image", "added_by_id"), ("gallery", "resetjob", "created_by_id"))


def _foreign_keys(apps, schema_editor, action: str) -> None:
    users = apps.get_model(settings.AUTH_USER_MODEL)._meta.db_table
    quote = schema_editor.quote_name
    for app, model, column in COLUMNS:
        table = apps.get_model(app, model)._meta.db_table
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT c.conname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
                "AND a.attnum = ANY (c.conkey) WHERE c.conrelid = %s::regclass AND c.contype = 'f' "
                "AND a.attname = %s", [table, column])
            names = [row[0] for row in cursor.fetchall()]
        for name in names:
            schema_editor.execute(f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)}")
            schema_editor.execute(
                f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} FOREIGN KEY ({quote(column)}) "
                f"REFERENCES {quote(users)} (id) {action} DEFERRABLE INITIALLY DEFERRED")


def set_null_in_the_database(apps, schema_editor) -> None:
    _foreign_keys(apps, schema_editor, "ON DELETE SET NULL")


def as_django_makes_them(apps, schema_editor) -> None:
    _foreign_keys(apps, schema_editor, "")


class Migration(migrations.Migration):

    dependencies = [
        ("gallery", "0013_reset_job_phase_longer"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(set_null_in_the_database, as_django_makes_them)]
