"""The pages' scripts when a request is slow, hangs or gets no answer, and when the user leaves meanwhile.

Browser tests as in test_page_scripts.py: headless Chromium against the live server, no worker. A hang is a
route whose handler keeps the request unanswered; a lost connection is `route.abort()` or CDP's offline mode.
"""

import re
import time

import pytest
from django.urls import reverse

from gallery.models import Image
from retrieval.models import StagedUploadRecord
from tests.gallery.factories import add_mask, make_image
from tests.pages.test_browser import browser  # noqa: F401 - the fixture
from tests.pages.test_page_scripts import (  # noqa: F401 - the fixtures
    close_connections, file_payload, in_browser, offline, png, signed_in_page)

pytestmark = pytest.mark.django_db

CHOOSE_ONE = "Choose an image file, or drop one here"


def until(page, condition, timeout: float = 20) -> None:
    """Wait for a condition of the test's own (route handlers run only while Playwright waits)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(50)


def load_picture(page, name: str = "red.png") -> None:
    """Load a picture on the search page; no worker runs, so its labels stay "being found"."""
    page.get_by_label(CHOOSE_ONE).set_input_files(file_payload(*png(name)))
    page.get_by_role("button", name="Load").click()
    page.get_by_role("heading", name=f"Your image: {name}").wait_for()
    page.wait_for_load_state()


@in_browser
def test_leaving_a_page_that_polls_is_not_undone_by_a_reload(live_server, user, browser,  # noqa: F811
                                                             close_connections):
    """Add to database (slow to answer) made the labels' poll get 404 and reload: the user landed back on `/`."""
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + "/")
    polls = []  # a poll in flight, answered once the user is leaving
    page.route(re.compile(r"/upload/state/\?"), lambda route: polls.append(route))
    load_picture(page)
    until(page, lambda: polls)
    added = []  # the server has added it (the upload is gone); its answer is late
    page.route("**/upload/add/", lambda route: added.append((route, route.fetch(max_redirects=0))))
    page.get_by_role("button", name="Add to database").click(no_wait_after=True)
    until(page, lambda: added)
    with page.expect_response(re.compile(r"/upload/state/\?")) as poll:
        polls[0].continue_()
    assert poll.value.status == 404
    page.wait_for_timeout(500)  # a reload would have cancelled the navigation by now
    route, answer = added[0]
    route.fulfill(response=answer)
    page.wait_for_url(re.compile(r"/images/\d+/$"))

    # The image page's poll, when processing ends while a link is followed.
    image = make_image(name="slow.png", status="pending")
    image_url, state_url = (live_server.url + reverse(name, args=[image.pk]) for name in ("pages:image", "api-image"))
    polls.clear()
    page.route(state_url, lambda route: polls.append(route))
    page.goto(image_url)
    until(page, lambda: polls)
    reloads = []
    page.on("request", lambda request: reloads.append(request) if request.url == image_url else None)
    followed = []
    page.route("**/gallery/", lambda route: followed.append(route))
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Gallery").click(no_wait_after=True)
    until(page, lambda: followed)
    Image.objects.filter(pk=image.pk).update(status="ready", masks_status="ready")
    with page.expect_response(state_url):
        polls[0].continue_()
    page.wait_for_timeout(500)
    assert reloads == []
    followed[0].continue_()
    page.wait_for_url("**/gallery/")


def gallery_page(browser, live_server, user):  # noqa: F811 - the fixture
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + reverse("pages:gallery"))
    return page


CHOOSE_MANY = "Choose image files (as many as you like), or drop them here"


