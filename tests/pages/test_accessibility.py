"""Accessibility found by a QA run: where the focus lands and what is announced after a reload, an upload,
a form sent back with errors; titles that say the page; controls that are told apart without colour.

Browser tests as in test_page_scripts.py: headless Chromium against the live server, no worker.
"""

import html
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from gallery.models import Image
from retrieval.models import StagedUploadRecord
from tests.gallery.factories import add_mask, make_image
from tests.pages.test_browser import browser  # noqa: F401 - the fixture
from tests.pages.test_page_scripts import (  # noqa: F401 - the fixtures
    close_connections, file_payload, in_browser, offline, png, signed_in_page)
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


@in_browser
def test_search_similar_of_a_pending_image_is_reached_by_tab_and_says_why_but_does_not_search(
        live_server, user, browser, close_connections):  # noqa: F811
    """It was `disabled`: Tab skipped it, so keyboard and screen-reader users never heard why."""
    image = make_image(name="slow.png", status="pending")
    image_url = live_server.url + reverse("pages:image", args=[image.pk])
    page = signed_in_page(browser, live_server, user)
    page.goto(image_url)
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.textContent.trim()") == "Search similar from here":
            break
    else:
        pytest.fail("Tab never reached Search similar from here")
    button = page.get_by_role("button", name="Search similar from here")
    assert button.get_attribute("aria-disabled") == "true"
    assert button.get_attribute("aria-describedby") == "image-status"
    assert "Being processed" in page.inner_text("#image-status")
    searches = []
    page.on("request", lambda request: searches.append(request.url) if "/search/" in request.url else None)
    page.keyboard.press("Enter")
    button.click(force=True)  # Playwright holds back from an aria-disabled button; a mouse does not
    page.wait_for_timeout(300)
    assert searches == [] and page.url == image_url

    # Sent without the script, the server refuses it and says why.
    client = Client()
    client.force_login(user)
    refused = client.get(reverse("pages:search"), {"image": image.pk}, follow=True)
    assert refused.redirect_chain[-1][0] == reverse("pages:image", args=[image.pk])
    assert "has not been embedded yet" in refused.content.decode()


def test_a_form_sent_back_with_errors_focuses_its_first_invalid_field_and_marks_it(client, user, staff_user,
                                                                                   settings, tmp_path):
    """Preferences (k=0) and admin's reset (/etc) left the focus on the body, the reset's error unannounced;
    a refused sign-in said why in an alert that its fields were not tied to."""
    def tag(page: str, field_id: str) -> str:
        return re.search(rf'<input[^>]*id="{field_id}"[^>]*>', page).group(0)

    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    client.force_login(user)
    page = client.post(reverse("pages:preferences"), {"k": 0, "mask_threshold": 50, "split": 50,
                                                      "preferred_index": "semantic"}).content.decode()
    assert 'role="alert"' in page
    k = tag(page, "id_k")
    assert "autofocus" in k and 'aria-invalid="true"' in k and "id_k_error" in k
    assert page.count("autofocus") == 1

    # Django's own password form focuses the old password; the first invalid field wins.
    page = client.post(reverse("password_change"), {"old_password": "s3cret-Pass!", "new_password1": "a-Long-pass-1",
                                                   "new_password2": "different-2"}).content.decode()
    assert "autofocus" in tag(page, "id_new_password2") and page.count("autofocus") == 1

    client.logout()
    page = client.post(reverse("login"), {"username": "alice", "password": "wrong"}).content.decode()
    assert re.search(r'<p class="error" role="alert" id="sign-in-error">', page)
    for field_id in ("id_username", "id_password"):
        field = tag(page, field_id)
        assert 'aria-invalid="true"' in field and 'aria-describedby="sign-in-error"' in field
    assert "autofocus" in tag(page, "id_username")
    assert "aria-invalid" not in client.get(reverse("login")).content.decode()

    client.force_login(staff_user)
    page = client.post(reverse("gallery-reset"), {"folder": "/etc"}).content.decode()
    assert re.search(r'<p class="errornote" role="alert">', page)
    folder = tag(page, "id_folder")
    assert "autofocus" in folder and 'aria-invalid="true"' in folder and "id_folder_error" in folder
    # A start refused after the review comes back to the form with the reason in an alert.
    refused = client.post(reverse("gallery-reset-start"), {"folder": "/etc"}, follow=True).content.decode()
    assert re.search(r'<li class="error"><span role="alert">', refused)


