"""A request while the database is out of reach: a 503 saying so (pages and the API, the health probe
included), rendered without the session or user it cannot read; answered normally once it is back."""

import contextlib
import logging

import pytest
from django.db import OperationalError, connection, transaction
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db(transaction=True)  # the connection is closed: nothing may hang on it


@contextlib.contextmanager
def database_out_of_reach(where):
    """This process's connections go to a socket folder with no server: each connection attempt fails
    as it does while the database is stopped or restarting."""
    real = connection.get_connection_params
    connection.close()
    connection.get_connection_params = lambda: {**real(), "host": str(where)}
    try:
        yield
    finally:
        connection.close()
        del connection.get_connection_params  # the class's method again


def test_a_request_while_the_database_is_down_is_a_503_saying_so(user, tmp_path, caplog):
    key = Token.objects.create(user=user).key
    client = Client(raise_request_exception=False)  # as a served request: the error is answered, not raised
    client.force_login(user)

    with database_out_of_reach(tmp_path / "no-server-here"), caplog.at_level("ERROR", logger="django.request"):
        page = client.get(reverse("pages:gallery"))
        probe = client.get("/api/status/", headers={"authorization": f"Token {key}"})

    # One line each, naming the error (a 108-line traceback for every request while it lasted).
    logged = [record for record in caplog.records if record.name == "django.request"]
    assert len(logged) == 2 and all(record.status_code == 503 and record.exc_info is None for record in logged)
    assert logged[-1].getMessage().startswith("Service Unavailable: /api/status/ (OperationalError: ")
    assert all("\n" not in record.getMessage() for record in logged)

    assert page.status_code == 503 and page["Retry-After"] == "15"
    assert "<h1>Database unavailable</h1>" in page.content.decode()
    assert probe.status_code == 503 and probe["Retry-After"] == "15"
    assert probe.json() == {"detail": "The service cannot reach its database just now; try again in a moment."}
    assert client.get(reverse("pages:gallery")).status_code == 200  # back: the same session goes on
    assert client.get("/api/status/", headers={"authorization": f"Token {key}"}).status_code == 200


def test_a_database_error_with_the_database_up_is_still_a_500(user, monkeypatch):
    def timed_out(**kwargs):  # a real statement timeout: an OperationalError too, with the connection fine
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = 1")
            cursor.execute("SELECT pg_sleep(1)")

    monkeypatch.setattr("retrieval.views.preferences_get", timed_out)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    answer = client.get(reverse("pages:preferences"))
    assert answer.status_code == 500 and "Something went wrong" in answer.content.decode()


def test_the_workers_log_a_failed_queue_poll_during_an_outage_on_one_line(caplog, tmp_path):
    """django-q2's "Failed to pull task from broker", every few seconds per cluster, came with 60 lines of
    traceback each while the database was out of reach."""
    with database_out_of_reach(tmp_path / "no-server-here"), caplog.at_level("ERROR", logger="django-q"):
        try:
            connection.ensure_connection()
        except OperationalError:
            logging.getLogger("django-q").exception("Failed to pull task from broker")  # as its pusher logs it
        try:
            raise ValueError("a fault of ours")
        except ValueError:
            logging.getLogger("django-q").exception("Failed to pull task from broker")
    outage, fault = [record for record in caplog.records if record.name == "django-q"]
    assert outage.exc_info is None and outage.getMessage().startswith(
        "Failed to pull task from broker (OperationalError: connection ")
    assert fault.exc_info is not None  # any other error keeps its traceback