@in_browser
def test_leaving_while_images_are_added_asks_first(live_server, user, browser, close_connections):  # noqa: F811
    """Following a link while "Add images" sent its files dropped the ones not yet sent without a word."""
    page = gallery_page(browser, live_server, user)
    asked = []
    page.on("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))  # dismissed: stay
    held = []
    page.route("**" + reverse("pages:images-add"), lambda route: held.append(route))
    page.get_by_label(CHOOSE_MANY).set_input_files([file_payload(*png("red.png")),
                                                    file_payload(*png("blue.png", (30, 30, 200)))])
    page.get_by_role("button", name="Add to the gallery").click()
    until(page, lambda: held)
    search = page.get_by_role("navigation", name="Main").get_by_role("link", name="Search")
    search.click(no_wait_after=True)
    until(page, lambda: asked)
    assert asked == ["beforeunload"] and page.url.endswith(reverse("pages:gallery"))

    held.pop().continue_()
    until(page, lambda: held)
    held.pop().continue_()
    page.get_by_text("Done: 2 added").wait_for()
    search.click()  # done: nothing to ask
    page.wait_for_url(live_server.url + "/")
    assert asked == ["beforeunload"]


@in_browser
def test_a_keyboard_upload_keeps_the_focus_on_its_progress_and_each_progress_bar_is_named(
        live_server, user, browser, close_connections):  # noqa: F811
    """Load pressed by keyboard left the focus on <body> while it worked and after a lost connection; the
    progress bars had no name."""
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + "/")
    held = []
    page.route("**/?sent=script", lambda route: held.append(route))
    page.get_by_label(CHOOSE_ONE).set_input_files(file_payload(*png("red.png")))
    page.get_by_role("button", name="Load").focus()
    page.keyboard.press("Enter")
    until(page, lambda: held)
    assert page.evaluate("() => document.activeElement.matches('[data-upload-status]')")
    assert page.get_by_role("progressbar", name="Uploading the picture").is_visible()
    held[0].abort("connectionreset")
    page.get_by_text("The upload did not reach the server").wait_for()
    assert page.evaluate("() => document.activeElement.textContent") == "Load"

    page = gallery_page(browser, live_server, user)
    page.route("**" + reverse("pages:images-add"), lambda route: None)  # never answered
    page.get_by_label(CHOOSE_MANY).set_input_files([file_payload(*png("red.png"))])
    page.get_by_role("button", name="Add to the gallery").click()
    assert page.get_by_role("progressbar", name="Adding images").is_visible()


def add_red_blue_green(page, answer) -> str:
    """Add three files from the gallery page, each request answered by `answer` (a Playwright route
    handler); returns the add address's route pattern, for unroute."""
    add_url = "**" + reverse("pages:images-add")
    page.route(add_url, answer)
    page.get_by_label(CHOOSE_MANY).set_input_files([file_payload(*png(name, colour)) for name, colour in (
        ("red.png", (200, 30, 30)), ("blue.png", (30, 30, 200)), ("green.png", (30, 200, 30)))])
    page.get_by_role("button", name="Add to the gallery").click()
    return add_url


@in_browser
def test_add_images_tells_no_answer_from_a_refusal_and_sends_those_again(live_server, user, browser,  # noqa: F811
                                                                          close_connections):
    """Lost connections were counted as refused, one that the server had stored was said not to have reached
    it, and the chooser was cleared: the failed files had to be found again."""
    page = gallery_page(browser, live_server, user)

    def connection_lost(route):
        body = route.request.post_data_buffer
        if b'filename="blue.png"' in body:
            route.fetch()  # stored; its answer is lost on the way back
            route.abort("connectionreset")
        elif b'filename="green.png"' in body:
            route.abort("connectionreset")  # lost on the way there
        else:
            route.continue_()

    add_url = add_red_blue_green(page, connection_lost)
    page.get_by_text("Done: 1 added, 0 already there, 0 refused, 2 with no answer.").wait_for()
    lines = page.eval_on_selector_all("[data-add-results] li.error", "items => items.map(i => i.textContent)")
    assert lines == [f"{name}: no answer from the server (connection lost): it may not have been added; adding it "
                     "again is safe — a copy already there is recognised." for name in ("blue.png", "green.png")]
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["blue.png", "red.png"]

    page.unroute(add_url)
    sent = []
    page.route(add_url, lambda route: (sent.append(route.request.post_data_buffer), route.continue_()))
    page.get_by_role("button", name="Try the 2 again").click()
    page.get_by_text("Done: 1 added, 1 already there, 0 refused.").wait_for()
    assert [re.search(rb'filename="(\w+\.png)"', body).group(1) for body in sent] == [b"blue.png", b"green.png"]
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["blue.png", "green.png", "red.png"]
    assert page.get_by_role("button", name=re.compile("again")).is_hidden()