@in_browser
def test_the_focus_lands_on_the_first_invalid_field(live_server, user, staff_user, browser, settings, tmp_path,
                                                    close_connections):  # noqa: F811
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    for who, url, field, value, button in ((user, reverse("pages:preferences"), "id_k", "0", "Save"),
                                           (staff_user, reverse("gallery-reset"), "id_folder", "/etc", "Next: review")):
        page = signed_in_page(browser, live_server, who)
        page.goto(live_server.url + url)
        page.fill(f"#{field}", value)
        page.get_by_role("button", name=button).click()
        page.get_by_role("alert").wait_for()
        assert page.evaluate("() => document.activeElement.id") == field


@in_browser
def test_an_image_processed_meanwhile_reloads_to_its_status_and_says_so_or_offers_the_reload(
        live_server, user, browser, close_connections):  # noqa: F811
    """The page reloaded with the focus on the body, saying nothing, wherever the user had been."""
    image = make_image(name="slow.png", status="pending")
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + reverse("pages:image", args=[image.pk]))
    page.evaluate("() => { window.samePage = true; }")
    Image.objects.filter(pk=image.pk).update(status="ready", masks_status="ready")
    page.locator('[data-status="ready"]').wait_for()  # the focus was on the body: it reloaded by itself
    assert page.evaluate("() => window.samePage") is None
    assert page.evaluate("() => document.activeElement.id") == "image-status"
    page.get_by_role("status").filter(has_text="Processing has finished.").wait_for()

    # The focus on a control (a link, here): the page offers the reload and keeps the focus where it is.
    other = make_image(name="slower.png", color=(1, 2, 3), status="pending")
    page.goto(live_server.url + reverse("pages:image", args=[other.pk]))
    page.evaluate("() => { window.samePage = true; }")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Gallery").focus()
    Image.objects.filter(pk=other.pk).update(status="ready", masks_status="ready")
    notice = page.get_by_role("status").filter(has_text="Processing has finished.")
    notice.wait_for()
    assert page.evaluate("() => window.samePage") is True
    assert page.evaluate("() => document.activeElement.textContent") == "Gallery"
    notice.get_by_role("button", name="Reload the page").click()
    page.locator('[data-status="ready"]').wait_for()
    assert page.evaluate("() => window.samePage") is None
    assert page.evaluate("() => document.activeElement.id") == "image-status"

    # The focus below the picture ("Search similar from here", waiting): the offer sat above the picture, out of
    # view, and the button's description still said "this page updates by itself"; the vectors ready before the
    # masks were announced as "Processing has finished."
    page.set_viewport_size({"width": 360, "height": 640})
    last = make_image(name="slowest.png", color=(3, 2, 1), size=(800, 1200), status="pending")
    page.goto(live_server.url + reverse("pages:image", args=[last.pk]))
    page.get_by_role("button", name="Search similar from here").focus()
    page.evaluate("() => { window.samePage = true; window.scrollTo(0, document.body.scrollHeight); }")
    Image.objects.filter(pk=last.pk).update(status="ready")  # its masks still pending
    notice = page.get_by_role("status").filter(has_text="The search vectors are ready; the labels and masks are "
                                                       "still being made.")
    notice.wait_for()
    assert page.evaluate("() => window.samePage") is True
    in_view = notice.evaluate("(e) => { const box = e.getBoundingClientRect(); "
                              "return box.top >= 0 && box.bottom <= innerHeight && box.right <= innerWidth; }")
    assert in_view, notice.bounding_box()
    described_by = page.evaluate("() => document.getElementById(document.activeElement"
                                 ".getAttribute('aria-describedby')).innerText")
    assert "Reload the page to see it." in described_by and "updates by itself" not in described_by
    notice.get_by_role("button", name="Reload the page").click()
    page.locator('[data-status="ready"]').wait_for()
    assert page.evaluate("() => window.samePage") is None
    assert page.evaluate("() => document.activeElement.id") == "image-status"


