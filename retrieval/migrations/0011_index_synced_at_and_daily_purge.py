from django.db import migrations, models
from django.utils import timezone

SCHEDULE_NAME = "Rebuild indexes that hold deleted images"


def schedule_purge(apps, schema_editor):
    """Daily, on the main cluster (no cluster named; its scheduler locks the row: one run however many hosts)."""
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(name=SCHEDULE_NAME, defaults={
        "func": "retrieval.tasks.purge_deleted_from_indexes", "schedule_type": "D", "repeats": -1,
        "next_run": timezone.now(), "cluster": None})


def unschedule_purge(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=SCHEDULE_NAME).delete()


class Migration(migrations.Migration):

    dependencies = [("retrieval", "0010_deleted_mask_tombstones"), ("gallery", "0009_clear_expired_sessions_daily")]

    operations = [
        migrations.AddField(
            model_name="indexstate",
            name="synced_at",
            field=models.DateTimeField(blank=True, help_text="the file holds what Postgres held then", null=True),
        ),
        migrations.RunPython(schedule_purge, unschedule_purge),
    ]