@in_browser
def test_adding_files_says_when_the_service_failed_rather_than_refused_them_and_offers_them_again(
        live_server, user, browser, media_root, close_connections):  # noqa: F811
    """A 503 (the database restarting) or a 500 read "the server refused it (503)", as if the file were at fault,
    and was not offered again."""
    page = gallery_page(browser, live_server, user)
    failures = {b'filename="blue.png"': 503, b'filename="green.png"': 500}

    def failing(route):
        status = next((code for name, code in failures.items() if name in route.request.post_data_buffer), None)
        if status:
            route.fulfill(status=status, content_type="text/html", body="<h1>Database unavailable</h1>")
        else:
            route.continue_()

    add_url = add_red_blue_green(page, failing)
    page.get_by_text("Done: 1 added, 0 already there, 0 refused, 2 failed on the server.").wait_for()
    lines = page.eval_on_selector_all("[data-add-results] li.error", "items => items.map(i => i.textContent)")
    assert lines == ["blue.png: the service is unavailable just now (503: its database or storage is out of reach): "
                     "it was not added; try it again in a moment.",
                     "green.png: the service failed on it (500): it may not have been added; adding it again is safe "
                     "— a copy already there is recognised."]
    page.unroute(add_url)
    page.get_by_role("button", name="Try the 2 again").click()
    page.get_by_text("Done: 2 added, 0 already there, 0 refused.").wait_for()
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["blue.png", "green.png", "red.png"]


@in_browser
def test_files_left_when_the_user_was_signed_out_are_not_sent_and_are_offered_again(
        live_server, user, browser, media_root, close_connections):  # noqa: F811
    """Signed out in another tab mid-way, each file left was sent, counted "refused" and not offered again:
    they had to be found and chosen again."""
    page = gallery_page(browser, live_server, user)
    sent = []

    def signed_out_at_blue(route):
        sent.append(re.search(rb'filename="(\w+\.png)"', route.request.post_data_buffer).group(1))
        if sent[-1] == b"blue.png":  # what the server answers a request without a session: the sign-in page
            route.fulfill(status=302, headers={"Location": reverse("login") + "?next=" + reverse("pages:gallery")})
        else:
            route.continue_()

    add_url = add_red_blue_green(page, signed_out_at_blue)
    page.get_by_text("Done: 1 added, 0 already there, 0 refused, 2 not sent.").wait_for()
    assert sent == [b"red.png", b"blue.png"]  # green.png would have met the same
    lines = page.eval_on_selector_all("[data-add-results] li.error", "items => items.map(i => i.textContent)")
    assert lines == ["blue.png: not added: you are signed out.", "green.png: not sent: you are signed out."]
    sign_in = page.get_by_role("link", name="Sign in again (in a new tab)")
    assert sign_in.get_attribute("target") == "_blank" and sign_in.get_attribute("href") == (
        reverse("login") + "?next=" + reverse("pages:gallery").replace("/", "%2F"))
    page.unroute(add_url)
    page.get_by_role("button", name="Try the 2 again").click()
    page.get_by_text("Done: 2 added, 0 already there, 0 refused.").wait_for()
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["blue.png", "green.png", "red.png"]


@in_browser
def test_an_upload_that_gets_no_answer_can_be_cancelled(live_server, user, browser, close_connections):  # noqa: F811
    """A request never answered left the upload "reading the picture…" and "Add images" "Adding 1 of 1" for ever,
    their buttons disabled."""
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + "/")
    page.route("**/?sent=script", lambda route: None)  # never answered
    page.get_by_label(CHOOSE_ONE).set_input_files(file_payload(*png("red.png")))
    page.get_by_role("button", name="Load").focus()
    page.keyboard.press("Enter")
    cancel = page.get_by_role("button", name="Cancel", exact=True)
    cancel.wait_for()
    page.keyboard.press("Tab")  # from the progress, which has the focus
    assert page.evaluate("() => document.activeElement.textContent") == "Cancel"
    page.keyboard.press("Enter")
    page.get_by_text("Upload cancelled: red.png was not loaded.").wait_for()
    assert cancel.is_hidden() and page.evaluate("() => document.activeElement.textContent") == "Load"
    page.unroute("**/?sent=script")
    page.get_by_label(CHOOSE_ONE).set_input_files(file_payload(*png("blue.png", (30, 30, 200))))
    page.get_by_role("button", name="Load").click()
    page.get_by_role("heading", name="Your image: blue.png").wait_for()

    page = gallery_page(browser, live_server, user)
    page.route("**" + reverse("pages:images-add"),
               lambda route: None if b'filename="blue.png"' in route.request.post_data_buffer else route.continue_())
    page.get_by_label(CHOOSE_MANY).set_input_files([file_payload(*png(name, colour)) for name, colour in (
        ("red.png", (200, 30, 30)), ("blue.png", (30, 30, 200)), ("green.png", (30, 200, 30)))])
    page.get_by_role("button", name="Add to the gallery").click()
    page.get_by_text("Adding 2 of 3: blue.png").wait_for()
    page.get_by_role("button", name="Cancel adding").click()
    page.get_by_text("Cancelled: 1 added, 0 already there, 0 refused, 1 with no answer, 1 not sent.").wait_for()
    lines = page.eval_on_selector_all("[data-add-results] li", "items => items.map(i => i.textContent)")
    assert lines[1:] == ["blue.png: cancelled before the server answered: it may not have been added; adding it "
                         "again is safe — a copy already there is recognised.", "green.png: not sent (cancelled)."]
    assert page.evaluate("() => document.activeElement.matches('[data-add-progress]')")
    assert page.get_by_role("button", name="Cancel adding").is_hidden()
    assert page.get_by_role("button", name="Add to the gallery").is_enabled()
    assert page.get_by_role("button", name="Try the 2 again").is_visible()


