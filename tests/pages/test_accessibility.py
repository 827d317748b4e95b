"""Accessibility found by a QA run: where the focus lands and what is announced after a reload, an upload,
a form sent back with errors; titles that say the page; controls that are told apart without colour.

Browser tests as in test_page_scripts.py: headless Chromium against the live server, no worker.
"""

import pytest
from django.urls import reverse

from tests.pages.test_browser import browser  # noqa: F401 - the fixture
from tests.pages.test_page_scripts import (  # noqa: F401 - the fixtures
    close_connections, in_browser, offline, signed_in_page)

pytestmark = pytest.mark.django_db


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
