"""What the pages' scripts do, and what the pages offer without them: upload progress and errors tied to
the file field, mask overlays that fail aloud, focus after "Remove overlay", the reset's progress page.

The browser tests drive headless Chromium (as tests/pages/test_browser.py) against the live server,
signed in with a session cookie; no worker runs: an upload's labels are never found here.
"""

import io
import re
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections
from django.templatetags.static import static
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from gallery.models import Mask, ResetJob
from retrieval.models import StagedUploadRecord
from tests.gallery.factories import add_mask, make_image
from tests.pages.test_browser import browser  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


def in_browser(test):
    """A test in a browser, against the live server: its requests see only committed rows."""
    return pytest.mark.integration(pytest.mark.django_db(transaction=True)(test))


@pytest.fixture(autouse=True)
def offline(settings, media_root, tmp_path, monkeypatch):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_SEGMENT_UPLOADS_INLINE = False  # labels are queued for a worker that never comes
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM calls beside Playwright's event loop


def png(name: str, colour=(200, 30, 30), size=(48, 32)) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format="PNG")
    return name, buffer.getvalue()


def signed_in_page(browser, live_server, user, **context_options):  # noqa: F811 - the fixture
    """A page whose context carries a session of `user` (no sign-in form to fill); `context_options` are
    Playwright's (a phone's viewport, is_mobile)."""
    client = Client()
    client.force_login(user)
    context = browser.new_context(**{"viewport": {"width": 1000, "height": 800}, **context_options})
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}])
    page = context.new_page()
    page.set_default_timeout(20_000)
    return page


@pytest.fixture
def close_connections(browser):  # noqa: F811 - the fixture
    """Test code under Playwright runs in a greenlet with its own Django connection: closed here, after
    the test (in the same greenlet), or the test database cannot be dropped at the end."""
    yield
    connections.close_all()


def file_payload(name: str, data: bytes, mime: str = "image/png") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


# Server-rendered markup (no browser)

def test_a_refused_upload_is_tied_to_the_file_field_and_takes_the_focus(client, user):
    client.force_login(user)
    page = client.get(reverse("pages:home")).content.decode()
    assert "<title>Find similar images · ImaginAItion</title>" in page
    assert 'aria-invalid' not in page and 'aria-describedby="upload-help"' in page

    for name, data in (("notes.jpg", b"hello"), ("empty.png", b"")):
        page = client.post(reverse("pages:home"), {"file": SimpleUploadedFile(name, data)}).content.decode()
        field = re.search(r'<input type="file"[^>]*>', page).group(0)
        assert 'aria-invalid="true"' in field and 'aria-describedby="id_file_error upload-help"' in field, name
        assert "autofocus" in field, name
        alert = re.search(r'<div role="alert">(.*?)</div>', page, flags=re.DOTALL).group(1)
        assert 'id="id_file_error"' in alert and "errorlist" in alert, name


def test_the_labels_are_a_second_level_heading_and_their_masks_links_without_the_script(client, user):
    image = make_image(name="cat.png")
    mask = add_mask(image, label="cat")
    client.force_login(user)
    page = client.get(reverse("pages:image", args=[image.pk])).content.decode()
    assert '<h2 id="image-viewer-labels">Detected labels</h2>' in page and "<h3" not in page
    noscript = re.search(r"<noscript>(.*?)</noscript>", page, flags=re.DOTALL).group(1)
    overlay = reverse("pages:mask-overlay", args=[image.pk, mask.pk])
    assert re.search(rf'<a href="{re.escape(overlay)}\?threshold=\d+">cat</a>', noscript)
    assert 'role="status" data-overlay-message="image-viewer"' in page