@in_browser
def test_a_mask_overlay_that_fails_while_offline_says_the_server_could_not_be_reached(
        live_server, user, browser, close_connections):  # noqa: F811
    """With the network down, a failed overlay was blamed on a deleted image or an expired upload."""
    image = make_image(name="cat.png")
    add_mask(image, label="cat")
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + reverse("pages:image", args=[image.pk]))
    page.context.set_offline(True)
    page.get_by_role("button", name=re.compile(r"^cat\b")).click()
    message = page.locator('[data-overlay-message="image-viewer"]')
    message.get_by_text("could not be loaded").wait_for()
    assert message.inner_text() == ("The mask of cat could not be loaded: the server could not be reached. "
                                    "Check the connection, then press cat again.")
    page.context.set_offline(False)

    page.goto(live_server.url + "/")
    load_picture(page)
    StagedUploadRecord.objects.filter(name="red.png").update(
        state="ready", labels=[{"class_index": 8, "label": "cat", "area_fraction": 0.4}])
    page.reload()
    page.context.set_offline(True)
    page.get_by_role("button", name=re.compile(r"^cat\b")).click()
    message = page.locator('[data-overlay-message="staged-viewer"]')
    message.get_by_text("could not be loaded").wait_for()
    assert "the server could not be reached" in message.inner_text()


@in_browser
@pytest.mark.parametrize(("outcome", "news", "shown"), [
    ({"status": "ready", "masks_status": "ready"}, "Processing has finished.", '[data-status="ready"]'),
    # A failed image (or an upload whose labels were not found) announced "Processing has finished.".
    ({"status": "failed", "error": "The picture could not be decoded."}, "Processing failed; the page says why.",
     "text=The picture could not be decoded.")], ids=["ready", "failed"])
def test_an_image_done_while_its_delete_confirmation_is_open_offers_the_reload(live_server, user, browser,  # noqa: F811
                                                                              close_connections, outcome, news, shown):
    """The page reloaded itself when processing finished, closing the open "Delete this image…"."""
    image = make_image(name="slow.png", status="pending")
    Image.objects.filter(pk=image.pk).update(added_by=user)
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + reverse("pages:image", args=[image.pk]))
    page.evaluate("() => { window.samePage = true; }")
    page.get_by_text("Delete this image…").click()
    Image.objects.filter(pk=image.pk).update(**outcome)
    notice = page.get_by_role("status").filter(has_text=news)
    notice.wait_for()
    assert page.evaluate("() => window.samePage") is True
    assert page.evaluate("() => document.querySelector('details').open") is True
    notice.get_by_role("button", name="Reload").click()
    page.locator(shown).wait_for()
    assert page.evaluate("() => window.samePage") is None


@in_browser
def test_a_page_that_follows_an_image_says_when_the_server_does_not_answer(live_server, user, browser,  # noqa: F811
                                                                          close_connections):
    """With the server out of reach, the page said nothing ("this page updates by itself" for ever)."""
    image = make_image(name="slow.png", status="pending")
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + reverse("pages:image", args=[image.pk]))
    page.context.set_offline(True)
    notice = page.locator("#image-status + [role=status]")
    notice.get_by_text("No answer from the server; still trying.").wait_for()
    page.context.set_offline(False)
    page.wait_for_function("() => document.querySelector('#image-status + [role=status]').textContent === ''")
    Image.objects.filter(pk=image.pk).update(status="ready", masks_status="ready")
    page.locator('[data-status="ready"]').wait_for()  # still following it