@in_browser
def test_a_loaded_picture_takes_the_focus_and_its_labels_take_it_when_found(live_server, user, browser,
                                                                            close_connections):  # noqa: F811
    """After Load the focus was on the body at the page's top, the upload ~54 Tab presses away (every gallery
    label a checkbox, twice)."""
    for index, label in enumerate(("cat", "dog", "sofa", "tree", "car", "person", "bird", "boat")):
        add_mask(make_image(name=f"{label}.png", color=(index, 2, 3)), label=label, class_index=index + 1)
    page = signed_in_page(browser, live_server, user)
    page.goto(live_server.url + "/")
    page.get_by_label("Choose an image file, or drop one here").set_input_files(file_payload(*png("red.png")))
    page.get_by_role("button", name="Load").click()
    page.get_by_role("heading", name="Your image: red.png").wait_for()
    page.wait_for_function("() => document.activeElement.id === 'staged-title'")
    assert page.evaluate("() => { const box = document.activeElement.getBoundingClientRect();"
                         " return box.top >= 0 && box.bottom <= innerHeight; }")
    presses = 0
    while page.evaluate("() => document.activeElement.textContent.trim()") != "Search similar":
        page.keyboard.press("Tab")
        presses += 1
        assert presses <= 3, "Search similar is more than 3 Tab presses from the upload's heading"
    # The label filter is folded, not gone.
    page.get_by_text("Only images with some labels").last.click()
    assert page.get_by_role("group", name="Only images with").last.get_by_label("cat").is_visible()

    # Its labels are found (by a worker, here by hand): the page reloads to them and says so (the filter
    # folded again and the focus off it: an open one would have been offered the reload, not lost).
    page.get_by_text("Only images with some labels").last.click()
    page.evaluate("() => document.activeElement.blur()")
    StagedUploadRecord.objects.filter(name="red.png").update(
        state="ready", labels=[{"class_index": 8, "label": "cat", "area_fraction": 0.4}])
    page.get_by_role("button", name=re.compile(r"^cat\b")).wait_for()
    assert page.evaluate("() => document.activeElement.id") == "staged-viewer-labels"
    page.get_by_role("status").filter(has_text="Processing has finished.").wait_for()


# Reflow (WCAG 1.4.10): what a QA run found at phone and tablet widths, admin's sidebar open from 768 px.

LAYOUT_PROBLEMS = """([inside, apart, whole]) => {
    const problems = [], name = (e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
        + [...e.classList].map((c) => '.' + c).join('');
    if (document.documentElement.scrollWidth > innerWidth || scrollX !== 0)
        problems.push(`page ${document.documentElement.scrollWidth} px wide in ${innerWidth}, at x ${scrollX}`);
    for (const [selector, container] of inside) {  // within its container's box, and showing all it holds
        const found = document.querySelectorAll(selector);
        if (!found.length) problems.push(`no ${selector}`);
        for (const element of found) {
            const box = element.getBoundingClientRect(), bound = element.closest(container).getBoundingClientRect();
            if (box.left < bound.left - 0.5 || box.right > bound.right + 0.5)
                problems.push(`${name(element)} ${Math.round(box.left)}-${Math.round(box.right)} out of ${container} `
                              + `${Math.round(bound.left)}-${Math.round(bound.right)}`);
            if (element.scrollWidth > element.clientWidth + 1)
                problems.push(`${name(element)} holds ${element.scrollWidth} px in ${element.clientWidth}`);
        }
    }
    for (const [first, second] of apart) {  // the first's text (a heading's block is wider) off the second's box
        const range = document.createRange(), element = document.querySelector(first);
        range.selectNodeContents(element);
        const b = document.querySelector(second).getBoundingClientRect(),
              inked = element.matches('select') ? element.getClientRects() : range.getClientRects();
        if ([...inked].some((a) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom))
            problems.push(`${first} overlaps ${second}`);
    }
    for (const selector of whole) {  // its text on one line (a flex item's wrapped text is one box: count lines)
        const found = document.querySelectorAll(selector);
        if (!found.length) problems.push(`no ${selector}`);
        for (const element of found) {
            const range = document.createRange();
            range.selectNodeContents(element);
            const lines = new Set([...range.getClientRects()].map((r) => Math.round(r.bottom))).size;
            if (lines > 1 || element.getClientRects().length > 1)
                problems.push(`"${element.textContent.trim()}" on ${lines} lines`);
        }
    }
    return problems;
}"""


