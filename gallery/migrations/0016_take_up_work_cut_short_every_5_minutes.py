from datetime import timedelta

from django.db import migrations
from django.utils import timezone

SCHEDULE_NAME = "Take up work cut short"  # runs gallery.work_resume.work_cut_short_resume_scheduled


def schedule_resume(apps, schema_editor):
    """Every 5 minutes on the main cluster (its scheduler locks the row: one run however many hosts): the
    images an `import_folder --sync` killed with SIGKILL left waiting, with no task that would reach them,
    were queued only when a cluster started again."""
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(name=SCHEDULE_NAME, defaults={
        "func": "gallery.work_resume.work_cut_short_resume_scheduled", "schedule_type": "I", "minutes": 5,
        "repeats": -1, "next_run": timezone.now() + timedelta(minutes=5), "cluster": None})


def unschedule_resume(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=SCHEDULE_NAME).delete()


class Migration(migrations.Migration):

    dependencies = [("gallery", "0015_image_names_without_controls"),
                    ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more")]

    operations = [migrations.RunPython(schedule_resume, unschedule_resume)]
