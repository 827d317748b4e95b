"""The web pages: render in every state, CSRF on every form, upload → labels → overlay → add → search."""

import html
from datetime import datetime, timezone
from html.parser import HTMLParser
import io
import re

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from PIL import Image as PILImage

from gallery.imaging import FORMAT_MEDIA_TYPES, probability_to_png
from gallery import views as gallery_views
from gallery.models import Image, Mask
from retrieval import status
from retrieval.encoders.devices import model_device
from tests.gallery.factories import add_embedding, add_mask, make_image

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def offline(settings, media_root, tmp_path):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"


def embedded_image(name: str, seed: int) -> Image:
    rng = np.random.default_rng(seed)
    image = make_image(name=name)
    semantic = rng.normal(size=384)
    add_embedding(image, space="semantic", model_key="offline/effnet-lite0+minilm", vector=semantic / np.linalg.norm(semantic))
    content = np.abs(rng.normal(size=1024))
    add_embedding(image, space="content", model_key="autoencoder/v1", vector=content / content.sum())
    return image


def page_urls(image: Image | None) -> list[str]:
    urls = [reverse("pages:home"), reverse("pages:gallery"), reverse("pages:preferences"),
            reverse("pages:gallery") + "?label=cat", reverse("pages:search") + "?text=a+cat"]
    if image is not None:
        urls.append(reverse("pages:image", args=[image.pk]))
        if image.status == "ready":
            urls.append(reverse("pages:search") + f"?image={image.pk}")
    return urls


@pytest.mark.parametrize("state", ["empty", "pending", "failed", "ready"])
def test_every_page_renders_in_every_state(client, user, state):
    image = None
    if state == "pending":
        image = make_image(status="pending")
    elif state == "failed":
        image = make_image(status="failed")
        image.error, image.masks_status, image.masks_error = "The stored file is missing.", "failed", "boom"
        image.added_by = user  # who may retry it
        image.save()
    elif state == "ready":
        image = embedded_image("ready.png", 1)
        add_mask(image, label="cat")
    client.force_login(user)
    for url in page_urls(image):
        response = client.get(url)
        assert response.status_code == 200, url
        assert f"Model profile: <strong>offline</strong> on <strong>{model_device()}</strong>".encode() \
            in response.content
    if state == "failed":
        page = client.get(reverse("pages:image", args=[image.pk])).content.decode()
        assert "The stored file is missing." in page and '>Retry</button>' in page
    client.logout()
    assert client.get(reverse("login")).status_code == 200