@in_browser
def test_admin_and_gallery_pages_fit_phone_and_tablet_widths(live_server, staff_user, browser, settings, tmp_path,
                                                             monkeypatch, close_connections):  # noqa: F811
    (tmp_path / "photos").mkdir()
    settings.IMAGINAITION_IMPORT_ROOTS = [tmp_path]
    monkeypatch.setattr("gallery.views.GALLERY_PAGE_SIZE", 1)  # three pages of the gallery
    image = make_image(name=f"{'long-name-' * 8}.png", size=(640, 480))  # a 512 px preview
    for index in range(2):
        make_image(name=f"{index}.png", color=(index, 9, 9))
    row = ".form-row"

    def refused_reset(page):  # the focus goes to the folder: a page wider than the screen opened scrolled
        page.goto(live_server.url + reverse("gallery-reset"))
        page.fill("#id_folder", "/etc")
        page.get_by_role("button", name="Next: review").click()
        page.get_by_role("alert").wait_for()
        return [["#id_folder", row]], [], []

    def reset_confirmation(page):
        page.goto(live_server.url + reverse("gallery-reset"))
        page.fill("#id_folder", str(tmp_path / "photos"))
        page.get_by_role("button", name="Next: review").click()
        page.get_by_role("heading", name="Are you sure?").wait_for()
        return [], [], ["a.cancel-link"]

    def image_change(page):
        page.goto(live_server.url + reverse("admin:gallery_image_change", args=[image.pk]))
        page.wait_for_function("() => document.querySelector('img.shown-512').complete")
        box = page.eval_on_selector("img.shown-512", "i => [i.width, i.height, i.naturalWidth, i.naturalHeight]")
        assert box[0] <= 512 and abs(box[0] / box[1] - box[2] / box[3]) < 0.02, box  # at most 512 px, not squashed
        return ([["img.shown-512", row], [".field-sha256 .readonly", row], [".field-stored_file a", row]],
                [["#content h2", ".object-tools"]], [])

    def image_list(page):
        page.goto(live_server.url + reverse("admin:gallery_image_changelist"))
        return [], [["#content h1", ".object-tools"], ["select[name=action]", "#changelist-filter"]], []

    def gallery_page(page):
        page.goto(live_server.url + reverse("pages:gallery") + "?page=2")
        return [], [], ["nav.pager > *"]

    problems = {}
    for width in (320, 375, 768, 1024):
        page = signed_in_page(browser, live_server, staff_user, viewport={"width": width, "height": 800})
        for check in (refused_reset, reset_confirmation, image_change, image_list, gallery_page):
            found = page.evaluate(LAYOUT_PROBLEMS, check(page))
            if found:
                problems[f"{check.__name__} at {width} px"] = found
        page.context.close()
    assert not problems, "\n".join(f"{where}: {found}" for where, found in problems.items())


@in_browser
def test_the_browsable_api_is_laid_out_at_a_phones_width(live_server, user, browser, close_connections):  # noqa: F811
    """Without a viewport tag a phone lays a page out 980 px wide and shrinks it to fit."""
    image = make_image(name="red.png")
    page = signed_in_page(browser, live_server, user, viewport={"width": 375, "height": 800}, is_mobile=True)
    for path in ("/api/", f"/api/images/{image.pk}/", "/api/status/", "/api/search/"):
        page.goto(live_server.url + path)
        assert page.evaluate("() => [innerWidth, document.documentElement.scrollWidth]") == [375, 375], path


def test_each_result_link_is_described_by_how_it_was_found(client, user):
    """Moving by Tab or a screen reader's list of links announced "1. coffee.jpg" only: how the result was found
    (its frame's colour, and the text beside the link) was not part of it."""
    images = [embedded_image(f"img{i}.png", i) for i in range(4)]
    client.force_login(user)
    page = client.get(reverse("pages:search"), {"image": images[0].pk}).content.decode()
    links = re.findall(r'<li class="hit (\w+)".*?<a href="[^"]+" aria-describedby="([^"]+)">', page, flags=re.DOTALL)
    assert len(links) == 3
    for kind, described_by in links:
        description = re.search(rf'id="{described_by}">(.*?)</span>', page, flags=re.DOTALL).group(1)
        assert f"found by {kind}" in description and "semantic" in description, description
