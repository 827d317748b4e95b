"""The pages' Content-Security-Policy: scripts and styles only from the site's files, nothing inline.

Every page sends the policy (django-csp); no template or admin field writes an inline script or style,
so a script injected into a page would not run; in Chromium no page reports a violation of it, and the
scripts the policy lets run still do their work (Swagger UI draws the API, the reset page follows its job).
"""

import re
from pathlib import Path

import pytest
from django.urls import reverse

from gallery.models import ResetJob
from tests.conftest import REPO
from tests.gallery.factories import add_mask, make_image
from tests.pages.test_browser import browser  # noqa: F401 - the fixture
from tests.pages.test_page_scripts import close_connections, in_browser, signed_in_page  # noqa: F401

pytestmark = pytest.mark.django_db

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I)
INLINE_STYLE = re.compile(r"<style\b|\sstyle=", re.I)


def directives(header: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


@pytest.fixture(autouse=True)
def offline(settings, media_root, monkeypatch):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM calls beside Playwright's event loop


def site_pages(staff_user) -> list[str]:
    image = make_image(name="red.png")
    mask = add_mask(image)
    job = ResetJob.objects.create(folder="/photos", state="running", phase="importing files", total_files=3,
                                  created_by=staff_user)
    return [reverse("pages:gallery"), reverse("pages:image", args=[image.pk]), reverse("pages:home"),
            reverse("pages:preferences"), reverse("password_change"), reverse("admin:index"),
            reverse("admin:gallery_image_changelist"), reverse("admin:gallery_image_change", args=[image.pk]),
            reverse("admin:gallery_mask_change", args=[mask.pk]), reverse("gallery-reset"),
            reverse("gallery-reset-progress", args=[job.pk])]


def test_every_page_sends_the_policy_and_writes_no_inline_script_or_style(client, staff_user):
    pages = site_pages(staff_user)
    signed_out = client.get(reverse("login"))
    client.force_login(staff_user)
    for url, response in [(reverse("login"), signed_out), *((url, client.get(url)) for url in pages)]:
        assert response.status_code == 200, url
        policy = directives(response["Content-Security-Policy"])
        assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"], (url, policy)
        assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"], url
        html = response.content.decode()
        assert not INLINE_SCRIPT.search(html), (url, INLINE_SCRIPT.search(html))
        assert not INLINE_STYLE.search(html), (url, html[INLINE_STYLE.search(html).start():][:200])


def test_api_pages_run_no_inline_script_and_uploaded_files_keep_their_own_stricter_policy(client, staff_user):
    client.force_login(staff_user)
    docs = client.get("/api/docs/")
    assert not INLINE_SCRIPT.search(docs.content.decode())  # Swagger UI's start-up script is a file of its own
    policy = directives(docs["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'", "'unsafe-inline'"]
    start_up = client.get("/api/docs/?script=")
    assert start_up.status_code == 200 and start_up["Content-Type"].startswith("application/javascript")
    assert b"/api/schema/" in start_up.content

    browsable = client.get("/api/images/", HTTP_ACCEPT="text/html")
    assert browsable.status_code == 200 and not INLINE_SCRIPT.search(browsable.content.decode())
    assert directives(browsable["Content-Security-Policy"])["script-src"] == ["'self'"]

    image = make_image()
    served = client.get(reverse("gallery:image-file", args=[image.pk]))
    assert served["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'; sandbox"


def test_no_other_site_may_load_the_services_responses_into_its_pages(client, staff_user):
    """Cross-Origin-Resource-Policy: another site's script or picture element loads nothing of the service: Swagger UI's
    start-up script holds the caller's CSRF token, and a private gallery's pictures are no one else's."""
    client.force_login(staff_user)
    image = make_image()
    for path in ("/api/docs/?script=", "/api/docs/", "/api/images/", "/", reverse("login"),
                 reverse("gallery:image-file", args=[image.pk]), "/no-such-page"):
        assert client.get(path)["Cross-Origin-Resource-Policy"] == "same-origin", path


def test_no_template_or_admin_field_writes_an_inline_script_or_style():
    """Pages not opened above (admin's "Search similar", the sign-in throttle's, error pages) too."""
    sources = [*Path(REPO, "templates").rglob("*.html"), *Path(REPO, "gallery").glob("*.py"),
               *Path(REPO, "retrieval").glob("*.py"), *Path(REPO, "imaginaition_site").glob("*.py")]
    found = [(str(path.relative_to(REPO)), match.group(0)) for path in sources
             for match in [*INLINE_SCRIPT.finditer(path.read_text()), *INLINE_STYLE.finditer(path.read_text())]]
    assert found == []


VIOLATIONS = """window.violations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.violations.push(e.violatedDirective + " " + e.blockedURI + " " + e.sourceFile));"""


@in_browser
def test_no_page_breaks_the_policy_in_a_browser_and_its_scripts_still_work(live_server, staff_user, browser,
                                                                           close_connections):  # noqa: F811
    pages = site_pages(staff_user)
    page = signed_in_page(browser, live_server, staff_user)
    page.context.add_init_script(VIOLATIONS)
    for url in pages:
        page.goto(live_server.url + url)
        page.wait_for_load_state("load")
        assert page.evaluate("window.violations") == [], url

    page.goto(live_server.url + reverse("admin:gallery_image_change", args=[pages[1].split("/")[-2]]))
    shown = page.locator("img.shown-512")  # the size its inline style gave it, from a class now (narrower on a phone)
    assert shown.evaluate("img => getComputedStyle(img).maxWidth") == "min(512px, 100%)"

    page.goto(live_server.url + "/api/docs/")
    page.locator(".opblock").first.wait_for()  # Swagger UI drew the API's operations: its scripts ran
    assert page.evaluate("window.violations") == []

    job = ResetJob.objects.get()
    page.goto(live_server.url + reverse("gallery-reset-progress", args=[job.pk]))
    ResetJob.objects.filter(pk=job.pk).update(state="done", phase="done: 3 images imported", scanned=3, imported=3)
    page.wait_for_function("() => document.getElementById('reset-phase').textContent.includes('3 images imported')")
    assert page.evaluate("window.violations") == []
