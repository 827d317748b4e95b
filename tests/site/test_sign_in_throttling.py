"""Sign-in throttling (django-axes): failed sign-ins of one user name from one address lock that pair."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse

pytestmark = pytest.mark.django_db

RIGHT = {"username": "alice", "password": "s3cret-Pass!"}
WRONG = {"username": "alice", "password": "not-her-password"}


def sign_in(client, credentials, *, address="10.0.0.1", url=None):
    return client.post(url or reverse("login"), credentials, REMOTE_ADDR=address)


def fail(client, times, **where):
    for _ in range(times):
        response = sign_in(client, WRONG, **where)
        assert response.status_code == 200 and "did not match" in response.content.decode()


def test_after_the_limit_even_the_right_password_is_refused_with_how_long_to_wait(client, user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    fail(client, 2)
    response = sign_in(client, WRONG)  # the third failure locks the pair
    assert response.status_code == 429

    response = sign_in(client, RIGHT)
    page = response.content.decode()
    assert response.status_code == 429 and "_auth_user_id" not in client.session
    assert "Too many sign-in attempts" in page and "<strong>alice</strong>" in page
    assert "15 minutes" in page and "axes_reset_username alice" in page and response["Retry-After"] == "900"


def test_a_user_name_longer_than_any_account_s_fails_like_any_wrong_one(client, user, settings):
    settings.AXES_FAILURE_LIMIT = 2
    longest = {"username": "z" * 300, "password": "whatever"}  # over axes' 255-character column: was a 500
    response = sign_in(client, longest)
    assert response.status_code == 200 and "did not match" in response.content.decode()
    assert sign_in(client, longest).status_code == 429  # counted under its first 150 characters


def test_the_lock_holds_one_name_from_one_address_only(client, user, django_user_model, settings):
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_user("bob", password="b0b-Pass-word!")
    fail(client, 2)
    assert sign_in(client, WRONG).status_code == 429

    assert sign_in(client, {"username": "bob", "password": "b0b-Pass-word!"}).status_code == 302  # another name
    client.logout()
    assert sign_in(client, RIGHT, address="10.0.0.2").status_code == 302  # another address


def test_a_successful_sign_in_clears_the_count(client, user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    fail(client, 2)
    assert sign_in(client, RIGHT).status_code == 302
    client.logout()
    fail(client, 2)  # would have been the fourth and fifth failure
    assert sign_in(client, RIGHT).status_code == 302


def test_admin_sign_in_counts_and_is_locked_alike(client, staff_user, settings):
    settings.AXES_FAILURE_LIMIT = 2
    admin_login = reverse("admin:login")
    for _ in range(2):
        sign_in(client, {"username": staff_user.username, "password": "wrong"}, url=admin_login)
    right = {"username": staff_user.username, "password": "s3cret-Pass!"}
    assert sign_in(client, right, url=admin_login).status_code == 429
    assert sign_in(client, right, url=reverse("login")).status_code == 429  # one count for both pages


def test_the_lock_ends_after_the_cool_off_and_an_administrator_can_lift_it(client, user, settings):
    settings.AXES_FAILURE_LIMIT = 2
    fail(client, 1)
    assert sign_in(client, WRONG).status_code == 429
    assert sign_in(client, RIGHT).status_code == 429

    call_command("axes_reset_username", "alice")
    assert sign_in(client, RIGHT).status_code == 302
    client.logout()

    settings.AXES_COOLOFF_TIME = timedelta(seconds=0)  # the wait is over for every earlier failure
    fail(client, 1)
    sign_in(client, WRONG)
    assert sign_in(client, RIGHT).status_code == 302


@pytest.mark.parametrize("page", ["password_change", "admin:password_change"])
def test_wrong_old_passwords_on_a_password_change_count_like_failed_sign_ins(client, staff_user, settings, page):
    """Django's password-change form checked the old password where axes never saw it: a stolen session
    could guess it without end."""
    settings.AXES_FAILURE_LIMIT = 3
    client.force_login(staff_user)
    url = reverse(page)
    right = {"old_password": "s3cret-Pass!", "new_password1": "An0ther-Long-pass", "new_password2": "An0ther-Long-pass"}
    wrong = {**right, "old_password": "a-guess"}
    for _ in range(2):
        response = client.post(url, wrong, REMOTE_ADDR="10.0.0.1")
        assert response.status_code == 200 and "incorrectly" in response.content.decode()
    assert client.post(url, wrong, REMOTE_ADDR="10.0.0.1").status_code == 429  # the third locks the pair

    response = client.post(url, right, REMOTE_ADDR="10.0.0.1")
    assert response.status_code == 429 and "Too many" in response.content.decode()
    staff_user.refresh_from_db()
    assert staff_user.check_password("s3cret-Pass!")  # not changed while locked
    client.logout()
    assert sign_in(client, {"username": staff_user.username, "password": "s3cret-Pass!"}).status_code == 429

    call_command("axes_reset_username", staff_user.username)
    client.force_login(staff_user)
    done = client.post(url, right, REMOTE_ADDR="10.0.0.1")
    assert done.status_code == 302 and done["Location"] == reverse(page + "_done")
    staff_user.refresh_from_db()
    assert staff_user.check_password("An0ther-Long-pass")


def test_the_right_old_password_on_a_password_change_clears_the_count_as_a_sign_in_does(client, staff_user, settings):
    """It was left at its failures: one mistyped sign-in afterwards locked the user out."""
    settings.AXES_FAILURE_LIMIT = 3
    client.force_login(staff_user)
    url = reverse("password_change")
    fields = {"new_password1": "An0ther-Long-pass", "new_password2": "An0ther-Long-pass"}
    for _ in range(2):
        client.post(url, {"old_password": "a-guess", **fields}, REMOTE_ADDR="10.0.0.1")
    assert client.post(url, {"old_password": "s3cret-Pass!", **fields}, REMOTE_ADDR="10.0.0.1").status_code == 302
    client.logout()
    wrong = {"username": staff_user.username, "password": "mistyped"}
    assert sign_in(client, wrong).status_code == 200  # the first failure of a new count, not the third
    assert sign_in(client, {"username": staff_user.username, "password": "An0ther-Long-pass"}).status_code == 302
