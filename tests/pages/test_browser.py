"""End to end in a real browser: sign in, upload, wait for real workers, masks, search, preferences.

Headless Debian Chromium driven by Playwright against pytest-django's live server, with a real
qcluster on the test database and the offline model profile. Screenshots go to test-artifacts/.
"""

import base64
import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from django.db import connections
from PIL import Image as PILImage

from gallery.models import Image
from tests.conftest import REPO, wait_for

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
FRAME_COLOURS = {"both": "rgb(173, 216, 230)", "semantic": "rgb(60, 179, 113)", "content": "rgb(240, 128, 128)"}
PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture
def offline_site(settings, media_root, tmp_path, monkeypatch):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    # Playwright's sync API keeps an event loop in this thread; the ORM calls made here are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    return {"IMAGINAITION_WORKERS": "1",  # one process loads the models once (two cores here)
            "IMAGINAITION_MODEL_PROFILE": "offline", "IMAGINAITION_MEDIA_ROOT": str(media_root),
            "IMAGINAITION_INDEX_DIR": str(settings.IMAGINAITION_INDEX_DIR)}


@pytest.fixture
def photos(tmp_path) -> dict[str, str]:
    from skimage import data as skdata

    paths = {}
    for name in PHOTOS:
        path = tmp_path / f"{name}.jpg"
        PILImage.fromarray(getattr(skdata, name)()).save(path, format="JPEG", quality=90)
        paths[name] = str(path)
    return paths


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def warm_up_web_models() -> None:
    """The live server runs in this process: load its models while the workers load theirs."""
    from retrieval.encoders.registry import active_models, get_model

    models = active_models()
    for key in (models.segmenter, models.semantic):
        get_model(key)


def drop_file(page, selector: str, path: str) -> None:
    """Drop a file on an element, as dragging it from the desktop does."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    page.eval_on_selector(selector, """(zone, [name, data]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/jpeg"}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", [Path(path).name, data])


def frames(page) -> dict[str, int]:
    kinds = page.eval_on_selector_all("#results li.hit", "items => items.map(i => i.dataset.retrievedBy)")
    return {kind: kinds.count(kind) for kind in FRAME_COLOURS}


def legend(page) -> dict[str, int]:
    return {kind: int(page.inner_text(f'#legend [data-count="{kind}"]')) for kind in FRAME_COLOURS}