def test_each_reset_page_has_its_own_title_and_one_h1_and_progress_reloads_without_the_script(
        client, staff_user, settings, tmp_path):
    (tmp_path / "allowed" / "photos").mkdir(parents=True)
    PILImage.new("RGB", (8, 8)).save(tmp_path / "allowed" / "photos" / "a.png")
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path / "allowed"]
    client.force_login(staff_user)
    job = ResetJob.objects.create(folder="/" + "x" * 200, state="queued", created_by=staff_user)
    pages = {
        "Reset / initialize from a folder": client.get(reverse("gallery-reset")),
        "Confirm reset": client.post(reverse("gallery-reset"), {"folder": str(tmp_path / "allowed" / "photos")}),
        "Reset progress": client.get(reverse("gallery-reset-progress", args=[job.pk])),
    }
    for title, response in pages.items():
        page = response.content.decode()
        assert f"<title>{title} | " in page, title
        assert page.count("<h1") == 1, title
        assert f'<link rel="stylesheet" href="{static("admin_reset.css")}">' in page, title
    rules = Path(finders.find("admin_reset.css")).read_text()
    assert "overflow-wrap: anywhere" in rules and "max-width: 100%" in rules  # a long folder name wraps

    progress = pages["Reset progress"].content.decode()
    assert 'style="width: 40em"' not in progress
    live = re.search(r'<p role="status"[^>]*>(.*?)</p>', progress, flags=re.DOTALL).group(1)
    assert 'id="reset-state"' in live and 'id="reset-phase"' in live and "reset-scanned" not in live
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in progress
    ResetJob.objects.filter(pk=job.pk).update(state="done")
    done = client.get(reverse("gallery-reset-progress", args=[job.pk])).content.decode()
    assert 'http-equiv="refresh"' not in done  # finished: nothing more to wait for


# In the browser

@in_browser
def test_a_mask_overlay_that_fails_says_so_and_remove_overlay_keeps_the_focus(live_server, user, browser,
                                                                             close_connections):  # noqa: F811
    image = make_image(name="cat.png")
    add_mask(image, label="cat")
    dog = add_mask(image, label="dog", class_index=12)
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + reverse("pages:image", args=[image.pk]))
    cat = page.get_by_role("button", name=re.compile(r"^cat\b"))

    # "Remove overlay" disables itself: the focus goes back to the label that was shown.
    cat.click()
    page.wait_for_function("() => document.querySelector('#image-viewer').dataset.overlay?.startsWith('cat')")
    page.get_by_role("button", name="Remove overlay").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.getAttribute('aria-pressed')") == "false"
    assert page.evaluate("document.activeElement.textContent.trim()").startswith("cat")
    assert page.get_by_role("button", name="Remove overlay").is_disabled()

    # The dog's mask is gone meanwhile (the image was processed again): its overlay answers 404.
    Mask.objects.filter(pk=dog.pk).delete()
    page.get_by_role("button", name=re.compile(r"^dog\b")).click()
    page.wait_for_function("() => document.querySelector('#image-viewer').dataset.overlay === 'failed'")
    message = page.locator('[data-overlay-message="image-viewer"]')
    assert message.get_attribute("role") == "status"
    assert "The mask of dog could not be loaded" in message.inner_text() and "Reload the page" in message.inner_text()
    assert page.get_by_role("button", name=re.compile(r"^dog\b")).get_attribute("aria-pressed") == "false"
    assert page.locator("#image-viewer img.overlay").is_hidden()
    cat.click()  # another label works, and clears the message
    page.wait_for_function("() => document.querySelector('#image-viewer').dataset.overlay?.startsWith('cat')")
    assert message.inner_text() == ""


