"""Sessions end: the expired ones are removed daily by the main workers (Django never removes them), with
old records of sign-ins."""

from datetime import timedelta
from importlib import import_module

import pytest
from axes.models import AccessLog
from django.apps import apps
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import OrmQ, Schedule
from django_q.scheduler import scheduler
from django_q.signing import SignedPackage


@pytest.mark.django_db(transaction=True)  # the scheduler closes the connection
def test_the_main_workers_clear_expired_sessions_daily():
    """Each sign-in, and each visitor's preferences or upload, left a session row for ever."""
    sessions = {}
    for name in ("live", "expired"):
        sessions[name] = SessionStore()
        sessions[name]["visited"] = name
        sessions[name].create()
    Session.objects.filter(session_key=sessions["expired"].session_key).update(
        expire_date=timezone.now() - timedelta(days=1))
    for days_ago in (31, 29):  # django-axes' record of a sign-in: name, address, browser (kept for ever)
        AccessLog.objects.filter(pk=AccessLog.objects.create(username=f"{days_ago} days ago", user_agent="Firefox",
                                                             ip_address="192.0.2.1").pk).update(
            attempt_time=timezone.now() - timedelta(days=days_ago))

    # Made by a migration; a transactional test before this one may have emptied the table: made again.
    import_module("gallery.migrations.0009_clear_expired_sessions_daily").schedule_session_cleanup(apps, None)
    schedule = Schedule.objects.get(name="Clear expired sessions")
    assert schedule.schedule_type == Schedule.DAILY and schedule.repeats < 0
    assert schedule.cluster is None  # the main cluster's, not the interactive one's
    Schedule.objects.filter(pk=schedule.pk).update(next_run=timezone.now() - timedelta(minutes=1))
    Schedule.objects.exclude(pk=schedule.pk).update(next_run=timezone.now() + timedelta(hours=1))  # not theirs
    scheduler()  # what the main cluster's guard runs every 30 s: the task is queued for its workers

    queued = [SignedPackage.loads(task.payload) for task in OrmQ.objects.all()]
    assert [task["func"] for task in queued] == [schedule.func]
    assert Schedule.objects.get(pk=schedule.pk).next_run > timezone.now() + timedelta(hours=23)
    import_string(queued[0]["func"])(*queued[0]["args"], **queued[0]["kwargs"])  # as a worker runs it
    assert list(Session.objects.values_list("session_key", flat=True)) == [sessions["live"].session_key]
    assert list(AccessLog.objects.values_list("username", flat=True)) == ["29 days ago"]  # 30 days kept