def check_results(page) -> dict[str, int]:
    """Each result is framed in its colour and the legend counts match the frames."""
    found = frames(page)
    assert legend(page) == found
    for kind, colour in FRAME_COLOURS.items():
        colours = page.eval_on_selector_all(f"#results li.hit.{kind}",
                                            "items => items.map(i => getComputedStyle(i).borderTopColor)")
        assert set(colours) <= {colour}, (kind, colours)
    return found


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def test_sign_in_upload_wait_overlay_search_and_preferences(live_server, start_worker, user, offline_site, photos,
                                                            browser):
    ARTIFACTS.mkdir(exist_ok=True)
    worker = start_worker(**offline_site)
    threading.Thread(target=warm_up_web_models, daemon=True).start()
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(60_000)
    url = live_server.url

    # Private gallery: the main page asks to sign in first.
    page.goto(url + "/")
    assert "/accounts/login/" in page.url
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("s3cret-Pass!")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + "/")

    # Upload: the labels of a file not yet added, and its mask overlay.
    ids = {}
    for name in PHOTOS:
        page.goto(url + "/")
        if name == "astronaut":
            drop_file(page, "form.drop", photos[name])
        else:
            page.get_by_label("Choose an image file, or drop one here").set_input_files(photos[name])
            page.get_by_role("button", name="Load").click()
        page.get_by_role("heading", name=f"Your image: {name}.jpg").wait_for()
        if name == "chelsea":
            assert page.get_by_role("button", name=re.compile(r"^cat\b")).count() == 1
            viewer = page.locator("#staged-viewer")
            before = viewer.screenshot()
            page.get_by_role("button", name=re.compile(r"^cat\b")).click()
            page.wait_for_function("() => document.querySelector('#staged-viewer').dataset.overlay?.startsWith('cat')")
            assert pixels(viewer.screenshot()).mean() < pixels(before).mean() - 5  # outside the cat: dimmed
            page.screenshot(path=ARTIFACTS / "main.png", full_page=True)
        page.get_by_role("button", name="Add to database").click()
        page.wait_for_url(re.compile(r"/images/\d+/$"))
        assert "it is being processed" in page.inner_text(".messages")
        ids[name] = int(page.url.rstrip("/").rsplit("/", 1)[1])

    # The same bytes again: recognised, not added twice.
    page.goto(url + "/")
    page.get_by_label("Choose an image file, or drop one here").set_input_files(photos["coffee"])
    page.get_by_role("button", name="Load").click()
    page.get_by_role("button", name="Add to database").click()
    page.wait_for_url(url + f"/images/{ids['coffee']}/")
    assert "already in the database" in page.inner_text(".messages")

    # A pending image's page polls the API and shows the result by itself.
    page.goto(url + f"/images/{ids['astronaut']}/")

    def processed():
        if worker.process.poll() is not None:
            pytest.fail(f"qcluster exited:\n{worker.log()}")
        return Image.objects.filter(pk__in=ids.values(), status="ready", masks_status="ready").count() == len(ids)

    wait_for(processed, timeout=300, interval=1, message="the workers to process the three photos")
    # Under Playwright this code runs in a greenlet with its own Django connection: close it, or
    # the test database cannot be dropped at the end.
    connections.close_all()
    page.locator('[data-status="ready"]').wait_for(timeout=30_000)
    page.locator('[data-masks-status="ready"]').wait_for(timeout=30_000)
    assert page.locator("[data-poll-url]").count() == 0

    # Open one from the gallery; a label's overlay changes the picture, "Remove overlay" restores it.
    page.goto(url + "/gallery/")
    page.get_by_role("link", name="chelsea.jpg").first.click()
    page.wait_for_url(url + f"/images/{ids['chelsea']}/")
    page.screenshot(path=ARTIFACTS / "image.png", full_page=True)
    viewer = page.locator("#image-viewer")
    page.wait_for_function("() => [...document.querySelectorAll('#image-viewer img')]"
                           ".every(i => i.hidden || i.complete)")
    plain = viewer.screenshot()
    page.get_by_role("button", name=re.compile(r"^cat\b")).click()
    page.wait_for_function("() => document.querySelector('#image-viewer').dataset.overlay?.startsWith('cat')")
    with_cat = viewer.screenshot()
    assert with_cat != plain
    assert pixels(with_cat).mean() < pixels(plain).mean() - 5
    page.get_by_role("button", name="Remove overlay").click()
    assert page.locator("#image-viewer img.overlay").is_hidden()
    assert np.abs(pixels(viewer.screenshot()) - pixels(plain)).mean() < 1

    # Search with the cat's region: images ranked by their best region, each outlined.
    page.get_by_role("link", name=re.compile(r"Search with this region \(cat\)")).click()
    page.wait_for_url(re.compile(r"/search/\?mask=\d+"))
    assert "the cat in chelsea.jpg" in page.inner_text("h1")
    hits = page.locator("#results li.hit")
    assert hits.count() >= 1 and page.locator("#results img.region-overlay").count() == hits.count()
    page.wait_for_function("() => [...document.querySelectorAll('#results img.region-overlay')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert "matched region" in hits.first.inner_text()
    page.screenshot(path=ARTIFACTS / "region-results.png", full_page=True)
    page.go_back()
    page.wait_for_url(url + f"/images/{ids['chelsea']}/")

    # Search similar with the defaults (k 50, both first): the two others, found by both indexes.
    page.get_by_role("button", name="Search similar from here").click()
    page.wait_for_url(re.compile(r"/search/\?image="))
    found = check_results(page)
    assert found == {"both": 2, "semantic": 0, "content": 0}
    page.screenshot(path=ARTIFACTS / "results.png", full_page=True)
    results_url = page.url

    # Preferences: k 2 and intersection off; the places are now split between the two indexes.
    page.get_by_role("link", name="Preferences", exact=True).click()
    page.get_by_label("Number of results (k)").fill("0")
    page.get_by_role("button", name="Save").click()
    assert "Ensure this value is greater than or equal to 1" in page.inner_text("form.prefs")
    page.get_by_label("Number of results (k)").fill("2")
    page.get_by_label("Show images found by both indexes first").uncheck()
    page.get_by_role("button", name="Save").click()
    assert "Preferences saved." in page.inner_text(".messages")
    # Said by a screen reader: a live region filled as the page loads is not, so the words come a moment later.
    page.wait_for_function("() => document.querySelector('[role=status][data-messages-said]')"
                           "?.textContent.includes('Preferences saved.')")
    assert page.locator("ul.messages[role]").count() == 0  # one region says them, once
    assert page.get_by_label("Number of results (k)").input_value() == "2"
    page.screenshot(path=ARTIFACTS / "preferences.png", full_page=True)
    page.goto(results_url)
    # One place each; the two other images were returned by both indexes, and are framed so wherever placed.
    assert check_results(page) == {"both": 2, "semantic": 0, "content": 0}

    # Search by words: semantic results only, the cat first.
    page.goto(url + "/")
    page.get_by_label("Describe what you are looking for").fill("a cat")
    page.get_by_role("button", name="Search by text").click()
    page.wait_for_url(re.compile(r"/search/\?text="))
    assert check_results(page) == {"both": 0, "semantic": 2, "content": 0}
    assert "chelsea.jpg" in page.locator("#results li.hit").first.inner_text()

    # Readable on a phone too.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, storage_state=page.context.storage_state())
    phone_page = phone.new_page()
    phone_page.goto(results_url)
    assert phone_page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    phone_page.screenshot(path=ARTIFACTS / "results-phone.png", full_page=True)
    phone_page.goto(url + "/")
    assert phone_page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.django_db(transaction=True)
def test_the_reset_progress_page_follows_the_job_and_says_when_it_gets_no_answer(live_server, staff_user, browser,
                                                                                 monkeypatch):
    from django.urls import reverse

    from gallery.models import ResetJob

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # ORM calls beside Playwright's event loop

    job = ResetJob.objects.create(folder="/photos", state="running", phase="importing files", total_files=10,
                                  scanned=2, created_by=staff_user)
    page = browser.new_context().new_page()
    page.set_default_timeout(30_000)
    page.goto(live_server.url + "/admin/login/")
    page.fill("#id_username", "staff")
    page.fill("#id_password", "s3cret-Pass!")
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/admin/$"))
    page.goto(live_server.url + reverse("gallery-reset-progress", args=[job.pk]))
    assert page.inner_text("#reset-scanned") == "2"
    assert page.is_hidden("#reset-error")  # no error: admin's style showed an empty red box through `hidden`

    ResetJob.objects.filter(pk=job.pk).update(scanned=7, imported=6, embedded=9)  # 3 uploads made meanwhile
    page.wait_for_function("() => document.getElementById('reset-scanned').textContent === '7'")
    assert page.eval_on_selector("#reset-processed-bar", "bar => [bar.value, bar.max]") == [9, 9]
    assert page.is_hidden("#reset-contact")

    ResetJob.objects.filter(pk=job.pk).delete()  # its status URL now answers 404: polling must not stop silently
    page.wait_for_selector("#reset-contact", state="visible")
    assert "No answer about the reset (the server answered 404); asking again" in page.inner_text("#reset-contact")
    # Under Playwright this code runs in a greenlet with its own Django connection: close it, or the test
    # database cannot be dropped at the end (as in the test above).
    connections.close_all()


def gallery_signed_in(browser, url: str):
    """A page of the gallery, signed in as alice (the sign-in page sends her back to it)."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(60_000)
    page.goto(url + "/gallery/")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("s3cret-Pass!")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + "/gallery/")
    return page


def test_adding_several_files_from_the_gallery_lists_what_became_of_each(live_server, user, offline_site, photos,
                                                                          browser, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    page = gallery_signed_in(browser, live_server.url)

    chosen = [photos["chelsea"], str(notes), photos["coffee"], photos["chelsea"]]
    page.get_by_label("Choose image files (as many as you like), or drop them here").set_input_files(chosen)
    page.evaluate("""() => { const status = document.querySelector('[data-add-progress]'); window.said = [];
        new MutationObserver(() => said.push(status.textContent))
          .observe(status, {subtree: true, childList: true, characterData: true}); }""")
    page.get_by_role("button", name="Add to the gallery").focus()
    page.keyboard.press("Enter")  # by keyboard: the focus goes to the progress it reads next, not to nowhere
    page.wait_for_selector("text=Done: 2 added, 1 already there, 1 refused.")
    # How much of each file has gone, while it goes (the bar counted files only: empty for a minute on a phone).
    said = page.evaluate("() => said.map((text) => text.trim())")
    assert "Adding 1 of 4: chelsea.jpg (sent; the server is storing it)" in said, said
    assert page.evaluate("document.activeElement.matches('[data-add-progress]')")
    lines = page.eval_on_selector_all("[data-add-results] li", "items => items.map(i => i.textContent)")
    assert lines[0] == "chelsea.jpg: added; it is being processed."
    assert lines[2] == "coffee.jpg: added; it is being processed."
    assert lines[1].startswith("notes.txt: ") and lines[3] == "chelsea.jpg: already in the gallery."
    assert page.eval_on_selector_all("[data-add-results] li.error", "items => items.length") == 1
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["chelsea.jpg", "coffee.jpg"]
    # Signed out and in again in another tab (a new CSRF token): this page's next add still goes through.
    other = page.context.new_page()
    other.goto(live_server.url + "/gallery/")
    other.get_by_role("button", name="Sign out (alice)").click()
    other.goto(live_server.url + "/accounts/login/")
    other.get_by_label("User name").fill("alice")
    other.get_by_label("Password").fill("s3cret-Pass!")
    other.get_by_role("button", name="Sign in").click()
    other.wait_for_url(live_server.url + "/")
    page.get_by_label("Choose image files (as many as you like), or drop them here").set_input_files(
        [photos["coffee"]])
    page.get_by_role("button", name="Add to the gallery").click()
    page.wait_for_selector("text=Done: 0 added, 1 already there, 0 refused.")
    page.get_by_role("link", name="coffee.jpg").first.click()  # each added file links to its page
    page.wait_for_url(re.compile(r"/images/\d+/$"))


def test_adding_several_files_stops_sending_once_the_storage_fails(live_server, user, offline_site, photos, browser,
                                                                  monkeypatch):
    """The page sends one file per request: each went on to wait for the storage's timeout (90 s for 3 files
    while a bucket hung), though the first had said the storage failed."""
    from gallery.storage import AtomicFileSystemStorage

    tried, working_save = [], AtomicFileSystemStorage._save

    def storage_down(self, name, content):
        if tried == ["back"]:
            return working_save(self, name, content)
        tried.append(name)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(AtomicFileSystemStorage, "_save", storage_down)
    page = gallery_signed_in(browser, live_server.url)
    page.get_by_label("Choose image files (as many as you like), or drop them here").set_input_files(
        [photos["chelsea"], photos["coffee"], photos["astronaut"]])
    page.get_by_role("button", name="Add to the gallery").click()
    page.wait_for_selector("text=Done: 0 added, 0 already there, 0 refused, 1 failed on the server, 2 not sent.")
    lines = page.eval_on_selector_all("[data-add-results] li", "items => items.map(i => i.textContent)")
    assert lines[0].startswith("chelsea.jpg: Storing the file failed: Input/output error")
    assert [line.split(": ", 1)[0] for line in lines[1:]] == ["coffee.jpg", "astronaut.jpg"]
    assert all(": Not tried: storing the file before it failed (Storing the file failed" in line for line in lines[1:])
    assert len(tried) == 1 and not Image.objects.exists()
    tried[:] = ["back"]  # the storage is back: the files are offered again, not to be chosen again
    page.get_by_role("button", name="Try the 3 again").click()
    page.wait_for_selector("text=Done: 3 added, 0 already there, 0 refused.")
    assert Image.objects.count() == 3
    connections.close_all()  # this greenlet's own connection (see above)


def contrast(first: str, second: str) -> float:
    """WCAG's contrast ratio of two CSS rgb()/rgba() colours as a browser computes them."""
    def luminance(color: str) -> float:
        channels = [int(value) / 255 for value in re.findall(r"\d+", color)[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b
    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_focus_edges_and_states_are_visible_without_colour_and_in_forced_colours(browser):
    """The site's CSS (WCAG 1.4.11): the focus ring and a text box's edge at ≥ 3:1 against the white cards
    and the grey page; under forced colours (Windows high contrast, which drops backgrounds and border
    colours) the current page, the current label and a pressed label button still stand out."""
    css = (REPO / "static" / "site.css").read_text()
    page = browser.new_page()
    page.set_content(f"""<style>{css}</style>
        <header class="top"><nav><ul><li><a href="#a" aria-current="page">Gallery</a></li><li><a href="#b">Search</a>
        </li></ul></nav></header>
        <main><div class="card" style="background:#fff"><input type="search" id="words"></div>
        <nav class="label-chips"><a class="chip" href="#c" aria-current="true">cat</a><a class="chip" href="#d">dog</a></nav>
        <div class="labels"><button aria-pressed="true">cat</button><button aria-pressed="false">dog</button></div></main>""")
    page.focus("#words")
    style = page.eval_on_selector("#words", "e => { const s = getComputedStyle(e); return [s.outlineColor, s.outlineStyle,"
                                            " s.borderTopColor, getComputedStyle(document.body).backgroundColor] }")
    outline, outline_style, border, page_grey = style
    assert outline_style == "solid"
    assert min(contrast(outline, "rgb(255, 255, 255)"), contrast(outline, page_grey)) >= 3
    assert contrast(border, "rgb(255, 255, 255)") >= 3

    page.emulate_media(forced_colors="active")
    read = ("e => { const s = getComputedStyle(e); return [s.backgroundColor, s.textDecorationLine, s.borderBottomStyle] }")
    current, other = (page.eval_on_selector(f"header nav a[href='{href}']", read) for href in ("#a", "#b"))
    assert "underline" in current[1] and "underline" not in other[1] and other[2] in ("none", "hidden")
    for chosen, plain in (("label-chips a[href='#c']", "label-chips a[href='#d']"),
                          ("labels button[aria-pressed=true]", "labels button[aria-pressed=false]")):
        assert page.eval_on_selector("." + chosen, read)[0] != page.eval_on_selector("." + plain, read)[0]
