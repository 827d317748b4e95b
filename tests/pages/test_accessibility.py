"""Accessibility found by a QA run: where the focus lands and what is announced after a reload, an upload,
a form sent back with errors; titles that say the page; controls that are told apart without colour.

Browser tests as in test_page_scripts.py: headless Chromium against the live server, no worker.
"""

import html
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from tests.pages.test_browser import browser  # noqa: F401 - the fixture
from tests.pages.test_page_scripts import (  # noqa: F401 - the fixtures
    close_connections, in_browser, offline, signed_in_page)
from tests.pages.test_pages import embedded_image

pytestmark = pytest.mark.django_db


def title(response) -> str:
    return html.unescape(re.search(r"<title>(.*?)</title>", response.content.decode(), flags=re.DOTALL).group(1))


def h1(response) -> str:
    return html.unescape(re.search(r"<h1>(.*?)</h1>", response.content.decode(), flags=re.DOTALL).group(1))


def test_a_results_page_is_titled_by_its_heading(client, user):
    """Every results page was titled "Results · ImaginAItion", whatever its h1 said."""
    image = embedded_image("chelsea.png", seed=1)
    embedded_image("coffee.png", seed=2)
    client.force_login(user)
    for query in ({"image": image.pk}, {"text": "a cat"}):  # a region's ("the cat in …") is the same template
        response = client.get(reverse("pages:search"), query)
        assert response.status_code == 200, query
        assert h1(response).startswith("Images similar to "), query
        assert title(response) == f"{h1(response)} · ImaginAItion", query


def test_a_form_sent_back_with_errors_says_so_in_the_title(client, user, staff_user, settings, tmp_path):
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    client.force_login(user)
    assert title(client.get(reverse("pages:preferences"))) == "Preferences · ImaginAItion"
    assert title(client.post(reverse("pages:preferences"), {"k": 0})) == "Error: Preferences · ImaginAItion"
    assert title(client.get(reverse("pages:home"))) == "Find similar images · ImaginAItion"
    refused = client.post(reverse("pages:home"), {"file": SimpleUploadedFile("notes.png", b"hello")})
    assert title(refused) == "Error: Find similar images · ImaginAItion"
    client.logout()
    assert title(client.get(reverse("login"))) == "Sign in · ImaginAItion"
    wrong = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert title(wrong) == "Error: Sign in · ImaginAItion"
    client.force_login(staff_user)
    assert title(client.get(reverse("gallery-reset"))).startswith("Reset / initialize from a folder | ")
    assert title(client.post(reverse("gallery-reset"), {"folder": "/etc"})).startswith(
        "Error: Reset / initialize from a folder | ")


@in_browser
def test_admin_breadcrumb_links_are_underlined(live_server, staff_user, browser, close_connections):  # noqa: F811
    """Told from the breadcrumb text by colour alone (1.42:1): axe's link-in-text-block."""
    page = signed_in_page(browser, live_server, staff_user)
    for url in (reverse("gallery-reset"), reverse("admin:gallery_image_changelist")):
        page.goto(live_server.url + url)
        links = page.locator("div.breadcrumbs a")
        assert links.count() >= 1, url
        decorations = links.evaluate_all("(links) => links.map((a) => getComputedStyle(a).textDecorationLine)")
        assert all("underline" in decoration for decoration in decorations), (url, decorations)