@in_browser
def test_an_upload_shows_its_progress_disables_load_and_follows_the_answer(live_server, user, browser,
                                                                          close_connections):  # noqa: F811
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + "/")
    page.evaluate("window.sameDocument = true")

    # A refused file: the answer (the form with its error) replaces the page, the file field focused.
    page.get_by_label("Choose an image file, or drop one here").set_input_files(
        file_payload("notes.png", b"hello, not a picture"))
    with page.expect_request(lambda request: request.method == "POST") as sent:
        page.get_by_role("button", name="Load").click()
    assert "sent=script" in sent.value.url  # the script sent it, not the browser's own submit
    page.locator("#id_file[aria-invalid=true]").wait_for()
    assert page.evaluate("window.sameDocument") is True  # written into this page, not a navigation
    assert "not an image" in page.inner_text("[role=alert]")
    assert page.evaluate("document.activeElement.id") == "id_file"

    # A picture: while it is sent, a progress bar in a status line and Load disabled; then the
    # server's redirect is followed to the page that shows it.
    held = []
    page.route("**/?sent=script", lambda route: held.append(route))
    page.get_by_label("Choose an image file, or drop one here").set_input_files(file_payload(*png("red.png")))
    page.get_by_role("button", name="Load").click()
    page.wait_for_function("() => document.querySelector('[data-upload-status] progress') !== null")
    status = page.locator("[data-upload-status]")
    assert status.get_attribute("role") == "status" and "Uploading red.png" in status.inner_text()
    assert page.get_by_role("button", name="Load").is_disabled()
    while not held:  # the route's handler runs while Playwright waits
        page.wait_for_timeout(50)
    held[0].continue_()
    page.get_by_role("heading", name="Your image: red.png").wait_for()
    assert page.evaluate("window.sameDocument") is None  # a navigation: location.assign
    assert page.url == live_server.url + "/"
    page.unroute("**/?sent=script")
    page.wait_for_load_state()  # the new page's script listens for drops (the heading comes before it runs)

    # A dropped file takes the same way.
    name, data = png("blue.png", (30, 30, 200))
    with page.expect_request(lambda request: request.method == "POST") as sent:
        page.eval_on_selector("form.drop", """(zone, [name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""", [name, list(data)])
    assert "sent=script" in sent.value.url
    page.get_by_role("heading", name="Your image: blue.png").wait_for()


@in_browser
def test_a_file_over_the_limit_is_refused_before_it_is_sent(live_server, user, browser, settings,
                                                           close_connections):  # noqa: F811
    name, data = png("large.png", size=(200, 200))
    settings.IMAGINAITION_MAX_UPLOAD_BYTES = len(data) - 1
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + "/")
    posts = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.get_by_label("Choose an image file, or drop one here").set_input_files(file_payload(name, data))
    page.get_by_role("button", name="Load").click()
    status = page.locator("[data-upload-status]")
    status.get_by_text("the limit is").wait_for()
    assert f"large.png is {len(data):,} bytes; the limit is {len(data) - 1:,} bytes" in status.inner_text()
    assert posts == [] and page.evaluate("document.activeElement.id") == "id_file"
    assert page.get_attribute("#id_file", "aria-invalid") == "true"


@in_browser
def test_a_staged_overlay_that_fails_says_the_picture_was_replaced(live_server, user, browser,
                                                                  close_connections):  # noqa: F811
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + "/")
    page.get_by_label("Choose an image file, or drop one here").set_input_files(file_payload(*png("red.png")))
    page.get_by_role("button", name="Load").click()
    page.get_by_role("heading", name="Your image: red.png").wait_for()
    # Its labels as a worker would have found them (their masks are not needed until a button is pressed).
    StagedUploadRecord.objects.filter(name="red.png").update(
        state="ready", labels=[{"class_index": 8, "label": "cat", "area_fraction": 0.4}])
    page.reload()

    other = page.context.new_page()  # another tab of the same session loads another picture
    other.goto(live_server.url + "/")
    other.get_by_label("Choose an image file, or drop one here").set_input_files(
        file_payload(*png("blue.png", (30, 30, 200))))
    other.get_by_role("button", name="Load").click()
    other.get_by_role("heading", name="Your image: blue.png").wait_for()

    page.get_by_role("button", name=re.compile(r"^cat\b")).click()
    message = page.locator('[data-overlay-message="staged-viewer"]')
    page.wait_for_function(
        "() => document.querySelector('[data-overlay-message=\"staged-viewer\"]').textContent !== ''")
    assert "replaced by blue.png" in message.inner_text() and "Load your picture again" in message.inner_text()
    assert page.get_by_role("button", name=re.compile(r"^cat\b")).get_attribute("aria-pressed") == "false"


