from django.db import migrations
from django.utils import timezone

SCHEDULE_NAME = "Clear expired sessions"


def schedule_session_cleanup(apps, schema_editor):
    """A daily django-q2 schedule; no cluster named, so only the main cluster runs it (its scheduler
    locks the row: one run however many hosts)."""
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(name=SCHEDULE_NAME, defaults={
        "func": "gallery.accounts.sessions_clear_expired", "schedule_type": "D", "repeats": -1,
        "next_run": timezone.now(), "cluster": None})


def unschedule_session_cleanup(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=SCHEDULE_NAME).delete()


class Migration(migrations.Migration):

    dependencies = [("gallery", "0008_image_orientation"),
                    ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more")]

    operations = [migrations.RunPython(schedule_session_cleanup, unschedule_session_cleanup)]