def test_private_gallery_sends_anonymous_visitors_to_sign_in(client):
    for url in (reverse("pages:home"), reverse("pages:gallery")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.get(reverse("pages:preferences")).status_code == 200  # session preferences for anyone


def test_every_form_needs_a_csrf_token(user):
    image = make_image(status="failed")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    posts = [(reverse("pages:home"), {}), (reverse("pages:preferences"), {"k": 5}), (reverse("pages:staged-add"), {}),
             (reverse("pages:retry", args=[image.pk]), {}), (reverse("pages:delete", args=[image.pk]), {}),
             (reverse("logout"), {}),
             (reverse("login"), {"username": "alice", "password": "s3cret-Pass!"})]
    for url, data in posts:
        refused = client.post(url, data)
        assert refused.status_code == 403, url
        # The site's page, saying what to do; not Django's bare "CSRF verification failed" for developers.
        page = refused.content.decode()
        assert "Reload the page and try again" in page and 'href="/gallery/"' in page, url
        assert "CSRF verification failed" not in page, url


def test_every_post_form_on_the_pages_carries_a_csrf_token(client, user):
    image = make_image(status="failed")
    client.force_login(user)
    for url in page_urls(image) + [reverse("login")]:
        page = client.get(url).content.decode()
        for form in re.findall(r"<form\b.*?</form>", page, flags=re.DOTALL):
            if 'method="post"' in form:
                assert "csrfmiddlewaretoken" in form, (url, form)
    client.logout()
    assert "csrfmiddlewaretoken" in client.get(reverse("login")).content.decode()


def test_anonymous_visitors_cannot_add(client, settings):
    settings.IMAGINAITION_PUBLIC_GALLERY = True
    response = client.post(reverse("pages:staged-add"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not Image.objects.exists()


def test_preferences_are_validated_and_saved(client, user):
    client.force_login(user)
    bad = client.post(reverse("pages:preferences"), {"mask_threshold": 150, "k": 0, "preferred_index": "x", "split": 50})
    assert bad.status_code == 200 and bad.content.decode().count("errorlist") >= 3
    client.post(reverse("pages:preferences"), {"mask_threshold": 60, "k": 7, "preferred_index": "content", "split": 20})
    page = client.get(reverse("pages:preferences")).content.decode()
    assert 'value="7"' in page and 'value="60"' in page
    image = make_image()
    add_mask(image, label="cat")
    assert "?threshold=60" in client.get(reverse("pages:image", args=[image.pk])).content.decode()  # overlays follow it


def test_two_tabs_of_the_preferences_page_each_save_only_what_they_changed(client, user):
    """A tab opened before another saved, then saved itself, put back every value it showed (k lost)."""
    client.force_login(user)
    url = reverse("pages:preferences")

    def form_as_shown() -> dict[str, str]:  # what the browser sends back unchanged: values and the shown ones
        page = client.get(url).content.decode()
        shown = dict(re.findall(r'<input type="hidden" name="(initial-[a-z_]+)" value="([^"]*)"', page))
        assert set(shown) == {f"initial-{name}" for name in ("mask_threshold", "k", "intersection_first",
                                                             "preferred_index", "split")}, page
        return {**shown, "mask_threshold": "30", "k": "50", "intersection_first": "on",
                "preferred_index": "semantic", "split": "50"}

    first_tab, second_tab = form_as_shown(), form_as_shown()
    assert client.post(url, {**first_tab, "k": "7"}).status_code == 302
    assert client.post(url, {**second_tab, "split": "90"}).status_code == 302
    saved = client.get(reverse("api-preferences")).json()
    assert (saved["k"], saved["split"], saved["intersection_first"]) == (7, 90, True)
    third_tab = form_as_shown()
    del third_tab["intersection_first"]  # unticked
    client.post(url, {**third_tab, "k": "7", "split": "90", "preferred_index": "content"})
    saved = client.get(reverse("api-preferences")).json()
    assert (saved["intersection_first"], saved["preferred_index"], saved["k"]) == (False, "content", 7)
    client.post(url, {**form_as_shown(), "k": "7", "split": "90", "preferred_index": "content"})  # ticked again
    assert client.get(reverse("api-preferences")).json()["intersection_first"] is True
    client.post(url, {"mask_threshold": "30", "k": "7", "preferred_index": "content",
                      "split": "90"})  # without the values shown (a script), unticked: every field as sent
    assert client.get(reverse("api-preferences")).json()["intersection_first"] is False


def test_preferences_saved_before_signing_in_are_kept_by_the_account(client, user, settings):
    """The page says "Saved for this browser session; sign in to keep them": signing in keeps them (a
    public gallery's visitor; on a private one the page says to sign in to change them)."""
    from retrieval.models import SearchPreferences

    settings.IMAGINAITION_PUBLIC_GALLERY = False
    assert "sign in</a> to change them" in client.get(reverse("pages:preferences")).content.decode()
    settings.IMAGINAITION_PUBLIC_GALLERY = True

    SearchPreferences.objects.create(user=user, k=9, split=70)  # older choices of the account
    saved = client.post(reverse("pages:preferences"), {"mask_threshold": 40, "k": 3, "preferred_index": "content",
                                                       "split": 20}, follow=True).content.decode()
    assert "sign in</a> to keep them" in saved
    signed_in = client.post(reverse("login"), {"username": "alice", "password": "s3cret-Pass!"}, follow=True)
    assert signed_in.redirect_chain[0][1] == 302  # the account's own were replaced: said, not silently
    assert "The search preferences you chose before signing in are now your account&#x27;s" in (
        signed_in.content.decode())
    page = client.get(reverse("pages:preferences")).content.decode()
    assert 'value="3"' in page and 'value="40"' in page and 'value="20"' in page and "Saved to your account" in page
    stored = SearchPreferences.objects.get(user=user)
    assert (stored.k, stored.mask_threshold, stored.preferred_index, stored.split) == (3, 40, "content", 20)
    client.logout()
    assert 'value="50"' in client.get(reverse("pages:preferences")).content.decode()  # not left in the browser
    again = client.post(reverse("login"), {"username": "alice", "password": "s3cret-Pass!"}, follow=True)
    assert "now your account" not in again.content.decode()  # nothing chosen before signing in: nothing said


def test_overlay_is_rendered_at_the_requested_threshold(client, user):
    image = make_image(size=(40, 20))
    gradient = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (20, 1))  # probability rises left → right
    mask = Mask.objects.create(image=image, segmenter="test", label="cat", class_index=8,
                               probability_png=probability_to_png(gradient), area_fraction=0.5)
    client.force_login(user)

    def alpha(threshold: int) -> np.ndarray:
        url = reverse("pages:mask-overlay", args=[image.pk, mask.pk]) + f"?threshold={threshold}"
        response = client.get(url)
        assert response["Content-Type"] == "image/png"
        return np.asarray(PILImage.open(io.BytesIO(response.content)))[..., 3]

    low, high = alpha(10), alpha(90)
    assert low.shape == (20, 40)
    assert (low == 0).sum() > (high == 0).sum()  # a higher threshold keeps fewer pixels clear
    assert set(np.unique(high)) == {0, 100}  # outside the mask: dimmed to alpha 100


def test_results_page_frames_each_result_by_how_it_was_found(client, user):
    images = [embedded_image(f"img{i}.png", i) for i in range(6)]
    client.force_login(user)
    page = client.get(reverse("pages:search"), {"image": images[0].pk}).content.decode()
    frames = {kind: page.count(f'data-retrieved-by="{kind}"') for kind in ("both", "semantic", "content")}
    assert sum(frames.values()) == 5
    for kind, count in frames.items():
        assert f'data-count="{kind}">{count}<' in page
    client.post(reverse("pages:preferences"), {"mask_threshold": 30, "k": 2, "preferred_index": "semantic", "split": 50})
    page = client.get(reverse("pages:search"), {"image": images[0].pk}).content.decode()
    assert page.count("data-retrieved-by=") == 2
    assert "images found by both first: off" in page  # split 50 saved without "both first"
    words = client.get(reverse("pages:search"), {"text": "a cat"}).content.decode()
    # A text query's rule is shown as what it is, not as preferences the user did not choose.
    assert "words are compared with the semantic index only" in words and "images found by both first" not in words


def test_a_search_that_cannot_be_answered_explains_why(client, user):
    pending = make_image(status="pending")
    client.force_login(user)
    response = client.get(reverse("pages:search"), {"image": pending.pk}, follow=True)
    assert response.redirect_chain[0][0] == reverse("pages:image", args=[pending.pk])
    assert "not been embedded yet" in response.content.decode()
    response = client.get(reverse("pages:search"), follow=True)
    assert response.redirect_chain[0][0] == reverse("pages:home") and "Choose a file" in response.content.decode()
    assert client.get(reverse("pages:search"), {"image": "x"}).status_code == 404
    assert client.get(reverse("pages:search"), {"image": 999999}).status_code == 404


def test_anonymous_visitors_cannot_retry_or_search_a_private_gallery(client):
    image = make_image(status="failed")
    response = client.post(reverse("pages:retry", args=[image.pk]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    image.refresh_from_db()
    assert image.status == "failed"
    response = client.get(reverse("pages:search"), {"text": "cat"})
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.get(reverse("pages:image", args=[image.pk])).status_code == 302


@pytest.mark.django_db(transaction=True)
def test_upload_shows_labels_and_overlay_then_adds_once(client, user):
    from skimage import data as skdata

    buffer = io.BytesIO()
    PILImage.fromarray(skdata.chelsea()).save(buffer, format="JPEG")
    client.force_login(user)
    client.post(reverse("pages:home"), {"file": SimpleUploadedFile("chelsea.jpg", buffer.getvalue())})
    page = client.get(reverse("pages:home")).content.decode()
    assert re.search(r">cat <span", page) and ">Add to database</button>" in page
    staged_file = client.get(reverse("pages:staged-file"))  # shown as the picture it is, never run as a page
    assert staged_file.status_code == 200 and staged_file["Content-Type"] == "image/jpeg"
    assert 'filename="chelsea.jpg"' in staged_file["Content-Disposition"] and "sandbox" in staged_file["Content-Security-Policy"]
    overlay = client.get(reverse("pages:staged-overlay", args=[8]) + "?threshold=30")
    assert overlay.status_code == 200 and overlay["Content-Type"] == "image/png"

    token = client.session["staged_upload"]
    assert page.count(f"upload={token}") >= 3  # the picture, an overlay, a region search: each names the upload
    results = client.get(reverse("pages:search"), {"upload": token})
    assert results.status_code == 200 and "Images similar to chelsea.jpg" in results.content.decode()
    assert f'src="{reverse("pages:staged-file")}?upload={token}"' in results.content.decode()

    added = client.post(reverse("pages:staged-add"), {"upload": token}, follow=True)
    assert Image.objects.count() == 1 and "being processed" in added.content.decode()
    client.post(reverse("pages:home"), {"file": SimpleUploadedFile("again.jpg", buffer.getvalue())})
    again = client.post(reverse("pages:staged-add"), follow=True)
    assert "already in the database" in again.content.decode() and Image.objects.count() == 1


def test_a_bad_upload_is_explained_on_the_page(client, user):
    client.force_login(user)
    page = client.post(reverse("pages:home"), {"file": SimpleUploadedFile("notes.jpg", b"hello")}).content.decode()
    assert "not an image" in page and not Image.objects.exists()


def test_odd_ids_and_nul_characters_in_a_query_string_are_refused_not_a_server_error(client, staff_user):
    image = embedded_image("ready.png", 1)
    client.force_login(staff_user)
    similar = reverse("admin:gallery_image_similar", args=[image.pk])
    for url in (reverse("pages:search") + "?image=%C2%B2", reverse("pages:search") + "?mask=%C2%B2",
                reverse("pages:search") + "?mask=12abc", similar + "?mask=%C2%B2"):
        assert client.get(url).status_code == 404, url  # "²" passes str.isdigit but is no id
    for asked in ("abc", "-1", "1.5"):
        response = client.get(reverse("pages:search") + f"?image={asked}")
        assert response.status_code == 404 and f"There is no image {asked}." in response.content.decode(), asked
    for url in (reverse("pages:gallery") + "?label=%00", reverse("pages:search") + "?text=x&labels=%00",
                reverse("pages:search") + f"?image={image.pk}&labels=a%00b"):
        response = client.get(url)
        assert response.status_code == 400 and b"NUL" in response.content, url
        assert "<title>Address not understood · ImaginAItion</title>" in response.content.decode()  # the layout
    api = client.get("/api/images/?label=%00")  # the API's own validation, in its error shape
    assert api.status_code == 400 and "null" in str(api.json()).lower()
    assert client.get(reverse("pages:gallery") + "?label=cat").status_code == 200


def test_retry_says_what_it_did(client, user):
    client.force_login(user)
    failed, ready = make_image(status="failed"), make_image(name="fine.png", color=(1, 1, 1))
    Image.objects.filter(pk__in=[failed.pk, ready.pk]).update(added_by=user)
    page = client.post(reverse("pages:retry", args=[failed.pk]), follow=True).content.decode()
    assert "back in the queue" in page
    failed.refresh_from_db()
    assert failed.status == "pending"
    page = client.post(reverse("pages:retry", args=[ready.pk]), follow=True).content.decode()
    assert "nothing to retry" in page and "back in the queue" not in page


def test_an_images_page_says_when_its_stored_file_is_missing(client, user, media_root):
    """It said "Ready" over a broken picture when the file was removed behind the service's back."""
    client.force_login(user)
    kept, lost = make_image(), make_image(name="lost.png", color=(1, 2, 3))
    lost.file.storage.delete(lost.file.name)
    warning = "The stored file of this image is missing"
    assert warning not in client.get(reverse("pages:image", args=[kept.pk])).content.decode()
    page = client.get(reverse("pages:image", args=[lost.pk])).content.decode()
    assert warning in page and "Adding the same file again restores it" in page
    Image.objects.filter(pk__in=[kept.pk, lost.pk]).update(status="failed", error="The stored file is missing.",
                                                           added_by=user)
    retry = f'action="{reverse("pages:retry", args=[kept.pk])}"'
    assert retry in client.get(reverse("pages:image", args=[kept.pk])).content.decode()
    page = client.get(reverse("pages:image", args=[lost.pk])).content.decode()
    assert reverse("pages:retry", args=[lost.pk]) not in page  # offered, it failed again at once


def test_the_banners_failed_count_links_to_the_gallery_of_failed_images(client, user, monkeypatch):
    """The banner said "Failed: 1" with no way to it but scanning every gallery page, or a shell command."""
    monkeypatch.setattr(gallery_views, "GALLERY_PAGE_SIZE", 2)
    images = [make_image(name=f"{i}.png", color=(i * 9, 3, 3)) for i in range(6)]
    add_mask(images[1], label="cat")
    Image.objects.filter(pk__in=[images[0].pk, images[3].pk]).update(status="failed", error="no file")
    Image.objects.filter(pk=images[1].pk).update(masks_status="failed", masks_error="no file")
    monkeypatch.setattr(status, "_banner", None)
    status.banner_refresh()
    client.force_login(user)
    page = client.get(reverse("pages:gallery")).content.decode()
    assert f'<a href="{reverse("pages:gallery")}?status=failed">list them</a>' in page
    # Told what they may do: the banner sent everyone to a Retry only the image's owner and some staff have.
    assert "whoever added it can retry it there" in page and "retry_failed" not in page
    assert "Whoever added this image, or staff allowed to change images, can retry it." in client.get(
        reverse("pages:image", args=[images[0].pk])).content.decode()
    response = client.get(reverse("pages:gallery"), {"status": "failed"})
    listed = [image.pk for image in response.context["page"]]
    assert listed == [images[3].pk, images[1].pk] and "3 images whose processing failed" in response.content.decode()
    page = response.content.decode()
    assert '<a href="?page=2&amp;label=&amp;status=failed&amp;upto=' in page  # the pager keeps to them
    assert [image.pk for image in client.get(reverse("pages:gallery"), {"status": "failed", "page": 2}
                                             ).context["page"]] == [images[0].pk]
    assert '<a href="?label=">show every image</a>' in page and 'href="?label=cat&amp;status=failed"' in page
    with_label = client.get(reverse("pages:gallery"), {"status": "failed", "label": "cat"})
    assert [image.pk for image in with_label.context["page"]] == [images[1].pk]
    Image.objects.update(status="ready", masks_status="ready")
    page = client.get(reverse("pages:gallery"), {"status": "failed"}).content.decode()
    assert "No image has failed." in page and "Initialize from a folder" not in page


def test_the_gallerys_label_chips_are_folded_and_its_empty_page_links_to_a_reset(client, staff_user):
    """Every label was a Tab stop before the first picture; the empty page's link looked like its text."""
    from django.contrib.auth.models import Permission
    staff_user.user_permissions.add(Permission.objects.get(codename="reset_gallery"))
    client.force_login(staff_user)
    page = client.get(reverse("pages:gallery")).content.decode()
    assert "label-filter" not in page  # no labels: nothing to fold
    assert re.search(r'<li class="empty">No images yet\. <a href="[^"]+">Initialize from a folder</a>\.</li>', page)
    css = (settings_static() / "site.css").read_text()
    assert ".grid li.empty a { display: inline;" in css
    add_mask(make_image(name="a.png"), label="cat")
    page = client.get(reverse("pages:gallery")).content.decode()
    assert re.search(r'<details class="label-filter">\s*<summary>Show images with a label <span class="hint">'
                     r'\(1 label to choose from\)</span></summary>\s*<nav class="label-chips"', page)
    assert '<details class="label-filter" open>' in client.get(reverse("pages:gallery"), {"label": "cat"}
                                                               ).content.decode()


def test_an_images_page_reads_its_masks_in_one_query(client, user):
    """The masks' query left out their image's id, which Django then read back one mask at a time."""
    image = make_image()
    for class_index, label in enumerate(("cat", "dog", "sofa"), start=8):
        add_mask(image, label=label, class_index=class_index)
    client.force_login(user)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("pages:image", args=[image.pk])).status_code == 200
    assert [query["sql"] for query in queries if 'WHERE "gallery_mask"."id" =' in query["sql"]] == []


def test_a_missing_page_says_what_is_missing_within_the_site(client, user):
    client.force_login(user)
    response = client.get(reverse("pages:search"), {"image": 999999})
    page = response.content.decode()
    assert response.status_code == 404 and "<h1>Not found</h1>" in page and 'href="/gallery/"' in page
    assert "There is no image 999999." in page  # not Django's "No Image matches the given query."
    assert "There is no image 999999." in client.get(reverse("pages:image", args=[999999])).content.decode()
    assert "There is no mask 424242." in client.get(reverse("pages:search"), {"mask": 424242}).content.decode()
    unknown = client.get("/no-such-page/")
    assert unknown.status_code == 404 and "There is no page at <code>/no-such-page/</code>" in unknown.content.decode()


def test_the_sign_in_page_does_not_link_to_itself_and_a_signed_in_visitor_goes_on(client, user):
    page = client.get(reverse("login"), {"next": "/gallery/"}).content.decode()
    assert 'href="/accounts/login/?next=' not in page  # each click used to nest another ?next= level
    client.force_login(user)
    response = client.get(reverse("login"), {"next": "/gallery/"})
    assert response.status_code == 302 and response["Location"] == "/gallery/"


def test_gallery_pages_below_one_are_the_first_and_label_chips_follow_any_letter_case(client, user, monkeypatch):
    for i in range(3):
        add_mask(make_image(name=f"{i}.png"), label="cat")
    add_mask(make_image(name="b.png"), label="ballpoint")
    add_mask(make_image(name="p.png"), label="Petri dish")
    client.force_login(user)
    for number in ("0", "-1"):
        page = client.get(reverse("pages:gallery"), {"page": number}).context["page"]
        assert page.number == 1, number
    monkeypatch.setattr(gallery_views, "GALLERY_PAGE_SIZE", 2)
    last = client.get(reverse("pages:gallery"), {"page": "last"}).context["page"]
    assert last.number == last.paginator.num_pages == 3  # as the API reads it; it showed the first
    response = client.get(reverse("pages:gallery"), {"label": "CAT"})
    assert [name for name, _, chosen in response.context["labels"] if chosen] == ["cat"]
    assert '<a class="chip" href="?label=cat" aria-current="true">' in response.content.decode()
    assert [name for name, _, _ in response.context["labels"]] == ["ballpoint", "cat", "Petri dish"]


def test_gallery_pages_stay_put_while_images_arrive(client, user, monkeypatch):
    monkeypatch.setattr(gallery_views, "GALLERY_PAGE_SIZE", 2)
    oldest, middle, newest = (make_image(name=f"{i}.png") for i in range(3))
    client.force_login(user)
    first = client.get(reverse("pages:gallery"))
    assert [image.pk for image in first.context["page"]] == [newest.pk, middle.pk]
    next_link = html.unescape(re.search(r'<a href="([^"]+)" rel="next">', first.content.decode()).group(1))
    assert f"upto={newest.pk}" in next_link
    make_image(name="arrived-1.png"), make_image(name="arrived-2.png")
    second = client.get(reverse("pages:gallery") + next_link)
    assert [image.pk for image in second.context["page"]] == [oldest.pk]  # not middle and newest again
    assert "2 more added since: show the newest" in second.content.decode()
    for upto in ("x", "0", "-5", str(2**70)):  # no pin (or past every id): the newest first, no error
        response = client.get(reverse("pages:gallery"), {"upto": upto})
        assert response.status_code == 200 and len(response.context["page"]) == 2, upto


def test_the_image_page_names_the_time_zone_of_its_date(client, user, settings):
    """"added 2026-12-31 23:30" was UTC, unsaid, and no setting could change it: for a user in India it is
    the first of January."""
    image = make_image(name="x.png")
    Image.objects.filter(pk=image.pk).update(created_at=datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc))
    client.force_login(user)
    assert "added 2026-12-31 23:30 UTC" in client.get(reverse("pages:image", args=[image.pk])).content.decode()
    settings.TIME_ZONE = "Asia/Kolkata"  # IMAGINAITION_TIME_ZONE
    assert "added 2027-01-01 05:00 IST" in client.get(reverse("pages:image", args=[image.pk])).content.decode()
    assert client.get(f"/api/images/{image.pk}/").json()["created_at"] == "2026-12-31T23:30:00Z"  # always UTC


def test_help_texts_that_fields_point_at_exist(client, user):
    client.force_login(user)
    for url in (reverse("pages:preferences"), reverse("password_change")):
        page = client.get(url).content.decode()
        described = set(re.findall(r'aria-describedby="([^"]+)"', page))
        assert described, url
        for ids in described:
            for element_id in ids.split():
                assert f'id="{element_id}"' in page, (url, element_id)


def test_staff_without_the_image_permission_get_no_links_that_end_in_403(client, django_user_model):
    image = make_image(name="x.png")
    carol = django_user_model.objects.create_user("carol", password="s3cret-Pass!", is_staff=True)
    client.force_login(carol)
    page = client.get(reverse("pages:image", args=[image.pk])).content.decode()
    assert reverse("admin:gallery_image_change", args=[image.pk]) not in page
    assert reverse("admin:gallery_image_changelist") not in page and 'href="/admin/">Admin</a>' in page


@pytest.mark.django_db(transaction=True)
def test_a_tab_whose_upload_another_tab_replaced_acts_on_nothing(client, user):
    from skimage import data as skdata

    def jpeg(name: str) -> SimpleUploadedFile:
        buffer = io.BytesIO()
        PILImage.fromarray(getattr(skdata, name)()).save(buffer, format="JPEG")
        return SimpleUploadedFile(f"{name}.jpg", buffer.getvalue())

    client.force_login(user)
    client.post(reverse("pages:home"), {"file": jpeg("chelsea")})  # tab A
    tab_a = client.session["staged_upload"]
    client.post(reverse("pages:home"), {"file": jpeg("coffee")})  # tab B, same session
    tab_b = client.session["staged_upload"]

    # Tab A's buttons: refused with the reason, instead of searching or adding coffee.jpg.
    searched = client.get(reverse("pages:search"), {"upload": tab_a}, follow=True).content.decode()
    assert "Images similar" not in searched and "replaced by coffee.jpg" in searched
    added = client.post(reverse("pages:staged-add"), {"upload": tab_a}, follow=True).content.decode()
    assert "replaced by coffee.jpg" in added and not Image.objects.exists()
    assert client.get(reverse("pages:staged-file"), {"upload": tab_a}).status_code == 404
    assert client.get(reverse("pages:staged-overlay", args=[8]), {"upload": tab_a}).status_code == 404
    state = client.get(reverse("pages:staged-state"), {"upload": tab_a})
    assert state.status_code == 404 and "replaced by coffee.jpg" in state.json()["error"]
    # Tab B's own still work.
    assert "Images similar to coffee.jpg" in client.get(reverse("pages:search"), {"upload": tab_b}).content.decode()
    assert client.get(reverse("pages:staged-file"), {"upload": tab_b}).status_code == 200
    client.post(reverse("pages:staged-add"), {"upload": tab_b})
    assert list(Image.objects.values_list("original_name", flat=True)) == ["coffee.jpg"]


@pytest.mark.django_db(transaction=True)  # the files go when the deletion commits
def test_the_owner_deletes_an_image_from_its_page_and_others_cannot(client, user, django_user_model, media_root):
    from django.contrib.auth.models import Permission

    image = make_image(name="mine.png")
    image.added_by = user
    image.save()
    stored = media_root / image.file.name
    bob = django_user_model.objects.create_user("bob", password="s3cret-Pass!")
    client.force_login(bob)
    page = client.get(reverse("pages:image", args=[image.pk])).content.decode()
    assert reverse("pages:delete", args=[image.pk]) not in page
    assert client.post(reverse("pages:delete", args=[image.pk])).status_code == 403
    assert Image.objects.filter(pk=image.pk).exists() and stored.exists()

    client.force_login(user)
    page = client.get(reverse("pages:image", args=[image.pk])).content.decode()
    assert f'action="{reverse("pages:delete", args=[image.pk])}"' in page and "Delete mine.png" in page
    deleted = client.post(reverse("pages:delete", args=[image.pk]), follow=True)
    assert deleted.redirect_chain[-1][0] == reverse("pages:gallery") and "Deleted mine.png." in deleted.content.decode()
    assert not Image.objects.filter(pk=image.pk).exists() and not stored.exists()

    other = make_image(name="theirs.png", color=(1, 2, 3))
    bob.user_permissions.add(Permission.objects.get(codename="delete_image"))
    client.force_login(django_user_model.objects.get(pk=bob.pk))
    assert client.post(reverse("pages:delete", args=[other.pk])).status_code == 302
    assert not Image.objects.filter(pk=other.pk).exists()


def test_only_whoever_added_a_failed_image_or_may_change_images_retries_it(client, user, django_user_model):
    from django.contrib.auth.models import Permission

    image = make_image(name="mine.png", status="failed")
    Image.objects.filter(pk=image.pk).update(added_by=user)
    bob = django_user_model.objects.create_user("bob", password="s3cret-Pass!")
    retry_page, retry_api = reverse("pages:retry", args=[image.pk]), reverse("api-image-retry", args=[image.pk])

    client.force_login(bob)
    assert retry_page not in client.get(reverse("pages:image", args=[image.pk])).content.decode()
    assert client.post(retry_page).status_code == 403
    refused = client.post(retry_api)
    assert refused.status_code == 403 and "may retry it" in refused.json()["detail"]
    assert Image.objects.get(pk=image.pk).status == "failed"  # nothing was queued

    client.force_login(user)
    assert retry_page in client.get(reverse("pages:image", args=[image.pk])).content.decode()
    assert client.post(retry_api).json()["status"] == "pending"

    Image.objects.filter(pk=image.pk).update(status="failed", added_by=None)  # imported: added by nobody
    assert client.post(retry_page).status_code == 403
    bob.user_permissions.add(Permission.objects.get(codename="change_image"))
    client.force_login(django_user_model.objects.get(pk=bob.pk))
    assert client.post(retry_page).status_code == 302 and Image.objects.get(pk=image.pk).status == "pending"


def test_a_form_sent_after_signing_out_elsewhere_leads_back_to_its_page_after_signing_in(client, user, media_root):
    # login_required sent the visitor back to the POST-only address after signing in: a bare 405.
    image = make_image(name="mine.png")
    for action, page in ((reverse("pages:delete", args=[image.pk]), reverse("pages:image", args=[image.pk])),
                         (reverse("pages:retry", args=[image.pk]), reverse("pages:image", args=[image.pk])),
                         (reverse("pages:staged-add"), reverse("pages:home"))):
        response = client.post(action)
        assert response.status_code == 302, action
        assert response["Location"] == f"{reverse('login')}?next={page}", action
    assert Image.objects.filter(pk=image.pk).exists()


def test_opening_an_address_only_a_button_sends_to_is_a_page_that_says_so(client, user, media_root):
    image = make_image(name="mine.png")
    client.force_login(user)
    for url in (reverse("pages:delete", args=[image.pk]), reverse("logout")):
        response = client.get(url)
        page = html.unescape(response.content.decode())
        assert response.status_code == 405 and response["Allow"].startswith("POST"), url
        assert "<title>Not a page to open · ImaginAItion</title>" in page and "what a button on a page sends" in page
    assert Image.objects.filter(pk=image.pk).exists()
    assert client.get("/api/images/1/retry/").status_code == 405  # the API keeps its own answer


def test_a_refused_choice_of_radios_is_described_to_assistive_technology(client, user):
    client.force_login(user)
    page = client.post(reverse("pages:preferences"), {"k": "10", "split": "50", "mask_threshold": "50",
                                                       "preferred_index": "bogus"}).content.decode()
    group = re.search(r'<fieldset aria-describedby="([^"]+)"><legend>', page)
    assert group is not None and "id_preferred_index_error" in group.group(1).split()
    assert 'id="id_preferred_index_error"' in page and 'id="-error"' not in page


def test_a_refused_request_and_a_server_error_get_the_sites_own_pages(client, user, settings, rf):
    """Django's own 400 and 500 pages are one bare line; the site's say what happened and lead back."""
    from imaginaition_site.views import server_error

    settings.ALLOWED_HOSTS = ["testserver"]
    refused = client.get(reverse("pages:gallery"), HTTP_HOST="evil.example")
    page = refused.content.decode()
    assert refused.status_code == 400 and "<h1>Request refused</h1>" in page
    assert "DJANGO_ALLOWED_HOSTS" in page and f'href="{reverse("pages:home")}"' in page and "site.css" in page
    failed = server_error(rf.get(reverse("pages:gallery")))
    page = failed.content.decode()
    assert failed.status_code == 500 and "<h1>Something went wrong</h1>" in page and "logged" in page
    assert f'href="{reverse("pages:gallery")}"' in page


def test_an_image_re_embedded_after_a_model_change_can_still_be_searched_from_its_page(client, user):
    """A model change sets the gallery pending again; each image keeps the vectors the old model serves."""
    button = re.compile(r"<button type=\"submit\"([^>]*)>Search similar from here</button>")
    client.force_login(user)
    waiting_again = make_image(name="again.png", status="pending")
    add_embedding(waiting_again, space="content", model_key="autoencoder/v1", vector=np.full(1024, 1 / 1024))
    new = make_image(name="new.png", color=(1, 2, 3), status="pending")
    failed = make_image(name="failed.png", color=(4, 5, 6), status="failed")
    add_embedding(failed, space="content", model_key="autoencoder/v1", vector=np.full(1024, 1 / 1024))

    def disabled(image) -> bool:
        found = button.search(client.get(reverse("pages:image", args=[image.pk])).content.decode())
        return 'aria-disabled="true"' in found.group(1)

    assert not disabled(waiting_again)
    assert disabled(new) and disabled(failed)  # nothing to search with yet; failed says why on its own


def test_the_gallery_adds_several_files_at_once_each_on_its_own(client, user, django_capture_on_commit_callbacks):
    """The web page added one picture per round trip (load, then add); several files sent stage only the last."""
    from django_q.models import OrmQ

    from tests.gallery.factories import png_bytes

    client.force_login(user)
    gallery = client.get(reverse("pages:gallery")).content.decode()
    assert 'name="files"' in gallery and "multiple" in gallery and reverse("pages:images-add") in gallery
    first, second = png_bytes((10, 20, 30)), png_bytes((200, 100, 0))
    files = [SimpleUploadedFile("one.png", first), SimpleUploadedFile("notes.txt", b"not a picture"),
             SimpleUploadedFile("two.png", second), SimpleUploadedFile("one-again.png", first)]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("pages:images-add"), {"files": files}, follow=True)
    page = html.unescape(response.content.decode())
    assert response.redirect_chain[-1][0] == reverse("pages:gallery")
    assert "Added 2 images; they are being processed: one.png, two.png." in page
    assert "Already in the gallery: one-again.png." in page
    assert "notes.txt: " in page and "not an image" in page.split("notes.txt: ", 1)[1][:300].lower()
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["one.png", "two.png"]
    assert all(image.added_by == user for image in Image.objects.all())
    assert OrmQ.objects.exists()  # handed to the workers

    # The page's script sends one file per request and asks for JSON.
    answer = client.post(reverse("pages:images-add"), {"files": [SimpleUploadedFile("two.png", second)]},
                         HTTP_ACCEPT="application/json").json()
    two = Image.objects.get(original_name="two.png")
    assert answer == {"results": [{"name": "two.png", "state": "exists", "message": "",
                                   "url": reverse("pages:image", args=[two.pk]), "storage_failed": False}]}
    refused = client.post(reverse("pages:images-add"), {"files": [SimpleUploadedFile("empty.png", b"")]},
                          HTTP_ACCEPT="application/json").json()["results"][0]
    assert refused["state"] == "refused" and "empty" in refused["message"] and refused["url"] is None
    nothing = client.post(reverse("pages:images-add"), {}, follow=True).content.decode()
    assert "Choose one or more image files to add." in nothing


def test_adding_several_files_stops_trying_once_the_storage_fails(client, user, media_root, monkeypatch, caplog):
    """Each file waited for the storage's timeout (20 s on a hung bucket, 33 min for 100 files)."""
    from gallery.storage import AtomicFileSystemStorage
    from tests.gallery.factories import png_bytes

    tried = []

    def storage_down(self, name, content):
        tried.append(name)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(AtomicFileSystemStorage, "_save", storage_down)
    client.force_login(user)
    files = [SimpleUploadedFile("notes.txt", b"not a picture")] + [
        SimpleUploadedFile(f"{n}.png", png_bytes((n * 40, 20, 30))) for n in range(3)]
    page = html.unescape(client.post(reverse("pages:images-add"), {"files": files}, follow=True).content.decode())
    assert len(tried) == 1 and not Image.objects.exists()
    assert "0.png: Storing the file failed: Input/output error" in page
    assert page.count("Not tried: storing the file before it failed") == 2
    assert "notes.txt: " in page and "not an image" in page.split("notes.txt: ", 1)[1][:300].lower()
    assert "adding 0.png: the media storage failed: Storing the file failed: Input/output error" in caplog.text
    again = [SimpleUploadedFile(f"{n}.png", png_bytes((n * 40, 20, 30))) for n in range(3)]
    sent_by_the_script = client.post(reverse("pages:images-add"), {"files": again}, HTTP_ACCEPT="application/json")
    states = [(row["state"], row["storage_failed"]) for row in sent_by_the_script.json()["results"]]
    assert states == [("failed", True), ("unsent", False), ("unsent", False)]  # the storage's fault, not the files'


def test_adding_images_needs_a_signed_in_user(client, settings):
    settings.IMAGINAITION_PUBLIC_GALLERY = True
    assert 'name="files"' not in client.get(reverse("pages:gallery")).content.decode()
    from tests.gallery.factories import png_bytes

    response = client.post(reverse("pages:images-add"), {"files": [SimpleUploadedFile("one.png", png_bytes())]})
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not Image.objects.exists()


def test_adding_too_many_files_in_one_request_says_what_to_do(client, user, settings):
    """Without the page's script the form sends every file in one request: its limits answered with the
    search page's words ("load it again from the search page") or a bare "malformed request"."""
    from tests.gallery.factories import png_bytes

    client.force_login(user)
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    many = [SimpleUploadedFile(f"{i}.png", png_bytes()) for i in range(4)]
    refused = client.post(reverse("pages:images-add"), {"files": many})
    page = refused.content.decode()
    assert refused.status_code == 400 and "Too many files at once" in page and "more than 3 files" in page
    settings.IMAGINAITION_MAX_UPLOAD_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000, 1_000
    big = [SimpleUploadedFile(f"{i}.bin", bytes(1_500)) for i in range(2)]
    too_much = client.post(reverse("pages:images-add"), {"files": big})
    page = too_much.content.decode()
    assert too_much.status_code == 413 and "Send fewer files at a time" in page and "search page" not in page
    assert not Image.objects.exists()
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 100
    assert "send at most 100 files" in client.get(reverse("pages:gallery")).content.decode()


class ReadAloud(HTMLParser):
    """What a screen reader would read twice: the picture's alt beside the same name in a link, and a
    control's value inside another control's label."""

    def __init__(self) -> None:
        super().__init__()
        self.link: dict[str, list[str]] | None = None
        self.in_label = False
        self.label_control: str | None = None  # its `for`, or (without) the first control inside it
        self.links: list[dict[str, list[str]]] = []
        self.inside_labels: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "a":
            self.link = {"alts": [], "text": []}
        elif tag == "img" and self.link is not None:
            self.link["alts"].append(named.get("alt") or "")
        elif tag == "label":
            self.in_label, self.label_control = True, named.get("for")
        elif self.in_label and tag in ("output", "input", "select", "textarea", "meter", "progress", "button"):
            if self.label_control is None:
                self.label_control = named.get("id") or tag
            elif (named.get("id") or tag) != self.label_control:
                self.inside_labels.append(f"{tag} #{named.get('id')} in the label of {self.label_control}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self.link is not None:
            self.links.append(self.link)
            self.link = None
        elif tag == "label":
            self.in_label = False

    def handle_data(self, data: str) -> None:
        if self.link is not None:
            self.link["text"].append(data)


def test_a_screen_reader_reads_a_pictures_name_once(client, user):
    images = [embedded_image(f"picture{i}.png", i) for i in range(3)]
    add_mask(images[0], label="cat")
    client.force_login(user)
    pictures = 0
    for url in [reverse("pages:home"), reverse("pages:gallery"), reverse("pages:search") + f"?image={images[0].pk}",
                reverse("pages:preferences")]:
        reader = ReadAloud()
        reader.feed(client.get(url).content.decode())
        twice = [link for link in reader.links if any(alt and alt in "".join(link["text"]) for alt in link["alts"])]
        pictures += sum(bool(link["alts"]) for link in reader.links)
        assert not twice, (url, twice)
        # a label names its own control (`for=`) and holds none: one inside is read as part of the name
        assert not reader.inside_labels, (url, reader.inside_labels)
    assert pictures >= 3 + 3 + 2  # the pages did list linked pictures (home, gallery, results)


@pytest.mark.django_db
def test_each_sign_in_page_has_one_main_heading(client):
    """Admin's sign-in (Django's own) had none: a screen reader's list of headings was empty there."""
    for url in (reverse("login"), reverse("admin:login")):
        page = client.get(url).content.decode()
        assert len(re.findall(r"<h1[ >]", page)) == 1, url


def test_a_text_query_too_long_for_the_page_is_refused_as_the_api_refuses_it(client, user):
    """The page cut it to 500 characters without a word, and searched with the rest."""
    client.force_login(user)
    response = client.get(reverse("pages:search"), {"text": "blue " * 120})
    assert response.status_code == 400
    assert "A text query has at most 500 characters; this one has 599." in response.content.decode()
    api = client.post(reverse("api-search"), {"text": "blue " * 120}, content_type="application/json")
    assert api.status_code == 400 and "500" in str(api.json()["text"])
    for blank in ("\ufeff", "   ", ""):  # U+FEFF searched, as if words; spaces asked to choose a file
        answer = client.get(reverse("pages:search"), {"text": blank}).content.decode()
        assert "Type some words to search for." in answer and "Choose a file" not in answer, repr(blank)


def test_a_refused_text_search_keeps_the_words_and_labels_in_the_form_and_says_why_there(client, user):
    """A refusal sent the browser back to an empty form (the words and ticked labels gone) with the message
    at the top of the page, the field neither marked nor focused."""
    add_mask(embedded_image("dog.png", 1), label="dog")
    add_mask(embedded_image("cat.png", 2), label="cat")
    client.force_login(user)
    response = client.get(reverse("pages:search"), {"text": "🐶 🐕", "labels": ["dog"]})
    page = response.content.decode()
    assert response.status_code == 400 and page.count("The text model knows none of these words") == 1
    assert re.search(r'<div role="alert"><ul class="errorlist" id="id_text_error"><li>The text model knows none',
                     page)
    assert re.search(r'<input type="search" name="text" id="id_text"[^>]* value="🐶 🐕" aria-invalid="true" '
                     r'aria-describedby="id_text_error" autofocus>', page)
    assert '<input type="checkbox" name="labels" value="dog" checked>' in page
    assert '<input type="checkbox" name="labels" value="cat">' in page and "<title>Error: " in page
    words = client.get(reverse("pages:search"), {"text": "a dog"})  # words it knows: results, as before
    assert words.status_code == 200 and "Error:" not in words.content.decode()


@pytest.mark.parametrize("query", [{"image": "1", "text": "stripes"}, {"image": "1", "mask": "2"},
                                   {"text": "stripes", "upload": "abc"}])
def test_a_search_address_giving_two_queries_is_refused_not_half_used(client, user, query):
    """?image=1&text=stripes ran the image search under the note that words fill every place (the
    page chose its note by the text): the API refuses two queries, and so does the page, naming them."""
    client.force_login(user)
    response = client.get(reverse("pages:search"), query, follow=True)
    assert response.redirect_chain == [(reverse("pages:home"), 302)]
    assert f"this address gives {' and '.join(query)}." in response.content.decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fmt, name", [("TIFF", "scan.tiff"), ("HEIF", "IMG_0001.HEIC")])
def test_a_tiff_or_heic_is_shown_as_a_picture_browsers_can_show(client, user, media_root, fmt, name):
    """Chrome, Firefox and Edge show no TIFF (nor a phone's HEIC) in an <img>: the image page and an
    upload's viewer showed a broken picture (masks over nothing); they show a WebP rendition of the
    picture the masks are of. The original is still served as it is, as what it is."""
    from gallery import services

    picture = PILImage.fromarray(np.random.default_rng(3).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    image = services.image_add(data=buffer.getvalue(), original_name=name, user=user, enqueue=False).image
    client.force_login(user)
    page = client.get(reverse("pages:image", args=[image.pk])).content.decode()
    shown = reverse("gallery:image-thumbnail-size", args=[image.pk, 1024]) + f"?v={image.sha256[:12]}"
    assert f'<img src="{shown}"' in page and reverse("gallery:image-file", args=[image.pk]) not in page
    rendition = client.get(shown)
    assert rendition["Content-Type"] == "image/webp"
    assert PILImage.open(io.BytesIO(rendition.content)).size == (400, 300)

    original = client.get(reverse("gallery:image-file", args=[image.pk]))
    assert original["Content-Type"] == FORMAT_MEDIA_TYPES[fmt] and b"".join(original) == buffer.getvalue()

    client.post(reverse("pages:home"), {"file": SimpleUploadedFile(name, buffer.getvalue())})
    staged = client.get(reverse("pages:staged-file"), {"upload": client.session["staged_upload"]})
    assert staged.status_code == 200 and staged["Content-Type"] == "image/webp"
    assert PILImage.open(io.BytesIO(staged.content)).size == (400, 300)


@pytest.mark.django_db(transaction=True)
def test_a_file_browsers_would_show_on_its_side_is_shown_as_the_upright_picture_the_masks_are_of(
        client, user, media_root):
    """Chromium turns a JPEG by its EXIF orientation but shows a WebP's pixels as stored: a WebP with
    orientation 6 lay on its side on its page, its masks across it. Such a file is shown as the
    rendition; a JPEG with the same orientation and an upright WebP are shown as they are."""
    from gallery import services

    exif = PILImage.Exif()
    exif[0x0112] = 6  # stored 400x300, shown 300x400
    stored = PILImage.fromarray(np.random.default_rng(4).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    client.force_login(user)

    def shown_on_page(image_id: int) -> str:
        page = client.get(reverse("pages:image", args=[image_id])).content.decode()
        return "rendition" if f'<img src="{reverse("gallery:image-thumbnail-size", args=[image_id, 1024])}?v=' in page \
            else "file" if f'<img src="{reverse("gallery:image-file", args=[image_id])}"' in page else "?"

    def shown(fmt: str, turned: bool, name: str) -> str:
        buffer = io.BytesIO()
        stored.save(buffer, format=fmt, **({"exif": exif.tobytes()} if turned else {}))
        return shown_on_page(services.image_add(data=buffer.getvalue(), original_name=name, user=user,
                                                enqueue=False).image.pk)

    assert shown("WEBP", True, "turned.webp") == "rendition"
    assert shown("WEBP", False, "upright.webp") == "file"
    assert shown("JPEG", True, "turned.jpg") == "file"
    old = Image.objects.get(original_name="turned.webp")
    Image.objects.filter(pk=old.pk).update(orientation=None)  # added before the orientation was recorded
    assert shown_on_page(old.pk) == "rendition"
    assert Image.objects.get(pk=old.pk).orientation == 6  # read from the file once, and kept

    buffer = io.BytesIO()
    stored.save(buffer, format="WEBP", exif=exif.tobytes())
    client.post(reverse("pages:home"), {"file": SimpleUploadedFile("turned.webp", buffer.getvalue())})
    staged = client.get(reverse("pages:staged-file"), {"upload": client.session["staged_upload"]})
    assert staged["Content-Type"] == "image/webp" and PILImage.open(io.BytesIO(staged.content)).size == (300, 400)


def test_signing_in_never_leads_back_to_the_sign_in_or_sign_out_address(client, user):
    """Signed in, ?next=/accounts/login/ was a 500 (a redirect loop); after opening the sign-out address
    (405: a form's action), signing in from its page led back to that 405."""
    client.force_login(user)
    response = client.get(reverse("login"), {"next": reverse("login")})
    assert response.status_code == 302 and response["Location"] == "/"
    client.logout()
    user.set_password("a-Long-pass-4321")
    user.save()
    signed_in = client.post(reverse("login") + "?next=" + reverse("logout"),
                            {"username": user.username, "password": "a-Long-pass-4321"})
    assert signed_in.status_code == 302 and signed_in["Location"] == "/"


def test_a_labels_percentage_meets_the_region_bar_exactly_when_it_offers_its_region_search(client, user, settings):
    """Rounded, a mask of 0.95 % read "1%" beside no "Search with this region" (regions under 1 % have no
    vectors): the page seemed to contradict itself."""
    settings.IMAGINAITION_REGION_MIN_AREA = 0.01
    image = make_image(name="dots.png")
    shown = {}
    for index, (label, fraction) in enumerate((("speck", 0.0095), ("dot", 0.0105), ("cat", 0.29), ("sky", 1.0))):
        mask = add_mask(image, label=label, class_index=index)
        Mask.objects.filter(pk=mask.pk).update(area_fraction=fraction)
        shown[label] = mask.pk
    client.force_login(user)
    page = client.get(reverse("pages:image", args=[image.pk])).content.decode()
    rows = dict(re.findall(r'(\w+) <span class="hint"[^>]*>([^<]*)</span>', page))
    assert rows == {"speck": "&lt;1%", "dot": "1%", "cat": "29%", "sky": "100%"}
    linked = {label for label, pk in shown.items() if f"?mask={pk}\"" in page}
    assert linked == {"dot", "cat", "sky"}


def settings_static():
    from pathlib import Path
    return Path(__file__).resolve().parents[2] / "static"


def test_a_thumbnails_address_names_its_picture_so_a_reused_id_is_not_shown_from_a_browsers_cache(client, user):
    """Thumbnails are kept a day by a browser: after a restore numbered new images from the dump's ids again,
    the gallery showed the old pictures' thumbnails under the new images' names."""
    old = make_image(name="old.png", color=(200, 0, 0))
    client.force_login(user)
    before = client.get(reverse("pages:gallery")).content.decode()
    old_url = f'{reverse("gallery:image-thumbnail", args=[old.pk])}?v={old.sha256[:12]}'
    assert f'<img src="{old_url}"' in before
    assert client.get(reverse("api-image", args=[old.pk])).json()["thumbnail_url"] == "http://testserver" + old_url
    Image.objects.filter(pk=old.pk).delete()
    new = make_image(name="new.png", color=(0, 0, 200))
    Image.objects.filter(pk=new.pk).update(id=old.pk)  # what a restored sequence hands out
    after = client.get(reverse("pages:gallery")).content.decode()
    assert old_url not in after and f'{reverse("gallery:image-thumbnail", args=[old.pk])}?v={new.sha256[:12]}' in after
    served = client.get(reverse("gallery:image-thumbnail", args=[old.pk]) + f"?v={new.sha256[:12]}")
    assert served.status_code == 200 and "max-age" in served["Cache-Control"]