@in_browser
def test_a_long_file_name_without_spaces_wraps_on_a_phone(live_server, user, browser, close_connections):  # noqa: F811
    name = "a" * 200 + ".png"
    page = signed_in_page(browser, live_server, user)
    page.set_viewport_size({"width": 375, "height": 800})
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    page.goto(live_server.url + "/")
    page.get_by_label("Choose an image file, or drop one here").set_input_files(file_payload(*png(name)))
    page.get_by_role("button", name="Load").click()
    page.get_by_role("heading", name=f"Your image: {name}").wait_for()
    assert page.evaluate(fits), "the staged picture's heading"
    page.get_by_role("button", name="Add to database").click()
    page.wait_for_url(re.compile(r"/images/\d+/$"))
    assert f"Added {name}" in page.inner_text(".messages") and page.evaluate(fits), "the message"
    page.get_by_text("Delete this image…").click()
    assert page.get_by_role("button", name=f"Delete {name}").is_visible() and page.evaluate(fits), "the button"


@in_browser
def test_the_reset_progress_page_says_state_changes_in_a_live_region(live_server, staff_user, browser,
                                                                    close_connections):  # noqa: F811
    job = ResetJob.objects.create(folder="/photos", state="running", phase="importing files", total_files=10,
                                  scanned=2, created_by=staff_user, rejected=[["b" * 200 + ".txt", "Not an image."]])
    page = signed_in_page(browser, live_server, staff_user)
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(live_server.url + reverse("gallery-reset-progress", args=[job.pk]))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # bars and names fit
    region = "document.getElementById('reset-state').closest('[role=status]')"
    assert page.evaluate(f"{region}.textContent.replace(/\\s+/g, ' ').trim()") == "State: Running — importing files"
    assert page.evaluate(f"{region}.contains(document.getElementById('reset-scanned'))") is False

    ResetJob.objects.filter(pk=job.pk).update(state="done", phase="done: 1 image imported, the indexes built",
                                              scanned=10, imported=1, embedded=1)
    page.wait_for_function(f"() => {region}.textContent.includes('Done — done: 1 image imported')")
    assert page.is_visible("#reset-done a")


@in_browser
def test_a_page_that_follows_an_image_says_when_it_stopped_because_the_user_was_signed_out(
        live_server, user, browser, close_connections):  # noqa: F811
    """Signed out in another tab, the image page's poll got 401 again and again and the page went on saying
    it updates by itself."""
    image = make_image(name="slow.png", status="pending")
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + reverse("pages:image", args=[image.pk]))
    page.context.clear_cookies()  # the session ends
    note = page.get_by_role("alert").filter(has_text="stopped updating")
    note.wait_for()
    assert "you are signed out" in note.inner_text()
    assert note.get_by_role("link", name="Sign in again").get_attribute("href") == (
        reverse("login") + "?next=" + reverse("pages:image", args=[image.pk]).replace("/", "%2F"))


@in_browser
def test_a_preference_slider_restored_by_back_shows_its_own_value(live_server, user, browser,
                                                                  close_connections):  # noqa: F811
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + reverse("pages:preferences"))
    slider = page.locator("#id_split")
    start = int(slider.input_value())
    slider.focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    assert page.inner_text("#id_split-value") == str(start - 5)
    page.get_by_role("link", name="Gallery").first.click()
    page.wait_for_url("**/gallery/")
    page.go_back()
    page.wait_for_function("() => document.readyState === 'complete'")
    restored = slider.input_value()
    assert page.inner_text("#id_split-value") == restored  # it showed the saved value beside a moved slider


def test_the_image_page_is_never_cached_so_back_after_a_delete_asks_again(client, user):
    """Back after deleting an image showed the browser's copy, the image ready with live buttons (a browser
    keeps a page for Back unless it is marked no-store; headless Chromium here asks again either way)."""
    image = make_image(name="going.png")
    client.force_login(user)
    response = client.get(reverse("pages:image", args=[image.pk]))
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
